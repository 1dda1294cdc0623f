//! The user stack of a sample that interrupted user code, by frame pointers, walked here
//! rather than by `bpf_get_stack`: the kernel's walk costs about a microsecond for a handful
//! of frames, these reads a few tens of nanoseconds each.
//!
//! A frame record is the caller's frame pointer followed by the return address, on x86_64
//! (`push rbp; mov rbp, rsp`) and on aarch64 (`stp x29, x30, [sp, #-16]!; mov x29, sp`)
//! alike. Callers' records lie at higher addresses; a walk that would go down or stay put has
//! left the frame chain (code built without frame pointers keeps other values in that
//! register), and it stops there instead of following a loop.

use aya_ebpf::helpers::bpf_probe_read_user;
use profiler_common::sample::{DATA_WORDS, MAX_STACK_DEPTH};

/// Writes the interrupted instruction `ip`, then the return address of each frame record
/// from `fp` on, into `data[start..]`. Returns the number of addresses and whether the walk
/// stopped at the depth limit rather than at the end of the chain.
#[inline(always)]
pub fn walk(data: &mut [u64; DATA_WORDS], start: usize, ip: u64, mut fp: u64) -> (u32, bool) {
    data[start & (DATA_WORDS - 1)] = ip;
    let mut n = 1usize;
    // Verifier: a constant bound, and slots that depend only on the loop counter.
    for i in 1..MAX_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            return (n as u32, false);
        }
        // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            return (n as u32, false);
        };
        if ret == 0 {
            return (n as u32, false);
        }
        data[(start + i) & (DATA_WORDS - 1)] = ret;
        n = i + 1;
        if next <= fp {
            return (n as u32, false);
        }
        fp = next;
    }
    (n as u32, true)
}
