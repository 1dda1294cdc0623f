//! The GIL of a Python thread's process: whether the thread holds it, and, when it leaves the
//! CPU, whether it goes to sleep waiting for it.
//!
//! The daemon puts the absolute addresses of the GIL's fields into the process's `PY_PROCS`
//! entry. A thread holds the GIL when `locked` is 1 and `last_holder` is its
//! `PyThreadState`. A thread waits for it in `take_gil`, asleep in a `futex` wait on a word of
//! the condition variable `cond` (which word depends on the C library's version, so any word
//! inside the 48 bytes counts). A free-threaded build has a GIL only while `enabled` is not 0.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs};
use profiler_common::python::{
    FLAG_PY_GIL_KNOWN, FLAG_PY_GIL_WAIT, FLAG_PY_HOLDS_GIL, GIL_COND_BYTES, PyProcess,
};

use crate::arch;

/// 1 when the kernel has `bpf_task_pt_regs` (Linux 5.15) and `bpf_get_current_task_btf`
/// (5.11), through which the off-CPU program reads the system call a thread blocks in; set by
/// the loader. Without them GIL waits are not recognized; the verifier drops the calls to the
/// unknown helpers as dead code, since this global is read-only and known.
#[unsafe(no_mangle)]
static TASK_PT_REGS: u32 = 0;

/// The current task's saved user registers (`struct pt_regs`), when the kernel has the helpers
/// that find them (see [`TASK_PT_REGS`]).
#[inline(always)]
pub fn saved_user_regs() -> Option<u64> {
    // SAFETY: a read of a global the loader may rewrite before load; volatile keeps the
    // compiler from folding in the default.
    if unsafe { core::ptr::read_volatile(&TASK_PT_REGS) } == 0 {
        return None;
    }
    // SAFETY: helpers whose only argument is the task pointer the first returns.
    Some(unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64)
}

/// `FUTEX_WAIT` and `FUTEX_WAIT_BITSET`, the operations a condition variable waits with (its
/// timed wait uses the latter), without the private and clock flags.
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;
/// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME`.
const FUTEX_FLAGS: u64 = 128 | 256;

/// The `FLAG_PY_*` GIL bits of a sample of a thread of `process`, whose `PyThreadState` is
/// `tstate` when it was found. `off_cpu`: the thread is leaving the CPU (the current task at
/// `sched_switch`), so whether it waits for the GIL is asked too.
#[inline(always)]
pub fn flags(process: &PyProcess, tstate: Option<u64>, off_cpu: bool) -> u32 {
    if process.gil_locked == 0 {
        return 0;
    }
    // A free-threaded build running without its GIL: nobody holds it or waits for it.
    if process.gil_enabled != 0 && !read_u32(process.gil_enabled).is_some_and(|e| e != 0) {
        return 0;
    }
    let mut flags = 0;
    if off_cpu && waits_on(process.gil_cond) {
        flags |= FLAG_PY_GIL_WAIT;
    }
    if let Some(tstate) = tstate
        && let Some(locked) = read_u32(process.gil_locked)
        && let Some(holder) = crate::python::read_u64(process.gil_holder)
    {
        flags |= FLAG_PY_GIL_KNOWN;
        if locked == 1 && holder == tstate {
            flags |= FLAG_PY_HOLDS_GIL;
        }
    }
    flags
}

#[inline(always)]
fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

/// Whether the current task is in a `futex` wait on a word of the condition variable at
/// `cond`.
#[inline(always)]
fn waits_on(cond: u64) -> bool {
    if cond == 0 {
        return false;
    }
    // The registers are read through bpf_probe_read_kernel, which fails instead of faulting.
    let Some((nr, uaddr, op)) = saved_user_regs().and_then(arch::syscall) else {
        return false;
    };
    let op = op & !FUTEX_FLAGS;
    nr == arch::SYS_FUTEX
        && (op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET)
        && uaddr.wrapping_sub(cond) < GIL_COND_BYTES
}
