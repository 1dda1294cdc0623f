//! Kernel programs of the profiler.
//!
//! `sample_cpu` runs on every `cpu-clock` perf event (one event per online CPU) and writes one
//! record per sample into the `SAMPLES` ring buffer: a `SampleHeader` followed by the raw
//! kernel and user return addresses and the Python frames (see `capture`). `off_cpu_switch`
//! (in `off_cpu`) records a sampled subset of context switches the same way, and
//! `sample_fault` one in every period of page faults (memory growth), and `oom_victim` (in
//! `oom`) each process the kernel kills for lack of memory. Every outcome is
//! counted in `COUNTERS`. `python_call` (in `calls`) counts CPython calls per code object when
//! the daemon attaches it.
//!
//! This object keeps the off-CPU program's per-thread state in task-local storage
//! (`threads_task.rs`), which the loader uses on kernels that allow it; `main_hash.rs` builds
//! the same programs with that state in a hash map for the others.
#![no_std]
#![no_main]

#[path = "threads_task.rs"]
mod threads;

include!("programs.rs");
