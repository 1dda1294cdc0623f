//! profilerd and profctl: a system-wide, always-on CPU profiler built on eBPF.
//!
//! The daemon's pipeline is described in [`daemon`]; each stage has its own module.

pub mod aggregate;
pub mod btf;
pub mod budget;
pub mod caches;
pub mod calls;
pub mod client;
pub mod clock;
pub mod collector;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod debuginfo;
pub mod export;
pub mod fleet;
pub mod function_ranges;
pub mod host;
pub mod huge_pages;
pub mod kernel;
pub mod leaf;
pub mod loader;
pub mod metrics;
pub mod off_cpu;
pub mod oom;
pub mod pods;
pub mod process;
pub mod python;
pub mod query;
pub mod resident;
pub mod selector;
pub mod server;
pub mod stats;
pub mod store;
pub mod symbolize;
pub mod timeline;
pub mod tls;
pub mod unwind;
