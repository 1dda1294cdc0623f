//! Recording the current thread's stacks: the kernel stack, the user stack and the Python
//! frames, assembled in a per-CPU scratch record and copied into the `SAMPLES` ring buffer.
//! The perf-event sampler and the `sched_switch` program both record through here; they differ
//! in where the stacks come from ([`Stacks`]) and in the record's kind, state and weight
//! ([`Meta`]).

use core::{
    ffi::{c_long, c_void},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_smp_processor_id, bpf_get_stack, bpf_probe_read_user},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use profiler_common::{
    counters::Counter,
    python::{FLAG_PY_NO_THREAD, FLAG_PY_READ_ERROR, FLAG_PY_TRUNCATED},
    sample::{
        DATA_WORDS, FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED, FLAG_USER_ERROR, FLAG_USER_TRUNCATED,
        LEAF_WORDS, MAX_STACK_DEPTH, SampleEvent, SampleHeader,
    },
};

use crate::{arch, bump, gil, process, python, stack_copy, user_stack};

/// Unread bytes in `SAMPLES` above which a submit wakes the daemon; set by the loader. Below
/// it, records are submitted without a wakeup and the daemon drains them on its timer: a
/// wakeup is an irq_work self-IPI, which costs microseconds (a VM exit under virtualization).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

/// Sample records for the daemon. The loader sizes it from the config.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU buffer in which a record is assembled. The perf-event program and the
/// `sched_switch` program share it: the latter runs with interrupts off, so the former's
/// timer cannot interrupt it on its CPU.
#[map]
static SCRATCH: PerCpuArray<SampleEvent> = PerCpuArray::with_max_entries(1, 0);

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

/// Where the stacks of the record come from.
#[derive(Clone, Copy)]
pub(crate) enum Stacks<'a> {
    /// A perf event's sampled registers: in user code, there is no kernel stack and the user
    /// stack is walked from the interrupted instruction and frame pointer.
    Sampled(&'a PerfEventContext),
    /// A tracepoint: the kernel stack is the current one and the kernel finds the user
    /// registers saved at the last entry into the kernel.
    Current,
}

/// Frames at the top of a tracepoint program's kernel stack that belong to the probe: the
/// program itself and `bpf_trace_run<N>`, which the tracepoint's probe stub tail-calls. The
/// stack then starts at `__schedule`, or at `__traceiter_sched_switch` when more than one
/// program is attached to the tracepoint (with a single probe the tracepoint calls it
/// directly).
const PROBE_FRAMES: u64 = 2;

impl Stacks<'_> {
    /// `bpf_get_stack`'s flags for the kernel stack: the number of frames to skip
    /// (`BPF_F_SKIP_FIELD_MASK`, the low 8 bits).
    #[inline(always)]
    fn skip(self) -> u64 {
        match self {
            // The sampled registers are the interrupted code's.
            Stacks::Sampled(_) => 0,
            Stacks::Current => PROBE_FRAMES,
        }
    }
}

/// What the record says beyond the thread and its stacks.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    /// `RECORD_*`.
    pub kind: u32,
    /// `bpf_ktime_get_boot_ns()` the caller took.
    pub time_ns: u64,
    /// See `SampleHeader::state`.
    pub state: u32,
    /// See `SampleHeader::weight`.
    pub weight: u64,
    /// See `SampleHeader::addr`.
    pub addr: u64,
}

/// Records the current thread (`pid_tgid` as `bpf_get_current_pid_tgid` returns it) and
/// returns whether the ring buffer had room for the record. Stack read errors and Python
/// outcomes are counted here; the caller counts the record.
#[inline(always)]
pub(crate) fn capture(
    ctx: *mut c_void,
    pid_tgid: u64,
    stacks: Stacks<'_>,
    meta: Meta,
) -> Result<bool, c_long> {
    let tid = pid_tgid as u32;
    // The record is built in a per-CPU scratch buffer that stays in cache, and only its used
    // part is copied to the ring buffer: writing whole fixed-size records straight into the
    // ring touched 2 KiB of cold memory per sample and tripled the cost.
    let ev = SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let mut flags = 0u32;
    // SAFETY: `ev` points at this CPU's scratch value, which nothing else uses while this
    // program runs on this CPU.
    let (header, ips) = unsafe { (&mut (*ev).header, &mut (*ev).data) };
    header.kind = meta.kind;
    header.time_ns = meta.time_ns;
    header.state = meta.state;
    header.weight = meta.weight;
    header.addr = meta.addr;
    let (start_ns, exec_id) = process::identity();
    header.start_ns = start_ns;
    header.exec_id = exec_id;
    header.tgid = (pid_tgid >> 32) as u32;
    header.tid = tid;
    // SAFETY: helper without memory arguments.
    header.cpu = unsafe { bpf_get_smp_processor_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    header.leaf_stack = [0; LEAF_WORDS];
    header.leaf_lr = 0;
    header.user_sp = 0;
    header.user_fp = 0;
    header.stack_bytes = 0;

    // A sample of user code has no kernel stack, yet asking for it costs a microsecond.
    let in_user = match stacks {
        Stacks::Sampled(ctx) => arch::in_user_mode(ctx),
        Stacks::Current => false,
    };
    let kernel = if in_user {
        0
    } else {
        // SAFETY: the destination has room for MAX_STACK_DEPTH frames.
        unsafe { bpf_get_stack(ctx, ips.as_mut_ptr().cast::<c_void>(), STACK_BYTES, stacks.skip()) }
    };
    let kernel_len = stack_len(kernel, &mut flags, FLAG_KERNEL_ERROR, FLAG_KERNEL_TRUNCATED);
    // Verifier: the user stack goes right after the kernel frames; the mask proves that the
    // offset stays within the first half of `ips`.
    let user_at = (kernel_len as usize) & 0x7f;
    // Verifier: the registers are read here, where they are used, rather than before the
    // kernel stack: read early, the compiler tests the code segment twice, and the verifier,
    // which does not remember a failed equality, sees a path with the registers unread.
    let user_regs = match stacks {
        Stacks::Sampled(ctx) => arch::user_ip_and_fp(ctx),
        Stacks::Current => None,
    };
    let mut user_ip = 0;
    let user_len = match user_regs {
        Some((ip, fp)) => {
            user_ip = ip;
            if let Stacks::Sampled(ctx) = stacks {
                let (sp, lr) = arch::user_sp_and_lr(ctx);
                header.leaf_lr = lr;
                header.user_sp = sp;
                header.user_fp = fp;
            }
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
        // In the kernel (a system call, a fault, a switch) the user registers are elsewhere:
        // the kernel finds them.
        None => {
            // SAFETY: user_at <= 127, so MAX_STACK_DEPTH frames from there fit in `ips`.
            let user = unsafe {
                bpf_get_stack(
                    ctx,
                    ips.as_mut_ptr().add(user_at).cast::<c_void>(),
                    STACK_BYTES,
                    BPF_F_USER_STACK.into(),
                )
            };
            let len = stack_len(user, &mut flags, FLAG_USER_ERROR, FLAG_USER_TRUNCATED);
            // The registers the thread left user code with, for the stack's copy.
            if len > 0
                && let Some((sp, fp, lr)) = gil::saved_user_regs().and_then(arch::saved_sp_fp_lr)
            {
                user_ip = ips[user_at];
                header.user_sp = sp;
                header.user_fp = fp;
                header.leaf_lr = lr;
            }
            len
        }
    };
    let py_at = (user_at + user_len as usize) & 0xff;
    let thread = python::thread((header.tgid, tid), (start_ns, exec_id));
    // A sample in a Python interpreter's own code copies no stack: the Python frames replace
    // its native ones.
    let in_interpreter = thread.as_ref().is_some_and(|t| {
        user_ip >= t.process.text_start && user_ip < t.process.text_end
    });
    let py_len = thread.as_ref().map_or(0, |t| python::walk(ips, py_at, t, &mut flags));
    // Verifier: as for the user stack, the count goes through map memory, so that what follows
    // (the GIL's reads among it) is checked once rather than once per way out of the walk.
    // SAFETY: `header` is this CPU's scratch record.
    let py_len = unsafe {
        core::ptr::write_volatile(&raw mut header.py_len, py_len);
        core::ptr::read_volatile(&raw const header.py_len) & 0xff
    };
    // The GIL bits stay apart from `flags`, on which this function branches below, so that
    // the verifier need not tell their combinations apart.
    let off_cpu = matches!(stacks, Stacks::Current);
    let gil = thread.map_or(0, |t| gil::flags(t.process, t.tstate, off_cpu));
    header.kernel_len = user_at as u32;
    header.user_len = user_len;
    header.py_len = py_len;
    header.flags = flags | gil;
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
    // The stack's copy follows the frames, for processes whose code lacks frame pointers.
    let stack_bytes = if header.user_sp != 0 && !in_interpreter {
        let want = stack_copy::wanted(header.tgid);
        if want == 0 {
            0
        } else {
            stack_copy::copy(ips.as_mut_ptr().cast::<u8>(), frames * 8, header.user_sp, want)
        }
    } else {
        0
    };
    header.stack_bytes = stack_bytes;
    // The words a function without a frame record keeps its return address in, for the
    // collector's leaf rule, unless the copy holds them.
    if in_user && stack_bytes == 0 {
        // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
        header.leaf_stack =
            unsafe { bpf_probe_read_user(header.user_sp as *const [u64; LEAF_WORDS]) }
                .unwrap_or_default();
    }
    let size = (SampleHeader::SIZE + frames * 8 + stack_bytes as usize)
        .min(core::mem::size_of::<SampleEvent>());
    // SAFETY: `ev` is valid for size_of::<SampleEvent>() >= size bytes.
    let record = unsafe { core::slice::from_raw_parts(ev.cast::<u8>().cast_const(), size) };
    Ok(submit(record))
}

/// Copies `record` into `SAMPLES`, waking the daemon only when the ring is filling up.
/// Returns whether it had room.
#[inline(always)]
pub(crate) fn submit<T: ?Sized>(record: &T) -> bool {
    // SAFETY: a read of a global the loader may rewrite before load; volatile keeps the
    // compiler from folding in the default.
    let wakeup = unsafe { read_volatile(&WAKEUP_BYTES) };
    let wake = if SAMPLES.query(BPF_RB_AVAIL_DATA.into()) >= wakeup {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    SAMPLES.output::<T>(record, wake.into()).is_ok()
}

/// Writes `record` into the ring buffer and wakes the daemon whatever the ring holds; false
/// when the ring is full.
pub(crate) fn submit_now<T: ?Sized>(record: &T) -> bool {
    SAMPLES.output::<T>(record, BPF_RB_FORCE_WAKEUP.into()).is_ok()
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
