//! Process identity: a pid reused by another process, and a program that replaces itself with
//! `execve`, each get their own samples, labels and Python registration.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use support::{Daemon, build_c, parse_folded, require_bpf, samples_with, scratch};

const PYTHON: &str = "/usr/bin/python3.11";

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/workload.py")
}

/// Gives a new daemon time to symbolize what already runs on the host: Python code objects are
/// read while their process lives, and these processes are short.
fn warm_up() {
    std::thread::sleep(Duration::from_secs(4));
}

/// Samples whose stack contains `text`.
fn containing(folded: &[(String, u64)], text: &str) -> u64 {
    folded.iter().filter(|(s, _)| s.contains(text)).map(|(_, c)| c).sum()
}

fn folded(daemon: &Daemon, selector: &str) -> Vec<(String, u64)> {
    parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--since", "5m", "-s", selector]))
}

/// Starts `program` under pid `pid`, by setting the kernel's last pid just before the fork;
/// another process may take the pid first, so this tries a few times.
fn spawn_with_pid(pid: u32, program: &Path, args: &[&str]) -> Option<Child> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new(program).args(args).spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a_reused_pid_is_a_new_process() {
    if !require_bpf("a_reused_pid_is_a_new_process") {
        return;
    }
    if !Path::new(PYTHON).exists() {
        panic!("{PYTHON} is part of the machine image and this test needs it");
    }
    let dir = scratch("identity_reuse");
    let native = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    warm_up();
    let mut python = Command::new(PYTHON).arg(workload()).args(["hot", "1.5"]).spawn().unwrap();
    let pid = python.id();
    assert!(python.wait().unwrap().success());
    // The pid goes to a native program at once, well inside the time the daemon keeps an
    // exited process's facts.
    let mut reused = spawn_with_pid(pid, &native, &["cpu", "1.5"])
        .unwrap_or_else(|| panic!("pid {pid} could not be reused"));
    assert!(reused.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1200));

    let python_part = folded(&daemon, &format!("pid={pid},exe={PYTHON}"));
    let native_part = folded(&daemon, &format!("pid={pid},exe={}", native.display()));
    let hot = containing(&python_part, "hot_outer (");
    assert!(hot > 50, "the Python process's samples: {python_part:?}");
    let fn_ab =
        samples_with(&native_part, "main;run;fn_a") + samples_with(&native_part, "main;run;fn_b");
    let native_total: u64 = native_part.iter().map(|(_, c)| c).sum();
    assert!(
        fn_ab > 50 && fn_ab * 10 > native_total * 8,
        "the native program's samples carry its own exe and frames: {native_part:?}"
    );
    assert!(
        native_part.iter().all(|(stack, _)| !stack.contains(".py:")),
        "no Python frame in the native program: {native_part:?}"
    );
    assert!(
        python_part.iter().all(|(stack, _)| !stack.contains("fn_a") && !stack.contains("fn_b")),
        "no native program frame under the Python process's exe: {python_part:?}"
    );
}

#[test]
fn a_program_that_execs_itself_is_walked_again() {
    if !require_bpf("a_program_that_execs_itself_is_walked_again") {
        return;
    }
    let dir = scratch("identity_exec");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    warm_up();
    let mut child = Command::new(PYTHON).arg(workload()).args(["reexec", "3"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1200));
    let all = folded(&daemon, &format!("pid={pid}"));
    let before = containing(&all, "before_exec (");
    let after = containing(&all, "after_exec (");
    assert!(before > 50, "before the exec: {before}\n{all:?}");
    // Same pid, same executable, same name: only the exec count tells the new program apart.
    assert!(after > 50, "after the exec: {after}\n{all:?}");
}
