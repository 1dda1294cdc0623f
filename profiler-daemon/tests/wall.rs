//! Root integration tests: wall-clock and off-CPU profiles from the scheduler's context
//! switches, for every interpreter on the machine and a native program.

#[path = "support/pythons.rs"]
mod pythons;
mod support;

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use pythons::one_per_version;
use support::{Daemon, build_c, line_amounts, marked_line, parse_folded, require_bpf, scratch};

const WORKLOAD: &str = "workload.py";

#[test]
fn the_wall_profile_splits_a_functions_time_between_its_lines_as_the_clock_does() {
    if !require_bpf("the_wall_profile_splits_a_functions_time_between_its_lines_as_the_clock_does")
    {
        return;
    }
    let dir = scratch("wall_lines");
    let daemon = Daemon::start(&dir, &["--frequency", "199", "--off-cpu-budget", "20000"]);
    let (cpu_line, sleep_line) = (marked_line("wall_cpu"), marked_line("wall_sleep"));
    for python in one_per_version().into_iter().filter(|p| p.supported()) {
        let child = python
            .command()
            .arg(python.workload(WORKLOAD))
            .args(["wall", "8"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", python.name());
        let truth: HashMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let lines = |mode: &str| {
            daemon.ctl_ok(&[
                "query",
                "--mode",
                mode,
                "--format",
                "lines",
                "--function",
                "wall_handler",
                "--pid",
                &pid,
                "--since",
                "5m",
            ])
        };
        let wall = lines("wall");
        let rows = line_amounts(&wall);
        let (cpu, sleep) = (rows.get(&cpu_line), rows.get(&sleep_line));
        let (Some(&cpu), Some(&sleep)) = (cpu, sleep) else {
            panic!("{}: both lines have wall time:\n{wall}", python.name());
        };
        let measured = truth["wall_cpu"] / (truth["wall_cpu"] + truth["wall_sleep"]);
        let profiled = cpu / (cpu + sleep);
        eprintln!(
            "{}: computing line {:.1}% of the two lines' wall time, measured {:.1}% \
             ({cpu:.2} s and {sleep:.2} s profiled)",
            python.name(),
            100.0 * profiled,
            100.0 * measured
        );
        assert!(
            (profiled - measured).abs() < 0.05,
            "{}: the profile gives the computing line {:.1}% of the wall time, the clock \
             {:.1}%:\n{wall}",
            python.name(),
            100.0 * profiled,
            100.0 * measured
        );
        // The CPU profile of the same range sees no time on the sleeping line.
        let cpu_rows = line_amounts(&lines("cpu"));
        let asleep = cpu_rows.get(&sleep_line).copied().unwrap_or(0.0);
        assert!(asleep < 0.05 * sleep, "{}: CPU time on time.sleep: {asleep} s", python.name());
    }
}

#[test]
fn off_cpu_time_names_why_threads_waited() {
    if !require_bpf("off_cpu_time_names_why_threads_waited") {
        return;
    }
    let dir = scratch("off_cpu_reasons");
    let daemon = Daemon::start(&dir, &["--frequency", "199", "--off-cpu-budget", "20000"]);
    for python in one_per_version().into_iter().filter(|p| p.supported()) {
        let mut child = python
            .command()
            .arg(python.workload(WORKLOAD))
            .args(["blocked", "4"])
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        assert!(child.wait().unwrap().success(), "{}", python.name());
        std::thread::sleep(Duration::from_millis(1500));
        let folded = |reason: &str| {
            parse_folded(&daemon.ctl_ok(&[
                "query",
                "--mode",
                "off-cpu",
                "--idle",
                "--format",
                "folded",
                "--pid",
                &pid,
                "--since",
                "5m",
                "-s",
                &format!("reason={reason}"),
            ]))
        };
        // Stacks under `frame` that end in the reason's marker.
        let seconds = |folded: &[(String, u64)], frame: &str, reason: &str| -> f64 {
            let marker = format!(";[off-CPU: {reason}]");
            folded
                .iter()
                .filter(|(s, _)| s.contains(&format!("{frame};")) && s.ends_with(&marker))
                .map(|(_, ns)| *ns as f64)
                .sum::<f64>()
                / 1e9
        };
        let file = python.workload(WORKLOAD).display().to_string();
        let lock = folded("lock");
        let waiting = format!("wait_for_lock ({file}:{})", marked_line("lock_wait"));
        let on_lock = seconds(&lock, &waiting, "lock");
        let io = folded("io");
        let syncing = format!("write_and_sync ({file}:{})", marked_line("fsync"));
        let on_disk = seconds(&io, &syncing, "io");
        eprintln!("{}: {on_lock:.2} s waiting on the lock, {on_disk:.2} s on disk", python.name());
        let dump = |f: &[(String, u64)]| -> String {
            f.iter().take(8).map(|(s, c)| format!("  {s} {c}\n")).collect()
        };
        // The waiter spends nearly all of the 4 s blocked on the lock.
        assert!(on_lock > 2.5, "{}: lock waits under {waiting}:\n{}", python.name(), dump(&lock));
        assert!(on_disk > 0.0, "{}: disk waits under {syncing}:\n{}", python.name(), dump(&io));
        assert!(
            io.iter().all(|(s, _)| s.ends_with("[off-CPU: io]")),
            "{}: every io stack ends in its reason:\n{}",
            python.name(),
            dump(&io)
        );
    }
}

#[test]
fn a_sleeping_native_program_shows_its_kernel_frames_off_the_cpu() {
    if !require_bpf("a_sleeping_native_program_shows_its_kernel_frames_off_the_cpu") {
        return;
    }
    let dir = scratch("off_cpu_native");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &[]);
    let mut child = Command::new(&program).args(["sleep", "3"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let query = |extra: &[&str]| {
        daemon.ctl(
            &[
                &[
                    "query", "--mode", "off-cpu", "--format", "folded", "--pid", &pid, "--since",
                    "5m",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let folded = parse_folded(&String::from_utf8(query(&["--idle"]).stdout).unwrap());
    let total: f64 = folded.iter().map(|(_, ns)| *ns as f64).sum::<f64>() / 1e9;
    let dump: String = folded.iter().take(8).map(|(s, c)| format!("  {s} {c}\n")).collect();
    let asleep: f64 = folded
        .iter()
        .filter(|(s, _)| {
            // libc's functions keep no frame pointer: the frame-pointer walk skipped
            // sleep_loop and nanosleep (`main;clock_nanosleep`); the stack's copy, unwound,
            // has them all.
            s.contains(";main;sleep_loop;nanosleep;clock_nanosleep;")
                && s.contains("do_nanosleep")
                && s.ends_with(";__schedule;[off-CPU: sleep]")
        })
        .map(|(_, ns)| *ns as f64)
        .sum::<f64>()
        / 1e9;
    eprintln!("{total:.2} s off the CPU, {asleep:.2} s in nanosleep");
    assert!(
        (2.4..3.6).contains(&asleep),
        "about 3 s asleep under main;sleep_loop with the kernel's frames:\n{dump}"
    );
    // By default, a program that never ran in the range is left out, and profctl says so.
    let default = query(&[]);
    let stderr = String::from_utf8_lossy(&default.stderr);
    let shown: f64 = parse_folded(&String::from_utf8(default.stdout).unwrap())
        .iter()
        .map(|(_, ns)| *ns as f64)
        .sum::<f64>()
        / 1e9;
    if stderr.contains("never ran on a CPU") {
        assert_eq!(shown, 0.0, "left out, and said so: {stderr}");
    } else {
        assert!((shown - total).abs() < 1e-6, "it ran, so it shows: {shown} s of {total} s");
    }
}

/// Seconds per thread (by its `tid` label) of the answer to `profctl query ARGS`, read from its
/// pprof file (written in `dir`).
fn seconds_by_thread(daemon: &Daemon, dir: &Path, args: &[&str]) -> HashMap<String, f64> {
    let pprof = dir.join("answer.pb.gz");
    daemon.ctl_ok(&[args, &["--format", "pprof", "-o", pprof.to_str().unwrap()]].concat());
    let bytes = std::fs::read(&pprof).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut raw).unwrap();
    let profile = <profiler_proto::v1::Profile as prost::Message>::decode(&raw[..]).unwrap();
    let view = profiler_daemon::export::ProfileView::new(&profile).unwrap();
    let mut out = HashMap::new();
    for sample in &view.samples {
        let tid = sample.labels.iter().find(|(k, _)| k == "tid").map(|(_, v)| v.clone());
        *out.entry(tid.unwrap_or_default()).or_insert(0.0) += sample.value as f64 / 1e9;
    }
    out
}

#[test]
fn the_gil_mode_shows_two_threads_taking_turns_and_one_thread_alone_never_waiting() {
    if !require_bpf(
        "the_gil_mode_shows_two_threads_taking_turns_and_one_thread_alone_never_waiting",
    ) {
        return;
    }
    use std::io::{BufRead as _, BufReader};
    let dir = scratch("gil_mode");
    let daemon = Daemon::start(&dir, &["--frequency", "199", "--off-cpu-budget", "20000"]);
    let workload = |p: &pythons::Interpreter| p.workload("gil.py");
    // Free-threaded builds run without a GIL: nothing to show.
    for python in one_per_version().into_iter().filter(|p| p.supported() && !p.free_threaded) {
        for threads in [2, 1] {
            let mut child = python
                .command()
                .arg(workload(&python))
                .args([&threads.to_string(), "4"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id().to_string();
            let tids: Vec<String> = BufReader::new(child.stdout.take().unwrap())
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("tid ").map(str::to_owned))
                .collect();
            assert!(child.wait().unwrap().success(), "{}", python.name());
            assert_eq!(tids.len(), threads, "{}", python.name());
            std::thread::sleep(Duration::from_millis(1500));
            let base = ["query", "--pid", &pid, "--since", "5m"];
            let held = seconds_by_thread(
                &daemon,
                &dir,
                &[&base[..], &["--mode", "gil", "-s", "gil=held"]].concat(),
            );
            let waited = seconds_by_thread(
                &daemon,
                &dir,
                &[&base[..], &["--mode", "off-cpu", "-s", "reason=gil"]].concat(),
            );
            let all = seconds_by_thread(&daemon, &dir, &[&base[..], &["--mode", "wall"]].concat());
            let mut failures = Vec::new();
            for tid in &tids {
                let (h, w) = (
                    held.get(tid).copied().unwrap_or(0.0),
                    waited.get(tid).copied().unwrap_or(0.0),
                );
                let share = w / (h + w).max(1e-9);
                eprintln!(
                    "{} with {threads} thread(s): thread {tid} held the GIL {h:.2} s, waited \
                     {w:.2} s ({:.0}% waiting) of {:.2} s of wall time",
                    python.name(),
                    100.0 * share,
                    all.get(tid).copied().unwrap_or(0.0)
                );
                if threads == 2 && !(0.3..0.7).contains(&share) {
                    failures.push(format!("thread {tid} waits {share:.2} of its GIL time"));
                }
                if threads == 1 && !(h > 2.0 && share < 0.05) {
                    failures.push(format!("thread {tid} alone: {h:.2} s held, {w:.2} s waiting"));
                }
            }
            assert!(
                failures.is_empty(),
                "{} with {threads} thread(s): two spinning threads each wait about half their \
                 time, one alone never: {failures:?}",
                python.name()
            );
        }
    }
}
