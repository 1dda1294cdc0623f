//! CPython support: finding interpreters, their layouts, and the code objects their frames
//! point to.
//!
//! Detection reads the process's maps and the interpreter's ELF symbols (`_PyRuntime`,
//! `PyCode_Type`, `Py_Version`) once per process. An interpreter whose version or layout is
//! not supported degrades to native-only stacks, and the reason is shown in `Status`.

pub mod code;
pub mod debug_offsets;
pub mod layout;
pub mod linetable;
pub mod memory;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use procfs::process::{MMapPath, Process};

use crate::host::{FileKey, own_path, readable_file, readable_path};
use layout::Layout;

/// Whether CPython `major.minor` (a release, built with the GIL) gets Python stacks: a
/// built-in layout, or a parse table for the `_Py_DebugOffsets` it describes itself in.
pub fn is_supported(major: u8, minor: u8) -> bool {
    layout::table(major, minor).is_some() || debug_offsets::knows(major, minor)
}

/// Micro version when only the file name told the version (3.9 and 3.10 lack `Py_Version`).
const UNKNOWN_MICRO: u8 = u8::MAX;

/// How the interpreter is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// The interpreter is in the executable.
    Static,
    /// The interpreter is in a mapped `libpython3.X.so`.
    Shared,
}

/// A CPython process that the kernel can walk.
#[derive(Debug)]
pub struct PythonProcess {
    /// (major, minor, micro).
    pub version: (u8, u8, u8),
    /// Static or shared.
    pub linkage: Linkage,
    /// Where the layout came from.
    pub layout_source: &'static str,
    /// The layout.
    pub layout: Layout,
    /// Address of `PyCode_Type` in the process.
    pub code_type: u64,
    /// Address of the main interpreter state.
    pub interp: u64,
    /// The file holding the interpreter (executable or libpython).
    pub interpreter_file: FileKey,
    /// That file's path as the process maps it.
    pub interpreter_path: PathBuf,
    /// File offset of `_PyEval_EvalFrameDefault`, where the call probe goes.
    pub eval_frame_offset: Option<u64>,
}

impl PythonProcess {
    /// `CPython 3.11.2`, or `CPython 3.9` when the micro version is unknown.
    pub fn short_name(&self) -> String {
        match self.version {
            (a, b, UNKNOWN_MICRO) => format!("CPython {a}.{b}"),
            (a, b, c) => format!("CPython {a}.{b}.{c}"),
        }
    }

    /// A static CPython 3.11.2 with the 3.11 table and nothing in memory, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(eval_frame_offset: Option<u64>) -> PythonProcess {
        PythonProcess {
            version: (3, 11, 2),
            linkage: Linkage::Static,
            layout_source: "offsets from table",
            layout: layout::table(3, 11).expect("a 3.11 table"),
            code_type: 0,
            interp: 0,
            interpreter_file: crate::host::FileKey { dev: 0, inode: 0 },
            interpreter_path: "/usr/bin/python3.11".into(),
            eval_frame_offset,
        }
    }
}

impl fmt::Display for PythonProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.version;
        if c == UNKNOWN_MICRO {
            let linkage = match self.linkage {
                Linkage::Static => "static",
                Linkage::Shared => "shared libpython",
            };
            return write!(f, "CPython {a}.{b}, {linkage}, {}", self.layout_source);
        }
        let linkage = match self.linkage {
            Linkage::Static => "static",
            Linkage::Shared => "shared libpython",
        };
        write!(f, "CPython {a}.{b}.{c}, {linkage}, {}", self.layout_source)
    }
}

/// The outcome of looking at a process.
#[derive(Clone, Debug)]
pub enum Detection {
    /// Not a CPython process.
    NotPython,
    /// A CPython process with a supported layout.
    Python(Arc<PythonProcess>),
    /// A CPython process that is profiled natively only, and why.
    Unsupported(String),
    /// A CPython process whose interpreter is not initialized yet; look again later.
    NotReady,
}

struct Candidate {
    path: PathBuf,
    key: FileKey,
    linkage: Linkage,
    /// Start of the mapping at file offset 0.
    base: u64,
}

fn is_libpython(name: &str) -> bool {
    name.starts_with("libpython3.")
}

/// Whether an executable's file name is an interpreter's: `python`, `python3`, `python3.12`,
/// with ABI flags like `python3.13t` or `python3.11d`. Not `python-build` or `pythonista`.
fn is_interpreter_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("python") else { return false };
    let rest = rest.strip_prefix('3').unwrap_or(rest);
    let rest = match rest.strip_prefix('.') {
        Some(minor) => {
            let digits = minor.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return false;
            }
            &minor[digits..]
        }
        None => rest,
    };
    rest.chars().all(|c| matches!(c, 'd' | 'm' | 't' | 'u'))
}

fn candidates(pid: u32, exe: &str) -> Vec<Candidate> {
    let Ok(maps) = Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    let root = crate::host::process_root(pid);
    let maps: Vec<_> = maps
        .into_iter()
        .map(|mut m| {
            if let MMapPath::Path(p) = &m.pathname {
                m.pathname = MMapPath::Path(own_path(root.as_deref(), p));
            }
            m
        })
        .collect();
    // Only files the process executes code from: the daemon itself, for one, maps interpreter
    // files read-only to symbolize them.
    let executed: Vec<&PathBuf> = maps
        .iter()
        .filter(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE))
        .filter_map(|m| match &m.pathname {
            MMapPath::Path(p) => Some(p),
            _ => None,
        })
        .collect();
    let exe_is_python =
        Path::new(exe).file_name().and_then(|n| n.to_str()).is_some_and(is_interpreter_name);
    let mut out: Vec<Candidate> = Vec::new();
    for m in &maps {
        let MMapPath::Path(path) = &m.pathname else { continue };
        if m.offset != 0 || out.iter().any(|c| c.path == *path) || !executed.contains(&path) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let linkage = if is_libpython(name) {
            Linkage::Shared
        } else if exe_is_python && path.to_str() == Some(exe) {
            Linkage::Static
        } else {
            continue;
        };
        let dev = ((m.dev.0 as u64) << 32) | (m.dev.1 as u64 & 0xffff_ffff);
        out.push(Candidate {
            path: path.clone(),
            key: FileKey { dev, inode: m.inode },
            linkage,
            base: m.address.0,
        });
    }
    // A libpython, when mapped, holds the interpreter even if the executable is a launcher.
    out.sort_by_key(|c| c.linkage == Linkage::Static);
    out
}

#[derive(Clone, Copy, Debug)]
struct Symbols {
    runtime: u64,
    code_type: Option<u64>,
    py_version: Option<u64>,
    /// File offset of `_PyEval_EvalFrameDefault`.
    eval_frame_offset: Option<u64>,
    first_load_vaddr: u64,
}

/// Maps `path` into memory: interpreter files are parsed in place, never read whole.
fn map_file(path: &Path) -> Option<memmap2::Mmap> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: the mapping is read-only and private. A file truncated while mapped would fault
    // on access; executables and libraries in use are replaced by rename, not rewritten.
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

/// Addresses of the symbols detection needs, as found so far.
#[derive(Default)]
struct Found {
    runtime: Option<u64>,
    code_type: Option<u64>,
    py_version: Option<u64>,
    eval_frame: Option<u64>,
}

impl Found {
    fn take(&mut self, sym: &object::Symbol<'_, '_>) {
        let slot = match sym.name() {
            Ok("_PyRuntime") => &mut self.runtime,
            Ok("PyCode_Type") => &mut self.code_type,
            Ok("Py_Version") => &mut self.py_version,
            Ok("_PyEval_EvalFrameDefault") => &mut self.eval_frame,
            _ => return,
        };
        slot.get_or_insert(sym.address());
    }

    fn complete(&self) -> bool {
        self.runtime.is_some() && self.code_type.is_some() && self.eval_frame.is_some()
    }
}

fn read_symbols(path: &Path) -> Option<Symbols> {
    let data = map_file(path)?;
    let file = object::File::parse(&*data).ok()?;
    let mut found = Found::default();
    // CPython exports what is needed; the full symbol table, which can be large, is searched
    // only when the exported one lacks something.
    file.dynamic_symbols().for_each(|sym| found.take(&sym));
    if !found.complete() {
        file.symbols().for_each(|sym| found.take(&sym));
    }
    let Found { runtime, code_type, py_version, eval_frame } = found;
    let eval_frame_offset = eval_frame.and_then(|addr| {
        file.segments().find_map(|seg| {
            let (offset, size) = seg.file_range();
            (addr >= seg.address() && addr < seg.address() + size)
                .then(|| addr - seg.address() + offset)
        })
    });
    let first_load_vaddr = file.segments().map(|s| s.address()).min()? & !0xfff;
    Some(Symbols { runtime: runtime?, code_type, py_version, eval_frame_offset, first_load_vaddr })
}

/// `3.X` from a file name like `python3.11` or `libpython3.11.so.1.0`.
fn version_from_name(name: &str) -> Option<(u8, u8)> {
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, minor.parse().ok()?))
}

/// Finds CPython interpreters; remembers the symbols of each interpreter file it has parsed.
#[derive(Debug, Default)]
pub struct Detector {
    symbols: std::collections::HashMap<FileKey, Option<Symbols>>,
}

impl Detector {
    /// Looks at process `pid` (whose executable is `exe`) for a CPython interpreter.
    pub fn detect(&mut self, pid: u32, exe: &str) -> Detection {
        if pid == std::process::id() {
            return Detection::NotPython;
        }
        if self.symbols.len() > 1024 {
            self.symbols.clear();
        }
        detect(pid, exe, |candidate| {
            *self.symbols.entry(candidate.key).or_insert_with(|| {
                readable_file(pid, &candidate.path, candidate.key).and_then(|p| read_symbols(&p))
            })
        })
    }
}

fn detect(
    pid: u32,
    exe: &str,
    mut symbols_of: impl FnMut(&Candidate) -> Option<Symbols>,
) -> Detection {
    let candidates = candidates(pid, exe);
    for candidate in &candidates {
        let Some(symbols) = symbols_of(candidate) else { continue };
        let bias = candidate.base.wrapping_sub(symbols.first_load_vaddr);
        return match describe(pid, candidate, &symbols, bias) {
            Ok(Some(p)) => Detection::Python(Arc::new(p)),
            Ok(None) => Detection::NotReady,
            Err(reason) => Detection::Unsupported(reason),
        };
    }
    let libpython_mapped = candidates.iter().any(|c| c.linkage == Linkage::Shared);
    without_symbols(exe, libpython_mapped, || {
        readable_path(pid, Path::new(exe)).is_some_and(|p| needs_libpython(&p))
    })
}

/// What a process is when no file it maps holds `_PyRuntime`. A launcher linked against
/// libpython, sampled while the dynamic loader is still mapping libraries, is not ready yet:
/// calling it unsupported would cost it its Python frames for good.
fn without_symbols(
    exe: &str,
    libpython_mapped: bool,
    launcher_needs_libpython: impl FnOnce() -> bool,
) -> Detection {
    let exe_name = Path::new(exe).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !is_interpreter_name(exe_name) {
        return Detection::NotPython;
    }
    if !libpython_mapped && launcher_needs_libpython() {
        return Detection::NotReady;
    }
    Detection::Unsupported(format!("{exe}: no _PyRuntime symbol found"))
}

/// Whether the 64-bit ELF file at `path` lists a `libpython3.X` among the libraries it needs.
pub fn needs_libpython(path: &Path) -> bool {
    use object::{
        Endianness,
        elf::{DT_NEEDED, FileHeader64},
        read::elf::{Dyn as _, FileHeader as _},
    };
    let Some(data) = map_file(path) else { return false };
    let data = &*data;
    let Ok(header) = FileHeader64::<Endianness>::parse(data) else { return false };
    let Ok(endian) = header.endian() else { return false };
    let Ok(sections) = header.sections(endian, data) else { return false };
    let Ok(Some((dynamic, strings_index))) = sections.dynamic(endian, data) else { return false };
    let Ok(strings) = sections.strings(endian, data, strings_index) else { return false };
    dynamic.iter().any(|d| {
        d.tag32(endian) == Some(DT_NEEDED)
            && d.string(endian, strings).is_ok_and(|name| name.starts_with(b"libpython3."))
    })
}

fn describe(
    pid: u32,
    candidate: &Candidate,
    symbols: &Symbols,
    bias: u64,
) -> Result<Option<PythonProcess>, String> {
    let name = candidate.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let version = match symbols.py_version {
        Some(addr) => {
            let mut b = [0u8; 4];
            memory::read(pid, addr.wrapping_add(bias), &mut b)
                .map_err(|e| format!("reading Py_Version: {e}"))?;
            let v = u32::from_ne_bytes(b);
            ((v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8)
        }
        None => {
            let (major, minor) = version_from_name(name)
                .ok_or_else(|| format!("cannot tell the CPython version of {name}"))?;
            (major, minor, UNKNOWN_MICRO)
        }
    };
    let runtime = symbols.runtime.wrapping_add(bias);
    let (version, layout, layout_source) = if (version.0, version.1) >= (3, 13) {
        let (head, layout) = debug_offsets::read(pid, runtime).map_err(|e| e.to_string())?;
        let source = if head.free_threaded {
            "free-threaded, offsets from _Py_DebugOffsets"
        } else {
            "offsets from _Py_DebugOffsets"
        };
        (head.version(), layout, source)
    } else {
        let layout = layout::table(version.0, version.1).ok_or_else(|| {
            format!("CPython {}.{}.{} is not supported yet", version.0, version.1, version.2)
        })?;
        (version, layout, "offsets from table")
    };
    let code_type =
        symbols.code_type.ok_or_else(|| "no PyCode_Type symbol".to_owned())?.wrapping_add(bias);
    let interp = memory::read_u64(pid, runtime + u64::from(layout.runtime_interpreters_head))
        .map_err(|e| format!("reading _PyRuntime: {e}"))?;
    if interp == 0 {
        return Ok(None);
    }
    Ok(Some(PythonProcess {
        version,
        linkage: candidate.linkage,
        layout_source,
        layout,
        code_type,
        interp,
        interpreter_file: candidate.key,
        interpreter_path: candidate.path.clone(),
        eval_frame_offset: symbols.eval_frame_offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launcher_whose_libpython_is_not_mapped_yet_is_looked_at_again() {
        let exe = "/opt/python/bin/python3.13";
        assert!(matches!(without_symbols(exe, false, || true), Detection::NotReady));
        // Mapped, yet without the symbol: that interpreter cannot be walked.
        assert!(matches!(without_symbols(exe, true, || true), Detection::Unsupported(_)));
        assert!(matches!(without_symbols(exe, false, || false), Detection::Unsupported(_)));
        assert!(matches!(without_symbols("/usr/bin/bash", false, || true), Detection::NotPython));
    }

    #[test]
    fn a_program_without_libpython_does_not_need_it() {
        let own = std::env::current_exe().unwrap();
        assert!(!needs_libpython(&own));
        assert!(!needs_libpython(Path::new("/nonexistent/python3.13")));
    }

    #[test]
    fn interpreter_names() {
        for name in ["python", "python3", "python3.9", "python3.11", "python3.13t", "python3.11d"] {
            assert!(is_interpreter_name(name), "{name}");
        }
        for name in ["python-d26279dd3476c33a", "python3.", "pythonista", "python3-config", "py"] {
            assert!(!is_interpreter_name(name), "{name}");
        }
    }

    #[test]
    fn symbols_are_found_in_a_real_interpreter() {
        let Some(python) = ["/usr/bin/python3.11", "/usr/bin/python3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("skipped: no /usr/bin/python3 on this machine");
            return;
        };
        let python = python.canonicalize().unwrap();
        let symbols = read_symbols(&python).expect("_PyRuntime in the system interpreter");
        assert!(symbols.code_type.is_some() && symbols.eval_frame_offset.is_some());
        assert!(read_symbols(&std::env::current_exe().unwrap()).is_none());
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("python3.9"), Some((3, 9)));
        assert_eq!(version_from_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version_from_name("python3"), None);
    }
}
