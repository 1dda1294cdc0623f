//! The collector's side of unwinding native code built without frame pointers: which
//! processes the kernel copies the stack of, and the unwinding of those copies (see
//! [`crate::unwind`]).

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use aya::maps::{HashMap, MapData};
use profiler_common::sample::{STACK_COPY_MAX, SampleRecord};
use tracing::debug;

use crate::{
    process::ProcessInfo,
    stats::PipelineStats,
    unwind::{NativeUnwind, UserRegs, combine},
};

/// The kernel's `UNWIND_PROCS` (absent in tests without BPF) and the processes in it.
#[derive(Debug, Default)]
pub struct StackCopies {
    unwind: NativeUnwind,
    map: Option<HashMap<MapData, u32, u32>>,
    copied: HashSet<u32>,
    stats: Arc<PipelineStats>,
}

impl StackCopies {
    /// Keeps the kernel's table `map` of the processes whose stacks it copies, and counts in
    /// `stats`.
    pub fn new(map: Option<HashMap<MapData, u32, u32>>, stats: Arc<PipelineStats>) -> StackCopies {
        StackCopies { map, stats, ..StackCopies::default() }
    }

    /// Brings `process`'s modules up to date, and its entry in the kernel's table: present
    /// while its code breaks the frame-pointer chain (never for the daemon itself).
    pub fn update(&mut self, process: &ProcessInfo) {
        let pid = process.pid;
        // The daemon's own samples are walked by frame pointers only: copying and unwinding
        // them would add to the work they sample, for every sample of that work.
        if pid == std::process::id() {
            return;
        }
        let breaks = self.unwind.update(pid, process.maps_generation(), process.file_mappings());
        let (files, bytes) = self.unwind.files();
        self.stats.unwind.files.store(files as u64, Relaxed);
        self.stats.unwind.table_bytes.store(bytes, Relaxed);
        if breaks == self.copied.contains(&pid) {
            return;
        }
        if breaks {
            self.copied.insert(pid);
            self.stats.unwind.processes.store(self.copied.len() as u64, Relaxed);
            if let Some(map) = &mut self.map
                && let Err(e) = map.insert(pid, STACK_COPY_MAX as u32, 0)
            {
                debug!(pid, error = %e, "the kernel's table of stack copies is full");
            }
        } else {
            self.remove(pid);
        }
    }

    /// The user stack of `record`, leaf first: unwound from its stack copy when it has one
    /// (and then `walked`, the frame-pointer walk, only below the copy), else `walked`.
    pub fn user_stack(&mut self, pid: u32, record: &SampleRecord<'_>, walked: Vec<u64>) -> Stack {
        let h = &record.header;
        let Some(&ip) = walked.first() else { return Stack { addrs: walked, unwound: false } };
        if h.stack_bytes == 0 {
            return Stack { addrs: walked, unwound: false };
        }
        let regs = UserRegs { ip, sp: h.user_sp, fp: h.user_fp, lr: h.leaf_lr };
        let unwound = self.unwind.unwind(pid, regs, record.stack_copy());
        if unwound.len() < 2 {
            self.stats.unwind.failed.fetch_add(1, Relaxed);
            return Stack { addrs: walked, unwound: false };
        }
        self.stats.unwind.unwound.fetch_add(1, Relaxed);
        Stack { addrs: combine(unwound, &walked), unwound: true }
    }

    /// Forgets process `pid`, which is gone.
    pub fn forget(&mut self, pid: u32) {
        self.unwind.forget(pid);
        self.remove(pid);
    }

    fn remove(&mut self, pid: u32) {
        if !self.copied.remove(&pid) {
            return;
        }
        self.stats.unwind.processes.store(self.copied.len() as u64, Relaxed);
        if let Some(map) = &mut self.map {
            let _ = map.remove(&pid);
        }
    }
}

/// A sample's user stack.
#[derive(Debug)]
pub struct Stack {
    /// Addresses, leaf first.
    pub addrs: Vec<u64>,
    /// Whether they were unwound from the stack's copy (the leaf's caller is then known).
    pub unwound: bool,
}
