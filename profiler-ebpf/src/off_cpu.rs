//! Off-CPU sampling on `sched_switch`: every context switch on the host passes through here.
//!
//! At the switch-in of a thread whose last switch-out was recorded, the program writes an
//! `OffCpuEnd` with the switch-in time. At a switch-out it draws whether to record it with the
//! probability `profiler_common::off_cpu::decide` gives, and if so records the thread's stacks
//! (the current thread is the one leaving the CPU) as a `RECORD_OFF_CPU` sample with the task
//! state and the inverse of the probability as its weight. A switch that is not recorded costs
//! a read of `jiffies`, two lookups of per-thread state (in the tasks themselves from Linux 6.4,
//! see `threads_task.rs`, else in a hash map), two task field reads, a step of a per-CPU
//! random generator and a few stores (see `profiler_common::off_cpu`); the precise clock is
//! read only when a switch is recorded and when a recorded block ends.
//!
//! The program is attached as a BTF tracepoint (`off_cpu_switch`) or, where that cannot be
//! loaded, as a raw tracepoint (`off_cpu_switch_raw`); both pass the tracepoint's arguments
//! (`preempt`, `prev`, `next` and, since Linux 5.18, `prev_state`) to one body.

use core::{ffi::c_long, ptr::read_volatile};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_jiffies64, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use profiler_common::{
    counters::Counter,
    off_cpu::{
        Decision, MAX_OFF_CPU_THREADS, OffCpuThread, PF_KTHREAD, TASK_DEAD, average, next_draw,
        probability, reciprocal, seed,
    },
    sample::{OffCpuEnd, RECORD_OFF_CPU, RECORD_OFF_CPU_END},
};

use crate::{
    boot_ns, bump,
    capture::{self, Meta, Stacks},
    threads,
};

/// The interval `T` of the capture probability, in nanoseconds, and its `reciprocal`; set by
/// the loader.
#[unsafe(no_mangle)]
static OFF_CPU_INTERVAL_NS: u64 = 10_000_000;
#[unsafe(no_mangle)]
static OFF_CPU_INTERVAL_RECIPROCAL: u64 = reciprocal(10_000_000);

/// A process whose switches are not recorded (the daemon's own), 0 for none; set by the
/// loader.
#[unsafe(no_mangle)]
static OFF_CPU_SKIP_PID: u32 = 0;

/// Offset of `task_struct::pid` (the thread id), from the kernel's BTF; set by the loader.
#[unsafe(no_mangle)]
static TASK_PID: u64 = 0;
/// Offset of `task_struct::flags`; see `TASK_PID`.
#[unsafe(no_mangle)]
static TASK_FLAGS: u64 = 0;
/// Offset of `task_struct::__state` (`state` before Linux 5.14); see `TASK_PID`.
#[unsafe(no_mangle)]
static TASK_STATE: u64 = 0;
/// 1 when `sched_switch` passes `prev_state` as its fourth argument (Linux 5.18 on); set by
/// the loader from the tracepoint's BTF. The argument is the state the scheduler acted on;
/// `__state` read here may already have been changed by a concurrent wakeup.
#[unsafe(no_mangle)]
static SWITCH_HAS_PREV_STATE: u32 = 0;

/// The length of a tick (a `jiffies` increment) in nanoseconds, the resolution of
/// `CLOCK_MONOTONIC_COARSE`; set by the loader. 0 makes the capture decision read the precise
/// clock at every switch-out.
///
/// `bpf_jiffies64` rather than `bpf_ktime_get_coarse_ns`: the kernel refuses the latter in
/// tracing programs (it takes the timekeeping sequence lock, which the traced code may hold),
/// while the verifier turns the former into a plain load of `jiffies_64`.
#[unsafe(no_mangle)]
static TICK_NS: u64 = 0;

/// Per thread (by thread id): the open recorded block, the mean time between switch-outs and
/// the draws. The raw tracepoint keeps its state here; the BTF tracepoint does too in the
/// object for kernels before 6.4, and in task-local storage after (`crate::threads`).
#[map]
pub(crate) static OFF_CPU_THREADS: LruHashMap<u32, OffCpuThread> =
    LruHashMap::with_max_entries(MAX_OFF_CPU_THREADS, 0);

/// Per CPU: the state of the capture decision's random generator (`next_draw`), seeded from
/// `bpf_get_prandom_u32` at its first use.
#[map]
static OFF_CPU_RNG: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The next uniform `u32` draw for a capture decision (see `next_draw`).
#[inline(always)]
fn draw() -> u64 {
    let Some(state) = OFF_CPU_RNG.get_ptr_mut(0) else {
        // SAFETY: a helper without memory arguments.
        return u64::from(unsafe { bpf_get_prandom_u32() });
    };
    // SAFETY: this CPU's slot; the `sched_switch` program runs with interrupts off, so no
    // other program on this CPU runs it meanwhile.
    unsafe {
        let current = if *state == 0 { seed(bpf_get_prandom_u32()) } else { *state };
        let next = next_draw(current);
        *state = next;
        u64::from(next)
    }
}

/// The daemon's scale of the capture probability, in 1/65536 (`SCALE_ONE` = 1.0); the loader
/// sets it to 1.0.
#[map]
static OFF_CPU_SCALE: Array<u32> = Array::with_max_entries(1, 0);

#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_switch(ctx: BtfTracePointContext) -> i32 {
    let switch = Switch {
        preempt: ctx.arg::<u64>(0) & 0xff != 0,
        prev: ctx.arg::<u64>(1),
        next: ctx.arg::<u64>(2),
    };
    let _ = on_switch::<Direct>(&ctx, switch, || ctx.arg::<u64>(3) as u32);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn off_cpu_switch_raw(ctx: RawTracePointContext) -> i32 {
    let switch = Switch {
        preempt: ctx.arg::<u64>(0) & 0xff != 0,
        prev: ctx.arg::<u64>(1),
        next: ctx.arg::<u64>(2),
    };
    let _ = on_switch::<Probe>(&ctx, switch, || ctx.arg::<u64>(3) as u32);
    0
}

/// How `task_struct` fields are read.
trait TaskField {
    /// The `u32` at `addr`, a task pointer plus a field offset.
    fn read_u32(addr: u64) -> Result<u32, c_long>;
    /// The off-CPU state of `task`, whose thread id is `tid`, if it has one.
    fn thread(task: u64, tid: u32) -> Option<*mut OffCpuThread>;
    /// Gives `task` its first off-CPU state.
    fn insert(task: u64, tid: u32, thread: OffCpuThread);
}

/// Plain loads: the BTF tracepoint's task pointers are typed, so the verifier checks a load
/// against the field at that offset and turns it into a load that cannot fault, a few
/// nanoseconds instead of a helper call.
struct Direct;

impl TaskField for Direct {
    #[inline(always)]
    fn read_u32(addr: u64) -> Result<u32, c_long> {
        // SAFETY: see above; the verifier proves the access.
        Ok(unsafe { read_volatile(addr as *const u32) })
    }

    #[inline(always)]
    fn thread(task: u64, tid: u32) -> Option<*mut OffCpuThread> {
        threads::thread(task, tid)
    }

    #[inline(always)]
    fn insert(task: u64, tid: u32, thread: OffCpuThread) {
        threads::insert(task, tid, thread);
    }
}

/// `bpf_probe_read_kernel`, for the raw tracepoint's untyped pointers.
struct Probe;

impl TaskField for Probe {
    #[inline(always)]
    fn read_u32(addr: u64) -> Result<u32, c_long> {
        // SAFETY: bpf_probe_read_kernel fails instead of faulting.
        unsafe { bpf_probe_read_kernel(addr as *const u32) }.map_err(c_long::from)
    }

    #[inline(always)]
    fn thread(_task: u64, tid: u32) -> Option<*mut OffCpuThread> {
        OFF_CPU_THREADS.get_ptr_mut(&tid)
    }

    #[inline(always)]
    fn insert(_task: u64, tid: u32, thread: OffCpuThread) {
        let _ = OFF_CPU_THREADS.insert(&tid, &thread, 0);
    }
}

/// The arguments of `sched_switch`.
#[derive(Clone, Copy)]
struct Switch {
    preempt: bool,
    /// The task leaving the CPU, which is still the current task.
    prev: u64,
    /// The task about to run.
    next: u64,
}

/// `prev_state_arg` reads the tracepoint's fourth argument; it is called only when the loader
/// said that the kernel passes one, so that the verifier never sees the access otherwise.
#[inline(always)]
fn on_switch<T: TaskField>(
    ctx: &impl EbpfContext,
    switch: Switch,
    prev_state_arg: impl FnOnce() -> u32,
) -> Result<(), c_long> {
    // SAFETY: reads of globals the loader may rewrite before load; volatile keeps the
    // compiler from folding in the defaults.
    let (pid_at, flags_at, interval, tick) = unsafe {
        (
            read_volatile(&TASK_PID),
            read_volatile(&TASK_FLAGS),
            read_volatile(&OFF_CPU_INTERVAL_NS),
            read_volatile(&TICK_NS),
        )
    };
    switch_in::<T>(switch.next, pid_at);

    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: as above.
    if tid == 0 || (pid_tgid >> 32) as u32 == unsafe { read_volatile(&OFF_CPU_SKIP_PID) } {
        return Ok(());
    }
    let task_flags = T::read_u32(switch.prev + flags_at)?;
    if task_flags & PF_KTHREAD != 0 {
        return Ok(());
    }
    let entry = T::thread(switch.prev, tid);
    let scale = OFF_CPU_SCALE.get(0).copied().unwrap_or(0);
    // SAFETY: a helper without memory arguments, called only where the loader said that the
    // kernel allows it.
    let coarse_ns = if tick != 0 { unsafe { bpf_jiffies64() }.wrapping_mul(tick) } else { boot_ns() };
    let draw = draw();
    // The thread's mean time between switch-outs, with this one; a thread not seen before
    // counts as rare (recorded at once, and then learnt).
    let mean = match entry {
        Some(e) => {
            // SAFETY: a pointer to a map value, valid while this program runs; this CPU runs
            // the thread, so no other CPU writes its entry now.
            unsafe {
                let mean = average((*e).mean_ns, coarse_ns.saturating_sub((*e).last_out_ns));
                (*e).mean_ns = mean;
                (*e).last_out_ns = coarse_ns;
                mean
            }
        }
        None => interval,
    };
    // SAFETY: as above.
    let reciprocal = unsafe { read_volatile(&OFF_CPU_INTERVAL_RECIPROCAL) };
    let probability = probability(mean, interval, reciprocal, scale);
    if draw >= probability << 16 {
        return Ok(());
    }
    let decision = Decision::of(probability);
    let now = boot_ns();

    let state = if switch.preempt {
        0
    // SAFETY: as above.
    } else if unsafe { read_volatile(&SWITCH_HAS_PREV_STATE) } != 0 {
        prev_state_arg()
    } else {
        // SAFETY: as above.
        let state_at = unsafe { read_volatile(&TASK_STATE) };
        T::read_u32(switch.prev + state_at)?
    };
    // An exiting thread's last switch: it never runs again.
    if state & TASK_DEAD != 0 {
        return Ok(());
    }
    let meta = Meta { kind: RECORD_OFF_CPU, time_ns: now, state, weight: decision.weight, addr: 0 };
    if !capture::capture(ctx.as_ptr(), pid_tgid, Stacks::Current, meta)? {
        bump(Counter::OffCpuRingBufFull);
        return Ok(());
    }
    bump(Counter::OffCpuCaptured);
    match entry {
        // SAFETY: as above.
        Some(e) => unsafe {
            (*e).start_ns = now;
            (*e).tgid = (pid_tgid >> 32) as u32;
        },
        None => {
            let thread = OffCpuThread {
                start_ns: now,
                mean_ns: mean,
                last_out_ns: coarse_ns,
                tgid: (pid_tgid >> 32) as u32,
                _pad: 0,
            };
            T::insert(switch.prev, tid, thread);
        }
    }
    Ok(())
}

/// Ends the open block, if any, of `task`, whose `task_struct::pid` is at offset `pid_at`.
#[inline(always)]
fn switch_in<T: TaskField>(task: u64, pid_at: u64) {
    let Ok(tid) = T::read_u32(task + pid_at) else {
        return;
    };
    if tid == 0 {
        return;
    }
    let Some(entry) = T::thread(task, tid) else {
        return;
    };
    // SAFETY: a pointer to a map value, valid while this program runs. A thread is switched in
    // on one CPU only after its switch-out on another has finished, so no other program
    // writes this entry meanwhile.
    let (start_ns, tgid) = unsafe { ((*entry).start_ns, (*entry).tgid) };
    if start_ns == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    let end =
        OffCpuEnd { kind: RECORD_OFF_CPU_END, tgid, tid, _pad: 0, start_ns, end_ns: boot_ns() };
    if capture::submit(&end) {
        bump(Counter::OffCpuEnded);
    } else {
        bump(Counter::OffCpuRingBufFull);
    }
}
