//! Churn: short-lived processes started at up to [`GOAL_RATE`] a second for a minute, next to
//! the accuracy workload (Python functions in a 3:2:1 ratio that time themselves), under
//! profilerd at 99 Hz. Each short process spins for half a millisecond, so that some of them
//! are sampled and every one of those is new to the daemon: read from `/proc`, inspected, and
//! forgotten after the exited grace. The figures: the rate reached, whether the daemon kept
//! answering, what it lost, the steady process's shares against its own clock, the daemon's
//! peak memory, and its tables before, at the end of the churn, and after the grace.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use profiler_proto::v1;

use crate::{
    measure,
    profilers::Profilerd,
    report::{self, Churn, ChurnTables},
    watchdog,
    workloads::Programs,
};

/// Processes started per second, at most.
pub const GOAL_RATE: f64 = 1000.0;
/// How long a short process spins.
const SPIN_SECONDS: &str = "-0.0005";
/// The daemon keeps an exited process this long (`EXITED_GRACE`) and sweeps every 5 s.
const FORGET_AFTER: Duration = Duration::from_secs(40);

/// Runs the churn for `seconds`.
pub fn run(programs: &Programs, work: &std::path::Path, seconds: f64) -> Result<Churn, String> {
    let daemon = Profilerd::start(&work.join("profilerd"), 99, false)?;
    daemon.settle(Duration::from_secs(20));
    // Its table gauges are refreshed every second.
    std::thread::sleep(Duration::from_secs(2));
    let before = daemon.status().ok_or("profilerd does not answer")?;
    let mut steady = programs.accuracy(seconds + 2.0)?;
    let steady_pid = steady.id();
    std::thread::sleep(Duration::from_secs(1));

    watchdog::step(1, format!("churn: {GOAL_RATE} processes/s for {seconds} s"));
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let native = programs.native.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("churn".into())
            .spawn(move || spawn_at_rate(&native, seconds, &stop))
            .map_err(|e| e.to_string())?
    };
    // The daemon is asked for its status every second during the churn.
    let (mut asked, mut answered) = (0u32, 0u32);
    let mut during = ChurnTables::default();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_secs(1));
        asked += 1;
        if let Some(status) = daemon.status() {
            answered += 1;
            during = during.max(&tables(&status));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let processes_started = spawner.join().map_err(|_| "the churn thread panicked")?;
    let wall = started.elapsed().as_secs_f64();

    let mut truth = String::new();
    std::io::Read::read_to_string(steady.stdout.as_mut().ok_or("no stdout")?, &mut truth)
        .map_err(|e| e.to_string())?;
    let _ = steady.wait();
    let truth: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(truth.trim()).map_err(|e| format!("accuracy truth {truth:?}: {e}"))?;
    // Samples still in the pipeline (queries include the open window).
    std::thread::sleep(Duration::from_millis(1500));
    let folded = daemon.folded(steady_pid, seconds as u64 + 30)?;
    let end = daemon.status().ok_or("profilerd does not answer after the churn")?;
    let peak_rss = measure::peak_rss(daemon.pid());

    watchdog::step(1, "churn: waiting for the exited processes to be forgotten");
    std::thread::sleep(FORGET_AFTER);
    let after = daemon.status().ok_or("profilerd does not answer after the grace")?;
    daemon.stop();
    Ok(Churn {
        seconds: wall,
        processes_started,
        rate: processes_started as f64 / wall,
        asked,
        answered,
        drops: drops_between(&before, &end),
        steady_error_pp: report::error_pp(
            &report::shares_of_truth(&truth),
            &report::shares_of_folded(&folded),
        ),
        rss_before_mib: mib(before.rss_bytes),
        peak_rss_mib: mib(peak_rss),
        rss_after_mib: mib(after.rss_bytes),
        before: tables(&before),
        during,
        after: tables(&after),
    })
}

/// Starts the short process at [`GOAL_RATE`] (or as fast as the machine allows) until `stop`
/// or `seconds`, reaping as it goes; returns how many were started.
fn spawn_at_rate(native: &std::path::Path, seconds: f64, stop: &AtomicBool) -> u64 {
    let started = Instant::now();
    let mut count = 0u64;
    let mut running: Vec<Child> = Vec::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs_f64() < seconds {
        let due = (started.elapsed().as_secs_f64() * GOAL_RATE) as u64;
        while count < due {
            let mut command = Command::new(native);
            command.arg(SPIN_SECONDS).stdout(Stdio::null()).stderr(Stdio::null());
            if let Ok(child) = watchdog::dies_with_harness(&mut command).spawn() {
                running.push(child);
            }
            count += 1;
            if started.elapsed().as_secs_f64() >= seconds {
                break;
            }
        }
        running.retain_mut(|c| c.try_wait().ok().flatten().is_none());
        std::thread::sleep(Duration::from_millis(1));
    }
    for mut c in running {
        let _ = c.wait();
    }
    count
}

fn tables(s: &v1::StatusResponse) -> ChurnTables {
    let sym = s.symbolizer.clone().unwrap_or_default();
    let agg = s.aggregation.unwrap_or_default();
    ChurnTables {
        processes: u64::from(s.processes),
        runtimes: s.runtimes.len() as u64,
        user_frames: sym.user_frames,
        kernel_frames: sym.kernel_frames,
        open_stacks: agg.open_stacks,
        window_bytes: agg.bytes,
    }
}

/// Samples lost between two statuses, per reason, leaving out reasons with none.
fn drops_between(before: &v1::StatusResponse, after: &v1::StatusResponse) -> Vec<(String, u64)> {
    after
        .drops
        .iter()
        .map(|d| {
            let earlier = before.drops.iter().find(|b| b.reason == d.reason).map_or(0, |b| b.count);
            (d.reason.clone(), d.count.saturating_sub(earlier))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
