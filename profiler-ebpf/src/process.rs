//! Which process is running: its start time and `execve` count, read from the current task's
//! group leader with offsets from the kernel's BTF (set by the loader). A pid alone is not an
//! identity: pids are reused, and `execve` keeps the pid while replacing the program.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

/// Offsets in `task_struct`, from the kernel's BTF; 0 when unknown. Set by the loader.
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER: u64 = 0;
/// See `TASK_GROUP_LEADER`.
#[unsafe(no_mangle)]
static TASK_START_BOOTTIME: u64 = 0;
/// See `TASK_GROUP_LEADER`.
#[unsafe(no_mangle)]
static TASK_SELF_EXEC_ID: u64 = 0;

/// The current process's (start ns since boot, `execve` count), or zeros when the offsets are
/// unknown or a read fails.
#[inline(always)]
pub fn identity() -> (u64, u32) {
    // SAFETY: reads of globals the loader may rewrite before load; volatile keeps the
    // compiler from folding in the defaults.
    let (leader_at, start_at, exec_at) = unsafe {
        (
            core::ptr::read_volatile(&TASK_GROUP_LEADER),
            core::ptr::read_volatile(&TASK_START_BOOTTIME),
            core::ptr::read_volatile(&TASK_SELF_EXEC_ID),
        )
    };
    if leader_at == 0 || start_at == 0 || exec_at == 0 {
        return (0, 0);
    }
    // SAFETY: helper without memory arguments; the task is only read through
    // bpf_probe_read_kernel, which fails instead of faulting.
    let task = unsafe { bpf_get_current_task() };
    let Ok(leader) = (unsafe { bpf_probe_read_kernel((task + leader_at) as *const u64) }) else {
        return (0, 0);
    };
    let start = unsafe { bpf_probe_read_kernel((leader + start_at) as *const u64) }.unwrap_or(0);
    // `self_exec_id` is a u64 on current kernels and a u32 on older ones: the low half is the
    // same little-endian word either way.
    let exec = unsafe { bpf_probe_read_kernel((leader + exec_at) as *const u32) }.unwrap_or(0);
    (start, exec)
}

/// Runs when a process has loaded a new program (`execve`), as that program: records the
/// process with its new identity and wakes the daemon at once, so that it reads the process's
/// executable and maps while it runs. A program that runs for a few milliseconds is often gone
/// by the time its first sample would have been handled (the drain runs every 100 ms).
#[aya_ebpf::macros::btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    use profiler_common::{
        counters::Counter,
        sample::{Exec, RECORD_EXEC},
    };
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (start_ns, exec_id) = identity();
    let exec = Exec {
        kind: RECORD_EXEC,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        exec_id,
        start_ns,
        time_ns: crate::boot_ns(),
        comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or_default(),
    };
    if crate::capture::submit_now(&exec) {
        crate::bump(Counter::Execs);
    } else {
        crate::bump(Counter::ExecRingBufFull);
    }
    0
}
