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
    client,
    config::parse_duration,
    export::{self, ProfileView, top::SortKey},
    selector::{LabelKey, Matcher, Selector},
};

/// profctl: query a running profilerd.
#[derive(Debug, Parser)]
#[command(name = "profctl", version, about)]
pub struct Cli {
    /// The daemon's endpoint: unix:///PATH, http://HOST:PORT or tcp://HOST:PORT.
    #[arg(long, global = true, env = "PROFCTL_ENDPOINT", default_value = concat!("unix://", "/run/profiler/profiler.sock"))]
    pub endpoint: String,

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
}

/// Arguments of `query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Query the last DURATION (for example 60s, 5m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Duration,
    /// Start of the range (RFC 3339, for example 2026-01-02T15:04:05Z).
    #[arg(long, requires = "to", value_parser = parse_time)]
    pub from: Option<i64>,
    /// End of the range (RFC 3339).
    #[arg(long, requires = "from", value_parser = parse_time)]
    pub to: Option<i64>,
    /// Only this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes with this name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only this executable path.
    #[arg(long)]
    pub exe: Option<String>,
    /// Label selector, for example comm=python3,tid=42 (keys: pid, tid, comm, thread, exe, cgroup).
    #[arg(long, short = 's')]
    pub selector: Option<Selector>,
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

impl QueryArgs {
    /// The selector built from `--pid`, `--comm`, `--exe` and `--selector`.
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
        Ok(selector)
    }

    /// The range in nanoseconds since the epoch, relative to `now_ns`.
    pub fn range(&self, now_ns: i64) -> v1::TimeRange {
        match (self.from, self.to) {
            (Some(start), Some(end)) => {
                v1::TimeRange { start_unix_nanos: start, end_unix_nanos: end }
            }
            _ => {
                let since = i64::try_from(self.since.as_nanos()).unwrap_or(i64::MAX);
                v1::TimeRange {
                    start_unix_nanos: now_ns.saturating_sub(since).max(1),
                    end_unix_nanos: 0,
                }
            }
        }
    }
}

/// Runs profctl.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let mut client = client::connect(&cli.endpoint).await?;
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
        Command::Query(args) => {
            let request = v1::QueryRequest {
                range: Some(args.range(crate::aggregate::actor::now_ns())),
                filter: Some(args.selector()?.to_proto()),
            };
            let response = client
                .query(request)
                .await
                .map_err(|s| anyhow::anyhow!("Query failed: {}", s.message()))?;
            let response = response.into_inner();
            let profile = response.profile.unwrap_or_default();
            let bytes = match args.format {
                Format::Pprof => {
                    if args.output.is_none() && std::io::stdout().is_terminal() {
                        bail!("pprof output is binary; write it to a file with -o FILE.pb.gz");
                    }
                    export::pprof::encode_gzip(&profile)
                }
                Format::Folded => export::folded::render(&ProfileView::new(&profile)?).into_bytes(),
                Format::Lines => {
                    let view = ProfileView::new(&profile)?;
                    let function = args.function.as_deref().unwrap_or_default();
                    export::lines::render(&view, function, read_source_line).into_bytes()
                }
                Format::Top => {
                    let view = ProfileView::new(&profile)?;
                    let mut out =
                        render_header(&response.stats.unwrap_or_default(), view.period_ns);
                    out.push_str(&export::top::render(&view, args.sort, args.limit));
                    out.into_bytes()
                }
            };
            match &args.output {
                Some(path) => std::fs::write(path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    std::io::stdout().write_all(&bytes).context("writing to standard output")?;
                }
            }
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

/// The header above the top table: samples, range and drops.
pub fn render_header(stats: &v1::QueryStats, period_ns: i64) -> String {
    let mut out = String::new();
    let cpu_secs = stats.samples as f64 * period_ns as f64 / 1e9;
    let _ = writeln!(
        out,
        "{} samples ({cpu_secs:.2} s of CPU) from {} to {} ({} windows)",
        stats.samples,
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
    }
    if let Some(a) = &s.aggregation {
        let _ = writeln!(
            out,
            "windows:     {} closed of {} s, {} stacks open (limit {}), {} KiB",
            a.windows,
            a.window_seconds,
            a.open_stacks,
            a.max_stacks_per_window,
            a.bytes / 1024
        );
    }
    let _ = writeln!(
        out,
        "daemon:      {} MiB resident, {:.2} s CPU ({:.3}% of a core)",
        s.rss_bytes / (1 << 20),
        s.cpu_seconds,
        100.0 * s.cpu_seconds / s.uptime_seconds.max(1) as f64
    );
    for r in &s.runtimes {
        let _ = writeln!(out, "runtime:     pid {} ({}): {}", r.pid, r.comm, r.description);
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
