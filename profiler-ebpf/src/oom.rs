//! OOM kills: `mark_victim` fires when the kernel has chosen a process to kill for lack of
//! memory, by the global OOM killer or a cgroup's. The record names the victim, so that the
//! daemon can put the kill next to the victim's memory timeline and growth profile.
//!
//! The tracepoint passes the victim's `task_struct` and uid since Linux 6.9 (and in some
//! backports), and only its pid before; the loader reads which from the tracepoint's BTF.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    sample::{OomKill, RECORD_OOM_KILL, TASK_COMM_LEN},
};

use crate::{boot_ns, bump, capture};

/// 1 when the tracepoint's first argument is the victim's `task_struct` (else its pid); set by
/// the loader.
#[unsafe(no_mangle)]
static OOM_ARG_IS_TASK: u32 = 0;
/// Offsets of `task_struct::pid`, `::tgid` and `::comm`, from the kernel's BTF; set by the
/// loader.
#[unsafe(no_mangle)]
static OOM_TASK_PID: u64 = 0;
#[unsafe(no_mangle)]
static OOM_TASK_TGID: u64 = 0;
#[unsafe(no_mangle)]
static OOM_TASK_COMM: u64 = 0;
/// Offset of `task_struct::mm`, of the first resident page counter in `mm_struct`, and the
/// bytes between counters (see `Btf::rss_counters` in the daemon); 0 when unknown.
#[unsafe(no_mangle)]
static OOM_TASK_MM: u64 = 0;
#[unsafe(no_mangle)]
static OOM_RSS_FIRST: u64 = 0;
#[unsafe(no_mangle)]
static OOM_RSS_STRIDE: u64 = 0;

/// Indexes of the counters kept: `MM_FILEPAGES`, `MM_ANONPAGES`, `MM_SHMEMPAGES`.
const RSS_COUNTERS: [u64; 3] = [0, 1, 3];

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim(ctx: BtfTracePointContext) -> i32 {
    let arg = ctx.arg::<u64>(0);
    // SAFETY: reads of globals the loader may rewrite before load.
    let (is_task, pid_at, tgid_at, comm_at) = unsafe {
        (
            read_volatile(&OOM_ARG_IS_TASK),
            read_volatile(&OOM_TASK_PID),
            read_volatile(&OOM_TASK_TGID),
            read_volatile(&OOM_TASK_COMM),
        )
    };
    let mut kill = OomKill { kind: RECORD_OOM_KILL, ..OomKill::default() };
    if is_task != 0 {
        // SAFETY: bpf_probe_read_kernel fails instead of faulting.
        unsafe {
            kill.tid = bpf_probe_read_kernel((arg + pid_at) as *const u32).unwrap_or(0);
            kill.tgid = bpf_probe_read_kernel((arg + tgid_at) as *const u32).unwrap_or(kill.tid);
            kill.comm = bpf_probe_read_kernel((arg + comm_at) as *const [u8; TASK_COMM_LEN])
                .unwrap_or([0; TASK_COMM_LEN]);
        }
        kill.rss_pages = rss_pages(arg);
    } else {
        kill.tid = arg as u32;
        kill.tgid = arg as u32;
    }
    kill.time_ns = boot_ns();
    bump(Counter::OomKills);
    if !capture::submit(&kill) {
        bump(Counter::OomRingBufFull);
    }
    0
}

/// The resident page counts of `task`'s memory (zeros where unknown). A count is a sum of
/// per-CPU deltas that may be slightly behind, and is never negative here.
#[inline(always)]
fn rss_pages(task: u64) -> [u64; 3] {
    // SAFETY: reads of globals the loader may rewrite before load.
    let (mm_at, first, stride) = unsafe {
        (read_volatile(&OOM_TASK_MM), read_volatile(&OOM_RSS_FIRST), read_volatile(&OOM_RSS_STRIDE))
    };
    let mut pages = [0u64; 3];
    if mm_at == 0 || stride == 0 {
        return pages;
    }
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    let Ok(mm) = (unsafe { bpf_probe_read_kernel((task + mm_at) as *const u64) }) else {
        return pages;
    };
    if mm == 0 {
        return pages;
    }
    for (slot, index) in pages.iter_mut().zip(RSS_COUNTERS) {
        // SAFETY: as above.
        let count = unsafe { bpf_probe_read_kernel((mm + first + index * stride) as *const i64) };
        *slot = count.unwrap_or(0).max(0) as u64;
    }
    pages
}
