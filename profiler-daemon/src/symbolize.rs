//! Symbolization: turns normalized addresses into named frames, on a thread of its own.
//!
//! blazesym's `Symbolizer` is not `Sync`, so one named thread owns it and the caches. Results
//! are cached by (file, offset) for user code and by address for the kernel, never by pid: a
//! process that exits right after a sample is still symbolized from its file. Function names
//! come from the ELF symbol tables only; DWARF can misreport the start of functions that the
//! compiler split into hot and cold parts, which would give wrong names and offsets.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Kernel, Source},
    },
};
use lru::LruCache;
use profiler_common::{
    python::{FLAG_PY_GIL_KNOWN, FLAG_PY_GIL_WAIT, FLAG_PY_HOLDS_GIL, FLAG_PY_TRUNCATED, PyFrame},
    sample::{FLAG_KERNEL_TRUNCATED, FLAG_USER_TRUNCATED},
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    aggregate::kind::{GIL_HELD, GIL_RELEASED},
    aggregate::{
        BlockEnd, BlockStart, CallSample, Frame, FrameKind, Labels, Module, Resolved, SampleKind,
        Stack, StackSample,
    },
    caches::{estimate, shed_lru, table_bytes},
    calls::CallDeltas,
    debuginfo::{DebugInfo, Lookup, Wanted, elf::Layout},
    function_ranges::FunctionRanges,
    host::{FileKey, readable_file},
    off_cpu::{self, Reason},
    process::{MappedFile, UserAddr},
    python::{PythonProcess, code::CodeCache},
};

/// Marker frame for a stack cut at the recording depth.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// How long a file that could not be symbolized (deleted, unreadable, not ELF) is left alone
/// before it is tried again. Its frames are unknown meanwhile.
const FAILED_FILE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the files whose debug file is being downloaded are looked at again.
const PENDING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the names of a file's functions come from.
#[derive(Debug)]
enum SymbolFile {
    /// The file's own symbol tables.
    Own,
    /// A separate debug file with the same addresses (the file itself is stripped).
    Debug { path: PathBuf, layout: Layout },
}

/// A sample whose user addresses are normalized, waiting for symbols.
#[derive(Clone, Debug, Default)]
pub struct RawStack {
    /// When the sample was taken, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Labels of the sampled thread.
    pub labels: Arc<Labels>,
    /// Kernel return addresses, leaf first.
    pub kernel: Vec<u64>,
    /// Normalized user addresses, leaf first.
    pub user: Vec<UserAddr>,
    /// For a CPython process: the interpreter and its frames, leaf first.
    pub python: Option<(Arc<PythonProcess>, Vec<PyFrame>)>,
    /// `FLAG_*` bits from the sample record.
    pub flags: u32,
    /// The sampled thread.
    pub tid: u32,
    /// What the sample measures (off-CPU samples also carry `block`).
    pub kind: SampleKind,
    /// For a CPU sample, the sampling period in nanoseconds; for a memory sample, the bytes
    /// its page faults stand for.
    pub value: u64,
    /// For a thread captured as it left the CPU: the switch.
    pub block: Option<RawBlock>,
}

impl RawStack {
    /// Bytes its addresses and Python frames hold on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.kernel.capacity() * size_of::<u64>()
            + self.user.capacity() * size_of::<UserAddr>()
            + self.python.as_ref().map_or(0, |(_, frames)| frames.capacity() * size_of::<PyFrame>())
    }
}

/// The switch of a thread captured as it left the CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBlock {
    /// Kernel time of the switch (boot clock), which the block's end names.
    pub boot_ns: u64,
    /// Inverse of the capture probability, in units of 1/65536.
    pub weight: u64,
    /// The task state the scheduler saw (0 when preempted).
    pub state: u32,
}

/// Python call counts of one process, waiting for their functions' names.
#[derive(Clone, Debug)]
pub struct RawCalls {
    /// The process's labels (without thread).
    pub labels: Arc<Labels>,
    /// The interpreter.
    pub python: Arc<PythonProcess>,
    /// Calls per code object address.
    pub deltas: CallDeltas,
}

/// What the symbolizer thread is given.
#[derive(Clone, Debug)]
pub enum Work {
    /// A sample of process `pid`.
    Stack(u32, RawStack),
    /// Call counts.
    Calls(RawCalls),
    /// The end of a captured block (nothing to resolve; it keeps its place in the queue).
    BlockEnd(BlockEnd),
    /// Every record of the kernel up to this time (Unix nanoseconds) is ahead in the queue.
    Watermark(i64),
    /// Samples that need no resolving (resident memory readings, OOM kills).
    Resolved(Vec<StackSample>),
    /// Processes forgotten after their exit: their cached code objects go.
    Forget(Vec<u32>),
}

/// Cache sizes and hit counts, shared with `Status`.
#[derive(Debug, Default)]
pub struct SymbolizerStats {
    /// User frames cached.
    pub user_frames: AtomicU64,
    /// Capacity of the user frame cache.
    pub user_capacity: AtomicU64,
    /// Kernel frames cached.
    pub kernel_frames: AtomicU64,
    /// Python code objects cached.
    pub code_objects: AtomicU64,
    /// What the cached code objects weigh.
    pub code_bytes: AtomicU64,
    /// The most they may weigh.
    pub code_bytes_limit: AtomicU64,
    /// Lookups answered from a cache.
    pub hits: AtomicU64,
    /// Lookups that went to blazesym.
    pub misses: AtomicU64,
    /// Times blazesym was started afresh to close the files it held.
    pub restarts: AtomicU64,
    /// The sizes of the symbolizer's caches, published about once a second.
    pub caches: crate::caches::Caches,
    /// The counts of separate debug files, when they are on.
    pub debug_files: std::sync::OnceLock<Arc<crate::debuginfo::DebugInfoStats>>,
}

impl SymbolizerStats {
    /// Publishes the code cache's size.
    fn set_code_cache(&self, codes: &CodeCache) {
        self.code_objects.store(codes.len() as u64, Relaxed);
        self.code_bytes.store(codes.bytes() as u64, Relaxed);
    }
}

/// Files blazesym keeps open (mapped, with their parsed symbol tables) before it is started
/// afresh: it never closes one by itself, and on a busy host every build leaves new binaries
/// behind. The frame caches keep what was symbolized.
const MAX_OPEN_FILES: usize = 64;
/// What blazesym keeps per file it opened, as counted against `--max-memory`: its parsed
/// symbol tables (the file's pages themselves are mapped from the page cache).
const SYMBOL_FILE_BYTES: usize = 1 << 20;
/// How often the symbolizer publishes its caches' sizes.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The caches and the blazesym instance.
#[derive(Debug)]
pub struct Resolver {
    symbolizer: Symbolizer,
    // Looked up for every frame of every sample: foldhash rather than SipHash.
    user: LruCache<(FileKey, u64), Option<Arc<Frame>>, foldhash::fast::RandomState>,
    kernel: LruCache<u64, Arc<Frame>, foldhash::fast::RandomState>,
    kernel_module: Arc<Module>,
    /// The path each file was last opened by; cleared with blazesym's files.
    paths: HashMap<FileKey, PathBuf>,
    /// Files blazesym was handed since it was started.
    opened: std::collections::HashSet<FileKey>,
    /// Files that could not be symbolized, and when that was last tried.
    failed: HashMap<FileKey, std::time::Instant>,
    /// Functions met, so that other addresses inside them need no symbolization.
    ranges: FunctionRanges,
    /// Separate debug files, when configured.
    debug: Option<Arc<DebugInfo>>,
    /// Where each file's names come from, once decided.
    sources: HashMap<FileKey, SymbolFile>,
    /// Stripped files whose debug file is being downloaded, with their build-ids.
    pending: HashMap<FileKey, Arc<str>>,
    /// When `pending` was last looked at.
    polled: std::time::Instant,
    /// When the caches' sizes were last published.
    published: std::time::Instant,
    truncated: Arc<Frame>,
    /// Shared with the Python reader thread, which fills it ahead of symbolization.
    codes: Arc<Mutex<CodeCache>>,
    stats: Arc<SymbolizerStats>,
}

impl Resolver {
    /// A resolver caching up to `capacity` user frames and as many kernel frames.
    pub fn new(capacity: NonZeroUsize, stats: Arc<SymbolizerStats>) -> Resolver {
        Resolver::sharing(capacity, stats, Arc::new(Mutex::new(CodeCache::new(capacity))))
    }

    /// Like [`Resolver::new`], with a code object cache that another thread fills too.
    pub fn sharing(
        capacity: NonZeroUsize,
        stats: Arc<SymbolizerStats>,
        codes: Arc<Mutex<CodeCache>>,
    ) -> Resolver {
        stats.user_capacity.store(capacity.get() as u64, Relaxed);
        Resolver {
            symbolizer: new_symbolizer(),
            user: LruCache::with_hasher(capacity, Default::default()),
            kernel: LruCache::with_hasher(capacity, Default::default()),
            kernel_module: Arc::new(Module { path: Module::KERNEL_PATH.into(), build_id: None }),
            paths: HashMap::new(),
            opened: std::collections::HashSet::new(),
            failed: HashMap::new(),
            ranges: FunctionRanges::new(capacity.get()),
            debug: None,
            sources: HashMap::new(),
            pending: HashMap::new(),
            polled: std::time::Instant::now(),
            published: std::time::Instant::now() - PUBLISH_EVERY,
            truncated: Arc::new(Frame::marker(TRUNCATED_FRAME)),
            codes,
            stats,
        }
    }

    /// Names the functions of stripped files from their separate debug files, found (or
    /// downloaded) through `debug`.
    pub fn with_debug_info(mut self, debug: Arc<DebugInfo>) -> Resolver {
        let _ = self.stats.debug_files.set(debug.stats().clone());
        self.debug = Some(debug);
        self
    }

    /// The merged stack of one sample, leaf first: kernel frames, then native user frames,
    /// then Python frames.
    ///
    /// In a Python process whose Python stack was recorded, the native frames kept are those
    /// above the interpreter (a C extension and the libraries it calls); the interpreter's
    /// own frames are replaced by the Python frames they run. Below the first frame without
    /// a frame pointer the unwound addresses are unreliable, so they are dropped.
    pub fn resolve(&mut self, pid: u32, raw: &RawStack) -> Stack {
        self.poll_pending();
        let mut frames = Vec::with_capacity(raw.kernel.len() + raw.user.len() + 1);
        self.kernel_frames(&raw.kernel, &mut frames);
        if raw.flags & FLAG_KERNEL_TRUNCATED != 0 && raw.user.is_empty() {
            frames.push(self.truncated.clone());
        }
        let python = raw.python.as_ref().filter(|(_, f)| !f.is_empty());
        match python {
            Some((py, py_frames)) => {
                let native: Vec<UserAddr> = raw
                    .user
                    .iter()
                    .take_while(|ua| match ua {
                        UserAddr::File { file, .. } => file.key != py.interpreter_file,
                        UserAddr::Anonymous { .. } => false,
                    })
                    .cloned()
                    .collect();
                self.user_frames(pid, &native, &mut frames);
                let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
                for raw_frame in py_frames {
                    if let Some(frame) = codes.frame(pid, py, *raw_frame) {
                        frames.push(frame);
                    }
                }
                self.stats.set_code_cache(&codes);
                drop(codes);
                if raw.flags & FLAG_PY_TRUNCATED != 0 {
                    frames.push(self.truncated.clone());
                }
            }
            None => {
                self.user_frames(pid, &raw.user, &mut frames);
                if raw.flags & FLAG_USER_TRUNCATED != 0 {
                    frames.push(self.truncated.clone());
                }
            }
        }
        self.stats.user_frames.store(self.user.len() as u64, Relaxed);
        self.stats.kernel_frames.store(self.kernel.len() as u64, Relaxed);
        if self.published.elapsed() >= PUBLISH_EVERY {
            self.publish();
        }
        frames.into()
    }

    /// Drops `fraction` of the entries of each cache, the least recently used first (asked by
    /// the memory budget, see [`crate::budget`]). blazesym's open files and the function
    /// ranges can only go whole, and reading them again costs, so they go for a quarter or
    /// more.
    fn shed(&mut self, fraction: f64) -> usize {
        let mut dropped = shed_lru(&mut self.user, fraction) + shed_lru(&mut self.kernel, fraction);
        if fraction >= 0.25 {
            dropped += self.ranges.len() + self.opened.len();
            self.ranges.clear();
            self.symbolizer = new_symbolizer();
            self.paths.clear();
            self.opened.clear();
        }
        dropped += self.codes.lock().unwrap_or_else(PoisonError::into_inner).shed(fraction);
        dropped
    }

    /// Publishes the sizes of its caches (see [`crate::caches`]), after dropping what the
    /// memory budget asked for.
    fn publish(&mut self) {
        self.published = std::time::Instant::now();
        if let Some(fraction) = self.stats.caches.take_shed() {
            let dropped = self.shed(fraction);
            self.stats.caches.count_shed(dropped);
            debug!(fraction, dropped, "symbol caches shed entries for the memory budget");
        }
        let caches = &self.stats.caches;
        let (user, kernel) = (self.user.len(), self.kernel.len());
        let user_frames =
            estimate(self.user.iter().flat_map(|(_, f)| f).map(|f| f.approx_bytes()), user);
        let kernel_frames = estimate(self.kernel.iter().map(|(_, f)| f.approx_bytes()), kernel);
        caches.set(
            "user frames",
            user,
            self.user.cap().get(),
            table_bytes::<((FileKey, u64), Option<Arc<Frame>>)>(user) + user_frames,
        );
        caches.set(
            "kernel frames",
            kernel,
            self.kernel.cap().get(),
            table_bytes::<(u64, Arc<Frame>)>(kernel) + kernel_frames,
        );
        caches.set(
            "function ranges",
            self.ranges.len(),
            self.ranges.capacity(),
            self.ranges.heap_bytes(),
        );
        caches.set(
            "symbol files open",
            self.opened.len(),
            MAX_OPEN_FILES,
            self.opened.len() * SYMBOL_FILE_BYTES,
        );
        // Both are cleared when they reach the user frame cache's capacity.
        caches.set(
            "files without symbols",
            self.failed.len(),
            self.user.cap().get(),
            table_bytes::<(FileKey, std::time::Instant)>(self.failed.len()),
        );
        caches.set(
            "symbol sources",
            self.sources.len(),
            self.user.cap().get(),
            table_bytes::<(FileKey, SymbolFile)>(self.sources.len()),
        );
        self.codes.lock().unwrap_or_else(PoisonError::into_inner).publish(caches);
    }

    /// The functions of counted calls. Counts of addresses that are no longer code objects
    /// (freed since the call) are dropped rather than misnamed.
    pub fn resolve_calls(&mut self, raw: &RawCalls) -> CallSample {
        let pid = raw.deltas.pid;
        let counts = raw
            .deltas
            .counts
            .iter()
            .filter_map(|&(code, n)| {
                let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
                Some((codes.function(pid, &raw.python, code)?, n))
            })
            .collect();
        CallSample { labels: raw.labels.clone(), counts }
    }

    /// Reads the kernel's symbols now rather than on the first kernel frame, which would then
    /// take tens of milliseconds in the middle of profiling.
    pub fn warm_up(&mut self) {
        let started = std::time::Instant::now();
        // Any kernel address loads the symbol table; what it resolves to does not matter and
        // is not cached.
        let probe = [0xffff_ffff_8100_0000u64];
        let ok = self.symbolizer.symbolize(&kernel_source(), Input::AbsAddr(&probe)).is_ok();
        debug!(ok, took = ?started.elapsed(), "kernel symbols read");
    }

    fn kernel_frames(&mut self, addrs: &[u64], out: &mut Vec<Arc<Frame>>) {
        let addrs: Vec<u64> = addrs.iter().enumerate().map(|(i, &a)| lookup_addr(i, a)).collect();
        let misses: Vec<u64> = addrs.iter().copied().filter(|a| !self.kernel.contains(a)).collect();
        self.count(addrs.len(), misses.len());
        if !misses.is_empty() {
            let lookup = &misses;
            let results = self.symbolizer.symbolize(&kernel_source(), Input::AbsAddr(lookup));
            for (i, &addr) in misses.iter().enumerate() {
                let name = match results.as_ref().map(|r| &r[i]) {
                    Ok(Symbolized::Sym(sym)) => sym.name.to_string(),
                    _ => format!("[unknown] {addr:#x} ([kernel.kallsyms])"),
                };
                let frame = Frame {
                    kind: FrameKind::Kernel,
                    function: name.into(),
                    module: Some(self.kernel_module.clone()),
                    address: addr,
                    file: None,
                    line: 0,
                    start_line: 0,
                };
                self.kernel.put(addr, Arc::new(frame));
            }
        }
        out.extend(addrs.iter().filter_map(|a| self.kernel.get(a).cloned()));
    }

    fn user_frames(&mut self, pid: u32, addrs: &[UserAddr], out: &mut Vec<Arc<Frame>>) {
        // Group the misses by file, so that each file is opened once per sample.
        let mut misses: HashMap<FileKey, (Arc<MappedFile>, Vec<u64>)> = HashMap::new();
        let mut lookups = 0;
        let addrs: Vec<UserAddr> =
            addrs.iter().enumerate().map(|(i, ua)| lookup_user(i, ua)).collect();
        for ua in &addrs {
            if let UserAddr::File { file, offset, .. } = ua {
                lookups += 1;
                if self.user.contains(&(file.key, *offset)) {
                    continue;
                }
                if let Some(name) = self.ranges.get(file.key, *offset).cloned() {
                    let frame = native_frame(name, &file.module, *offset);
                    self.user.put((file.key, *offset), Some(frame));
                } else {
                    misses
                        .entry(file.key)
                        .or_insert_with(|| (file.clone(), Vec::new()))
                        .1
                        .push(*offset);
                }
            }
        }
        self.count(lookups, misses.values().map(|(_, v)| v.len()).sum());
        for (file, offsets) in misses.into_values() {
            if self.failed.get(&file.key).is_some_and(|at| at.elapsed() < FAILED_FILE_RETRY) {
                continue;
            }
            if self.symbolize_file(pid, &file, &offsets) {
                self.failed.remove(&file.key);
            } else {
                if self.failed.len() >= self.user.cap().get() {
                    self.failed.clear();
                }
                self.failed.insert(file.key, std::time::Instant::now());
            }
        }
        for ua in &addrs {
            let frame = match ua {
                UserAddr::File { file, offset, addr } => {
                    match self.user.get(&(file.key, *offset)).cloned().flatten() {
                        Some(frame) => frame,
                        None => Arc::new(unknown_frame(*addr, Some(&file.module), *offset)),
                    }
                }
                UserAddr::Anonymous { addr, region } => Arc::new(Frame {
                    function: format!("[unknown] {addr:#x} ({region})").into(),
                    kind: FrameKind::Native,
                    ..Frame::marker("")
                }),
            };
            out.push(frame);
        }
    }

    /// Symbolizes `offsets` of `file` into the cache; false when the file could not be read.
    fn symbolize_file(&mut self, pid: u32, file: &MappedFile, offsets: &[u64]) -> bool {
        if self.opened.insert(file.key) && self.opened.len() > MAX_OPEN_FILES {
            // blazesym's files and the kernel's symbols go; they are opened again on a miss.
            self.symbolizer = new_symbolizer();
            self.paths.clear();
            self.opened.clear();
            self.opened.insert(file.key);
            self.stats.restarts.fetch_add(1, Relaxed);
        }
        if let Some(held) = file.held_path() {
            // The very file the process mapped, whether or not it still exists or runs.
            return match self.symbolize_with(pid, file, &held, offsets) {
                Ok(results) => {
                    self.cache_results(file, offsets, results);
                    true
                }
                Err(e) => {
                    debug!(path = %file.module.path, error = %e, "symbolization failed");
                    false
                }
            };
        }
        let fresh_path = || readable_file(pid, std::path::Path::new(&*file.module.path), file.key);
        // The path that worked last time (the file key pins the file), else this process's view.
        let cached = self.paths.get(&file.key).cloned();
        let mut path = cached.clone().or_else(fresh_path);
        let mut results = path.as_deref().map(|p| self.symbolize_with(pid, file, p, offsets));
        if cached.is_some() && !matches!(results, Some(Ok(_))) {
            // That path went away (it was another process's root, which exited, or a container
            // stopped): look again through this process.
            self.paths.remove(&file.key);
            path = fresh_path();
            results = path.as_deref().map(|p| self.symbolize_with(pid, file, p, offsets));
        }
        let results = match results {
            Some(Ok(results)) => results,
            Some(Err(e)) => {
                debug!(path = %file.module.path, error = %e, "symbolization failed");
                // Not cached: the file may be found again later.
                return false;
            }
            None => {
                debug!(path = %file.module.path, "file not readable");
                return false;
            }
        };
        self.cache_results(file, offsets, results);
        if let Some(path) = path {
            self.paths.insert(file.key, path);
        }
        true
    }

    /// Names `offsets` of `file`, read at `path`, from the file's own symbols, and those its
    /// own symbols leave unnamed from its debug file.
    ///
    /// A stripped library still exports its public functions, and their exported names are the
    /// ones users know: the debug file often has an internal alias at the same address
    /// (`__clock_nanosleep` for `clock_nanosleep`), so it is asked only for the rest.
    fn symbolize_with(
        &mut self,
        pid: u32,
        file: &MappedFile,
        path: &std::path::Path,
        offsets: &[u64],
    ) -> Result<Vec<Option<Found>>, blazesym::Error> {
        if !self.sources.contains_key(&file.key) {
            let source = self.choose_source(pid, file, path);
            if self.sources.len() >= self.user.cap().get() {
                self.sources.clear();
            }
            self.sources.insert(file.key, source);
        }
        let own = symbolize_elf(&self.symbolizer, path, offsets);
        let Some(SymbolFile::Debug { path: debug_file, layout }) = self.sources.get(&file.key)
        else {
            return own;
        };
        let unnamed: Vec<usize> = match &own {
            Ok(results) => (0..offsets.len()).filter(|&i| results[i].is_none()).collect(),
            Err(_) => (0..offsets.len()).collect(),
        };
        if unnamed.is_empty() {
            return own;
        }
        // The debug file has the stripped file's addresses, not its offsets.
        let rest: Vec<u64> = unnamed.iter().map(|&i| offsets[i]).collect();
        let addrs: Vec<u64> = rest.iter().map(|&o| layout.address(o).unwrap_or(u64::MAX)).collect();
        let src = Source::Elf(Elf { debug_syms: false, ..Elf::new(debug_file.as_path()) });
        match self.symbolizer.symbolize(&src, Input::VirtOffset(&addrs)) {
            Ok(results) => {
                let mut all = own.unwrap_or_else(|_| offsets.iter().map(|_| None).collect());
                for (i, named) in unnamed.into_iter().zip(found(&rest, results)) {
                    all[i] = named;
                }
                Ok(all)
            }
            Err(e) => {
                debug!(path = %debug_file.display(), error = %e, "debug file unreadable");
                self.sources.insert(file.key, SymbolFile::Own);
                own
            }
        }
    }

    /// Where the names of `file` (read at `path`, mapped by process `pid`) come from: its own
    /// symbol table if it has one, else its debug file, if there is one.
    fn choose_source(&mut self, pid: u32, file: &MappedFile, path: &std::path::Path) -> SymbolFile {
        let Some(debug) = &self.debug else { return SymbolFile::Own };
        let Some(layout) = Layout::read(path) else { return SymbolFile::Own };
        let build_id = file.module.build_id.as_deref();
        if layout.symtab || (build_id.is_none() && layout.debuglink.is_none()) {
            return SymbolFile::Own;
        }
        let root = crate::host::foreign_root(pid);
        let wanted = Wanted {
            build_id,
            debuglink: layout.debuglink.as_ref(),
            path: std::path::Path::new(&*file.module.path),
            root: root.as_deref(),
        };
        match debug.find(&wanted) {
            Lookup::Found(path) => {
                debug.stats().found.fetch_add(1, Relaxed);
                SymbolFile::Debug { path, layout }
            }
            Lookup::Pending => {
                if let Some(build_id) = &file.module.build_id {
                    self.pending.insert(file.key, build_id.clone());
                }
                SymbolFile::Own
            }
            Lookup::Missing => SymbolFile::Own,
        }
    }

    /// Switches the files whose debug file has arrived over to it, dropping the frames that
    /// were named without it.
    fn poll_pending(&mut self) {
        if self.pending.is_empty() || self.polled.elapsed() < PENDING_POLL {
            return;
        }
        self.polled = std::time::Instant::now();
        let Some(debug) = self.debug.clone() else { return };
        let pending: Vec<(FileKey, Arc<str>)> =
            self.pending.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (key, build_id) in pending {
            match debug.lookup(&build_id) {
                Lookup::Pending => continue,
                Lookup::Missing => {}
                Lookup::Found(_) => {
                    // Decided again (with the layout) at the next miss.
                    self.sources.remove(&key);
                    let stale: Vec<(FileKey, u64)> =
                        self.user.iter().map(|(k, _)| *k).filter(|k| k.0 == key).collect();
                    for k in stale {
                        self.user.pop(&k);
                    }
                    self.ranges.forget(key);
                    self.failed.remove(&key);
                    debug!(build_id = %build_id, "debug file arrived");
                }
            }
            self.pending.remove(&key);
        }
    }

    /// Caches what blazesym found at `offsets` of `file`.
    fn cache_results(&mut self, file: &MappedFile, offsets: &[u64], results: Vec<Option<Found>>) {
        for (&offset, found) in offsets.iter().zip(results) {
            // Unknown frames carry the process's address, so they are not cached as frames.
            let frame = found.map(|Found { name, range }| {
                if let Some((start, end)) = range {
                    self.ranges.insert(file.key, start, end, name.clone());
                }
                native_frame(name, &file.module, offset)
            });
            self.user.put((file.key, offset), frame);
        }
    }

    fn count(&self, lookups: usize, misses: usize) {
        self.stats.hits.fetch_add((lookups - misses) as u64, Relaxed);
        self.stats.misses.fetch_add(misses as u64, Relaxed);
    }
}

/// The address to look up for frame `depth`: the leaf is the sampled instruction itself; every
/// other frame is a return address, which points after its call and may already be in the next
/// function (or its patchable prefix), so the byte before it is looked up.
/// The running kernel's symbols, from `/proc/kallsyms`.
fn kernel_source() -> Source<'static> {
    Source::Kernel(Kernel {
        kallsyms: MaybeDefault::Default,
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    })
}

fn lookup_addr(depth: usize, addr: u64) -> u64 {
    if depth == 0 { addr } else { addr.saturating_sub(1) }
}

fn lookup_user(depth: usize, ua: &UserAddr) -> UserAddr {
    match ua {
        UserAddr::File { file, offset, addr } => {
            UserAddr::File { file: file.clone(), offset: lookup_addr(depth, *offset), addr: *addr }
        }
        other => other.clone(),
    }
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .build()
}

/// A function found at a file offset.
struct Found {
    name: Arc<str>,
    /// The function's range of file offsets, when its size is known.
    range: Option<(u64, u64)>,
}

/// Names `offsets` of the ELF file at `path`, each `None` where no function is known.
fn symbolize_elf(
    symbolizer: &Symbolizer,
    path: &std::path::Path,
    offsets: &[u64],
) -> Result<Vec<Option<Found>>, blazesym::Error> {
    let src = Source::Elf(Elf { debug_syms: false, ..Elf::new(path) });
    let results = symbolizer.symbolize(&src, Input::FileOffset(offsets))?;
    Ok(found(offsets, results))
}

/// What blazesym found at `offsets`, each `None` where no function is known.
fn found(offsets: &[u64], results: Vec<Symbolized<'_>>) -> Vec<Option<Found>> {
    offsets
        .iter()
        .zip(results)
        .map(|(&offset, result)| match result {
            Symbolized::Sym(sym) => {
                let start = offset.saturating_sub(sym.offset as u64);
                Some(Found {
                    name: sym.name.as_ref().into(),
                    range: sym.size.map(|size| (start, start + size as u64)),
                })
            }
            Symbolized::Unknown(_) => None,
        })
        .collect()
}

/// The frame of native function `name` at `offset` in `module`.
fn native_frame(name: Arc<str>, module: &Arc<Module>, offset: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Native,
        function: name,
        module: Some(module.clone()),
        address: offset,
        file: None,
        line: 0,
        start_line: 0,
    })
}

/// `[unknown] 0xADDR (libfoo.so+0xOFFSET)`.
fn unknown_frame(addr: u64, module: Option<&Arc<Module>>, offset: u64) -> Frame {
    let place = module.map_or_else(|| "?".to_owned(), |m| format!("{}+{offset:#x}", m.file_name()));
    Frame {
        kind: FrameKind::Native,
        function: format!("[unknown] {addr:#x} ({place})").into(),
        module: module.cloned(),
        address: offset,
        ..Frame::marker("")
    }
}

/// Work items between the Python reader and the symbolizer.
const READ_AHEAD: usize = 4096;

/// Reads the code objects of a sample's Python frames into `codes`.
fn prefetch_python(codes: &Mutex<CodeCache>, pid: u32, raw: &RawStack) {
    if let Some((py, frames)) = &raw.python {
        codes.lock().unwrap_or_else(PoisonError::into_inner).prefetch(pid, py, frames);
    }
}

/// Starts the symbolizer thread, behind a Python reader thread. It ends when `input` closes or
/// the aggregator is gone.
///
/// Code objects can only be read while their process runs, and symbolizing native code can
/// take long enough (the first look at a large interpreter binary) for a short-lived process
/// to exit. So the reader takes each sample first, reads the code objects of its Python frames
/// into the cache both threads share, and passes it on: it runs ahead of the symbolizer by up
/// to `READ_AHEAD` samples.
pub fn spawn(
    mut input: mpsc::Receiver<Work>,
    output: mpsc::Sender<Resolved>,
    capacity: NonZeroUsize,
    stats: Arc<SymbolizerStats>,
    debug: Option<Arc<DebugInfo>>,
) -> std::io::Result<JoinHandle<()>> {
    let codes = CodeCache::new(capacity);
    stats.code_bytes_limit.store(codes.max_bytes() as u64, Relaxed);
    let codes = Arc::new(Mutex::new(codes));
    let shared = codes.clone();
    let reader_stats = stats.clone();
    let (ahead_tx, mut ahead) = mpsc::channel(READ_AHEAD);
    let reader = std::thread::Builder::new().name("python-reader".into()).spawn(move || {
        while let Some(work) = input.blocking_recv() {
            match &work {
                Work::Stack(pid, raw) => prefetch_python(&codes, *pid, raw),
                Work::Forget(pids) => {
                    let mut codes = codes.lock().unwrap_or_else(PoisonError::into_inner);
                    codes.forget(pids);
                    reader_stats.set_code_cache(&codes);
                    continue;
                }
                _ => {}
            }
            // Blocking here backs up the collector's queue, which counts what it cannot
            // enqueue; it never waits.
            if ahead_tx.blocking_send(work).is_err() {
                break;
            }
        }
    })?;
    std::thread::Builder::new().name("symbolizer".into()).spawn(move || {
        let mut resolver = Resolver::sharing(capacity, stats, shared);
        if let Some(debug) = debug {
            resolver = resolver.with_debug_info(debug);
        }
        resolver.warm_up();
        while let Some(work) = ahead.blocking_recv() {
            let resolved = match work {
                Work::Stack(pid, raw) => {
                    let stack = resolver.resolve(pid, &raw);
                    resolved_sample(raw, stack)
                }
                Work::Calls(raw) => Resolved::Calls(resolver.resolve_calls(&raw)),
                Work::BlockEnd(end) => Resolved::BlockEnd(end),
                Work::Watermark(t) => Resolved::Watermark(t),
                // The reader keeps these.
                Work::Forget(_) => continue,
                Work::Resolved(samples) => {
                    for sample in samples {
                        if output.blocking_send(Resolved::Sample(sample)).is_err() {
                            return;
                        }
                    }
                    continue;
                }
            };
            // Blocking here only backs up the symbolizer's queue; the collector never waits
            // on it and counts what it cannot enqueue.
            if output.blocking_send(resolved).is_err() {
                break;
            }
        }
        // The reader ends once its output is gone.
        drop(ahead);
        let _ = reader.join();
        info!("symbolizer stopped");
    })
}

/// The `gil` label of a sample with header flags `flags`.
fn gil_label(flags: u32) -> &'static str {
    if flags & FLAG_PY_GIL_KNOWN == 0 {
        ""
    } else if flags & FLAG_PY_HOLDS_GIL != 0 {
        GIL_HELD
    } else {
        GIL_RELEASED
    }
}

/// A resolved CPU or memory sample, or the start of an off-CPU block with its reason.
fn resolved_sample(raw: RawStack, stack: Stack) -> Resolved {
    let gil = gil_label(raw.flags);
    let Some(block) = raw.block else {
        let labels = if gil.is_empty() {
            raw.labels
        } else {
            Arc::new(Labels { gil: gil.into(), ..Labels::clone(&raw.labels) })
        };
        return Resolved::Sample(StackSample {
            time_ns: raw.time_ns,
            labels,
            stack,
            kind: raw.kind,
            value: raw.value,
            tid: raw.tid,
        });
    };
    let reason = if raw.flags & FLAG_PY_GIL_WAIT != 0 {
        Reason::Gil
    } else {
        Reason::of(block.state, &stack)
    };
    let labels = Arc::new(Labels {
        reason: reason.name().into(),
        gil: gil.into(),
        ..Labels::clone(&raw.labels)
    });
    Resolved::BlockStart(BlockStart {
        sample: StackSample {
            time_ns: raw.time_ns,
            labels,
            stack: off_cpu::shape(&stack, reason),
            kind: SampleKind::OffCpu,
            value: 0,
            tid: raw.tid,
        },
        tid: raw.tid,
        boot_ns: block.boot_ns,
        weight: block.weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host::skip_under_qemu_user,
        process::{Identity, ProcessTable},
    };

    #[inline(never)]
    fn a_named_function_for_the_symbolizer() -> u64 {
        a_named_function_for_the_symbolizer as *const () as u64 + 4
    }

    /// This process's labels, and the file, offset and address of
    /// [`a_named_function_for_the_symbolizer`] in it.
    fn own_function() -> (Arc<Labels>, Arc<MappedFile>, u64, u64) {
        let pid = std::process::id();
        let mut table = ProcessTable::new(4);
        let labels = table.observe(pid, pid, b"t", Identity::default()).labels(pid, b"t", true);
        let addr = a_named_function_for_the_symbolizer();
        let UserAddr::File { file, offset, .. } = table.normalize(pid, &[addr]).remove(0) else {
            panic!("own code is file-backed");
        };
        (labels, file, offset, addr)
    }

    fn resolver() -> (Resolver, Arc<SymbolizerStats>) {
        let stats = Arc::new(SymbolizerStats::default());
        (Resolver::new(NonZeroUsize::new(64).unwrap(), stats.clone()), stats)
    }

    #[test]
    fn the_caches_drop_the_share_the_memory_budget_asks_for() {
        let (mut resolver, stats) = resolver();
        for addr in 0..60 {
            resolver.kernel.put(0xffff_ffff_8100_0000 + addr, resolver.truncated.clone());
        }
        resolver.kernel.get(&0xffff_ffff_8100_0000);
        stats.caches.request_shed(0.1);
        resolver.publish();
        // A tenth, the least recently used first, and the sizes published after the drop.
        assert_eq!(resolver.kernel.len(), 54);
        assert!(resolver.kernel.contains(&0xffff_ffff_8100_0000));
        assert!(!resolver.kernel.contains(&0xffff_ffff_8100_0001));
        assert_eq!(stats.caches.shed_total(), 6);
        let sizes = stats.caches.sizes();
        let kernel = sizes.iter().find(|(name, _)| *name == "kernel frames").unwrap().1;
        assert_eq!(kernel.entries, 54);
        // Asked once, it drops once.
        resolver.publish();
        assert_eq!(resolver.kernel.len(), 54);
    }

    #[test]
    fn own_functions_resolve_by_file_offset_and_are_cached() {
        if skip_under_qemu_user(
            "own_functions_resolve_by_file_offset_and_are_cached",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(4);
        let labels = table.observe(pid, pid, b"t", Identity::default()).labels(pid, b"t", true);
        let addr = a_named_function_for_the_symbolizer();
        let raw = RawStack {
            time_ns: 0,
            labels,
            kernel: vec![],
            user: table.normalize(pid, &[addr, 16]),
            python: None,
            flags: 0,
            ..RawStack::default()
        };
        let (mut resolver, stats) = resolver();
        let stack = resolver.resolve(pid, &raw);
        assert!(
            stack[0].function.contains("a_named_function_for_the_symbolizer"),
            "{}",
            stack[0].function
        );
        assert_eq!(stack[0].kind, FrameKind::Native);
        assert!(
            stack[1].function.starts_with("[unknown] 0x10 ([unmapped])"),
            "{}",
            stack[1].function
        );
        assert_eq!(stats.misses.load(Relaxed), 1);
        let again = resolver.resolve(pid, &raw);
        assert!(Arc::ptr_eq(&stack[0], &again[0]));
        assert_eq!(stats.hits.load(Relaxed), 1);
    }

    #[test]
    fn a_binary_deleted_after_its_process_exited_is_named_through_the_file_held_open() {
        if skip_under_qemu_user(
            "a_binary_deleted_after_its_process_exited_is_named_through_the_file_held_open",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let (labels, _, offset, addr) = own_function();
        // A copy of this test's program stands for a binary that a process mapped, which has
        // exited since, and which a deploy then deleted.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("deployed");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let key = crate::host::file_key(&std::fs::metadata(&copy).unwrap());
        let held = std::fs::File::open(&copy).unwrap();
        let file = Arc::new(MappedFile::new(u32::MAX, key, &copy, Some(held)));
        std::fs::remove_file(&copy).unwrap();
        let raw = RawStack {
            time_ns: 0,
            labels,
            kernel: vec![],
            user: vec![UserAddr::File { file, offset, addr }],
            python: None,
            flags: 0,
            ..RawStack::default()
        };
        let (mut resolver, _) = resolver();
        let stack = resolver.resolve(u32::MAX, &raw);
        assert!(
            stack[0].function.contains("a_named_function_for_the_symbolizer"),
            "{}",
            stack[0].function
        );
    }

    /// How a test program's debug file is found.
    #[derive(Clone, Copy, PartialEq)]
    enum Split {
        /// By build-id, in `dir/debug/.build-id/`.
        BuildId,
        /// Through `.gnu_debuglink`, in `dir/.debug/p.debug` (the program has no build-id).
        Debuglink,
        /// A static program (`-static`), by build-id, in `dir/debug/.build-id/`.
        Static,
    }

    /// A C program split as distributions ship it: `dir/p`, stripped of its symbol table, and
    /// its debug file, placed as `split` says. Returns the stripped file (held open, as the
    /// process table holds it) and the file offsets of `internal_sum`, a function only the
    /// debug file names, and of `public_product`, an exported function whose debug file also
    /// has a local alias at its address, `__public_product`. The program sleeps for the
    /// seconds its first argument says.
    fn stripped_program(dir: &std::path::Path, split: Split) -> (Arc<MappedFile>, u64, u64) {
        use object::{Object as _, ObjectSymbol as _};
        let run = |cmd: &mut std::process::Command| {
            assert!(cmd.status().unwrap().success(), "{cmd:?}");
        };
        let src = dir.join("p.c");
        std::fs::write(
            &src,
            "#include <stdlib.h>\n\
             #include <unistd.h>\n\
             static __attribute__((noinline)) int internal_sum(int n) {\n\
               int s = 0; for (int i = 0; i < n; i++) s += i * i; return s;\n\
             }\n\
             static __attribute__((noinline, used)) int __public_product(int n) {\n\
               int p = 1; for (int i = 0; i < n; i++) p *= i | 1; return p;\n\
             }\n\
             extern int public_product(int n) __attribute__((alias(\"__public_product\")));\n\
             int main(int argc, char **argv) {\n\
               if (argc > 1) sleep(atoi(argv[1]));\n\
               return (internal_sum(argc) + public_product(argc)) & 1;\n\
             }\n",
        )
        .unwrap();
        let (full, debug, stripped) = (dir.join("full"), dir.join("p.debug"), dir.join("p"));
        let mut cc = std::process::Command::new("cc");
        cc.args(["-O1", "-rdynamic"]);
        match split {
            Split::BuildId => {}
            Split::Debuglink => {
                cc.arg("-Wl,--build-id=none");
            }
            Split::Static => {
                cc.arg("-static");
            }
        }
        run(cc.arg(&src).arg("-o").arg(&full));
        run(std::process::Command::new("objcopy").arg("--only-keep-debug").arg(&full).arg(&debug));
        run(std::process::Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&full));
        let data = std::fs::read(&full).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let layout = Layout::parse(&data).unwrap();
        let offset_of = |name: &str| {
            let addr = elf.symbols().find(|s| s.name() == Ok(name)).unwrap().address();
            let seg =
                layout.segments.iter().find(|s| (s.address..s.address + s.size).contains(&addr));
            addr - seg.unwrap().address + seg.unwrap().offset
        };
        let (internal, public) = (offset_of("internal_sum"), offset_of("public_product"));
        if split == Split::Debuglink {
            // The link records the debug file's name and CRC.
            run(std::process::Command::new("objcopy")
                .current_dir(dir)
                .arg("--add-gnu-debuglink=p.debug")
                .arg(&stripped));
        }
        let key = crate::host::file_key(&std::fs::metadata(&stripped).unwrap());
        let held = std::fs::File::open(&stripped).unwrap();
        let file = Arc::new(MappedFile::new(u32::MAX, key, &stripped, Some(held)));
        let target = match &file.module.build_id {
            Some(build_id) => crate::debuginfo::build_id_path(&dir.join("debug"), build_id),
            None => dir.join(".debug/p.debug"),
        };
        assert_eq!(file.module.build_id.is_none(), split == Split::Debuglink);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::rename(&debug, &target).unwrap();
        (file, internal, public)
    }

    #[test]
    fn a_stripped_binary_is_named_from_its_debug_file_and_not_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, offset, _) = stripped_program(dir.path(), Split::BuildId);
        let raw = RawStack {
            user: vec![UserAddr::File { file, offset: offset + 4, addr: 0x1000 }],
            ..RawStack::default()
        };
        let (mut plain, _) = resolver();
        let unnamed = plain.resolve(u32::MAX, &raw);
        assert!(unnamed[0].function.starts_with("[unknown] 0x1000 (p+"), "{}", unnamed[0].function);

        let (resolver, stats) = resolver();
        let debug_stats = Arc::new(crate::debuginfo::DebugInfoStats::default());
        let dirs = vec![dir.path().join("nothing here"), dir.path().join("debug")];
        let debug = Arc::new(DebugInfo::new(dirs, debug_stats.clone()));
        let mut resolver = resolver.with_debug_info(debug);
        let named = resolver.resolve(u32::MAX, &raw);
        assert_eq!(&*named[0].function, "internal_sum");
        assert_eq!(named[0].address, offset + 4, "the frame keeps the binary's own offset");
        assert_eq!(debug_stats.found.load(Relaxed), 1);
        assert!(stats.debug_files.get().is_some(), "Status sees the counts");
    }

    #[test]
    fn an_exported_function_keeps_its_exported_name_when_a_debug_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (file, internal, public) = stripped_program(dir.path(), Split::BuildId);
        let raw = RawStack {
            user: vec![
                UserAddr::File { file: file.clone(), offset: public + 4, addr: 0x1000 },
                UserAddr::File { file, offset: internal + 4, addr: 0x2000 },
            ],
            ..RawStack::default()
        };
        let dirs = vec![dir.path().join("debug")];
        let debug_stats = Arc::new(crate::debuginfo::DebugInfoStats::default());
        let (resolver, _) = resolver();
        let mut resolver =
            resolver.with_debug_info(Arc::new(DebugInfo::new(dirs, debug_stats.clone())));
        let named = resolver.resolve(u32::MAX, &raw);
        // The exported name, not the debug file's local alias at the same address.
        assert_eq!(&*named[0].function, "public_product");
        assert_eq!(&*named[1].function, "internal_sum", "the rest from the debug file");
        assert_eq!(debug_stats.found.load(Relaxed), 1);
    }

    #[test]
    fn a_binary_without_a_build_id_is_named_through_its_debuglink_whose_crc_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let (file, internal, public) = stripped_program(dir.path(), Split::Debuglink);
        // A file of the linked name right next to the binary, looked at first, but not the
        // one the link's CRC names: the one in .debug/ is.
        std::fs::write(dir.path().join("p.debug"), b"not the debug file").unwrap();
        let raw = RawStack {
            user: vec![
                UserAddr::File { file: file.clone(), offset: internal + 4, addr: 0x1000 },
                UserAddr::File { file, offset: public + 4, addr: 0x2000 },
            ],
            ..RawStack::default()
        };
        let debug_stats = Arc::new(crate::debuginfo::DebugInfoStats::default());
        let dirs = vec![dir.path().join("debug")];
        let (resolver, _) = resolver();
        let mut resolver =
            resolver.with_debug_info(Arc::new(DebugInfo::new(dirs, debug_stats.clone())));
        let named = resolver.resolve(u32::MAX, &raw);
        assert_eq!(&*named[0].function, "internal_sum");
        assert_eq!(&*named[1].function, "public_product");
        assert_eq!(debug_stats.found.load(Relaxed), 1);
    }

    #[test]
    fn a_debug_file_is_found_in_the_root_its_process_sees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // The debug file is at /debug/.build-id/… in the process's root, and nowhere in the
        // daemon's: as a container's /usr/lib/debug is.
        let (file, internal, _) = stripped_program(&root, Split::Static);
        assert!(!std::path::Path::new("/debug").exists());
        let mut child = std::process::Command::new("chroot")
            .arg(&root)
            .args(["/p", "60"])
            .spawn()
            .expect("chroot runs (the tests run as root)");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::host::foreign_root(pid).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let raw = RawStack {
            user: vec![UserAddr::File { file, offset: internal + 4, addr: 0x1000 }],
            ..RawStack::default()
        };
        let debug_stats = Arc::new(crate::debuginfo::DebugInfoStats::default());
        let (resolver, _) = resolver();
        let dirs = vec![std::path::PathBuf::from("/debug")];
        let mut resolver = resolver.with_debug_info(Arc::new(DebugInfo::new(dirs, debug_stats)));
        let named = resolver.resolve(pid, &raw);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(&*named[0].function, "internal_sum");
    }

    #[test]
    fn blazesym_is_started_afresh_once_it_holds_too_many_files() {
        let (mut resolver, stats) = resolver();
        let pid = std::process::id();
        let module = Arc::new(Module { path: "/nonexistent/lib.so".into(), build_id: None });
        for inode in 0..=MAX_OPEN_FILES as u64 {
            let file =
                MappedFile { key: FileKey { dev: 1, inode }, module: module.clone(), held: None };
            resolver.symbolize_file(pid, &file, &[0x10]);
        }
        assert_eq!(stats.restarts.load(Relaxed), 1);
        assert_eq!(resolver.opened.len(), 1, "only the file that came after the restart");
        // A file met again before the bound does not count twice.
        let file = MappedFile { key: FileKey { dev: 1, inode: 0 }, module, held: None };
        resolver.symbolize_file(pid, &file, &[0x10]);
        resolver.symbolize_file(pid, &file, &[0x20]);
        assert_eq!(resolver.opened.len(), 2);
    }

    #[test]
    fn unresolvable_offsets_are_unknown_not_wrong() {
        if skip_under_qemu_user(
            "unresolvable_offsets_are_unknown_not_wrong",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let (labels, file, _, _) = own_function();
        // An offset far beyond the file's code.
        let bogus = UserAddr::File { file: file.clone(), offset: 1 << 40, addr: 0x7f00_0000_0000 };
        let raw = RawStack {
            time_ns: 0,
            labels,
            kernel: vec![],
            user: vec![bogus],
            python: None,
            flags: FLAG_USER_TRUNCATED,
            ..RawStack::default()
        };
        let (mut resolver, _) = resolver();
        let stack = resolver.resolve(pid, &raw);
        let name = format!("[unknown] 0x7f0000000000 ({}+0x10000000000)", file.module.file_name());
        assert_eq!(&*stack[0].function, name);
        assert_eq!(&*stack[1].function, TRUNCATED_FRAME);
    }

    #[test]
    fn a_file_that_cannot_be_read_is_left_alone_for_a_while() {
        let pid = std::process::id();
        let labels = ProcessTable::new(4)
            .observe(pid, pid, b"t", Identity::default())
            .labels(pid, b"t", true);
        let gone = Arc::new(MappedFile {
            key: FileKey { dev: 0, inode: 1 },
            module: Arc::new(Module { path: "/nonexistent/libgone.so".into(), build_id: None }),
            held: None,
        });
        let raw = RawStack {
            time_ns: 0,
            labels,
            kernel: vec![],
            user: vec![UserAddr::File {
                file: gone.clone(),
                offset: 0x1234,
                addr: 0x7f00_0000_1234,
            }],
            python: None,
            flags: 0,
            ..RawStack::default()
        };
        let (mut resolver, _) = resolver();
        let stack = resolver.resolve(pid, &raw);
        assert_eq!(&*stack[0].function, "[unknown] 0x7f0000001234 (libgone.so+0x1234)");
        let failed_at = resolver.failed[&gone.key];
        resolver.resolve(pid, &raw);
        assert_eq!(resolver.failed[&gone.key], failed_at, "not tried again at once");
        resolver.failed.insert(gone.key, failed_at - FAILED_FILE_RETRY);
        resolver.resolve(pid, &raw);
        assert!(resolver.failed[&gone.key] > failed_at, "tried again later");
    }

    #[test]
    fn kernel_addresses_resolve_from_kallsyms() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let Some(addr) = kallsyms.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let _kind = parts.next()?;
            (parts.next()? == "do_sys_openat2" && addr != 0).then_some(addr)
        }) else {
            eprintln!("skipped: /proc/kallsyms shows no addresses (needs root or kptr_restrict=0)");
            return;
        };
        let (mut resolver, _) = resolver();
        let raw = RawStack {
            time_ns: 0,
            labels: Arc::default(),
            kernel: vec![addr + 8],
            user: vec![],
            python: None,
            flags: 0,
            ..RawStack::default()
        };
        let stack = resolver.resolve(1, &raw);
        assert_eq!(&*stack[0].function, "do_sys_openat2");
        assert_eq!(stack[0].kind, FrameKind::Kernel);
    }
}
