//! What a user sees when something is wrong: an unreachable daemon, a bad flag, missing
//! privileges. Needs no privileges itself.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().expect("running the binary");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn profctl_names_an_unreachable_endpoint() {
    let (ok, stderr) = run(
        env!("CARGO_BIN_EXE_profctl"),
        &["--endpoint", "unix:///nonexistent/profiler.sock", "status"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach profilerd at unix:///nonexistent/profiler.sock"),
        "{stderr}"
    );
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_profctl"), &["--endpoint", "ftp://x", "status"]);
    assert!(!ok);
    assert!(stderr.contains("invalid endpoint \"ftp://x\""), "{stderr}");
}

#[test]
fn profctl_rejects_bad_selectors_and_conflicting_ranges() {
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_profctl"), &["query", "-s", "pod"]);
    assert!(!ok);
    assert!(stderr.contains("not of the form key=value"), "{stderr}");
    let (ok, stderr) = run(
        env!("CARGO_BIN_EXE_profctl"),
        &["query", "--since", "5m", "--from", "2026-01-01T00:00:00Z"],
    );
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn profilerd_rejects_a_bad_flag_with_its_name() {
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_profilerd"), &["--frequency", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--frequency"), "{stderr}");
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_profilerd"), &["--listen", "127.0.0.1:80"]);
    assert!(!ok);
    assert!(stderr.contains("expected unix:///PATH or tcp://ADDR:PORT"), "{stderr}");
    // --max-memory bounds everything the daemon holds: below what it holds whatever it
    // profiles, it refuses to start, before it needs any privilege.
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_profilerd"), &["--max-memory", "64MiB"]);
    assert!(!ok);
    assert!(
        stderr.contains("--max-memory 64MiB is too small: profilerd holds 88MiB whatever it profiles (sample ring buffer 16MiB, collector queue 32MiB, pipeline queues 8MiB, program 32MiB)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("give --max-memory 96MiB or more (or a smaller --ring-buffer-size)"),
        "{stderr}"
    );
    let (ok, stderr) =
        run(env!("CARGO_BIN_EXE_profilerd"), &["--debuginfod-urls", "debuginfod.internal:8002"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "invalid debuginfod server \"debuginfod.internal:8002\": expected http://HOST:PORT"
        ),
        "{stderr}"
    );
}

#[test]
fn profilerd_without_privileges_names_the_capabilities() {
    // Drop every capability and run as nobody, the way an unprivileged user would start it.
    let setpriv =
        ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    };
    let is_root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !is_root {
        let (ok, stderr) =
            run(env!("CARGO_BIN_EXE_profilerd"), &["--listen", "unix:///tmp/never.sock"]);
        assert!(!ok);
        assert!(stderr.contains("CAP_BPF"), "{stderr}");
        return;
    }
    let (ok, stderr) = run(
        setpriv,
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            env!("CARGO_BIN_EXE_profilerd"),
            "--listen",
            "unix:///tmp/never.sock",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "lacks the privileges to use BPF (missing CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("Run it as root"), "{stderr}");
}

/// A config file for one test, in the temporary directory.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("profilerd-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("writing a config file");
    path
}

/// The lines of a config that set something, comments and blank lines left out.
fn settings(toml: &str) -> Vec<&str> {
    toml.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).collect()
}

#[test]
fn profilerd_config_errors_name_the_key_and_line() {
    let bin = env!("CARGO_BIN_EXE_profilerd");
    let path = config_file("unknown-key", "frequency = 49\nfrecuency = 99\n");
    let (ok, stderr) = run(bin, &["--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}:2:1: unknown key `frecuency`", path.display())),
        "{stderr}"
    );
    let path = config_file("bad-value", "# store\nmax_disk = \"lots\"\n");
    let (ok, stderr) = run(bin, &["--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}:2:12: bad value for `max_disk`", path.display())),
        "{stderr}"
    );
    let (ok, stderr) = run(bin, &["--config", "/nonexistent/profilerd.toml"]);
    assert!(!ok);
    assert!(stderr.contains("cannot read config file /nonexistent/profilerd.toml"), "{stderr}");
}

#[test]
fn profilerd_print_config_round_trips() {
    let bin = env!("CARGO_BIN_EXE_profilerd");
    let print = |path: &std::path::Path, flags: &[&str]| {
        let out = Command::new(bin)
            .args(["--config", path.to_str().unwrap(), "--print-config"])
            .args(flags)
            .output()
            .expect("running profilerd");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let path = config_file("print", "window = \"1m\"\npython_calls = \"all\"\nrepair = true\n");
    let first = print(&path, &["--frequency", "49", "--metrics-listen", "off"]);
    assert!(first.contains("\nfrequency = 49\n"), "{first}");
    assert!(first.contains("# Set in the config file, line 1"), "{first}");
    let again = print(&config_file("print-again", &first), &[]);
    assert_eq!(settings(&again), settings(&first));
}
