//! Code objects: name, file, first line and line table, read from the process's memory and
//! cached per (process, code address).
//!
//! A code object can be freed and its address reused, so a cached entry is re-checked against
//! the object's current fields once it is older than `RECHECK_AFTER`; an entry whose object
//! changed is read again, so a stale name is never shown for longer than that. The check
//! compares what names a code object (its type, name, file, first line and line table), not
//! its reference count, which changes with every call of a hot function.

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use lru::LruCache;
use profiler_common::python::PyFrame;

use super::{
    PythonProcess,
    layout::{InstrModel, Layout, ObjectLayout},
    linetable,
    memory::{self, Memory},
};
use crate::aggregate::{Frame, FrameKind};

const RECHECK_AFTER: Duration = Duration::from_secs(2);
const MAX_STRING_CHARS: u64 = 1024;
const MAX_LINETABLE: u64 = 1 << 20;
/// The bytes of names and line tables the cache holds at most: line tables can be long (up to
/// `MAX_LINETABLE`), so a bound on the number of code objects alone does not bound memory.
pub const CODE_CACHE_BYTES: usize = 64 << 20;
/// What a cached code object costs besides its names and line table: the entry, the `Arc` and
/// the `CodeInfo`.
const CODE_OVERHEAD: usize = 160;

/// What a code object says about itself.
#[derive(Debug)]
struct CodeInfo {
    qualname: Arc<str>,
    filename: Arc<str>,
    first_line: u32,
    /// Shared, so that a recheck does not copy it.
    linetable: Arc<[u8]>,
    /// What the object said about itself, to notice when the address was reused.
    identity: Identity,
    checked: Instant,
}

/// Why a code object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The memory could not be read (the process exited, or the address is bad).
    #[error("reading process memory: {0}")]
    Read(#[from] std::io::Error),
    /// The object is not a code object.
    #[error("not a code object")]
    NotCode,
}

/// Resolved code objects and frames.
#[derive(Debug)]
pub struct CodeCache {
    codes: LruCache<(u32, u64), Arc<CodeInfo>>,
    frames: LruCache<(u32, u64, u32), Arc<Frame>>,
    /// What the cached code objects weigh (`weight`).
    bytes: usize,
    max_bytes: usize,
}

impl CodeCache {
    /// A cache of `capacity` code objects and as many frames, holding at most
    /// [`CODE_CACHE_BYTES`] of code objects.
    pub fn new(capacity: NonZeroUsize) -> CodeCache {
        CodeCache::bounded(capacity, CODE_CACHE_BYTES)
    }

    /// A cache of `capacity` code objects and as many frames, holding at most `max_bytes` of
    /// code objects (always the last one read, whatever it weighs).
    pub fn bounded(capacity: NonZeroUsize, max_bytes: usize) -> CodeCache {
        CodeCache {
            codes: LruCache::new(capacity),
            frames: LruCache::new(capacity),
            bytes: 0,
            max_bytes,
        }
    }

    /// Code objects cached.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// What the cached code objects weigh: their names, line tables and entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most the cached code objects may weigh.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Publishes its sizes to `caches`.
    pub fn publish(&self, caches: &crate::caches::Caches) {
        caches.set("python code objects", self.codes.len(), self.codes.cap().get(), self.bytes);
        let frames = crate::caches::estimate(
            self.frames.iter().map(|(_, f)| f.approx_bytes()),
            self.frames.len(),
        );
        caches.set(
            "python frames",
            self.frames.len(),
            self.frames.cap().get(),
            crate::caches::table_bytes::<((u32, u64, u32), Arc<Frame>)>(self.frames.len()) + frames,
        );
    }

    /// Drops `fraction` of the code objects and of the frames, the least recently used first;
    /// returns how many entries went.
    pub fn shed(&mut self, fraction: f64) -> usize {
        let n = ((self.codes.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize)
            .min(self.codes.len());
        for _ in 0..n {
            if let Some((_, old)) = self.codes.pop_lru() {
                self.bytes = self.bytes.saturating_sub(weight(&old));
            }
        }
        n + crate::caches::shed_lru(&mut self.frames, fraction)
    }

    /// Drops what is cached for the processes `pids` (gone for good).
    pub fn forget(&mut self, pids: &[u32]) {
        let pids: std::collections::HashSet<u32> = pids.iter().copied().collect();
        let codes: Vec<(u32, u64)> =
            self.codes.iter().map(|(k, _)| *k).filter(|k| pids.contains(&k.0)).collect();
        for key in codes {
            if let Some(old) = self.codes.pop(&key) {
                self.bytes = self.bytes.saturating_sub(weight(&old));
            }
        }
        let frames: Vec<(u32, u64, u32)> =
            self.frames.iter().map(|(k, _)| *k).filter(|k| pids.contains(&k.0)).collect();
        for key in frames {
            self.frames.pop(&key);
        }
    }

    /// Caches `info`, forgetting the least recently used code objects beyond the bounds.
    fn insert(&mut self, key: (u32, u64), info: Arc<CodeInfo>) {
        self.bytes += weight(&info);
        // The entry replaced under the same key, or the one the count bound pushed out.
        if let Some((_, old)) = self.codes.push(key, info) {
            self.bytes = self.bytes.saturating_sub(weight(&old));
        }
        while self.bytes > self.max_bytes && self.codes.len() > 1 {
            let Some((_, old)) = self.codes.pop_lru() else { break };
            self.bytes = self.bytes.saturating_sub(weight(&old));
        }
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The frame for one recorded Python frame of process `pid`, or `None` for a shim frame.
    pub fn frame(&mut self, pid: u32, py: &PythonProcess, raw: PyFrame) -> Option<Arc<Frame>> {
        let layout = &py.layout;
        if layout.skip_owner_from.is_some_and(|o| raw.owner() >= o) {
            return None;
        }
        let code_addr = raw.code_addr();
        let Ok(info) = self.code(pid, py, code_addr) else {
            return Some(Arc::new(Frame {
                kind: FrameKind::Python,
                function: format!("[unknown code object {code_addr:#x}]").into(),
                file: Some("?".into()),
                ..Frame::marker("")
            }));
        };
        let offset = instruction_offset(layout, code_addr, raw.instr);
        let line = offset.and_then(|o| {
            linetable::line_at(layout.linetable, &info.linetable, info.first_line, o)
        });
        // Before the first instruction (a frame that has not started), report the def line.
        let line = line.unwrap_or(info.first_line);
        let key = (pid, code_addr, line);
        if let Some(frame) = self.frames.get(&key)
            && frame.function == info.qualname
            && frame.file.as_ref() == Some(&info.filename)
        {
            return Some(frame.clone());
        }
        let frame = Arc::new(Frame {
            kind: FrameKind::Python,
            function: info.qualname.clone(),
            module: None,
            address: u64::from(line),
            file: Some(info.filename.clone()),
            line,
            start_line: info.first_line,
        });
        self.frames.put(key, frame.clone());
        Some(frame)
    }

    /// The function of code object `code_addr` of process `pid`, as a frame at its first
    /// line; `None` when it cannot be read or is not a code object.
    pub fn function(&mut self, pid: u32, py: &PythonProcess, code_addr: u64) -> Option<Arc<Frame>> {
        let info = self.code(pid, py, code_addr).ok()?;
        Some(Arc::new(Frame {
            kind: FrameKind::Python,
            function: info.qualname.clone(),
            module: None,
            address: u64::from(info.first_line),
            file: Some(info.filename.clone()),
            line: info.first_line,
            start_line: info.first_line,
        }))
    }

    /// Reads the code objects of `frames` into the cache now, while the process runs.
    pub fn prefetch(&mut self, pid: u32, py: &PythonProcess, frames: &[PyFrame]) {
        for raw in frames {
            let _ = self.code(pid, py, raw.code_addr());
        }
    }

    fn code(
        &mut self,
        pid: u32,
        py: &PythonProcess,
        addr: u64,
    ) -> Result<Arc<CodeInfo>, CodeError> {
        let layout = &py.layout;
        if let Some(info) = self.codes.get(&(pid, addr)) {
            if info.checked.elapsed() < RECHECK_AFTER {
                return Ok(info.clone());
            }
            let header = match memory::read_vec(pid, addr, layout.code.header_len as usize) {
                Ok(header) => header,
                // The process is gone, so the address was not reused: its last samples, still
                // being symbolized, keep their names.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(info.clone()),
                Err(e) => return Err(e.into()),
            };
            if Identity::of(&header, layout) == info.identity {
                let fresh = Arc::new(CodeInfo {
                    qualname: info.qualname.clone(),
                    filename: info.filename.clone(),
                    first_line: info.first_line,
                    linetable: info.linetable.clone(),
                    identity: info.identity,
                    checked: Instant::now(),
                });
                self.insert((pid, addr), fresh.clone());
                return Ok(fresh);
            }
        }
        let info = Arc::new(read_code(pid, py, addr)?);
        self.insert((pid, addr), info.clone());
        Ok(info)
    }
}

/// What a cached code object costs.
fn weight(info: &CodeInfo) -> usize {
    CODE_OVERHEAD + info.qualname.len() + info.filename.len() + info.linetable.len()
}

/// Where in the code object the frame is, in the unit its line table uses.
fn instruction_offset(layout: &Layout, code_addr: u64, instr: u64) -> Option<u64> {
    match layout.instr {
        InstrModel::LastiBytes => {
            let lasti = instr as u32 as i32;
            u64::try_from(lasti).ok()
        }
        InstrModel::LastiUnits => {
            let lasti = instr as u32 as i32;
            u64::try_from(lasti).ok().map(|u| u * 2)
        }
        InstrModel::PrevInstr | InstrModel::InstrPtr => {
            let base = code_addr + u64::from(layout.code.code_adaptive?);
            // Before the first instruction `prev_instr` points one unit before the start.
            instr.checked_sub(base).map(|bytes| bytes / 2)
        }
    }
}

/// The fields of a code object's header that name it: its type and the addresses of its name,
/// file and line table objects, and its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity([u64; 5]);

impl Identity {
    fn of(header: &[u8], layout: &Layout) -> Identity {
        let c = &layout.code;
        Identity([
            memory::u64_at(header, layout.objects.ob_type),
            memory::u64_at(header, c.qualname.unwrap_or(c.name)),
            memory::u64_at(header, c.filename),
            u64::from(memory::u32_at(header, c.firstlineno)),
            memory::u64_at(header, c.linetable),
        ])
    }
}

fn read_code(pid: u32, py: &PythonProcess, addr: u64) -> Result<CodeInfo, CodeError> {
    let (code, header) = read_fields(&memory::Process(pid), &py.layout, py.code_type, addr)?;
    Ok(CodeInfo {
        qualname: code.qualname.into(),
        filename: code.filename.into(),
        first_line: code.first_line,
        linetable: code.linetable.into(),
        identity: Identity::of(&header, &py.layout),
        checked: Instant::now(),
    })
}

/// What a code object says about its function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeObject {
    /// `co_qualname` (3.11+) or `co_name`.
    pub qualname: String,
    /// `co_filename`.
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: u32,
    /// The line table's bytes, in the version's format.
    pub linetable: Vec<u8>,
}

/// Reads the code object at `addr` of `memory`, whose type object is at `code_type`, with the
/// interpreter's `layout`. Any memory gives an object or an error: it comes from a process
/// that may be changing it, or from anywhere.
pub fn read_code_object(
    memory: &impl Memory,
    layout: &Layout,
    code_type: u64,
    addr: u64,
) -> Result<CodeObject, CodeError> {
    read_fields(memory, layout, code_type, addr).map(|(code, _)| code)
}

/// [`read_code_object`], with the header it read.
fn read_fields(
    memory: &impl Memory,
    layout: &Layout,
    code_type: u64,
    addr: u64,
) -> Result<(CodeObject, Vec<u8>), CodeError> {
    let header = memory.read_vec(addr, layout.code.header_len as usize)?;
    if memory::u64_at(&header, layout.objects.ob_type) != code_type {
        return Err(CodeError::NotCode);
    }
    let c = &layout.code;
    let name_at = c.qualname.unwrap_or(c.name);
    let qualname = read_str(memory, &layout.objects, memory::u64_at(&header, name_at))?;
    let filename = read_str(memory, &layout.objects, memory::u64_at(&header, c.filename))?;
    check_names(&qualname, &filename)?;
    let first_line = memory::u32_at(&header, c.firstlineno);
    let linetable = read_bytes(memory, &layout.objects, memory::u64_at(&header, c.linetable))?;
    Ok((CodeObject { qualname, filename, first_line, linetable }, header))
}

/// A code object is read after its frame was sampled, and a short-lived one (a module's body,
/// run once by an import) may have been freed by then, its header intact but its name's memory
/// reused: such names come back with NUL characters, which no Python name or path holds.
fn check_names(qualname: &str, filename: &str) -> Result<(), CodeError> {
    if qualname.contains('\0') || filename.contains('\0') {
        return Err(CodeError::NotCode);
    }
    Ok(())
}

/// `addr + offset`, or not an object when that passes the end of the address space.
fn field(addr: u64, offset: u32) -> Result<u64, CodeError> {
    addr.checked_add(u64::from(offset)).ok_or(CodeError::NotCode)
}

/// Reads a `str` object (compact ASCII or compact Latin-1/UCS-2/UCS-4).
fn read_str(memory: &impl Memory, objects: &ObjectLayout, addr: u64) -> Result<String, CodeError> {
    if addr == 0 {
        return Ok(String::new());
    }
    let head = memory.read_vec(addr, objects.compact_data as usize)?;
    let length = memory::u64_at(&head, objects.unicode_length).min(MAX_STRING_CHARS);
    let state = memory::u32_at(&head, objects.unicode_state);
    let kind = (state >> 2) & 0x7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return Err(CodeError::NotCode);
    }
    let data = if ascii { objects.ascii_data } else { objects.compact_data };
    let bytes = memory.read_vec(field(addr, data)?, (length * u64::from(kind)) as usize)?;
    Ok(match kind {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(bytes.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    })
}

/// Reads a `bytes` object's contents.
fn read_bytes(
    memory: &impl Memory,
    objects: &ObjectLayout,
    addr: u64,
) -> Result<Vec<u8>, CodeError> {
    if addr == 0 {
        return Ok(Vec::new());
    }
    let size = memory.read_u64(field(addr, objects.bytes_size)?)?.min(MAX_LINETABLE);
    Ok(memory.read_vec(field(addr, objects.bytes_data)?, size as usize)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x10_000;
    const CODE_TYPE: u64 = 0xc0de;

    /// The memory of a code object of `layout` at `BASE`, with its name, file and line table
    /// objects after it.
    fn code_image(layout: &Layout, qualname: &str, filename: &str, linetable: &[u8]) -> Vec<u8> {
        let o = &layout.objects;
        let mut image = vec![0u8; 0x1000];
        let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
        let (name_at, file_at, table_at) = (0x400, 0x800, 0xc00);
        put(o.ob_type as usize, &CODE_TYPE.to_ne_bytes());
        let name_field = layout.code.qualname.unwrap_or(layout.code.name) as usize;
        put(name_field, &(BASE + name_at as u64).to_ne_bytes());
        put(layout.code.filename as usize, &(BASE + file_at as u64).to_ne_bytes());
        put(layout.code.linetable as usize, &(BASE + table_at as u64).to_ne_bytes());
        put(layout.code.firstlineno as usize, &42u32.to_ne_bytes());
        for (at, text) in [(name_at, qualname), (file_at, filename)] {
            put(at + o.unicode_length as usize, &(text.len() as u64).to_ne_bytes());
            // Kind 1 (one byte per character), compact, ASCII.
            put(at + o.unicode_state as usize, &(1u32 << 2 | 1 << 5 | 1 << 6).to_ne_bytes());
            put(at + o.ascii_data as usize, text.as_bytes());
        }
        put(table_at + o.bytes_size as usize, &(linetable.len() as u64).to_ne_bytes());
        put(table_at + o.bytes_data as usize, linetable);
        image
    }

    #[test]
    fn a_code_object_is_read_from_memory_with_each_layout() {
        for minor in 9..=12 {
            let layout = crate::python::layout::table(3, minor).unwrap();
            let image = code_image(&layout, "Worker.run", "/srv/app.py", &[1, 2, 3]);
            let memory = memory::Image { base: BASE, bytes: &image };
            let code = read_code_object(&memory, &layout, CODE_TYPE, BASE).unwrap();
            let want = CodeObject {
                qualname: "Worker.run".into(),
                filename: "/srv/app.py".into(),
                first_line: 42,
                linetable: vec![1, 2, 3],
            };
            assert_eq!(code, want, "3.{minor}");
            // Another type is not a code object.
            let other = read_code_object(&memory, &layout, CODE_TYPE + 1, BASE);
            assert!(matches!(other, Err(CodeError::NotCode)), "3.{minor}");
        }
    }

    #[test]
    fn pointers_at_the_end_of_the_address_space_are_not_objects() {
        let layout = crate::python::layout::table(3, 11).unwrap();
        let mut image = code_image(&layout, "f", "f.py", &[]);
        // The line table's object at the last page: its size field would be past 2^64.
        let at = layout.code.linetable as usize;
        image[at..at + 8].copy_from_slice(&(u64::MAX - 4).to_ne_bytes());
        let memory = memory::Image { base: BASE, bytes: &image };
        let read = read_code_object(&memory, &layout, CODE_TYPE, BASE);
        assert!(matches!(read, Err(CodeError::NotCode)), "{read:?}");
        // A name whose characters would start past 2^64.
        let mut image = code_image(&layout, "f", "f.py", &[]);
        let at = layout.code.qualname.unwrap() as usize;
        image[at..at + 8].copy_from_slice(&(u64::MAX - 8).to_ne_bytes());
        let memory = memory::Image { base: BASE, bytes: &image };
        assert!(read_code_object(&memory, &layout, CODE_TYPE, BASE).is_err());
    }

    fn python() -> PythonProcess {
        PythonProcess::for_tests(None)
    }

    #[test]
    fn a_gone_process_keeps_the_names_it_had() {
        if crate::host::skip_under_qemu_user(
            "a_gone_process_keeps_the_names_it_had",
            "qemu-user does not emulate process_vm_readv",
        ) {
            return;
        }
        let gone = 999_999_999;
        let mut cache = CodeCache::new(NonZeroUsize::new(4).unwrap());
        let info = CodeInfo {
            qualname: "Worker.run".into(),
            filename: "/srv/app.py".into(),
            first_line: 10,
            linetable: Arc::from([]),
            identity: Identity([0; 5]),
            checked: Instant::now().checked_sub(RECHECK_AFTER * 2).unwrap(),
        };
        cache.codes.put((gone, 0x1000), Arc::new(info));
        let frame = cache.function(gone, &python(), 0x1000).expect("kept after the exit");
        assert_eq!(&*frame.function, "Worker.run");
        // Never read, it cannot be named.
        assert!(cache.function(gone, &python(), 0x2000).is_none());
    }

    fn code_info(qualname: &str, linetable_bytes: usize) -> Arc<CodeInfo> {
        Arc::new(CodeInfo {
            qualname: qualname.into(),
            filename: "/srv/app.py".into(),
            first_line: 1,
            linetable: vec![0; linetable_bytes].into(),
            identity: Identity([0; 5]),
            checked: Instant::now(),
        })
    }

    #[test]
    fn a_forgotten_process_takes_its_code_objects_and_frames_along() {
        let mut cache = CodeCache::bounded(NonZeroUsize::new(100).unwrap(), 1 << 20);
        for pid in [7, 8, 9] {
            for addr in 0..5u64 {
                cache.insert((pid, addr), code_info("f", 100));
                cache.frames.put((pid, addr, 1), Arc::new(Frame::marker("f")));
            }
        }
        cache.forget(&[7, 9, 1234]);
        assert_eq!((cache.len(), cache.frames.len()), (5, 5));
        assert!(cache.codes.iter().all(|(k, _)| k.0 == 8));
        assert!(cache.frames.iter().all(|(k, _)| k.0 == 8));
        assert_eq!(cache.bytes(), 5 * weight(&code_info("f", 100)));
    }

    #[test]
    fn long_line_tables_are_bounded_by_their_bytes_not_their_count() {
        let max_bytes = 1 << 20;
        let mut cache = CodeCache::bounded(NonZeroUsize::new(200_000).unwrap(), max_bytes);
        // 64 KiB each: sixteen fit, the 100 read would take 6.4 MiB.
        for addr in 0..100u64 {
            cache.insert((1, addr), code_info("f", 64 << 10));
            assert!(cache.bytes() <= max_bytes, "{} bytes after {addr}", cache.bytes());
        }
        assert_eq!(cache.len(), 15, "as many as fit with their overhead");
        // The newest stayed, the oldest went.
        assert!(cache.codes.contains(&(1, 99)) && !cache.codes.contains(&(1, 0)));
        // Replacing an entry counts it once.
        cache.insert((1, 99), code_info("g", 64 << 10));
        assert_eq!(cache.bytes(), cache.codes.iter().map(|(_, i)| weight(i)).sum::<usize>());
        // One code object larger than the bound is still kept: it is the one being named.
        cache.insert((2, 1), code_info("huge", 2 << 20));
        assert_eq!((cache.len(), cache.codes.contains(&(2, 1))), (1, true));
        // The count bound still holds for small ones, and the bytes follow it.
        let mut small = CodeCache::bounded(NonZeroUsize::new(4).unwrap(), max_bytes);
        for addr in 0..10u64 {
            small.insert((1, addr), code_info("f", 10));
        }
        assert_eq!((small.len(), small.bytes()), (4, 4 * weight(&code_info("f", 10))));
    }

    #[test]
    fn a_code_object_is_the_same_while_its_names_are_though_its_reference_count_moves() {
        for minor in [9, 11, 12] {
            let layout = crate::python::layout::table(3, minor).expect("a table");
            let c = &layout.code;
            let mut header = vec![0u8; layout.code.header_len as usize];
            let put = |h: &mut Vec<u8>, at: u32, v: u64| {
                h[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes());
            };
            put(&mut header, layout.objects.ob_type, 0x5500_0000);
            put(&mut header, c.qualname.unwrap_or(c.name), 0x7f00_0000_1000);
            put(&mut header, c.filename, 0x7f00_0000_2000);
            put(&mut header, c.linetable, 0x7f00_0000_3000);
            let before = Identity::of(&header, &layout);
            // A call or a return moves the reference count at the object's start.
            let mut called = header.clone();
            put(&mut called, 0, 12_345);
            assert_eq!(Identity::of(&called, &layout), before, "3.{minor}");
            // Another function at the same address has another name.
            let mut reused = header.clone();
            put(&mut reused, c.qualname.unwrap_or(c.name), 0x7f00_0000_9000);
            assert_ne!(Identity::of(&reused, &layout), before, "3.{minor}");
        }
    }

    #[test]
    fn names_with_nul_characters_are_a_freed_code_object() {
        assert!(check_names("<module>", "/usr/lib/python3.11/ast.py").is_ok());
        assert!(check_names("Handler.get", "").is_ok());
        assert!(matches!(check_names("\0", "/usr/lib/python3.11/ast.py"), Err(CodeError::NotCode)));
        assert!(matches!(check_names("main", "/srv/a\0pp.py"), Err(CodeError::NotCode)));
    }
}
