//! Python call counting: which processes have the entry probe, the per-process budget that
//! detaches it, and the differences between reads of the kernel's cumulative counts.
//!
//! What a count means depends on the interpreter. On CPython 3.9 and 3.10 every Python call
//! goes through `_PyEval_EvalFrameDefault`, so the count is every call. From 3.11 on, a call
//! from Python to Python runs inside the caller's evaluation loop and is not seen; the count is
//! the calls that enter the interpreter from C: callbacks, `map`/`sorted` keys, `__init__` run
//! by a type call, generator resumptions by C code, and the first frame of each thread.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use profiler_common::python::CallKey;
use thiserror::Error;

use crate::{loader::LoadError, python::PythonProcess};

/// Which processes get the call probe when they are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CallsMode {
    /// None; enable per process at run time (`profctl calls enable --pid N`).
    #[default]
    Off,
    /// Every CPython process, as soon as it is detected.
    All,
}

/// Attaches and detaches the probe; the sampler in the daemon, a fake in tests.
pub trait CallProbes: Send + std::fmt::Debug {
    /// Attaches the probe at `offset` in `path` for process `pid`; returns a handle.
    fn attach(&mut self, pid: u32, path: &Path, offset: u64) -> Result<u64, LoadError>;
    /// Detaches a probe.
    fn detach(&mut self, handle: u64);
}

impl CallProbes for crate::loader::Sampler {
    fn attach(&mut self, pid: u32, path: &Path, offset: u64) -> Result<u64, LoadError> {
        self.attach_calls(pid, path, offset)
    }

    fn detach(&mut self, handle: u64) {
        self.detach_calls(handle);
    }
}

/// Why calls could not be turned on or off for a process.
#[derive(Debug, Error)]
pub enum CallsError {
    /// No such process.
    #[error("no process {0} is running")]
    NoProcess(u32),
    /// Not a CPython process with a supported layout.
    #[error("process {pid} is not a CPython process that profilerd can profile ({what})")]
    NotPython {
        /// Process id.
        pid: u32,
        /// What it is instead.
        what: String,
    },
    /// The interpreter does not export `_PyEval_EvalFrameDefault`.
    #[error(
        "process {0}: the interpreter exports no _PyEval_EvalFrameDefault symbol, so calls \
         cannot be counted (stacks are still sampled)"
    )]
    NoEntryPoint(u32),
    /// The kernel refused the probe.
    #[error("attaching the call probe to process {pid} failed: {source}")]
    Attach {
        /// Process id.
        pid: u32,
        /// The kernel's or loader's reason.
        #[source]
        source: LoadError,
    },
    /// The daemon runs without the probe (tests without BPF).
    #[error("the call probe is not loaded")]
    NotLoaded,
}

#[derive(Debug)]
enum State {
    On {
        handle: u64,
        since: Instant,
    },
    /// Detached by the budget guard.
    Stopped {
        reason: String,
    },
}

/// Calls of one process since the last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallDeltas {
    /// Process id.
    pub pid: u32,
    /// (code object address, calls).
    pub counts: Vec<(u64, u64)>,
}

/// The outcome of one read of the kernel's counts.
#[derive(Debug, Default)]
pub struct Poll {
    /// New calls per process.
    pub deltas: Vec<CallDeltas>,
    /// Keys to delete from the kernel table: their process no longer has the probe, and its
    /// counts have been taken.
    pub stale: Vec<CallKey>,
    /// Processes whose probe the budget guard detached in this read, with their rate.
    pub stopped: Vec<(u32, f64)>,
}

/// Per-process probe state, the budget, and the last cumulative count of every key.
#[derive(Debug)]
pub struct CallTracker {
    mode: CallsMode,
    /// The kernel refused a probe for want of a capability: processes are not probed
    /// automatically any more (each would fail the same way).
    refused: bool,
    budget: u64,
    states: HashMap<u32, State>,
    last: HashMap<CallKey, u64>,
}

impl CallTracker {
    /// A tracker in `mode`, detaching processes above `budget` calls per second.
    pub fn new(mode: CallsMode, budget: u64) -> CallTracker {
        CallTracker { mode, refused: false, budget, states: HashMap::new(), last: HashMap::new() }
    }

    /// The mode processes start in.
    pub fn mode(&self) -> CallsMode {
        self.mode
    }

    /// Whether a newly detected CPython process gets the probe: in mode `all`, until the
    /// kernel refused one for want of privileges.
    pub fn probes_new_processes(&self) -> bool {
        self.mode == CallsMode::All && !self.refused
    }

    /// Whether any process has (or had, with counts not yet read) the probe. When none has,
    /// the kernel's call table is empty and is not read: iterating an empty hash map still
    /// walks all of its buckets.
    pub fn has_work(&self) -> bool {
        !self.states.is_empty() || !self.last.is_empty()
    }

    /// Attaches the probe to process `pid`, unless it is attached already.
    pub fn enable(
        &mut self,
        probes: &mut dyn CallProbes,
        pid: u32,
        py: &PythonProcess,
    ) -> Result<(), CallsError> {
        if let Some(State::On { .. }) = self.states.get(&pid) {
            return Ok(());
        }
        let offset = py.eval_frame_offset.ok_or(CallsError::NoEntryPoint(pid))?;
        let path = crate::host::readable_file(pid, &py.interpreter_path, py.interpreter_file)
            .unwrap_or_else(|| py.interpreter_path.clone());
        let handle = probes.attach(pid, &path, offset).map_err(|source| {
            if matches!(source, LoadError::UprobePrivileges) {
                self.refused = true;
            }
            CallsError::Attach { pid, source }
        })?;
        self.states.insert(pid, State::On { handle, since: Instant::now() });
        Ok(())
    }

    /// Detaches the probe from process `pid`; returns whether it was attached.
    pub fn disable(&mut self, probes: &mut dyn CallProbes, pid: u32) -> bool {
        match self.states.remove(&pid) {
            Some(State::On { handle, .. }) => {
                probes.detach(handle);
                true
            }
            Some(State::Stopped { .. }) | None => false,
        }
    }

    /// Whether process `pid` has the probe now.
    pub fn is_on(&self, pid: u32) -> bool {
        matches!(self.states.get(&pid), Some(State::On { .. }))
    }

    /// The probe's state for `Status`, or `None` when it was never on.
    pub fn describe(&self, pid: u32) -> Option<String> {
        match self.states.get(&pid)? {
            State::On { since, .. } => {
                Some(format!("calls counted for {}s", since.elapsed().as_secs()))
            }
            State::Stopped { reason } => Some(format!("call counting stopped: {reason}")),
        }
    }

    /// Takes the differences between `counts` (cumulative per key) and the previous read,
    /// `elapsed` after it, and detaches every process whose rate exceeds the budget.
    pub fn poll(
        &mut self,
        probes: &mut dyn CallProbes,
        counts: impl IntoIterator<Item = (CallKey, u64)>,
        elapsed: Duration,
    ) -> Poll {
        let mut per_pid: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        let mut poll = Poll::default();
        let mut keys = Vec::new();
        for (key, total) in counts {
            let last = self.last.insert(key, total).unwrap_or(0);
            let delta = total.saturating_sub(last);
            if delta > 0 {
                per_pid.entry(key.tgid).or_default().push((key.code, delta));
            }
            keys.push(key);
        }
        let secs = elapsed.as_secs_f64().max(0.001);
        for (pid, mut counts) in per_pid {
            let rate = counts.iter().map(|(_, n)| *n).sum::<u64>() as f64 / secs;
            if rate > self.budget as f64 && self.is_on(pid) {
                self.disable(probes, pid);
                let reason = format!(
                    "{rate:.0} calls/s is over the budget of {}/s (--python-calls-budget); \
                     `profctl calls enable --pid {pid}` turns it back on",
                    self.budget
                );
                self.states.insert(pid, State::Stopped { reason });
                poll.stopped.push((pid, rate));
            }
            counts.sort_unstable();
            poll.deltas.push(CallDeltas { pid, counts });
        }
        poll.deltas.sort_by_key(|d| d.pid);
        poll.stale = keys.into_iter().filter(|k| !self.is_on(k.tgid)).collect();
        for key in &poll.stale {
            self.last.remove(key);
        }
        poll
    }

    /// Forgets process `pid` (it exited or became another program), detaching its probe.
    pub fn forget(&mut self, probes: &mut dyn CallProbes, pid: u32) {
        self.disable(probes, pid);
        self.states.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct FakeProbes {
        attached: Vec<(u32, u64)>,
        detached: Vec<u64>,
        refuse: bool,
        /// Refuse as the kernel does a daemon without CAP_SYS_ADMIN, counting the attempts.
        refuse_uprobes: u32,
    }

    impl CallProbes for FakeProbes {
        fn attach(&mut self, pid: u32, _path: &Path, offset: u64) -> Result<u64, LoadError> {
            if self.refuse {
                return Err(LoadError::Privileges { missing: "missing CAP_PERFMON".into() });
            }
            if self.refuse_uprobes > 0 {
                self.refuse_uprobes += 1;
                return Err(LoadError::UprobePrivileges);
            }
            self.attached.push((pid, offset));
            Ok(self.attached.len() as u64)
        }

        fn detach(&mut self, handle: u64) {
            self.detached.push(handle);
        }
    }

    fn python(eval_frame_offset: Option<u64>) -> PythonProcess {
        PythonProcess::for_tests(eval_frame_offset)
    }

    fn key(tgid: u32, code: u64) -> CallKey {
        CallKey { tgid, _pad: 0, code }
    }

    #[test]
    fn counts_are_differences_between_reads() {
        let mut probes = FakeProbes::default();
        let mut t = CallTracker::new(CallsMode::Off, 1_000_000);
        t.enable(&mut probes, 7, &python(Some(0x1000))).unwrap();
        assert_eq!(probes.attached, [(7, 0x1000)]);
        let sec = Duration::from_secs(1);
        let p = t.poll(&mut probes, [(key(7, 0xa0), 5), (key(7, 0xb0), 2)], sec);
        assert_eq!(p.deltas, [CallDeltas { pid: 7, counts: vec![(0xa0, 5), (0xb0, 2)] }]);
        let p = t.poll(&mut probes, [(key(7, 0xa0), 12), (key(7, 0xb0), 2)], sec);
        assert_eq!(p.deltas, [CallDeltas { pid: 7, counts: vec![(0xa0, 7)] }]);
        assert!(p.stale.is_empty());
    }

    #[test]
    fn the_budget_detaches_a_busy_process_and_says_why() {
        let mut probes = FakeProbes::default();
        let mut t = CallTracker::new(CallsMode::All, 100);
        t.enable(&mut probes, 7, &python(Some(1))).unwrap();
        t.enable(&mut probes, 8, &python(Some(1))).unwrap();
        let p = t.poll(
            &mut probes,
            [(key(7, 0xa0), 150), (key(7, 0xb0), 100), (key(8, 0xa0), 90)],
            Duration::from_secs(2),
        );
        assert_eq!(p.stopped, [(7, 125.0)]);
        assert_eq!(probes.detached, [1]);
        assert!(!t.is_on(7) && t.is_on(8));
        // The calls made before the detach are still reported.
        assert_eq!(p.deltas[0].counts, [(0xa0, 150), (0xb0, 100)]);
        let why = t.describe(7).unwrap();
        assert!(why.contains("125 calls/s is over the budget of 100/s"), "{why}");
        assert!(why.contains("profctl calls enable --pid 7"), "{why}");
        // The stopped process's keys are deleted once read; enabling again starts afresh.
        assert_eq!(p.stale.len(), 2);
        t.enable(&mut probes, 7, &python(Some(1))).unwrap();
        let p = t.poll(&mut probes, [(key(7, 0xa0), 3)], Duration::from_secs(1));
        assert_eq!(p.deltas[0].counts, [(0xa0, 3)]);
    }

    #[test]
    fn enabling_explains_what_is_missing() {
        let mut probes = FakeProbes::default();
        let mut t = CallTracker::new(CallsMode::Off, 100);
        assert!(matches!(
            t.enable(&mut probes, 7, &python(None)),
            Err(CallsError::NoEntryPoint(7))
        ));
        probes.refuse = true;
        let err = t.enable(&mut probes, 7, &python(Some(1))).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "attaching the call probe to process 7 failed: profilerd lacks the privileges to \
                 use BPF (missing CAP_PERFMON)"
            ),
            "{err}"
        );
        assert_eq!(t.describe(7), None);
    }

    #[test]
    fn after_a_refusal_for_privileges_new_processes_are_not_probed() {
        let mut probes = FakeProbes { refuse_uprobes: 1, ..FakeProbes::default() };
        let mut t = CallTracker::new(CallsMode::All, 100);
        assert!(t.probes_new_processes());
        let err = t.enable(&mut probes, 7, &python(Some(1))).unwrap_err().to_string();
        assert!(err.contains("creating one takes CAP_SYS_ADMIN"), "{err}");
        assert!(!t.probes_new_processes(), "each would be refused the same way");
        assert_eq!(t.mode(), CallsMode::All, "the mode asked for is still reported");
        // Asked for by hand, it is tried again (and explained again).
        assert!(t.enable(&mut probes, 8, &python(Some(1))).is_err());
        assert_eq!(probes.refuse_uprobes, 3);
        // Other failures do not stop the others.
        let mut probes = FakeProbes { refuse: true, ..FakeProbes::default() };
        let mut t = CallTracker::new(CallsMode::All, 100);
        assert!(t.enable(&mut probes, 7, &python(Some(1))).is_err());
        assert!(t.probes_new_processes());
    }

    #[test]
    fn forgetting_a_process_detaches_it() {
        let mut probes = FakeProbes::default();
        let mut t = CallTracker::new(CallsMode::All, 100);
        t.enable(&mut probes, 7, &python(Some(1))).unwrap();
        t.enable(&mut probes, 7, &python(Some(1))).unwrap();
        assert_eq!(probes.attached.len(), 1, "enabling twice attaches once");
        t.forget(&mut probes, 7);
        assert_eq!(probes.detached, [1]);
        let p = t.poll(&mut probes, [(key(7, 0xa0), 4)], Duration::from_secs(1));
        assert_eq!(p.stale, [key(7, 0xa0)]);
    }
}
