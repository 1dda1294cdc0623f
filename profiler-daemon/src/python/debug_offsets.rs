//! Layouts read from the interpreter itself: CPython 3.13 and later describe their own structs
//! in `_Py_DebugOffsets`, the first member of `_PyRuntime` (cookie `xdebugpy`).
//!
//! Only the head of that table (cookie, `version`, `free_threaded`) is stable. Its body changes
//! between minor versions, and has changed between pre-releases of one: 3.14 added members to
//! the interpreter state and frame groups, 3.15 grew the thread state group from 9 to 16
//! members and inserted a group after it. So the body is read with a parse table per minor
//! version, chosen by `version`, and every group the walk uses has its `size` member checked
//! against the offsets read from it. A version without a table, or whose table does not check
//! out, is refused: offsets are never guessed.

use profiler_common::python::{FRAME_FIELDS_END, FrameModel, PyOffsets};

use super::{
    layout::{CodeLayout, GilPlace, InstrModel, Layout, ObjectLayout},
    linetable::LineTableFormat,
    memory,
};

/// The cookie at the start of `_Py_DebugOffsets`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Bytes of the head: cookie, `version`, `free_threaded`.
const HEAD_LEN: usize = 24;

/// No group describes a struct this large; a bigger `size` means the table was misread.
const MAX_STRUCT_SIZE: u64 = 1 << 24;

/// Where each needed value sits inside `_Py_DebugOffsets`, for one minor version. Every group
/// starts with its `size` member; the positions below are absolute.
#[derive(Clone, Copy, Debug)]
struct Positions {
    /// `sizeof(_Py_DebugOffsets)`.
    size: usize,
    /// The oldest `PY_VERSION_HEX` with this arrangement: the first release candidate. Alphas
    /// and betas before it may differ and are refused.
    since: u64,
    runtime_state: u32,
    interpreters_head: u32,
    interpreter_state: u32,
    threads_head: u32,
    /// `interpreter_state.ceval_gil`: where the interpreter's pointer to its GIL is.
    ceval_gil: u32,
    thread_state: u32,
    tstate_next: u32,
    tstate_current_frame: u32,
    tstate_native_thread_id: u32,
    interpreter_frame: u32,
    frame_previous: u32,
    frame_executable: u32,
    frame_instr_ptr: u32,
    frame_owner: u32,
    code_object: u32,
    code_filename: u32,
    code_name: u32,
    code_qualname: u32,
    code_linetable: u32,
    code_firstlineno: u32,
    code_adaptive: u32,
    pyobject: u32,
    pyobject_ob_type: u32,
    bytes_object: u32,
    bytes_size: u32,
    bytes_sval: u32,
    unicode_object: u32,
    unicode_state: u32,
    unicode_length: u32,
    unicode_ascii_size: u32,
}

/// `struct _Py_DebugOffsets` of 3.13: 15 groups after the head.
const V3_13: Positions = Positions {
    size: 584,
    since: 0x030d_00c1,
    runtime_state: 24,
    interpreters_head: 40,
    interpreter_state: 48,
    threads_head: 72,
    ceval_gil: 112,
    thread_state: 152,
    tstate_next: 168,
    tstate_current_frame: 184,
    tstate_native_thread_id: 200,
    interpreter_frame: 224,
    frame_previous: 232,
    frame_executable: 240,
    frame_instr_ptr: 248,
    frame_owner: 264,
    code_object: 272,
    code_filename: 280,
    code_name: 288,
    code_qualname: 296,
    code_linetable: 304,
    code_firstlineno: 312,
    code_adaptive: 344,
    pyobject: 352,
    pyobject_ob_type: 360,
    bytes_object: 512,
    bytes_size: 520,
    bytes_sval: 528,
    unicode_object: 536,
    unicode_state: 544,
    unicode_length: 552,
    unicode_ascii_size: 560,
};

/// `struct _Py_DebugOffsets` of 3.14: the interpreter state group has 16 members, the frame
/// group gained `stackpointer` and `tlbc_index`, the code group `co_tlbc`, and a set group
/// was added.
const V3_14: Positions = Positions {
    size: 760,
    since: 0x030e_00c1,
    runtime_state: 24,
    interpreters_head: 40,
    interpreter_state: 48,
    threads_head: 72,
    ceval_gil: 120,
    thread_state: 176,
    tstate_next: 192,
    tstate_current_frame: 208,
    tstate_native_thread_id: 224,
    interpreter_frame: 248,
    frame_previous: 256,
    frame_executable: 264,
    frame_instr_ptr: 272,
    frame_owner: 288,
    code_object: 312,
    code_filename: 320,
    code_name: 328,
    code_qualname: 336,
    code_linetable: 344,
    code_firstlineno: 352,
    code_adaptive: 384,
    pyobject: 400,
    pyobject_ob_type: 408,
    bytes_object: 592,
    bytes_size: 600,
    bytes_sval: 608,
    unicode_object: 616,
    unicode_state: 624,
    unicode_length: 632,
    unicode_ascii_size: 640,
};

/// `struct _Py_DebugOffsets` of 3.15: the thread state group has 16 members (`base_frame`,
/// `last_profiled_frame`, ... before `thread_id`), an exception stack item group follows it,
/// and the type group grew.
const V3_15: Positions = Positions {
    size: 888,
    since: 0x030f_00c1,
    runtime_state: 24,
    interpreters_head: 40,
    interpreter_state: 48,
    threads_head: 72,
    ceval_gil: 120,
    thread_state: 176,
    tstate_next: 192,
    tstate_current_frame: 208,
    tstate_native_thread_id: 248,
    interpreter_frame: 312,
    frame_previous: 320,
    frame_executable: 328,
    frame_instr_ptr: 336,
    frame_owner: 352,
    code_object: 376,
    code_filename: 384,
    code_name: 392,
    code_qualname: 400,
    code_linetable: 408,
    code_firstlineno: 416,
    code_adaptive: 448,
    pyobject: 464,
    pyobject_ob_type: 472,
    bytes_object: 688,
    bytes_size: 696,
    bytes_sval: 704,
    unicode_object: 712,
    unicode_state: 720,
    unicode_length: 728,
    unicode_ascii_size: 736,
};

/// The parse tables, by minor version.
const TABLES: [(u8, Positions); 3] = [(13, V3_13), (14, V3_14), (15, V3_15)];

/// Whether a parse table exists for the `_Py_DebugOffsets` of CPython `major.minor`.
pub fn knows(major: u8, minor: u8) -> bool {
    major == 3 && TABLES.iter().any(|(m, _)| *m == minor)
}

/// What the head of `_Py_DebugOffsets` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// `PY_VERSION_HEX`.
    pub version_hex: u64,
    /// Whether the interpreter was built with `--disable-gil`.
    pub free_threaded: bool,
}

impl Head {
    /// (major, minor, micro).
    pub fn version(&self) -> (u8, u8, u8) {
        let h = self.version_hex;
        ((h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8)
    }

    /// `CPython 3.15.2`, `CPython 3.16.0a2`, with a `t` suffix on the version of a
    /// free-threaded build (`CPython 3.13.5t`).
    pub fn describe(&self) -> String {
        let (a, b, c) = self.version();
        let serial = self.version_hex & 0xf;
        let level = match (self.version_hex >> 4) & 0xf {
            0xa => format!("a{serial}"),
            0xb => format!("b{serial}"),
            0xc => format!("rc{serial}"),
            _ => String::new(),
        };
        let t = if self.free_threaded { "t" } else { "" };
        format!("CPython {a}.{b}.{c}{level}{t}")
    }
}

/// Why a `_Py_DebugOffsets` table was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DebugOffsetsError {
    /// The table could not be read.
    #[error("reading _Py_DebugOffsets: {0}")]
    Read(String),
    /// `_PyRuntime` does not start with the cookie.
    #[error("_PyRuntime does not start with the _Py_DebugOffsets cookie")]
    NoCookie,
    /// No parse table for this version.
    #[error(
        "{0}: debug offsets layout not known to this profilerd {v}",
        v = env!("CARGO_PKG_VERSION")
    )]
    UnknownLayout(String),
    /// A parse table exists, but the values read with it do not check out.
    #[error(
        "{version}: debug offsets do not match the {minor} layout known to this profilerd {v} ({detail})",
        v = env!("CARGO_PKG_VERSION")
    )]
    Mismatch {
        /// The interpreter, as [`Head::describe`] puts it.
        version: String,
        /// The table tried, `3.X`.
        minor: String,
        /// What did not check out.
        detail: String,
    },
    /// A free-threaded build this profiler cannot walk.
    #[error("{0}")]
    FreeThreaded(String),
}

/// The layout described by the `_Py_DebugOffsets` at `runtime` in process `pid`, with the
/// head that announces its version and build.
pub fn read(pid: u32, runtime: u64) -> Result<(Head, Layout), DebugOffsetsError> {
    let io = |e: std::io::Error| DebugOffsetsError::Read(e.to_string());
    let head = memory::read_vec(pid, runtime, HEAD_LEN).map_err(io)?;
    let (head, positions) = parse_head(&head)?;
    let bytes = memory::read_vec(pid, runtime, positions.size).map_err(io)?;
    let layout = from_bytes(&bytes, &head, &positions)?;
    Ok((head, layout))
}

/// The layout described by the `_Py_DebugOffsets` table at the start of `bytes`, with its
/// head. The table comes from the profiled process's memory: any bytes give a layout or an
/// error, never a panic.
pub fn parse(bytes: &[u8]) -> Result<(Head, Layout), DebugOffsetsError> {
    let (head, positions) = parse_head(bytes)?;
    let layout = from_bytes(bytes, &head, &positions)?;
    Ok((head, layout))
}

/// Reads the head and picks the parse table for its version.
fn parse_head(bytes: &[u8]) -> Result<(Head, Positions), DebugOffsetsError> {
    if bytes.get(..8) != Some(&COOKIE[..]) {
        return Err(DebugOffsetsError::NoCookie);
    }
    let head = Head {
        version_hex: memory::u64_at(bytes, 8),
        free_threaded: memory::u64_at(bytes, 16) != 0,
    };
    let (major, minor, _) = head.version();
    let positions = TABLES
        .iter()
        .find(|(m, p)| major == 3 && *m == minor && head.version_hex >= p.since)
        .map(|(_, p)| *p)
        .ok_or_else(|| DebugOffsetsError::UnknownLayout(head.describe()))?;
    if head.free_threaded && minor >= 14 {
        // From 3.14 a free-threaded thread may run its own copy of the bytecode (`co_tlbc`,
        // chosen by the frame's `tlbc_index`), so `instr_ptr` cannot be turned into a line
        // from the code object alone.
        return Err(DebugOffsetsError::FreeThreaded(format!(
            "{}: free-threaded 3.14+ runs per-thread bytecode copies (co_tlbc), which this profilerd does not read",
            head.describe()
        )));
    }
    Ok((head, positions))
}

fn from_bytes(bytes: &[u8], head: &Head, p: &Positions) -> Result<Layout, DebugOffsetsError> {
    let mismatch = |detail: String| DebugOffsetsError::Mismatch {
        version: head.describe(),
        minor: format!("3.{}", head.version().1),
        detail,
    };
    if bytes.len() < p.size {
        return Err(mismatch(format!("{} bytes, the table has {}", bytes.len(), p.size)));
    }
    let get = |at: u32| memory::u64_at(bytes, at);
    // A group's members are offsets into the struct whose size the group starts with: a table
    // that moved puts other numbers there, which this catches.
    let groups: [(&str, u32, &[u32]); 8] = [
        ("runtime_state", p.runtime_state, &[p.interpreters_head]),
        ("interpreter_state", p.interpreter_state, &[p.threads_head, p.ceval_gil]),
        (
            "thread_state",
            p.thread_state,
            &[p.tstate_next, p.tstate_current_frame, p.tstate_native_thread_id],
        ),
        (
            "interpreter_frame",
            p.interpreter_frame,
            &[p.frame_previous, p.frame_executable, p.frame_instr_ptr, p.frame_owner],
        ),
        (
            "code_object",
            p.code_object,
            &[
                p.code_filename,
                p.code_name,
                p.code_qualname,
                p.code_linetable,
                p.code_firstlineno,
                p.code_adaptive,
            ],
        ),
        ("pyobject", p.pyobject, &[p.pyobject_ob_type]),
        ("bytes_object", p.bytes_object, &[p.bytes_size, p.bytes_sval]),
        ("unicode_object", p.unicode_object, &[p.unicode_state, p.unicode_length]),
    ];
    for (name, size_at, members) in groups {
        let size = get(size_at);
        if size == 0 || size > MAX_STRUCT_SIZE {
            return Err(mismatch(format!("{name}.size is {size}")));
        }
        // `co_code_adaptive` and `ob_sval` are flexible arrays, and may start at the size.
        if let Some(&at) = members.iter().find(|&&at| get(at) > size) {
            return Err(mismatch(format!("{name}: a member at {} of {size} bytes", get(at))));
        }
    }
    let get32 = |at: u32| u32::try_from(get(at)).expect("checked against a group size");
    let frame_fields = [
        get32(p.frame_previous),
        get32(p.frame_executable),
        get32(p.frame_instr_ptr),
        get32(p.frame_owner),
    ];
    if frame_fields.iter().any(|&f| f >= FRAME_FIELDS_END) {
        return Err(mismatch(format!(
            "frame fields {frame_fields:?} are beyond what the kernel reads"
        )));
    }
    let code = CodeLayout {
        filename: get32(p.code_filename),
        name: get32(p.code_name),
        qualname: Some(get32(p.code_qualname)),
        firstlineno: get32(p.code_firstlineno),
        linetable: get32(p.code_linetable),
        code_adaptive: Some(get32(p.code_adaptive)),
        header_len: get32(p.code_adaptive),
    };
    let ob_type = get32(p.pyobject_ob_type);
    if [code.filename, code.name, code.firstlineno, code.linetable]
        .iter()
        .any(|&f| f + 8 > code.header_len || f <= ob_type)
    {
        return Err(mismatch("code object members overlap".into()));
    }
    // Not a member of a group: checked against the unicode object's size before it is used.
    let ascii_size = get(p.unicode_ascii_size);
    if ascii_size <= get(p.unicode_length) || ascii_size > get(p.unicode_object) {
        return Err(mismatch(format!("sizeof(PyASCIIObject) is {ascii_size}")));
    }
    let ascii_data = get32(p.unicode_ascii_size);
    let minor = head.version().1;
    Ok(Layout {
        kernel: PyOffsets {
            frame_model: FrameModel::CurrentFrame as u32,
            interp_threads_head: get32(p.threads_head),
            tstate_next: get32(p.tstate_next),
            tstate_thread_id: get32(p.tstate_native_thread_id),
            match_pthread: 0,
            tstate_frame: get32(p.tstate_current_frame),
            cframe_current_frame: 0,
            frame_code: frame_fields[1],
            frame_back: frame_fields[0],
            frame_instr: frame_fields[2],
            frame_owner: frame_fields[3],
            _pad: 0,
            // From 3.14 `f_executable` is a tagged `_PyStackRef`; objects are 8-aligned, so
            // clearing the two low bits is exact.
            code_tag_bits: if minor >= 14 { 3 } else { 0 },
        },
        runtime_interpreters_head: get32(p.interpreters_head),
        code,
        objects: ObjectLayout {
            ob_type,
            unicode_length: get32(p.unicode_length),
            unicode_state: get32(p.unicode_state),
            ascii_data,
            // PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
            compact_data: ascii_data + 16,
            bytes_size: get32(p.bytes_size),
            bytes_data: get32(p.bytes_sval),
        },
        linetable: LineTableFormat::Locations311,
        instr: InstrModel::InstrPtr,
        // 3.13: FRAME_OWNED_BY_CSTACK = 3; 3.14 and 3.15: INTERPRETER = 3 and CSTACK = 4.
        skip_owner_from: Some(3),
        gil: GilPlace::InterpPointer(get32(p.ceval_gil)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as `positions` places it, holding `values` (absolute position, value).
    fn table(
        positions: &Positions,
        version: u64,
        free_threaded: u64,
        values: &[(u32, u64)],
    ) -> Vec<u8> {
        let mut b = vec![0u8; positions.size];
        let mut put =
            |at: u32, v: u64| b[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes());
        put(8, version);
        put(16, free_threaded);
        for &(at, v) in values {
            put(at, v);
        }
        b[..8].copy_from_slice(COOKIE);
        b
    }

    /// The values of CPython 3.13.5's table.
    fn sample_313() -> Vec<u8> {
        table(
            &V3_13,
            0x030d_05f0,
            0,
            &[
                (24, 1_000_000),
                (40, 632),
                (48, 100_000),
                (72, 7344),
                (152, 400),
                (168, 8),
                (184, 72),
                (200, 160),
                (224, 80),
                (232, 8),
                (240, 0),
                (248, 56),
                (264, 70),
                (272, 208),
                (280, 112),
                (288, 120),
                (296, 128),
                (304, 136),
                (312, 68),
                (344, 200),
                (352, 16),
                (360, 8),
                (512, 40),
                (520, 16),
                (528, 32),
                (536, 64),
                (544, 32),
                (552, 16),
                (560, 40),
            ],
        )
    }

    /// The head and body of CPython 3.15.2's table, as dumped from Debian's
    /// `python3.15-minimal` 3.15.2-1 (`_PyRuntime` in its `.data`), up to the unicode group.
    fn sample_315() -> Vec<u8> {
        let values: [u64; 90] = [
            346568, 912, 936, 226240, 7272, 7264, 7336, 7352, 7400, 7592, 7576, 7584, 16, 7736, 0,
            7752, 7744, 7944, 0, 888, 0, 8, 16, 72, 80, 88, 96, 176, 184, 256, 32, 36, 40, 136,
            288, 0, 88, 8, 0, 56, 80, 74, 64, 0, 216, 112, 120, 128, 136, 68, 52, 96, 104, 208, 0,
            16, 8, 424, 24, 88, 168, 32, 288, 944, 888, 40, 32, 16, 40, 24, 16, 200, 24, 40, 32,
            48, 32, 40, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32, 16, 40,
        ];
        let at: Vec<(u32, u64)> =
            values.iter().enumerate().map(|(i, &v)| (24 + 8 * i as u32, v)).collect();
        table(&V3_15, 0x030f_02f0, 0, &at)
    }

    fn layout_of(bytes: &[u8]) -> Result<Layout, DebugOffsetsError> {
        let (head, positions) = parse_head(bytes)?;
        from_bytes(bytes, &head, &positions)
    }

    #[test]
    fn a_313_table_becomes_a_layout() {
        let layout = layout_of(&sample_313()).unwrap();
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!((layout.kernel.interp_threads_head, layout.kernel.tstate_frame), (7344, 72));
        assert_eq!(layout.kernel.tstate_thread_id, 160);
        assert_eq!(
            (layout.kernel.frame_back, layout.kernel.frame_instr, layout.kernel.frame_owner),
            (8, 56, 70)
        );
        assert_eq!(layout.code.code_adaptive, Some(200));
        assert_eq!((layout.objects.ascii_data, layout.objects.compact_data), (40, 56));
        assert_eq!(layout.kernel.code_tag_bits, 0);
    }

    #[test]
    fn the_315_table_of_debians_build_becomes_a_layout() {
        let layout = layout_of(&sample_315()).unwrap();
        assert_eq!(layout.runtime_interpreters_head, 936);
        assert_eq!(layout.kernel.interp_threads_head, 7336);
        // native_thread_id, not thread_id (176, a pthread_t) nor base_frame (80).
        assert_eq!((layout.kernel.tstate_frame, layout.kernel.tstate_thread_id), (72, 184));
        assert_eq!(
            (layout.kernel.frame_back, layout.kernel.frame_code, layout.kernel.frame_instr),
            (8, 0, 56)
        );
        assert_eq!(layout.kernel.frame_owner, 74);
        assert_eq!((layout.code.filename, layout.code.qualname), (112, Some(128)));
        assert_eq!((layout.code.firstlineno, layout.code.code_adaptive), (68, Some(208)));
        assert_eq!((layout.objects.bytes_size, layout.objects.bytes_data), (16, 32));
        assert_eq!((layout.objects.unicode_state, layout.objects.ascii_data), (32, 40));
        assert_eq!(layout.kernel.code_tag_bits, 3);
    }

    #[test]
    fn an_ascii_object_size_beyond_u32_is_refused_not_a_panic() {
        // Found by the debug_offsets fuzz target: the one size read as u32 that no group checks.
        let mut bytes = sample_313();
        let at = V3_13.unicode_ascii_size as usize;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_ne_bytes());
        let err = parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("sizeof(PyASCIIObject)"), "{err}");
    }

    #[test]
    fn the_315_table_read_as_314_is_refused() {
        // A 3.15 pre-release that still said 3.14's layout would be read with the 3.14 table.
        let mut bytes = sample_315();
        bytes[8..16].copy_from_slice(&0x030e_0af0u64.to_ne_bytes());
        let err = layout_of(&bytes[..V3_14.size]).unwrap_err();
        assert!(matches!(err, DebugOffsetsError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("do not match the 3.14 layout"), "{err}");
    }

    #[test]
    fn an_unknown_version_is_refused_by_name() {
        let bytes = table(&V3_15, 0x0310_00a2, 0, &[]);
        let err = layout_of(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "CPython 3.16.0a2: debug offsets layout not known to this profilerd {}",
                env!("CARGO_PKG_VERSION")
            )
        );
        // A 3.15 beta is older than the layout's first release candidate.
        let bytes = table(&V3_15, 0x030f_00b3, 0, &[]);
        assert!(layout_of(&bytes).unwrap_err().to_string().starts_with("CPython 3.15.0b3: "));
    }

    #[test]
    fn a_moved_group_is_refused() {
        // A group inserted before the thread state group shifts it by 16 bytes: its size and
        // members land where the table does not expect them.
        let good = sample_315();
        let mut moved = good.clone();
        moved.splice(176..176, [0u8; 16]);
        moved.truncate(V3_15.size);
        let err = layout_of(&moved).unwrap_err();
        assert!(err.to_string().contains("thread_state"), "{err}");
        // A group whose size says a member is outside it.
        let mut bytes = good;
        bytes[376..384].copy_from_slice(&64u64.to_ne_bytes());
        let err = layout_of(&bytes).unwrap_err();
        assert!(err.to_string().contains("code_object: a member at"), "{err}");
    }

    #[test]
    fn implausible_tables_are_refused() {
        // instr_ptr far into a (large) frame, where the kernel's frame chunk does not reach.
        let mut bytes = sample_313();
        bytes[224..232].copy_from_slice(&256u64.to_ne_bytes());
        bytes[248..256].copy_from_slice(&200u64.to_ne_bytes());
        assert!(
            layout_of(&bytes).unwrap_err().to_string().contains("beyond what the kernel reads")
        );
        let mut bytes = sample_313();
        bytes[..8].copy_from_slice(b"xdebugpz");
        assert_eq!(layout_of(&bytes).unwrap_err(), DebugOffsetsError::NoCookie);
    }

    /// The table of the free-threaded CPython 3.13.5 that `.ci/build-pythons 3.13t` builds from
    /// trixie's source (`--disable-gil`): a 32-byte object header.
    fn sample_313t() -> Vec<u8> {
        let values: [u64; 70] = [
            328320, 608, 632, 215616, 7272, 7264, 7344, 7400, 7664, 7648, 7656, 16, 7760, 0, 7784,
            7776, 304, 0, 8, 16, 72, 152, 160, 232, 32, 80, 8, 0, 56, 72, 70, 224, 128, 136, 144,
            152, 84, 68, 112, 120, 216, 32, 24, 432, 40, 104, 184, 48, 40, 32, 56, 40, 32, 64, 48,
            56, 40, 32, 48, 32, 40, 56, 32, 48, 80, 48, 32, 56, 248, 200,
        ];
        let at: Vec<(u32, u64)> =
            values.iter().enumerate().map(|(i, &v)| (24 + 8 * i as u32, v)).collect();
        table(&V3_13, 0x030d_05f0, 1, &at)
    }

    #[test]
    fn free_threaded_313_uses_its_object_header() {
        let layout = layout_of(&sample_313t()).unwrap();
        assert_eq!(layout.objects.ob_type, 24);
        assert_eq!((layout.code.filename, layout.code.qualname), (128, Some(144)));
        assert_eq!((layout.objects.unicode_length, layout.objects.unicode_state), (32, 48));
        assert_eq!((layout.objects.ascii_data, layout.objects.bytes_data), (56, 48));
        // 3.14t is refused, naming what is missing.
        let mut bytes = sample_315();
        bytes[16..24].copy_from_slice(&1u64.to_ne_bytes());
        let err = layout_of(&bytes).unwrap_err();
        assert!(err.to_string().starts_with("CPython 3.15.2t: free-threaded 3.14+"), "{err}");
        assert!(err.to_string().contains("co_tlbc"), "{err}");
    }

    #[test]
    fn version_names() {
        let head = |h, t| Head { version_hex: h, free_threaded: t }.describe();
        assert_eq!(head(0x030e_0af0, false), "CPython 3.14.10");
        assert_eq!(head(0x030d_05f0, true), "CPython 3.13.5t");
        assert_eq!(head(0x030f_00c1, false), "CPython 3.15.0rc1");
    }
}
