//! The store's records and the dictionaries that deduplicate frames, stacks and labels.
//!
//! Records are protobuf messages (prost), so that fields can be added without breaking stored
//! data. A window refers to labels, stacks and frames by id; each distinct one is stored once,
//! whichever window first needed it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use prost::Message;

use crate::{
    aggregate::{Frame, FrameKind, Labels, Module, Stack},
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
    /// (labels id, stack id, count) triples.
    #[prost(uint64, repeated, tag = "5")]
    pub entries: Vec<u64>,
    /// (labels id, frame id, calls) triples.
    #[prost(uint64, repeated, tag = "6")]
    pub calls: Vec<u64>,
    /// Windows merged into this record.
    #[prost(uint64, tag = "7")]
    pub windows: u64,
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

/// Sums `(a, b, count)` triples with equal `(a, b)`, in a stable order.
fn merge_triples(x: &[u64], y: &[u64]) -> Vec<u64> {
    let mut sums: HashMap<(u64, u64), u64> = HashMap::with_capacity((x.len() + y.len()) / 3);
    let mut order = Vec::new();
    for t in x.chunks_exact(3).chain(y.chunks_exact(3)) {
        let slot = sums.entry((t[0], t[1])).or_insert_with(|| {
            order.push((t[0], t[1]));
            0
        });
        *slot = slot.saturating_add(t[2]);
    }
    let mut out = Vec::with_capacity(order.len() * 3);
    for key in order {
        out.extend([key.0, key.1, sums[&key]]);
    }
    out
}

/// Interned frames, stacks and labels, both ways. New entries are queued for writing.
#[derive(Debug, Default)]
pub struct Dictionary {
    frames: HashMap<Arc<Frame>, u64>,
    frame_by_id: HashMap<u64, Arc<Frame>>,
    stacks: HashMap<Stack, u64>,
    stack_by_id: HashMap<u64, Stack>,
    labels: HashMap<Arc<Labels>, u64>,
    labels_by_id: HashMap<u64, Arc<Labels>>,
    modules: HashMap<(String, Option<String>), Arc<Module>>,
    next_id: u64,
    /// Frames, stacks and labels not yet written: (table, id, bytes).
    pub pending: Vec<(Table, u64, Vec<u8>)>,
}

/// Which dictionary table a pending record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        for t in record.entries.chunks_exact(3) {
            self.labels.insert(t[0]);
            self.stacks.insert(t[1]);
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
    /// Ids handed out so far start above every id loaded.
    fn bump(&mut self, id: u64) {
        self.next_id = self.next_id.max(id + 1);
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Loads a stored frame.
    pub fn load_frame(&mut self, id: u64, bytes: &[u8]) -> Result<(), Damaged> {
        let r = FrameRecord::decode(bytes).map_err(|e| Damaged(format!("frame {id}: {e}")))?;
        let module = (!r.module.is_empty()).then(|| {
            self.modules
                .entry((r.module.clone(), r.build_id.clone()))
                .or_insert_with(|| {
                    Arc::new(Module {
                        path: r.module.as_str().into(),
                        build_id: r.build_id.as_deref().map(Into::into),
                    })
                })
                .clone()
        });
        let frame = Arc::new(Frame {
            kind: kind_of(r.kind),
            function: r.function.into(),
            module,
            address: r.address,
            file: r.file.map(Into::into),
            line: r.line,
            start_line: r.start_line,
        });
        self.frames.insert(frame.clone(), id);
        self.frame_by_id.insert(id, frame);
        self.bump(id);
        Ok(())
    }

    /// Loads a stored stack (its frames must be loaded).
    pub fn load_stack(&mut self, id: u64, bytes: &[u8]) -> Result<(), Damaged> {
        let r = StackRecord::decode(bytes).map_err(|e| Damaged(format!("stack {id}: {e}")))?;
        let frames: Option<Vec<Arc<Frame>>> =
            r.frames.iter().map(|f| self.frame_by_id.get(f).cloned()).collect();
        let stack: Stack =
            frames.ok_or_else(|| Damaged(format!("stack {id} refers to a missing frame")))?.into();
        self.stacks.insert(stack.clone(), id);
        self.stack_by_id.insert(id, stack);
        self.bump(id);
        Ok(())
    }

    /// Loads stored labels.
    pub fn load_labels(&mut self, id: u64, bytes: &[u8]) -> Result<(), Damaged> {
        let r = LabelsRecord::decode(bytes).map_err(|e| Damaged(format!("labels {id}: {e}")))?;
        let labels = Arc::new(Labels {
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
        });
        self.labels.insert(labels.clone(), id);
        self.labels_by_id.insert(id, labels);
        self.bump(id);
        Ok(())
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
        self.frames.insert(frame.clone(), id);
        self.frame_by_id.insert(id, frame.clone());
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
        self.stacks.insert(stack.clone(), id);
        self.stack_by_id.insert(id, stack.clone());
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
        };
        self.pending.push((Table::Labels, id, record.encode_to_vec()));
        self.labels.insert(labels.clone(), id);
        self.labels_by_id.insert(id, labels.clone());
        id
    }

    /// The frame with id `id`.
    pub fn frame(&self, id: u64) -> Option<&Arc<Frame>> {
        self.frame_by_id.get(&id)
    }

    /// The stack with id `id`.
    pub fn stack(&self, id: u64) -> Option<&Stack> {
        self.stack_by_id.get(&id)
    }

    /// The labels with id `id`.
    pub fn labels(&self, id: u64) -> Option<&Arc<Labels>> {
        self.labels_by_id.get(&id)
    }

    /// Every labels id with its labels.
    pub fn all_labels(&self) -> impl Iterator<Item = (u64, &Arc<Labels>)> {
        self.labels_by_id.iter().map(|(&id, l)| (id, l))
    }

    /// The labels, stacks and frames held that `live` does not hold, with their tables. `live`
    /// must hold the frames of its stacks (by id: two ids may hold equal frames).
    pub fn dead(&self, live: &LiveIds) -> Vec<(Table, u64)> {
        let stacks = self.stack_by_id.keys().filter(|id| !live.stacks.contains(id));
        let frames = self.frame_by_id.keys().filter(|id| !live.frames.contains(id));
        let labels = self.labels_by_id.keys().filter(|id| !live.labels.contains(id));
        stacks
            .map(|&id| (Table::Stacks, id))
            .chain(frames.map(|&id| (Table::Frames, id)))
            .chain(labels.map(|&id| (Table::Labels, id)))
            .collect()
    }

    /// Forgets `dead` (from [`Dictionary::dead`]). Ids are not handed out again while the
    /// daemon runs, so one that a reader still holds cannot name something else.
    pub fn forget(&mut self, dead: &[(Table, u64)]) {
        // Rows of a window that failed to write are still queued; a forgotten id is not
        // written later.
        let gone: HashSet<(Table, u64)> = dead.iter().copied().collect();
        self.pending.retain(|(table, id, _)| !gone.contains(&(*table, *id)));
        for &(table, id) in dead {
            match table {
                Table::Stacks => {
                    if let Some(stack) = self.stack_by_id.remove(&id)
                        && self.stacks.get(&stack) == Some(&id)
                    {
                        self.stacks.remove(&stack);
                    }
                }
                Table::Frames => {
                    if let Some(frame) = self.frame_by_id.remove(&id)
                        && self.frames.get(&frame) == Some(&id)
                    {
                        self.frames.remove(&frame);
                    }
                }
                Table::Labels => {
                    if let Some(labels) = self.labels_by_id.remove(&id)
                        && self.labels.get(&labels) == Some(&id)
                    {
                        self.labels.remove(&labels);
                    }
                }
            }
        }
        // A module that no frame holds any more.
        self.modules.retain(|_, m| Arc::strong_count(m) > 1);
    }

    /// Distinct frames, stacks and labels held.
    pub fn len(&self) -> usize {
        self.frame_by_id.len() + self.stack_by_id.len() + self.labels_by_id.len()
    }

    /// Whether nothing is held.
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
    fn triples_merge_by_their_first_two_values() {
        assert_eq!(
            merge_triples(&[1, 2, 3, 4, 5, 6], &[4, 5, 1, 7, 8, 9]),
            [1, 2, 3, 4, 5, 7, 7, 8, 9]
        );
    }

    #[test]
    fn a_sweep_goes_by_stored_ids_even_where_two_frames_are_equal() {
        let mut d = Dictionary::default();
        let frame = FrameRecord { kind: 1, function: "f".into(), ..FrameRecord::default() };
        d.load_frame(1, &frame.encode_to_vec()).unwrap();
        d.load_frame(2, &frame.encode_to_vec()).unwrap();
        let stack = StackRecord { frames: vec![1] }.encode_to_vec();
        d.load_stack(3, &stack).unwrap();
        d.load_stack(4, &StackRecord { frames: vec![2] }.encode_to_vec()).unwrap();
        let mut live = LiveIds::default();
        live.stacks.insert(3);
        live.add_frames(stack_frames(&stack).unwrap());
        let dead = d.dead(&live);
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(dead.contains(&(Table::Stacks, 4)) && dead.contains(&(Table::Frames, 2)));
        d.forget(&dead);
        assert!(d.frame(1).is_some() && d.frame(2).is_none() && d.stack(3).is_some());
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn interned_records_load_back_equal() {
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
        let mut loaded = Dictionary::default();
        for (table, id, bytes) in std::mem::take(&mut d.pending) {
            match table {
                Table::Frames => loaded.load_frame(id, &bytes).unwrap(),
                Table::Stacks => loaded.load_stack(id, &bytes).unwrap(),
                Table::Labels => loaded.load_labels(id, &bytes).unwrap(),
            }
        }
        assert_eq!(loaded.stack(s), Some(&stack));
        assert_eq!(loaded.labels(l), Some(&labels));
        assert!(loaded.stack_id(&stack) == s && loaded.pending.is_empty());
        assert!(loaded.labels_id(&Arc::new(Labels::default())) > l, "new ids do not collide");
    }
}
