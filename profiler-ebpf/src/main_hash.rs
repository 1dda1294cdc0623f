//! The kernel programs of `main.rs`, with the off-CPU program's per-thread state in a hash map
//! keyed by thread id (`threads_hash.rs`): the object the loader uses on kernels where a BTF
//! tracepoint on `sched_switch` cannot use task-local storage.
#![no_std]
#![no_main]

#[path = "threads_hash.rs"]
mod threads;

include!("programs.rs");
