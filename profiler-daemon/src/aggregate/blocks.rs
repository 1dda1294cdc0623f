//! Off-CPU blocks still open: a captured thread left the CPU and has not come back yet.
//!
//! A block's time is counted as it passes: into each window as that window closes, and the
//! rest when the block ends. A thread blocked for an hour so shows in every window of that
//! hour, not all at once when it wakes, and a thread that never wakes still shows.
//!
//! Each block stands for `weight / 65536` blocks: the kernel captures a thread's switch with a
//! probability that it knows before the block's length is known, so weighting by its inverse
//! keeps the estimate of time unbiased.

use std::{collections::HashMap, sync::Arc};

use super::{
    frame::{BlockEnd, BlockStart, Labels, Stack},
    kind::Tally,
};
use crate::stats::{DropReason, PipelineStats};

/// Open blocks held at most; a thread blocking while the table is full is not counted (and
/// the loss is).
pub const MAX_OPEN_BLOCKS: usize = 65_536;

#[derive(Debug)]
struct Block {
    labels: Arc<Labels>,
    stack: Stack,
    boot_ns: u64,
    weight: u64,
    /// Wall-clock time up to which the block's time has been counted.
    counted_to_ns: i64,
}

impl Block {
    /// The block's time from where it was counted to `until_ns`, weighted.
    fn take_until(&mut self, until_ns: i64) -> u64 {
        let elapsed = u64::try_from(until_ns - self.counted_to_ns).unwrap_or(0);
        self.counted_to_ns = self.counted_to_ns.max(until_ns);
        u64::try_from((u128::from(elapsed) * u128::from(self.weight)) >> 16).unwrap_or(u64::MAX)
    }
}

/// Time of one block to count, under its thread's labels and stack.
#[derive(Clone, Debug)]
pub struct Accrual {
    /// The blocked thread's labels.
    pub labels: Arc<Labels>,
    /// Its stack when it blocked.
    pub stack: Stack,
    /// Blocks ended (1 at the end, 0 for time counted while it lasts) and nanoseconds.
    pub tally: Tally,
}

/// The open blocks, by thread id.
#[derive(Debug)]
pub struct OpenBlocks {
    blocks: HashMap<u32, Block>,
    max: usize,
}

impl OpenBlocks {
    /// An empty table holding at most `max` blocks.
    pub fn new(max: usize) -> OpenBlocks {
        OpenBlocks { blocks: HashMap::new(), max }
    }

    /// Open blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is open.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// A captured thread left the CPU.
    pub fn start(&mut self, start: BlockStart, stats: &PipelineStats) {
        let block = Block {
            labels: start.sample.labels,
            stack: start.sample.stack,
            boot_ns: start.boot_ns,
            weight: start.weight,
            counted_to_ns: start.sample.time_ns,
        };
        if self.blocks.insert(start.tid, block).is_some() {
            // The thread's previous block never saw its end: its time after the last count
            // is missing.
            stats.record_drop(DropReason::OffCpuEndLost);
        } else if self.blocks.len() > self.max {
            self.blocks.remove(&start.tid);
            stats.record_drop(DropReason::OffCpuBlocksFull);
        }
    }

    /// A captured block ended; its uncounted time, if the block is known.
    pub fn end(&mut self, end: BlockEnd) -> Option<Accrual> {
        let block = self.blocks.get(&end.tid)?;
        if block.boot_ns != end.boot_ns {
            // The end of a block that was not kept (the table was full, or it was replaced).
            return None;
        }
        let mut block = self.blocks.remove(&end.tid)?;
        let value = block.take_until(end.time_ns);
        Some(Accrual { labels: block.labels, stack: block.stack, tally: Tally { count: 1, value } })
    }

    /// Thread `tid` was seen on a CPU at `time_ns`. An end record always comes before the
    /// thread's next sample, so a block that began earlier lost its end (the ring buffer was
    /// full): it is closed here, with its time up to this sample.
    pub fn ran(&mut self, tid: u32, time_ns: i64, stats: &PipelineStats) -> Option<Accrual> {
        if self.blocks.get(&tid)?.counted_to_ns >= time_ns {
            return None;
        }
        let mut block = self.blocks.remove(&tid)?;
        stats.record_drop(DropReason::OffCpuEndLost);
        let value = block.take_until(time_ns);
        Some(Accrual { labels: block.labels, stack: block.stack, tally: Tally { count: 1, value } })
    }

    /// The time of every open block up to `until_ns` that was not counted yet.
    pub fn take_until(&mut self, until_ns: i64) -> Vec<Accrual> {
        self.blocks
            .values_mut()
            .filter(|b| b.counted_to_ns < until_ns)
            .map(|b| Accrual {
                labels: b.labels.clone(),
                stack: b.stack.clone(),
                tally: Tally { count: 0, value: b.take_until(until_ns) },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Frame, SampleKind, StackSample};

    const MS: i64 = 1_000_000;

    fn start(tid: u32, boot_ns: u64, time_ns: i64, weight: u64) -> BlockStart {
        BlockStart {
            sample: StackSample {
                time_ns,
                labels: Arc::new(Labels { pid: 1, tid, ..Labels::default() }),
                stack: Arc::from([Arc::new(Frame::marker("read"))]),
                kind: SampleKind::OffCpu,
                value: 0,
                tid,
            },
            tid,
            boot_ns,
            weight,
        }
    }

    fn end(tid: u32, boot_ns: u64, time_ns: i64) -> BlockEnd {
        BlockEnd { tid, boot_ns, time_ns }
    }

    #[test]
    fn a_block_counts_as_windows_close_and_the_rest_at_its_end() {
        let stats = PipelineStats::default();
        let mut blocks = OpenBlocks::new(8);
        blocks.start(start(7, 100, 1_000 * MS, 65_536), &stats);
        let first = blocks.take_until(1_500 * MS);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].tally, Tally { count: 0, value: (500 * MS) as u64 });
        assert!(blocks.take_until(1_200 * MS).is_empty(), "time is counted once");
        let last = blocks.end(end(7, 100, 1_750 * MS)).unwrap();
        assert_eq!(last.tally, Tally { count: 1, value: (250 * MS) as u64 });
        assert!(blocks.is_empty());
    }

    #[test]
    fn a_block_captured_with_probability_a_quarter_counts_four_times() {
        let stats = PipelineStats::default();
        let mut blocks = OpenBlocks::new(8);
        blocks.start(start(7, 100, 0, 4 * 65_536), &stats);
        let done = blocks.end(end(7, 100, 10 * MS)).unwrap();
        assert_eq!(done.tally.value, (40 * MS) as u64);
    }

    #[test]
    fn ends_of_unknown_blocks_are_ignored_and_lost_ends_are_counted() {
        let stats = PipelineStats::default();
        let mut blocks = OpenBlocks::new(1);
        blocks.start(start(7, 100, 0, 65_536), &stats);
        assert!(blocks.end(end(7, 99, 5 * MS)).is_none(), "another block of the thread");
        assert!(blocks.end(end(8, 100, 5 * MS)).is_none(), "another thread");
        blocks.start(start(8, 200, 0, 65_536), &stats);
        assert_eq!(blocks.len(), 1, "the table holds one block");
        assert_eq!(stats.drops().0[DropReason::OffCpuBlocksFull as usize], 1);
        // Thread 7 runs again without an end record: the block closes at that sample.
        assert!(blocks.ran(7, 0, &stats).is_none(), "not after the block began");
        let closed = blocks.ran(7, 3 * MS, &stats).unwrap();
        assert_eq!(closed.tally, Tally { count: 1, value: (3 * MS) as u64 });
        blocks.start(start(9, 300, 0, 65_536), &stats);
        blocks.start(start(9, 301, MS, 65_536), &stats);
        assert_eq!(stats.drops().0[DropReason::OffCpuEndLost as usize], 2);
    }
}
