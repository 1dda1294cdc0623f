//! The collector: drains the sample ring buffer on readiness (the kernel wakes it when the ring
//! fills up) and on a short timer, attaches process facts and normalized addresses, and hands
//! samples to the symbolizer without ever waiting on it. It also owns the Python call probe:
//! it attaches it, reads its counts every second and enforces the call budget.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use profiler_common::{python::PyProcess, sample::SampleRecord};
use tokio::{
    io::unix::AsyncFd,
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    calls::{CallProbes, CallTracker, CallsError, CallsMode},
    loader::{KernelCalls, KernelCounters},
    pods::PodNames,
    process::{Identity, ProcessInfo, ProcessTable, Runtime},
    python::{Detection, Detector},
    stats::{DropReason, PipelineStats},
    symbolize::{RawCalls, RawStack, Work},
};

/// How often the ring buffer is drained without a wakeup from the kernel. The kernel only wakes
/// the collector when the ring is a quarter full, so this bounds the latency of a sample.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often (in drain ticks) the kernel counters are mirrored.
const COUNTERS_EVERY_TICKS: u32 = 10;
/// How often (in drain ticks) exited processes are swept.
const SWEEP_EVERY_TICKS: u32 = 50;

/// Everything the collector owns.
#[derive(Debug)]
pub struct Collector {
    /// Process facts and maps.
    pub processes: ProcessTable,
    /// Label samples by thread id and name.
    pub by_thread: bool,
    /// Queue to the symbolizer thread.
    pub output: mpsc::Sender<Work>,
    /// Shared counters.
    pub stats: Arc<PipelineStats>,
    /// Processes tracked, for `Status`.
    pub processes_gauge: Arc<AtomicU64>,
    /// Finds CPython interpreters.
    pub detector: Detector,
    /// The kernel's table of Python processes (absent in tests without BPF).
    pub py_procs: Option<aya::maps::HashMap<MapData, u32, PyProcess>>,
    /// Per-process runtime descriptions, for `Status`.
    pub runtimes: Arc<Mutex<Vec<RuntimeStatus>>>,
    /// Which processes have the call probe.
    pub calls: CallTracker,
    /// Attaches the call probe (the sampler; absent in tests without BPF).
    pub probes: Option<Box<dyn CallProbes>>,
    /// The kernel's call counts (absent in tests without BPF).
    pub py_calls: Option<KernelCalls>,
    /// Pod names from the Kubernetes API (absent outside a cluster).
    pub pods: Option<PodNames>,
}

/// A request to the collector.
#[derive(Debug)]
pub enum Command {
    /// Turns call counting on or off for a process; answers with what was done.
    SetCalls {
        /// Process id.
        pid: u32,
        /// On or off.
        enable: bool,
        /// The answer.
        reply: oneshot::Sender<Result<String, CallsError>>,
    },
}

/// One line of `Status` about a process's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub comm: String,
    /// For example `CPython 3.11.2, static, offsets from table`.
    pub description: String,
}

impl Collector {
    /// Handles one ring buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        let Some(record) = SampleRecord::parse(record) else {
            self.stats.record_drop(DropReason::MalformedRecord);
            return;
        };
        let h = &record.header;
        let pid = h.tgid;
        let identity = Identity { start_ns: h.start_ns, exec_id: h.exec_id };
        let process = self.processes.observe(pid, h.tid, h.comm_bytes(), identity);
        if process.runtime.needs_detection() {
            self.detect(pid);
        }
        let Some(process) = self.processes.get_mut(pid) else { return };
        if let Some(names) = &self.pods
            && process.awaits_pod_name(|| names.generation())
            && !process.name_pod(&names.directory())
        {
            // A pod that started after the last listing.
            names.request_refresh();
        }
        let python = match &process.runtime {
            Runtime::Python(p) => Some(p.clone()),
            _ => None,
        };
        let labels = process.labels(h.tid, h.comm_bytes(), self.by_thread);
        let user: Vec<u64> = record.user_stack().collect();
        let user = self.processes.normalize(h.tgid, &user);
        let raw = RawStack {
            time_ns: crate::clock::boot_to_wall_ns(h.time_ns),
            labels,
            kernel: record.kernel_stack().collect(),
            user,
            python: python.map(|p| (p, record.python_stack().collect())),
            flags: h.flags,
        };
        match self.output.try_send(Work::Stack(pid, raw)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.record_drop(DropReason::SymbolizerQueueFull),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Finds out what runs in process `pid` (tracked already), registers a Python process with
    /// the kernel, and attaches the call probe when every process gets it.
    fn detect(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(pid) else { return };
        let runtime = match self.detector.detect(pid, &process.exe) {
            Detection::NotPython => {
                // A pid seen again after an execve may still be registered.
                if let Some(map) = &mut self.py_procs {
                    let _ = map.remove(&pid);
                }
                if let Some(probes) = self.probes.as_deref_mut() {
                    self.calls.forget(probes, pid);
                }
                Runtime::Native
            }
            Detection::Python(p) => {
                if let Some(map) = &mut self.py_procs {
                    let entry = PyProcess {
                        interp: p.interp,
                        offsets: p.layout.kernel,
                        start_ns: process.identity.start_ns,
                        exec_id: process.identity.exec_id,
                        _pad: 0,
                    };
                    if let Err(e) = map.insert(pid, entry, 0) {
                        warn!(pid, error = %e, "registering a Python process failed");
                    }
                }
                info!(pid, comm = %process.comm, "{p}");
                if self.calls.mode() == CallsMode::All
                    && let Some(probes) = self.probes.as_deref_mut()
                    && let Err(e) = self.calls.enable(probes, pid, &p)
                {
                    warn!(pid, error = %e, "Python calls are not counted");
                }
                Runtime::Python(p)
            }
            Detection::Unsupported(why) => {
                info!(pid, comm = %process.comm, "{why}; native stacks only");
                Runtime::Unsupported(why)
            }
            Detection::NotReady => Runtime::Pending(Instant::now()),
        };
        process.set_runtime(runtime);
    }

    /// Turns call counting on or off for process `pid`.
    fn set_calls(&mut self, pid: u32, enable: bool) -> Result<String, CallsError> {
        let Some(probes) = self.probes.as_deref_mut() else {
            return Err(CallsError::Attach { pid, reason: "the call probe is not loaded".into() });
        };
        if !enable {
            return Ok(if self.calls.disable(probes, pid) {
                format!("stopped counting the calls of process {pid}")
            } else {
                format!("the calls of process {pid} were not being counted")
            });
        }
        // The process may not have been sampled yet (it may be idle).
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(|_| CallsError::NoProcess(pid))?;
        let process =
            self.processes.observe(pid, pid, comm.trim_end().as_bytes(), Identity::default());
        if process.runtime.needs_detection() {
            self.detect(pid);
        }
        let Some(ProcessInfo { runtime, .. }) = self.processes.get_mut(pid) else {
            return Err(CallsError::NoProcess(pid));
        };
        match runtime {
            Runtime::Python(p) => {
                let p = p.clone();
                let probes = self.probes.as_deref_mut().ok_or(CallsError::NoProcess(pid))?;
                self.calls.enable(probes, pid, &p)?;
                Ok(format!("counting the calls of process {pid} ({p})"))
            }
            other => Err(CallsError::NotPython {
                pid,
                what: other.describe().unwrap_or_else(|| "a native process".to_owned()),
            }),
        }
    }

    /// Reads the kernel's call counts and sends the new ones on for naming.
    fn poll_calls(&mut self, elapsed: Duration) {
        let (Some(map), Some(probes)) = (&mut self.py_calls, self.probes.as_deref_mut()) else {
            return;
        };
        if !self.calls.has_work() {
            return;
        }
        let counts = map.read();
        if counts.is_empty() {
            return;
        }
        let poll = self.calls.poll(probes, counts, elapsed);
        for key in &poll.stale {
            map.remove(key);
        }
        for (pid, rate) in &poll.stopped {
            warn!(pid, rate = *rate as u64, "Python call counting stopped: over the call budget");
        }
        for deltas in poll.deltas {
            let Some(process) = self.processes.get_mut(deltas.pid) else { continue };
            let Runtime::Python(python) = &process.runtime else { continue };
            let raw =
                RawCalls { python: python.clone(), labels: process.labels(0, b"", false), deltas };
            if let Err(TrySendError::Full(_)) = self.output.try_send(Work::Calls(raw)) {
                self.stats.record_drop(DropReason::SymbolizerQueueFull);
            }
        }
    }

    fn publish_runtimes(&self) {
        let mut list: Vec<RuntimeStatus> = self
            .processes
            .iter()
            .filter_map(|p| {
                let mut description = p.runtime.describe()?;
                if let Some(calls) = self.calls.describe(p.pid) {
                    description = format!("{description}; {calls}");
                }
                Some(RuntimeStatus { pid: p.pid, comm: p.comm.to_string(), description })
            })
            .collect();
        list.sort_by_key(|r| r.pid);
        *self.runtimes.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = list;
    }

    /// Drains the ring buffer whenever it is readable, until `shutdown`.
    pub async fn run(
        mut self,
        ring: RingBuf<MapData>,
        counters: KernelCounters,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
        // (which owns the RingBuf) is dropped.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        let mut calls_read_at = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => match command {
                    Command::SetCalls { pid, enable, reply } => {
                        let _ = reply.send(self.set_calls(pid, enable));
                    }
                },
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let ring = guard.get_inner_mut();
                    while let Some(record) = ring.next() {
                        self.handle(&record);
                    }
                    guard.clear_ready();
                }
                _ = drain.tick() => {
                    let ring = ring.get_mut();
                    while let Some(record) = ring.next() {
                        self.handle(&record);
                    }
                    self.stats.drained();
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(COUNTERS_EVERY_TICKS) {
                        match counters.read() {
                            Ok(totals) => self.stats.set_kernel_counters(&totals),
                            Err(e) => warn!(error = %e, "reading the kernel counters failed"),
                        }
                        self.processes_gauge.store(self.processes.len() as u64, Relaxed);
                        self.poll_calls(calls_read_at.elapsed());
                        calls_read_at = Instant::now();
                        self.publish_runtimes();
                    }
                    if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                        for pid in self.processes.sweep() {
                            if let Some(map) = &mut self.py_procs {
                                let _ = map.remove(&pid);
                            }
                            if let Some(probes) = self.probes.as_deref_mut() {
                                self.calls.forget(probes, pid);
                            }
                        }
                    }
                }
            }
        }
        if let Ok(totals) = counters.read() {
            self.stats.set_kernel_counters(&totals);
        }
        // The last counts, so that a short run keeps them.
        self.poll_calls(calls_read_at.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::sample::SampleHeader;

    fn collector(capacity: usize) -> (Collector, mpsc::Receiver<Work>) {
        let (output, rx) = mpsc::channel(capacity);
        let collector = Collector {
            processes: ProcessTable::new(8),
            by_thread: true,
            output,
            stats: Arc::default(),
            processes_gauge: Arc::default(),
            detector: Detector::default(),
            py_procs: None,
            runtimes: Arc::default(),
            calls: CallTracker::new(CallsMode::Off, 1),
            probes: None,
            py_calls: None,
            pods: None,
        };
        (collector, rx)
    }

    fn record(tgid: u32, tid: u32) -> Vec<u8> {
        let mut header =
            SampleHeader { tgid, tid, kernel_len: 2, user_len: 1, ..SampleHeader::default() };
        header.comm[..6].copy_from_slice(b"worker");
        // SAFETY: SampleHeader is repr(C) plain data without padding.
        let mut bytes = unsafe {
            std::slice::from_raw_parts((&raw const header).cast::<u8>(), SampleHeader::SIZE)
        }
        .to_vec();
        for ip in [0xffff_ffff_8100_0000u64, 0xffff_ffff_8100_0010, 0x1000] {
            bytes.extend_from_slice(&ip.to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn records_become_labelled_raw_stacks() {
        let (mut c, mut rx) = collector(4);
        let pid = std::process::id();
        c.handle(&record(pid, pid + 1));
        let Work::Stack(got_pid, raw) = rx.try_recv().unwrap() else { panic!("not a stack") };
        assert_eq!(got_pid, pid);
        assert_eq!((raw.labels.pid, raw.labels.tid, &*raw.labels.thread), (pid, pid + 1, "worker"));
        assert_eq!(raw.kernel, [0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010]);
        assert_eq!(raw.user.len(), 1);
    }

    #[test]
    fn a_full_queue_and_bad_records_are_counted_not_waited_on() {
        let (mut c, _rx) = collector(1);
        let pid = std::process::id();
        c.handle(&record(pid, pid));
        c.handle(&record(pid, pid));
        c.handle(&record(pid, pid));
        c.handle(&[0u8; 12]);
        let mut short = record(pid, pid);
        short.pop();
        c.handle(&short);
        let drops = c.stats.drops();
        assert_eq!(drops.0[DropReason::SymbolizerQueueFull as usize], 2);
        assert_eq!(drops.0[DropReason::MalformedRecord as usize], 2);
    }
}
