//! Present only so that `profiler-ebpf` can be a build-dependency of `profiler-daemon`; the
//! programs themselves are in `main.rs`.
#![no_std]
