//! What the harness reads about processes and BPF programs, and the statistics it reports.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

/// CPU time of every thread of process `pid`, in nanoseconds, from `schedstat` (nanosecond
/// resolution, unlike the clock ticks of `stat`). Threads that already exited are not counted;
/// the profilers measured keep their threads for their whole run.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of the threads of process `pid` named `name` (`comm`), in nanoseconds.
pub fn thread_cpu_ns(pid: u32, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Run time and runs of one BPF program, from the kernel's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfCost {
    /// Nanoseconds spent in the program.
    pub run_ns: u64,
    /// Times it ran.
    pub runs: u64,
}

impl BpfCost {
    /// The cost since `earlier`.
    pub fn since(self, earlier: BpfCost) -> BpfCost {
        BpfCost {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// The summed statistics of the programs named `names` that were loaded after `since` (the
/// profiler under test's own programs).
pub fn bpf_cost(names: &[&str], since: SystemTime) -> BpfCost {
    let mut cost = BpfCost::default();
    for program in aya::programs::loaded_programs().flatten() {
        let ours = program.name_as_str().is_some_and(|n| names.contains(&n))
            && program.loaded_at().is_some_and(|t| t >= since);
        if ours {
            cost.run_ns += u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
            cost.runs += program.run_count();
        }
    }
    cost
}

/// Keeps `kernel.bpf_stats_enabled` on while it lives.
pub fn enable_bpf_stats() -> Option<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).ok()
}

/// The minimum and the median of `values` (NaN for none).
pub fn min_median(values: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    (v[0], median)
}

/// Percent of one core that `cpu` over `wall` is.
pub fn core_percent(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// A tool on `PATH` or at `path`, if it runs.
pub fn runnable(path: &Path) -> bool {
    std::process::Command::new(path)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
