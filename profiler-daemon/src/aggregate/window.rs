//! Time windows: the open one that samples are counted into, closed ones that are kept, and the
//! merge of several windows that a query answers with.

use std::{
    collections::{HashMap, HashSet},
    mem::size_of,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use super::{
    frame::{CallSample, Frame, Labels, Stack, StackSample, arc_bytes},
    kind::{Mode, SampleKind, Tally},
};
use crate::stats::{DropReason, DropSnapshot, PipelineStats};

/// Which samples a merge keeps, by their labels (a selector).
pub trait LabelFilter {
    /// Whether samples with these labels are kept.
    fn keeps(&self, labels: &Labels) -> bool;
}

/// Text of the stack that samples fold into once a window is full.
pub const OVERFLOW_FRAME: &str = "[stack table full]";

/// One distinct (kind, labels, stack) with its samples and their value.
#[derive(Clone, Debug)]
pub struct WindowEntry {
    /// What the samples measure.
    pub kind: SampleKind,
    /// Labels of the sampled threads.
    pub labels: Arc<Labels>,
    /// The stack, leaf first.
    pub stack: Stack,
    /// Samples.
    pub count: u64,
    /// Their value, in the kind's unit.
    pub value: u64,
}

impl WindowEntry {
    /// The count and value.
    pub fn tally(&self) -> Tally {
        Tally { count: self.count, value: self.value }
    }
}

/// The key of a window's entries.
type EntryKey = (SampleKind, Arc<Labels>, Stack);

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
    /// Rough heap bytes held by this window: its entries, and each distinct stack, frame and
    /// label set they point to. What the window shares with other windows and caches is
    /// counted here too, so the sum over windows is an upper bound.
    pub fn approx_bytes(&self) -> usize {
        let mut stacks = HashSet::new();
        let mut frames = HashSet::new();
        let mut labels = HashSet::new();
        let mut bytes = size_of::<Window>()
            + self.entries.len() * size_of::<WindowEntry>()
            + self.calls.len() * size_of::<CallEntry>();
        let mut add_labels = |l: &Arc<Labels>| {
            if labels.insert(Arc::as_ptr(l)) { l.approx_bytes() } else { 0 }
        };
        let mut add_frame = |f: &Arc<Frame>| {
            if frames.insert(Arc::as_ptr(f)) { f.approx_bytes() } else { 0 }
        };
        for e in &self.entries {
            bytes += add_labels(&e.labels);
            if stacks.insert(Arc::as_ptr(&e.stack).cast::<Arc<Frame>>()) {
                bytes += arc_bytes(e.stack.len() * size_of::<Arc<Frame>>());
                bytes += e.stack.iter().map(&mut add_frame).sum::<usize>();
            }
        }
        for c in &self.calls {
            bytes += add_labels(&c.labels) + add_frame(&c.function);
        }
        bytes
    }

    /// Whether this window overlaps `[start_ns, end_ns)`.
    pub fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.start_ns < end_ns && self.end_ns > start_ns
    }
}

/// Overflow entries (one per kind and process) a full window adds at most, past its
/// `max_stacks`.
pub const MAX_OVERFLOW_ENTRIES: usize = 4096;

/// The window that samples are being counted into.
#[derive(Debug)]
pub struct WindowBuilder {
    start_ns: i64,
    max_stacks: usize,
    samples: u64,
    drops_at_start: DropSnapshot,
    drops_at_end: Option<DropSnapshot>,
    // Keyed by whole stacks and label sets, hashed at every sample: foldhash rather than the
    // standard library's SipHash, which took most of the aggregator's time.
    entries: HashMap<EntryKey, Tally, foldhash::fast::RandomState>,
    calls: HashMap<(Arc<Labels>, Arc<Frame>), u64, foldhash::fast::RandomState>,
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
            entries: HashMap::default(),
            calls: HashMap::default(),
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

    /// Makes room for `entries` distinct entries (at most its bound) at once, rather than by
    /// doubling, which rehashes every entry each time.
    pub fn reserve(&mut self, entries: usize) {
        self.entries.reserve(entries.min(self.max_stacks));
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts one sample.
    pub fn add(&mut self, sample: StackSample, stats: &PipelineStats) {
        self.add_tally(sample.kind, sample.labels, sample.stack, Tally::one(sample.value), stats);
    }

    /// Counts `tally` for (kind, labels, stack). Once the window holds `max_stacks` entries,
    /// a new stack is counted under an overflow stack of its process (and the overflow is
    /// counted); once those overflow entries are [`MAX_OVERFLOW_ENTRIES`] more, under one
    /// overflow stack of its kind for the whole host (labels all empty, pid 0).
    pub fn add_tally(
        &mut self,
        kind: SampleKind,
        labels: Arc<Labels>,
        stack: Stack,
        tally: Tally,
        stats: &PipelineStats,
    ) {
        if kind.is_event() {
            self.samples = self.samples.saturating_add(tally.count);
        }
        let key = (kind, labels, stack);
        if let Some(slot) = self.entries.get_mut(&key) {
            slot.add(tally);
            return;
        }
        if self.entries.len() < self.max_stacks {
            self.entries.insert(key, tally);
            return;
        }
        stats.record_drop(DropReason::StackTableFull);
        let process = Labels { tid: 0, thread: Arc::from(""), ..Labels::clone(&key.1) };
        let mut overflow = (kind, Arc::new(process), self.overflow.clone());
        if self.entries.len() >= self.max_stacks.saturating_add(MAX_OVERFLOW_ENTRIES)
            && !self.entries.contains_key(&overflow)
        {
            overflow.1 = Arc::new(Labels::default());
        }
        self.entries.entry(overflow).or_default().add(tally);
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
                .map(|((kind, labels, stack), tally)| WindowEntry {
                    kind: *kind,
                    labels: labels.clone(),
                    stack: stack.clone(),
                    count: tally.count,
                    value: tally.value,
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
                .map(|((kind, labels, stack), tally)| WindowEntry {
                    kind,
                    labels,
                    stack,
                    count: tally.count,
                    value: tally.value,
                })
                .collect(),
            calls,
            persisted: self.persisted,
        }
    }
}

/// Several windows merged, filtered by a selector, in one [`Mode`].
///
/// In a mode that counts time off the CPU, the blocked time of threads that were never on a
/// CPU in the merged range (a pool of idle workers) is left out unless `idle` is set: it would
/// drown the answer. [`MergedProfile::finish`] applies that rule once every window is in.
#[derive(Debug, Default)]
pub struct MergedProfile {
    /// What the entries' values mean.
    pub mode: Mode,
    /// Whether threads that never ran keep their blocked time.
    pub idle: bool,
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
    /// Distinct (labels, stack) entries with their samples and value.
    pub entries: HashMap<(Arc<Labels>, Stack), Tally>,
    /// Python calls per (process, function).
    pub calls: HashMap<(Arc<Labels>, Arc<Frame>), u64>,
    /// Off-CPU time of threads that never ran in the range, left out (see `idle`).
    pub idle_left_out: Tally,
    /// Threads (processes, when samples are not grouped by thread) that never ran and were
    /// left out.
    pub idle_threads: u64,
    /// Off-CPU entries waiting for [`MergedProfile::finish`] to know which threads ran.
    blocked: HashMap<(Arc<Labels>, Stack), Tally>,
    /// Threads with a CPU sample, as (pid, tid).
    ran: HashSet<(u32, u32)>,
}

impl MergedProfile {
    /// An empty profile in `mode`.
    pub fn new(mode: Mode, idle: bool) -> MergedProfile {
        MergedProfile { mode, idle, ..MergedProfile::default() }
    }

    /// Merges every window, keeping the samples that `selector` matches, and finishes.
    pub fn merge<'a>(
        windows: impl IntoIterator<Item = &'a Window>,
        selector: &dyn LabelFilter,
        mode: Mode,
        idle: bool,
    ) -> MergedProfile {
        let mut merged = MergedProfile::new(mode, idle);
        for window in windows {
            merged.add(window, selector);
        }
        merged.finish();
        merged
    }

    /// Adds one window, keeping the samples that `selector` matches.
    pub fn add(&mut self, window: &Window, selector: &dyn LabelFilter) {
        self.add_span(window.start_ns, window.end_ns, 1, &window.drops);
        for entry in &window.entries {
            if entry.kind == SampleKind::Cpu {
                self.note_ran(&entry.labels);
            }
            if selector.keeps(&entry.labels) {
                self.add_entry(entry.kind, &entry.labels, &entry.stack, entry.tally());
            }
        }
        for call in &window.calls {
            if selector.keeps(&call.labels) {
                *self.calls.entry((call.labels.clone(), call.function.clone())).or_insert(0) +=
                    call.count;
            }
        }
    }

    /// Widens the merged range by `windows` windows covering `[start_ns, end_ns)`.
    pub fn add_span(&mut self, start_ns: i64, end_ns: i64, windows: u64, drops: &DropSnapshot) {
        if self.windows == 0 {
            (self.start_ns, self.end_ns) = (start_ns, end_ns);
        }
        self.windows = self.windows.saturating_add(windows);
        self.start_ns = self.start_ns.min(start_ns);
        self.end_ns = self.end_ns.max(end_ns);
        self.drops.add(drops);
    }

    /// Notes that the thread of `labels` was on a CPU in the range, whether or not the
    /// selector keeps its samples (a selector on `reason` keeps no CPU sample, yet the thread
    /// ran).
    pub fn note_ran(&mut self, labels: &Labels) {
        self.ran.insert((labels.pid, labels.tid));
    }

    /// Adds one entry that the selector kept.
    pub fn add_entry(&mut self, kind: SampleKind, labels: &Arc<Labels>, stack: &Stack, t: Tally) {
        if !self.mode.keeps(kind, labels) {
            return;
        }
        let key = (labels.clone(), stack.clone());
        if kind == SampleKind::OffCpu && !self.idle {
            self.blocked.entry(key).or_default().add(t);
            return;
        }
        self.samples = self.samples.saturating_add(t.count);
        self.entries.entry(key).or_default().add(t);
    }

    /// Adds the off-CPU time of the threads that ran (or of all, with `idle`). Call it once
    /// every window is in; calling it again does nothing.
    pub fn finish(&mut self) {
        let mut idle = HashSet::new();
        for ((labels, stack), t) in std::mem::take(&mut self.blocked) {
            if self.ran.contains(&(labels.pid, labels.tid)) {
                self.samples = self.samples.saturating_add(t.count);
                self.entries.entry((labels, stack)).or_default().add(t);
            } else {
                self.idle_left_out.add(t);
                idle.insert((labels.pid, labels.tid));
            }
        }
        self.idle_threads += idle.len() as u64;
    }

    /// The sum of the entries' values.
    pub fn value(&self) -> u64 {
        self.entries.values().fold(0u64, |sum, t| sum.saturating_add(t.value))
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
            kind: SampleKind::Cpu,
            value: 10,
            tid: pid,
        }
    }

    fn blocked(pid: u32, names: &[&str], value: u64) -> StackSample {
        StackSample { kind: SampleKind::OffCpu, value, ..sample(pid, names) }
    }

    #[test]
    fn the_size_estimate_counts_frames_and_labels_once_each() {
        let stats = PipelineStats::default();
        let long = "f".repeat(10_000);
        let stack: Stack = vec![frame(&long), frame("main")].into();
        let labels =
            Arc::new(Labels { pid: 1, exe: "x".repeat(5_000).into(), ..Labels::default() });
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        for kind in [SampleKind::Cpu, SampleKind::OffCpu] {
            let s = StackSample {
                labels: labels.clone(),
                stack: stack.clone(),
                kind,
                ..sample(1, &[])
            };
            w.add(s, &stats);
        }
        let closed = w.close(10, &DropSnapshot::default());
        assert_eq!(closed.entries.len(), 2);
        let bytes = closed.approx_bytes();
        // The 10,000-byte name and the 5,000-byte path, each counted once.
        assert!((15_000..20_000).contains(&bytes), "{bytes}");
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
        assert_eq!((leaf_pid1.count, leaf_pid1.value), (3, 30));
    }

    #[test]
    fn resident_readings_are_kept_but_are_no_samples() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        w.add(sample(1, &["leaf"]), &stats);
        w.add(
            StackSample { kind: SampleKind::Resident, value: 4096, ..sample(1, &["[anonymous]"]) },
            &stats,
        );
        let closed = w.close(10, &DropSnapshot::default());
        assert_eq!((closed.samples, closed.entries.len()), (1, 2));
        let all: Selector = "".parse().unwrap();
        let cpu = MergedProfile::merge([&closed], &all, Mode::Cpu, false);
        assert_eq!((cpu.samples, cpu.entries.len()), (1, 1));
        let resident = MergedProfile::merge([&closed], &all, Mode::Resident, false);
        let tallies: Vec<Tally> = resident.entries.values().copied().collect();
        assert_eq!(tallies, [Tally { count: 1, value: 4096 }]);
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
    fn overflow_entries_are_bounded_too() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 2, DropSnapshot::default());
        // Two stacks fill it; then a new stack from each of many processes.
        w.add(sample(1, &["a"]), &stats);
        w.add(sample(1, &["b"]), &stats);
        let processes = MAX_OVERFLOW_ENTRIES as u32 + 500;
        for pid in 2..2 + processes {
            w.add(sample(pid, &["c"]), &stats);
        }
        // The processes' own overflow entries up to the bound, then one for the host.
        assert_eq!(w.len(), 2 + MAX_OVERFLOW_ENTRIES + 1);
        let closed = w.close(1, &stats.drops());
        let host = closed.entries.iter().find(|e| e.labels.pid == 0).unwrap();
        assert_eq!(host.count, u64::from(processes) - MAX_OVERFLOW_ENTRIES as u64);
        assert_eq!(closed.samples, 2 + u64::from(processes));
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
        let merged = MergedProfile::merge(&windows, &selector, Mode::Cpu, false);
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

    #[test]
    fn each_mode_reads_its_kinds_and_idle_threads_stay_out_unless_asked_for() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        // Process 1 runs and blocks; process 2 only sleeps.
        w.add(sample(1, &["work", "main"]), &stats);
        w.add(blocked(1, &["read", "main"], 300), &stats);
        w.add(blocked(1, &["read", "main"], 200), &stats);
        w.add(blocked(2, &["sleep", "main"], 5_000), &stats);
        let windows = [w.close(10, &DropSnapshot::default())];
        let everything: Selector = "".parse().unwrap();
        let value = |m: &MergedProfile, pid: u32, leaf: &str| {
            m.entries
                .iter()
                .find(|((l, s), _)| l.pid == pid && &*s[0].function == leaf)
                .map(|(_, t)| t.value)
        };

        let cpu = MergedProfile::merge(&windows, &everything, Mode::Cpu, false);
        assert_eq!((cpu.entries.len(), cpu.value()), (1, 10));

        let wall = MergedProfile::merge(&windows, &everything, Mode::Wall, false);
        assert_eq!(value(&wall, 1, "work"), Some(10));
        assert_eq!(value(&wall, 1, "read"), Some(500));
        assert_eq!(value(&wall, 2, "sleep"), None, "a process that never ran is left out");
        assert_eq!((wall.idle_threads, wall.idle_left_out.value), (1, 5_000));
        assert_eq!(wall.samples, 3);

        let off = MergedProfile::merge(&windows, &everything, Mode::OffCpu, true);
        assert_eq!(value(&off, 1, "work"), None);
        assert_eq!(value(&off, 2, "sleep"), Some(5_000), "--idle keeps it");
        assert_eq!((off.value(), off.idle_threads), (5_500, 0));
    }

    #[test]
    fn the_gil_mode_reads_cpu_time_holding_the_gil_and_waits_for_it() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        let labelled = |s: StackSample, gil: &str, reason: &str| StackSample {
            labels: Arc::new(Labels {
                gil: gil.into(),
                reason: reason.into(),
                ..(*s.labels).clone()
            }),
            ..s
        };
        w.add(labelled(sample(1, &["compute"]), "held", ""), &stats);
        w.add(labelled(sample(1, &["zlib"]), "released", ""), &stats);
        w.add(labelled(blocked(1, &["take_gil"], 700), "", "gil"), &stats);
        w.add(labelled(blocked(1, &["read"], 300), "", "io"), &stats);
        let windows = [w.close(10, &DropSnapshot::default())];
        let everything: Selector = "".parse().unwrap();
        let gil = MergedProfile::merge(&windows, &everything, Mode::Gil, false);
        let mut leaves: Vec<(String, u64)> =
            gil.entries.iter().map(|((_, s), t)| (s[0].function.to_string(), t.value)).collect();
        leaves.sort();
        assert_eq!(leaves, [("compute".to_owned(), 10), ("take_gil".to_owned(), 700)]);
    }

    #[test]
    fn a_selector_on_the_reason_does_not_make_a_thread_that_ran_idle() {
        let stats = PipelineStats::default();
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        w.add(sample(1, &["work"]), &stats);
        let io = blocked(1, &["read"], 300);
        let io = StackSample {
            labels: Arc::new(Labels { reason: "io".into(), ..(*io.labels).clone() }),
            ..io
        };
        w.add(io, &stats);
        let windows = [w.close(10, &DropSnapshot::default())];
        let io: Selector = "reason=io".parse().unwrap();
        let merged = MergedProfile::merge(&windows, &io, Mode::OffCpu, false);
        assert_eq!((merged.value(), merged.idle_threads), (300, 0));
    }
}
