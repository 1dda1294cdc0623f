//! Bounds the run. Every step is logged with the time since the start. A run that outlives its
//! limit stops with the step it was in and the tail of the daemon's log. The processes the
//! harness starts die with it (`PR_SET_PDEATHSIG`), so a stopped run leaves nothing behind to
//! hold a CI job's output open.

use std::{
    fmt::Display,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

struct State {
    started: Instant,
    step: String,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Starts the clock, and stops the process with exit status 1 if it still runs after `limit`,
/// printing the last step and the end of the log at `daemon_log`.
pub fn arm(limit: Duration, daemon_log: PathBuf) {
    *lock() = Some(State { started: Instant::now(), step: "start".to_owned() });
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let step = lock().as_ref().map(|s| s.step.clone()).unwrap_or_default();
        eprintln!(
            "peers benchmark: still running after {} s, in step {step:?}; stopping",
            limit.as_secs()
        );
        if let Ok(log) = std::fs::read_to_string(&daemon_log) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("the end of {}:", daemon_log.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("  {line}");
            }
        }
        std::process::exit(1);
    });
}

/// Logs `step`, indented by `depth`, with the seconds since [`arm`].
pub fn step(depth: usize, step: impl Display) {
    let step = step.to_string();
    let mut state = lock();
    let seconds = state.as_ref().map_or(0.0, |s| s.started.elapsed().as_secs_f64());
    eprintln!("[{seconds:7.1} s] {:width$}{step}", "", width = depth * 2);
    if let Some(s) = state.as_mut() {
        s.step = step;
    }
}

/// Makes the process that `command` starts get SIGKILL when the harness exits.
pub fn dies_with_harness(command: &mut Command) -> &mut Command {
    let harness = std::process::id();
    // SAFETY: prctl(2) and getppid(2) are async-signal-safe, and nothing here allocates. The
    // signal is tied to the thread that forks; the harness starts its processes from the main
    // thread, which lives as long as the harness.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness exited before the signal was set up.
            if u32::try_from(libc::getppid()).ok() != Some(harness) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
