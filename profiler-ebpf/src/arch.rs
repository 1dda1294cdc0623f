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

/// The user stack pointer and link register (0: x86_64 keeps return addresses on the stack)
/// of a sample that interrupted user code.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn user_sp_and_lr(ctx: &PerfEventContext) -> (u64, u64) {
    // SAFETY: see `regs`.
    (unsafe { core::ptr::read_volatile(&raw const (*regs(ctx)).rsp) }, 0)
}

/// The user stack pointer and link register (`x30`) of a sample that interrupted user code.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn user_sp_and_lr(ctx: &PerfEventContext) -> (u64, u64) {
    let regs = regs(ctx);
    // SAFETY: see `regs`.
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*regs).sp),
            core::ptr::read_volatile(&raw const (*regs).regs[30]),
        )
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

/// The address of the sampled page fault (the perf event's sample address; the kernel sets it
/// for every `page-faults` event).
#[inline(always)]
pub fn fault_addr(ctx: &PerfEventContext) -> u64 {
    let data = ctx.as_ptr().cast::<bpf_perf_event_data>();
    // SAFETY: a whole 8-byte read of the context's `addr` field, which the verifier rewrites
    // into a read of the sample's address.
    unsafe { core::ptr::read_volatile(&raw const (*data).addr) }
}

/// The `futex` system call's number.
///
/// x86_64: the 64-bit system call table (a 32-bit or x32 process numbers it differently, and
/// is not matched).
#[cfg(not(bpf_target_arch = "aarch64"))]
pub const SYS_FUTEX: u64 = 202;

/// The `futex` system call's number.
///
/// aarch64: the generic table.
#[cfg(bpf_target_arch = "aarch64")]
pub const SYS_FUTEX: u64 = 98;

/// The stack pointer, frame pointer and link register (0 on x86_64) among a task's saved user
/// registers at `regs` (a `struct pt_regs` from `bpf_task_pt_regs`): `bp` at byte 32 and `sp`
/// at 152. `None` when a read fails.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn saved_sp_fp_lr(regs: u64) -> Option<(u64, u64, u64)> {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    let fp = unsafe { bpf_probe_read_kernel((regs + 32) as *const u64) }.ok()?;
    // SAFETY: as above.
    let sp = unsafe { bpf_probe_read_kernel((regs + 152) as *const u64) }.ok()?;
    Some((sp, fp, 0))
}

/// As on x86_64: `x29` and `x30` at bytes 232 and 240, `sp` right after them.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn saved_sp_fp_lr(regs: u64) -> Option<(u64, u64, u64)> {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    let [fp, lr, sp] = unsafe { bpf_probe_read_kernel((regs + 232) as *const [u64; 3]) }.ok()?;
    Some((sp, fp, lr))
}

/// The system call a task is in, from its saved user registers at `regs` (a `struct pt_regs`
/// from `bpf_task_pt_regs`): its number, first and second argument. `None` when a read fails.
///
/// x86_64: `si`, `di` and `orig_ax` (the number; `ax` becomes the return value) are
/// consecutive at byte 104 of `struct pt_regs`, a layout fixed by the kernel's entry code.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn syscall(regs: u64) -> Option<(u64, u64, u64)> {
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    let [si, di, orig_ax] =
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((regs + 104) as *const [u64; 3]) }
            .ok()?;
    Some((orig_ax, di, si))
}

/// The system call a task is in, from its saved user registers at `regs` (a `struct pt_regs`
/// from `bpf_task_pt_regs`): its number, first and second argument. `None` when a read fails.
///
/// aarch64: `orig_x0` (the first argument: `regs[0]` becomes the return value) and the `s32
/// syscallno` follow the 34 saved registers (`regs[31]`, `sp`, `pc`, `pstate`) at byte 272;
/// the second argument is still in `regs[1]`, at byte 8.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn syscall(regs: u64) -> Option<(u64, u64, u64)> {
    use aya_ebpf::helpers::bpf_probe_read_kernel;
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    let [orig_x0, syscallno] =
        unsafe { bpf_probe_read_kernel((regs + 272) as *const [u64; 2]) }.ok()?;
    // SAFETY: as above.
    let x1 = unsafe { bpf_probe_read_kernel((regs + 8) as *const u64) }.ok()?;
    // `syscallno` is an s32 (-1 outside a system call) in the low half of its word.
    Some((u64::from(syscallno as u32), orig_x0, x1))
}
