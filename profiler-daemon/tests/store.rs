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
fn a_restart_inside_a_window_keeps_both_runs_once() {
    if !require_bpf("a_restart_inside_a_window_keeps_both_runs_once") {
        return;
    }
    let dir = scratch("store_restart_window");
    let program = build_c("native", &dir);
    // One window for the whole test: both runs write the same window start.
    let args = ["--frequency", "199", "--window", "1h"];
    let run = |daemon: &Daemon| {
        let mut child = Command::new(&program).args(["cpu", "2"]).spawn().unwrap();
        let pid = child.id().to_string();
        assert!(child.wait().unwrap().success());
        std::thread::sleep(Duration::from_millis(500));
        let n = fn_a_samples(daemon, &pid);
        assert!(n > 50, "the workload was sampled: {n}");
        (pid, n)
    };
    let daemon = Daemon::start(&dir, &args);
    let (first_pid, first) = run(&daemon);
    assert!(daemon.stop());
    let daemon = Daemon::start(&dir, &args);
    let (second_pid, second) = run(&daemon);
    // The first run's part of the window comes from the store, the second's from memory.
    assert_eq!(fn_a_samples(&daemon, &first_pid), first);
    assert!(daemon.stop());
    let daemon = Daemon::start(&dir, &args);
    assert_eq!(fn_a_samples(&daemon, &first_pid), first, "the first run is kept once");
    assert_eq!(fn_a_samples(&daemon, &second_pid), second, "the second run is kept once");
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

/// Unmounts the test's tmpfs however the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn window_with_new_frames(i: i64, frames: usize) -> profiler_daemon::aggregate::Window {
    use std::sync::Arc;

    use profiler_daemon::aggregate::{Frame, FrameKind, Labels, window::WindowEntry};
    let labels = Arc::new(Labels { pid: 1, comm: "grower".into(), ..Labels::default() });
    let stack: Vec<Arc<Frame>> = (0..frames)
        .map(|d| {
            Arc::new(Frame {
                kind: FrameKind::Native,
                ..Frame::marker(&format!("window_{i}_frame_{d}_{}", "x".repeat(40)))
            })
        })
        .collect();
    let start = 1_700_000_000_000_000_000 + i * 10_000_000_000;
    profiler_daemon::aggregate::Window {
        start_ns: start,
        end_ns: start + 10_000_000_000,
        samples: 1,
        drops: Default::default(),
        entries: vec![WindowEntry {
            kind: profiler_daemon::aggregate::SampleKind::Cpu,
            labels,
            stack: stack.into(),
            count: 1,
            value: 1,
        }],
        calls: Vec::new(),
        persisted: Default::default(),
    }
}

#[test]
fn a_full_disk_loses_only_the_windows_it_refused_and_the_store_recovers() {
    use profiler_daemon::store::{DiskRetention, Store};
    if !require_bpf("a_full_disk_loses_only_the_windows_it_refused_and_the_store_recovers") {
        return;
    }
    let dir = scratch("store_full_disk");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs");
    let _mount = Mount(data.clone());
    let retention = DiskRetention { max_age: Duration::from_secs(1 << 30), max_bytes: 1 << 40 };
    let mut stored = Vec::new();
    let mut refused = 0;
    {
        let store = Store::open(&data, retention, false).unwrap();
        for i in 0..400 {
            let window = window_with_new_frames(i, 100);
            match store.append(&window, window.end_ns) {
                Ok(()) => stored.push(i),
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains("profiles.redb"), "{e}");
                    // Each later write first tries to reopen the file, which repairs it.
                    if refused == 3 {
                        break;
                    }
                }
            }
        }
        assert!(refused > 0, "the 1 MiB file system filled up ({} windows stored)", stored.len());
        assert_eq!(store.status().windows, stored.len() as u64, "only commits are counted");
        // Space again: the store reopens its file and goes on.
        let grown =
            Command::new("mount").args(["-o", "remount,size=256m"]).arg(&data).status().unwrap();
        assert!(grown.success());
        for i in 1000..1010 {
            let window = window_with_new_frames(i, 100);
            store.append(&window, window.end_ns).unwrap();
            stored.push(i);
        }
    }
    let store = Store::open(&data, retention, false).unwrap();
    assert_eq!(store.status().windows, stored.len() as u64);
    let all = store
        .merge(0, i64::MAX, &Default::default(), profiler_daemon::aggregate::Mode::Cpu)
        .unwrap();
    assert_eq!(all.samples, stored.len() as u64, "every stored window reads back");
    assert_eq!(all.entries.len(), stored.len(), "with its frames");
}
