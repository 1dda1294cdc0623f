//! The `COUNTERS` per-CPU array: one slot per outcome of the sampling program.
//!
//! Nothing the kernel side drops goes uncounted: every early return of the perf-event program
//! bumps exactly one of these slots, and so does every call the entry probe cannot count.

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Program runs that produced a sample record.
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
}

impl Counter {
    /// Number of slots in the `COUNTERS` map.
    pub const COUNT: u32 = 9;

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
        }
    }
}
