//! Shared helpers of the root integration tests: privilege checks, building workloads, and a
//! profilerd child process queried through the real profctl binary.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod pki;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Whether this machine lets us load BPF. Under `CI=true` a missing privilege is a failure,
/// because CI runs as root and a skip there would hide a bug.
pub fn require_bpf(test: &str) -> bool {
    if profiler_daemon::loader::has_bpf_privileges() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: CI=true but BPF is unavailable (needs root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE, and BTF)"
        );
    }
    eprintln!(
        "skipped {test}: needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE) and kernel BTF"
    );
    false
}

/// A scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `tests/workloads/NAME.c` with frame pointers into `dir`. `-O0` because gcc omits
/// the frame pointer of leaf functions at higher levels even when told not to.
pub fn build_c(name: &str, dir: &Path) -> PathBuf {
    build_c_with(name, dir, &["-O0", "-g", "-fno-omit-frame-pointer"])
}

/// Compiles `tests/workloads/NAME.c` with `flags` into `dir`.
pub fn build_c_with(name: &str, dir: &Path, flags: &[&str]) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads").join(format!("{name}.c"));
    let out = dir.join(name);
    let status =
        Command::new("cc").args(flags).arg(&src).arg("-o").arg(&out).status().expect("running cc");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// A running profilerd.
pub struct Daemon {
    child: Child,
    pub endpoint: String,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts profilerd with a socket in `dir` and waits until it answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(dir, extra, &[])
    }

    /// Starts profilerd with `env` added to its environment.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_through(dir, extra, env, &[])
    }

    /// Starts profilerd as the last argument of `through` (a command such as `unshare`), or
    /// directly when `through` is empty.
    pub fn start_through(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        through: &[&str],
    ) -> Daemon {
        let socket = dir.join("profiler.sock");
        let endpoint = format!("unix://{}", socket.display());
        let log = dir.join("profilerd.log");
        let data = dir.join("data");
        let data_args = ["--data-dir", data.to_str().unwrap()];
        let mut command = match through {
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_profilerd"));
                c
            }
            [] => Command::new(env!("CARGO_BIN_EXE_profilerd")),
        };
        let child = command
            .args(["--listen", &endpoint])
            .args(if extra.contains(&"--window") { &[][..] } else { &["--window", "1s"][..] })
            .args(if extra.contains(&"--data-dir") { &[][..] } else { &data_args[..] })
            // Daemons of parallel tests would all want the default metrics port.
            .args(if extra.contains(&"--metrics-listen") {
                &[][..]
            } else {
                &["--metrics-listen", "off"][..]
            })
            .args(extra)
            // Debian's shell profile can point this at a public server; tests set it themselves.
            .env_remove("DEBUGINFOD_URLS")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting profilerd");
        let mut daemon = Daemon { child, endpoint, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("profilerd exited early ({status}):\n{}", daemon.log());
            }
            if daemon.socket.exists() && daemon.ctl(&["status"]).status.success() {
                return daemon;
            }
            assert!(Instant::now() < deadline, "profilerd did not become ready:\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The folded stacks of the last five minutes of the samples `selector` keeps.
    pub fn folded_since_5m(&self, selector: &str) -> String {
        self.ctl_ok(&["query", "--format", "folded", "--since", "5m", "-s", selector])
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs profctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_profctl"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("running profctl")
    }

    /// Runs profctl and returns its standard output, failing the test on an error.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "profctl {args:?} failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the daemon with SIGTERM and returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses folded output into (stack, count) pairs.
pub fn parse_folded(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .map(|l| {
            let (stack, count) = l.rsplit_once(' ').expect("folded line ends with a count");
            (stack.to_owned(), count.parse().expect("count"))
        })
        .collect()
}

/// The samples unwound from a stack copy, host-wide, that `profctl status` counts on its
/// `unwinding:` line (0 without one).
pub fn samples_unwound(status: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with("unwinding:")).unwrap_or_default();
    line.split("; ")
        .find(|part| part.contains(" samples unwound"))
        .and_then(|part| part.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The bytes of stack copied per sample, from `profctl status`'s `unwinding:` line.
pub fn bytes_copied_per_sample(status: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with("unwinding:")).unwrap_or_default();
    line.split("; ")
        .find(|part| part.contains(" bytes copied per sample"))
        .and_then(|part| part.split(' ').next()?.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Samples whose stack contains `needle` as a whole frame sequence.
pub fn samples_with(folded: &[(String, u64)], needle: &str) -> u64 {
    folded
        .iter()
        .filter(|(s, _)| format!(";{s};").contains(&format!(";{needle};")))
        .map(|(_, c)| c)
        .sum()
}

/// The line of `tests/workloads/workload.py` marked `# LINE:name`.
pub fn marked_line(name: &str) -> i64 {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/workload.py"),
    )
    .unwrap();
    let marker = format!("# LINE:{name}");
    text.lines().position(|l| l.contains(&marker)).expect("marker in workload.py") as i64 + 1
}

/// The rows of a `lines` table: line number to the figure of its third column (seconds, or
/// MiB in the memory mode).
pub fn line_amounts(table: &str) -> HashMap<i64, f64> {
    table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Line"))
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let line = cols.next()?.parse().ok()?;
            let _hits = cols.next()?;
            let amount = cols.next()?.parse().ok()?;
            Some((line, amount))
        })
        .collect()
}
