//! Root integration tests: a stripped program named from its separate debug file, found in a
//! build-id directory or downloaded from a debuginfod server (elfutils' own, on loopback).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use support::{Daemon, build_c, parse_folded, require_bpf, samples_with, scratch};

/// Builds the native workload, then splits it as distributions do: `native` stripped of its
/// symbol table (its functions are not exported, so nothing of it has a name any more) and
/// `native.debug` with everything else. Returns both and the build-id.
fn stripped_native(dir: &Path) -> (PathBuf, PathBuf, String) {
    let program = build_c("native", dir);
    let debug = dir.join("native.debug");
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("objcopy").arg("--only-keep-debug").arg(&program).arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(&program));
    let out = Command::new("readelf").arg("-n").arg(&program).output().unwrap();
    let notes = String::from_utf8_lossy(&out.stdout);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("cc links a build-id")
        .to_owned();
    (program, debug, build_id)
}

/// Places `debug` in `root` as `.build-id/NN/REST.debug`.
fn install_by_build_id(root: &Path, debug: &Path, build_id: &str) {
    let dir = root.join(".build-id").join(&build_id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(debug, dir.join(format!("{}.debug", &build_id[2..]))).unwrap();
}

/// Runs the workload's cpu mode for `seconds` and returns the samples of its process.
fn profile(daemon: &Daemon, program: &Path, seconds: &str) -> Vec<(String, u64)> {
    let mut child = Command::new(program).args(["cpu", seconds]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    parse_folded(&daemon.ctl_ok(&["query", "--format", "folded", "--pid", &pid, "--since", "5m"]))
}

/// Asserts that most samples are named `main;run;fn_a|fn_b`.
fn assert_named(folded: &[(String, u64)], daemon: &Daemon) {
    let total: u64 = folded.iter().map(|(_, c)| c).sum();
    let named = samples_with(folded, "main;run;fn_a") + samples_with(folded, "main;run;fn_b");
    let dump: String = folded.iter().take(20).map(|(s, c)| format!("{s} {c}\n")).collect();
    assert!(total > 100, "too few samples: {total}\n{dump}");
    assert!(
        named * 10 > total * 8,
        "{named} of {total} samples named main;run;fn_a|fn_b:\n{dump}\n{}",
        daemon.log()
    );
}

#[test]
fn a_stripped_program_is_named_from_its_debug_file_in_a_build_id_directory() {
    if !require_bpf("a_stripped_program_is_named_from_its_debug_file_in_a_build_id_directory") {
        return;
    }
    let dir = scratch("debuginfo_build_id_dir");
    let (program, debug, build_id) = stripped_native(&dir);
    let debug_dir = dir.join("debug");
    install_by_build_id(&debug_dir, &debug, &build_id);
    let daemon =
        Daemon::start(&dir, &["--frequency", "199", "--debug-dirs", debug_dir.to_str().unwrap()]);
    assert_named(&profile(&daemon, &program, "2"), &daemon);
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("debug files: 1 binaries named from them"), "{status}");
    assert!(daemon.stop());
}

/// elfutils' debuginfod serving the files under `root` on a free loopback port, once it has
/// indexed `build_id`.
struct Debuginfod {
    child: Child,
    port: u16,
}

impl Debuginfod {
    fn start(root: &Path, db: &Path, build_id: &str) -> Debuginfod {
        let port = free_port();
        let child = Command::new("debuginfod")
            .args(["-F", "-p", &port.to_string(), "-d"])
            .arg(db)
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running debuginfod (.ci/setup-tests installs it)");
        let mut server = Debuginfod { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.status_of(build_id) != Some(200) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("debuginfod exited: {status}");
            }
            assert!(Instant::now() < deadline, "debuginfod never served {build_id}");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// The HTTP status of the debug file of `build_id`.
    fn status_of(&self, build_id: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        // debuginfod answers GET only.
        let request = format!("GET /buildid/{build_id}/debuginfo HTTP/1.0\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Debuginfod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (until someone binds it again).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_debuginfod_server_serves_the_names_and_a_dead_one_costs_a_counted_failure() {
    if !require_bpf("a_debuginfod_server_serves_the_names_and_a_dead_one_costs_a_counted_failure") {
        return;
    }
    let dir = scratch("debuginfod");
    let (program, debug, build_id) = stripped_native(&dir);
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(&debug, served.join("native.debug")).unwrap();
    let server = Debuginfod::start(&served, &dir.join("debuginfod.sqlite"), &build_id);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let live = format!("http://127.0.0.1:{}", server.port);
    let urls = format!("{dead},{live}");
    // No local debug directory: the names can only come through the server.
    let daemon = Daemon::start(
        &dir,
        &["--frequency", "199", "--debug-dirs", "", "--debuginfod-urls", &urls],
    );
    // The first run asks for the file; it arrives while the program runs or soon after.
    let _ = profile(&daemon, &program, "1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = daemon.ctl_ok(&["status"]);
        if status.contains("debuginfod: 1 downloaded") {
            // The host's other stripped binaries (libc among them) were asked for too: the
            // dead server failed each request, the live one had none of them.
            let line = status.lines().find(|l| l.starts_with("debug files:")).unwrap();
            let failed = line
                .split(", ")
                .find_map(|part| part.split_once(" failed")?.0.parse::<u64>().ok())
                .unwrap_or(0);
            assert!(failed >= 1, "{status}");
            let refused =
                format!("(last: {dead}: unreachable: tcp connect error: Connection refused");
            assert!(line.contains(&refused), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no download:\n{status}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let cached =
        profiler_daemon::debuginfo::build_id_path(&dir.join("data").join("debuginfo"), &build_id);
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(&debug).unwrap());
    // A run after the download is named. (The binary switches to its debug file at its next
    // unnamed frame after the download, which may be in this run: the first may have ended.)
    assert_named(&profile(&daemon, &program, "2"), &daemon);
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("debug files: 1 binaries named from them"), "{status}");
    assert!(daemon.stop());
}
