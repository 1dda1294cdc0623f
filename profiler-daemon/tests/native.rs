//! Root integration tests: the real kernel programs profiling real native processes.

mod support;

use std::{process::Command, time::Duration};

use support::{
    Daemon, build_c, build_c_with, bytes_copied_per_sample, parse_folded, require_bpf,
    samples_unwound, samples_with, scratch,
};

#[test]
fn cpu_shares_and_call_chain_of_a_native_program() {
    if !require_bpf("cpu_shares_and_call_chain_of_a_native_program") {
        return;
    }
    let dir = scratch("native_cpu");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "499"]);
    let mut child = Command::new(&program).args(["cpu", "5"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    // Let the last samples reach the aggregator.
    std::thread::sleep(Duration::from_millis(500));

    let pid_filter = ["--pid", &pid, "--since", "5m"];
    let folded =
        parse_folded(&daemon.ctl_ok(&[&["query", "--format", "folded"][..], &pid_filter].concat()));
    let a = samples_with(&folded, "main;run;fn_a");
    let b = samples_with(&folded, "main;run;fn_b");
    let total: u64 = folded.iter().map(|(_, c)| c).sum();
    assert!(total > 1500, "expected about 2500 samples at 499 Hz over 5 s, got {total}");
    assert!(
        a + b > total * 8 / 10,
        "most samples sit under main;run;fn_a|fn_b: a={a} b={b} total={total}"
    );
    let share_a = a as f64 / (a + b) as f64;
    assert!(
        (share_a - 2.0 / 3.0).abs() < 0.04,
        "fn_a share {share_a:.3}, expected 0.667 (a={a}, b={b})"
    );

    let top = daemon.ctl_ok(&[&["query", "--format", "top"][..], &pid_filter].concat());
    let first_row = top.lines().nth(4).unwrap_or_default();
    assert!(first_row.contains("fn_a (native)"), "fn_a leads the self column:\n{top}");
    // Drop counts are the host's: a Python process elsewhere on the host (another test's) can
    // lose its Python frames for a sample, which concerns no native process. Nothing else may
    // be lost.
    let dropped = top.lines().find_map(|l| l.strip_prefix("dropped: ")).expect("a dropped line");
    assert!(
        dropped == "none"
            || dropped.split(", ").all(|d| d.starts_with("python_thread_not_found ")
                || d.starts_with("python_read_error ")),
        "{top}"
    );
    assert!(daemon.stop(), "profilerd exits cleanly on SIGTERM");
}

#[test]
fn the_caller_of_a_frameless_leaf_is_in_the_chain() {
    if !require_bpf("the_caller_of_a_frameless_leaf_is_in_the_chain") {
        return;
    }
    let dir = scratch("native_leaf");
    let program = build_c_with("leaf", &dir, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let daemon = Daemon::start(&dir, &["--frequency", "499"]);
    let mut child = Command::new(&program).arg("3").spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let folded = parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid]));
    let dump = || folded.iter().take(20).map(|(s, c)| format!("{s} {c}\n")).collect::<String>();
    let leaf: u64 =
        folded.iter().filter(|(s, _)| s.ends_with(";crc_fold_alpha")).map(|(_, c)| c).sum();
    let chained = samples_with(&folded, "main;dispatch_round;crc_fold_alpha");
    assert!(leaf > 500, "expected about 1500 samples of the leaf, got {leaf}:\n{}", dump());
    // Every sample of the leaf has its caller: the walk alone gives main;crc_fold_alpha.
    assert!(chained * 100 >= leaf * 99, "{chained} of {leaf} leaf samples chained:\n{}", dump());
    // Samples taken in the kernel (an interrupt) get the user stack from the kernel's walk,
    // which keeps no leaf words: those may still lack the caller.
    let unchained = folded.iter().filter(|(s, _)| s.ends_with(";main;crc_fold_alpha"));
    assert_eq!(unchained.map(|(_, c)| c).sum::<u64>(), 0, "{}", dump());
    assert!(daemon.stop());
}

#[test]
fn code_without_frame_pointers_unwinds_by_its_unwind_tables() {
    if !require_bpf("code_without_frame_pointers_unwinds_by_its_unwind_tables") {
        return;
    }
    let dir = scratch("native_unwind");
    let program = build_c_with("unwind", &dir, &["-O2", "-g", "-fomit-frame-pointer"]);
    let daemon = Daemon::start(&dir, &["--frequency", "499"]);
    // 16 KiB of environment at the top of its stack: a copy of its stack is never cut short
    // by the stack's end, whatever the size the process copies.
    let mut child =
        Command::new(&program).arg("4").env("PADDING", "x".repeat(16 << 10)).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let folded = parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid]));
    let dump = || folded.iter().take(20).map(|(s, c)| format!("{s} {c}\n")).collect::<String>();
    let leaf: u64 = folded
        .iter()
        .filter(|(s, _)| s == "mix_block" || s.ends_with(";mix_block"))
        .map(|(_, c)| c)
        .sum();
    let even = samples_with(&folded, "main;dispatch_even;mix_block");
    let odd = samples_with(&folded, "main;dispatch_odd;mix_block");
    assert!(leaf > 1000, "expected about 2000 samples of the leaf, got {leaf}:\n{}", dump());
    // Without unwind tables no sample has a chain: the frame pointer register holds data.
    assert!(even + odd >= leaf * 95 / 100, "{even} + {odd} of {leaf} chained:\n{}", dump());
    let share = even as f64 / (even + odd) as f64;
    assert!((share - 2.0 / 3.0).abs() < 0.05, "dispatch_even's share {share:.3}:\n{}", dump());
    // Above main, the C library's start-up (itself without frame pointers).
    assert!(samples_with(&folded, "__libc_start_call_main;main") > leaf / 2, "{}", dump());
    // Status says what unwinding holds and did.
    let status = daemon.ctl_ok(&["status"]);
    assert!(samples_unwound(&status) >= even + odd, "{status}");
    assert!(status.contains("at most 512 files"), "{status}");
    // Its whole stack, main and the C library's start-up included, is a few hundred bytes:
    // after the first second, at the most (8 KiB), its samples copy far less.
    let copied = bytes_copied_per_sample(&status);
    assert!(copied < 4096, "{copied} bytes copied per sample: {status}");
    // The tables behind it, with their bounds.
    let caches = status.lines().find(|l| l.starts_with("caches:")).unwrap_or_default();
    assert!(caches.contains("stack copy processes "), "{status}");
    assert!(caches.contains("unwind table files ") && caches.contains("/512"), "{status}");
    assert!(daemon.stop());
}

#[test]
fn off_cpu_stacks_of_code_without_frame_pointers_are_unwound() {
    if !require_bpf("off_cpu_stacks_of_code_without_frame_pointers_are_unwound") {
        return;
    }
    let dir = scratch("native_unwind_sleep");
    let program = build_c_with("unwind", &dir, &["-O2", "-g", "-fomit-frame-pointer"]);
    let daemon = Daemon::start(&dir, &["--frequency", "99"]);
    let mut child = Command::new(&program).args(["sleep", "4"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let folded = parse_folded(
        &daemon.ctl_ok(&["query", "--mode", "off-cpu", "--format", "folded", "--pid", &pid]),
    );
    let dump = || folded.iter().take(20).map(|(s, c)| format!("{s} {c}\n")).collect::<String>();
    // Blocked in the C library's sleep, which the kernel's frame-pointer walk cannot leave:
    // its callers come from the stack's copy, read at the switch with the registers the thread
    // entered the kernel with.
    let asleep: u64 = folded.iter().filter(|(s, _)| s.contains("sleep")).map(|(_, v)| v).sum();
    let long = samples_with(&folded, "main;nap_long");
    let short = samples_with(&folded, "main;nap_short");
    assert!(asleep > 0, "no off-CPU time in a sleep:\n{}", dump());
    assert!(long + short >= asleep * 9 / 10, "{long} + {short} of {asleep} chained:\n{}", dump());
    let share = long as f64 / (long + short) as f64;
    assert!((share - 2.0 / 3.0).abs() < 0.1, "nap_long's share {share:.3}:\n{}", dump());
    assert!(daemon.stop());
}

#[test]
fn kernel_frames_of_a_syscall_heavy_loop() {
    if !require_bpf("kernel_frames_of_a_syscall_heavy_loop") {
        return;
    }
    let dir = scratch("native_syscall");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "499"]);
    let mut child = Command::new(&program).args(["syscall", "3"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let folded = parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid]));
    let total: u64 = folded.iter().map(|(_, c)| c).sum();
    // The user leaf is libc's write(), built without frame pointers, so the unwinder skips its
    // caller syscall_loop; main is found through syscall_loop's frame pointer.
    let under = |kernel_frame: &str| -> u64 {
        folded
            .iter()
            .filter(|(s, _)| s.contains(";main;") && s.contains(&format!(";{kernel_frame}")))
            .map(|(_, c)| c)
            .sum()
    };
    let dump = || folded.iter().take(30).map(|(s, c)| format!("{s} {c}\n")).collect::<String>();
    let entry = under("entry_SYSCALL_64");
    let write = under("ksys_write");
    assert!(
        entry * 2 > total,
        "most samples enter the kernel through a syscall ({entry} of {total}):\n{}",
        dump()
    );
    assert!(write * 10 > total, "ksys_write shows up under main ({write} of {total}):\n{}", dump());
}

#[test]
fn a_process_that_exits_keeps_its_samples_and_symbols() {
    if !require_bpf("a_process_that_exits_keeps_its_samples_and_symbols") {
        return;
    }
    let dir = scratch("native_exit");
    let program = build_c("native", &dir);
    let daemon = Daemon::start(&dir, &["--frequency", "499", "--window", "30s"]);
    let mut child = Command::new(&program).args(["cpu", "1.5"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    // The binary is gone too: symbols must already be resolved, not looked up at query time.
    std::fs::remove_file(&program).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let folded =
        parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid.to_string()]));
    let total: u64 = folded.iter().map(|(_, c)| c).sum();
    let named = samples_with(&folded, "main;run;fn_a") + samples_with(&folded, "main;run;fn_b");
    assert!(total > 300, "expected about 750 samples, got {total}");
    let dump = folded.iter().take(20).map(|(s, c)| format!("{s} {c}\n")).collect::<String>();
    assert!(named * 10 > total * 8, "{named} of {total} samples named after the exit:\n{dump}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    if !require_bpf("a_second_daemon_on_the_same_socket_is_refused") {
        return;
    }
    let dir = scratch("socket_in_use");
    let daemon = Daemon::start(&dir, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--listen", &daemon.endpoint])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by a running process"), "{stderr}");
    assert!(daemon.stop());
}
