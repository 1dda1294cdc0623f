//! The results, `BENCHMARKS.md` made from them, and the check that the report is well formed.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Duration};

use serde::Serialize;

use crate::measure::min_median;

/// The functions of the accuracy workload, which measure their own CPU time.
pub const ACCURACY_FUNCTIONS: [&str; 3] = ["work_a", "work_b", "work_c"];

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// Where it ran.
    pub machine: Machine,
    /// A smoke run (short, for CI).
    pub smoke: bool,
    /// Rounds of the overhead comparison.
    pub rounds: usize,
    /// How long the run took.
    pub duration: Duration,
    /// Fixed-work wall times.
    pub trials: Vec<Trial>,
    /// Kernel cost per sample.
    pub kernel: Vec<KernelCost>,
    /// Profiler cost with many processes.
    pub daemon: Vec<DaemonCost>,
    /// Accuracy runs.
    pub accuracy: Vec<Accuracy>,
    /// Store query latencies.
    pub queries: Vec<QueryLatency>,
}

/// The machine and the peers' versions.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// `uname -sr`.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The workloads' Python.
    pub python: String,
    /// `py-spy --version`, if found.
    pub py_spy: Option<String>,
    /// `perf --version`, if usable.
    pub perf: Option<String>,
    /// The commit measured.
    pub commit: String,
    /// When (UTC).
    pub date: String,
}

fn output(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_default()
}

impl Machine {
    /// Describes this machine.
    pub fn describe(python: &Path, py_spy: Option<&Path>, perf: Option<&Path>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_owned();
        Machine {
            kernel: output("uname", &["-sr"]),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            python: format!("{} ({})", output(python, &["--version"]), python.display()),
            py_spy: py_spy.map(|p| output(p, &["--version"])),
            perf: perf.map(|p| output(p, &["--version"])),
            commit: output(
                "git",
                &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"],
            ),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// One workload run under one setting.
#[derive(Debug, Serialize)]
pub struct Trial {
    /// Round, from 0.
    pub round: usize,
    /// Setting name.
    pub setting: String,
    /// Workload name.
    pub workload: String,
    /// Seconds of fixed work, timed by the workload.
    pub seconds: f64,
    /// The profiler's CPU (and BPF) time per wall second, in % of a core.
    pub cost_percent: f64,
}

/// Sampling program cost for one kind of stack.
#[derive(Debug, Serialize)]
pub struct KernelCost {
    /// What was sampled.
    pub case: String,
    /// Program runs measured.
    pub runs: u64,
    /// Average run time.
    pub ns_per_sample: f64,
}

/// A profiler's own cost over a long run.
#[derive(Debug, Serialize)]
pub struct DaemonCost {
    /// Which profiler.
    pub profiler: String,
    /// Busy Python processes profiled.
    pub processes: usize,
    /// Process CPU, % of a core.
    pub cpu_percent: f64,
    /// BPF run time, % of a core.
    pub bpf_percent: f64,
    /// Peak RSS (summed over processes for py-spy).
    pub peak_rss_mib: f64,
    /// Symbol cache hits in steady state, % of lookups (profilerd).
    pub cache_hit_percent: Option<f64>,
}

/// Per-function shares, in %.
pub type Shares = BTreeMap<String, f64>;

/// One accuracy run.
#[derive(Debug, Default, Serialize)]
pub struct Accuracy {
    /// Run, from 0.
    pub run: usize,
    /// Ground truth.
    pub truth: Shares,
    /// profilerd's shares.
    pub profilerd: Shares,
    /// py-spy's shares.
    pub py_spy: Option<Shares>,
}

/// The largest difference from the truth, in percentage points.
pub fn error_pp(truth: &Shares, measured: &Shares) -> f64 {
    ACCURACY_FUNCTIONS
        .iter()
        .map(|f| {
            (truth.get(*f).copied().unwrap_or(0.0) - measured.get(*f).copied().unwrap_or(0.0)).abs()
        })
        .fold(0.0, f64::max)
}

/// Store query latencies.
#[derive(Debug, Serialize)]
pub struct QueryLatency {
    /// The range.
    pub range: String,
    /// Hours in the store.
    pub stored_hours: f64,
    /// Milliseconds per query.
    pub millis: Vec<f64>,
}

/// Shares of the accuracy functions from the workload's own JSON.
pub fn shares_of_truth(truth: &BTreeMap<String, f64>) -> Shares {
    let total: f64 = ACCURACY_FUNCTIONS.iter().filter_map(|f| truth.get(*f)).sum();
    ACCURACY_FUNCTIONS
        .iter()
        .map(|f| ((*f).to_owned(), 100.0 * truth.get(*f).copied().unwrap_or(0.0) / total.max(1e-9)))
        .collect()
}

/// Shares of the accuracy functions from folded stacks (`a;b;c COUNT`): a sample counts for
/// the function whose frame is in its stack.
pub fn shares_of_folded(folded: &str) -> Shares {
    let mut counts = BTreeMap::<&str, f64>::new();
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else { continue };
        let Ok(count) = count.parse::<f64>() else { continue };
        let function = ACCURACY_FUNCTIONS.iter().find(|f| {
            stack.split(';').any(|frame| frame.starts_with(&format!("{f} ")) || frame == **f)
        });
        if let Some(f) = function {
            *counts.entry(f).or_default() += count;
        }
    }
    let total: f64 = counts.values().sum();
    ACCURACY_FUNCTIONS
        .iter()
        .map(|f| ((*f).to_owned(), 100.0 * counts.get(f).copied().unwrap_or(0.0) / total.max(1e-9)))
        .collect()
}

/// Median wall ratio and cost of `setting` on `workload`: (min ratio, median ratio, median
/// cost).
fn overhead_of(results: &Results, setting: &str, workload: &str) -> Option<(f64, f64, f64)> {
    let baseline: BTreeMap<usize, f64> = results
        .trials
        .iter()
        .filter(|t| t.workload == workload && t.setting.starts_with("baseline"))
        .map(|t| (t.round, t.seconds))
        .collect();
    let trials: Vec<&Trial> =
        results.trials.iter().filter(|t| t.workload == workload && t.setting == setting).collect();
    if trials.is_empty() {
        return None;
    }
    let ratios: Vec<f64> =
        trials.iter().filter_map(|t| Some(t.seconds / baseline.get(&t.round)?)).collect();
    let costs: Vec<f64> = trials.iter().map(|t| t.cost_percent).collect();
    let (min, median) = min_median(&ratios);
    Some((min, median, min_median(&costs).1))
}

fn settings(results: &Results) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in &results.trials {
        if !out.contains(&t.setting) {
            out.push(t.setting.clone());
        }
    }
    out
}

fn workloads(results: &Results) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in &results.trials {
        if !out.contains(&t.workload) {
            out.push(t.workload.clone());
        }
    }
    out
}

struct Goal {
    goal: &'static str,
    measured: String,
    met: Option<bool>,
}

fn goals(results: &Results) -> Vec<Goal> {
    let mut out = Vec::new();
    let pure = "pure Python";
    let one =
        results.daemon.iter().find(|d| d.profiler.starts_with("profilerd") && d.processes == 1);
    let twenty =
        results.daemon.iter().find(|d| d.profiler.starts_with("profilerd") && d.processes == 20);
    if let Some(d) = one {
        let total = d.cpu_percent + d.bpf_percent;
        out.push(Goal {
            goal: "whole-host profiler cost at 99 Hz ≤ 0.5% of a core (daemon + BPF, 1 busy process)",
            measured: format!("{total:.2}%"),
            met: Some(total <= 0.5),
        });
    }
    for (hz, mark) in [(99, 1.005), (999, 1.02)] {
        if let Some((_, median, _)) = overhead_of(results, &format!("profilerd {hz} Hz"), pure) {
            out.push(Goal {
                goal: if hz == 99 {
                    "wall-time overhead ≤ 1.005× at 99 Hz (pure Python, median)"
                } else {
                    "wall-time overhead ≤ 1.02× at 999 Hz (pure Python, median)"
                },
                measured: format!("{median:.3}×"),
                met: Some(median <= mark),
            });
        }
    }
    if let (Some(ours), Some(spy)) = (
        overhead_of(results, "profilerd 99 Hz", pure),
        overhead_of(results, "py-spy record 100 Hz", pure),
    ) {
        out.push(Goal {
            goal: "overhead at or below py-spy's at a comparable rate (99 vs 100 Hz, pure Python)",
            measured: format!(
                "wall {:.3}× vs {:.3}×; own cost {:.2}% vs {:.2}% of a core",
                ours.1, spy.1, ours.2, spy.2
            ),
            met: Some(ours.2 <= spy.2),
        });
    }
    if let Some(k) = results.kernel.iter().find(|k| k.case.contains("20 frames")) {
        out.push(Goal {
            goal: "kernel cost < 2 µs per sample at 20 Python frames",
            measured: format!("{:.2} µs", k.ns_per_sample / 1000.0),
            met: Some(k.ns_per_sample < 2000.0),
        });
    }
    if let Some(d) = twenty {
        out.push(Goal {
            goal: "daemon CPU < 1% of a core and RSS < 64 MiB with 20 processes",
            measured: format!(
                "{:.2}% CPU (+{:.2}% BPF), {:.1} MiB",
                d.cpu_percent, d.bpf_percent, d.peak_rss_mib
            ),
            met: Some(d.cpu_percent < 1.0 && d.peak_rss_mib < 64.0),
        });
    }
    let errors: Vec<f64> =
        results.accuracy.iter().map(|a| error_pp(&a.truth, &a.profilerd)).collect();
    if !errors.is_empty() {
        let (_, median) = min_median(&errors);
        out.push(Goal {
            goal: "accuracy within 2 percentage points (median of runs, largest function error)",
            measured: format!("{median:.2} pp"),
            met: Some(median <= 2.0),
        });
    }
    out
}

/// `BENCHMARKS.md`.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by the peers harness (`make bench`, source in `profiler-daemon/benches/peers/`); \
         do not edit by hand, run it again.{}\n",
        if r.smoke {
            " **Smoke run: durations are cut short; the figures mean nothing.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- Measured: {} at commit `{}`, in {:.0} minutes",
        m.date,
        m.commit,
        r.duration.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        s,
        "- Machine: {}, {} CPUs ({}); only software perf events (cpu-clock)",
        m.kernel, m.cpus, m.cpu
    );
    let _ = writeln!(s, "- Workloads run on {}", m.python);
    let _ = writeln!(s, "- py-spy: {}", m.py_spy.as_deref().unwrap_or("not found, left out"));
    let _ = writeln!(s, "- perf: {}", m.perf.as_deref().unwrap_or("not usable here, left out"));
    let _ = writeln!(
        s,
        "\nMethod. Each overhead figure compares runs of the same round; there are {} rounds, and \
         every other round runs the settings in reverse order. Tables give the minimum and the \
         median over rounds. Wall time here varies by about ±10% from run to run, so the wall \
         ratios are noisy; the profiler's own cost is not: its process CPU (every thread, from \
         `schedstat`) plus, for profilerd, the run time of its BPF programs (`run_time_ns` with \
         `kernel.bpf_stats_enabled`), per wall second of the workload, in % of one core. For \
         py-spy and perf it is their process CPU (perf's sampling in the kernel is charged to \
         the profiled process, so it is only in perf's wall ratio).\n",
        r.rounds
    );

    let _ = writeln!(s, "## Goals\n");
    let _ = writeln!(s, "| goal | measured | met |\n|---|---|---|");
    for g in goals(r) {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(s, "| {} | {} | {} |", g.goal, g.measured, met);
    }

    let _ = writeln!(s, "\n## 1. Overhead on the profiled program\n");
    let _ = writeln!(
        s,
        "Fixed work (about 2 s unprofiled), timed by the workload itself; wall ratio = time under \
         the setting / unprofiled time in the same round. The four Python threads share the GIL. \
         py-spy profiles Python only, so it has no native row.\n"
    );
    for w in workloads(r) {
        let _ = writeln!(s, "### {w}\n");
        let _ = writeln!(
            s,
            "| setting | wall ratio (min) | wall ratio (median) | profiler cost, % of a core (median) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for setting in settings(r) {
            let Some((min, median, cost)) = overhead_of(r, &setting, &w) else { continue };
            if setting.starts_with("baseline") {
                let secs: Vec<f64> = r
                    .trials
                    .iter()
                    .filter(|t| t.workload == w && t.setting == setting)
                    .map(|t| t.seconds)
                    .collect();
                let (min_s, median_s) = min_median(&secs);
                let _ = writeln!(s, "| {setting} | {min_s:.3} s | {median_s:.3} s | – |");
            } else {
                let _ = writeln!(s, "| {setting} | {min:.3}× | {median:.3}× | {cost:.2}% |");
            }
        }
        s.push('\n');
    }

    let _ = writeln!(s, "## 2. Kernel cost per sample\n");
    let _ = writeln!(
        s,
        "profilerd at 999 Hz with two busy processes (one per CPU), `run_time_ns / run_cnt` of the \
         sampling program (which also reads the kernel and user stacks and walks CPython's frames).\n"
    );
    let _ = writeln!(s, "| stacks | runs | µs per sample |\n|---|---|---|");
    for k in &r.kernel {
        let _ = writeln!(s, "| {} | {} | {:.2} |", k.case, k.runs, k.ns_per_sample / 1000.0);
    }

    let _ = writeln!(s, "\n## 3. Daemon cost\n");
    let _ = writeln!(
        s,
        "Busy pure-Python processes, {} s, 99 Hz (py-spy: 100 Hz, one py-spy per process, which \
         is how it profiles several). CPU and BPF in % of one core; RSS is the peak (summed over \
         the py-spy processes).\n",
        if r.smoke { "a few" } else { "60" }
    );
    let _ = writeln!(
        s,
        "| profiler | processes | CPU | BPF | CPU + BPF | peak RSS (MiB) | symbol cache hits |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for d in &r.daemon {
        let hits = d.cache_hit_percent.map_or_else(|| "–".to_owned(), |h| format!("{h:.2}%"));
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}% | {:.2}% | {:.2}% | {:.1} | {} |",
            d.profiler,
            d.processes,
            d.cpu_percent,
            d.bpf_percent,
            d.cpu_percent + d.bpf_percent,
            d.peak_rss_mib,
            hits
        );
    }

    let _ = writeln!(s, "\n## 4. Accuracy\n");
    let _ = writeln!(
        s,
        "`work_a`, `work_b` and `work_c` run in a 3:2:1 ratio and time themselves with \
         `time.thread_time()`; profilerd (99 Hz) and py-spy (100 Hz) profile the same process at \
         the same time. Error: the largest difference from the self-measured share, in \
         percentage points.\n"
    );
    let _ = writeln!(
        s,
        "| run | truth a/b/c (%) | profilerd a/b/c (%) | profilerd error | py-spy a/b/c (%) | py-spy error |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let abc = |x: &Shares| {
        ACCURACY_FUNCTIONS
            .iter()
            .map(|f| format!("{:.1}", x.get(*f).copied().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for a in &r.accuracy {
        let (spy, spy_err) = match &a.py_spy {
            Some(p) => (abc(p), format!("{:.2} pp", error_pp(&a.truth, p))),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} pp | {} | {} |",
            a.run + 1,
            abc(&a.truth),
            abc(&a.profilerd),
            error_pp(&a.truth, &a.profilerd),
            spy,
            spy_err
        );
    }

    let _ = writeln!(s, "\n## 5. Throughput\n");
    let _ = writeln!(
        s,
        "Symbol cache hit rate: in section 3 (steady state, after start-up). Store queries: a \
         synthetic store of {:.0} h (10 processes, 10 s windows, 200 stacks of 20 frames each per \
         window), merged in process, 7 times.\n",
        r.queries.first().map_or(0.0, |q| q.stored_hours)
    );
    let _ = writeln!(s, "| range | min (ms) | median (ms) |\n|---|---|---|");
    for q in &r.queries {
        let (min, median) = min_median(&q.millis);
        let _ = writeln!(s, "| {} | {min:.1} | {median:.1} |", q.range);
    }
    let _ = writeln!(
        s,
        "\nMicro-benchmarks (criterion, with throughput): `cargo bench -p profiler-daemon --bench \
         pipeline` (aggregation, line tables, formats) and `--bench store`."
    );
    s
}

/// Fails unless every section has its figures and every figure is a number.
pub fn check(r: &Results, text: &str) -> Result<(), String> {
    let sections = [
        "## Goals",
        "## 1. Overhead",
        "## 2. Kernel cost",
        "## 3. Daemon cost",
        "## 4. Accuracy",
        "## 5. Throughput",
    ];
    for section in sections {
        if !text.contains(section) {
            return Err(format!("the report lacks {section:?}"));
        }
    }
    if text.contains("NaN") || text.contains("inf") {
        return Err("the report has a figure that is not a number".to_owned());
    }
    let settings = settings(r);
    for w in workloads(r) {
        for setting in &settings {
            let n = r.trials.iter().filter(|t| t.workload == w && &t.setting == setting).count();
            if n != 0 && n != r.rounds {
                return Err(format!("{w} under {setting}: {n} of {} rounds", r.rounds));
            }
        }
    }
    if r.trials
        .iter()
        .any(|t| t.seconds <= 0.0 || !t.seconds.is_finite() || !t.cost_percent.is_finite())
    {
        return Err("a trial without a time or a cost".to_owned());
    }
    if r.kernel.len() != 3 || r.kernel.iter().any(|k| k.runs == 0) {
        return Err("kernel cost: a case without program runs".to_owned());
    }
    if r.daemon.is_empty() || r.accuracy.is_empty() || r.queries.is_empty() {
        return Err("a section has no rows".to_owned());
    }
    if r.accuracy.iter().any(|a| a.profilerd.values().sum::<f64>() < 99.0) {
        return Err("accuracy: profilerd saw none of the workload's functions".to_owned());
    }
    Ok(())
}
