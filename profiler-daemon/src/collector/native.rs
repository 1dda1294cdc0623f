//! The collector's side of unwinding native code built without frame pointers: which
//! processes the kernel copies the stack of, and the unwinding of those copies (see
//! [`crate::unwind`]).

use std::{
    collections::HashMap as StdHashMap,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use aya::maps::{HashMap, MapData};
use profiler_common::sample::{SampleRecord, UNWIND_PROCS_MAX};
use tracing::{debug, warn};

use super::copy_size::{CopySize, Reading};
use crate::{
    process::{ProcessInfo, Runtime},
    stats::PipelineStats,
    unwind::{NativeUnwind, UserRegs, combine},
};

/// The kernel's `UNWIND_PROCS` (absent in tests without BPF) and the processes in it, with
/// the bytes each copies.
#[derive(Debug, Default)]
pub struct StackCopies {
    unwind: NativeUnwind,
    map: Option<HashMap<MapData, u32, u32>>,
    copied: StdHashMap<u32, CopySize>,
    /// Whether the kernel's table was found full (warned once).
    full: bool,
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
        let interpreter = match &process.runtime {
            Runtime::Python(p) => Some(p.interpreter_file),
            _ => None,
        };
        let breaks = self.unwind.update(
            pid,
            process.maps_generation(),
            interpreter,
            process.file_mappings(),
        );
        let (files, bytes) = self.unwind.files();
        self.stats.unwind.files.store(files as u64, Relaxed);
        self.stats.unwind.table_bytes.store(bytes, Relaxed);
        if breaks == self.copied.contains_key(&pid) {
            return;
        }
        if !breaks {
            self.remove(pid);
            return;
        }
        let size = CopySize::new(Instant::now());
        if let Some(map) = &mut self.map
            && let Err(e) = map.insert(pid, size.bytes(), 0)
        {
            // Its samples keep the frame-pointer walk; it is tried again at its next sample.
            self.stats.unwind.table_full.fetch_add(1, Relaxed);
            if !std::mem::replace(&mut self.full, true) {
                warn!(
                    pid,
                    error = %e,
                    "the kernel's table of processes whose stacks are copied is full: \
                     others are walked by frame pointers only"
                );
            }
            return;
        }
        self.copied.insert(pid, size);
        self.stats.unwind.processes.store(self.copied.len() as u64, Relaxed);
    }

    /// The user stack of `record`, leaf first: unwound from its stack copy when it has one
    /// (and then `walked`, the frame-pointer walk, only below the copy), else `walked`. The
    /// process's copy size learns from what unwinding read.
    pub fn user_stack(&mut self, pid: u32, record: &SampleRecord<'_>, walked: Vec<u64>) -> Stack {
        let h = &record.header;
        let Some(&ip) = walked.first() else { return Stack { addrs: walked, unwound: false } };
        if h.stack_bytes == 0 {
            return Stack { addrs: walked, unwound: false };
        }
        let stats = &self.stats.unwind;
        stats.copied_bytes.fetch_add(u64::from(h.stack_bytes), Relaxed);
        let regs = UserRegs { ip, sp: h.user_sp, fp: h.user_fp, lr: h.leaf_lr };
        let unwound = self.unwind.unwind(pid, regs, record.stack_copy(), h.py_len > 0);
        if unwound.ran_out {
            stats.ran_out.fetch_add(1, Relaxed);
        }
        let reading =
            Reading { copied: h.stack_bytes, used: unwound.used, ran_out: unwound.ran_out };
        if let Some(size) = self.copied.get_mut(&pid)
            && let Some(bytes) = size.learn(reading, Instant::now())
            && let Some(map) = &mut self.map
        {
            debug!(pid, bytes, ran_out = unwound.ran_out, "stack copy size");
            // Replacing an entry needs no room: this fails only if the entry is gone.
            let _ = map.insert(pid, bytes, 0);
        }
        if unwound.addrs.len() < 2 {
            stats.failed.fetch_add(1, Relaxed);
            return Stack { addrs: walked, unwound: false };
        }
        stats.unwound.fetch_add(1, Relaxed);
        Stack { addrs: combine(unwound.addrs, &walked), unwound: true }
    }

    /// Drops `fraction` of the unwinding caches' entries (see [`NativeUnwind::shed`]).
    pub fn shed(&mut self, fraction: f64) -> usize {
        self.unwind.shed(fraction)
    }

    /// Publishes its sizes to `caches`.
    pub fn publish(&self, caches: &crate::caches::Caches) {
        self.unwind.publish(caches);
        caches.set(
            "stack copy processes",
            self.copied.len(),
            UNWIND_PROCS_MAX as usize,
            crate::caches::table_bytes::<(u32, CopySize)>(self.copied.len()),
        );
    }

    /// Forgets process `pid`, which is gone.
    pub fn forget(&mut self, pid: u32) {
        self.unwind.forget(pid);
        self.remove(pid);
    }

    fn remove(&mut self, pid: u32) {
        if self.copied.remove(&pid).is_none() {
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
