//! The profiled programs: fixed work timed from inside (for wall-time overhead), and busy
//! loops (for kernel cost, daemon cost and accuracy).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use crate::watchdog;

/// A fixed-work workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// CPU-bound pure Python.
    Pure,
    /// Python called back from C (`sorted(key=)`, `map`).
    Callbacks,
    /// Four Python threads.
    Threads,
    /// Native C, no interpreter.
    Native,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] =
        [Workload::Pure, Workload::Callbacks, Workload::Threads, Workload::Native];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pure => "pure Python",
            Workload::Callbacks => "C callbacks",
            Workload::Threads => "4 threads",
            Workload::Native => "native C",
        }
    }

    /// Whether it runs Python (py-spy profiles only those).
    pub fn is_python(self) -> bool {
        self != Workload::Native
    }

    /// Units of work for about two seconds here (scaled down in smoke mode).
    fn units(self, scale: f64) -> u64 {
        let full = match self {
            Workload::Pure => 2500.0,
            Workload::Callbacks => 12000.0,
            Workload::Threads => 2500.0,
            Workload::Native => 450.0,
        };
        ((full * scale) as u64).max(4)
    }
}

/// Where the workload programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    /// The Python interpreter.
    pub python: PathBuf,
    /// `workload.py`.
    pub script: PathBuf,
    /// The compiled native workload.
    pub native: PathBuf,
    /// The accuracy workload of the integration tests (self-measured ground truth).
    pub accuracy_script: PathBuf,
}

impl Programs {
    /// Writes and compiles the workloads into `dir`.
    pub fn prepare(dir: &Path, python: PathBuf) -> Result<Programs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let script = dir.join("workload.py");
        std::fs::write(&script, include_str!("workload.py")).map_err(|e| e.to_string())?;
        let source = dir.join("native.c");
        std::fs::write(&source, include_str!("native.c")).map_err(|e| e.to_string())?;
        let native = dir.join("native");
        let status = Command::new("cc")
            .args(["-O2", "-fno-omit-frame-pointer", "-o"])
            .arg(&native)
            .arg(&source)
            .status()
            .map_err(|e| format!("running cc: {e}"))?;
        if !status.success() {
            return Err("compiling the native workload failed".to_owned());
        }
        let accuracy_script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/workload.py");
        Ok(Programs { python, script, native, accuracy_script })
    }

    /// Starts `workload` with its work scaled by `scale`; it waits for [`Running::go`].
    pub fn start(&self, workload: Workload, scale: f64) -> Result<Running, String> {
        let units = workload.units(scale).to_string();
        let mut command = match workload {
            Workload::Native => Command::new(&self.native),
            _ => {
                let mut c = Command::new(&self.python);
                let mode = match workload {
                    Workload::Pure => "pure",
                    Workload::Callbacks => "callbacks",
                    _ => "threads",
                };
                c.arg(&self.script).arg(mode);
                c
            }
        };
        let mut child = watchdog::dies_with_harness(&mut command)
            .arg(&units)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", workload.name()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("{}: expected \"ready\", got {line:?}", workload.name()));
        }
        Ok(Running { child, stdin, stdout })
    }

    /// `copies` Python processes at a stack `depth` frames deep, or native ones for depth 0, each
    /// busy for `seconds`.
    pub fn busy_at_depth(&self, depth: u32, copies: usize, seconds: f64) -> Vec<Child> {
        (0..copies)
            .filter_map(|_| {
                let mut c = if depth == 0 {
                    let mut c = Command::new(&self.native);
                    c.arg(format!("-{}", seconds.ceil() as u64));
                    c
                } else {
                    let mut c = Command::new(&self.python);
                    c.arg(&self.script).args(["depth", &depth.to_string(), &seconds.to_string()]);
                    c
                };
                watchdog::dies_with_harness(&mut c).stdout(Stdio::null()).spawn().ok()
            })
            .collect()
    }

    /// Two native processes on CPU 0 passing a byte back and forth over pipes for `seconds`,
    /// as many context switches as the CPU makes; the child prints the round trips at the end.
    pub fn ping_pong(&self, seconds: f64) -> Result<Child, String> {
        let mut c = Command::new(&self.native);
        watchdog::dies_with_harness(&mut c)
            .args(["pingpong", &seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the ping-pong workload: {e}"))
    }

    /// `count` busy pure-Python processes for `seconds`.
    pub fn busy(&self, count: usize, seconds: f64) -> Vec<Child> {
        (0..count)
            .filter_map(|_| {
                let mut c = Command::new(&self.python);
                watchdog::dies_with_harness(&mut c)
                    .arg(&self.script)
                    .args(["busy", &seconds.to_string()])
                    .stdout(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect()
    }

    /// The accuracy workload (functions in a 3:2:1 ratio that time themselves) for `seconds`.
    pub fn accuracy(&self, seconds: f64) -> Result<Child, String> {
        let mut c = Command::new(&self.python);
        watchdog::dies_with_harness(&mut c)
            .arg(&self.accuracy_script)
            .args(["accuracy", &seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the accuracy workload: {e}"))
    }
}

/// A started fixed-work workload.
pub struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the work.
    pub fn go(&mut self) -> Result<(), String> {
        writeln!(self.stdin, "go").map_err(|e| e.to_string())
    }

    /// Waits for the work to end; returns the time it took, measured by the workload. The
    /// process may still be exiting: see [`Running::reap`].
    pub fn elapsed(&mut self) -> Result<Duration, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let seconds: f64 = line.trim().parse().map_err(|_| format!("bad elapsed time {line:?}"))?;
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Waits for the process to exit.
    pub fn reap(mut self) -> Result<(), String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err(format!("the workload failed: {status}")) }
    }
}
