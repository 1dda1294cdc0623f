//! What the kernel programs do differently per architecture; nothing else depends on it.
//!
//! Registers are read only through aya: `ProbeContext::arg` picks the `pt_regs` layout by
//! `bpf_target_arch`, which aya-build sets from the target the daemon is built for, so the
//! daemon built for aarch64 embeds an object that reads arm64's `regs[n]`. The `task_struct`
//! offset of the user thread pointer comes from the kernel's BTF (the loader looks up
//! `thread.fsbase` or `thread.uw.tp_value`). What is left is how that thread pointer relates
//! to `pthread_self()`, which CPython 3.9 and 3.10 record as a thread's id, and how the
//! sampled registers say that the CPU ran user code.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_perf_event_data, bpf_user_pt_regs_t},
    programs::PerfEventContext,
};

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

/// Whether the sample interrupted user code, whose kernel stack is empty.
///
/// x86_64: the privilege level in the low two bits of the saved code segment is 3.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: see `regs`.
    let cs = unsafe { core::ptr::read_volatile(&raw const (*regs(ctx)).cs) };
    cs & 3 == 3
}

/// The interrupted instruction and frame pointer, when the sample interrupted 64-bit user code
/// (`__USER_CS`; a 32-bit process has other frame records).
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn user_ip_and_fp(ctx: &PerfEventContext) -> Option<(u64, u64)> {
    const USER_CS_64: u64 = 0x33;
    let regs = regs(ctx);
    // SAFETY: see `regs`.
    unsafe {
        if core::ptr::read_volatile(&raw const (*regs).cs) != USER_CS_64 {
            return None;
        }
        let ip = core::ptr::read_volatile(&raw const (*regs).rip);
        let fp = core::ptr::read_volatile(&raw const (*regs).rbp);
        Some((ip, fp))
    }
}

/// Whether the sample interrupted user code, whose kernel stack is empty.
///
/// aarch64: the exception level and stack pointer bits of the saved PSTATE are EL0t (0).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: see `regs`.
    let pstate = unsafe { core::ptr::read_volatile(&raw const (*regs(ctx)).pstate) };
    pstate & 0xf == 0
}

/// The interrupted instruction and frame pointer (`x29`), when the sample interrupted AArch64
/// user code (not an AArch32 process, whose PSTATE has the 32-bit mode bit).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn user_ip_and_fp(ctx: &PerfEventContext) -> Option<(u64, u64)> {
    let regs = regs(ctx);
    // SAFETY: see `regs`.
    unsafe {
        if core::ptr::read_volatile(&raw const (*regs).pstate) & 0x1f != 0 {
            return None;
        }
        let ip = core::ptr::read_volatile(&raw const (*regs).pc);
        let fp = core::ptr::read_volatile(&raw const (*regs).regs[29]);
        Some((ip, fp))
    }
}

/// The sampled registers. Reads through it must be whole 8-byte fields: a perf_event
/// program's context is a `bpf_perf_event_data`, and the verifier checks and rewrites each
/// such read of a saved register.
#[inline(always)]
fn regs(ctx: &PerfEventContext) -> *const bpf_user_pt_regs_t {
    let data = ctx.as_ptr().cast::<bpf_perf_event_data>();
    // SAFETY: only the field's address is taken.
    unsafe { &raw const (*data).regs }
}
