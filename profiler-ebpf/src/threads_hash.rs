//! The off-CPU program's per-thread state in the `OFF_CPU_THREADS` hash map, keyed by thread
//! id: the object for kernels before 6.4 (see `threads_task.rs`).

use profiler_common::off_cpu::OffCpuThread;

use crate::off_cpu::OFF_CPU_THREADS;

/// The off-CPU state of the thread `tid`, if it has one.
#[inline(always)]
pub(crate) fn thread(_task: u64, tid: u32) -> Option<*mut OffCpuThread> {
    OFF_CPU_THREADS.get_ptr_mut(&tid)
}

/// Gives the thread `tid` its first off-CPU state (the least recently used entry makes room).
#[inline(always)]
pub(crate) fn insert(_task: u64, tid: u32, thread: OffCpuThread) {
    let _ = OFF_CPU_THREADS.insert(&tid, &thread, 0);
}
