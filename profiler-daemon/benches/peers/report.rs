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
    /// Native stacks without frame pointers: copying and unwinding.
    pub unwind: Option<UnwindCost>,
    /// The off-CPU program's cost per context switch.
    pub off_cpu: Vec<OffCpuCost>,
    /// Profiler cost with many processes.
    pub daemon: Vec<DaemonCost>,
    /// Accuracy runs.
    pub accuracy: Vec<Accuracy>,
    /// Store query latencies.
    pub queries: Vec<QueryLatency>,
    /// Exporting windows of the synthetic store.
    pub export: Vec<ExportCost>,
    /// Short-lived processes next to a steady one.
    pub churn: Option<Churn>,
    /// The page-fault program's cost.
    pub memory: Vec<MemoryCost>,
    /// The cost of reading resident memory.
    pub resident: Option<ResidentCost>,
    /// The memory tools users run today, next to profilerd.
    pub tools: Vec<ToolRun>,
}

/// Reading resident memory with many processes on the host.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ResidentCost {
    /// Processes profilerd tracked (and read).
    pub processes_tracked: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// CPU of the reader thread, in % of a core.
    pub core_percent: f64,
}

/// One run of the memory workload under a tool.
#[derive(Clone, Debug, Serialize)]
pub struct ToolRun {
    /// Round, from 0.
    pub round: usize,
    /// The tool.
    pub tool: &'static str,
    /// The workload's wall time, timed from inside.
    pub wall_seconds: f64,
    /// The workload process's CPU time.
    pub workload_cpu_seconds: f64,
    /// CPU the tool added: its own processes (and, for profilerd, the daemon and its BPF
    /// programs) beyond the workload's.
    pub tool_cpu_seconds: f64,
}

/// The resident memory readings subsection.
pub fn resident_table(cost: &ResidentCost) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Resident memory readings, once a second\n");
    let _ = writeln!(
        s,
        "profilerd at 99 Hz with {} sleeping processes started on the host; the CPU time of its \
         `resident` thread, which reads every tracked process's `/proc/PID/statm` once a second, \
         over {:.0} s.\n",
        crate::memory::GOAL_PROCESSES,
        cost.seconds
    );
    let _ = writeln!(s, "| processes tracked | reader thread, % of a core |\n|---|---|");
    let _ = writeln!(s, "| {} | {:.3}% |", cost.processes_tracked, cost.core_percent);
    s
}

/// The comparison with the memory tools users run today.
pub fn tools_table(rows: &[ToolRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Next to mprof, tracemalloc and memory_profiler\n");
    let _ = writeln!(
        s,
        "One workload (memory_profiler's README example, a list of 10**6 and one of 2 * 10**7 \
         items that is deleted, then a loop that builds 100,000 strings), timed from inside, \
         under each tool, rounds interleaved, all with the same interpreter. The slowdown is \
         the workload's own; the extra CPU is what the tool's own processes used beyond the \
         workload's, less what an unwatched run's interpreter start and exit take (for \
         profilerd: the daemon and its BPF programs, which watch every process of the host at \
         once, including the new process's first symbolization).\n"
    );
    let _ = writeln!(
        s,
        "| tool | what it gives | workload wall s (min / median) | slowdown (median) | extra CPU s (median) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let gives = |tool: &str| match tool {
        "not watched" => "–",
        "profilerd" => "timeline and growth per line for every process, always on",
        t if t.starts_with("mprof") => "timeline of the one process it started",
        t if t.contains("tracemalloc") => "allocations per line, in the process, once started",
        _ => "Increment per line of the decorated functions",
    };
    let mut tools: Vec<&str> = Vec::new();
    for r in rows {
        if !tools.contains(&r.tool) {
            tools.push(r.tool);
        }
    }
    let median_of = |tool: &str, f: fn(&ToolRun) -> f64| {
        min_median(&rows.iter().filter(|r| r.tool == tool).map(f).collect::<Vec<_>>())
    };
    let (_, plain) = median_of("not watched", |r| r.wall_seconds);
    let (_, plain_cpu) = median_of("not watched", |r| r.tool_cpu_seconds);
    for tool in tools {
        let (min, median) = median_of(tool, |r| r.wall_seconds);
        let (_, cpu) = median_of(tool, |r| r.tool_cpu_seconds);
        let extra = (cpu - plain_cpu).max(0.0);
        let _ = writeln!(
            s,
            "| {tool} | {} | {min:.3} / {median:.3} | {:.2}× | {extra:.3} |",
            gives(tool),
            median / plain
        );
    }
    s
}

/// One run of the page-fault workload.
#[derive(Debug, Serialize)]
pub struct MemoryCost {
    /// Round, from 0.
    pub round: usize,
    /// Page faults sampled (else `--no-memory`).
    pub sampled: bool,
    /// MiB mapped and touched per second.
    pub mib_per_second: f64,
    /// The workload's CPU time per MiB, in milliseconds.
    pub workload_cpu_ms_per_mib: f64,
    /// Runs of the page-fault program per second.
    pub program_runs_per_second: f64,
    /// Its run time, in % of a core.
    pub program_percent: f64,
}

/// The memory cost subsection: its heading, method and table.
pub fn memory_table(rows: &[MemoryCost]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Page-fault program, at 100 MiB/s of growth\n");
    let _ = writeln!(
        s,
        "A native process maps, touches and unmaps 1 MiB regions at {:.0} MiB/s (a fault per \
         4 KiB page) under profilerd at 99 Hz, with page-fault sampling (the default: one fault \
         in 64) and with `--no-memory`, rounds interleaved. The program's run time comes from \
         `kernel.bpf_stats_enabled`; the workload's CPU time per MiB also holds what the \
         `page-faults` event costs on the fault path outside the program.\n",
        crate::memory::GOAL_MIB_PER_SECOND
    );
    let _ = writeln!(
        s,
        "| setting | rounds | MiB/s | workload CPU ms per MiB (min / median) | program runs/s | program % of a core (median) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for sampled in [true, false] {
        let runs: Vec<&MemoryCost> = rows.iter().filter(|r| r.sampled == sampled).collect();
        if runs.is_empty() {
            continue;
        }
        let pick =
            |f: fn(&MemoryCost) -> f64| min_median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (cpu_min, cpu_median) = pick(|r| r.workload_cpu_ms_per_mib);
        let (_, rate) = pick(|r| r.mib_per_second);
        let (_, program_runs) = pick(|r| r.program_runs_per_second);
        let (_, program) = pick(|r| r.program_percent);
        let _ = writeln!(
            s,
            "| {} | {} | {rate:.0} | {cpu_min:.4} / {cpu_median:.4} | {program_runs:.0} | {program:.3}% |",
            if sampled { "page faults sampled (default)" } else { "`--no-memory`" },
            runs.len()
        );
    }
    s
}

/// The daemon's tables, from its `Status`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ChurnTables {
    /// Processes tracked.
    pub processes: u64,
    /// Processes with a CPython runtime described.
    pub runtimes: u64,
    /// User frames in the symbol cache.
    pub user_frames: u64,
    /// Kernel frames in the symbol cache.
    pub kernel_frames: u64,
    /// Stacks in the open window.
    pub open_stacks: u64,
    /// Bytes of closed windows in memory.
    pub window_bytes: u64,
}

impl ChurnTables {
    /// The larger of each table.
    pub fn max(self, other: &ChurnTables) -> ChurnTables {
        ChurnTables {
            processes: self.processes.max(other.processes),
            runtimes: self.runtimes.max(other.runtimes),
            user_frames: self.user_frames.max(other.user_frames),
            kernel_frames: self.kernel_frames.max(other.kernel_frames),
            open_stacks: self.open_stacks.max(other.open_stacks),
            window_bytes: self.window_bytes.max(other.window_bytes),
        }
    }

    fn rows(&self) -> [(&'static str, u64); 6] {
        [
            ("processes tracked", self.processes),
            ("CPython runtimes listed", self.runtimes),
            ("user frames in the symbol cache (bounded, LRU)", self.user_frames),
            ("kernel frames in the symbol cache (bounded, LRU)", self.kernel_frames),
            ("stacks in the open window", self.open_stacks),
            ("bytes of closed windows in memory (bounded by --max-memory)", self.window_bytes),
        ]
    }
}

/// Short-lived processes next to a steady one.
#[derive(Debug, Default, Serialize)]
pub struct Churn {
    /// How long the churn ran.
    pub seconds: f64,
    /// Processes started.
    pub processes_started: u64,
    /// Processes started per second.
    pub rate: f64,
    /// Status calls made during the churn, one a second.
    pub asked: u32,
    /// Of those, answered.
    pub answered: u32,
    /// Samples lost during the churn, per reason.
    pub drops: Vec<(String, u64)>,
    /// The steady process's largest share error against its own clock, in points.
    pub steady_error_pp: f64,
    /// Resident memory before the churn.
    pub rss_before_mib: f64,
    /// Peak resident memory of the whole run.
    pub peak_rss_mib: f64,
    /// Resident memory once the exited processes were forgotten.
    pub rss_after_mib: f64,
    /// Tables before the churn.
    pub before: ChurnTables,
    /// The largest tables seen during the churn.
    pub during: ChurnTables,
    /// Tables once the exited processes were forgotten.
    pub after: ChurnTables,
}

/// The churn section: its heading, method and tables.
pub fn churn_section(c: &Churn) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## 6. Churn
"
    );
    let _ = writeln!(
        s,
        "Short-lived native processes (each spins for 0.5 ms, so that some are sampled and each \
         of those is new to the daemon) started at up to {:.0} a second for {:.0} s, next to the \
         accuracy workload of section 4, under profilerd at 99 Hz. The daemon is asked for its \
         status every second during the churn. Tables are read before, at their largest during \
         the churn, and 40 s after it (the exited grace is 30 s, the sweep every 5 s).\n",
        crate::churn::GOAL_RATE,
        c.seconds
    );
    let drops = if c.drops.is_empty() {
        "none".to_owned()
    } else {
        c.drops.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let _ = writeln!(s, "| processes started | {} ({:.0}/s) |", c.processes_started, c.rate);
    let _ = writeln!(s, "| status calls answered | {} of {} |", c.answered, c.asked);
    let _ = writeln!(s, "| samples lost during the churn | {drops} |");
    let _ = writeln!(
        s,
        "| steady process: largest share error against its own clock | {:.2} pp |",
        c.steady_error_pp
    );
    let _ = writeln!(
        s,
        "| daemon RSS before / peak / after (MiB) | {:.1} / {:.1} / {:.1} |",
        c.rss_before_mib, c.peak_rss_mib, c.rss_after_mib
    );
    let _ = writeln!(s, "\n| table | before | largest during | after |\n|---|---|---|---|");
    for ((name, before), ((_, during), (_, after))) in
        c.before.rows().into_iter().zip(c.during.rows().into_iter().zip(c.after.rows()))
    {
        let _ = writeln!(s, "| {name} | {before} | {during} | {after} |");
    }
    s
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

/// Copying and unwinding the stacks of code without frame pointers.
#[derive(Debug, Serialize)]
pub struct UnwindCost {
    /// The walked and the unwound program.
    pub cases: Vec<UnwindCase>,
    /// Files whose unwind tables the daemon had mapped at the end.
    pub table_files: u64,
    /// Bytes of those tables.
    pub table_bytes: u64,
    /// The daemon's peak RSS over both cases.
    pub daemon_peak_rss_mib: f64,
    /// `perf record --call-graph dwarf` on the unwound program, when perf runs here.
    pub perf: Option<PerfDwarf>,
}

/// One program of [`UnwindCost`].
#[derive(Debug, Serialize)]
pub struct UnwindCase {
    /// What was sampled.
    pub case: String,
    /// Sampling program runs measured.
    pub runs: u64,
    /// Average run time of the sampling program.
    pub kernel_ns_per_sample: f64,
    /// The daemon's CPU per sample (every thread).
    pub daemon_us_per_sample: f64,
    /// Samples unwound from their copy.
    pub samples_unwound: u64,
    /// Samples with a copy and no caller found.
    pub samples_failed: u64,
    /// Bytes of stack copied per sample with a copy (host-wide).
    pub bytes_copied_per_sample: u64,
}

/// `perf record --call-graph dwarf -F 999` on one process.
#[derive(Debug, Serialize)]
pub struct PerfDwarf {
    /// perf's own CPU, in % of a core.
    pub cpu_percent: f64,
    /// What it wrote per second.
    pub bytes_per_second: f64,
}

/// The native unwinding section.
pub fn unwind_table(u: &UnwindCost) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Native stacks without frame pointers
"
    );
    let _ = writeln!(
        s,
        "The same twenty-frame call chain over a busy leaf, built twice: with frame pointers and \
         no C library (so that nothing in the process lacks them and it is walked by frame \
         pointers alone), and with `-fomit-frame-pointer` against the C library (its samples \
         copy the top of the stack, which the daemon unwinds with `.eh_frame`: up to 8 KiB, as \
         much as the process's stacks need once it has learnt that). profilerd at 999 Hz, two \
         processes at a time (one per CPU); the kernel cost is the sampling program's \
         `run_time_ns / run_cnt`, the daemon's is its CPU (every thread) per sample.\n"
    );
    let _ = writeln!(
        s,
        "| stacks | runs | kernel µs per sample | daemon µs per sample | unwound (host) | no caller \
         found (host) | bytes copied per copy (host) |\n|---|---|---|---|---|---|---|"
    );
    for c in &u.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.1} | {} | {} | {} |",
            c.case,
            c.runs,
            c.kernel_ns_per_sample / 1000.0,
            c.daemon_us_per_sample,
            c.samples_unwound,
            c.samples_failed,
            c.bytes_copied_per_sample
        );
    }
    let _ = writeln!(
        s,
        "\nUnwind tables mapped at the end: {} files, {:.0} KiB (`.eh_frame`, its index and \
         `.debug_frame`; at most 512 files, least recently used out). Daemon peak RSS {:.1} MiB.",
        u.table_files,
        u.table_bytes as f64 / 1024.0,
        u.daemon_peak_rss_mib
    );
    match &u.perf {
        Some(p) => {
            let _ = writeln!(
                s,
                "\n`perf record -F 999 --call-graph dwarf` on one process of the program without \
                 frame pointers (8 KiB of stack per sample, unwound later by `perf report`): perf's \
                 own CPU {:.2}% of a core while recording, {:.0} KiB written per second.",
                p.cpu_percent,
                p.bytes_per_second / 1024.0
            );
        }
        None => {
            let _ =
                writeln!(s, "\nperf does not run here: no `perf record --call-graph dwarf` row.");
        }
    }
    s
}

/// The off-CPU program's cost per context switch, at one capture scale.
#[derive(Debug, Serialize)]
pub struct OffCpuCost {
    /// The scale.
    pub case: String,
    /// Runs of the program per second (every context switch on the machine).
    pub switches_per_second: f64,
    /// Switch-outs recorded per second.
    pub records_per_second: f64,
    /// Average run time, with the statistics' own timing.
    pub ns_per_switch: f64,
    /// Average run time of an empty program on the same tracepoint in the same run: the
    /// statistics' own timing.
    pub floor_ns_per_switch: f64,
}

impl OffCpuCost {
    /// The program's own time per switch: its run time less the empty program's.
    pub fn net_ns_per_switch(&self) -> f64 {
        (self.ns_per_switch - self.floor_ns_per_switch).max(0.0)
    }

    /// % of a core that the program's own time takes at `switches_per_second`.
    pub fn core_percent_at(&self, switches_per_second: f64) -> f64 {
        100.0 * self.net_ns_per_switch() * switches_per_second / 1e9
    }
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

/// An exporter's work per stored window: reading its profiles and encoding its requests.
#[derive(Debug, Default, Serialize)]
pub struct ExportCost {
    /// `OTLP` or `Pyroscope`.
    pub protocol: String,
    /// Milliseconds per window.
    pub millis: Vec<f64>,
    /// Bytes of the requests per window.
    pub bytes: Vec<u64>,
    /// Bytes on the wire per window (after the transport's compression).
    pub wire_bytes: Vec<u64>,
    /// Requests of the last window.
    pub requests: usize,
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
    if let Some(u) = &results.unwind {
        let walked = u.cases.iter().find(|c| c.case.contains("(walked)"));
        let unwound = u.cases.iter().find(|c| c.case.contains("unwound"));
        if let (Some(w), Some(c)) = (walked, unwound) {
            out.push(Goal {
                goal: "kernel cost ≤ 3 µs per sample with 20 native frames without frame pointers",
                measured: format!(
                    "{:.2} µs (the frame-pointer walk of the same chain: {:.2} µs)",
                    c.kernel_ns_per_sample / 1000.0,
                    w.kernel_ns_per_sample / 1000.0
                ),
                met: Some(c.kernel_ns_per_sample <= 3000.0),
            });
        }
    }
    let sampled: Vec<f64> =
        results.memory.iter().filter(|m| m.sampled).map(|m| m.program_percent).collect();
    if !sampled.is_empty() {
        let (_, median) = min_median(&sampled);
        out.push(Goal {
            goal: "page-fault sampling ≤ 0.2% of a core for a process growing 100 MB/s (program run time)",
            measured: format!("{median:.3}%"),
            met: Some(median <= 0.2),
        });
    }
    if let Some(cost) = &results.resident {
        out.push(Goal {
            goal: "reading 200 processes' resident memory once a second ≤ 0.2% of a core",
            measured: format!("{:.3}% ({} processes)", cost.core_percent, cost.processes_tracked),
            met: Some(cost.core_percent <= 0.2 && cost.processes_tracked >= 200),
        });
    }
    let unrecorded = |threads: &str| {
        results.off_cpu.iter().find(|c| c.case.contains("scale 0") && c.case.contains(threads))
    };
    if let Some(c) = unrecorded("task storage") {
        let at = crate::off_cpu::GOAL_SWITCHES_PER_SECOND;
        let percent = c.core_percent_at(at);
        let older = unrecorded("hash map").map_or(String::new(), |h| {
            format!(
                " ({:.0} ns, {:.2}%, with the hash map of kernels before 6.4)",
                h.net_ns_per_switch(),
                h.core_percent_at(at)
            )
        });
        out.push(Goal {
            goal: "off-CPU program ≤ 0.5% of a core at 50,000 switches/s, when it records nothing (less the bpf_stats floor; thread state in task storage, Linux 6.4+)",
            measured: format!("{:.0} ns per switch, {percent:.2}%{older}", c.net_ns_per_switch()),
            met: Some(percent <= 0.5),
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

/// The off-CPU subsection of the kernel cost: its heading, method and table.
pub fn off_cpu_table(rows: &[OffCpuCost]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Off-CPU program, per context switch\n");
    let _ = writeln!(
        s,
        "The off-CPU program on `sched_switch` (a BTF tracepoint) while two processes on one \
         CPU ping-pong a byte over pipes, a switch from one to the other at each pass: \
         `run_time_ns / run_cnt` over every context switch of the machine. \
         An empty program on the same tracepoint in the same run measures what \
         `kernel.bpf_stats_enabled` itself adds to every run (two clock reads); the net cost \
         is the difference, what the program costs with the statistics off. At scale 0 \
         nothing is recorded (the path of nearly every switch under the daemon's budget); at \
         scale 1 every switch-out is recorded with the full probability (before the budget \
         lowers it). Each case runs with the per-thread state in task-local storage (the \
         daemon's choice from Linux 6.4) and in the hash map keyed by thread id that older \
         kernels get.\n"
    );
    let _ = writeln!(
        s,
        "| case | switches/s | records/s | ns per switch | empty program (floor) | net ns per switch | % of a core at the measured rate | % of a core at 50,000/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for c in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2}% | {:.2}% |",
            c.case,
            c.switches_per_second,
            c.records_per_second,
            c.ns_per_switch,
            c.floor_ns_per_switch,
            c.net_ns_per_switch(),
            c.core_percent_at(c.switches_per_second),
            c.core_percent_at(crate::off_cpu::GOAL_SWITCHES_PER_SECOND)
        );
    }
    s
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

    if let Some(u) = &r.unwind {
        s.push('\n');
        s.push_str(&unwind_table(u));
    }
    s.push('\n');
    s.push_str(&off_cpu_table(&r.off_cpu));
    s.push('\n');
    s.push_str(&memory_table(&r.memory));
    if let Some(cost) = &r.resident {
        s.push('\n');
        s.push_str(&resident_table(cost));
    }
    if !r.tools.is_empty() {
        s.push('\n');
        s.push_str(&tools_table(&r.tools));
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
    if !r.export.is_empty() {
        s.push('\n');
        s.push_str(&export_table(&r.export));
    }
    let _ = writeln!(
        s,
        "\nMicro-benchmarks (criterion, with throughput): `cargo bench -p profiler-daemon --bench \
         pipeline` (aggregation, line tables, formats) and `--bench store`."
    );
    if let Some(churn) = &r.churn {
        s.push('\n');
        s.push_str(&churn_section(churn));
    }
    s
}

/// The exporters' work per window, with how it was measured.
pub fn export_table(rows: &[ExportCost]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Exporting (`--export-otlp`, `--export-pyroscope`): per 10 s window of the synthetic store \
         (10 processes, 2,000 stacks), reading its CPU, off-CPU and memory profiles and encoding \
         the requests (gzip-compressing OTLP's, as the exporter does), on one thread; the share \
         of a core is that time over the window's 10 s. Sizes are the encoded requests and what \
         goes on the wire (OTLP gzipped; Pyroscope's protobuf of gzipped pprof as it is).\n"
    );
    let _ = writeln!(
        s,
        "| protocol | min (ms) | median (ms) | % of a core | KiB encoded | KiB on the wire | requests |\n\
         |---|---|---|---|---|---|---|"
    );
    for e in rows {
        let (min, median) = min_median(&e.millis);
        let kib = |b: &[u64]| b.iter().sum::<u64>() as f64 / b.len().max(1) as f64 / 1024.0;
        let (kib, wire) = (kib(&e.bytes), kib(&e.wire_bytes));
        let _ = writeln!(
            s,
            "| {} | {min:.1} | {median:.1} | {:.2} | {kib:.0} | {wire:.0} | {} |",
            e.protocol,
            median / 10_000.0 * 100.0,
            e.requests
        );
    }
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
        "## 6. Churn",
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
    if r.off_cpu.len() != 4
        || r.off_cpu.iter().any(|c| c.switches_per_second <= 0.0 || c.floor_ns_per_switch <= 0.0)
    {
        return Err("off-CPU cost: a case without program runs".to_owned());
    }
    if r.memory.iter().filter(|m| m.sampled).all(|m| m.program_runs_per_second <= 0.0) {
        return Err("memory cost: the page-fault program never ran".to_owned());
    }
    if r.resident.is_none_or(|c| c.processes_tracked == 0) {
        return Err("resident readings: no process was tracked".to_owned());
    }
    if r.tools.iter().any(|t| t.wall_seconds <= 0.0) {
        return Err("memory tools: a run without a time".to_owned());
    }
    if r.daemon.is_empty() || r.accuracy.is_empty() || r.queries.is_empty() {
        return Err("a section has no rows".to_owned());
    }
    match &r.churn {
        None => return Err("churn: no figures".to_owned()),
        Some(c) if c.processes_started == 0 || c.asked == 0 => {
            return Err("churn: no process was started".to_owned());
        }
        Some(_) => {}
    }
    if r.accuracy.iter().any(|a| a.profilerd.values().sum::<f64>() < 99.0) {
        return Err("accuracy: profilerd saw none of the workload's functions".to_owned());
    }
    Ok(())
}
