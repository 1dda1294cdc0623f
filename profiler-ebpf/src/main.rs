//! Kernel programs of the profiler.
//!
//! `sample_cpu` runs on every `cpu-clock` perf event (one event per online CPU) and writes one
//! record per sample into the `SAMPLES` ring buffer: a [`SampleHeader`] followed by the raw
//! kernel and user return addresses. Every outcome is counted in `COUNTERS`. `python_call`
//! (in `calls`) counts CPython calls per code object when the daemon attaches it.
#![no_std]
#![no_main]

use core::{
    ffi::{c_long, c_void},
    ptr::read_volatile,
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack,
        bpf_ktime_get_boot_ns,
    },
    macros::{map, perf_event},
    maps::{PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
mod arch;
mod calls;
mod process;
mod python;
mod user_stack;

use profiler_common::{
    counters::Counter,
    python::{FLAG_PY_NO_THREAD, FLAG_PY_READ_ERROR, FLAG_PY_TRUNCATED},
    sample::{
        DATA_WORDS, FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED, FLAG_USER_ERROR, FLAG_USER_TRUNCATED,
        MAX_STACK_DEPTH, SampleEvent, SampleHeader,
    },
};

/// Set to 1 by the loader to sample the idle task (pid 0) as well.
#[unsafe(no_mangle)]
static INCLUDE_IDLE: u32 = 0;

/// Unread bytes in `SAMPLES` above which a submit wakes the daemon; set by the loader. Below
/// it, records are submitted without a wakeup and the daemon drains them on its timer: a
/// wakeup is an irq_work self-IPI, which costs microseconds (a VM exit under virtualization).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

/// Sample records for the daemon. The loader sizes it from the config.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU buffer in which a record is assembled.
#[map]
static SCRATCH: PerCpuArray<SampleEvent> = PerCpuArray::with_max_entries(1, 0);

/// One `u64` per [`Counter`], per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
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
    // The record is built in a per-CPU scratch buffer that stays in cache, and only its used
    // part is copied to the ring buffer: writing whole fixed-size records straight into the
    // ring touched 2 KiB of cold memory per sample and tripled the cost.
    let ev = SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let mut flags = 0u32;
    // SAFETY: `ev` points at this CPU's scratch value, which nothing else uses while this
    // program runs on this CPU.
    let (header, ips) = unsafe { (&mut (*ev).header, &mut (*ev).data) };
    header.time_ns = bpf_ktime_get_boot_ns_safe();
    let (start_ns, exec_id) = process::identity();
    header.start_ns = start_ns;
    header.exec_id = exec_id;
    header.tgid = (pid_tgid >> 32) as u32;
    header.tid = tid;
    // SAFETY: helper without memory arguments.
    header.cpu = unsafe { bpf_get_smp_processor_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);

    // A sample of user code has no kernel stack, yet asking for it costs a microsecond.
    let kernel = if arch::in_user_mode(ctx) {
        0
    } else {
        // SAFETY: the destination has room for MAX_STACK_DEPTH frames.
        unsafe { bpf_get_stack(ctx.as_ptr(), ips.as_mut_ptr().cast::<c_void>(), STACK_BYTES, 0) }
    };
    let kernel_len = stack_len(kernel, &mut flags, FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED);
    // Verifier: the user stack goes right after the kernel frames; the mask proves that the
    // offset stays within the first half of `ips`.
    let user_at = (kernel_len as usize) & 0x7f;
    let user_len = match arch::user_ip_and_fp(ctx) {
        Some((ip, fp)) => {
            let (frames, truncated) = user_stack::walk(ips, user_at, ip, fp);
            if truncated {
                flags |= FLAG_USER_TRUNCATED;
            }
            // Verifier: a count read back from map memory is a bounded unknown rather than one
            // exact value per way out of the walk, so the walk's exits share one state and the
            // Python walk after it is checked once, not once per exit.
            // SAFETY: `header` is this CPU's scratch record.
            unsafe {
                core::ptr::write_volatile(&raw mut header.user_len, frames);
                core::ptr::read_volatile(&raw const header.user_len) & 0x7f
            }
        }
        // In the kernel (a system call, a fault) the user registers are elsewhere: the
        // kernel finds them.
        None => {
            // SAFETY: user_at <= 127, so MAX_STACK_DEPTH frames from there fit in `ips`.
            let user = unsafe {
                bpf_get_stack(
                    ctx.as_ptr(),
                    ips.as_mut_ptr().add(user_at).cast::<c_void>(),
                    STACK_BYTES,
                    BPF_F_USER_STACK.into(),
                )
            };
            stack_len(user, &mut flags, FLAG_USER_ERROR, FLAG_USER_TRUNCATED)
        }
    };
    let py_at = (user_at + user_len as usize) & 0xff;
    let py_len = python::walk(ips, py_at, header.tgid, tid, (start_ns, exec_id), &mut flags);
    header.kernel_len = user_at as u32;
    header.user_len = user_len;
    header.py_len = py_len;
    header.flags = flags;
    if flags & FLAG_KERNEL_ERROR != 0 {
        bump(Counter::KernelStackError);
    }
    if flags & FLAG_USER_ERROR != 0 {
        bump(Counter::UserStackError);
    }
    if flags & FLAG_PY_NO_THREAD != 0 {
        bump(Counter::PythonNoThread);
    }
    if flags & FLAG_PY_READ_ERROR != 0 {
        bump(Counter::PythonReadError);
    }
    if flags & FLAG_PY_TRUNCATED != 0 {
        bump(Counter::PythonTruncated);
    }

    // Verifier: bound the size by the scratch value's size.
    let frames = (py_at + 2 * py_len as usize) & (DATA_WORDS - 1);
    let size = (SampleHeader::SIZE + frames * 8).min(core::mem::size_of::<SampleEvent>());
    // SAFETY: as for INCLUDE_IDLE.
    let wakeup = unsafe { read_volatile(&WAKEUP_BYTES) };
    let wake = if SAMPLES.query(BPF_RB_AVAIL_DATA.into()) >= wakeup {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `ev` is valid for size_of::<SampleEvent>() >= size bytes.
    let record = unsafe { core::slice::from_raw_parts(ev.cast::<u8>().cast_const(), size) };
    match SAMPLES.output::<[u8]>(record, wake.into()) {
        Ok(()) => bump(Counter::Sampled),
        Err(_) => bump(Counter::RingBufFull),
    }
    Ok(())
}

#[inline(always)]
fn bpf_ktime_get_boot_ns_safe() -> u64 {
    // SAFETY: helper without memory arguments.
    unsafe { bpf_ktime_get_boot_ns() }
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
