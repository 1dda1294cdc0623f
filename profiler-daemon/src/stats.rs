//! Counters shared by the pipeline stages: samples seen and samples lost, per reason.
//!
//! Every stage that can lose a sample bumps one of these; `Status`, the query header and the
//! window records all read from here, so a drop is never silent.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use profiler_common::counters::Counter;

/// Why a sample was lost or degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The kernel ring buffer was full (the daemon fell behind).
    RingBufferFull,
    /// The kernel stack could not be read; the sample kept its user stack.
    KernelStackError,
    /// The user stack could not be read; the sample kept its kernel stack.
    UserStackError,
    /// A ring buffer record had the wrong size.
    MalformedRecord,
    /// The symbolizer's input queue was full.
    SymbolizerQueueFull,
    /// The open window reached its stack limit; the sample was folded into an overflow stack.
    StackTableFull,
    /// A Python process's sampled thread had no thread state (native frames only).
    PythonThreadNotFound,
    /// A Python frame chain could not be read to its end (the frames read are kept).
    PythonReadError,
    /// A Python stack was deeper than the recording limit (marked `[truncated]`).
    PythonTruncated,
    /// A Python call was not counted: the kernel's call table was full.
    CallTableFull,
    /// A thread's switch off the CPU was not recorded: the ring buffer was full.
    OffCpuRingBufferFull,
    /// A blocked thread was not followed: the table of open blocks was full.
    OffCpuBlocksFull,
    /// The end of a block never arrived; its time after the last window close is missing, or
    /// counted up to the thread's next sample.
    OffCpuEndLost,
    /// The collector's input queue was full: it fell behind the ring buffer's drain.
    /// (Stored drop counts are indexed by position: new reasons go last.)
    CollectorQueueFull,
    /// A page fault's memory sample was not recorded: the ring buffer was full.
    MemoryRingBufferFull,
    /// An OOM kill was not recorded: the ring buffer was full.
    OomRingBufferFull,
}

impl DropReason {
    /// Every reason, in reporting order.
    pub const ALL: [DropReason; 16] = [
        DropReason::RingBufferFull,
        DropReason::KernelStackError,
        DropReason::UserStackError,
        DropReason::MalformedRecord,
        DropReason::SymbolizerQueueFull,
        DropReason::StackTableFull,
        DropReason::PythonThreadNotFound,
        DropReason::PythonReadError,
        DropReason::PythonTruncated,
        DropReason::CallTableFull,
        DropReason::OffCpuRingBufferFull,
        DropReason::OffCpuBlocksFull,
        DropReason::OffCpuEndLost,
        DropReason::CollectorQueueFull,
        DropReason::MemoryRingBufferFull,
        DropReason::OomRingBufferFull,
    ];

    /// Stable snake_case name used on the wire and in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::RingBufferFull => Counter::RingBufFull.name(),
            DropReason::KernelStackError => Counter::KernelStackError.name(),
            DropReason::UserStackError => Counter::UserStackError.name(),
            DropReason::MalformedRecord => "malformed_record",
            DropReason::SymbolizerQueueFull => "symbolizer_queue_full",
            DropReason::CollectorQueueFull => "collector_queue_full",
            DropReason::MemoryRingBufferFull => Counter::MemoryRingBufFull.name(),
            DropReason::OomRingBufferFull => Counter::OomRingBufFull.name(),
            DropReason::StackTableFull => "stack_table_full",
            DropReason::PythonThreadNotFound => Counter::PythonNoThread.name(),
            DropReason::PythonReadError => Counter::PythonReadError.name(),
            DropReason::PythonTruncated => Counter::PythonTruncated.name(),
            DropReason::CallTableFull => Counter::CallTableFull.name(),
            DropReason::OffCpuRingBufferFull => Counter::OffCpuRingBufFull.name(),
            DropReason::OffCpuBlocksFull => "off_cpu_blocks_full",
            DropReason::OffCpuEndLost => "off_cpu_end_lost",
        }
    }
}

/// Totals since the daemon started.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Sample records the kernel wrote (mirrored from `COUNTERS`).
    kernel_sampled: AtomicU64,
    /// Idle-task samples skipped in the kernel (mirrored from `COUNTERS`).
    kernel_idle_skipped: AtomicU64,
    /// Switches off the CPU the kernel recorded (mirrored from `COUNTERS`).
    off_cpu_captured: AtomicU64,
    /// OOM kills the kernel saw (mirrored from `COUNTERS`).
    oom_kills: AtomicU64,
    /// The off-CPU sampler's scale, in 1/65536.
    off_cpu_scale: AtomicU64,
    /// Samples that reached the aggregator.
    aggregated: AtomicU64,
    /// Samples that arrived after their window had closed.
    late: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Native unwinding (see [`crate::unwind`]).
    pub unwind: UnwindStats,
    /// The sizes of the collector's caches and tables, published about once a second.
    pub caches: crate::caches::Caches,
    /// When the collector last drained the ring buffer: [`monotonic_ms`] plus one, zero before
    /// the first drain. A monotonic clock, so that a wall clock step cannot fail a health check.
    last_drain: AtomicU64,
}

/// What native unwinding holds and did, for `Status` and `/metrics`.
#[derive(Debug, Default)]
pub struct UnwindStats {
    /// Processes whose samples copy their stack.
    pub processes: AtomicU64,
    /// Files whose unwind tables are mapped.
    pub files: AtomicU64,
    /// Bytes of those tables.
    pub table_bytes: AtomicU64,
    /// Samples unwound from their copy.
    pub unwound: AtomicU64,
    /// Samples with a copy from which no caller was found.
    pub failed: AtomicU64,
    /// Samples whose unwinding went past the end of their copy.
    pub ran_out: AtomicU64,
    /// Bytes of stack the samples copied.
    pub copied_bytes: AtomicU64,
    /// Processes not copied because the kernel's table was full.
    pub table_full: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts the first time it is read.
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A point-in-time copy of the drop counters, indexable by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropSnapshot(pub [u64; DropReason::ALL.len()]);

impl DropSnapshot {
    /// Counts that grew since `earlier`.
    pub fn since(&self, earlier: &DropSnapshot) -> DropSnapshot {
        let mut out = DropSnapshot::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            *slot = self.0[i].saturating_sub(earlier.0[i]);
        }
        out
    }

    /// Adds another snapshot into this one.
    pub fn add(&mut self, other: &DropSnapshot) {
        for (i, slot) in self.0.iter_mut().enumerate() {
            *slot = slot.saturating_add(other.0[i]);
        }
    }

    /// `(reason, count)` pairs, including zeros, in reporting order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.0[r as usize]))
    }

    /// Total of every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl PipelineStats {
    /// Counts one lost or degraded sample.
    pub fn record_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts one sample that reached the aggregator.
    pub fn aggregated(&self) {
        self.aggregated.fetch_add(1, Relaxed);
    }

    /// Counts a sample that arrived after its window had closed.
    pub fn late(&self) {
        self.late.fetch_add(1, Relaxed);
    }

    /// Samples that arrived after their window had closed, since start.
    pub fn late_total(&self) -> u64 {
        self.late.load(Relaxed)
    }

    /// Samples that reached the aggregator, since start.
    pub fn aggregated_total(&self) -> u64 {
        self.aggregated.load(Relaxed)
    }

    /// Notes that the collector drained the ring buffer just now (the health check reads it).
    pub fn drained(&self) {
        self.last_drain.store(monotonic_ms().saturating_add(1), Relaxed);
    }

    /// How long ago the collector last drained the ring buffer; `None` before the first drain.
    pub fn since_drain(&self) -> Option<Duration> {
        let at = self.last_drain.load(Relaxed).checked_sub(1)?;
        Some(Duration::from_millis(monotonic_ms().saturating_sub(at)))
    }

    /// Sample records the kernel produced since start.
    pub fn kernel_sampled(&self) -> u64 {
        self.kernel_sampled.load(Relaxed)
    }

    /// Idle samples skipped by the kernel since start.
    pub fn kernel_idle_skipped(&self) -> u64 {
        self.kernel_idle_skipped.load(Relaxed)
    }

    /// Switches off the CPU the kernel recorded since start.
    pub fn off_cpu_captured(&self) -> u64 {
        self.off_cpu_captured.load(Relaxed)
    }

    /// Processes the kernel killed for lack of memory since start.
    pub fn oom_kills(&self) -> u64 {
        self.oom_kills.load(Relaxed)
    }

    /// Notes the off-CPU sampler's scale (65536 = every thread at its full probability).
    pub fn set_off_cpu_scale(&self, scale: u32) {
        self.off_cpu_scale.store(u64::from(scale), Relaxed);
    }

    /// The off-CPU sampler's scale, as a fraction.
    pub fn off_cpu_scale(&self) -> f64 {
        self.off_cpu_scale.load(Relaxed) as f64 / 65_536.0
    }

    /// Stores the kernel's per-CPU totals, summed over CPUs, indexed by [`Counter`].
    pub fn set_kernel_counters(&self, totals: &[u64; Counter::COUNT as usize]) {
        self.kernel_sampled.store(totals[Counter::Sampled as usize], Relaxed);
        self.kernel_idle_skipped.store(totals[Counter::IdleSkipped as usize], Relaxed);
        self.off_cpu_captured.store(totals[Counter::OffCpuCaptured as usize], Relaxed);
        self.oom_kills.store(totals[Counter::OomKills as usize], Relaxed);
        for (counter, reason) in [
            (Counter::RingBufFull, DropReason::RingBufferFull),
            (Counter::KernelStackError, DropReason::KernelStackError),
            (Counter::UserStackError, DropReason::UserStackError),
            (Counter::PythonNoThread, DropReason::PythonThreadNotFound),
            (Counter::PythonReadError, DropReason::PythonReadError),
            (Counter::PythonTruncated, DropReason::PythonTruncated),
            (Counter::CallTableFull, DropReason::CallTableFull),
            (Counter::OffCpuRingBufFull, DropReason::OffCpuRingBufferFull),
            (Counter::MemoryRingBufFull, DropReason::MemoryRingBufferFull),
            (Counter::OomRingBufFull, DropReason::OomRingBufferFull),
        ] {
            self.drops[reason as usize].store(totals[counter as usize], Relaxed);
        }
    }

    /// A copy of every drop counter.
    pub fn drops(&self) -> DropSnapshot {
        let mut out = DropSnapshot::default();
        for (slot, counter) in out.0.iter_mut().zip(&self.drops) {
            *slot = counter.load(Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn kernel_counters_land_on_their_reasons() {
        let stats = PipelineStats::default();
        let mut totals = [0; Counter::COUNT as usize];
        totals[Counter::Sampled as usize] = 10;
        totals[Counter::RingBufFull as usize] = 3;
        totals[Counter::UserStackError as usize] = 2;
        stats.set_kernel_counters(&totals);
        stats.record_drop(DropReason::SymbolizerQueueFull);
        let drops = stats.drops();
        assert_eq!(stats.kernel_sampled(), 10);
        assert_eq!(drops.0[DropReason::RingBufferFull as usize], 3);
        assert_eq!(drops.0[DropReason::UserStackError as usize], 2);
        assert_eq!(drops.0[DropReason::SymbolizerQueueFull as usize], 1);
        assert_eq!(drops.total(), 6);
        let later = {
            stats.record_drop(DropReason::SymbolizerQueueFull);
            stats.drops()
        };
        assert_eq!(later.since(&drops).total(), 1);
    }

    #[test]
    fn the_last_drain_is_unknown_until_the_first() {
        let stats = PipelineStats::default();
        assert_eq!(stats.since_drain(), None);
        stats.drained();
        assert!(stats.since_drain().unwrap() < Duration::from_secs(5));
    }
}
