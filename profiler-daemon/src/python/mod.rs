//! CPython support: finding interpreters, their layouts, and the code objects their frames
//! point to.
//!
//! Detection reads the process's maps and the interpreter's ELF symbols (`_PyRuntime`,
//! `PyCode_Type`, `Py_Version`) once per process. An interpreter whose version or layout is
//! not supported degrades to native-only stacks, and the reason is shown in `Status`.

pub mod code;
pub mod debug_offsets;
pub mod gil;
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
use profiler_common::python::PyProcess;

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
    /// The main interpreter's GIL, when it was found.
    pub gil: Option<gil::Gil>,
}

impl PythonProcess {
    /// `CPython 3.11.2`, or `CPython 3.9` when the micro version is unknown.
    pub fn short_name(&self) -> String {
        match self.version {
            (a, b, UNKNOWN_MICRO) => format!("CPython {a}.{b}"),
            (a, b, c) => format!("CPython {a}.{b}.{c}"),
        }
    }

    /// The kernel's `PY_PROCS` entry for this process, whose identity (start time and
    /// `execve` count, see `PyProcess::start_ns`) is `start_ns` and `exec_id`.
    pub fn kernel_entry(&self, start_ns: u64, exec_id: u32) -> PyProcess {
        let gil = self.gil.as_ref();
        PyProcess {
            interp: self.interp,
            offsets: self.layout.kernel,
            start_ns,
            exec_id,
            _pad: 0,
            gil_locked: gil.map_or(0, gil::Gil::locked),
            gil_holder: gil.map_or(0, gil::Gil::last_holder),
            gil_cond: gil.map_or(0, gil::Gil::cond),
            gil_enabled: gil.and_then(gil::Gil::enabled).unwrap_or(0),
            text_start: 0,
            text_end: 0,
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
            gil: None,
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
#[derive(Debug)]
pub enum Detection {
    /// Not a CPython process.
    NotPython,
    /// A CPython process with a supported layout.
    Python(Arc<PythonProcess>),
    /// A CPython process that is profiled natively only, and why.
    Unsupported(Unsupported),
    /// A CPython process whose interpreter is not initialized yet; look again later.
    NotReady,
}

impl Detection {
    /// Whether looking again soon may give another answer: the runtime was not initialized,
    /// or the process's memory could not be read. A process caught inside `execve` has its
    /// new executable but not yet all of its mappings, so a read of `_PyRuntime` fails.
    pub fn may_change(&self) -> bool {
        matches!(self, Detection::NotReady | Detection::Unsupported(Unsupported::Read { .. }))
    }

    /// The answer in a word, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Detection::NotPython => "not python",
            Detection::Python(_) => "python",
            Detection::Unsupported(_) => "unsupported",
            Detection::NotReady => "not ready",
        }
    }
}

/// Why a CPython process cannot have Python frames.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    /// Its memory could not be read.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Neither `Py_Version` nor the file name tells the version.
    #[error("cannot tell the CPython version of {0}")]
    UnknownVersion(String),
    /// A version without a layout table (before 3.13, which describes itself).
    #[error("CPython {0}.{1}.{2} is not supported yet")]
    Version(u8, u8, u8),
    /// 3.13 or later whose `_Py_DebugOffsets` cannot be used.
    #[error(transparent)]
    DebugOffsets(#[from] debug_offsets::DebugOffsetsError),
    /// The interpreter file has no `PyCode_Type` symbol.
    #[error("no PyCode_Type symbol")]
    NoCodeType,
    /// An interpreter executable in which no mapped file holds `_PyRuntime`.
    #[error("{0}: no _PyRuntime symbol found")]
    NoRuntime(String),
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
    symbols_in(&map_file(path)?)
}

/// Whether the ELF image `data` has the symbols detection needs (`_PyRuntime` and a loadable
/// segment). Interpreter files are untrusted input: any bytes give an answer, never a panic.
pub fn is_interpreter_image(data: &[u8]) -> bool {
    symbols_in(data).is_some()
}

fn symbols_in(data: &[u8]) -> Option<Symbols> {
    let file = object::File::parse(data).ok()?;
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
            let within = addr.checked_sub(seg.address()).filter(|&delta| delta < size)?;
            within.checked_add(offset)
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
    let mapped = Mapped {
        exe: candidates.iter().any(|c| c.linkage == Linkage::Static),
        libpython: candidates.iter().any(|c| c.linkage == Linkage::Shared),
    };
    without_symbols(exe, mapped, || {
        readable_path(pid, Path::new(exe)).is_some_and(|p| needs_libpython(&p))
    })
}

/// Which of an interpreter's files a process maps executable code from.
#[derive(Clone, Copy, Debug)]
struct Mapped {
    exe: bool,
    libpython: bool,
}

/// What a process is when no file it maps holds `_PyRuntime`. A process caught inside
/// `execve` (its new executable named, not yet mapped) and a launcher linked against libpython,
/// sampled while the dynamic loader is still mapping libraries, are not ready yet: calling
/// them unsupported would cost them their Python frames for good.
fn without_symbols(
    exe: &str,
    mapped: Mapped,
    launcher_needs_libpython: impl FnOnce() -> bool,
) -> Detection {
    let exe_name = Path::new(exe).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !is_interpreter_name(exe_name) {
        return Detection::NotPython;
    }
    if !mapped.exe {
        return Detection::NotReady;
    }
    if !mapped.libpython && launcher_needs_libpython() {
        return Detection::NotReady;
    }
    Detection::Unsupported(Unsupported::NoRuntime(exe.to_owned()))
}

/// Whether the 64-bit ELF file at `path` lists a `libpython3.X` among the libraries it needs.
pub fn needs_libpython(path: &Path) -> bool {
    map_file(path).is_some_and(|data| image_needs_libpython(&data))
}

/// Whether the 64-bit ELF image `data` lists a `libpython3.X` among the libraries it needs.
pub fn image_needs_libpython(data: &[u8]) -> bool {
    use object::{
        Endianness,
        elf::{DT_NEEDED, FileHeader64},
        read::elf::{Dyn as _, FileHeader as _},
    };
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
) -> Result<Option<PythonProcess>, Unsupported> {
    let name = candidate.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let version = match symbols.py_version {
        Some(addr) => {
            let mut b = [0u8; 4];
            memory::read(pid, addr.wrapping_add(bias), &mut b)
                .map_err(|source| Unsupported::Read { what: "Py_Version", source })?;
            let v = u32::from_ne_bytes(b);
            ((v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8)
        }
        None => {
            let (major, minor) = version_from_name(name)
                .ok_or_else(|| Unsupported::UnknownVersion(name.to_owned()))?;
            (major, minor, UNKNOWN_MICRO)
        }
    };
    let runtime = symbols.runtime.wrapping_add(bias);
    let mut free_threaded = false;
    let (version, layout, layout_source) = if (version.0, version.1) >= (3, 13) {
        let (head, layout) = debug_offsets::read(pid, runtime)?;
        free_threaded = head.free_threaded;
        let source = if head.free_threaded {
            "free-threaded, offsets from _Py_DebugOffsets"
        } else {
            "offsets from _Py_DebugOffsets"
        };
        (head.version(), layout, source)
    } else {
        let layout = layout::table(version.0, version.1)
            .ok_or(Unsupported::Version(version.0, version.1, version.2))?;
        (version, layout, "offsets from table")
    };
    let code_type = symbols.code_type.ok_or(Unsupported::NoCodeType)?.wrapping_add(bias);
    // `interpreters.main`, the pointer after `interpreters.head` in every version: `head` is
    // the newest interpreter, which is a subinterpreter once the program has made one.
    let main = runtime + u64::from(layout.runtime_interpreters_head) + 8;
    let interp = memory::read_u64(pid, main)
        .map_err(|source| Unsupported::Read { what: "_PyRuntime", source })?;
    if interp == 0 {
        return Ok(None);
    }
    // Without it the process is still profiled; only the GIL mode lacks its data. An
    // interpreter still being made has no GIL yet: look again (its PY_PROCS entry is written
    // once and would keep no GIL).
    let gil = match gil::find(pid, layout.gil, runtime, interp, free_threaded) {
        Ok(gil) => Some(gil),
        Err(gil::GilError::NotMade) => return Ok(None),
        Err(e) => {
            tracing::info!(pid, error = %e, "the GIL of this CPython was not found");
            None
        }
    };
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
        gil,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interpreter_whose_segment_ends_past_the_address_space_is_read_without_overflow() {
        // Found by the interpreter_elf fuzz target: a program with `_PyRuntime` and
        // `_PyEval_EvalFrameDefault` whose loadable segment's address plus size overflows.
        // Copied out of the binary: ELF parsing needs its headers aligned, as a mapped file is.
        let data =
            include_bytes!("../../tests/fixtures/interpreter_elf_segment_overflow.elf").to_vec();
        assert!(is_interpreter_image(&data), "it has _PyRuntime and a loadable segment");
    }

    #[test]
    fn the_kernel_entry_carries_the_identity_and_the_gil_fields() {
        let mut p = PythonProcess::for_tests(None);
        p.interp = 0x5000;
        let entry = p.kernel_entry(42, 3);
        assert_eq!((entry.interp, entry.start_ns, entry.exec_id), (0x5000, 42, 3));
        assert_eq!(entry.offsets, p.layout.kernel);
        // No GIL found: every GIL address is 0, which the kernel reads as unknown.
        assert_eq!(
            (entry.gil_locked, entry.gil_holder, entry.gil_cond, entry.gil_enabled),
            (0, 0, 0, 0)
        );
        p.gil = Some(gil::Gil { addr: 0x1000, free_threaded: false });
        let entry = p.kernel_entry(42, 3);
        assert_eq!(
            (entry.gil_locked, entry.gil_holder, entry.gil_cond, entry.gil_enabled),
            (0x1010, 0x1008, 0x1020, 0)
        );
        p.gil = Some(gil::Gil { addr: 0x1000, free_threaded: true });
        let entry = p.kernel_entry(42, 3);
        assert_eq!(
            (entry.gil_locked, entry.gil_holder, entry.gil_cond, entry.gil_enabled),
            (0x1018, 0x1010, 0x1028, 0x1000)
        );
    }

    #[test]
    fn an_interpreter_caught_before_its_gil_is_made_is_looked_at_again() {
        if crate::host::skip_under_qemu_user(
            "an_interpreter_caught_before_its_gil_is_made_is_looked_at_again",
            "qemu-user does not emulate process_vm_readv",
        ) {
            return;
        }
        // A 3.12 runtime in this process: `interpreters.main` (head + 8, head at 40) points to
        // an interpreter whose `ceval.gil` (at 384) is still NULL, as between
        // `_PyInterpreterState_New` and the GIL's creation.
        let version = 0x030c_01f0_u32;
        let mut runtime = vec![0u64; 8];
        let mut interp = vec![0u64; 64];
        let gil_state = vec![0u64; 16];
        runtime[48 / 8] = interp.as_ptr() as u64;
        let candidate = Candidate {
            path: PathBuf::from("/usr/bin/python3.12"),
            key: FileKey { dev: 1, inode: 2 },
            linkage: Linkage::Static,
            base: 0,
        };
        let symbols = Symbols {
            runtime: runtime.as_ptr() as u64,
            code_type: Some(0x1000),
            py_version: Some(&raw const version as u64),
            eval_frame_offset: None,
            first_load_vaddr: 0,
        };
        let pid = std::process::id();
        assert!(matches!(describe(pid, &candidate, &symbols, 0), Ok(None)));
        interp[384 / 8] = gil_state.as_ptr() as u64;
        let found = describe(pid, &candidate, &symbols, 0).unwrap().expect("an interpreter");
        assert_eq!(found.gil.map(|g| g.addr), Some(gil_state.as_ptr() as u64));
        std::hint::black_box((&runtime, &interp, &gil_state, version));
    }

    #[test]
    fn a_launcher_whose_libpython_is_not_mapped_yet_is_looked_at_again() {
        let exe = "/opt/python/bin/python3.13";
        let launcher = Mapped { exe: true, libpython: false };
        assert!(matches!(without_symbols(exe, launcher, || true), Detection::NotReady));
        // Mapped, yet without the symbol: that interpreter cannot be walked.
        let both = Mapped { exe: true, libpython: true };
        assert!(matches!(without_symbols(exe, both, || true), Detection::Unsupported(_)));
        assert!(matches!(without_symbols(exe, launcher, || false), Detection::Unsupported(_)));
        let bash = "/usr/bin/bash";
        assert!(matches!(without_symbols(bash, launcher, || true), Detection::NotPython));
    }

    #[test]
    fn a_process_inside_execve_is_looked_at_again() {
        // `/proc/PID/exe` names the new program before its segments are mapped.
        let inside = Mapped { exe: false, libpython: false };
        let static_exe = "/usr/bin/python3.11";
        assert!(matches!(without_symbols(static_exe, inside, || false), Detection::NotReady));
        assert!(matches!(without_symbols("/usr/bin/bash", inside, || false), Detection::NotPython));
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
