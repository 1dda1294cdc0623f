//! The store's records and the dictionaries that deduplicate frames, stacks and labels.
//!
//! Records are protobuf messages (prost), so that fields can be added without breaking stored
//! data. A window refers to labels, stacks and frames by id; each distinct one is stored once,
//! whichever window first needed it.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Arc,
};

use prost::Message;

use crate::{
    aggregate::{Frame, FrameKind, Labels, Module, SampleKind, Stack, Tally},
    stats::DropSnapshot,
};

/// A frame as stored.
#[derive(Clone, PartialEq, Message)]
pub struct FrameRecord {
    /// 0 kernel, 1 native, 2 Python, 3 marker.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// Function name.
    #[prost(string, tag = "2")]
    pub function: String,
    /// Module path, empty without a module.
    #[prost(string, tag = "3")]
    pub module: String,
    /// Build-id of the module.
    #[prost(string, optional, tag = "4")]
    pub build_id: Option<String>,
    /// File offset or kernel address.
    #[prost(uint64, tag = "5")]
    pub address: u64,
    /// Source file.
    #[prost(string, optional, tag = "6")]
    pub file: Option<String>,
    /// Line.
    #[prost(uint32, tag = "7")]
    pub line: u32,
    /// First line of the function.
    #[prost(uint32, tag = "8")]
    pub start_line: u32,
}

/// A stack as stored: frame ids, leaf first.
#[derive(Clone, PartialEq, Message)]
pub struct StackRecord {
    /// Frame ids.
    #[prost(uint64, repeated, tag = "1")]
    pub frames: Vec<u64>,
}

/// Labels as stored.
#[derive(Clone, PartialEq, Message)]
pub struct LabelsRecord {
    /// Process id.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// Thread id.
    #[prost(uint32, tag = "2")]
    pub tid: u32,
    /// Process name.
    #[prost(string, tag = "3")]
    pub comm: String,
    /// Thread name.
    #[prost(string, tag = "4")]
    pub thread: String,
    /// Executable.
    #[prost(string, tag = "5")]
    pub exe: String,
    /// cgroup path.
    #[prost(string, tag = "6")]
    pub cgroup: String,
    /// Container id.
    #[prost(string, tag = "7")]
    pub container: String,
    /// Pod UID.
    #[prost(string, tag = "8")]
    pub pod_uid: String,
    /// Runtime.
    #[prost(string, tag = "9")]
    pub runtime: String,
    /// Pod name.
    #[prost(string, tag = "10")]
    pub pod: String,
    /// Pod namespace.
    #[prost(string, tag = "11")]
    pub namespace: String,
    /// Container name.
    #[prost(string, tag = "12")]
    pub container_name: String,
    /// Why an off-CPU sample's thread was off the CPU.
    #[prost(string, tag = "13")]
    pub reason: String,
    /// Whether a Python thread held the GIL.
    #[prost(string, tag = "14")]
    pub gil: String,
}

/// A window, or a rollup of several, as stored.
#[derive(Clone, PartialEq, Message)]
pub struct WindowRecord {
    /// Start, nanoseconds since the epoch.
    #[prost(int64, tag = "1")]
    pub start_ns: i64,
    /// End.
    #[prost(int64, tag = "2")]
    pub end_ns: i64,
    /// Samples.
    #[prost(uint64, tag = "3")]
    pub samples: u64,
    /// Drops per reason, indexed like `DropReason::ALL`.
    #[prost(uint64, repeated, tag = "4")]
    pub drops: Vec<u64>,
    /// (labels id, stack id, count) triples of CPU samples, as records written before sample
    /// kinds existed hold them; new records use `tallies`.
    #[prost(uint64, repeated, tag = "5")]
    pub entries: Vec<u64>,
    /// (labels id, frame id, calls) triples.
    #[prost(uint64, repeated, tag = "6")]
    pub calls: Vec<u64>,
    /// Windows merged into this record.
    #[prost(uint64, tag = "7")]
    pub windows: u64,
    /// (kind, labels id, stack id, count, value) quintuples; the kind is a
    /// [`SampleKind::code`] and the value is in its unit.
    #[prost(uint64, repeated, tag = "8")]
    pub tallies: Vec<u64>,
}

impl WindowRecord {
    /// Adds `other` into this record. Counts saturate: a record read from a damaged file can
    /// hold any values.
    pub fn merge(&mut self, other: &WindowRecord) {
        if self.windows == 0 {
            self.start_ns = other.start_ns;
        }
        self.start_ns = self.start_ns.min(other.start_ns);
        self.end_ns = self.end_ns.max(other.end_ns);
        self.samples = self.samples.saturating_add(other.samples);
        self.windows = self.windows.saturating_add(other.windows);
        if self.drops.len() < other.drops.len() {
            self.drops.resize(other.drops.len(), 0);
        }
        for (slot, d) in self.drops.iter_mut().zip(&other.drops) {
            *slot = slot.saturating_add(*d);
        }
        self.entries = merge_triples(&self.entries, &other.entries);
        self.calls = merge_triples(&self.calls, &other.calls);
        self.tallies = merge_tallies(&self.tallies, &other.tallies);
    }

    /// Every entry as (kind code, labels id, stack id, tally), the legacy CPU triples
    /// included (valued at [`LEGACY_CPU_PERIOD_NS`] per sample).
    pub fn each_tally(&self) -> impl Iterator<Item = (u64, u64, u64, Tally)> + '_ {
        let legacy = self.entries.chunks_exact(3).map(|t| {
            let value = t[2].saturating_mul(LEGACY_CPU_PERIOD_NS);
            (SampleKind::Cpu.code(), t[0], t[1], Tally { count: t[2], value })
        });
        let tallies = self
            .tallies
            .chunks_exact(5)
            .map(|q| (q[0], q[1], q[2], Tally { count: q[3], value: q[4] }));
        legacy.chain(tallies)
    }

    /// The drops as a snapshot.
    pub fn drop_snapshot(&self) -> DropSnapshot {
        let mut out = DropSnapshot::default();
        for (slot, d) in out.0.iter_mut().zip(&self.drops) {
            *slot = *d;
        }
        out
    }
}

/// The CPU time of one sample in records written before sample kinds existed: the period of
/// the default 99 Hz.
pub const LEGACY_CPU_PERIOD_NS: u64 = 1_000_000_000 / 99;

/// Sums `(kind, labels, stack, count, value)` quintuples with equal keys, in a stable order.
fn merge_tallies(x: &[u64], y: &[u64]) -> Vec<u64> {
    // Where each key's quintuple is in `out`: the merged record is written as it is read.
    let mut at: FastMap<(u64, u64, u64), usize> =
        FastMap::with_capacity_and_hasher((x.len() + y.len()) / 5, Default::default());
    let mut out = Vec::with_capacity(x.len() + y.len());
    for q in x.chunks_exact(5).chain(y.chunks_exact(5)) {
        match at.entry((q[0], q[1], q[2])) {
            Entry::Occupied(slot) => {
                let i = *slot.get();
                let mut tally = Tally { count: out[i + 3], value: out[i + 4] };
                tally.add(Tally { count: q[3], value: q[4] });
                out[i + 3] = tally.count;
                out[i + 4] = tally.value;
            }
            Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.extend_from_slice(q);
            }
        }
    }
    out
}

/// Sums `(a, b, count)` triples with equal `(a, b)`, in a stable order.
fn merge_triples(x: &[u64], y: &[u64]) -> Vec<u64> {
    let mut at: FastMap<(u64, u64), usize> =
        FastMap::with_capacity_and_hasher((x.len() + y.len()) / 3, Default::default());
    let mut out: Vec<u64> = Vec::with_capacity(x.len() + y.len());
    for t in x.chunks_exact(3).chain(y.chunks_exact(3)) {
        match at.entry((t[0], t[1])) {
            Entry::Occupied(slot) => {
                let i = *slot.get() + 2;
                out[i] = out[i].saturating_add(t[2]);
            }
            Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.extend_from_slice(t);
            }
        }
    }
    out
}

/// A hash map keyed by ids, merged for every window the store writes: foldhash rather than
/// SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Frames, stacks and labels the dictionary remembers the ids of, per table: a bound on its
/// memory whatever the store holds.
pub const DICTIONARY_CAPACITY: usize = 16_384;

/// Rows waiting to be written at most (frames, stacks and label sets; a few hundred bytes
/// each): past this, after the disk has refused writes for long, the dictionary starts over
/// (see [`Dictionary::start_over`]).
pub const MAX_PENDING_ROWS: usize = 65_536;

/// Interns frames, stacks and labels for writing. It remembers the ids of the most recently
/// used ones, at most a capacity per table, so that a window refers to a row already stored;
/// one that was forgotten gets a new id and a new row, and the store then holds equal rows
/// under two ids, which queries merge by what they hold. New rows are queued for writing.
/// Reading goes through a [`Decoder`], from the stored rows.
#[derive(Debug)]
pub struct Dictionary {
    frames: lru::LruCache<Arc<Frame>, u64>,
    stacks: lru::LruCache<Stack, u64>,
    labels: lru::LruCache<Arc<Labels>, u64>,
    next_id: u64,
    /// Frames, stacks and labels not yet written: (table, id, bytes).
    pub pending: Vec<(Table, u64, Vec<u8>)>,
}

impl Default for Dictionary {
    fn default() -> Dictionary {
        Dictionary::with_capacity(DICTIONARY_CAPACITY)
    }
}

/// Reads frames, stacks and labels back by id through `read` (which returns a stored row),
/// caching what it decoded: one query's view of the dictionary tables.
pub struct Decoder<R> {
    read: R,
    frames: HashMap<u64, Option<Arc<Frame>>>,
    stacks: HashMap<u64, Option<Stack>>,
    labels: HashMap<u64, Option<Arc<Labels>>>,
    modules: HashMap<(String, Option<String>), Arc<Module>>,
}

impl<R> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("frames", &self.frames.len())
            .field("stacks", &self.stacks.len())
            .field("labels", &self.labels.len())
            .finish_non_exhaustive()
    }
}

impl<R: FnMut(Table, u64) -> Option<Vec<u8>>> Decoder<R> {
    /// A decoder reading rows with `read`.
    pub fn new(read: R) -> Decoder<R> {
        Decoder {
            read,
            frames: HashMap::new(),
            stacks: HashMap::new(),
            labels: HashMap::new(),
            modules: HashMap::new(),
        }
    }

    /// The frame with id `id`, if it is stored and decodes.
    pub fn frame(&mut self, id: u64) -> Option<Arc<Frame>> {
        if let Some(frame) = self.frames.get(&id) {
            return frame.clone();
        }
        let frame = (self.read)(Table::Frames, id)
            .and_then(|bytes| decode_frame(&bytes, &mut self.modules).ok());
        self.frames.insert(id, frame.clone());
        frame
    }

    /// The stack with id `id`, if it and its frames are stored and decode.
    pub fn stack(&mut self, id: u64) -> Option<Stack> {
        if let Some(stack) = self.stacks.get(&id) {
            return stack.clone();
        }
        let stack = (self.read)(Table::Stacks, id)
            .and_then(|bytes| stack_frames(&bytes).ok())
            .and_then(|ids| ids.into_iter().map(|f| self.frame(f)).collect::<Option<Vec<_>>>())
            .map(Stack::from);
        self.stacks.insert(id, stack.clone());
        stack
    }

    /// The labels with id `id`, if they are stored and decode.
    pub fn labels(&mut self, id: u64) -> Option<Arc<Labels>> {
        if let Some(labels) = self.labels.get(&id) {
            return labels.clone();
        }
        let labels = (self.read)(Table::Labels, id).and_then(|bytes| decode_labels(&bytes).ok());
        self.labels.insert(id, labels.clone());
        labels
    }
}

/// A stored frame; `modules` shares equal modules between frames.
fn decode_frame(
    bytes: &[u8],
    modules: &mut HashMap<(String, Option<String>), Arc<Module>>,
) -> Result<Arc<Frame>, Damaged> {
    let r = FrameRecord::decode(bytes).map_err(|e| Damaged(format!("frame: {e}")))?;
    let module = (!r.module.is_empty()).then(|| {
        modules
            .entry((r.module.clone(), r.build_id.clone()))
            .or_insert_with(|| {
                Arc::new(Module {
                    path: r.module.as_str().into(),
                    build_id: r.build_id.as_deref().map(Into::into),
                })
            })
            .clone()
    });
    Ok(Arc::new(Frame {
        kind: kind_of(r.kind),
        function: r.function.into(),
        module,
        address: r.address,
        file: r.file.map(Into::into),
        line: r.line,
        start_line: r.start_line,
    }))
}

/// Stored labels.
fn decode_labels(bytes: &[u8]) -> Result<Arc<Labels>, Damaged> {
    let r = LabelsRecord::decode(bytes).map_err(|e| Damaged(format!("labels: {e}")))?;
    Ok(Arc::new(Labels {
        pid: r.pid,
        tid: r.tid,
        comm: r.comm.into(),
        thread: r.thread.into(),
        exe: r.exe.into(),
        cgroup: r.cgroup.into(),
        container: r.container.into(),
        pod_uid: r.pod_uid.into(),
        pod: r.pod.into(),
        namespace: r.namespace.into(),
        container_name: r.container_name.into(),
        runtime: r.runtime.into(),
        reason: r.reason.into(),
        gil: r.gil.into(),
    }))
}

/// Whether a stored row of `table` decodes (what opening the store checks).
pub fn check_row(table: Table, bytes: &[u8]) -> Result<(), Damaged> {
    match table {
        Table::Frames => FrameRecord::decode(bytes).map(drop),
        Table::Stacks => StackRecord::decode(bytes).map(drop),
        Table::Labels => LabelsRecord::decode(bytes).map(drop),
    }
    .map_err(|e| Damaged(format!("{table:?} row: {e}")))
}

/// Which dictionary table a pending record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Frames.
    Frames,
    /// Stacks.
    Stacks,
    /// Labels.
    Labels,
}

fn kind_code(kind: FrameKind) -> u32 {
    match kind {
        FrameKind::Kernel => 0,
        FrameKind::Native => 1,
        FrameKind::Python => 2,
        FrameKind::Marker => 3,
    }
}

fn kind_of(code: u32) -> FrameKind {
    match code {
        0 => FrameKind::Kernel,
        1 => FrameKind::Native,
        2 => FrameKind::Python,
        _ => FrameKind::Marker,
    }
}

/// The dictionary ids that stored records refer to.
#[derive(Debug, Default)]
pub struct LiveIds {
    labels: HashSet<u64>,
    stacks: HashSet<u64>,
    frames: HashSet<u64>,
}

impl LiveIds {
    /// Whether the row `id` of `table` is referred to.
    pub fn holds(&self, table: Table, id: u64) -> bool {
        match table {
            Table::Frames => self.frames.contains(&id),
            Table::Stacks => self.stacks.contains(&id),
            Table::Labels => self.labels.contains(&id),
        }
    }

    /// The live stacks.
    pub fn stacks(&self) -> impl Iterator<Item = u64> + '_ {
        self.stacks.iter().copied()
    }

    /// Adds frames that a live stack refers to.
    pub fn add_frames(&mut self, frames: impl IntoIterator<Item = u64>) {
        self.frames.extend(frames);
    }

    /// Adds the ids that `record` refers to.
    pub fn add(&mut self, record: &WindowRecord) {
        for (_, labels, stack, _) in record.each_tally() {
            self.labels.insert(labels);
            self.stacks.insert(stack);
        }
        for t in record.calls.chunks_exact(3) {
            self.labels.insert(t[0]);
            self.frames.insert(t[1]);
        }
    }
}

/// The frame ids of a stored stack.
pub fn stack_frames(bytes: &[u8]) -> Result<Vec<u64>, Damaged> {
    StackRecord::decode(bytes).map(|r| r.frames).map_err(|e| Damaged(format!("stack: {e}")))
}

/// A stored record that does not decode or refers to a missing id.
#[derive(Debug, thiserror::Error)]
#[error("damaged record: {0}")]
pub struct Damaged(pub String);

impl Dictionary {
    /// A dictionary that remembers at most `capacity` entries per table.
    pub fn with_capacity(capacity: usize) -> Dictionary {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Dictionary {
            frames: lru::LruCache::new(capacity),
            stacks: lru::LruCache::new(capacity),
            labels: lru::LruCache::new(capacity),
            next_id: 1,
            pending: Vec::new(),
        }
    }

    /// Hands out ids above `id` from now on (the largest id stored).
    pub fn ids_above(&mut self, id: u64) {
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The id of `frame`, interning it.
    pub fn frame_id(&mut self, frame: &Arc<Frame>) -> u64 {
        if let Some(&id) = self.frames.get(frame) {
            return id;
        }
        let id = self.fresh_id();
        let record = FrameRecord {
            kind: kind_code(frame.kind),
            function: frame.function.to_string(),
            module: frame.module.as_ref().map(|m| m.path.to_string()).unwrap_or_default(),
            build_id: frame.module.as_ref().and_then(|m| m.build_id.as_deref().map(Into::into)),
            address: frame.address,
            file: frame.file.as_deref().map(Into::into),
            line: frame.line,
            start_line: frame.start_line,
        };
        self.pending.push((Table::Frames, id, record.encode_to_vec()));
        self.frames.put(frame.clone(), id);
        id
    }

    /// The id of `stack`, interning it and its frames.
    pub fn stack_id(&mut self, stack: &Stack) -> u64 {
        if let Some(&id) = self.stacks.get(stack) {
            return id;
        }
        let frames = stack.iter().map(|f| self.frame_id(f)).collect();
        let id = self.fresh_id();
        self.pending.push((Table::Stacks, id, StackRecord { frames }.encode_to_vec()));
        self.stacks.put(stack.clone(), id);
        id
    }

    /// The id of `labels`, interning them.
    pub fn labels_id(&mut self, labels: &Arc<Labels>) -> u64 {
        if let Some(&id) = self.labels.get(labels) {
            return id;
        }
        let id = self.fresh_id();
        let l = labels;
        let record = LabelsRecord {
            pid: l.pid,
            tid: l.tid,
            comm: l.comm.to_string(),
            thread: l.thread.to_string(),
            exe: l.exe.to_string(),
            cgroup: l.cgroup.to_string(),
            container: l.container.to_string(),
            pod_uid: l.pod_uid.to_string(),
            pod: l.pod.to_string(),
            namespace: l.namespace.to_string(),
            container_name: l.container_name.to_string(),
            runtime: l.runtime.to_string(),
            reason: l.reason.to_string(),
            gil: l.gil.to_string(),
        };
        self.pending.push((Table::Labels, id, record.encode_to_vec()));
        self.labels.put(labels.clone(), id);
        id
    }

    /// Forgets every id it remembers and every row waiting to be written, and returns how many
    /// rows it dropped. No stored window refers to a waiting row (a window is committed
    /// together with the rows it needs), so later windows simply intern their frames, stacks
    /// and labels again under new ids: the waiting rows cannot grow without bound while writes
    /// fail.
    pub fn start_over(&mut self) -> usize {
        let dropped = self.pending.len();
        self.frames.clear();
        self.stacks.clear();
        self.labels.clear();
        self.pending = Vec::new();
        dropped
    }

    /// Forgets the ids in `dead` (rows a sweep deleted). Ids are not handed out again while
    /// the daemon runs, so one that a reader still holds cannot name something else.
    pub fn forget(&mut self, dead: &HashSet<(Table, u64)>) {
        // Rows of a window that failed to write are still queued; a forgotten id is not
        // written later.
        self.pending.retain(|(table, id, _)| !dead.contains(&(*table, *id)));
        fn drop_dead<K: std::hash::Hash + Eq + Clone>(
            cache: &mut lru::LruCache<K, u64>,
            table: Table,
            dead: &HashSet<(Table, u64)>,
        ) {
            let gone: Vec<K> = cache
                .iter()
                .filter(|(_, id)| dead.contains(&(table, **id)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                cache.pop(&k);
            }
        }
        drop_dead(&mut self.frames, Table::Frames, dead);
        drop_dead(&mut self.stacks, Table::Stacks, dead);
        drop_dead(&mut self.labels, Table::Labels, dead);
    }

    /// Rough bytes held: the three tables with what their keys point to (shared with the
    /// windows, and counted here too), and the rows waiting to be written.
    pub fn approx_bytes(&self) -> usize {
        use crate::{
            aggregate::arc_bytes,
            caches::{estimate, table_bytes},
        };
        let (frames, stacks, labels) = (self.frames.len(), self.stacks.len(), self.labels.len());
        let stack_bytes = |s: &Stack| arc_bytes(s.len() * size_of::<Arc<Frame>>());
        table_bytes::<(Arc<Frame>, u64)>(frames)
            + estimate(self.frames.iter().map(|(f, _)| f.approx_bytes()), frames)
            + table_bytes::<(Stack, u64)>(stacks)
            + estimate(self.stacks.iter().map(|(s, _)| stack_bytes(s)), stacks)
            + table_bytes::<(Arc<Labels>, u64)>(labels)
            + estimate(self.labels.iter().map(|(l, _)| l.approx_bytes()), labels)
            + self
                .pending
                .iter()
                .map(|(_, _, row)| size_of::<(Table, u64, Vec<u8>)>() + row.capacity())
                .sum::<usize>()
    }

    /// Frames, stacks and labels whose ids are remembered.
    pub fn len(&self) -> usize {
        self.frames.len() + self.stacks.len() + self.labels.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_huge_counts_merge_without_overflow() {
        // Found by the `store_codec` fuzz target: a record whose counts overflow when it is
        // merged with itself, as a damaged file could hold.
        let bytes = [
            0x32, 0x32, 0x0a, 0xff, 0xff, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b,
            0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0x05, 0x1a,
            0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0xb1, 0xce, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a,
            0x4a, 0x4a, 0x34, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x4a, 0x02, 0x1a, 0x00,
            0x32, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
        ];
        let record = WindowRecord::decode(&bytes[..]).expect("it decodes");
        let mut merged = record.clone();
        merged.merge(&record);
        assert!(merged.entries.chunks_exact(3).all(|t| t[2] >= 1));
        let huge = WindowRecord {
            samples: u64::MAX,
            windows: u64::MAX,
            drops: vec![u64::MAX],
            entries: vec![1, 2, u64::MAX],
            ..WindowRecord::default()
        };
        let mut sum = huge.clone();
        sum.merge(&huge);
        assert_eq!(
            (sum.samples, sum.windows, sum.drops[0], sum.entries[2]),
            (u64::MAX, u64::MAX, u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn tallies_merge_by_kind_labels_and_stack_and_legacy_entries_read_as_cpu() {
        let cpu = SampleKind::Cpu.code();
        let off = SampleKind::OffCpu.code();
        let mut a = WindowRecord {
            tallies: vec![cpu, 1, 2, 3, 30, off, 1, 2, 1, 500],
            ..Default::default()
        };
        let b = WindowRecord {
            entries: vec![1, 2, 4],
            tallies: vec![off, 1, 2, 2, 700, off, 1, 9, 1, 5],
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(a.tallies, [cpu, 1, 2, 3, 30, off, 1, 2, 3, 1_200, off, 1, 9, 1, 5]);
        let all: Vec<_> = a.each_tally().collect();
        assert_eq!(
            all[0],
            (cpu, 1, 2, Tally { count: 4, value: 4 * LEGACY_CPU_PERIOD_NS }),
            "a record from before sample kinds counts as CPU time at 99 Hz"
        );
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn triples_merge_by_their_first_two_values() {
        assert_eq!(
            merge_triples(&[1, 2, 3, 4, 5, 6], &[4, 5, 1, 7, 8, 9]),
            [1, 2, 3, 4, 5, 7, 7, 8, 9]
        );
    }

    /// A decoder over the rows `d` queued.
    fn rows_of(d: &Dictionary) -> HashMap<(Table, u64), Vec<u8>> {
        d.pending.iter().map(|(t, id, bytes)| ((*t, *id), bytes.clone())).collect()
    }

    #[test]
    fn a_forgotten_id_leaves_the_cache_and_the_queue() {
        let mut d = Dictionary::default();
        let a = Arc::new(Labels { pid: 1, ..Labels::default() });
        let b = Arc::new(Labels { pid: 2, ..Labels::default() });
        let (ia, ib) = (d.labels_id(&a), d.labels_id(&b));
        d.forget(&HashSet::from([(Table::Labels, ia)]));
        assert_eq!(d.len(), 1);
        assert!(d.pending.iter().all(|(_, id, _)| *id != ia));
        assert_eq!(d.labels_id(&b), ib);
        assert!(d.labels_id(&a) > ib, "a forgotten entry gets a new id");
    }

    #[test]
    fn a_full_dictionary_forgets_the_least_recently_used_and_what_is_stored_still_reads() {
        let mut d = Dictionary::with_capacity(2);
        let labels: Vec<Arc<Labels>> =
            (0..3).map(|pid| Arc::new(Labels { pid, ..Labels::default() })).collect();
        let ids: Vec<u64> = labels.iter().map(|l| d.labels_id(l)).collect();
        assert_eq!(d.len(), 2, "at most the capacity per table");
        // The first was forgotten: it gets a second row under a new id.
        let again = d.labels_id(&labels[0]);
        assert!(!ids.contains(&again));
        let rows = rows_of(&d);
        let mut decoder = Decoder::new(|t, id| rows.get(&(t, id)).cloned());
        for (l, id) in labels.iter().zip(&ids) {
            assert_eq!(decoder.labels(*id).as_ref(), Some(l));
        }
        assert_eq!(decoder.labels(again).as_ref(), Some(&labels[0]));
        assert_eq!(decoder.labels(999), None);
    }

    #[test]
    fn interned_records_read_back_equal() {
        let module =
            Arc::new(Module { path: "/usr/lib/libz.so.1".into(), build_id: Some("ab".into()) });
        let frame = Arc::new(Frame {
            kind: FrameKind::Native,
            function: "deflate".into(),
            module: Some(module),
            address: 0x1234,
            file: None,
            line: 0,
            start_line: 0,
        });
        let py = Arc::new(Frame {
            kind: FrameKind::Python,
            file: Some("app.py".into()),
            line: 7,
            start_line: 3,
            ..Frame::marker("handler")
        });
        let stack: Stack = vec![frame.clone(), py.clone()].into();
        let labels = Arc::new(Labels {
            pid: 9,
            comm: "app".into(),
            runtime: "CPython 3.12.1".into(),
            ..Labels::default()
        });
        let mut d = Dictionary::default();
        let (s, l) = (d.stack_id(&stack), d.labels_id(&labels));
        assert_eq!(d.stack_id(&stack), s, "interned once");
        let rows = rows_of(&d);
        let mut decoder = Decoder::new(|t, id| rows.get(&(t, id)).cloned());
        assert_eq!(decoder.stack(s), Some(stack));
        assert_eq!(decoder.labels(l), Some(labels));
        let mut reopened = Dictionary::default();
        reopened.ids_above(d.next_id - 1);
        assert!(reopened.labels_id(&Arc::new(Labels::default())) > l, "new ids do not collide");
    }
}
