//! Exporting to fleet engines: every stored window reaches an OTLP profiles receiver built from
//! the official schemas (`tests/data/otlp_receiver.py`: grpcio and the opentelemetry-proto
//! package's generated classes), once and in order, through outages and restarts, and says
//! the same as `profctl query` about the same window.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// The test receiver, a child process.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    /// Starts the receiver on `port` (0: any free port), writing to `dir/name.jsonl`; `extra`
    /// may ask for HTTP (`--http`), failures or a header.
    fn start(dir: &Path, name: &str, port: u16, extra: &[&str]) -> Receiver {
        let python =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/pyproto-venv/bin/python");
        assert!(python.exists(), "run .ci/setup-tests first: {} is missing", python.display());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/otlp_receiver.py");
        let out = dir.join(format!("{name}.jsonl"));
        let mut child = Command::new(python)
            .arg(script)
            .args(["--out", out.to_str().unwrap(), "--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Receiver { child, port, out }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every profile received so far.
    fn profiles(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on (for the length of the test, most likely).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The CPU profiles of process `pid` among `profiles`.
fn cpu_profiles_of(profiles: &[Value], pid: u32) -> Vec<&Value> {
    profiles
        .iter()
        .filter(|p| p["type"] == "samples" && p["resource"]["process.pid"] == pid)
        .collect()
}

/// RFC 3339 text of `ns` since the epoch, for profctl's --from and --to.
fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Waits until `done` holds of the profiles received, up to `limit`.
fn wait_for(receiver: &Receiver, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let profiles = receiver.profiles();
        if done(&profiles) || Instant::now() > deadline {
            return profiles;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The summed samples of each stack of `profile`.
fn stacks(profile: &Value) -> BTreeMap<String, u64> {
    profile["stacks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(s, v)| (s.clone(), v.as_u64().unwrap()))
        .collect()
}

/// Checks that each of `profiles` (one window each) holds the stacks and counts that profctl
/// shows for `selector` in its window, as `stacks_of` reads them; returns their sum.
fn assert_windows_match_profctl(
    daemon: &Daemon,
    profiles: &[&Value],
    selector: &str,
    stacks_of: impl Fn(&Value) -> BTreeMap<String, u64>,
) -> u64 {
    let mut total = 0;
    for profile in profiles {
        let start = profile["start"].as_u64().unwrap();
        let end = start + profile["duration"].as_u64().unwrap();
        let folded = daemon.ctl_ok(&[
            "query",
            "--format",
            "folded",
            "-s",
            selector,
            "--from",
            &rfc3339(start),
            "--to",
            &rfc3339(end),
        ]);
        let expected: BTreeMap<String, u64> = parse_folded(&folded).into_iter().collect();
        assert_eq!(stacks_of(profile), expected, "the window at {}", rfc3339(start));
        total += expected.values().sum::<u64>();
    }
    total
}

#[test]
fn each_window_reaches_an_otlp_receiver_as_profctl_shows_it() {
    if !require_bpf("each_window_reaches_an_otlp_receiver_as_profctl_shows_it") {
        return;
    }
    let dir = scratch("otlp_export");
    let program = build_c("native", &dir);
    let receiver = Receiver::start(&dir, "received", 0, &[]);
    let daemon = Daemon::start(
        &dir,
        &["--frequency", "199", "--window", "2s", "--export-otlp", &receiver.url()],
    );
    let mut child = Command::new(&program).args(["cpu", "3"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let exited_ns = profiler_daemon::clock::now_ns() as u64;
    // The window the program ended in is sent once it is closed and stored.
    let profiles = wait_for(&receiver, Duration::from_secs(60), |p| {
        p.iter().any(|p| p["start"].as_u64().unwrap() + p["duration"].as_u64().unwrap() > exited_ns)
    });
    let ours = cpu_profiles_of(&profiles, pid);
    assert!(ours.len() >= 2, "a 3 s program spans two 2 s windows or more: {}", ours.len());

    // Each window's stacks are the ones profctl shows for that window.
    let total = assert_windows_match_profctl(&daemon, &ours, &format!("pid={pid}"), stacks);
    for profile in &ours {
        assert_eq!(profile["unit"], "count");
        assert_eq!(profile["period"], 1_000_000_000 / 199);
    }
    assert!(total > 300, "about 600 samples in 3 s at 199 Hz, got {total}");
    let named: u64 = ours
        .iter()
        .flat_map(|p| stacks(p).into_iter())
        .filter(|(s, _)| s.contains("main;run;fn_"))
        .map(|(_, c)| c)
        .sum();
    assert!(named * 10 > total * 8, "{named} of {total} samples under main;run;fn_*");

    // The process is described with OpenTelemetry's semantic conventions.
    let resource = &ours[0]["resource"];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(resource["host.name"], host.trim());
    assert_eq!(resource["process.executable.name"], "native");
    assert_eq!(resource["process.executable.path"], program.to_str().unwrap());
    assert_eq!(ours[0]["scope"], "profilerd");

    // Once, in order: no window of the process twice, and windows arrive oldest first.
    let starts: Vec<u64> = ours.iter().map(|p| p["start"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    let ids: Vec<&str> = profiles.iter().map(|p| p["profile_id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a profile was sent twice");

    let status = daemon.ctl_ok(&["status"]);
    let line = status.lines().find(|l| l.starts_with("export:")).expect("an export line");
    assert!(line.contains(&format!("otlp {}", receiver.url())), "{line}");
    assert!(line.contains("0 failed attempts"), "{line}");

    // After a restart the exporter goes on after the last window it delivered.
    assert!(daemon.stop());
    let restarted_ns = profiler_daemon::clock::now_ns() as u64;
    let _daemon = Daemon::start(
        &dir,
        &["--frequency", "199", "--window", "2s", "--export-otlp", &receiver.url()],
    );
    let profiles = wait_for(&receiver, Duration::from_secs(60), |p| {
        p.iter().any(|p| p["start"].as_u64().unwrap() > restarted_ns)
    });
    let ids: Vec<&str> = profiles.iter().map(|p| p["profile_id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a profile was sent again after the restart");
    assert!(profiles.iter().any(|p| p["start"].as_u64().unwrap() > restarted_ns));
}

#[test]
fn windows_wait_in_the_store_through_an_outage_and_a_restart_and_arrive_once_in_order() {
    if !require_bpf(
        "windows_wait_in_the_store_through_an_outage_and_a_restart_and_arrive_once_in_order",
    ) {
        return;
    }
    let dir = scratch("otlp_outage");
    let program = build_c("native", &dir);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = ["--frequency", "199", "--window", "2s", "--export-otlp", &url];
    // The receiver is down for two minutes: the first daemon profiles a program and stops,
    // a second one profiles another.
    let outage = Instant::now();
    let daemon = Daemon::start(&dir, &args);
    let run = |seconds: &str| {
        let mut child = Command::new(&program).args(["cpu", seconds]).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        pid
    };
    let first = run("2");
    std::thread::sleep(Duration::from_secs(3));
    let status = daemon.ctl_ok(&["status"]);
    let line = status.lines().find(|l| l.starts_with("export:")).expect("an export line");
    assert!(line.contains("is unreachable"), "the failure is named: {line}");
    assert!(daemon.stop(), "the daemon stops cleanly during the outage");
    // A restarted daemon, with the receiver still down.
    let daemon = Daemon::start(&dir, &args);
    let second = run("2");
    std::thread::sleep(Duration::from_secs(120).saturating_sub(outage.elapsed()));
    let exported_until = profiler_daemon::clock::now_ns() as u64;
    // The receiver comes up; the exporter's backoff is at most a minute by now.
    let receiver = Receiver::start(&dir, "received", port, &[]);
    let profiles = wait_for(&receiver, Duration::from_secs(150), |p| {
        p.iter().any(|p| p["start"].as_u64().unwrap() > exported_until)
    });

    for pid in [first, second] {
        let ours = cpu_profiles_of(&profiles, pid);
        let received: u64 = ours.iter().flat_map(|p| stacks(p).into_values()).sum();
        let folded = daemon.folded_since_5m(&format!("pid={pid}"));
        let stored: u64 = parse_folded(&folded).iter().map(|(_, c)| c).sum();
        // About 400 in 2 s at 199 Hz; fewer while other tests keep the CPUs busy.
        assert!(stored > 50, "pid {pid}: {stored} samples stored");
        assert_eq!(received, stored, "pid {pid}: every stored sample arrived, once");
    }
    let starts: Vec<u64> = profiles.iter().map(|p| p["start"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "oldest window first: {starts:?}");
    let mut seen = HashSet::new();
    for p in &profiles {
        assert!(seen.insert(p["profile_id"].as_str().unwrap()), "sent twice: {p}");
    }
}

#[test]
fn a_receiver_that_refuses_the_credentials_is_named_and_retried() {
    if !require_bpf("a_receiver_that_refuses_the_credentials_is_named_and_retried") {
        return;
    }
    let dir = scratch("otlp_credentials");
    let receiver =
        Receiver::start(&dir, "received", 0, &["--require-header", "authorization=Bearer right"]);
    let headers = dir.join("headers");
    std::fs::write(&headers, "# the token\nauthorization=Bearer wrong\n").unwrap();
    let url = receiver.url();
    let args = [
        "--window",
        "1s",
        "--export-otlp",
        &url,
        "--export-headers-file",
        headers.to_str().unwrap(),
    ];
    let daemon = Daemon::start(&dir, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let status = daemon.ctl_ok(&["status"]);
        let line = status.lines().find(|l| l.starts_with("export:")).unwrap().to_owned();
        if line.contains("refused the credentials") || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(line.contains("refused the credentials"), "{line}");
    assert!(line.contains("(0 requests, 0.0 KiB)"), "{line}");
    assert!(receiver.profiles().is_empty());
    // The daemon goes on profiling and answering.
    assert!(daemon.ctl(&["query", "--since", "5s"]).status.success());

    // With the right token, the windows that waited arrive.
    std::fs::write(&headers, "authorization=Bearer right\n").unwrap();
    drop(daemon);
    let daemon = Daemon::start(&dir, &args);
    let profiles = wait_for(&receiver, Duration::from_secs(60), |p| !p.is_empty());
    assert!(!profiles.is_empty(), "nothing arrived:\n{}", daemon.log());
}

#[test]
fn otlp_over_http_and_pyroscope_receive_each_window_as_profctl_shows_it() {
    if !require_bpf("otlp_over_http_and_pyroscope_receive_each_window_as_profctl_shows_it") {
        return;
    }
    let dir = scratch("http_export");
    let program = build_c("native", &dir);
    let otlp = Receiver::start(&dir, "otlp", 0, &["--http"]);
    let pyroscope = Receiver::start(
        &dir,
        "pyroscope",
        0,
        &["--http", "--require-header", "X-Scope-OrgID=team-a"],
    );
    let headers = dir.join("headers");
    std::fs::write(&headers, "x-scope-orgid=team-a\n").unwrap();
    let daemon = Daemon::start(
        &dir,
        &[
            "--frequency",
            "199",
            "--window",
            "2s",
            "--export-otlp",
            &otlp.url(),
            "--export-otlp-protocol",
            "http/protobuf",
            "--export-pyroscope",
            &pyroscope.url(),
            "--export-headers-file",
            headers.to_str().unwrap(),
        ],
    );
    let mut child = Command::new(&program).args(["cpu", "3"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let exited_ns = profiler_daemon::clock::now_ns() as u64;
    let past_exit = |p: &[Value]| {
        p.iter().any(|p| p["start"].as_u64().unwrap() + p["duration"].as_u64().unwrap() > exited_ns)
    };
    let otlp_profiles = wait_for(&otlp, Duration::from_secs(60), past_exit);
    let pyroscope_profiles = wait_for(&pyroscope, Duration::from_secs(60), past_exit);

    let ours = cpu_profiles_of(&otlp_profiles, pid);
    let total = assert_windows_match_profctl(&daemon, &ours, &format!("pid={pid}"), stacks);
    assert!(total > 300, "OTLP over HTTP: about 600 samples, got {total}");

    // Pyroscope: the program's CPU series, named after it, with its host; the first value of
    // each pprof sample is its count.
    let series: Vec<&Value> = pyroscope_profiles
        .iter()
        .filter(|p| {
            p["labels"]["service_name"] == "native" && p["labels"]["__name__"] == "process_cpu"
        })
        .collect();
    assert!(!series.is_empty(), "no CPU series of the program: {pyroscope_profiles:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(series[0]["labels"]["hostname"], host.trim());
    assert_eq!(series[0]["types"][0], serde_json::json!(["cpu-samples", "count"]));
    let counts = |p: &Value| {
        p["stacks"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(s, v)| (s.clone(), v[0].as_u64().unwrap()))
            .collect()
    };
    // Other tests' programs are called native too: this one's series is its executable's.
    let series: Vec<&Value> =
        series.into_iter().filter(|p| p["labels"]["exe"] == program.to_str().unwrap()).collect();
    let selector = format!("exe={}", program.display());
    let total = assert_windows_match_profctl(&daemon, &series, &selector, counts);
    assert!(total > 300, "Pyroscope: about 600 samples, got {total}");
    let status = daemon.ctl_ok(&["status"]);
    for name in [format!("otlp/http {}", otlp.url()), format!("pyroscope {}", pyroscope.url())] {
        let line = status.lines().find(|l| l.contains(&name)).expect("an export line");
        assert!(line.contains("0 failed attempts"), "{line}");
    }
}

#[test]
fn daemons_of_several_hosts_feed_one_receiver_each_with_its_own_host() {
    if !require_bpf("daemons_of_several_hosts_feed_one_receiver_each_with_its_own_host") {
        return;
    }
    let dir = scratch("otlp_fleet");
    let program = build_c("native", &dir);
    let receiver = Receiver::start(&dir, "received", 0, &[]);
    let url = receiver.url();
    let args = ["--frequency", "99", "--window", "2s", "--export-otlp", &url];
    // Each daemon in its own UTS namespace, under its own host name (the network is shared:
    // the receiver listens on loopback).
    let daemons: Vec<Daemon> = ["node-a", "node-b"]
        .iter()
        .map(|host| {
            let dir = dir.join(host);
            std::fs::create_dir_all(&dir).unwrap();
            let script = format!("hostname {host} && exec \"$0\" \"$@\"");
            Daemon::start_through(&dir, &args, &[], &["unshare", "--uts", "sh", "-c", &script])
        })
        .collect();
    let mut child = Command::new(&program).args(["cpu", "2"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let exited_ns = profiler_daemon::clock::now_ns() as u64;
    let hosts_past_exit = |p: &[Value]| {
        let hosts: HashSet<&str> = p
            .iter()
            .filter(|p| p["start"].as_u64().unwrap() + p["duration"].as_u64().unwrap() > exited_ns)
            .map(|p| p["resource"]["host.name"].as_str().unwrap())
            .collect();
        hosts.len() == 2
    };
    let profiles = wait_for(&receiver, Duration::from_secs(60), hosts_past_exit);
    // Both sampled the program (they share the kernel); each says which host it is.
    for (host, daemon) in ["node-a", "node-b"].iter().zip(&daemons) {
        let theirs: Vec<&Value> = cpu_profiles_of(&profiles, pid)
            .into_iter()
            .filter(|p| p["resource"]["host.name"] == *host)
            .collect();
        let total = assert_windows_match_profctl(daemon, &theirs, &format!("pid={pid}"), stacks);
        // About 200 samples in 2 s at 99 Hz on an idle machine; fewer while other tests run.
        assert!(total > 40, "{host}: {total} samples");
    }
}

#[test]
fn a_receiver_that_requires_mutual_tls_gets_the_windows_once_the_client_certificate_is_set() {
    if !require_bpf(
        "a_receiver_that_requires_mutual_tls_gets_the_windows_once_the_client_certificate_is_set",
    ) {
        return;
    }
    let dir = scratch("otlp_mtls");
    let pki = support::pki::Pki::new("otlp_mtls");
    let file = |name: &str| pki.path(name).to_str().unwrap().to_owned();
    let receiver = Receiver::start(
        &dir,
        "received",
        0,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
            "--tls-client-ca",
            &file("ca.pem"),
        ],
    );
    let url = format!("https://localhost:{}", receiver.port);
    let ca = file("ca.pem");
    let base = ["--window", "1s", "--export-otlp", &url, "--export-ca-file", &ca];
    // Without a client certificate the receiver refuses the connection: retried, and named.
    let daemon = Daemon::start(&dir, &base);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let status = daemon.ctl_ok(&["status"]);
        let line = status.lines().find(|l| l.starts_with("export:")).unwrap().to_owned();
        if !line.contains(" 0 failed attempts") || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(line.contains("(0 requests, 0.0 KiB)") && line.contains("last: "), "{line}");
    assert!(receiver.profiles().is_empty());
    drop(daemon);
    // With the client certificate, what waited in the store arrives.
    let (cert, key) = (file("client.pem"), file("client.key"));
    let mutual =
        [&base[..], &["--export-client-cert", &cert, "--export-client-key", &key]].concat();
    let daemon = Daemon::start(&dir, &mutual);
    let profiles = wait_for(&receiver, Duration::from_secs(60), |p| !p.is_empty());
    assert!(!profiles.is_empty(), "nothing arrived:\n{}", daemon.log());
    // A client certificate without the CA to check the receiver with is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--export-otlp", &url, "--export-client-cert", &cert, "--export-client-key", &key])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--export-client-cert needs --export-ca-file"), "{stderr}");
}

#[test]
fn windows_a_receiver_refuses_as_invalid_are_skipped_and_counted() {
    if !require_bpf("windows_a_receiver_refuses_as_invalid_are_skipped_and_counted") {
        return;
    }
    let dir = scratch("otlp_refused");
    let receiver = Receiver::start(&dir, "received", 0, &["--fail", "INVALID_ARGUMENT"]);
    let daemon = Daemon::start(&dir, &["--window", "1s", "--export-otlp", &receiver.url()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Windows that closed together (the first ones, on a loaded machine) are refused together,
    // so the count can pass 3 between two readings.
    let refused = |line: &str| -> u64 {
        let after = line.split("refused: ").nth(1).unwrap_or_default();
        after.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let line = loop {
        let status = daemon.ctl_ok(&["status"]);
        let line = status.lines().find(|l| l.starts_with("export:")).unwrap().to_owned();
        if refused(&line) >= 3 || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each refused window is given up on at once (not retried), named, and the next one sent.
    assert!(refused(&line) >= 3, "{line}");
    assert!(line.contains("refused the profiles as invalid"), "{line}");
    assert!(daemon.ctl(&["query", "--since", "5s"]).status.success());
}

#[test]
fn a_bad_export_endpoint_stops_the_daemon_at_start_with_the_reason() {
    let dir = scratch("otlp_bad_endpoint");
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--data-dir", dir.to_str().unwrap(), "--export-otlp", "collector:4317"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "invalid export endpoint \"collector:4317\": expected http://HOST:PORT or https://HOST:PORT"
        ),
        "{stderr}"
    );
}
