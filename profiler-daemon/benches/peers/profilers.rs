//! The profilers under test: profilerd (system-wide, started once per round and setting),
//! py-spy and perf (attached to one process each).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use profiler_daemon::{
    export::{folded, view::ProfileView},
    selector::Selector,
};
use profiler_proto::v1;

use crate::{
    measure::{self, BpfCost},
    watchdog,
};

/// The kernel programs of profilerd, as the kernel names them (15 characters at most:
/// `off_cpu_switch_raw` is `off_cpu_switch_`). The sampling program comes first.
pub const PROGRAMS: [&str; 5] =
    ["sample_cpu", "python_call", "off_cpu_switch", "off_cpu_switch_", "sample_fault"];

/// How long a call to the daemon may take before the harness gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A profilerd started by the harness; killed when dropped unless [`Profilerd::stop`]ped.
pub struct Profilerd {
    child: Child,
    endpoint: String,
    loaded: SystemTime,
    runtime: tokio::runtime::Runtime,
}

/// How much a profiler has used so far: its process CPU and its BPF programs' run time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// CPU of the profiler's processes.
    pub cpu_ns: u64,
    /// Run time of its BPF programs.
    pub bpf: BpfCost,
}

impl Usage {
    /// The usage since `earlier`.
    pub fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            bpf: self.bpf.since(earlier.bpf),
        }
    }

    /// Process CPU plus BPF run time.
    pub fn total(self) -> Duration {
        Duration::from_nanos(self.cpu_ns + self.bpf.run_ns)
    }
}

impl Profilerd {
    /// Starts profilerd at `hz` (with the call probe on every Python process if `calls`), with
    /// its socket and store in `dir` and its other options at their defaults (10 s windows,
    /// written to the store), and waits until it answers.
    pub fn start(dir: &Path, hz: u32, calls: bool) -> Result<Profilerd, String> {
        Profilerd::start_with(dir, hz, calls, &[])
    }

    /// Like [`Profilerd::start`], with `extra` options.
    pub fn start_with(
        dir: &Path,
        hz: u32,
        calls: bool,
        extra: &[&str],
    ) -> Result<Profilerd, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("profiler.sock");
        let endpoint = format!("unix://{}", socket.display());
        let loaded = SystemTime::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_profilerd"));
        let child = watchdog::dies_with_harness(&mut command)
            .args(["--listen", &endpoint, "--metrics-listen", "off"])
            .args(["--frequency", &hz.to_string(), "--bpf-stats"])
            .args(["--python-calls", if calls { "all" } else { "off" }])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("profilerd.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting profilerd: {e}"))?;
        // One worker keeps the client's connections answering between calls, so that they
        // close when the daemon stops instead of holding up its shutdown.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut daemon = Profilerd { child, endpoint, loaded, runtime };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.status().is_none() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("profilerd.log")).unwrap_or_default();
                return Err(format!("profilerd exited ({status}):\n{log}"));
            }
            if Instant::now() > deadline {
                return Err("profilerd did not become ready in 30 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the daemon is past its start-up (symbolizing the kernel and what already
    /// runs): its CPU over the last quarter second is under 2% of a core, or `max` has passed.
    /// Returns how long that took.
    pub fn settle(&self, max: Duration) -> Duration {
        const STEP: Duration = Duration::from_millis(250);
        let started = Instant::now();
        let mut before = measure::cpu_ns(self.pid());
        loop {
            std::thread::sleep(STEP);
            let now = measure::cpu_ns(self.pid());
            let busy =
                measure::core_percent(Duration::from_nanos(now.saturating_sub(before)), STEP);
            before = now;
            if busy < 2.0 || started.elapsed() >= max {
                return started.elapsed();
            }
        }
    }

    /// What the daemon has used since it started.
    pub fn usage(&self) -> Usage {
        Usage {
            cpu_ns: measure::cpu_ns(self.pid()),
            bpf: measure::bpf_cost(&PROGRAMS, self.loaded),
        }
    }

    /// The run time and runs of the programs named `names` alone.
    pub fn program_cost(&self, names: &[&str]) -> BpfCost {
        measure::bpf_cost(names, self.loaded)
    }

    /// The run time and runs of the sampling program alone.
    pub fn sampling_cost(&self) -> BpfCost {
        measure::bpf_cost(&PROGRAMS[..1], self.loaded)
    }

    /// The daemon's `Status`, or `None` if it does not answer within [`CALL_TIMEOUT`].
    pub fn status(&self) -> Option<v1::StatusResponse> {
        self.runtime.block_on(async {
            let call = async {
                let mut client = profiler_daemon::client::connect(&self.endpoint).await.ok()?;
                Some(client.status(v1::StatusRequest {}).await.ok()?.into_inner())
            };
            tokio::time::timeout(CALL_TIMEOUT, call).await.ok().flatten()
        })
    }

    /// Folded stacks of process `pid` over the last `seconds`.
    pub fn folded(&self, pid: u32, seconds: u64) -> Result<String, String> {
        let call = async {
            let mut client = profiler_daemon::client::connect(&self.endpoint)
                .await
                .map_err(|e| e.to_string())?;
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            let end = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
            let selector: Selector = format!("pid={pid}").parse().map_err(|e| format!("{e}"))?;
            let request = v1::QueryRequest {
                range: Some(v1::TimeRange {
                    start_unix_nanos: end - i64::try_from(seconds).unwrap_or(0) * 1_000_000_000,
                    end_unix_nanos: end,
                }),
                filter: Some(selector.to_proto()),
                ..v1::QueryRequest::default()
            };
            let response = client.query(request).await.map_err(|e| e.message().to_owned())?;
            let profile = response.into_inner().profile.ok_or("no profile")?;
            let view = ProfileView::new(&profile).map_err(|e| e.to_string())?;
            Ok(folded::render(&view))
        };
        self.runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| format!("profilerd did not answer a query in {CALL_TIMEOUT:?}"))?
        })
    }

    /// Stops the daemon (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        if !exits_within(&mut self.child, Duration::from_secs(20)) {
            kill_if_running(&mut self.child);
        }
    }
}

impl Drop for Profilerd {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// A per-process profiler attached to one process (py-spy or perf); killed when dropped.
pub struct Attached {
    child: Child,
    /// Where it writes its profile.
    pub output: PathBuf,
}

impl Attached {
    /// `py-spy record` at 100 Hz on `pid` with `flag` (if any), raw (folded) output; waits until
    /// it samples.
    pub fn py_spy(
        py_spy: &Path,
        pid: u32,
        flag: Option<&str>,
        output: PathBuf,
    ) -> Result<Attached, String> {
        let mut command = Command::new(py_spy);
        command
            .args(["record", "--rate", "100", "--format", "raw", "--pid", &pid.to_string()])
            .arg("--output")
            .arg(&output);
        command.args(flag);
        let mut child = watchdog::dies_with_harness(&mut command)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting py-spy: {e}"))?;
        // py-spy says "Sampling process ..." on standard output once it is attached.
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let _ = child.wait();
                return Err("py-spy exited before sampling".to_owned());
            }
            if line.contains("Sampling process") {
                break;
            }
        }
        // Keep draining its progress output so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(Attached { child, output })
    }

    /// `perf record -F 99 -g` on `pid`.
    pub fn perf(perf: &Path, pid: u32, output: PathBuf) -> Result<Attached, String> {
        let mut command = Command::new(perf);
        let child = watchdog::dies_with_harness(&mut command)
            .args(["record", "-F", "99", "-g", "-q", "-p", &pid.to_string(), "-o"])
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting perf: {e}"))?;
        // perf has no "attached" message; its set-up takes a few milliseconds.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Attached { child, output })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU used so far.
    pub fn usage(&self) -> Usage {
        Usage { cpu_ns: measure::cpu_ns(self.pid()), bpf: BpfCost::default() }
    }

    /// Peak RSS so far.
    pub fn peak_rss(&self) -> u64 {
        measure::peak_rss(self.pid())
    }

    /// Stops it now (SIGINT, then SIGKILL after `timeout`), while its target still runs: a
    /// tracer that is not stopped first can keep a killed target from being reaped.
    pub fn stop(mut self, timeout: Duration) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        if !exits_within(&mut self.child, timeout) {
            kill_if_running(&mut self.child);
        }
    }

    /// Waits for it to finish (it stops when its target exits): SIGINT after `timeout`, and
    /// SIGKILL if it is still there `timeout` after that.
    pub fn finish(mut self, timeout: Duration) -> PathBuf {
        if !exits_within(&mut self.child, timeout) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
            if !exits_within(&mut self.child, timeout) {
                kill_if_running(&mut self.child);
            }
        }
        std::mem::take(&mut self.output)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// Whether `child` exits within `timeout`.
fn exits_within(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SIGKILL for `child` unless it has exited, and reaps it.
fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
