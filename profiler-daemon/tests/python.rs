//! Root integration tests: CPython stacks walked in the kernel, for every interpreter on the
//! machine, checked for exact names, call chains and line numbers.

#[path = "support/pythons.rs"]
mod pythons;
mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pythons::{Interpreter, interpreters, one_per_version};
use support::{Daemon, parse_folded, require_bpf, samples_unwound, scratch};

const WORKLOAD: &str = "workload.py";

/// The workload's text, the same in every root.
fn workload_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads").join(WORKLOAD),
    )
    .unwrap()
}

/// The line of the workload marked `# LINE:name`.
fn marked_line(name: &str) -> u32 {
    let marker = format!("# LINE:{name}");
    let index =
        workload_text().lines().position(|l| l.contains(&marker)).expect("marker in workload.py");
    index as u32 + 1
}

/// One workload run under one interpreter.
struct Run {
    python: Interpreter,
    pid: String,
    folded: Vec<(String, u64)>,
}

impl Run {
    /// The workload's path as the profiled process knows it, which is what frames show.
    fn file(&self) -> String {
        self.python.workload(WORKLOAD).display().to_string()
    }
}

/// Runs `mode` for `seconds` under every interpreter. Versions with a layout must yield Python
/// stacks (checked by the caller on the returned runs); any other version must be reported
/// in `Status` as profiled with native stacks only, and is not returned.
fn profile_each(daemon: &Daemon, mode: &str, seconds: &str) -> Vec<Run> {
    profile_under(interpreters(), daemon, mode, seconds)
}

/// [`profile_each`] under one interpreter of each version.
fn profile_each_version(daemon: &Daemon, mode: &str, seconds: &str) -> Vec<Run> {
    profile_under(one_per_version(), daemon, mode, seconds)
}

fn profile_under(
    pythons: Vec<Interpreter>,
    daemon: &Daemon,
    mode: &str,
    seconds: &str,
) -> Vec<Run> {
    let mut out = Vec::new();
    for python in pythons {
        let mut child =
            python.command().arg(python.workload(WORKLOAD)).args([mode, seconds]).spawn().unwrap();
        let pid = child.id().to_string();
        assert!(child.wait().unwrap().success(), "{} {mode}", python.name());
        std::thread::sleep(Duration::from_millis(1200));
        if !python.supported() {
            let status = daemon.ctl_ok(&["status"]);
            let line =
                status.lines().find(|l| l.contains(&format!("pid {pid} "))).unwrap_or_default();
            assert!(
                line.contains("native stacks only"),
                "{}: an unsupported version is reported as such:\n{status}",
                python.name()
            );
            eprintln!(
                "{}: no layout; checked that it degrades to native stacks: {line}",
                python.name()
            );
            continue;
        }
        let folded = parse_folded(
            &daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid, "--since", "5m"]),
        );
        eprintln!("{}: {mode}: {} samples", python.name(), total(&folded));
        out.push(Run { python, pid, folded });
    }
    assert!(!out.is_empty(), "no supported interpreter was tested");
    out
}

fn total(folded: &[(String, u64)]) -> u64 {
    folded.iter().map(|(_, c)| c).sum()
}

fn matching(folded: &[(String, u64)], pred: impl Fn(&str) -> bool) -> u64 {
    folded.iter().filter(|(s, _)| pred(s)).map(|(_, c)| c).sum()
}

fn dump(folded: &[(String, u64)]) -> String {
    let mut v = folded.to_vec();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter().take(12).map(|(s, c)| format!("  {s} {c}\n")).collect()
}

#[test]
fn python_functions_chains_and_the_hot_line() {
    if !require_bpf("python_functions_chains_and_the_hot_line") {
        return;
    }
    let dir = scratch("python_hot");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    let hot = marked_line("hot");
    let mut last_pid = None;
    for run in profile_each(&daemon, "hot", "3") {
        let file = run.file();
        let Run { python, pid, folded } = run;
        last_pid = Some(pid.clone());
        // The line_profiler-style table puts the marked line first by hits, with its source.
        let lines = daemon.ctl_ok(&[
            "query",
            "--format",
            "lines",
            "--function",
            "hot_inner",
            "--pid",
            &pid,
        ]);
        let rows: Vec<(u32, u64)> = lines
            .lines()
            .skip(4)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect();
        let top = rows.iter().max_by_key(|r| r.1).map(|r| r.0);
        assert_eq!(top, Some(hot), "{}:\n{lines}", python.name());
        // profctl shows the source of files it can read; a file in another root is not
        // readable by its path from here.
        if python.root.is_none() {
            assert!(lines.contains("total += i * i  # LINE:hot"), "{}:\n{lines}", python.name());
        }
        if let Some(root) = &python.root {
            // The process in another root is labelled with its own executable path.
            let exe = format!("exe={}", python.exe.display());
            let own = parse_folded(&daemon.folded_since_5m(&format!("pid={pid},{exe}")));
            // The process starts as `chroot` (and before that as a fork of this test), which
            // can take a sample before its execve; the interpreter's samples have the path as
            // the process sees it, none the path from here.
            let host_path =
                format!("exe={}", root.join(python.exe.strip_prefix("/").unwrap()).display());
            let misnamed = daemon.folded_since_5m(&format!("pid={pid},{host_path}"));
            assert!(misnamed.trim().is_empty(), "{}: {host_path}:\n{misnamed}", python.name());
            assert!(
                total(&own) * 100 >= total(&folded) * 99,
                "{}: {} of {} samples with {exe}",
                python.name(),
                total(&own),
                total(&folded)
            );
            let status = daemon.ctl_ok(&["status"]);
            assert!(!status.contains(&*root.to_string_lossy()), "{}:\n{status}", python.name());
        }
        let all = total(&folded);
        let chain = format!(
            "<module> ({file}:{});main ({file}:{});hot_outer ({file}:",
            marked_line_of("if __name__") + 1,
            line_containing("        hot_outer(deadline)")
        );
        let in_chain = matching(&folded, |s| s.contains(&chain) && s.contains(";spin_until ("));
        // The loop's samples, whatever is below them; the others are the interpreter's start
        // (its imports), whose share grows on a loaded machine.
        let looping = matching(&folded, |s| s.contains("spin_until ("));
        let on_hot_line = matching(&folded, |s| s.ends_with(&format!("hot_inner ({file}:{hot})")));
        eprintln!("{}: {in_chain} of {looping} loop samples under the chain", python.name());
        assert!(all > 300, "{}: {all} samples\n{}", python.name(), dump(&folded));
        assert!(looping * 10 > all * 7, "{}: {looping} of {all} in the loop", python.name());
        assert!(
            in_chain * 100 > looping * 95,
            "{}: {in_chain} of {looping} loop samples under {chain}\n{}",
            python.name(),
            dump(&folded)
        );
        assert!(
            on_hot_line * 2 > all,
            "{}: {on_hot_line} of {all} on line {hot}\n{}",
            python.name(),
            dump(&folded)
        );
    }
    // Status names the runtime of each process it still tracks: an exited process is kept for
    // 30 s, so the last interpreter of the matrix is still there.
    let status = daemon.ctl_ok(&["status"]);
    let pid = last_pid.expect("an interpreter ran");
    assert!(
        status.lines().any(|l| l.contains(&format!("pid {pid} (")) && l.contains(": CPython 3.")),
        "{status}"
    );
    // And the code objects it read, with what they weigh against their bound.
    assert!(code_objects(&status) >= 5, "{status}");
    assert!(status.contains("of names and line tables (limit 64 MiB)"), "{status}");
}

/// The code objects `profctl status` says are cached.
fn code_objects(status: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with("python code: ")).unwrap_or_default();
    let count = line.strip_prefix("python code: ").unwrap_or_default().split(' ').next();
    count.and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn an_exited_python_process_s_code_objects_leave_the_cache_when_it_is_forgotten() {
    if !require_bpf("an_exited_python_process_s_code_objects_leave_the_cache_when_it_is_forgotten")
    {
        return;
    }
    let dir = scratch("python_code_forgotten");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    let python = interpreters().into_iter().find(|p| p.supported()).expect("an interpreter");
    let ran = python.command().arg(python.workload(WORKLOAD)).args(["hot", "2"]).status();
    assert!(ran.unwrap().success(), "{}", python.name());
    std::thread::sleep(Duration::from_millis(1200));
    let status = daemon.ctl_ok(&["status"]);
    assert!(code_objects(&status) >= 5, "{}:\n{status}", python.name());
    // Exited processes are kept for 30 s, then forgotten at a sweep (every 5 s), and their
    // code objects go with them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = daemon.ctl_ok(&["status"]);
        if code_objects(&status) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}: still cached:\n{status}", python.name());
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn marked_line_of(text: &str) -> u32 {
    line_containing(text)
}

fn line_containing(text: &str) -> u32 {
    workload_text().lines().position(|l| l.contains(text)).expect("text in workload.py") as u32 + 1
}

#[test]
fn python_recursion_deeper_than_the_limit_is_marked_truncated() {
    if !require_bpf("python_recursion_deeper_than_the_limit_is_marked_truncated") {
        return;
    }
    let dir = scratch("python_recurse");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    for Run { python, folded, .. } in profile_each_version(&daemon, "recurse", "2") {
        let all = total(&folded);
        let deep = matching(&folded, |s| {
            s.starts_with("[truncated];") && s.matches(";recurse (").count() >= 120
        });
        assert!(
            deep * 10 > all * 8,
            "{}: {deep} of {all} deep and truncated\n{}",
            python.name(),
            dump(&folded)
        );
    }
}

#[test]
fn python_threads_generators_and_coroutines() {
    if !require_bpf("python_threads_generators_and_coroutines") {
        return;
    }
    let dir = scratch("python_kinds");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    for Run { python, folded, .. } in profile_each_version(&daemon, "threads", "2") {
        let a = matching(&folded, |s| s.contains(";worker_a (") && s.contains("hot_inner ("));
        let b = matching(&folded, |s| s.contains(";worker_b (") && s.contains("hot_inner ("));
        assert!(
            a > 30 && b > 30,
            "{}: worker_a {a}, worker_b {b}\n{}",
            python.name(),
            dump(&folded)
        );
    }
    for Run { python, folded, .. } in profile_each_version(&daemon, "generator", "2") {
        let n = matching(&folded, |s| {
            s.contains(";drive_generator (")
                && s.contains(";gen_work (")
                && s.contains(";hot_inner (")
        });
        assert!(n * 10 > total(&folded) * 8, "{}: {n}\n{}", python.name(), dump(&folded));
    }
    for Run { python, folded, .. } in profile_each_version(&daemon, "asyncio", "2") {
        let n = matching(&folded, |s| s.contains(";coro_work (") && s.contains(";hot_inner ("));
        assert!(n * 10 > total(&folded) * 7, "{}: {n}\n{}", python.name(), dump(&folded));
    }
}

#[test]
fn the_main_thread_behind_a_thousand_newer_threads_is_found() {
    if !require_bpf("the_main_thread_behind_a_thousand_newer_threads_is_found") {
        return;
    }
    let dir = scratch("python_many_threads");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    for Run { python, pid, .. } in profile_each_version(&daemon, "manythreads", "2") {
        // The main thread alone: its thread id is the pid.
        let selector = format!("pid={pid},tid={pid}");
        let main = parse_folded(
            &daemon.ctl_ok(&["query", "--format", "folded", "--since", "5m", "-s", &selector]),
        );
        let hot = matching(&main, |s| s.contains(";hot_outer (") && s.contains("hot_inner ("));
        // The search resumes across samples: the first few samples of the thread lack Python
        // frames, then its state is cached.
        assert!(
            hot > 50 && hot * 10 > total(&main) * 8,
            "{}: {hot} of the main thread's {} samples in hot_outer\n{}",
            python.name(),
            total(&main),
            dump(&main)
        );
    }
}

#[test]
fn a_c_extension_leaf_sits_on_its_python_caller() {
    if !require_bpf("a_c_extension_leaf_sits_on_its_python_caller") {
        return;
    }
    let dir = scratch("python_zlib");
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    for Run { python, folded, .. } in profile_each(&daemon, "zlib", "2") {
        let all = total(&folded);
        // Root first: ...;compress_loop (file:line);<native frames of zlib/libz>
        let native_after = |s: &str| {
            let Some(at) = s.find(";compress_loop (") else { return 0 };
            let after: Vec<&str> = s[at + 1..].split(';').skip(1).collect();
            if after.iter().any(|f| f.contains(".py:")) { 0 } else { after.len() }
        };
        let native_on_top = matching(&folded, |s| native_after(s) > 0);
        // zlib's `deflate` and the internal functions it calls (and the module's function,
        // unless the interpreter has the module built in): libz and most interpreters are
        // built without frame pointers, so these come from unwind tables. Without them the
        // leaf sat alone on its Python caller.
        let whole = matching(&folded, |s| {
            native_after(s) >= 2 && s.contains(";deflate;") && s.contains("libz.so")
        });
        assert!(
            whole * 10 >= native_on_top * 8,
            "{}: {whole} of {native_on_top} with deflate and a frame under it\n{}",
            python.name(),
            dump(&folded)
        );
        // Much of the loop's time is in the interpreter itself (which the Python frames
        // replace), so only a share of the samples has a zlib leaf; those must sit on their
        // Python caller, and a native frame is never below a Python one.
        assert!(
            native_on_top * 10 > all,
            "{}: {native_on_top} of {all}\n{}",
            python.name(),
            dump(&folded)
        );
        let misordered = matching(&folded, |s| {
            let frames: Vec<&str> = s.split(';').collect();
            let first_python = frames.iter().position(|f| f.contains(".py:"));
            let last_libz = frames.iter().rposition(|f| f.contains("libz.so"));
            matches!((first_python, last_libz), (Some(p), Some(n)) if n < p)
        });
        assert_eq!(
            misordered,
            0,
            "{}: native frames below Python frames\n{}",
            python.name(),
            dump(&folded)
        );
    }
}

#[test]
fn python_cpu_shares_match_self_measured_truth() {
    if !require_bpf("python_cpu_shares_match_self_measured_truth") {
        return;
    }
    let dir = scratch("python_accuracy");
    let daemon = Daemon::start(&dir, &["--frequency", "999"]);
    for python in one_per_version() {
        if !python.supported() {
            continue;
        }
        let child = python
            .command()
            .arg(python.workload(WORKLOAD))
            .args(["accuracy", "4"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", python.name());
        let truth: std::collections::HashMap<String, f64> = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_matches(|c| c == '{' || c == '}')
            .split(", ")
            .map(|kv| {
                let (k, v) = kv.split_once(": ").unwrap();
                (k.trim_matches('"').to_owned(), v.parse().unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1200));
        let folded = parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid]));
        let all = total(&folded);
        assert!(all >= 3000, "{}: {all} samples\n{}", python.name(), dump(&folded));
        for name in ["work_a", "work_b", "work_c"] {
            let sampled =
                matching(&folded, |s| s.contains(&format!(";{name} ("))) as f64 / all as f64;
            let expected = truth[name] / truth["process"];
            eprintln!(
                "{}: {name} sampled {:.1}%, measured {:.1}%",
                python.name(),
                100.0 * sampled,
                100.0 * expected
            );
            assert!(
                (sampled - expected).abs() < 0.03,
                "{}: {name} sampled {sampled:.3} vs self-measured {expected:.3}\n{}",
                python.name(),
                dump(&folded)
            );
        }
    }
}

/// The row of `cb` in a pstats-style top table, as (ncalls, filename:lineno(function)).
fn calls_row<'a>(top: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    top.lines().find(|l| l.ends_with(name)).map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields[0], fields[fields.len() - 1])
    })
}

#[test]
fn python_calls_through_map_are_counted_exactly() {
    if !require_bpf("python_calls_through_map_are_counted_exactly") {
        return;
    }
    use std::io::{BufRead as _, BufReader, Write as _};
    const N: u32 = 100_000;
    let dir = scratch("python_calls");
    // A budget this high never detaches: this test is about exact counts.
    let daemon = Daemon::start(&dir, &["--python-calls-budget", "100000000"]);
    let cb = format!("workload.py:{}(cb)", marked_line("cb"));
    for python in interpreters() {
        if !python.supported() {
            continue;
        }
        let mut child = python
            .command()
            .arg(python.workload(WORKLOAD))
            .args(["calls", &N.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        // The process is idle here and has never been sampled: enabling finds it anyway.
        let enabled = daemon.ctl_ok(&["calls", "enable", "--pid", &pid]);
        assert!(enabled.contains(&format!("counting the calls of process {pid} (CPython 3.")));
        writeln!(stdin, "go").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done");
        // Counts are read once a second.
        std::thread::sleep(Duration::from_millis(2500));
        let top = daemon.ctl_ok(&["query", "--pid", &pid, "--sort", "ncalls", "--since", "5m"]);
        let (ncalls, _) = calls_row(&top, &cb)
            .unwrap_or_else(|| panic!("{}: no row for {cb}:\n{top}", python.name()));
        assert_eq!(ncalls, N.to_string(), "{}:\n{top}", python.name());
        assert!(top.contains("* estimated CPU time: samples x"), "{top}");
        let disabled = daemon.ctl_ok(&["calls", "disable", "--pid", &pid]);
        assert!(disabled.contains("stopped counting"), "{disabled}");
        drop(stdin);
        assert!(child.wait().unwrap().success());
        eprintln!("{}: {ncalls} calls of cb counted", python.name());
    }
    // Clear refusals for what cannot be counted.
    let mut native = Command::new("sleep").arg("30").spawn().unwrap();
    let out = daemon.ctl(&["calls", "enable", "--pid", &native.id().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not a CPython process"), "{err}");
    native.kill().unwrap();
    native.wait().unwrap();
    let out = daemon.ctl(&["calls", "enable", "--pid", "999999999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process 999999999 is running"), "{err}");
}

/// The capabilities of the shipped systemd unit, without `CAP_SYS_ADMIN`.
const UNIT_CAPABILITIES: [&str; 5] = [
    "setpriv",
    "--bounding-set",
    "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search,+syslog",
    "--inh-caps",
    "-all",
];

#[test]
fn without_cap_sys_admin_the_call_probe_is_refused_once_with_the_way_out_and_stacks_still_come() {
    if !require_bpf(
        "without_cap_sys_admin_the_call_probe_is_refused_once_with_the_way_out_and_stacks_still_come",
    ) {
        return;
    }
    let dir = scratch("calls_without_sys_admin");
    let daemon =
        Daemon::start_through(&dir, &["--python-calls", "all"], &[], &UNIT_CAPABILITIES[..]);
    let python = interpreters().into_iter().find(Interpreter::supported).expect("a test CPython");
    let spawn =
        || python.command().arg(python.workload(WORKLOAD)).args(["hot", "4"]).spawn().unwrap();
    let mut children = [spawn(), spawn()];
    let pid = children[0].id().to_string();
    std::thread::sleep(Duration::from_secs(2));
    // Asked for by hand, the refusal says what to do.
    let out = daemon.ctl(&["calls", "enable", "--pid", &pid]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("creating one takes CAP_SYS_ADMIN"), "{err}");
    assert!(err.contains("AmbientCapabilities="), "{err}");
    for child in &mut children {
        assert!(child.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let log = daemon.log();
    let refusals = log.matches("Python calls are not counted").count();
    assert_eq!(refusals, 1, "one warning for two processes:\n{log}");
    assert!(log.contains("creating one takes CAP_SYS_ADMIN"), "{log}");
    // Sampling and the Python walk do not need it.
    let folded = daemon.folded_since_5m(&format!("pid={pid}"));
    assert!(folded.contains("hot_inner ("), "{}: {folded}", python.name());
}

#[test]
fn the_call_budget_detaches_a_busy_process_and_says_why() {
    if !require_bpf("the_call_budget_detaches_a_busy_process_and_says_why") {
        return;
    }
    let dir = scratch("python_call_budget");
    let daemon = Daemon::start(&dir, &["--python-calls", "all", "--python-calls-budget", "2000"]);
    let python = interpreters().remove(0);
    let mut child =
        python.command().arg(python.workload(WORKLOAD)).args(["callbacks", "4"]).spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(3000));
    let status = daemon.ctl_ok(&["status"]);
    assert!(child.wait().unwrap().success());
    let line = status.lines().find(|l| l.contains(&format!("pid {pid} "))).unwrap_or_default();
    assert!(
        line.contains("call counting stopped") && line.contains("over the budget of 2000/s"),
        "{}: {status}\n{}",
        python.name(),
        daemon.log()
    );
    // What was counted before the detach is kept.
    let top = daemon.ctl_ok(&["query", "--pid", &pid.to_string(), "--sort", "ncalls"]);
    let (ncalls, _) = calls_row(&top, "(sort_key)").expect("sort_key was counted");
    assert!(ncalls.parse::<u64>().is_ok_and(|n| n > 2000), "{top}");
}

/// A launcher linked against libpython is recognized as one, so that a sample taken while the
/// dynamic loader maps libpython does not mark the process as unsupported.
#[test]
fn shared_libpython_launchers_are_recognized() {
    let mut shared = 0;
    for it in interpreters().into_iter().filter(|it| it.root.is_none()) {
        let python = &it.exe;
        let Some(prefix) = python.parent().and_then(Path::parent) else { continue };
        let has_libpython = std::fs::read_dir(prefix.join("lib")).is_ok_and(|entries| {
            entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libpython3."))
        });
        let linked = Command::new("ldd")
            .arg(python)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libpython3."));
        assert_eq!(
            profiler_daemon::python::needs_libpython(python),
            has_libpython && linked,
            "{}",
            it.name()
        );
        shared += usize::from(linked);
    }
    eprintln!("{shared} shared-libpython launchers checked");
}

/// A program that made a subinterpreter has it at the head of the runtime's list of
/// interpreters; its threads (the main thread among them) belong to the main interpreter.
/// Each workload makes its subinterpreter before the daemon starts, so that the daemon finds
/// the process with the subinterpreter already in place.
#[test]
fn a_subinterpreter_does_not_hide_the_main_interpreters_threads() {
    use std::io::{BufRead as _, BufReader, Write as _};
    if !require_bpf("a_subinterpreter_does_not_hide_the_main_interpreters_threads") {
        return;
    }
    let dir = scratch("python_subinterpreter");
    let mut children = Vec::new();
    for python in one_per_version().into_iter().filter(|p| p.supported()) {
        let mut child = python
            .command()
            .arg(python.workload(WORKLOAD))
            .args(["subinterpreter", "2"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{}", python.name());
        children.push((python, child));
    }
    let daemon = Daemon::start(&dir, &["--frequency", "199"]);
    for (python, mut child) in children {
        let pid = child.id().to_string();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(child.wait().unwrap().success(), "{}", python.name());
        std::thread::sleep(Duration::from_millis(1200));
        let folded = parse_folded(
            &daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid, "--since", "5m"]),
        );
        let all = total(&folded);
        let hot = matching(&folded, |s| s.contains("hot_outer (") && s.contains("hot_inner ("));
        eprintln!("{}: {hot} of {all} samples in hot_outer -> hot_inner", python.name());
        assert!(
            all > 100 && hot * 10 > all * 8,
            "{}: the main thread's Python frames ({hot} of {all}):\n{}",
            python.name(),
            dump(&folded)
        );
    }
}

#[test]
fn samples_in_the_interpreters_own_code_copy_no_stack() {
    if !require_bpf("samples_in_the_interpreters_own_code_copy_no_stack") {
        return;
    }
    let dir = scratch("python_no_copy");
    let daemon = Daemon::start(&dir, &["--frequency", "999"]);
    // Debian's interpreter has no frame pointers, so its process is one whose stacks are
    // copied; a pure-Python loop spends nearly all its samples in the interpreter itself.
    let python = interpreters().into_iter().find(|p| p.supported()).expect("an interpreter");
    let before = samples_unwound(&daemon.ctl_ok(&["status"]));
    let mut child = python.command().arg(python.workload(WORKLOAD)).args(["hot", "2"]).spawn();
    let child = child.as_mut().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success(), "{}", python.name());
    std::thread::sleep(Duration::from_millis(1200));
    // Host-wide, but the daemon does not copy its own stacks, and nothing else here is busy.
    let status = daemon.ctl_ok(&["status"]);
    let unwound = samples_unwound(&status) - before;
    let folded = parse_folded(
        &daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid, "--since", "5m"]),
    );
    let samples = total(&folded);
    assert!(samples > 1000, "{}: {samples} samples\n{}", python.name(), dump(&folded));
    // Without the interpreter's range every one of its samples was copied and unwound.
    assert!(
        unwound * 4 < samples,
        "{}: {unwound} samples unwound host-wide for the process's {samples}\n{status}",
        python.name()
    );
    // Its Python stacks are whole all the same.
    let hot = matching(&folded, |s| s.contains("hot_outer ("));
    assert!(
        hot * 2 > samples,
        "{}: {hot} of {samples} in hot_outer\n{}",
        python.name(),
        dump(&folded)
    );
}
