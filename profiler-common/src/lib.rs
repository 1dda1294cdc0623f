//! Types shared by the kernel programs (`profiler-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides agree on the layout
//! byte for byte. One module per map or event.
#![no_std]

pub mod counters;
pub mod off_cpu;
pub mod python;
pub mod sample;
