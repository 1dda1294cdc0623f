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

/// One on-CPU sample.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleEvent {
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
    /// Number of valid entries in `kernel_ips`.
    pub kernel_len: u32,
    /// Number of valid entries in `user_ips`.
    pub user_len: u32,
    /// The thread's `comm` (NUL-padded).
    pub comm: [u8; TASK_COMM_LEN],
    /// Kernel return addresses, leaf first.
    pub kernel_ips: [u64; MAX_STACK_DEPTH],
    /// User return addresses, leaf first.
    pub user_ips: [u64; MAX_STACK_DEPTH],
}

impl SampleEvent {
    /// Size of the record in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// The valid kernel frames, leaf first.
    pub fn kernel_stack(&self) -> &[u64] {
        &self.kernel_ips[..(self.kernel_len as usize).min(MAX_STACK_DEPTH)]
    }

    /// The valid user frames, leaf first.
    pub fn user_stack(&self) -> &[u64] {
        &self.user_ips[..(self.user_len as usize).min(MAX_STACK_DEPTH)]
    }

    /// The thread name up to its first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(feature = "user")]
// SAFETY: `SampleEvent` is `repr(C)`, has no padding (checked below) and every bit pattern is a
// valid value.
unsafe impl aya::Pod for SampleEvent {}

// No implicit padding: the header is 48 bytes and both arrays are 8-byte aligned.
const _: () = assert!(SampleEvent::SIZE == 48 + 2 * MAX_STACK_DEPTH * 8);
