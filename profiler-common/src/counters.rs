//! The `COUNTERS` per-CPU array: one slot per outcome of the sampling program.
//!
//! Nothing the kernel side drops goes uncounted: every early return of the perf-event program
//! bumps exactly one of these slots, and so does every call the entry probe cannot count and
//! every off-CPU record the ring buffer has no room for.

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Perf-event runs that produced an on-CPU sample record.
    Sampled = 0,
    /// Runs on the idle task that were skipped because idle sampling is off.
    IdleSkipped = 1,
    /// Samples lost because the ring buffer was full.
    RingBufFull = 2,
    /// Samples whose kernel stack could not be read (sent without a kernel stack).
    KernelStackError = 3,
    /// Samples whose user stack could not be read (sent without a user stack).
    UserStackError = 4,
    /// Python samples whose thread state was not found (no Python frames sent).
    PythonNoThread = 5,
    /// Python samples whose frame chain could not be read to the end.
    PythonReadError = 6,
    /// Python samples deeper than the recorded limit (marked truncated).
    PythonTruncated = 7,
    /// Python calls not counted because the `PY_CALLS` table was full.
    CallTableFull = 8,
    /// Switch-outs recorded by the off-CPU program (records written).
    OffCpuCaptured = 9,
    /// Ends of recorded off-CPU blocks written.
    OffCpuEnded = 10,
    /// Off-CPU records (a switch-out or the end of a block) lost because the ring buffer was
    /// full.
    OffCpuRingBufFull = 11,
    /// Page-fault events that produced a memory sample record.
    MemorySampled = 12,
    /// Memory samples lost because the ring buffer was full.
    MemoryRingBufFull = 13,
    /// Processes the kernel chose to kill for lack of memory (`mark_victim`), recorded or
    /// not.
    OomKills = 14,
    /// OOM kill records lost because the ring buffer was full.
    OomRingBufFull = 15,
    /// `execve`s recorded (`sched_process_exec`), so that the daemon reads the new program
    /// while it runs.
    Execs = 16,
    /// Exec records lost because the ring buffer was full.
    ExecRingBufFull = 17,
}

impl Counter {
    /// Number of slots in the `COUNTERS` map.
    pub const COUNT: u32 = 18;

    /// Every counter, in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Sampled,
        Counter::IdleSkipped,
        Counter::RingBufFull,
        Counter::KernelStackError,
        Counter::UserStackError,
        Counter::PythonNoThread,
        Counter::PythonReadError,
        Counter::PythonTruncated,
        Counter::CallTableFull,
        Counter::OffCpuCaptured,
        Counter::OffCpuEnded,
        Counter::OffCpuRingBufFull,
        Counter::MemorySampled,
        Counter::MemoryRingBufFull,
        Counter::OomKills,
        Counter::OomRingBufFull,
        Counter::Execs,
        Counter::ExecRingBufFull,
    ];

    /// Stable snake_case name, used in `Status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Sampled => "sampled",
            Counter::IdleSkipped => "idle_skipped",
            Counter::RingBufFull => "ring_buffer_full",
            Counter::KernelStackError => "kernel_stack_error",
            Counter::UserStackError => "user_stack_error",
            Counter::PythonNoThread => "python_thread_not_found",
            Counter::PythonReadError => "python_read_error",
            Counter::PythonTruncated => "python_truncated",
            Counter::CallTableFull => "python_call_table_full",
            Counter::OffCpuCaptured => "off_cpu_captured",
            Counter::OffCpuEnded => "off_cpu_ended",
            Counter::OffCpuRingBufFull => "off_cpu_ring_buffer_full",
            Counter::MemorySampled => "memory_sampled",
            Counter::MemoryRingBufFull => "memory_ring_buffer_full",
            Counter::OomKills => "oom_kills",
            Counter::OomRingBufFull => "oom_ring_buffer_full",
            Counter::Execs => "execs",
            Counter::ExecRingBufFull => "exec_ring_buffer_full",
        }
    }
}
