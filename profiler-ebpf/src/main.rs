//! Kernel programs of the profiler.
//!
//! `sample_cpu` runs on every `cpu-clock` perf event (one event per online CPU) and writes one
//! [`SampleEvent`] per sample into the `SAMPLES` ring buffer, with the raw kernel and user
//! return addresses. Every outcome is counted in `COUNTERS`.
#![no_std]
#![no_main]

use core::{
    ffi::{c_long, c_void},
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack,
        bpf_ktime_get_boot_ns,
    },
    macros::{map, perf_event},
    maps::{PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use profiler_common::{
    counters::Counter,
    sample::{
        FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED, FLAG_USER_ERROR, FLAG_USER_TRUNCATED,
        MAX_STACK_DEPTH, SampleEvent,
    },
};

/// Set to 1 by the loader to sample the idle task (pid 0) as well.
#[unsafe(no_mangle)]
static INCLUDE_IDLE: u32 = 0;

/// Sample records for the daemon. The loader sizes it from the config.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// One `u64` per [`Counter`], per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and a perf-event program cannot preempt itself on one CPU.
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
    let tid = pid_tgid as u32;
    // SAFETY: a read of a global the loader may rewrite before load; volatile keeps the
    // compiler from folding in the default.
    if tid == 0 && unsafe { read_volatile(&INCLUDE_IDLE) } == 0 {
        bump(Counter::IdleSkipped);
        return Ok(());
    }
    let Some(mut entry) = SAMPLES.reserve::<SampleEvent>(0) else {
        bump(Counter::RingBufFull);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let mut flags = 0u32;
    // SAFETY: `ev` points at a reserved, writable record of size_of::<SampleEvent>() bytes;
    // every field is written through raw pointers before submit, stack arrays up to the
    // length that bpf_get_stack reports (the daemon reads no further).
    unsafe {
        addr_of_mut!((*ev).time_ns).write(bpf_ktime_get_boot_ns());
        addr_of_mut!((*ev).tgid).write((pid_tgid >> 32) as u32);
        addr_of_mut!((*ev).tid).write(tid);
        addr_of_mut!((*ev).cpu).write(bpf_get_smp_processor_id());
        addr_of_mut!((*ev).comm).write(bpf_get_current_comm().unwrap_or([0; 16]));

        let kernel = bpf_get_stack(
            ctx.as_ptr(),
            addr_of_mut!((*ev).kernel_ips).cast::<c_void>(),
            STACK_BYTES,
            0,
        );
        let kernel_len = stack_len(kernel, &mut flags, FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED);
        addr_of_mut!((*ev).kernel_len).write(kernel_len);

        let user = bpf_get_stack(
            ctx.as_ptr(),
            addr_of_mut!((*ev).user_ips).cast::<c_void>(),
            STACK_BYTES,
            BPF_F_USER_STACK.into(),
        );
        let user_len = stack_len(user, &mut flags, FLAG_USER_ERROR, FLAG_USER_TRUNCATED);
        addr_of_mut!((*ev).user_len).write(user_len);
        addr_of_mut!((*ev).flags).write(flags);
    }
    if flags & FLAG_KERNEL_ERROR != 0 {
        bump(Counter::KernelStackError);
    }
    if flags & FLAG_USER_ERROR != 0 {
        bump(Counter::UserStackError);
    }
    entry.submit(0);
    bump(Counter::Sampled);
    Ok(())
}

/// Turns bpf_get_stack's byte count (or negative errno) into a frame count and flags.
#[inline(always)]
fn stack_len(ret: c_long, flags: &mut u32, error: u32, truncated: u32) -> u32 {
    if ret < 0 {
        *flags |= error;
        return 0;
    }
    let frames = (ret as u32) / 8;
    if frames as usize >= MAX_STACK_DEPTH {
        *flags |= truncated;
    }
    frames
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
