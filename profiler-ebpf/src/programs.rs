// The programs and maps both objects share, included by `main.rs` and `main_hash.rs`, which
// differ only in their `threads` module (where the off-CPU program keeps its per-thread state).

use core::{ffi::c_long, ptr::read_volatile};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{map, perf_event},
    maps::PerCpuArray,
    programs::PerfEventContext,
};
mod arch;
mod calls;
mod capture;
mod gil;
mod off_cpu;
mod oom;
mod process;
mod python;
mod stack_copy;
mod user_stack;

use capture::{Meta, Stacks};
use profiler_common::{
    counters::Counter,
    sample::{RECORD_CPU, RECORD_MEMORY},
};

/// Set to 1 by the loader to sample the idle task (pid 0) as well.
#[unsafe(no_mangle)]
static INCLUDE_IDLE: u32 = 0;

/// One `u64` per [`Counter`], per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; neither the perf-event program nor the `sched_switch` program
        // (which runs with interrupts off) is interrupted by another program on its CPU.
        unsafe { *slot += 1 };
    }
}

#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    match try_sample_cpu(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sample_cpu(ctx: &PerfEventContext) -> Result<(), c_long> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a read of a global the loader may rewrite before load; volatile keeps the
    // compiler from folding in the default.
    if pid_tgid as u32 == 0 && unsafe { read_volatile(&INCLUDE_IDLE) } == 0 {
        bump(Counter::IdleSkipped);
        return Ok(());
    }
    let meta = Meta { kind: RECORD_CPU, time_ns: boot_ns(), state: 0, weight: 0, addr: 0 };
    if capture::capture(ctx.as_ptr(), pid_tgid, Stacks::Sampled(ctx), meta)? {
        bump(Counter::Sampled);
    } else {
        bump(Counter::RingBufFull);
    }
    Ok(())
}

/// Bytes that one sampling period of page faults maps: the period times the page size. Set by
/// the loader.
#[unsafe(no_mangle)]
static FAULT_PERIOD_BYTES: u64 = 4096;

/// Runs on one page fault in every period of the `page-faults` software event (one event per
/// online CPU), in the context of the faulting thread: its stacks are where it touched memory
/// that was not mapped yet.
#[perf_event]
pub fn sample_fault(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == 0 {
        return 0;
    }
    // SAFETY: a read of a global the loader rewrites before load.
    let weight = unsafe { read_volatile(&FAULT_PERIOD_BYTES) };
    let addr = arch::fault_addr(&ctx);
    let meta = Meta { kind: RECORD_MEMORY, time_ns: boot_ns(), state: 0, weight, addr };
    match capture::capture(ctx.as_ptr(), pid_tgid, Stacks::Sampled(&ctx), meta) {
        Ok(true) => bump(Counter::MemorySampled),
        Ok(false) => bump(Counter::MemoryRingBufFull),
        Err(_) => return 1,
    }
    0
}

/// `bpf_ktime_get_boot_ns()`: the clock of every timestamp in the records.
#[inline(always)]
pub(crate) fn boot_ns() -> u64 {
    // SAFETY: helper without memory arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
