//! profctl: the command-line client. Parsing lives here so that it can be tested; the binary
//! only calls [`main`].

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use profiler_proto::v1;

use crate::{
    aggregate::Mode,
    client,
    config::parse_duration,
    export::{self, ProfileView, top::SortKey},
    selector::{LabelKey, Matcher, Selector},
};

/// profctl: query a running profilerd.
#[derive(Debug, Parser)]
#[command(name = "profctl", version, about)]
pub struct Cli {
    /// The daemon's endpoint: unix:///PATH, http://HOST:PORT (plain text), https://HOST:PORT
    /// (TLS, with --ca) or tcp://HOST:PORT (TLS when --ca is given, plain text otherwise).
    #[arg(long, global = true, env = "PROFCTL_ENDPOINT", default_value = concat!("unix://", "/run/profiler/profiler.sock"))]
    pub endpoint: String,

    /// CA certificate (PEM) that signed the daemon's certificate; makes a tcp:// endpoint TLS.
    #[arg(long, global = true, env = "PROFCTL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for a daemon that requires one (--tls-client-ca); needs --key.
    #[arg(long, global = true, env = "PROFCTL_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "PROFCTL_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Name to check the daemon's certificate against, when it differs from the endpoint's
    /// host (for example an IP address endpoint and a certificate for a DNS name).
    #[arg(long, global = true, env = "PROFCTL_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// profctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's version, counters and caches.
    Status,
    /// Print or save the profile of a time range.
    Query(QueryArgs),
    /// Count a Python process's calls (cProfile's ncalls) with the interpreter entry probe.
    Calls {
        /// Turn counting on or off.
        #[arg(value_enum)]
        action: CallsAction,
        /// The CPython process.
        #[arg(long)]
        pid: u32,
    },
    /// Draw the profile of a time range as an interactive SVG flame graph.
    Flamegraph(FlamegraphArgs),
    /// Compare two time ranges: the functions whose share changed most, and optionally a
    /// differential flame graph.
    Diff(DiffArgs),
    /// A live view: each window as it closes, functions ranked by self and total share. Plain
    /// tables, one per window, when the output is not a terminal.
    Watch(WatchArgs),
    /// The processes seen in a time range, with their runtime, samples and labels.
    Targets(TargetsArgs),
    /// Resident memory over time, per process, like mprof: a table with each process's
    /// growth, the processes that grew most (--top), CSV, or an SVG plot.
    Memory(MemoryArgs),
}

/// Output formats of `memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemoryFormat {
    /// A table per process.
    Table,
    /// One row per point: time, pid, comm, rss_bytes, anon_bytes, file_bytes, readings.
    Csv,
    /// An mprof-style plot.
    Svg,
}

/// Arguments of `memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// The time range.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Which processes.
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Time between points (rounded up to whole windows); by default at most 200 points.
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<Duration>,
    /// Rank the processes by growth over the range instead of listing each timeline.
    #[arg(long, conflicts_with = "format")]
    pub top: bool,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = MemoryFormat::Table)]
    pub format: MemoryFormat,
    /// Processes in --top, and lines in the plot (those that grew most).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// What a profile measures: `--mode` and `--idle`, shared by every command that reads
/// profiles.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct ModeArgs {
    /// What to measure: cpu (time on a CPU), wall (elapsed time: on the CPU plus blocked or
    /// waiting, as cProfile and line_profiler count it), off-cpu (only the time off the CPU,
    /// by reason: runnable, sleep, lock, io, wait, gil) or gil (Python threads' time on a CPU
    /// holding the GIL plus their time waiting for it).
    #[arg(long, value_enum, default_value_t = ModeArg::Cpu)]
    pub mode: ModeArg,
    /// In the wall, off-cpu and gil modes, also count threads that never ran on a CPU in the
    /// range (idle pool workers), which are left out by default.
    #[arg(long)]
    pub idle: bool,
}

/// The values of `--mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Time on a CPU.
    #[default]
    Cpu,
    /// Time on and off a CPU.
    Wall,
    /// Time off a CPU.
    OffCpu,
    /// Time holding Python's GIL on a CPU, and waiting for it.
    Gil,
    /// Memory growth: bytes touched for the first time (page faults).
    Memory,
}

impl ModeArg {
    fn to_proto(self) -> v1::Mode {
        match self {
            ModeArg::Cpu => v1::Mode::Cpu,
            ModeArg::Wall => v1::Mode::Wall,
            ModeArg::OffCpu => v1::Mode::OffCpu,
            ModeArg::Gil => v1::Mode::Gil,
            ModeArg::Memory => v1::Mode::Memory,
        }
    }
}

/// Arguments of `watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Which samples to show.
    #[command(flatten)]
    pub filter: SelectorArgs,
    /// What to measure.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// Rows per window.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// Arguments of `targets`.
#[derive(Debug, clap::Args)]
pub struct TargetsArgs {
    /// The last DURATION (for example 10m, 1h, 24h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
    /// Which processes to list.
    #[command(flatten)]
    pub filter: SelectorArgs,
}

/// `profctl calls` actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CallsAction {
    /// Attach the probe to the process.
    Enable,
    /// Detach it.
    Disable,
}

/// Output formats of `query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A pstats-like table of functions.
    Top,
    /// Folded stacks for flamegraph.pl and inferno.
    Folded,
    /// A gzip-compressed pprof profile.
    Pprof,
    /// Samples per line of one Python function (`--function`), like line_profiler.
    Lines,
    /// speedscope's JSON file format, one profile per process (open it in speedscope).
    Speedscope,
    /// An SVG flame graph (`profctl flamegraph` has more options).
    Flamegraph,
}

/// Arguments of `query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The time range.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Which samples.
    #[command(flatten)]
    pub select: SelectorArgs,
    /// What to measure.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Top)]
    pub format: Format,
    /// Sort column of the top table.
    #[arg(long, value_enum, default_value_t = SortKey::SelfSamples)]
    pub sort: SortKey,
    /// The function of the lines table (its qualified name, for example `Handler.get`).
    #[arg(long, required_if_eq("format", "lines"))]
    pub function: Option<String>,
    /// Rows of the top table.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected RFC 3339, like 2026-01-02T15:04:05Z)"))?;
    let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| "time before 1970".to_owned())?;
    i64::try_from(d.as_nanos()).map_err(|_| "time too far in the future".to_owned())
}

/// The time range of `query` and `flamegraph`: the last `--since`, or `--from`/`--to`.
#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    /// Query the last DURATION (for example 60s, 5m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Duration,
    /// Start of the range (RFC 3339, for example 2026-01-02T15:04:05Z).
    #[arg(long, requires = "to", value_parser = parse_time)]
    pub from: Option<i64>,
    /// End of the range (RFC 3339).
    #[arg(long, requires = "from", value_parser = parse_time)]
    pub to: Option<i64>,
}

impl RangeArgs {
    /// The range in nanoseconds since the epoch, relative to `now_ns`.
    pub fn range(&self, now_ns: i64) -> v1::TimeRange {
        match (self.from, self.to) {
            (Some(start), Some(end)) => {
                v1::TimeRange { start_unix_nanos: start, end_unix_nanos: end }
            }
            _ => last(self.since, now_ns),
        }
    }
}

/// The open-ended range of the last `since` before `now_ns`.
fn last(since: Duration, now_ns: i64) -> v1::TimeRange {
    let since = i64::try_from(since.as_nanos()).unwrap_or(i64::MAX);
    v1::TimeRange { start_unix_nanos: now_ns.saturating_sub(since).max(1), end_unix_nanos: 0 }
}

/// Runs profctl.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let tls = client::TlsOptions {
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        server_name: cli.tls_server_name.clone(),
    };
    let mut client = client::connect_with(&cli.endpoint, &tls).await?;
    match cli.command {
        Command::Status => {
            let status =
                client.status(v1::StatusRequest {}).await.context("Status failed")?.into_inner();
            print!("{}", render_status(&status));
        }
        Command::Calls { action, pid } => {
            let request = v1::SetPythonCallsRequest { pid, enabled: action == CallsAction::Enable };
            let response = client
                .set_python_calls(request)
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("{}", response.into_inner().message);
        }
        Command::Flamegraph(args) => flamegraph(&mut client, &args).await?,
        Command::Diff(args) => diff(&mut client, &args).await?,
        Command::Watch(args) => watch(&mut client, &args).await?,
        Command::Memory(args) => memory(&mut client, &args).await?,
        Command::Targets(args) => {
            let range = last(args.since, crate::clock::now_ns());
            let selector = args.filter.selector()?;
            let (profile, _) = fetch(&mut client, range, &selector, ModeArgs::default()).await?;
            print!("{}", export::live::render_targets(&ProfileView::new(&profile)?));
        }
        Command::Query(args) => {
            let range = args.range.range(crate::clock::now_ns());
            let selector = args.select.selector()?;
            let (profile, stats) = fetch(&mut client, range, &selector, args.mode).await?;
            let bytes = match args.format {
                Format::Pprof => {
                    if args.output.is_none() && std::io::stdout().is_terminal() {
                        bail!("pprof output is binary; write it to a file with -o FILE.pb.gz");
                    }
                    export::pprof::encode_gzip(&profile)
                }
                Format::Folded => export::folded::render(&ProfileView::new(&profile)?).into_bytes(),
                Format::Speedscope => {
                    let view = ProfileView::new(&profile)?;
                    let title = range_title(&stats);
                    export::speedscope::render(&view, &title).into_bytes()
                }
                Format::Flamegraph => {
                    let view = ProfileView::new(&profile)?;
                    let title = range_title(&stats);
                    let options = export::flamegraph::FlamegraphOptions {
                        title,
                        ..export::flamegraph::FlamegraphOptions::default()
                    };
                    export::flamegraph::render(&view, &options)?
                }
                Format::Lines => {
                    let view = ProfileView::new(&profile)?;
                    let function = args.function.as_deref().unwrap_or_default();
                    export::lines::render(&view, function, read_source_line).into_bytes()
                }
                Format::Top => {
                    let view = ProfileView::new(&profile)?;
                    let mut out = render_header(&stats, view.mode);
                    out.push_str(&export::top::render(&view, args.sort, args.limit));
                    out.into_bytes()
                }
            };
            write_output(args.output.as_deref(), &bytes)?;
        }
    }
    Ok(())
}

/// `profctl memory`.
async fn memory(
    client: &mut v1::profiler_client::ProfilerClient<tonic::transport::Channel>,
    args: &MemoryArgs,
) -> anyhow::Result<()> {
    let range = args.range.range(crate::clock::now_ns());
    let request = v1::MemoryTimelineRequest {
        range: Some(range),
        filter: Some(args.select.selector()?.to_proto()),
        step_nanos: args.step.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
    };
    let response = client
        .memory_timeline(request)
        .await
        .map_err(|s| anyhow::anyhow!("MemoryTimeline failed: {}", s.message()))?
        .into_inner();
    let bytes = if args.top {
        export::memory::render_top(&response, args.limit).into_bytes()
    } else {
        match args.format {
            MemoryFormat::Table => export::memory::render_table(&response).into_bytes(),
            MemoryFormat::Csv => export::memory::render_csv(&response).into_bytes(),
            MemoryFormat::Svg => {
                let end = if range.end_unix_nanos == 0 {
                    crate::clock::now_ns()
                } else {
                    range.end_unix_nanos
                };
                let title = format!(
                    "resident memory, {} .. {}",
                    format_time(range.start_unix_nanos),
                    format_time(end)
                );
                export::memory::render_svg(&response, &title, args.limit)?.into_bytes()
            }
        }
    };
    write_output(args.output.as_deref(), &bytes)
}

/// `profctl watch`: prints each window until the daemon or the reader goes away.
async fn watch(
    client: &mut v1::profiler_client::ProfilerClient<tonic::transport::Channel>,
    args: &WatchArgs,
) -> anyhow::Result<()> {
    let request = v1::WatchRequest {
        filter: Some(args.filter.selector()?.to_proto()),
        mode: args.mode.mode.to_proto().into(),
        idle: args.mode.idle,
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(|s| anyhow::anyhow!("Watch failed: {}", s.message()))?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    while let Some(message) =
        stream.message().await.map_err(|s| anyhow::anyhow!("Watch failed: {}", s.message()))?
    {
        let view = ProfileView::new(&message.profile.unwrap_or_default())?;
        let stats = message.stats.unwrap_or_default();
        let missed = match message.missed_windows {
            0 => String::new(),
            n => format!(", {n} windows missed (this client fell behind)"),
        };
        let header = format!(
            "{} .. {}: {} samples ({}){missed}",
            format_time(stats.start_unix_nanos),
            format_time(stats.end_unix_nanos),
            stats.samples,
            amount_words(stats.value, view.mode),
        );
        let table = export::live::render_window(&view, &header, args.limit);
        // On a terminal each window replaces the last; piped, the tables follow each other.
        let text = if tty { format!("\x1b[2J\x1b[H{table}") } else { format!("{table}\n") };
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to standard output"),
        }
    }
    Ok(())
}

/// Line `line` (1-based) of `file`, when this machine can read it.
fn read_source_line(file: &str, line: i64) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().nth(usize::try_from(line).ok()?.checked_sub(1)?).map(str::to_owned)
}

fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A profile's total value in its unit, and what it is, in words.
fn amount_words(value: u64, mode: Mode) -> String {
    let secs = value as f64 / 1e9;
    match mode {
        Mode::Cpu => format!("{secs:.2} s of CPU"),
        Mode::Wall => format!("{secs:.2} s of wall time"),
        Mode::OffCpu => format!("{secs:.2} s off the CPU"),
        Mode::Gil => format!("{secs:.2} s holding or waiting for the GIL"),
        Mode::Memory => {
            format!("{:.1} MiB of memory touched for the first time", value as f64 / MIB)
        }
        Mode::Resident => format!("{:.1} MiB resident, summed over readings", value as f64 / MIB),
    }
}

/// Bytes in a MiB, as memory_profiler counts.
const MIB: f64 = 1_048_576.0;

/// The header above the top table: samples, time, range and drops.
pub fn render_header(stats: &v1::QueryStats, mode: Mode) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} samples ({}) from {} to {} ({} windows)",
        stats.samples,
        amount_words(stats.value, mode),
        format_time(stats.start_unix_nanos),
        format_time(stats.end_unix_nanos),
        stats.windows
    );
    let _ = writeln!(out, "dropped: {}", render_drops(&stats.drops));
    out.push('\n');
    out
}

fn render_drops(drops: &[v1::DropCount]) -> String {
    let nonzero: Vec<String> =
        drops.iter().filter(|d| d.count > 0).map(|d| format!("{} {}", d.reason, d.count)).collect();
    if nonzero.is_empty() { "none".to_owned() } else { nonzero.join(", ") }
}

/// `profctl status` output.
pub fn render_status(s: &v1::StatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "profilerd {}", s.version);
    let _ = writeln!(
        out,
        "sampling:    {} Hz on {} CPUs, up {} s",
        s.frequency_hz, s.cpus, s.uptime_seconds
    );
    let _ = writeln!(out, "samples:     {}", s.samples);
    let _ = writeln!(out, "dropped:     {}", render_drops(&s.drops));
    let _ = writeln!(out, "processes:   {}", s.processes);
    if let Some(sym) = &s.symbolizer {
        let lookups = (sym.hits + sym.misses).max(1);
        let _ = writeln!(
            out,
            "symbols:     {} user frames (capacity {}), {} kernel frames, {:.1}% cache hits",
            sym.user_frames,
            sym.user_frames_capacity,
            sym.kernel_frames,
            100.0 * sym.hits as f64 / lookups as f64
        );
        if sym.code_bytes_limit > 0 {
            let _ = writeln!(
                out,
                "python code: {} code objects cached, {} KiB of names and line tables (limit {} MiB)",
                sym.code_objects,
                sym.code_bytes / 1024,
                sym.code_bytes_limit >> 20
            );
        }
        if let Some(u) = s.native_unwind.as_ref().filter(|u| u.processes + u.files > 0) {
            let _ = writeln!(
                out,
                "unwinding:   {} processes copy their stacks; tables of {} files mapped ({} KiB, \
                 at most {} files); {} samples unwound, {} without a caller, {} past their copy; \
                 {} bytes copied per sample (at most {})",
                u.processes,
                u.files,
                u.table_bytes / 1024,
                u.max_files,
                u.unwound,
                u.failed,
                u.ran_out,
                u.copied_bytes.checked_div(u.unwound + u.failed).unwrap_or(0),
                u.max_copy_bytes
            );
            if u.table_full > 0 {
                let _ = writeln!(
                    out,
                    "             {} processes were walked by frame pointers only: the kernel's \
                     table of copied processes was full",
                    u.table_full
                );
            }
        }
        if let Some(d) = &sym.debug_files {
            let mut line = format!("debug files: {} binaries named from them", d.found);
            if d.debuginfod {
                let _ = write!(
                    line,
                    "; debuginfod: {} downloaded ({} KiB, {} KiB cached), {} not found, {} failed",
                    d.downloads,
                    d.download_bytes / 1024,
                    d.cache_bytes / 1024,
                    d.not_found,
                    d.failures
                );
                if d.dropped > 0 {
                    let _ = write!(line, ", {} not asked (queue full)", d.dropped);
                }
                if !d.last_error.is_empty() {
                    let _ = write!(line, " (last: {})", d.last_error);
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(a) = &s.aggregation {
        let _ = writeln!(
            out,
            "windows:     {} closed of {} s, {} stacks open (limit {}), {} KiB{}",
            a.windows,
            a.window_seconds,
            a.open_stacks,
            a.max_stacks_per_window,
            a.bytes / 1024,
            if a.late_samples > 0 {
                format!(", {} samples arrived after their window closed", a.late_samples)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "daemon:      {} MiB resident, {:.2} s CPU ({:.3}% of a core)",
        s.rss_bytes / (1 << 20),
        s.cpu_seconds,
        100.0 * s.cpu_seconds / s.uptime_seconds.max(1) as f64
    );
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    if let Some(m) = &s.memory {
        let total: u64 = m.parts.iter().map(|p| p.bytes).sum();
        let parts: Vec<String> =
            m.parts.iter().map(|p| format!("{} {:.1}", p.name, mib(p.bytes))).collect();
        let _ = writeln!(
            out,
            "memory:      {:.1} of {:.1} MiB (--max-memory): {}; room for windows {:.1}; \
             caches asked to shed {} times ({} entries)",
            mib(total),
            mib(m.max_bytes),
            parts.join(", "),
            mib(m.window_room_bytes),
            m.sheds,
            m.shed_entries
        );
    }
    if !s.caches.is_empty() {
        let sizes: Vec<String> = s
            .caches
            .iter()
            .map(|c| format!("{} {}/{} ({:.1} MiB)", c.name, c.entries, c.capacity, mib(c.bytes)))
            .collect();
        let _ = writeln!(out, "caches:      {}", sizes.join(", "));
    }
    if let Some(store) = &s.store {
        let _ = writeln!(
            out,
            "store:       {} windows, {} KiB of records ({} KiB file), {} dropped by retention, \
             {} not stored, in {}",
            store.windows,
            store.bytes / 1024,
            store.file_bytes / 1024,
            store.evicted,
            store.unstored,
            store.path
        );
        let _ = writeln!(
            out,
            "dictionary:  {} frames, stacks and label sets stored ({} remembered in memory), {} \
             forgotten by sweeps",
            store.dictionary, store.dictionary_cached, store.dictionary_swept
        );
        if store.dictionary_pending + store.dictionary_restarts > 0 {
            let _ = writeln!(
                out,
                "             {} rows waiting for a write that failed; dropped {} times at the \
                 bound",
                store.dictionary_pending, store.dictionary_restarts
            );
        }
    }
    if let Some(k) = &s.kubernetes {
        let _ = write!(
            out,
            "kubernetes:  node {}, {} pods, {} listings, {} failed",
            k.node, k.pods, k.listings, k.errors
        );
        if !k.last_error.is_empty() {
            let _ = write!(out, "; last: {}", k.last_error);
        }
        out.push('\n');
    }
    for e in &s.exporters {
        let delivered = if e.delivered_until_unix_nanos > 0 {
            format!("up to {}", format_time(e.delivered_until_unix_nanos))
        } else {
            "nothing yet".to_owned()
        };
        let _ = write!(
            out,
            "export:      {}: {} windows ({} requests, {:.1} KiB) delivered, {delivered}; {} failed attempts",
            e.name,
            e.windows,
            e.requests,
            e.bytes as f64 / 1024.0,
            e.failures
        );
        if e.evicted_windows > 0 {
            let _ = write!(
                out,
                "; {} windows dropped by the store's retention before delivery",
                e.evicted_windows
            );
        }
        if e.refused_windows > 0 || e.rejected_profiles > 0 {
            let _ = write!(
                out,
                "; refused: {} windows, {} profiles",
                e.refused_windows, e.rejected_profiles
            );
        }
        if !e.last_error.is_empty() {
            let _ = write!(out, "; last: {}", e.last_error);
        }
        out.push('\n');
    }
    for r in &s.runtimes {
        let _ = writeln!(out, "runtime:     pid {} ({}): {}", r.pid, r.comm, r.description);
    }
    if s.oom_kills_total > 0 {
        let _ = writeln!(out, "OOM kills:   {} since start", s.oom_kills_total);
    }
    for k in &s.oom_kills {
        let mut place = String::new();
        if !k.pod.is_empty() {
            let _ = write!(place, ", pod {}/{}", k.namespace, k.pod);
        } else if !k.container.is_empty() {
            let _ = write!(place, ", container {}", &k.container[..k.container.len().min(12)]);
        }
        let _ = writeln!(
            out,
            "OOM kill:    {} pid {} ({}) at {:.1} MiB{place}; its memory: profctl memory --pid \
             {} and profctl query --mode memory --pid {}",
            format_time(k.time_unix_nanos),
            k.pid,
            k.comm,
            k.rss_bytes as f64 / MIB,
            k.pid,
            k.pid
        );
    }
    if s.kernel_run_count > 0 {
        let _ = writeln!(
            out,
            "kernel:      {} program runs, {:.0} ns per run",
            s.kernel_run_count,
            s.kernel_run_time_ns as f64 / s.kernel_run_count as f64
        );
    } else {
        let _ = writeln!(out, "kernel:      cost unknown (start profilerd with --bpf-stats)");
    }
    out
}

// `profctl flamegraph` and `profctl diff`.

/// Which processes to profile: the filters of `flamegraph` and `diff`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SelectorArgs {
    /// Only this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes with this name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this executable path.
    #[arg(long)]
    pub exe: Option<String>,
    /// Only this Kubernetes pod (by name; combine with --namespace).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only pods in this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Label selector, for example comm=python3,tid=42 (keys: pid, tid, comm, thread, exe,
    /// cgroup, container, container_name, pod_uid, pod, namespace, runtime, reason, gil).
    #[arg(long, short = 's')]
    pub selector: Option<Selector>,
}

impl SelectorArgs {
    /// The selector built from `--pid`, `--comm`, `--exe`, `--pod`, `--namespace` and
    /// `--selector`.
    pub fn selector(&self) -> anyhow::Result<Selector> {
        let mut selector = self.selector.clone().unwrap_or_default();
        if let Some(pid) = self.pid {
            selector.push(Matcher::new(LabelKey::Pid, &pid.to_string())?);
        }
        if let Some(comm) = &self.comm {
            selector.push(Matcher::new(LabelKey::Comm, comm)?);
        }
        if let Some(exe) = &self.exe {
            selector.push(Matcher::new(LabelKey::Exe, exe)?);
        }
        if let Some(pod) = &self.pod {
            selector.push(Matcher::new(LabelKey::Pod, pod)?);
        }
        if let Some(namespace) = &self.namespace {
            selector.push(Matcher::new(LabelKey::Namespace, namespace)?);
        }
        Ok(selector)
    }
}

/// Arguments of `flamegraph`.
#[derive(Debug, clap::Args)]
pub struct FlamegraphArgs {
    /// The time range.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Which processes.
    #[command(flatten)]
    pub select: SelectorArgs,
    /// What to measure.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// Draw an icicle graph: roots at the top, stacks growing down.
    #[arg(long)]
    pub icicle: bool,
    /// Merge stacks from the leaf: the bottom row is where samples were taken, callers above.
    #[arg(long)]
    pub reverse: bool,
    /// The graph's title (default: the time range).
    #[arg(long)]
    pub title: Option<String>,
    /// Write the SVG to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// Arguments of `diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The range to compare against, FROM..TO. Each end is a time (RFC 3339) or a duration ago
    /// (2h = two hours ago); an empty or `now` TO is now, an empty FROM the oldest data kept.
    /// A lone DURATION is the last DURATION. Examples: 2h..1h, 30m, 2026-01-02T10:00:00Z..1h.
    #[arg(long, value_name = "RANGE")]
    pub base: TimeSpan,
    /// The range to compare, in the same syntax, for example 1h.. (the last hour).
    #[arg(long, value_name = "RANGE")]
    pub head: TimeSpan,
    /// Which processes (in both ranges).
    #[command(flatten)]
    pub select: SelectorArgs,
    /// What to measure (in both ranges).
    #[command(flatten)]
    pub mode: ModeArgs,
    /// Order rows by the largest change of this share.
    #[arg(long, value_enum, default_value_t = export::diff::DiffSort::SelfShare)]
    pub sort: export::diff::DiffSort,
    /// Rows of the table.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    /// Also draw a differential flame graph (red: grew, blue: shrank) into the -o file.
    #[arg(long, requires = "output")]
    pub flamegraph: bool,
    /// The differential flame graph's file.
    #[arg(long, short = 'o', requires = "flamegraph")]
    pub output: Option<PathBuf>,
    /// Draw the differential graph as an icicle graph.
    #[arg(long)]
    pub icicle: bool,
    /// Merge the differential graph's stacks from the leaf.
    #[arg(long)]
    pub reverse: bool,
}

/// One end of a RANGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimePoint {
    /// The oldest data the daemon keeps (an empty FROM).
    Oldest,
    /// Now (an empty TO, or `now`).
    Now,
    /// This long before now.
    Ago(Duration),
    /// Nanoseconds since the Unix epoch.
    At(i64),
}

impl TimePoint {
    fn parse(s: &str) -> Result<TimePoint, String> {
        if s == "now" {
            return Ok(TimePoint::Now);
        }
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(TimePoint::Ago(d));
        }
        if let Ok(t) = parse_time(s) {
            return Ok(TimePoint::At(t));
        }
        Err(format!(
            "{s:?} is neither a duration ago (like 90s, 2h, 1h30m) nor an RFC 3339 time (like \
             2026-01-02T15:04:05Z)"
        ))
    }

    /// Nanoseconds since the epoch at `now_ns`.
    fn at(self, now_ns: i64) -> i64 {
        match self {
            TimePoint::Oldest => 1,
            TimePoint::Now => now_ns,
            TimePoint::Ago(d) => {
                now_ns.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            }
            TimePoint::At(t) => t,
        }
    }
}

/// A time range of `profctl diff`: `FROM..TO`, or a lone FROM up to now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeSpan {
    /// Start.
    pub from: TimePoint,
    /// End.
    pub to: TimePoint,
    /// As written, for messages.
    pub text: String,
}

impl TimeSpan {
    /// The range at `now_ns`, or why it is empty. An end at now is sent as 0 (open: the daemon
    /// reads its own clock).
    pub fn resolve(&self, now_ns: i64) -> Result<v1::TimeRange, String> {
        let (start, end) = (self.from.at(now_ns), self.to.at(now_ns));
        if start >= end {
            return Err(format!(
                "the range is empty: it starts at {} and ends at {}",
                format_time(start),
                format_time(end)
            ));
        }
        let end = if self.to == TimePoint::Now { 0 } else { end };
        Ok(v1::TimeRange { start_unix_nanos: start.max(1), end_unix_nanos: end })
    }
}

impl std::str::FromStr for TimeSpan {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeSpan, String> {
        let text = s.to_owned();
        let s = s.trim();
        let (from, to) = match s.split_once("..") {
            Some((from, to)) => {
                let from = if from.trim().is_empty() {
                    TimePoint::Oldest
                } else {
                    TimePoint::parse(from.trim())?
                };
                let to = if to.trim().is_empty() {
                    TimePoint::Now
                } else {
                    TimePoint::parse(to.trim())?
                };
                (from, to)
            }
            None if s.is_empty() => {
                return Err("expected FROM..TO, for example 2h..1h".to_owned());
            }
            None => (TimePoint::parse(s)?, TimePoint::Now),
        };
        if from == TimePoint::Now {
            return Err(format!(
                "{text:?} is empty: FROM must be before TO (FROM..TO, like 2h..1h)"
            ));
        }
        let span = TimeSpan { from, to, text };
        // Ends of the same kind compare without a clock; mixed ones are checked when resolved.
        let ordered = match (from, to) {
            (TimePoint::Ago(a), TimePoint::Ago(b)) => a > b,
            (TimePoint::At(a), TimePoint::At(b)) => a < b,
            _ => true,
        };
        if !ordered {
            return Err(format!(
                "{:?} starts after it ends: FROM must be before TO (2h..1h is from two hours ago \
                 to one hour ago)",
                span.text
            ));
        }
        Ok(span)
    }
}

/// `START to END` of a query's answer, as a title.
fn range_title(stats: &v1::QueryStats) -> String {
    format!(
        "{} samples from {} to {}",
        stats.samples,
        format_time(stats.start_unix_nanos),
        format_time(stats.end_unix_nanos)
    )
}

/// Queries `range` for the processes of `selector`.
async fn fetch(
    client: &mut v1::profiler_client::ProfilerClient<tonic::transport::Channel>,
    range: v1::TimeRange,
    selector: &Selector,
    mode: ModeArgs,
) -> anyhow::Result<(v1::Profile, v1::QueryStats)> {
    let request = v1::QueryRequest {
        range: Some(range),
        filter: Some(selector.to_proto()),
        mode: mode.mode.to_proto().into(),
        idle: mode.idle,
    };
    let response = client
        .query(request)
        .await
        .map_err(|s| anyhow::anyhow!("Query failed: {}", s.message()))?
        .into_inner();
    let stats = response.stats.unwrap_or_default();
    // On standard error, so that the formats on standard output stay clean.
    for note in completeness_notes(&stats) {
        eprintln!("profctl: {note}");
    }
    Ok((response.profile.unwrap_or_default(), stats))
}

/// What an answer is missing, in words: windows that could not be stored, and entries folded
/// into `[other]`.
pub fn completeness_notes(stats: &v1::QueryStats) -> Vec<String> {
    let mut notes = Vec::new();
    if stats.unstored_windows > 0 {
        let missing = stats.missing_windows;
        notes.push(format!(
            "{} window(s) in this range could not be stored (see `profctl status`); {}",
            stats.unstored_windows,
            if missing == 0 {
                "their samples are included from memory".to_owned()
            } else {
                format!("the samples of {missing} of them are missing")
            }
        ));
    }
    if stats.idle_threads > 0 {
        notes.push(format!(
            "{} thread(s) that never ran on a CPU in this range were left out ({:.1} s off the \
             CPU); --idle includes them",
            stats.idle_threads,
            stats.idle_nanos as f64 / 1e9
        ));
    }
    if stats.truncated {
        notes.push(format!(
            "the answer was cut to the daemon's entry limit: {} smaller stacks ({} samples) are \
             folded into [other]; narrow the range or the selector for all of them",
            stats.folded_entries, stats.folded_samples
        ));
    }
    notes
}

fn write_output(path: Option<&std::path::Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
        }
        None => std::io::stdout().write_all(bytes).context("writing to standard output"),
    }
}

async fn flamegraph(
    client: &mut v1::profiler_client::ProfilerClient<tonic::transport::Channel>,
    args: &FlamegraphArgs,
) -> anyhow::Result<()> {
    let range = args.range.range(crate::clock::now_ns());
    let (profile, stats) = fetch(client, range, &args.select.selector()?, args.mode).await?;
    let options = export::flamegraph::FlamegraphOptions {
        title: args.title.clone().unwrap_or_else(|| range_title(&stats)),
        icicle: args.icicle,
        reverse: args.reverse,
    };
    let svg = export::flamegraph::render(&ProfileView::new(&profile)?, &options)?;
    write_output(args.output.as_deref(), &svg)
}

/// The output of `diff` for the answers to its two queries: the table, and the differential
/// flame graph when `--flamegraph` asked for one.
pub fn render_diff(
    args: &DiffArgs,
    base: (&v1::Profile, &v1::QueryStats),
    head: (&v1::Profile, &v1::QueryStats),
) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    let base_view = ProfileView::new(base.0)?;
    let head_view = ProfileView::new(head.0)?;
    // A range in which nothing grew is an answer in the memory mode (nothing grew there), as
    // an empty snapshot difference is for tracemalloc; in the others a range needs samples.
    let memory = base_view.mode == Mode::Memory;
    for (flag, span, view) in
        [("--base", &args.base, &base_view), ("--head", &args.head, &head_view)]
    {
        if view.total() == 0 && !(memory && base_view.total() + head_view.total() > 0) {
            bail!("{flag} {}: no samples in this range for this selector", span.text);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "base ({}): {}", args.base.text, range_title(base.1));
    let _ = writeln!(out, "head ({}): {}", args.head.text, range_title(head.1));
    if memory {
        out.push_str(&export::diff::render_growth(&base_view, &head_view, args.limit));
        out.push('\n');
    }
    out.push_str(&export::diff::render(&base_view, &head_view, args.sort, args.limit));
    let svg = if args.flamegraph {
        let options = export::flamegraph::FlamegraphOptions {
            title: format!(
                "Differential flame graph: {} against {}",
                args.head.text, args.base.text
            ),
            icicle: args.icicle,
            reverse: args.reverse,
        };
        Some(export::diff::render_flamegraph(&base_view, &head_view, &options)?)
    } else {
        None
    };
    Ok((out, svg))
}

async fn diff(
    client: &mut v1::profiler_client::ProfilerClient<tonic::transport::Channel>,
    args: &DiffArgs,
) -> anyhow::Result<()> {
    let now = crate::clock::now_ns();
    let selector = args.select.selector()?;
    let base_range =
        args.base.resolve(now).map_err(|e| anyhow::anyhow!("--base {}: {e}", args.base.text))?;
    let head_range =
        args.head.resolve(now).map_err(|e| anyhow::anyhow!("--head {}: {e}", args.head.text))?;
    let base = fetch(client, base_range, &selector, args.mode).await?;
    let head = fetch(client, head_range, &selector, args.mode).await?;
    let (table, svg) = render_diff(args, (&base.0, &base.1), (&head.0, &head.1))?;
    if let Some(svg) = svg {
        write_output(args.output.as_deref(), &svg)?;
    }
    std::io::stdout().write_all(table.as_bytes()).context("writing to standard output")
}
