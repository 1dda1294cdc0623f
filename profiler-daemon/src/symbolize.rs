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
    python::{FLAG_PY_TRUNCATED, PyFrame},
    sample::{FLAG_KERNEL_TRUNCATED, FLAG_USER_TRUNCATED},
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    aggregate::{CallSample, Frame, FrameKind, Labels, Module, Resolved, Stack, StackSample},
    calls::CallDeltas,
    function_ranges::FunctionRanges,
    host::{FileKey, readable_file},
    process::{MappedFile, UserAddr},
    python::{PythonProcess, code::CodeCache},
};

/// Marker frame for a stack cut at the recording depth.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// How long a file that could not be symbolized (deleted, unreadable, not ELF) is left alone
/// before it is tried again. Its frames are unknown meanwhile.
const FAILED_FILE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// A sample whose user addresses are normalized, waiting for symbols.
#[derive(Clone, Debug)]
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
    /// Lookups answered from a cache.
    pub hits: AtomicU64,
    /// Lookups that went to blazesym.
    pub misses: AtomicU64,
}

/// The caches and the blazesym instance.
#[derive(Debug)]
pub struct Resolver {
    symbolizer: Symbolizer,
    user: LruCache<(FileKey, u64), Option<Arc<Frame>>>,
    kernel: LruCache<u64, Arc<Frame>>,
    kernel_module: Arc<Module>,
    /// The path each file was last opened by.
    paths: HashMap<FileKey, PathBuf>,
    /// Files that could not be symbolized, and when that was last tried.
    failed: HashMap<FileKey, std::time::Instant>,
    /// Functions met, so that other addresses inside them need no symbolization.
    ranges: FunctionRanges,
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
            symbolizer: Symbolizer::builder()
                .enable_code_info(false)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            user: LruCache::new(capacity),
            kernel: LruCache::new(capacity),
            kernel_module: Arc::new(Module { path: Module::KERNEL_PATH.into(), build_id: None }),
            paths: HashMap::new(),
            failed: HashMap::new(),
            ranges: FunctionRanges::new(capacity.get()),
            truncated: Arc::new(Frame::marker(TRUNCATED_FRAME)),
            codes,
            stats,
        }
    }

    /// The merged stack of one sample, leaf first: kernel frames, then native user frames,
    /// then Python frames.
    ///
    /// In a Python process whose Python stack was recorded, the native frames kept are those
    /// above the interpreter (a C extension and the libraries it calls); the interpreter's
    /// own frames are replaced by the Python frames they run. Below the first frame without
    /// a frame pointer the unwound addresses are unreliable, so they are dropped.
    pub fn resolve(&mut self, pid: u32, raw: &RawStack) -> Stack {
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
        frames.into()
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
        let fresh_path = || readable_file(pid, std::path::Path::new(&*file.module.path), file.key);
        // The path that worked last time (the file key pins the file), else this process's view.
        let cached = self.paths.get(&file.key).cloned();
        let mut path = cached.clone().or_else(fresh_path);
        let mut results = path.as_deref().map(|p| symbolize_elf(&self.symbolizer, p, offsets));
        if cached.is_some() && !matches!(results, Some(Ok(_))) {
            // That path went away (it was another process's root, which exited, or a container
            // stopped): look again through this process.
            self.paths.remove(&file.key);
            path = fresh_path();
            results = path.as_deref().map(|p| symbolize_elf(&self.symbolizer, p, offsets));
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
        for (i, &offset) in offsets.iter().enumerate() {
            let frame = match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let name: Arc<str> = sym.name.as_ref().into();
                    if let Some(size) = sym.size {
                        let start = offset.saturating_sub(sym.offset as u64);
                        self.ranges.insert(file.key, start, start + size as u64, name.clone());
                    }
                    Some(native_frame(name, &file.module, offset))
                }
                // Unknown frames carry the process's address, so they are not cached as frames.
                _ => None,
            };
            self.user.put((file.key, offset), frame);
        }
        if let Some(path) = path {
            self.paths.insert(file.key, path);
        }
        true
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

/// Names `offsets` of the ELF file at `path`.
fn symbolize_elf<'s>(
    symbolizer: &'s Symbolizer,
    path: &std::path::Path,
    offsets: &[u64],
) -> Result<Vec<Symbolized<'s>>, blazesym::Error> {
    let src = Source::Elf(Elf { debug_syms: false, ..Elf::new(path) });
    symbolizer.symbolize(&src, Input::FileOffset(offsets))
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
) -> std::io::Result<JoinHandle<()>> {
    let codes = Arc::new(Mutex::new(CodeCache::new(capacity)));
    let shared = codes.clone();
    let (ahead_tx, mut ahead) = mpsc::channel(READ_AHEAD);
    let reader = std::thread::Builder::new().name("python-reader".into()).spawn(move || {
        while let Some(work) = input.blocking_recv() {
            if let Work::Stack(pid, raw) = &work {
                prefetch_python(&codes, *pid, raw);
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
        resolver.warm_up();
        while let Some(work) = ahead.blocking_recv() {
            let resolved = match work {
                Work::Stack(pid, raw) => {
                    let stack = resolver.resolve(pid, &raw);
                    Resolved::Sample(StackSample {
                        time_ns: raw.time_ns,
                        labels: raw.labels,
                        stack,
                    })
                }
                Work::Calls(raw) => Resolved::Calls(resolver.resolve_calls(&raw)),
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

    fn resolver() -> (Resolver, Arc<SymbolizerStats>) {
        let stats = Arc::new(SymbolizerStats::default());
        (Resolver::new(NonZeroUsize::new(64).unwrap(), stats.clone()), stats)
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
    fn unresolvable_offsets_are_unknown_not_wrong() {
        if skip_under_qemu_user(
            "unresolvable_offsets_are_unknown_not_wrong",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(4);
        let labels = table.observe(pid, pid, b"t", Identity::default()).labels(pid, b"t", true);
        let addr = a_named_function_for_the_symbolizer();
        let UserAddr::File { file, .. } = table.normalize(pid, &[addr]).remove(0) else {
            panic!("own code is file-backed");
        };
        // An offset far beyond the file's code.
        let bogus = UserAddr::File { file: file.clone(), offset: 1 << 40, addr: 0x7f00_0000_0000 };
        let raw = RawStack {
            time_ns: 0,
            labels,
            kernel: vec![],
            user: vec![bogus],
            python: None,
            flags: FLAG_USER_TRUNCATED,
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
        };
        let stack = resolver.resolve(1, &raw);
        assert_eq!(&*stack[0].function, "do_sys_openat2");
        assert_eq!(stack[0].kind, FrameKind::Kernel);
    }
}
