//! The page-fault program's cost: a native process maps, touches and unmaps 1 MiB regions at
//! 100 MiB a second (25,600 faults a second of 4 KiB pages) under profilerd at 99 Hz, with
//! page-fault sampling (the default) and with `--no-memory`, rounds interleaved. Two figures:
//! the program's own run time (`kernel.bpf_stats_enabled`) per second, and the workload's CPU
//! time per MiB, which also holds what the `page-faults` event costs on the fault path
//! outside the program.
//!
//! Also: the cost of reading resident memory with 200 processes on the host, and the memory
//! tools Python users run today (mprof, tracemalloc, memory_profiler's `@profile`) next to
//! profilerd on one workload.

use std::{process::Stdio, time::Duration};

use crate::{
    measure,
    profilers::Profilerd,
    report::{MemoryCost, ResidentCost, ToolRun},
    watchdog,
    workloads::Programs,
};

/// The growth rate the goal is stated at, in MiB per second.
pub const GOAL_MIB_PER_SECOND: f64 = 100.0;

/// Runs `rounds` rounds of `seconds` each.
pub fn cost(
    programs: &Programs,
    work: &std::path::Path,
    seconds: f64,
    rounds: usize,
) -> Result<Vec<MemoryCost>, String> {
    let mut out = Vec::new();
    for round in 0..rounds {
        // Alternate the order, so that a drift of the machine does not favour one setting.
        let settings: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for sampled in settings {
            let name = if sampled { "page faults sampled" } else { "--no-memory" };
            watchdog::step(1, format!("memory cost, round {}, {name}", round + 1));
            let extra: &[&str] = if sampled { &[] } else { &["--no-memory"] };
            let daemon = Profilerd::start_with(&work.join("profilerd"), 99, false, extra)?;
            daemon.settle(Duration::from_secs(20));
            let before = daemon.program_cost(&["sample_fault"]);
            let mut command = std::process::Command::new(&programs.native);
            let output = watchdog::dies_with_harness(&mut command)
                .args(["faults", &GOAL_MIB_PER_SECOND.to_string(), &seconds.to_string()])
                .stdout(Stdio::piped())
                .output()
                .map_err(|e| format!("running the page-fault workload: {e}"))?;
            let cost = daemon.program_cost(&["sample_fault"]).since(before);
            daemon.stop();
            let text = String::from_utf8_lossy(&output.stdout);
            let mut words = text.split_whitespace();
            let (Some(Ok(mib)), Some(Ok(cpu))) =
                (words.next().map(str::parse::<f64>), words.next().map(str::parse::<f64>))
            else {
                return Err(format!("the page-fault workload printed {text:?}"));
            };
            out.push(MemoryCost {
                round,
                sampled,
                mib_per_second: mib / seconds,
                workload_cpu_ms_per_mib: 1000.0 * cpu / mib.max(1.0),
                program_runs_per_second: cost.runs as f64 / seconds,
                program_percent: measure::core_percent(
                    Duration::from_nanos(cost.run_ns),
                    Duration::from_secs_f64(seconds),
                ),
            });
        }
    }
    Ok(out)
}

/// The processes the resident-memory goal is stated at.
pub const GOAL_PROCESSES: usize = 200;

/// Reading resident memory once a second with `processes` sleeping processes on the host: the
/// CPU time of profilerd's `resident` thread (which reads every tracked process's `statm`) over
/// `seconds`.
pub fn resident_cost(
    work: &std::path::Path,
    processes: usize,
    seconds: f64,
) -> Result<ResidentCost, String> {
    watchdog::step(1, format!("resident memory readings, {processes} processes"));
    let daemon = Profilerd::start(&work.join("profilerd"), 99, false)?;
    let mut sleepers = Vec::with_capacity(processes);
    for _ in 0..processes {
        let mut command = std::process::Command::new("sleep");
        let child = watchdog::dies_with_harness(&mut command)
            .arg("3600")
            .spawn()
            .map_err(|e| format!("starting sleep: {e}"))?;
        sleepers.push(child);
    }
    // A sleeper is tracked from its first switch off the CPU (the off-CPU program records a
    // thread's first one).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let tracked = loop {
        let tracked = daemon.status().map_or(0, |s| s.processes as usize);
        if tracked >= processes || std::time::Instant::now() > deadline {
            break tracked;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    daemon.settle(Duration::from_secs(20));
    let before = measure::thread_cpu_ns(daemon.pid(), "resident");
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = measure::thread_cpu_ns(daemon.pid(), "resident").saturating_sub(before);
    daemon.stop();
    for mut sleeper in sleepers {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    Ok(ResidentCost {
        processes_tracked: tracked as u64,
        seconds,
        core_percent: measure::core_percent(
            Duration::from_nanos(cpu),
            Duration::from_secs_f64(seconds),
        ),
    })
}

/// The memory tools Python users run today, next to profilerd, on the same workload: its
/// wall time (timed from inside) and the CPU the tool adds.
pub fn tools(
    programs: &Programs,
    work: &std::path::Path,
    venv: &std::path::Path,
    workload_rounds: u32,
    rounds: usize,
) -> Result<Vec<ToolRun>, String> {
    let python = venv.join("bin/python");
    let mprof = venv.join("bin/mprof");
    let script = programs.script.to_string_lossy().into_owned();
    let n = workload_rounds.to_string();
    let mut out = Vec::new();
    for round in 0..rounds {
        for tool in Tool::ALL {
            watchdog::step(1, format!("memory tools, round {}, {}", round + 1, tool.name()));
            let mut command = match tool {
                Tool::Plain | Tool::Profilerd => std::process::Command::new(&python),
                Tool::Tracemalloc => {
                    let mut c = std::process::Command::new(&python);
                    c.arg("-X").arg("tracemalloc=1");
                    c
                }
                Tool::Mprof => {
                    let mut c = std::process::Command::new(&mprof);
                    c.args(["run", "--interval", "0.1", "--output"])
                        .arg(work.join("mprofile.dat"))
                        .arg(&python);
                    c
                }
                Tool::MemoryProfiler => {
                    let mut c = std::process::Command::new(&python);
                    c.args(["-m", "memory_profiler"]);
                    c
                }
            };
            command.args([script.as_str(), "memory", n.as_str()]);
            let daemon = match tool {
                Tool::Profilerd => {
                    let d = Profilerd::start(&work.join("profilerd"), 99, false)?;
                    d.settle(Duration::from_secs(20));
                    Some(d)
                }
                _ => None,
            };
            let before = daemon.as_ref().map(Profilerd::usage);
            let (stdout, tree_cpu) = run_tree(&mut command)?;
            let daemon_cpu = match (&daemon, before) {
                (Some(d), Some(before)) => d.usage().since(before).total().as_secs_f64(),
                _ => 0.0,
            };
            if let Some(d) = daemon {
                d.stop();
            }
            // The workload's line, wherever the tool's own output puts it.
            let (wall, cpu) = stdout
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    let pair = (w.next()?.parse::<f64>().ok()?, w.next()?.parse::<f64>().ok()?);
                    w.next().is_none().then_some(pair)
                })
                .ok_or_else(|| format!("{}: no timing line in {stdout:?}", tool.name()))?;
            out.push(ToolRun {
                round,
                tool: tool.name(),
                wall_seconds: wall,
                workload_cpu_seconds: cpu,
                tool_cpu_seconds: (tree_cpu - cpu).max(0.0) + daemon_cpu,
            });
        }
    }
    Ok(out)
}

/// Runs `command` to its end; its standard output and the CPU seconds of its process tree
/// (itself and the children it waited for).
fn run_tree(command: &mut std::process::Command) -> Result<(String, f64), String> {
    let child = watchdog::dies_with_harness(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {command:?}: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.ok_or("no standard output")?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if waited != pid as libc::pid_t || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{command:?} failed (status {status}):\n{text}"));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((text, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// A way to watch a Python program's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Plain,
    Profilerd,
    Mprof,
    Tracemalloc,
    MemoryProfiler,
}

impl Tool {
    const ALL: [Tool; 5] =
        [Tool::Plain, Tool::Profilerd, Tool::Mprof, Tool::Tracemalloc, Tool::MemoryProfiler];

    fn name(self) -> &'static str {
        match self {
            Tool::Plain => "not watched",
            Tool::Profilerd => "profilerd",
            Tool::Mprof => "mprof run --interval 0.1",
            Tool::Tracemalloc => "python -X tracemalloc",
            Tool::MemoryProfiler => "python -m memory_profiler (@profile)",
        }
    }
}
