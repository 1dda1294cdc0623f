//! The collector: drains the sample ring buffer on readiness, attaches process facts and
//! normalized addresses, and hands samples to the symbolizer without ever waiting on it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use profiler_common::sample::SampleEvent;
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    loader::KernelCounters,
    process::ProcessTable,
    stats::{DropReason, PipelineStats},
    symbolize::RawStack,
};

/// How often the kernel counters are mirrored and exited processes swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
const SWEEP_EVERY_TICKS: u32 = 5;

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
}

impl Collector {
    /// Handles one ring buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        if record.len() != SampleEvent::SIZE {
            self.stats.record_drop(DropReason::MalformedRecord);
            return;
        }
        // SAFETY: the length matches and SampleEvent is plain old data; the ring buffer gives
        // no alignment guarantee beyond 8 bytes, so read unaligned anyway.
        let event: SampleEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        let process = self.processes.observe(event.tgid, event.comm_bytes());
        let labels = process.labels(event.tid, event.comm_bytes(), self.by_thread);
        let user = self.processes.normalize(event.tgid, event.user_stack());
        let raw =
            RawStack { labels, kernel: event.kernel_stack().to_vec(), user, flags: event.flags };
        match self.output.try_send((event.tgid, raw)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.record_drop(DropReason::SymbolizerQueueFull),
            Err(TrySendError::Closed(_)) => {}
        }
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
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
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
                _ = housekeeping.tick() => {
                    match counters.read() {
                        Ok(totals) => self.stats.set_kernel_counters(&totals),
                        Err(e) => warn!(error = %e, "reading the kernel counters failed"),
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                        self.processes.sweep();
                    }
                    self.processes_gauge.store(self.processes.len() as u64, Relaxed);
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
    use profiler_common::sample::MAX_STACK_DEPTH;

    fn collector(capacity: usize) -> (Collector, mpsc::Receiver<(u32, RawStack)>) {
        let (output, rx) = mpsc::channel(capacity);
        let collector = Collector {
            processes: ProcessTable::new(8),
            by_thread: true,
            output,
            stats: Arc::default(),
            processes_gauge: Arc::default(),
        };
        (collector, rx)
    }

    fn record(tgid: u32, tid: u32) -> Vec<u8> {
        let mut event = SampleEvent {
            time_ns: 1,
            tgid,
            tid,
            cpu: 0,
            flags: 0,
            kernel_len: 2,
            user_len: 1,
            comm: [0; 16],
            kernel_ips: [0; MAX_STACK_DEPTH],
            user_ips: [0; MAX_STACK_DEPTH],
        };
        event.comm[..6].copy_from_slice(b"worker");
        event.kernel_ips[..2].copy_from_slice(&[0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010]);
        event.user_ips[0] = 0x1000;
        // SAFETY: SampleEvent is repr(C) plain data without padding.
        unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), SampleEvent::SIZE) }
            .to_vec()
    }

    #[test]
    fn records_become_labelled_raw_stacks() {
        let (mut c, mut rx) = collector(4);
        let pid = std::process::id();
        c.handle(&record(pid, pid + 1));
        let (got_pid, raw) = rx.try_recv().unwrap();
        assert_eq!(got_pid, pid);
        assert_eq!((raw.labels.pid, raw.labels.tid, &*raw.labels.thread), (pid, pid + 1, "worker"));
        assert_eq!(raw.kernel.len(), 2);
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
        let drops = c.stats.drops();
        assert_eq!(drops.0[DropReason::SymbolizerQueueFull as usize], 2);
        assert_eq!(drops.0[DropReason::MalformedRecord as usize], 1);
    }
}
