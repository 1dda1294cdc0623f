//! The record the perf-event program writes into the `SAMPLES` ring buffer.
//!
//! Raw instruction pointers are copied into the record instead of going through
//! `bpf_get_stackid`: a stack-id map aliases different stacks on hash collisions, which would
//! silently attribute samples to the wrong code.

/// Length of `task_struct::comm`.
pub const TASK_COMM_LEN: usize = 16;

/// Deepest kernel or user stack recorded (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// `flags` bit: the kernel stack is as deep as `MAX_STACK_DEPTH` and may have been cut.
pub const FLAG_KERNEL_TRUNCATED: u32 = 1 << 0;
/// `flags` bit: the user stack is as deep as `MAX_STACK_DEPTH` and may have been cut.
pub const FLAG_USER_TRUNCATED: u32 = 1 << 1;
/// `flags` bit: reading the kernel stack failed.
pub const FLAG_KERNEL_ERROR: u32 = 1 << 2;
/// `flags` bit: reading the user stack failed.
pub const FLAG_USER_ERROR: u32 = 1 << 3;

/// Fixed part of a sample record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleHeader {
    /// `bpf_ktime_get_boot_ns()` at the sample.
    pub time_ns: u64,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
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
    /// When the process started (`start_boottime` of its group leader, nanoseconds since
    /// boot), 0 when unknown.
    pub start_ns: u64,
    /// The thread's `comm` (NUL-padded).
    pub comm: [u8; TASK_COMM_LEN],
}

/// Words in [`SampleEvent::data`]: both native stacks plus two words per Python frame, rounded
/// up to a power of two so that the kernel can bound indexes with a mask.
pub const DATA_WORDS: usize = 512;

/// One on-CPU sample as the kernel program builds it in a per-CPU scratch buffer. Only the
/// header and the used part of `data` go into the ring buffer, so a record is
/// `SampleHeader::SIZE + 8 * (kernel_len + user_len + 2 * py_len)` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleEvent {
    /// Who and when.
    pub header: SampleHeader,
    /// Kernel return addresses (leaf first), then user return addresses (leaf first), then
    /// Python frames (leaf first) as (code, instruction) pairs.
    pub data: [u64; DATA_WORDS],
}

impl SampleHeader {
    /// Size of the header in a record.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Size of the whole record this header announces.
    pub const fn record_size(&self) -> usize {
        Self::SIZE
            + 8 * (self.kernel_len as usize + self.user_len as usize + 2 * self.py_len as usize)
    }

    /// The thread name up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        &self.comm[..end]
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
    /// Parses a record; `None` when its size does not match its header.
    pub fn parse(bytes: &'a [u8]) -> Option<SampleRecord<'a>> {
        if bytes.len() < SampleHeader::SIZE {
            return None;
        }
        // SAFETY: at least SIZE bytes, SampleHeader is plain old data without padding, and the
        // read is unaligned-safe.
        let header: SampleHeader = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if header.kernel_len as usize > MAX_STACK_DEPTH
            || header.user_len as usize > MAX_STACK_DEPTH
            || header.py_len as usize > crate::python::MAX_PY_FRAMES
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

// No implicit padding anywhere.
const _: () = assert!(SampleHeader::SIZE == 64);
const _: () = assert!(core::mem::size_of::<SampleEvent>() == 64 + DATA_WORDS * 8);
// Both native stacks and the deepest Python stack fit.
const _: () = assert!(2 * MAX_STACK_DEPTH + 2 * crate::python::MAX_PY_FRAMES <= DATA_WORDS);
