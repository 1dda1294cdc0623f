//! A process whose memory never answers a read must stall nothing: while hundreds of them
//! start at once, a steady process keeps every sample (the ring buffer is drained by a task
//! that waits on nothing else, and processes are looked inside on their own thread).

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{Daemon, build_c, parse_folded, require_bpf, scratch};

/// Processes started at once whose `Py_Version` page is never served.
const UNANSWERED: usize = 200;

/// The count of drop reason `name` in `profctl status` (0 when it is not listed).
fn dropped(status: &str, name: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with("dropped:")).expect("a dropped: line");
    line.trim_start_matches("dropped:")
        .split(',')
        .filter_map(|part| part.trim().split_once(' '))
        .find(|(reason, _)| *reason == name)
        .map_or(0, |(_, n)| n.parse().unwrap())
}

fn start_unanswered(program: &std::path::Path) -> Child {
    let mut child = Command::new(program).arg("60").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", program.display());
    child
}

/// The unanswered processes, killed however the test ends: while they live, every daemon on
/// the host (other tests' too) has an inspection stalled on each of them.
struct Unanswered(Vec<Child>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn processes_whose_memory_never_answers_stall_no_other_process() {
    if !require_bpf("processes_whose_memory_never_answers_stall_no_other_process") {
        return;
    }
    let dir = scratch("stalls");
    let native = build_c("native", &dir);
    // Named like an interpreter, so that the daemon reads its memory to find its version.
    let unanswered = dir.join("python3.12");
    std::fs::rename(build_c("unanswered", &dir), &unanswered).unwrap();
    // A small ring: four seconds of samples, so that a collector held up by the stalled
    // processes (for as long as they live, longer than the steady process runs) loses some,
    // while one slowed by other work on a busy machine does not (one second was too little
    // when the whole suite ran).
    let daemon = Daemon::start(&dir, &["--frequency", "999", "--ring-buffer-size", "1MiB"]);

    let mut blocked = Unanswered((0..UNANSWERED).map(|_| start_unanswered(&unanswered)).collect());
    let steady = Command::new(&native).args(["cpu", "6"]).status().unwrap();
    assert!(steady.success());
    let folded = parse_folded(&daemon.folded_since_5m("comm=native"));
    let samples: u64 = folded.iter().map(|(_, n)| n).sum();
    // Six seconds on one CPU at 999 Hz; the kernel gives the process most of a CPU.
    assert!(samples > 3 * 999, "the steady process kept {samples} samples");

    let status = daemon.ctl_ok(&["status"]);
    for reason in ["ring_buffer_full", "collector_queue_full", "symbolizer_queue_full"] {
        assert_eq!(dropped(&status, reason), 0, "{reason} while processes stalled:\n{status}");
    }
    assert!(
        status.contains("being inspected"),
        "the unanswered processes are listed as being inspected:\n{status}"
    );
    for child in &mut blocked.0 {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Once they are gone the inspector is free again: a new process is inspected.
    let python = Command::new("/usr/bin/python3.11")
        .args(["-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
        .status()
        .unwrap();
    assert!(python.success());
    std::thread::sleep(Duration::from_secs(2));
    let folded = parse_folded(&daemon.ctl_ok(&[
        "query",
        "--format",
        "folded",
        "--since",
        "1m",
        "-s",
        "comm=python3.11",
    ]));
    assert!(
        folded.iter().any(|(s, _)| s.contains("<module> (<string>")),
        "a Python process after the stall has Python frames: {folded:?}"
    );
    let log = daemon.log();
    assert!(daemon.stop(), "profilerd did not stop cleanly:\n{log}");
}
