//! The records the kernel programs write into the `SAMPLES` ring buffer.
//!
//! Every record starts with a `kind: u32` ([`RECORD_CPU`], [`RECORD_OFF_CPU`],
//! [`RECORD_OFF_CPU_END`], [`RECORD_MEMORY`], [`RECORD_OOM_KILL`], [`RECORD_EXEC`]);
//! [`Record::parse`] reads any of them. CPU and off-CPU records share one layout, a [`SampleHeader`] followed by the stacks, so that everything downstream of the
//! ring buffer handles both alike.
//!
//! Raw instruction pointers are copied into the record instead of going through
//! `bpf_get_stackid`: a stack-id map aliases different stacks on hash collisions, which would
//! silently attribute samples to the wrong code.

/// Length of `task_struct::comm`.
pub const TASK_COMM_LEN: usize = 16;

/// Deepest kernel or user stack recorded (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Words from the top of the user stack that a sample of user code keeps (see
/// [`SampleHeader::leaf_stack`]).
pub const LEAF_WORDS: usize = 4;

/// `flags` bit: the kernel stack is as deep as `MAX_STACK_DEPTH` and may have been cut.
pub const FLAG_KERNEL_TRUNCATED: u32 = 1 << 0;
/// `flags` bit: the user stack is as deep as `MAX_STACK_DEPTH` and may have been cut.
pub const FLAG_USER_TRUNCATED: u32 = 1 << 1;
/// `flags` bit: reading the kernel stack failed.
pub const FLAG_KERNEL_ERROR: u32 = 1 << 2;
/// `flags` bit: reading the user stack failed.
pub const FLAG_USER_ERROR: u32 = 1 << 3;

/// Most bytes of the user stack a sample copies (see [`SampleHeader::stack_bytes`]), as
/// `perf record --call-graph dwarf` copies by default.
pub const STACK_COPY_MAX: usize = 8192;

/// Entries of the kernel's `UNWIND_PROCS`: processes whose samples copy their stack.
pub const UNWIND_PROCS_MAX: u32 = 16_384;

/// `kind` of a sample taken by the `cpu-clock` perf event: the thread was running.
pub const RECORD_CPU: u32 = 0;
/// `kind` of a sample taken when a thread left the CPU (`sched_switch`): the stacks are where
/// it blocked or was preempted, `time_ns` is when, `state` why and `weight` how many such
/// switches it stands for. An [`OffCpuEnd`] with the same thread and `start_ns == time_ns`
/// follows when the thread runs again.
pub const RECORD_OFF_CPU: u32 = 1;
/// `kind` of an [`OffCpuEnd`]: a thread whose switch-out was recorded runs again.
pub const RECORD_OFF_CPU_END: u32 = 2;
/// `kind` of a sample taken at a page fault (one in every sampling period of the page-fault
/// event): the stacks are where the thread touched memory it had not touched before, and
/// `weight` is the bytes the period's faults map.
pub const RECORD_MEMORY: u32 = 3;
/// `kind` of an [`OomKill`]: the kernel chose a process to kill for lack of memory.
pub const RECORD_OOM_KILL: u32 = 4;
/// [`Exec`]: a process called `execve`.
pub const RECORD_EXEC: u32 = 5;

/// `weight` of a record captured with probability 1: weights are in units of 1/65536.
pub const WEIGHT_ONE: u64 = 1 << 16;

/// Fixed part of a sample record ([`RECORD_CPU`] or [`RECORD_OFF_CPU`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleHeader {
    /// [`RECORD_CPU`] or [`RECORD_OFF_CPU`].
    pub kind: u32,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()` at the sample (for off-CPU records, at the switch-out).
    pub time_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Number of kernel frames at the start of `ips`.
    pub kernel_len: u32,
    /// Number of user frames after the kernel frames.
    pub user_len: u32,
    /// Number of Python frames after the user frames (two words each: code, instruction).
    pub py_len: u32,
    /// The process's `execve` count (`self_exec_id` of its group leader), 0 when unknown.
    /// With [`SampleHeader::start_ns`] it tells a re-executed program and a reused pid apart
    /// from the process the daemon knew.
    pub exec_id: u32,
    /// Off-CPU records: the task state at the switch-out as `sched_switch` reports it, the
    /// kernel's raw `__state` bits (`TASK_RUNNING`, 0, when the thread was preempted;
    /// `TASK_INTERRUPTIBLE`, 1, or `TASK_UNINTERRUPTIBLE`, 2, possibly with modifier bits such
    /// as `TASK_NOLOAD` or `TASK_FREEZABLE` when it blocked). 0 for CPU samples.
    pub state: u32,
    /// When the process started (`start_boottime` of its group leader, nanoseconds since
    /// boot), 0 when unknown.
    pub start_ns: u64,
    /// Off-CPU records: the inverse of the probability with which this switch was recorded,
    /// in units of 1/65536 ([`WEIGHT_ONE`] = always recorded), so that summing weights over
    /// records estimates the number of switches without bias. 0 for CPU samples.
    pub weight: u64,
    /// Memory records: the address whose fault was sampled (the daemon asks the process's
    /// page tables whether the fault mapped a huge page there). 0 for other records.
    pub addr: u64,
    /// The thread's `comm` (NUL-padded).
    pub comm: [u8; TASK_COMM_LEN],
    /// Samples that interrupted user code: the first words of the user stack (`[sp]`,
    /// `[sp + 8]`, …), zeros when not read. A function that has not set up a frame record (a
    /// leaf that needs no stack, or any function before its prologue has run) keeps its
    /// return address there, or in the link register, where the frame-pointer walk does not
    /// look; the daemon finds which from the unwind rule of the sampled instruction.
    pub leaf_stack: [u64; LEAF_WORDS],
    /// Samples that interrupted user code on aarch64: the link register (`x30`); 0 otherwise.
    pub leaf_lr: u64,
    /// Samples that interrupted user code: the stack pointer; 0 otherwise.
    pub user_sp: u64,
    /// Samples that interrupted user code: the frame pointer (`rbp`, `x29`); 0 otherwise.
    pub user_fp: u64,
    /// Bytes of the user stack from `user_sp` up that follow the frames, a multiple of 8 and
    /// at most [`STACK_COPY_MAX`]: copied for processes that run code built without frame
    /// pointers, which the daemon unwinds with the files' `.eh_frame`; 0 for others.
    pub stack_bytes: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

/// The end of an off-CPU block ([`RECORD_OFF_CPU_END`]): the thread of a [`RECORD_OFF_CPU`]
/// record runs again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuEnd {
    /// [`RECORD_OFF_CPU_END`].
    pub kind: u32,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// The switch-out time of the block: the `time_ns` of its [`RECORD_OFF_CPU`] record.
    pub start_ns: u64,
    /// `bpf_ktime_get_boot_ns()` when the thread was switched back in.
    pub end_ns: u64,
}

impl OffCpuEnd {
    /// Size of the record.
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// An OOM kill ([`RECORD_OOM_KILL`]), written when the kernel marks its victim (the global OOM
/// killer or a cgroup's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomKill {
    /// [`RECORD_OOM_KILL`].
    pub kind: u32,
    /// The victim's process id; its thread id where the kernel names only that.
    pub tgid: u32,
    /// The victim's thread id.
    pub tid: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` at the kill.
    pub time_ns: u64,
    /// The victim's `comm`, NUL-padded; zeros where the kernel names only the pid.
    pub comm: [u8; TASK_COMM_LEN],
    /// The victim's resident pages at the kill: file-backed, anonymous and shared memory
    /// (zeros where the kernel names only the pid).
    pub rss_pages: [u64; 3],
}

impl OomKill {
    /// Size of the record.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// The victim's name, without the NUL padding.
    pub fn comm_bytes(&self) -> &[u8] {
        trim_comm(&self.comm)
    }
}

/// An `execve` ([`RECORD_EXEC`]), written when the new program is loaded, so that the
/// daemon reads the process's maps while it runs: a short-lived program may be gone before its
/// first sample is handled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// [`RECORD_EXEC`].
    pub kind: u32,
    /// Process id.
    pub tgid: u32,
    /// The thread that called `execve` (the process's only thread from then on).
    pub tid: u32,
    /// The group leader's `self_exec_id` after the `execve` (see [`SampleHeader::exec_id`]).
    pub exec_id: u32,
    /// The group leader's start time, nanoseconds since boot (see
    /// [`SampleHeader::start_ns`]).
    pub start_ns: u64,
    /// `bpf_ktime_get_boot_ns()` at the `execve`.
    pub time_ns: u64,
    /// The new program's `comm`, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
}

impl Exec {
    /// Size of the record.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// The program's name, without the NUL padding.
    pub fn comm_bytes(&self) -> &[u8] {
        trim_comm(&self.comm)
    }
}

/// A task's `comm` without its NUL padding.
fn trim_comm(comm: &[u8; TASK_COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    &comm[..end]
}

/// Any record read back from the ring buffer.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// A [`RECORD_CPU`] or [`RECORD_OFF_CPU`] sample.
    Sample(SampleRecord<'a>),
    /// A [`RECORD_OFF_CPU_END`].
    OffCpuEnd(OffCpuEnd),
    /// A [`RECORD_OOM_KILL`].
    OomKill(OomKill),
    /// A [`RECORD_EXEC`].
    Exec(Exec),
}

impl<'a> Record<'a> {
    /// Parses a record; `None` when its kind is unknown or its size does not match.
    pub fn parse(bytes: &'a [u8]) -> Option<Record<'a>> {
        let kind = bytes.get(..4)?;
        match u32::from_ne_bytes([kind[0], kind[1], kind[2], kind[3]]) {
            RECORD_OFF_CPU_END if bytes.len() == OffCpuEnd::SIZE => {
                // SAFETY: exactly SIZE bytes, OffCpuEnd is plain old data without padding, and
                // the read is unaligned-safe.
                Some(Record::OffCpuEnd(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            RECORD_OFF_CPU_END => None,
            RECORD_OOM_KILL if bytes.len() == OomKill::SIZE => {
                // SAFETY: as above, for OomKill.
                Some(Record::OomKill(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            RECORD_OOM_KILL => None,
            RECORD_EXEC if bytes.len() == Exec::SIZE => {
                // SAFETY: as above, for Exec.
                Some(Record::Exec(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            RECORD_EXEC => None,
            _ => SampleRecord::parse(bytes).map(Record::Sample),
        }
    }
}

/// Words in [`SampleEvent::data`]: both native stacks plus two words per Python frame, rounded
/// up to a power of two so that the kernel can bound indexes with a mask.
pub const DATA_WORDS: usize = 512;

/// One on-CPU sample as the kernel program builds it in a per-CPU scratch buffer. Only the
/// header and the used part of `data` go into the ring buffer, so a record is
/// `SampleHeader::SIZE + 8 * (kernel_len + user_len + 2 * py_len) + stack_bytes` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleEvent {
    /// Who and when.
    pub header: SampleHeader,
    /// Kernel return addresses (leaf first), then user return addresses (leaf first), then
    /// Python frames (leaf first) as (code, instruction) pairs; then the copy of the user
    /// stack, which `stack` leaves room for.
    pub data: [u64; DATA_WORDS],
    /// Room for the user stack's copy after the frames, and a page more: the kernel's
    /// verifier bounds a read's offset and length each on its own, not their sum.
    pub stack: [u8; STACK_COPY_MAX + 4096],
}

impl SampleHeader {
    /// Size of the header in a record.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Size of the whole record this header announces.
    pub const fn record_size(&self) -> usize {
        Self::SIZE
            + 8 * (self.kernel_len as usize + self.user_len as usize + 2 * self.py_len as usize)
            + self.stack_bytes as usize
    }

    /// The thread name up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        trim_comm(&self.comm)
    }
}

/// A record read back from the ring buffer.
#[derive(Clone, Copy, Debug)]
pub struct SampleRecord<'a> {
    /// The header.
    pub header: SampleHeader,
    ips: &'a [u8],
}

impl<'a> SampleRecord<'a> {
    /// Parses a [`RECORD_CPU`] or [`RECORD_OFF_CPU`] record; `None` for other kinds and when
    /// its size does not match its header.
    pub fn parse(bytes: &'a [u8]) -> Option<SampleRecord<'a>> {
        if bytes.len() < SampleHeader::SIZE {
            return None;
        }
        // SAFETY: at least SIZE bytes, SampleHeader is plain old data without padding, and the
        // read is unaligned-safe.
        let header: SampleHeader = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if !matches!(header.kind, RECORD_CPU | RECORD_OFF_CPU | RECORD_MEMORY)
            || header.kernel_len as usize > MAX_STACK_DEPTH
            || header.user_len as usize > MAX_STACK_DEPTH
            || header.py_len as usize > crate::python::MAX_PY_FRAMES
            || header.stack_bytes as usize > STACK_COPY_MAX
            || !header.stack_bytes.is_multiple_of(8)
            || header.record_size() != bytes.len()
        {
            return None;
        }
        Some(SampleRecord { header, ips: &bytes[SampleHeader::SIZE..] })
    }

    fn ip(&self, i: usize) -> u64 {
        let b = &self.ips[i * 8..i * 8 + 8];
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Kernel frames, leaf first.
    pub fn kernel_stack(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.header.kernel_len as usize).map(|i| self.ip(i))
    }

    /// User frames, leaf first.
    pub fn user_stack(&self) -> impl Iterator<Item = u64> + '_ {
        let k = self.header.kernel_len as usize;
        (k..k + self.header.user_len as usize).map(|i| self.ip(i))
    }

    /// The copy of the user stack from `header.user_sp` up (empty when none was taken).
    pub fn stack_copy(&self) -> &'a [u8] {
        let frames = self.header.kernel_len as usize
            + self.header.user_len as usize
            + 2 * self.header.py_len as usize;
        &self.ips[frames * 8..]
    }

    /// The words at the user stack pointer, in which a function without a frame record keeps
    /// its return address: the header's, or the copy's first when the kernel copied the stack
    /// instead (then it does not read them twice). Zeros when it took neither.
    pub fn leaf_words(&self) -> [u64; LEAF_WORDS] {
        let copy = self.stack_copy();
        if self.header.leaf_stack != [0; LEAF_WORDS] || copy.len() < LEAF_WORDS * 8 {
            return self.header.leaf_stack;
        }
        core::array::from_fn(|i| {
            let word = &copy[i * 8..i * 8 + 8];
            u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]))
        })
    }

    /// Python frames, leaf first.
    pub fn python_stack(&self) -> impl Iterator<Item = crate::python::PyFrame> + '_ {
        let start = self.header.kernel_len as usize + self.header.user_len as usize;
        (0..self.header.py_len as usize).map(move |i| crate::python::PyFrame {
            code: self.ip(start + 2 * i),
            instr: self.ip(start + 2 * i + 1),
        })
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (checked below), every bit pattern is valid.
unsafe impl aya::Pod for SampleHeader {}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (checked below), every bit pattern is valid.
unsafe impl aya::Pod for OffCpuEnd {}

// No implicit padding anywhere.
const _: () = assert!(SampleHeader::SIZE == 152);
const _: () =
    assert!(core::mem::size_of::<SampleEvent>() == 152 + DATA_WORDS * 8 + STACK_COPY_MAX + 4096);
const _: () = assert!(OffCpuEnd::SIZE == 32);
// Both native stacks and the deepest Python stack fit.
const _: () = assert!(2 * MAX_STACK_DEPTH + 2 * crate::python::MAX_PY_FRAMES <= DATA_WORDS);

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(value: &T) -> &[u8] {
        // SAFETY: the record types are repr(C) plain data without padding.
        unsafe {
            core::slice::from_raw_parts((value as *const T).cast::<u8>(), core::mem::size_of::<T>())
        }
    }

    /// A header and three frames (two kernel, one user) in one buffer.
    fn sample(kind: u32) -> [u8; SampleHeader::SIZE + 24] {
        let header = SampleHeader {
            kind,
            tgid: 7,
            tid: 8,
            kernel_len: 2,
            user_len: 1,
            state: 1,
            weight: WEIGHT_ONE,
            ..SampleHeader::default()
        };
        let mut out = [0u8; SampleHeader::SIZE + 24];
        out[..SampleHeader::SIZE].copy_from_slice(bytes(&header));
        for (i, ip) in [0xffff_ffff_8100_0000u64, 0xffff_ffff_8100_0010, 0x1000].iter().enumerate()
        {
            out[SampleHeader::SIZE + 8 * i..][..8].copy_from_slice(&ip.to_ne_bytes());
        }
        out
    }

    fn end() -> OffCpuEnd {
        OffCpuEnd { kind: RECORD_OFF_CPU_END, tgid: 7, tid: 8, _pad: 0, start_ns: 10, end_ns: 25 }
    }

    #[test]
    fn samples_of_every_kind_parse_with_their_stacks() {
        for kind in [RECORD_CPU, RECORD_OFF_CPU, RECORD_MEMORY] {
            let bytes = sample(kind);
            let Some(Record::Sample(record)) = Record::parse(&bytes) else {
                panic!("kind {kind} did not parse as a sample")
            };
            assert_eq!(record.header.kind, kind);
            assert_eq!((record.header.tgid, record.header.tid, record.header.state), (7, 8, 1));
            assert_eq!(record.header.weight, WEIGHT_ONE);
            let mut kernel = record.kernel_stack();
            assert_eq!(kernel.next(), Some(0xffff_ffff_8100_0000));
            assert_eq!(kernel.next(), Some(0xffff_ffff_8100_0010));
            assert_eq!(kernel.next(), None);
            let mut user = record.user_stack();
            assert_eq!((user.next(), user.next()), (Some(0x1000), None));
            assert!(SampleRecord::parse(&bytes).is_some());
        }
    }

    #[test]
    fn a_stack_copy_follows_the_frames() {
        let mut header = SampleHeader {
            kind: RECORD_CPU,
            user_len: 1,
            py_len: 1,
            stack_bytes: 16,
            user_sp: 0x7000,
            ..SampleHeader::default()
        };
        let mut out = [0u8; SampleHeader::SIZE + 24 + 16];
        out[..SampleHeader::SIZE].copy_from_slice(bytes(&header));
        for (i, word) in [0x1000u64, 0xc0de, 7, 0xaaaa, 0xbbbb].iter().enumerate() {
            out[SampleHeader::SIZE + 8 * i..][..8].copy_from_slice(&word.to_ne_bytes());
        }
        let record = SampleRecord::parse(&out).expect("parses");
        assert_eq!(record.user_stack().last(), Some(0x1000));
        assert_eq!(record.user_stack().count(), 1);
        assert_eq!(record.python_stack().count(), 1);
        let copy = record.stack_copy();
        assert_eq!(copy.len(), 16);
        assert_eq!(u64::from_ne_bytes(copy[8..].try_into().unwrap()), 0xbbbb);
        // Shorter than the leaf's words: the header's (none here).
        assert_eq!(record.leaf_words(), [0; LEAF_WORDS]);
        // The size must match, and a copy is whole words no longer than the maximum.
        assert!(SampleRecord::parse(&out[..out.len() - 8]).is_none());
        header.stack_bytes = 12;
        out[..SampleHeader::SIZE].copy_from_slice(bytes(&header));
        assert!(SampleRecord::parse(&out[..out.len() - 4]).is_none());
    }

    #[test]
    fn the_leaf_words_come_from_the_copy_when_the_header_has_none() {
        let mut header = SampleHeader {
            kind: RECORD_CPU,
            user_len: 1,
            stack_bytes: 40,
            user_sp: 0x7000,
            ..SampleHeader::default()
        };
        let mut out = [0u8; SampleHeader::SIZE + 8 + 40];
        for (i, word) in [0x1000u64, 1, 2, 3, 4, 5].iter().enumerate() {
            out[SampleHeader::SIZE + 8 * i..][..8].copy_from_slice(&word.to_ne_bytes());
        }
        out[..SampleHeader::SIZE].copy_from_slice(bytes(&header));
        assert_eq!(SampleRecord::parse(&out).expect("parses").leaf_words(), [1, 2, 3, 4]);
        header.leaf_stack = [9, 8, 7, 6];
        out[..SampleHeader::SIZE].copy_from_slice(bytes(&header));
        assert_eq!(SampleRecord::parse(&out).expect("parses").leaf_words(), [9, 8, 7, 6]);
    }

    #[test]
    fn an_off_cpu_end_parses() {
        let record = end();
        match Record::parse(bytes(&record)) {
            Some(Record::OffCpuEnd(got)) => assert_eq!(got, record),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn short_records_are_rejected() {
        let bytes_ = sample(RECORD_OFF_CPU);
        assert!(Record::parse(&bytes_[..bytes_.len() - 1]).is_none());
        assert!(Record::parse(&bytes_[..SampleHeader::SIZE - 1]).is_none());
        assert!(Record::parse(&bytes_[..3]).is_none());
        assert!(Record::parse(&[]).is_none());
        let record = end();
        assert!(Record::parse(&bytes(&record)[..OffCpuEnd::SIZE - 1]).is_none());
    }

    #[test]
    fn an_oom_kill_parses_with_its_victims_name() {
        let mut kill =
            OomKill { kind: RECORD_OOM_KILL, tgid: 7, tid: 8, time_ns: 5, ..OomKill::default() };
        kill.comm[..6].copy_from_slice(b"python");
        match Record::parse(bytes(&kill)) {
            Some(Record::OomKill(got)) => {
                assert_eq!(got, kill);
                assert_eq!(got.comm_bytes(), b"python");
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Record::parse(&bytes(&kill)[..OomKill::SIZE - 1]).is_none());
        assert!(Record::parse(&sample(RECORD_OOM_KILL)).is_none());
    }

    #[test]
    fn an_exec_parses_with_the_new_programs_name_and_identity() {
        let mut exec = Exec {
            kind: RECORD_EXEC,
            tgid: 7,
            tid: 7,
            exec_id: 3,
            start_ns: 11,
            time_ns: 12,
            ..Exec::default()
        };
        exec.comm[..6].copy_from_slice(b"native");
        match Record::parse(bytes(&exec)) {
            Some(Record::Exec(got)) => {
                assert_eq!(got, exec);
                assert_eq!(got.comm_bytes(), b"native");
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Record::parse(&bytes(&exec)[..Exec::SIZE - 1]).is_none());
        assert!(Record::parse(&sample(RECORD_EXEC)).is_none());
    }

    #[test]
    fn unknown_kinds_and_wrong_sizes_are_rejected() {
        assert!(Record::parse(&sample(6)).is_none());
        assert!(matches!(Record::parse(&sample(RECORD_MEMORY)), Some(Record::Sample(_))));
        assert!(Record::parse(&sample(u32::MAX)).is_none());
        // A sample-sized record that says it is an end, and an end with trailing bytes.
        assert!(Record::parse(&sample(RECORD_OFF_CPU_END)).is_none());
        let mut long = [0u8; OffCpuEnd::SIZE + 8];
        long[..OffCpuEnd::SIZE].copy_from_slice(bytes(&end()));
        assert!(Record::parse(&long).is_none());
        // The sample parser takes only samples.
        assert!(SampleRecord::parse(&sample(RECORD_OFF_CPU_END)).is_none());
        assert!(SampleRecord::parse(bytes(&end())).is_none());
    }
}
