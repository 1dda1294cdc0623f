//! The peers benchmark: profilerd next to py-spy and perf, side by side in one run, written to
//! `BENCHMARKS.md`.
//!
//! ```text
//! make bench                      # the full run (about 25 minutes), rewrites BENCHMARKS.md
//! make bench-smoke                # a few seconds per case; checks that the harness works
//! cargo bench -p profiler-daemon --bench peers -- [--smoke] [--rounds N] [--out FILE]
//! cargo bench -p profiler-daemon --bench peers -- --only SECTION [--smoke]
//!                                 # SECTION: off-cpu, churn, memory, store or unwind
//! ```
//!
//! Every ratio compares runs of the same round; rounds alternate the order of the settings,
//! and the report gives the minimum and the median over rounds. The profiler's own cost (its
//! process CPU plus, for profilerd, its BPF programs' run time from `kernel.bpf_stats_enabled`,
//! per wall second) is the figure that noise does not blur. Needs root (BPF, and attaching
//! py-spy and perf to other processes).

mod churn;
#[path = "../common/day.rs"]
mod day;
mod measure;
mod memory;
mod off_cpu;
mod profilers;
mod report;
mod unwind;
mod watchdog;
mod workloads;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use profilers::{Attached, Profilerd, Usage};
use report::{Accuracy, DaemonCost, ExportCost, KernelCost, Machine, QueryLatency, Results, Trial};
use workloads::{Programs, Workload};

/// One way of running a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// Not profiled.
    Baseline,
    /// profilerd at `hz`, with the call probe when `calls`.
    Profilerd {
        /// Samples per second and CPU.
        hz: u32,
        /// Python entry probe on.
        calls: bool,
    },
    /// py-spy record at 100 Hz, with one of its flags: `--nonblocking`, or `--idle` and
    /// `--gil`, its answers to the wall-clock and GIL profiles that profilerd records always.
    PySpy {
        /// The flag.
        flag: Option<&'static str>,
    },
    /// perf record -F 99 -g.
    Perf,
}

impl Setting {
    /// Its name in the report.
    pub fn name(self) -> String {
        match self {
            Setting::Baseline => "baseline (not profiled)".to_owned(),
            Setting::Profilerd { hz, calls: false } => format!("profilerd {hz} Hz"),
            Setting::Profilerd { hz, calls: true } => format!("profilerd {hz} Hz + call probe"),
            Setting::PySpy { flag: None } => "py-spy record 100 Hz".to_owned(),
            Setting::PySpy { flag: Some(flag) } => format!("py-spy record 100 Hz {flag}"),
            Setting::Perf => "perf record -F 99 -g".to_owned(),
        }
    }

    fn applies_to(self, workload: Workload) -> bool {
        !matches!(self, Setting::PySpy { .. }) || workload.is_python()
    }
}

struct Options {
    smoke: bool,
    /// Run one section and print it instead of writing the report.
    only: Option<String>,
    rounds: usize,
    out: PathBuf,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            smoke: false,
            only: None,
            rounds: 7,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md"),
        };
        let mut rounds = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--smoke" => options.smoke = true,
                "--only" => match args.next().as_deref() {
                    Some(section @ ("off-cpu" | "churn" | "memory" | "store" | "unwind")) => {
                        options.only = Some(section.to_owned());
                    }
                    other => {
                        return Err(format!(
                            "--only takes off-cpu, churn, memory, store or unwind, not {other:?}"
                        ));
                    }
                },
                "--rounds" => {
                    let n = args.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0);
                    rounds = Some(n.ok_or("--rounds needs a positive number")?);
                }
                // cargo runs benchmarks in the package's directory: say which file.
                "--out" => {
                    let out = PathBuf::from(args.next().ok_or("--out needs a file")?);
                    if out.is_relative() {
                        return Err(format!("--out needs an absolute path, not {}", out.display()));
                    }
                    options.out = out;
                }
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; use --smoke, --rounds N, --out FILE, --only off-cpu|churn|memory|store|unwind"
                    ));
                }
            }
        }
        options.rounds = rounds.unwrap_or(if options.smoke { 1 } else { 7 });
        Ok(options)
    }

    /// Work and durations relative to the full run.
    fn scale(&self) -> f64 {
        if self.smoke { 0.05 } else { 1.0 }
    }

    fn seconds(&self, full: f64, smoke: f64) -> f64 {
        if self.smoke { smoke } else { full }
    }
}

/// The venv with memory_profiler (and mprof) that `.ci/setup-tests` makes; without it the
/// comparison with the memory tools is left out, and said so.
fn memory_profiler_venv() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/memprof-venv");
    let ok = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", "import memory_profiler"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("memory_profiler not found (run .ci/setup-tests): the memory tools are left out");
    }
    ok.then_some(venv)
}

struct Tools {
    py_spy: Option<PathBuf>,
    perf: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let py_spy = std::env::var_os("PY_SPY")
            .map(PathBuf::from)
            .into_iter()
            .chain([repo.join(".cache/pyspy-venv/bin/py-spy"), PathBuf::from("py-spy")])
            .find(|p| measure::runnable(p));
        // perf must be able to sample here (it falls back to cpu-clock without hardware
        // counters).
        let perf = Some(PathBuf::from("perf")).filter(|p| {
            std::process::Command::new(p)
                .args(["record", "-F", "99", "-g", "-q", "-o", "/dev/null", "--", "true"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Tools { py_spy, perf }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("peers benchmark: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let options = Options::parse()?;
    if !profiler_daemon::loader::has_bpf_privileges() {
        let why = "needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE) and kernel BTF";
        // Like the root tests: the smoke run of `make test` skips without privileges, except
        // under CI=true, where a skip would hide a broken harness.
        if options.smoke && std::env::var("CI").map_or(true, |v| v != "true") {
            eprintln!("peers benchmark: smoke run skipped: {why}");
            return Ok(());
        }
        return Err(why.into());
    }
    let _stats = measure::enable_bpf_stats().ok_or("cannot enable kernel.bpf_stats_enabled")?;
    let work = std::env::temp_dir().join("profiler-peers-bench");
    // A smoke run takes about 3 minutes here and a full one about 21: far more than either means
    // a step is stuck.
    let limit = Duration::from_secs(if options.smoke { 15 * 60 } else { 120 * 60 });
    watchdog::arm(limit, work.join("profilerd/profilerd.log"));
    let _ = std::fs::remove_dir_all(&work);
    let python = ["/usr/bin/python3", "/usr/bin/python3.11"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("no /usr/bin/python3 to run the workloads")?;
    let programs = Programs::prepare(&work.join("workloads"), python)?;
    match options.only.as_deref() {
        Some("off-cpu") => {
            let rows = off_cpu::cost(&programs, options.seconds(8.0, 2.0))?;
            print!("{}", report::off_cpu_table(&rows));
        }
        Some("memory") => {
            let rows =
                memory::cost(&programs, &work, options.seconds(10.0, 2.0), options.rounds.min(3))?;
            print!("{}", report::memory_table(&rows));
            let resident =
                memory::resident_cost(&work, memory::GOAL_PROCESSES, options.seconds(30.0, 3.0))?;
            print!("\n{}", report::resident_table(&resident));
            if let Some(venv) = memory_profiler_venv() {
                let rows = memory::tools(&programs, &work, &venv, 2, options.rounds.min(3))?;
                print!("\n{}", report::tools_table(&rows));
            }
        }
        Some("unwind") => {
            let perf = Tools::find().perf;
            let cost = unwind::cost(&work, perf.as_deref(), options.seconds(6.0, 2.0))?;
            print!("{}", report::unwind_table(&cost));
        }
        Some("store") => {
            let (_, export) = query_latency(&options, &work)?;
            print!("{}", report::export_table(&export));
        }
        Some(_) => {
            let churn = churn::run(&programs, &work, options.seconds(60.0, 5.0))?;
            print!("{}", report::churn_section(&churn));
        }
        None => {}
    }
    if options.only.is_some() {
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    let tools = Tools::find();
    if tools.py_spy.is_none() {
        eprintln!("py-spy not found (set PY_SPY, or run .ci/setup): its rows are left out");
    }
    let started = Instant::now();
    let mut results = Results {
        machine: Machine::describe(
            &programs.python,
            tools.py_spy.as_deref(),
            tools.perf.as_deref(),
        ),
        smoke: options.smoke,
        rounds: options.rounds,
        ..Results::default()
    };
    watchdog::step(0, format!("overhead: {} rounds", options.rounds));
    results.trials = overhead(&options, &programs, &tools, &work)?;
    watchdog::step(0, "kernel cost per sample");
    results.kernel = kernel_cost(&options, &programs, &work)?;
    watchdog::step(0, "native unwinding");
    results.unwind = Some(unwind::cost(&work, tools.perf.as_deref(), options.seconds(6.0, 2.0))?);
    watchdog::step(0, "off-CPU cost per context switch");
    results.off_cpu = off_cpu::cost(&programs, options.seconds(8.0, 2.0))?;
    watchdog::step(0, "page-fault cost");
    results.memory =
        memory::cost(&programs, &work, options.seconds(10.0, 2.0), options.rounds.min(3))?;
    watchdog::step(0, "resident memory readings");
    results.resident =
        Some(memory::resident_cost(&work, memory::GOAL_PROCESSES, options.seconds(30.0, 3.0))?);
    if let Some(venv) = memory_profiler_venv() {
        watchdog::step(0, "memory tools");
        results.tools = memory::tools(&programs, &work, &venv, 2, options.rounds.min(3))?;
    }
    watchdog::step(0, "daemon cost");
    results.daemon = daemon_cost(&options, &programs, &tools, &work)?;
    watchdog::step(0, "accuracy");
    results.accuracy = accuracy(&options, &programs, &tools, &work)?;
    watchdog::step(0, "query latency");
    (results.queries, results.export) = query_latency(&options, &work)?;
    watchdog::step(0, "churn");
    results.churn = Some(churn::run(&programs, &work, options.seconds(60.0, 5.0))?);
    results.duration = started.elapsed();
    let text = report::markdown(&results);
    report::check(&results, &text)?;
    std::fs::write(&options.out, text).map_err(|e| format!("{}: {e}", options.out.display()))?;
    let json = options.out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", json.display()))?;
    eprintln!("wrote {} and {}", options.out.display(), json.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Wall time of each workload under each setting, rounds interleaved.
fn overhead(
    options: &Options,
    programs: &Programs,
    tools: &Tools,
    work: &Path,
) -> Result<Vec<Trial>, String> {
    let mut settings = vec![
        Setting::Baseline,
        Setting::Profilerd { hz: 19, calls: false },
        Setting::Profilerd { hz: 99, calls: false },
        Setting::Profilerd { hz: 999, calls: false },
        Setting::Profilerd { hz: 99, calls: true },
    ];
    if tools.py_spy.is_some() {
        for flag in [None, Some("--nonblocking"), Some("--idle"), Some("--gil")] {
            settings.push(Setting::PySpy { flag });
        }
    }
    if tools.perf.is_some() {
        settings.push(Setting::Perf);
    }
    let mut trials = Vec::new();
    for round in 0..options.rounds {
        let mut order = settings.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for setting in order {
            watchdog::step(1, format!("round {} {}", round + 1, setting.name()));
            let daemon = match setting {
                Setting::Profilerd { hz, calls } => {
                    let d = Profilerd::start(&work.join("profilerd"), hz, calls)?;
                    d.settle(Duration::from_secs(20));
                    Some(d)
                }
                _ => None,
            };
            for workload in Workload::ALL.into_iter().filter(|w| setting.applies_to(*w)) {
                let mut running = programs.start(workload, options.scale())?;
                let attached = match setting {
                    Setting::PySpy { flag } => {
                        let py_spy = tools.py_spy.as_deref().ok_or("no py-spy")?;
                        let out = work.join("py-spy.txt");
                        Some(Attached::py_spy(py_spy, running.pid(), flag, out)?)
                    }
                    Setting::Perf => {
                        let perf = tools.perf.as_deref().ok_or("no perf")?;
                        Some(Attached::perf(perf, running.pid(), work.join("perf.data"))?)
                    }
                    _ => None,
                };
                let usage = || match (&daemon, &attached) {
                    (Some(d), _) => d.usage(),
                    (_, Some(a)) => a.usage(),
                    _ => Usage::default(),
                };
                let before = usage();
                let wall = Instant::now();
                running.go()?;
                let elapsed = running.elapsed()?;
                let wall = wall.elapsed();
                let used = usage().since(before);
                running.reap()?;
                if let Some(a) = attached {
                    a.finish(Duration::from_secs(10));
                }
                trials.push(Trial {
                    round,
                    setting: setting.name(),
                    workload: workload.name().to_owned(),
                    seconds: elapsed.as_secs_f64(),
                    cost_percent: measure::core_percent(used.total(), wall),
                });
            }
            if let Some(d) = daemon {
                d.stop();
            }
        }
    }
    Ok(trials)
}

/// Nanoseconds per run of the sampling program, two busy processes (one per CPU here) at a
/// time so that nearly every run samples them.
fn kernel_cost(
    options: &Options,
    programs: &Programs,
    work: &Path,
) -> Result<Vec<KernelCost>, String> {
    let daemon = Profilerd::start(&work.join("profilerd"), 999, false)?;
    let seconds = options.seconds(6.0, 2.0);
    let mut out = Vec::new();
    for (case, depth) in
        [("native C, 3 frames", 0), ("Python, 20 frames", 20), ("Python, 100 frames", 100)]
    {
        watchdog::step(1, case);
        let mut children = programs.busy_at_depth(depth, 2, seconds + 1.5);
        // Past detection and start-up.
        std::thread::sleep(Duration::from_secs(1));
        let before = daemon.sampling_cost();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let after = daemon.sampling_cost();
        for c in &mut children {
            let _ = c.wait();
        }
        let cost = after.since(before);
        out.push(KernelCost {
            case: case.to_owned(),
            runs: cost.runs,
            ns_per_sample: cost.run_ns as f64 / cost.runs.max(1) as f64,
        });
    }
    daemon.stop();
    Ok(out)
}

/// Daemon CPU, BPF time and peak RSS with 1 and 20 busy Python processes, next to one py-spy
/// per process.
fn daemon_cost(
    options: &Options,
    programs: &Programs,
    tools: &Tools,
    work: &Path,
) -> Result<Vec<DaemonCost>, String> {
    let seconds = options.seconds(60.0, 4.0);
    let mut out = Vec::new();
    for processes in [1, if options.smoke { 4 } else { 20 }] {
        let busy = format!("{processes} busy process{}", if processes > 1 { "es" } else { "" });
        watchdog::step(1, format!("profilerd, {busy}"));
        let daemon = Profilerd::start(&work.join("profilerd"), 99, false)?;
        daemon.settle(Duration::from_secs(20));
        // Past the processes' start-up: finding them and symbolizing their code.
        let warm_up = options.seconds(5.0, 1.0);
        let mut children = programs.busy(processes, warm_up + seconds + 5.0);
        std::thread::sleep(Duration::from_secs_f64(warm_up));
        let before = daemon.usage();
        let status_before = daemon.status().ok_or("profilerd does not answer")?;
        let wall = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let used = daemon.usage().since(before);
        let wall = wall.elapsed();
        let status = daemon.status().ok_or("profilerd does not answer")?;
        let sym = |s: &profiler_proto::v1::StatusResponse| {
            s.symbolizer.as_ref().map_or((0, 0), |y| (y.hits, y.misses))
        };
        let (h0, m0) = sym(&status_before);
        let (h1, m1) = sym(&status);
        let (hits, misses) = (h1.saturating_sub(h0), m1.saturating_sub(m0));
        out.push(DaemonCost {
            profiler: "profilerd 99 Hz".to_owned(),
            processes,
            cpu_percent: measure::core_percent(Duration::from_nanos(used.cpu_ns), wall),
            bpf_percent: measure::core_percent(Duration::from_nanos(used.bpf.run_ns), wall),
            peak_rss_mib: measure::peak_rss(daemon.pid()) as f64 / f64::from(1 << 20),
            cache_hit_percent: Some(100.0 * hits as f64 / (hits + misses).max(1) as f64),
        });
        daemon.stop();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let Some(py_spy) = tools.py_spy.as_deref() else { continue };
        watchdog::step(1, format!("py-spy, {busy}"));
        let mut children = programs.busy(processes, seconds + 30.0);
        std::thread::sleep(Duration::from_millis(300));
        let mut spies = Vec::new();
        for (i, c) in children.iter().enumerate() {
            spies.push(Attached::py_spy(py_spy, c.id(), None, work.join(format!("spy{i}.txt")))?);
        }
        let before: Vec<Usage> = spies.iter().map(Attached::usage).collect();
        let wall = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let cpu: u64 = spies.iter().zip(&before).map(|(s, b)| s.usage().since(*b).cpu_ns).sum();
        let wall = wall.elapsed();
        let rss: u64 = spies.iter().map(Attached::peak_rss).sum();
        // The spies first: py-spy pauses its target to sample it, and a target killed while
        // paused is not reaped until its tracer lets go (a run hung there once).
        for s in spies {
            s.stop(Duration::from_secs(10));
        }
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        out.push(DaemonCost {
            profiler: format!(
                "py-spy 100 Hz ({processes} process{})",
                if processes > 1 { "es" } else { "" }
            ),
            processes,
            cpu_percent: measure::core_percent(Duration::from_nanos(cpu), wall),
            bpf_percent: 0.0,
            peak_rss_mib: rss as f64 / f64::from(1 << 20),
            cache_hit_percent: None,
        });
    }
    Ok(out)
}

/// Per-function CPU shares against the workload's own measurement, profilerd and py-spy on the
/// same process at the same time.
fn accuracy(
    options: &Options,
    programs: &Programs,
    tools: &Tools,
    work: &Path,
) -> Result<Vec<Accuracy>, String> {
    let seconds = options.seconds(20.0, 3.0);
    let daemon = Profilerd::start(&work.join("profilerd"), 99, false)?;
    let mut out = Vec::new();
    let runs = options.rounds.min(3);
    for run in 0..runs {
        watchdog::step(1, format!("run {}", run + 1));
        let mut child = programs.accuracy(seconds)?;
        let pid = child.id();
        let spy = match tools.py_spy.as_deref() {
            Some(p) => {
                Some(Attached::py_spy(p, pid, None, work.join(format!("accuracy{run}.txt")))?)
            }
            None => None,
        };
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let mut truth = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut truth).map_err(|e| e.to_string())?;
        let _ = child.wait();
        let truth: std::collections::BTreeMap<String, f64> = serde_json::from_str(truth.trim())
            .map_err(|e| format!("accuracy truth {truth:?}: {e}"))?;
        // Samples still in the daemon's pipeline (queries include the open window).
        std::thread::sleep(Duration::from_millis(1500));
        let ours = daemon.folded(pid, seconds as u64 + 30)?;
        let mut row =
            Accuracy { run, truth: report::shares_of_truth(&truth), ..Accuracy::default() };
        row.profilerd = report::shares_of_folded(&ours);
        if let Some(spy) = spy {
            let file = spy.finish(Duration::from_secs(10));
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            row.py_spy = Some(report::shares_of_folded(&text));
        }
        out.push(row);
    }
    daemon.stop();
    Ok(out)
}

/// Store queries over the last hour and the whole day of a synthetic day, and the exporters'
/// work on its last windows.
fn query_latency(
    options: &Options,
    work: &Path,
) -> Result<(Vec<QueryLatency>, Vec<ExportCost>), String> {
    use day::S;
    let windows = if options.smoke { 360 } else { day::WINDOWS_PER_DAY };
    let start = 1_750_000_000 * S + 1234 * S;
    let store = day::build(&work.join("store"), start, windows);
    let end = start + windows * 10 * S;
    let all = profiler_daemon::selector::Selector::default();
    let hours = windows as f64 / 360.0;
    let mut out = Vec::new();
    for (name, from) in
        [("last 1 h", end - 3600 * S), (if options.smoke { "all 1 h" } else { "all 24 h" }, start)]
    {
        let mut ms = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let merged = store
                .merge(from, end, &all, profiler_daemon::aggregate::Mode::Cpu)
                .map_err(|e| e.to_string())?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(merged);
        }
        out.push(QueryLatency { range: name.to_owned(), stored_hours: hours, millis: ms });
    }
    let export = export_cost(&store, end, 15)?;
    drop(store);
    Ok((out, export))
}

/// What each exporter does for each of the last `count` windows before `end` of `store`:
/// reads the window's profiles from the store and encodes its requests, on one thread.
fn export_cost(
    store: &profiler_daemon::store::Store,
    end: i64,
    count: i64,
) -> Result<Vec<ExportCost>, String> {
    use profiler_daemon::fleet::{
        Encode as _, OtlpEncoder, Source, http::Body, otlp::Host, pyroscope::PyroscopeEncoder,
        window_profiles,
    };
    use prost::Message as _;
    let source = Source {
        host: Host { name: "bench".into(), node_name: None },
        period_ns: 10_101_010,
        max_request_bytes: profiler_daemon::fleet::MAX_REQUEST_BYTES,
    };
    let windows: Vec<(i64, i64)> =
        (1..=count).rev().map(|i| (end - i * 10 * day::S, end - (i - 1) * 10 * day::S)).collect();
    let otlp = OtlpEncoder(source.clone());
    let pyroscope = PyroscopeEncoder(source);
    let mut out = Vec::new();
    for protocol in ["OTLP", "Pyroscope"] {
        let mut row = ExportCost { protocol: protocol.to_owned(), ..ExportCost::default() };
        for &(start, end) in &windows {
            let t = Instant::now();
            let profiles = window_profiles(store, start, end).map_err(|e| e.to_string())?;
            // What goes on the wire: OTLP gzip-compressed, Pyroscope's bodies as they are
            // (their profiles are gzipped inside).
            let (requests, bytes, wire) = if protocol == "OTLP" {
                let requests = otlp.encode(&profiles);
                let bodies: Vec<Vec<u8>> = requests.iter().map(|r| r.encode_to_vec()).collect();
                let wire = bodies.iter().map(|b| Body::gzipped(b).bytes.len()).sum();
                (requests.len(), bodies.iter().map(Vec::len).sum::<usize>(), wire)
            } else {
                let requests = pyroscope.encode(&profiles);
                let bytes: usize = requests.iter().map(|r| r.encode_to_vec().len()).sum();
                (requests.len(), bytes, bytes)
            };
            row.millis.push(t.elapsed().as_secs_f64() * 1000.0);
            row.bytes.push(bytes as u64);
            row.wire_bytes.push(wire as u64);
            row.requests = requests;
        }
        out.push(row);
    }
    Ok(out)
}
