//! Native stacks of code without frame pointers: what a sample costs when the kernel program
//! copies the stack and the daemon unwinds it, next to the frame-pointer walk on the same call
//! chain, and next to `perf record --call-graph dwarf`, which copies the stack too and leaves
//! the unwinding to `perf report`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    measure,
    profilers::Profilerd,
    report::{PerfDwarf, UnwindCase, UnwindCost},
    watchdog,
};

/// Builds the two programs of `deep.c` into `dir`: (frame pointers, none).
fn build(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let source = dir.join("deep.c");
    std::fs::write(&source, include_str!("deep.c")).map_err(|e| e.to_string())?;
    let compile = |out: &Path, flags: &[&str]| -> Result<(), String> {
        let status = Command::new("cc")
            .args(flags)
            .arg(&source)
            .arg("-o")
            .arg(out)
            .status()
            .map_err(|e| format!("running cc: {e}"))?;
        status.success().then_some(()).ok_or_else(|| format!("compiling {}", out.display()))
    };
    let walked = dir.join("deep-frame-pointers");
    compile(
        &walked,
        &[
            "-O2",
            "-DFREESTANDING",
            "-fno-omit-frame-pointer",
            "-fno-stack-protector",
            "-static",
            "-nostdlib",
        ],
    )?;
    let unwound = dir.join("deep-no-frame-pointers");
    compile(&unwound, &["-O2", "-fomit-frame-pointer"])?;
    Ok((walked, unwound))
}

fn start(program: &Path, copies: usize) -> Vec<Child> {
    (0..copies)
        .filter_map(|_| {
            let mut c = Command::new(program);
            watchdog::dies_with_harness(&mut c).stdout(Stdio::null()).spawn().ok()
        })
        .collect()
}

fn stop(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Measures both programs under profilerd at 999 Hz (two busy processes at a time, one per
/// CPU here) for `seconds` each, then `perf record --call-graph dwarf` on the one without frame
/// pointers when `perf` is given.
pub fn cost(work: &Path, perf: Option<&Path>, seconds: f64) -> Result<UnwindCost, String> {
    let (walked, unwound) = build(&work.join("deep"))?;
    let daemon = Profilerd::start(&work.join("profilerd-unwind"), 999, false)?;
    daemon.settle(Duration::from_secs(20));
    let mut cases = Vec::new();
    for (name, program, copied) in [
        ("20 native frames, frame pointers (walked)", &walked, false),
        ("20 native frames, no frame pointers (stack copied, unwound)", &unwound, true),
    ] {
        watchdog::step(1, name);
        let mut children = start(program, 2);
        // Past start-up: the process read and its tables mapped.
        std::thread::sleep(Duration::from_secs(1));
        let status_before = daemon.status().ok_or("profilerd does not answer")?;
        let before = daemon.usage();
        let sampling = daemon.sampling_cost();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let used = daemon.usage().since(before);
        let sampling = daemon.sampling_cost().since(sampling);
        let status = daemon.status().ok_or("profilerd does not answer")?;
        stop(&mut children);
        let unwind = |s: &profiler_proto::v1::StatusResponse| {
            s.native_unwind.as_ref().map_or((0, 0, 0), |u| (u.unwound, u.failed, u.copied_bytes))
        };
        let ((u0, f0, b0), (u1, f1, b1)) = (unwind(&status_before), unwind(&status));
        let copies = (u1 + f1).saturating_sub(u0 + f0);
        // Host-wide counts: the daemon's own samples (it has no frame pointers either) are in
        // both cases.
        let samples_unwound = u1.saturating_sub(u0);
        if copied && samples_unwound < sampling.runs / 2 {
            return Err(format!(
                "{name}: {samples_unwound} of {} samples unwound from a copy",
                sampling.runs
            ));
        }
        cases.push(UnwindCase {
            case: name.to_owned(),
            runs: sampling.runs,
            kernel_ns_per_sample: sampling.run_ns as f64 / sampling.runs.max(1) as f64,
            daemon_us_per_sample: used.cpu_ns as f64 / 1000.0 / sampling.runs.max(1) as f64,
            samples_unwound,
            samples_failed: f1.saturating_sub(f0),
            bytes_copied_per_sample: b1.saturating_sub(b0).checked_div(copies).unwrap_or(0),
        });
    }
    let status = daemon.status().ok_or("profilerd does not answer")?;
    let tables = status.native_unwind.unwrap_or_default();
    let rss_mib = measure::peak_rss(daemon.pid()) as f64 / f64::from(1 << 20);
    daemon.stop();
    let perf = match perf {
        Some(perf) => Some(perf_dwarf(perf, &unwound, work, seconds)?),
        None => None,
    };
    Ok(UnwindCost {
        cases,
        table_files: tables.files,
        table_bytes: tables.table_bytes,
        daemon_peak_rss_mib: rss_mib,
        perf,
    })
}

/// `perf record -F 999 --call-graph dwarf` on one process of `program` for `seconds`: its own
/// CPU and what it writes.
fn perf_dwarf(perf: &Path, program: &Path, work: &Path, seconds: f64) -> Result<PerfDwarf, String> {
    watchdog::step(1, "perf record --call-graph dwarf");
    let mut children = start(program, 1);
    let pid = children.first().ok_or("the workload did not start")?.id();
    let output = work.join("perf-dwarf.data");
    let mut command = Command::new(perf);
    let mut recorder = watchdog::dies_with_harness(&mut command)
        .args(["record", "-F", "999", "--call-graph", "dwarf", "-q", "-p", &pid.to_string(), "-o"])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting perf: {e}"))?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu_ns = measure::cpu_ns(recorder.id());
    let wall = started.elapsed();
    // SIGINT, on which perf writes its header and exits.
    let _ = Command::new("kill").args(["-INT", &recorder.id().to_string()]).status();
    let _ = recorder.wait();
    stop(&mut children);
    let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&output);
    Ok(PerfDwarf {
        cpu_percent: measure::core_percent(Duration::from_nanos(cpu_ns), wall),
        bytes_per_second: bytes as f64 / wall.as_secs_f64(),
    })
}
