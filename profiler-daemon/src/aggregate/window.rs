//! Time windows: the open one that samples are counted into, closed ones that are kept, and the
//! merge of several windows that a query answers with.

use std::{
    collections::HashMap,
    mem::size_of,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use super::frame::{CallSample, Frame, Labels, Stack, StackSample};
use crate::stats::{DropReason, DropSnapshot, PipelineStats};

/// Which samples a merge keeps, by their labels (a selector).
pub trait LabelFilter {
    /// Whether samples with these labels are kept.
    fn keeps(&self, labels: &Labels) -> bool;
}

/// Text of the stack that samples fold into once a window is full.
pub const OVERFLOW_FRAME: &str = "[stack table full]";

/// One distinct (labels, stack) with its sample count.
#[derive(Clone, Debug)]
pub struct WindowEntry {
    /// Labels of the sampled threads.
    pub labels: Arc<Labels>,
    /// The stack, leaf first.
    pub stack: Stack,
    /// Samples.
    pub count: u64,
}

/// Where a window's samples are kept: until the store has committed them, a query takes them
/// from memory. The open window's snapshots share the flag of the window that closes from
/// them, so a query never counts both the snapshot and the stored window.
#[derive(Debug, Default)]
pub struct Persisted(AtomicU8);

/// What became of a window on its way to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistState {
    /// Open, or closed and waiting for the writer.
    Pending,
    /// Committed to the store.
    Stored,
    /// Not stored: the writer's queue was full or the write failed. It stays in memory until
    /// memory retention drops it.
    Lost,
}

impl Persisted {
    /// The current state.
    pub fn get(&self) -> PersistState {
        match self.0.load(Ordering::Acquire) {
            0 => PersistState::Pending,
            1 => PersistState::Stored,
            _ => PersistState::Lost,
        }
    }

    /// Records the outcome of the write.
    pub fn set(&self, state: PersistState) {
        let code = match state {
            PersistState::Pending => 0,
            PersistState::Stored => 1,
            PersistState::Lost => 2,
        };
        self.0.store(code, Ordering::Release);
    }
}

/// A closed (or snapshotted) window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// End (exclusive), in nanoseconds since the Unix epoch.
    pub end_ns: i64,
    /// Samples counted in this window.
    pub samples: u64,
    /// Samples lost host-wide while this window was open.
    pub drops: DropSnapshot,
    /// The distinct stacks.
    pub entries: Vec<WindowEntry>,
    /// Python calls per (process, function), when the entry probe was on.
    pub calls: Vec<CallEntry>,
    /// Whether the store has this window's samples; shared with the open window's snapshots.
    pub persisted: Arc<Persisted>,
}

/// Calls of one function in one process.
#[derive(Clone, Debug)]
pub struct CallEntry {
    /// The process's labels.
    pub labels: Arc<Labels>,
    /// The function, as a frame at its first line.
    pub function: Arc<Frame>,
    /// Calls.
    pub count: u64,
}

impl Window {
    /// Rough heap bytes held by this window (frames are shared and not counted).
    pub fn approx_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| size_of::<WindowEntry>() + e.stack.len() * size_of::<Arc<Frame>>())
            .sum::<usize>()
            + self.calls.len() * size_of::<CallEntry>()
            + size_of::<Window>()
    }

    /// Whether this window overlaps `[start_ns, end_ns)`.
    pub fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.start_ns < end_ns && self.end_ns > start_ns
    }
}

/// The window that samples are being counted into.
#[derive(Debug)]
pub struct WindowBuilder {
    start_ns: i64,
    max_stacks: usize,
    samples: u64,
    drops_at_start: DropSnapshot,
    drops_at_end: Option<DropSnapshot>,
    entries: HashMap<(Arc<Labels>, Stack), u64>,
    calls: HashMap<(Arc<Labels>, Arc<Frame>), u64>,
    overflow: Stack,
    persisted: Arc<Persisted>,
}

impl WindowBuilder {
    /// An empty window starting at `start_ns`, holding at most `max_stacks` distinct stacks.
    pub fn new(start_ns: i64, max_stacks: usize, drops_at_start: DropSnapshot) -> WindowBuilder {
        WindowBuilder {
            start_ns,
            max_stacks,
            samples: 0,
            drops_at_start,
            drops_at_end: None,
            entries: HashMap::new(),
            calls: HashMap::new(),
            overflow: Arc::from([Arc::new(Frame::marker(OVERFLOW_FRAME))]),
            persisted: Arc::default(),
        }
    }

    /// Fixes the host-wide drops counted for this window at `drops_now`: its time is over, and
    /// later drops belong to the next window, even while this one takes late samples.
    pub fn end_drops(&mut self, drops_now: DropSnapshot) {
        self.drops_at_end.get_or_insert(drops_now);
    }

    /// Start of this window.
    pub fn start_ns(&self) -> i64 {
        self.start_ns
    }

    /// Distinct (labels, stack) entries so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts one sample. Once the window holds `max_stacks` entries, samples with a new stack
    /// are counted under an overflow stack of their process (and the overflow is counted).
    pub fn add(&mut self, sample: StackSample, stats: &PipelineStats) {
        self.samples += 1;
        let key = (sample.labels, sample.stack);
        if let Some(count) = self.entries.get_mut(&key) {
            *count += 1;
            return;
        }
        if self.entries.len() < self.max_stacks {
            self.entries.insert(key, 1);
            return;
        }
        stats.record_drop(DropReason::StackTableFull);
        let process = Labels { tid: 0, thread: Arc::from(""), ..Labels::clone(&key.0) };
        *self.entries.entry((Arc::new(process), self.overflow.clone())).or_insert(0) += 1;
    }

    /// Counts Python calls. They are bounded by the kernel's call table, not by `max_stacks`.
    pub fn add_calls(&mut self, calls: CallSample) {
        for (function, count) in calls.counts {
            *self.calls.entry((calls.labels.clone(), function)).or_insert(0) += count;
        }
    }

    fn call_entries(&self) -> Vec<CallEntry> {
        self.calls
            .iter()
            .map(|((labels, function), &count)| CallEntry {
                labels: labels.clone(),
                function: function.clone(),
                count,
            })
            .collect()
    }

    /// A copy of the window as it is now, ending at `now_ns`.
    pub fn snapshot(&self, now_ns: i64, drops_now: &DropSnapshot) -> Window {
        Window {
            start_ns: self.start_ns,
            end_ns: now_ns.max(self.start_ns),
            samples: self.samples,
            drops: self.drops_at_end.as_ref().unwrap_or(drops_now).since(&self.drops_at_start),
            entries: self
                .entries
                .iter()
                .map(|((labels, stack), &count)| WindowEntry {
                    labels: labels.clone(),
                    stack: stack.clone(),
                    count,
                })
                .collect(),
            calls: self.call_entries(),
            persisted: self.persisted.clone(),
        }
    }

    /// Closes the window at `end_ns`.
    pub fn close(self, end_ns: i64, drops_now: &DropSnapshot) -> Window {
        let drops = self.drops_at_end.as_ref().unwrap_or(drops_now).since(&self.drops_at_start);
        let calls = self.call_entries();
        Window {
            start_ns: self.start_ns,
            end_ns: end_ns.max(self.start_ns),
            samples: self.samples,
            drops,
            entries: self
                .entries
                .into_iter()
                .map(|((labels, stack), count)| WindowEntry { labels, stack, count })
                .collect(),
            calls,
            persisted: self.persisted,
        }
    }
}

/// Several windows merged, filtered by a selector.
#[derive(Debug, Default)]
pub struct MergedProfile {
    /// Start of the first window merged.
    pub start_ns: i64,
    /// End of the last window merged.
    pub end_ns: i64,
    /// Windows merged.
    pub windows: u64,
    /// Samples kept by the selector.
    pub samples: u64,
    /// Samples lost host-wide during the merged windows.
    pub drops: DropSnapshot,
    /// Distinct (labels, stack) entries with their counts.
    pub entries: HashMap<(Arc<Labels>, Stack), u64>,
    /// Python calls per (process, function).
    pub calls: HashMap<(Arc<Labels>, Arc<Frame>), u64>,
}

impl MergedProfile {
    /// Merges every window, keeping the samples that `selector` matches.
    pub fn merge<'a>(
        windows: impl IntoIterator<Item = &'a Window>,
        selector: &dyn LabelFilter,
    ) -> MergedProfile {
        let mut merged = MergedProfile::default();
        for window in windows {
            merged.add(window, selector);
        }
        merged
    }

    /// Adds one window, keeping the samples that `selector` matches.
    pub fn add(&mut self, window: &Window, selector: &dyn LabelFilter) {
        if self.windows == 0 {
            (self.start_ns, self.end_ns) = (window.start_ns, window.end_ns);
        }
        self.windows += 1;
        self.start_ns = self.start_ns.min(window.start_ns);
        self.end_ns = self.end_ns.max(window.end_ns);
        self.drops.add(&window.drops);
        for entry in &window.entries {
            if !selector.keeps(&entry.labels) {
                continue;
            }
            self.samples += entry.count;
            *self.entries.entry((entry.labels.clone(), entry.stack.clone())).or_insert(0) +=
                entry.count;
        }
        for call in &window.calls {
            if selector.keeps(&call.labels) {
                *self.calls.entry((call.labels.clone(), call.function.clone())).or_insert(0) +=
                    call.count;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate::FrameKind, selector::Selector};

    fn frame(name: &str) -> Arc<Frame> {
        Arc::new(Frame { kind: FrameKind::Native, ..Frame::marker(name) })
    }

    fn sample(pid: u32, names: &[&str]) -> StackSample {
        StackSample {
            time_ns: 0,
            labels: Arc::new(Labels { pid, comm: "app".into(), ..Labels::default() }),
            stack: names.iter().map(|n| frame(n)).collect(),
        }
    }

    #[test]
    fn equal_stacks_and_labels_share_one_entry() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        for _ in 0..3 {
            w.add(sample(1, &["leaf", "main"]), &stats);
        }
        w.add(sample(2, &["leaf", "main"]), &stats);
        w.add(sample(1, &["other", "main"]), &stats);
        let closed = w.close(10, &DropSnapshot::default());
        assert_eq!(closed.samples, 5);
        assert_eq!(closed.entries.len(), 3);
        let leaf_pid1 = closed
            .entries
            .iter()
            .find(|e| e.labels.pid == 1 && &*e.stack[0].function == "leaf")
            .unwrap();
        assert_eq!(leaf_pid1.count, 3);
    }

    #[test]
    fn a_full_window_folds_new_stacks_into_an_overflow_stack_and_counts_them() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 2, DropSnapshot::default());
        w.add(sample(1, &["a"]), &stats);
        w.add(sample(1, &["b"]), &stats);
        for name in ["c", "d", "e"] {
            w.add(sample(1, &[name]), &stats);
        }
        w.add(sample(1, &["a"]), &stats);
        assert_eq!(w.len(), 3, "two real stacks plus one overflow entry");
        assert_eq!(stats.drops().0[DropReason::StackTableFull as usize], 3);
        let closed = w.close(1, &stats.drops());
        let overflow =
            closed.entries.iter().find(|e| &*e.stack[0].function == OVERFLOW_FRAME).unwrap();
        assert_eq!(overflow.count, 3);
        assert_eq!(closed.samples, 6);
    }

    #[test]
    fn merge_filters_and_sums_across_windows() {
        let stats = PipelineStats::default();
        let mut windows = Vec::new();
        for start in [0, 10] {
            let mut w = WindowBuilder::new(start, 100, DropSnapshot::default());
            w.add(sample(1, &["a"]), &stats);
            w.add(sample(2, &["a"]), &stats);
            let mut drops = DropSnapshot::default();
            drops.0[0] = 2;
            windows.push(w.close(start + 10, &drops));
        }
        let selector: Selector = "pid=1".parse().unwrap();
        let merged = MergedProfile::merge(&windows, &selector);
        assert_eq!((merged.start_ns, merged.end_ns, merged.windows), (0, 20, 2));
        assert_eq!(merged.samples, 2);
        assert_eq!(merged.entries.len(), 1);
        assert_eq!(merged.drops.total(), 4);
    }

    #[test]
    fn overlap_is_half_open() {
        let w =
            WindowBuilder::new(10, 1, DropSnapshot::default()).close(20, &DropSnapshot::default());
        assert!(w.overlaps(0, 11));
        assert!(!w.overlaps(0, 10));
        assert!(!w.overlaps(20, 30));
        assert!(w.overlaps(19, 30));
    }
}
