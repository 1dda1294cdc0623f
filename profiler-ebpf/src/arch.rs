//! What the kernel programs do differently per architecture; nothing else depends on it.
//!
//! Registers are read only through aya: `ProbeContext::arg` picks the `pt_regs` layout by
//! `bpf_target_arch`, which aya-build sets from the target the daemon is built for, so the
//! daemon built for aarch64 embeds an object that reads arm64's `regs[n]`. The `task_struct`
//! offset of the user thread pointer comes from the kernel's BTF (the loader looks up
//! `thread.fsbase` or `thread.uw.tp_value`). What is left is how that thread pointer relates
//! to `pthread_self()`, which CPython 3.9 and 3.10 record as a thread's id.

/// How far below the user thread pointer `pthread_self()` may lie.
///
/// x86_64 (TLS variant II): the thread pointer (`fsbase`) is the thread descriptor itself.
#[cfg(not(bpf_target_arch = "aarch64"))]
pub const PTHREAD_BELOW_TP: u64 = 0;

/// How far below the user thread pointer `pthread_self()` may lie.
///
/// aarch64 (TLS variant I): the thread pointer (`TPIDR_EL0`, saved as `thread.uw.tp_value`)
/// points just past the thread descriptor, so `pthread_self()` is the thread pointer less
/// `sizeof(struct pthread)`, which differs between C libraries and their versions (1856 bytes
/// in glibc 2.36, a few hundred in musl). A page covers them without reaching another
/// thread's descriptor: right below a thread's own descriptor is its stack (or, for the main
/// thread, the loader's allocations), never a descriptor.
#[cfg(bpf_target_arch = "aarch64")]
pub const PTHREAD_BELOW_TP: u64 = 4096;
