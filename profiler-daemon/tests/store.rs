//! The on-disk store end to end: history survives a clean restart and a `kill -9`, and a
//! damaged store is refused with a way out.

mod support;

use std::{process::Command, time::Duration};

use support::{Daemon, build_c, parse_folded, require_bpf, samples_with, scratch};

fn fn_a_samples(daemon: &Daemon, pid: &str) -> u64 {
    let folded = parse_folded(
        &daemon.ctl_ok(&["query", "--format", "folded", "--pid", pid, "--since", "1h"]),
    );
    samples_with(&folded, "main;run;fn_a")
}

#[test]
fn history_survives_a_restart_and_a_kill() {
    if !require_bpf("history_survives_a_restart_and_a_kill") {
        return;
    }
    let dir = scratch("store_restart");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    let mut child = Command::new(&program).args(["cpu", "3"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    // Let the 1 s windows holding the workload close and be written.
    std::thread::sleep(Duration::from_millis(2500));
    let before = fn_a_samples(&daemon, &pid);
    assert!(before > 100, "the workload was sampled: {before}");

    // A crash: nothing gets to flush.
    daemon.kill();
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    assert_eq!(fn_a_samples(&daemon, &pid), before, "every closed window is served again");
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("store:"), "{status}");

    // A clean stop and start.
    assert!(daemon.stop());
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    assert_eq!(fn_a_samples(&daemon, &pid), before);
    assert!(daemon.stop());
}

#[test]
fn a_damaged_store_is_refused_with_a_way_out() {
    let dir = scratch("store_damaged");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Not a redb file at all.
    std::fs::write(data.join("profiles.redb"), vec![0x5a; 64 << 10]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--data-dir", data.to_str().unwrap(), "--listen"])
        .arg(format!("unix://{}/p.sock", dir.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is damaged") && err.contains("--repair"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn watch_streams_each_window_and_targets_lists_the_processes() {
    if !require_bpf("watch_streams_each_window_and_targets_lists_the_processes") {
        return;
    }
    use std::io::{BufRead as _, BufReader};
    let dir = scratch("store_watch");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    let mut child = Command::new(&program).args(["cpu", "4"]).spawn().unwrap();
    let pid = child.id().to_string();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_profctl"))
        .args(["--endpoint", &daemon.endpoint, "watch", "--pid", &pid, "--limit", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut tables = 0;
    let mut text = String::new();
    for line in lines {
        let line = line.unwrap();
        if line.contains(" samples (") {
            tables += 1;
        }
        text.push_str(&line);
        text.push('\n');
        if tables == 3 {
            break;
        }
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!text.contains('\u{1b}'), "no escape codes when piped:\n{text}");
    assert!(text.contains("fn_a (native)"), "{text}");
    assert!(
        text.contains(&format!("processes: 1 — {pid} native")),
        "only the selected pid:\n{text}"
    );

    let targets = daemon.ctl_ok(&["targets", "--since", "5m"]);
    let row =
        targets.lines().find(|l| l.split_whitespace().next() == Some(&*pid)).unwrap_or_default();
    assert!(row.contains("native") && row.ends_with("/native"), "{targets}");
}
