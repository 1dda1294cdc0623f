//! The entry probe on `_PyEval_EvalFrameDefault`: counts calls per (process, code object).
//!
//! The daemon attaches it per process, only when asked, and detaches it when a process calls
//! more often than its budget allows. Every version from 3.9 on passes the frame being
//! evaluated as the second argument, and the frame's code field is where the sampler reads it.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::PerCpuHashMap,
    programs::ProbeContext,
};
use profiler_common::{counters::Counter, python::CallKey};

use crate::python::{CODE_MASK, PY_PROCS, read_u64};

/// Calls per (tgid, code object), per CPU so that no atomic is needed; the daemon sums the CPUs
/// and takes differences between reads.
#[map]
static PY_CALLS: PerCpuHashMap<CallKey, u64> = PerCpuHashMap::with_max_entries(65536, 0);

#[uprobe]
pub fn python_call(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = PY_PROCS.get_ptr(&tgid) else {
        return 0;
    };
    // The two fields this probe needs, read before the entry can have been replaced: the same
    // element must still be the process's afterwards (see `python::thread`). Unlike the
    // sampler, which runs with interrupts off, the probe can be interrupted between its two
    // lookups, long enough for the element to go to another key and come back: that is not
    // seen, and costs a call counted under a wrong code address.
    // SAFETY: map lookups return valid pointers or None.
    let (frame_code, tag_bits) = unsafe {
        (
            read_volatile(&raw const (*entry).offsets.frame_code),
            read_volatile(&raw const (*entry).offsets.code_tag_bits),
        )
    };
    if !PY_PROCS.get_ptr(&tgid).is_some_and(|again| core::ptr::eq(again, entry)) {
        return 0;
    }
    // The frame argument is read through aya's per-architecture register accessor.
    let Some(frame) = ctx.arg::<u64>(1) else {
        return 0;
    };
    let Some(code) = read_u64(frame + u64::from(frame_code)) else {
        return 0;
    };
    let key = CallKey { tgid, _pad: 0, code: code & !tag_bits & CODE_MASK };
    match PY_CALLS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value; a uprobe program does not preempt itself on one CPU.
        Some(count) => unsafe { *count += 1 },
        None => {
            if PY_CALLS.insert(&key, &1, BPF_NOEXIST.into()).is_err() {
                // Another CPU may have inserted the same new key first: then this call counts
                // in the entry it made, and only a table with no room loses it.
                match PY_CALLS.get_ptr_mut(&key) {
                    // SAFETY: as above.
                    Some(count) => unsafe { *count += 1 },
                    None => crate::bump(Counter::CallTableFull),
                }
            }
        }
    }
    0
}
