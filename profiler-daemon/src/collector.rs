//! The collector: drains the sample ring buffer on readiness (the kernel wakes it when the ring
//! fills up) and on a short timer, attaches process facts and normalized addresses, and hands
//! samples to the symbolizer without ever waiting on it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use profiler_common::{python::PyProcess, sample::SampleRecord};
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    loader::KernelCounters,
    process::{ProcessTable, Runtime},
    python::{Detection, Detector},
    stats::{DropReason, PipelineStats},
    symbolize::RawStack,
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
    pub output: mpsc::Sender<(u32, RawStack)>,
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
        let process = self.processes.observe(h.tgid, h.tid, h.comm_bytes());
        if process.runtime.needs_detection() {
            process.runtime = match self.detector.detect(h.tgid, &process.exe) {
                Detection::NotPython => {
                    // A pid seen again after an execve may still be registered.
                    if let Some(map) = &mut self.py_procs {
                        let _ = map.remove(&h.tgid);
                    }
                    Runtime::Native
                }
                Detection::Python(p) => {
                    if let Some(map) = &mut self.py_procs {
                        let entry = PyProcess { interp: p.interp, offsets: p.layout.kernel };
                        if let Err(e) = map.insert(h.tgid, entry, 0) {
                            warn!(pid = h.tgid, error = %e, "registering a Python process failed");
                        }
                    }
                    info!(pid = h.tgid, comm = %process.comm, "{p}");
                    Runtime::Python(p)
                }
                Detection::Unsupported(why) => {
                    info!(pid = h.tgid, comm = %process.comm, "CPython, native stacks only: {why}");
                    Runtime::Unsupported(why)
                }
                Detection::NotReady => Runtime::Pending(std::time::Instant::now()),
            };
        }
        let python = match &process.runtime {
            Runtime::Python(p) => Some(p.clone()),
            _ => None,
        };
        let labels = process.labels(h.tid, h.comm_bytes(), self.by_thread);
        let user: Vec<u64> = record.user_stack().collect();
        let user = self.processes.normalize(h.tgid, &user);
        let raw = RawStack {
            labels,
            kernel: record.kernel_stack().collect(),
            user,
            python: python.map(|p| (p, record.python_stack().collect())),
            flags: h.flags,
        };
        match self.output.try_send((h.tgid, raw)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.record_drop(DropReason::SymbolizerQueueFull),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn publish_runtimes(&self) {
        let mut list: Vec<RuntimeStatus> = self
            .processes
            .iter()
            .filter_map(|p| {
                let description = p.runtime.describe()?;
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
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
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
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(COUNTERS_EVERY_TICKS) {
                        match counters.read() {
                            Ok(totals) => self.stats.set_kernel_counters(&totals),
                            Err(e) => warn!(error = %e, "reading the kernel counters failed"),
                        }
                        self.processes_gauge.store(self.processes.len() as u64, Relaxed);
                        self.publish_runtimes();
                    }
                    if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                        for pid in self.processes.sweep() {
                            if let Some(map) = &mut self.py_procs {
                                let _ = map.remove(&pid);
                            }
                        }
                    }
                }
            }
        }
        if let Ok(totals) = counters.read() {
            self.stats.set_kernel_counters(&totals);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::sample::SampleHeader;

    fn collector(capacity: usize) -> (Collector, mpsc::Receiver<(u32, RawStack)>) {
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
        let (got_pid, raw) = rx.try_recv().unwrap();
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
