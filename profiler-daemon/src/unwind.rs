//! Native stacks through code built without frame pointers.
//!
//! The kernel program walks frame pointers, and the walk goes astray at the first function
//! that uses the frame pointer register for something else, as nearly every function of
//! Debian's libc, libpython, zlib and most wheels does. For the processes that map such code,
//! the program also copies the top of the user stack (`profiler_common::sample::STACK_COPY_MAX`
//! bytes at most) into the sample, and the collector unwinds it here with framehop, from each
//! mapped file's `.eh_frame` (and `.debug_frame`), as `perf record --call-graph dwarf` does.
//!
//! Which processes: a file *breaks the chain* when one of its functions saves the frame
//! pointer register and then uses it without making it the base of its frame (its unwind rules
//! save `rbp`/`x29` but never compute the frame's address from it); a process is copied for
//! while any file it maps executable code from breaks the chain. Processes whose code all keeps
//! frame pointers are walked by frame pointers alone and pay nothing more than a lookup.

use std::{
    cell::Cell,
    num::NonZeroUsize,
    ops::{Deref, Range},
    path::Path,
    sync::Arc,
};

use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection as _,
};
use lru::LruCache;
use object::{Object as _, ObjectSection as _};

use crate::{
    debuginfo::elf::Layout,
    host::{FileKey, readable_file},
    leaf::Arch,
    process::{FileMapping, MappedFile},
};

#[cfg(target_arch = "aarch64")]
use framehop::aarch64::{
    CacheAarch64 as NativeCache, UnwindRegsAarch64 as NativeRegs, UnwinderAarch64 as NativeUnwinder,
};
#[cfg(not(target_arch = "aarch64"))]
use framehop::x86_64::{
    CacheX86_64 as NativeCache, UnwindRegsX86_64 as NativeRegs, UnwinderX86_64 as NativeUnwinder,
};

/// Files whose sections stay mapped for unwinding.
pub const MAX_FILES: usize = 512;
const FILES: NonZeroUsize = NonZeroUsize::new(MAX_FILES).unwrap();
/// Processes whose module lists are kept (a few hundred bytes per mapped file each).
const PROCESSES: NonZeroUsize = NonZeroUsize::new(1024).unwrap();
/// Frames unwound at most, as for the frame-pointer walk.
const MAX_FRAMES: usize = profiler_common::sample::MAX_STACK_DEPTH;

/// A section of a mapped file.
#[derive(Clone, Debug)]
pub struct Section {
    map: Arc<memmap2::Mmap>,
    range: Range<usize>,
}

impl Deref for Section {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// What one file contributes to unwinding.
pub struct FileUnwind {
    layout: Layout,
    sections: ExplicitModuleSectionInfo<Section>,
    /// Whether a function of the file has a frame without a frame record (see
    /// [`breaks_chain`]).
    pub breaks_chain: bool,
    /// Bytes of its unwind tables (`.eh_frame`, its index and `.debug_frame`).
    pub table_bytes: u64,
}

impl std::fmt::Debug for FileUnwind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUnwind").field("breaks_chain", &self.breaks_chain).finish()
    }
}

impl FileUnwind {
    /// The sections of the ELF file at `path`; `None` when it cannot be read or has no unwind
    /// tables.
    pub fn read(path: &Path, arch: Arch) -> Option<FileUnwind> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: read-only and private; a file replaced while mapped is replaced by rename.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.ok()?);
        let elf = object::File::parse(&**map).ok()?;
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            let (start, size) = s.file_range()?;
            let start = usize::try_from(start).ok()?;
            let range = start..start.checked_add(usize::try_from(size).ok()?)?;
            map.get(range.clone())?;
            Some((Section { map: map.clone(), range }, s.address()..s.address() + size))
        };
        let svma = |name: &str| {
            elf.section_by_name(name).map(|s| s.address()..s.address().saturating_add(s.size()))
        };
        let eh_frame = section(".eh_frame");
        let debug_frame = section(".debug_frame");
        if eh_frame.is_none() && debug_frame.is_none() {
            return None;
        }
        let hdr = section(".eh_frame_hdr");
        let text = section(".text");
        let breaks_chain = eh_frame.as_ref().is_some_and(|(data, address)| {
            breaks_chain(arch, data, address.start, text.as_ref().map_or(0, |t| t.1.start))
        });
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: text.as_ref().map(|t| t.1.clone()),
            text: text.map(|t| t.0),
            got_svma: svma(".got"),
            eh_frame_svma: eh_frame.as_ref().map(|e| e.1.clone()),
            eh_frame: eh_frame.map(|e| e.0),
            eh_frame_hdr_svma: hdr.as_ref().map(|h| h.1.clone()),
            eh_frame_hdr: hdr.map(|h| h.0),
            debug_frame: debug_frame.map(|d| d.0),
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        let table_bytes = [&sections.eh_frame, &sections.eh_frame_hdr, &sections.debug_frame]
            .iter()
            .filter_map(|s| s.as_ref())
            .map(|s| s.len() as u64)
            .sum();
        Some(FileUnwind { layout: Layout::parse(&map)?, sections, breaks_chain, table_bytes })
    }
}

/// Whether any function in `.eh_frame` (`data`, at `address`) has a frame but never sets up a
/// frame record: the frame-pointer walk then skips it (its caller is missing from the chain),
/// or, when it uses the frame pointer register for something else, follows that value astray.
///
/// A function sets up a record when it takes the frame's address from the frame pointer
/// register, or on aarch64 (whose GCC keeps the frame's address relative to `sp` even once `x29`
/// points at the record) when it saves `x29` right below `x30`. It has a frame when its stack
/// holds more than the return address (x86_64) or when it saves the return address (aarch64): a
/// leaf without one keeps its caller where [`crate::leaf`] finds it.
fn breaks_chain(arch: Arch, data: &[u8], address: u64, text: u64) -> bool {
    let (sp, fp, ra) = arch.registers();
    let eh = EhFrame::new(data, LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(address).set_text(text);
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else { continue };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else { continue };
        let Ok(mut table) = fde.rows(&eh, &bases, &mut ctx) else { continue };
        let (mut has_frame, mut framed) = (false, false);
        while let Ok(Some(row)) = table.next_row() {
            // The PLT's stubs, whose frame's address is an expression, are not functions.
            let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else {
                framed = true;
                break;
            };
            if register == fp {
                framed = true;
                break;
            }
            let fp_at = match row.register(fp) {
                Some(RegisterRule::Offset(at)) => Some(at),
                _ => None,
            };
            match arch {
                Arch::X86_64 => has_frame |= register == sp && offset > 8 || fp_at.is_some(),
                Arch::Aarch64 => {
                    let ra_at = row.register(ra);
                    if let Some(at) = fp_at
                        && ra_at == Some(RegisterRule::Offset(at + 8))
                    {
                        framed = true;
                        break;
                    }
                    has_frame |= matches!(ra_at, Some(RegisterRule::Offset(_))) || fp_at.is_some();
                }
            }
        }
        if has_frame && !framed {
            return true;
        }
    }
    false
}

/// One process's view for the unwinder: its file mappings as framehop modules.
struct ProcessModules {
    generation: u64,
    interpreter: Option<FileKey>,
    unwinder: NativeUnwinder<Section>,
    /// Whether one of its files breaks the frame-pointer chain.
    breaks_chain: bool,
    /// Where the interpreter's code is mapped: unwinding stops at its first frame.
    stop: Vec<Range<u64>>,
}

impl ProcessModules {
    /// Rough heap bytes: the stop ranges and the unwinder's list of modules (their tables are
    /// the files', counted there).
    fn heap_bytes(&self) -> usize {
        /// The unwinder's entry per module, and modules in a typical process.
        const MODULE_BYTES: usize = 256;
        const MODULES: usize = 16;
        self.stop.capacity() * size_of::<Range<u64>>() + MODULE_BYTES * MODULES
    }
}

/// What unwinding a sample's copy found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwound {
    /// Addresses, leaf first, as the frame-pointer walk gives them.
    pub addrs: Vec<u64>,
    /// Bytes from the copy's start to the end of the deepest word read.
    pub used: u64,
    /// Whether unwinding stopped at a word past the copy's end.
    pub ran_out: bool,
}

/// The registers a sample of user code carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer, where the copy starts.
    pub sp: u64,
    /// Frame pointer (`rbp`, `x29`).
    pub fp: u64,
    /// Link register (`x30`; 0 on x86_64).
    pub lr: u64,
}

/// The files' unwind tables and the processes' module lists, both bounded.
pub struct NativeUnwind {
    arch: Arch,
    files: LruCache<FileKey, Option<Arc<FileUnwind>>>,
    processes: LruCache<u32, ProcessModules>,
    cache: Box<NativeCache>,
    /// Bytes of the unwind tables in `files`.
    table_bytes: u64,
}

impl std::fmt::Debug for NativeUnwind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeUnwind")
            .field("files", &self.files.len())
            .field("processes", &self.processes.len())
            .finish()
    }
}

impl Default for NativeUnwind {
    fn default() -> Self {
        NativeUnwind {
            arch: Arch::HOST,
            files: LruCache::new(FILES),
            processes: LruCache::new(PROCESSES),
            cache: Box::new(NativeCache::new()),
            table_bytes: 0,
        }
    }
}

impl NativeUnwind {
    /// The unwind tables of `file`, which process `pid` maps.
    fn file(&mut self, pid: u32, file: &MappedFile) -> Option<Arc<FileUnwind>> {
        if let Some(info) = self.files.get(&file.key) {
            return info.clone();
        }
        let info = file
            .held_path()
            .or_else(|| readable_file(pid, Path::new(&*file.module.path), file.key))
            .and_then(|path| FileUnwind::read(&path, self.arch))
            .map(Arc::new);
        self.table_bytes += info.as_ref().map_or(0, |i| i.table_bytes);
        if let Some((_, Some(evicted))) = self.files.push(file.key, info.clone()) {
            self.table_bytes = self.table_bytes.saturating_sub(evicted.table_bytes);
        }
        info
    }

    /// Drops `fraction` of the files' tables and of the processes' module lists, the least
    /// recently used first.
    pub fn shed(&mut self, fraction: f64) -> usize {
        let n = ((self.files.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize)
            .min(self.files.len());
        for _ in 0..n {
            if let Some((_, Some(evicted))) = self.files.pop_lru() {
                self.table_bytes = self.table_bytes.saturating_sub(evicted.table_bytes);
            }
        }
        n + crate::caches::shed_lru(&mut self.processes, fraction)
    }

    /// Publishes its sizes to `caches`.
    pub fn publish(&self, caches: &crate::caches::Caches) {
        caches.set(
            "unwind table files",
            self.files.len(),
            self.files.cap().get(),
            self.table_bytes as usize,
        );
        let modules: usize = self.processes.iter().map(|(_, m)| m.heap_bytes()).sum();
        caches.set(
            "unwind module lists",
            self.processes.len(),
            self.processes.cap().get(),
            crate::caches::table_bytes::<(u32, ProcessModules)>(self.processes.len()) + modules,
        );
    }

    /// Files whose tables are mapped (or known to have none), and the tables' bytes.
    pub fn files(&self) -> (usize, u64) {
        (self.files.len(), self.table_bytes)
    }

    /// Brings process `pid`'s modules up to date with its mappings (`generation` counts their
    /// changes) and returns whether its code breaks the frame-pointer chain. In a Python
    /// process, `interpreter` is the interpreter's file: unwinding stops at its first frame,
    /// since the Python frames replace the interpreter's.
    pub fn update<'a>(
        &mut self,
        pid: u32,
        generation: u64,
        interpreter: Option<FileKey>,
        mappings: impl Iterator<Item = FileMapping<'a>>,
    ) -> bool {
        if let Some(p) = self.processes.get(&pid)
            && p.generation == generation
            && p.interpreter == interpreter
        {
            return p.breaks_chain;
        }
        let mut unwinder = NativeUnwinder::new();
        let mut breaks = false;
        let mut stop = Vec::new();
        for m in mappings {
            if Some(m.file.key) == interpreter {
                stop.push(m.start..m.end);
            }
            let Some(info) = self.file(pid, m.file) else { continue };
            let Some(svma) = info.layout.address(m.offset) else { continue };
            breaks |= info.breaks_chain;
            let module = Module::new(
                m.file.module.path.to_string(),
                m.start..m.end,
                m.start.wrapping_sub(svma),
                info.sections.clone(),
            );
            unwinder.add_module(module);
        }
        self.processes.put(
            pid,
            ProcessModules { generation, interpreter, unwinder, breaks_chain: breaks, stop },
        );
        breaks
    }

    /// Forgets process `pid`.
    pub fn forget(&mut self, pid: u32) {
        self.processes.pop(&pid);
    }

    /// The user stack of a sample of process `pid` (whose modules are up to date), unwound
    /// from `regs` through `stack`, the bytes from `regs.sp` up, and how much of the copy it
    /// read. With `python`, the sample has Python frames, and unwinding stops at the
    /// interpreter's first frame.
    pub fn unwind(&mut self, pid: u32, regs: UserRegs, stack: &[u8], python: bool) -> Unwound {
        let Some(p) = self.processes.get(&pid) else {
            return Unwound { addrs: vec![regs.ip], ..Unwound::default() };
        };
        let end = regs.sp.saturating_add(stack.len() as u64);
        let (used, ran_out) = (Cell::new(0u64), Cell::new(false));
        let mut read = |addr: u64| {
            let word = read_word(stack, regs.sp, addr);
            match word {
                Ok(_) => {
                    used.set(used.get().max(addr + 8 - regs.sp));
                    ran_out.set(false);
                }
                Err(()) => ran_out.set(addr >= end),
            }
            word
        };
        #[cfg(target_arch = "aarch64")]
        let start = NativeRegs::new(regs.lr, regs.sp, regs.fp);
        #[cfg(not(target_arch = "aarch64"))]
        let start = NativeRegs::new(regs.ip, regs.sp, regs.fp);
        let mut frames = p.unwinder.iter_frames(regs.ip, start, &mut self.cache, &mut read);
        let mut addrs = Vec::with_capacity(16);
        while addrs.len() < MAX_FRAMES {
            let addr = match frames.next() {
                Ok(Some(FrameAddress::InstructionPointer(ip))) => ip,
                Ok(Some(FrameAddress::ReturnAddress(ra))) => ra.get(),
                Ok(None) | Err(_) => break,
            };
            addrs.push(addr);
            if python && p.stop.iter().any(|r| r.contains(&addr)) {
                break;
            }
        }
        Unwound { addrs, used: used.get(), ran_out: ran_out.get() }
    }
}

/// The word at `addr` in `stack`, which holds the bytes from `sp` up.
fn read_word(stack: &[u8], sp: u64, addr: u64) -> Result<u64, ()> {
    let at = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
    let bytes = stack.get(at..at.checked_add(8).ok_or(())?).ok_or(())?;
    Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
}

/// The stack to keep: the unwound one while it reaches beyond the walked one, continued by the
/// walked frames after the last frame both share (the copy covers only the top of the stack;
/// code below it may keep frame pointers).
pub fn combine(unwound: Vec<u64>, walked: &[u64]) -> Vec<u64> {
    if unwound.len() < 2 {
        return walked.to_vec();
    }
    let mut out = unwound;
    if let Some(last) = out.last()
        && let Some(i) = walked.iter().skip(1).position(|a| a == last)
    {
        out.extend_from_slice(&walked[i + 2..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_only_inside_the_copy() {
        let mut stack = vec![0u8; 32];
        stack[8..16].copy_from_slice(&0x1234u64.to_ne_bytes());
        assert_eq!(read_word(&stack, 0x1000, 0x1008), Ok(0x1234));
        assert_eq!(read_word(&stack, 0x1000, 0x0ff8), Err(()), "below the stack pointer");
        assert_eq!(read_word(&stack, 0x1000, 0x1019), Err(()), "past the copy's end");
        assert_eq!(read_word(&stack, 0x1000, u64::MAX), Err(()));
    }

    #[test]
    fn the_walk_continues_the_unwound_stack_after_their_last_shared_frame() {
        // The copy ended after 0x30; the walk found 0x30 and what is below it.
        assert_eq!(
            combine(vec![1, 0x20, 0x30], &[1, 0x99, 0x30, 0x40, 0x50]),
            [1, 0x20, 0x30, 0x40, 0x50]
        );
        // Nothing shared: the unwound stack alone.
        assert_eq!(combine(vec![1, 0x20], &[1, 0x99]), [1, 0x20]);
        // Unwinding found no caller: the walk.
        assert_eq!(combine(vec![1], &[1, 0x99]), [1, 0x99]);
    }
}

#[cfg(test)]
mod files {
    use super::*;

    /// A function that keeps many values live across calls through a pointer: built without
    /// frame pointers it has a frame (and on x86_64 uses `rbp` as one more register) but no
    /// frame record.
    const SOURCE: &str = "\
        unsigned long step(unsigned long x) { return x * 31 + 7; }\n\
        unsigned long (*volatile stepper)(unsigned long) = step;\n\
        __attribute__((noinline)) unsigned long busy(unsigned long n) {\n\
          unsigned long a = n, b = n + 1, c = n + 2, d = n + 3, e = n + 4, f = n + 5;\n\
          unsigned long g = n + 6, h = n + 7, i = n + 8, j = n + 9, k = n + 10, l = n + 11;\n\
          for (unsigned long r = 0; r < n; r++) {\n\
            a = stepper(a + l); b ^= a; c += b; d ^= c; e += d; f ^= e;\n\
            g += f; h ^= g; i += h; j ^= i; k += j; l ^= k;\n\
          }\n\
          return a + b + c + d + e + f + g + h + i + j + k + l;\n\
        }\n\
        int main(int argc, char **argv) { (void)argv; return (int)busy(argc); }\n";

    fn build(compiler: &str, flags: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("busy.c");
        std::fs::write(&src, SOURCE).unwrap();
        let out = dir.path().join("busy");
        let status = std::process::Command::new(compiler)
            .args(flags)
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{compiler} {flags:?}");
        (dir, out)
    }

    /// The instruction set of the ELF file at `path` (the host's compiler builds x86_64 code
    /// when these tests run under qemu-aarch64).
    fn arch_of(path: &Path) -> Arch {
        let data = std::fs::read(path).unwrap();
        match object::File::parse(&*data).unwrap().architecture() {
            object::Architecture::Aarch64 => Arch::Aarch64,
            _ => Arch::X86_64,
        }
    }

    fn check(compiler: &str) {
        let (_dir, without) = build(compiler, &["-O2", "-fomit-frame-pointer"]);
        let arch = arch_of(&without);
        let info = FileUnwind::read(&without, arch).expect("unwind tables");
        assert!(info.breaks_chain, "{compiler}: built without frame pointers");
        assert!(info.sections.eh_frame.is_some() && info.sections.text.is_some());
        let (_dir, with) = build(compiler, &["-O2", "-fno-omit-frame-pointer"]);
        let info = FileUnwind::read(&with, arch).expect("unwind tables");
        assert!(!info.breaks_chain, "{compiler}: built with frame pointers");
    }

    #[test]
    fn files_built_without_frame_pointers_are_told_from_their_unwind_tables() {
        check("cc");
        // arm64's tables from a real file where its compiler is installed (`make
        // cross-aarch64` installs it, before it runs these tests under qemu-aarch64).
        let cross = "aarch64-linux-gnu-gcc";
        if std::process::Command::new(cross).arg("--version").output().is_ok() {
            check(cross);
        } else {
            eprintln!("{cross} is not installed: only the host's tables were read");
        }
        assert!(FileUnwind::read(Path::new("/nonexistent"), Arch::HOST).is_none());
    }
}
