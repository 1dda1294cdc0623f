//! Layouts read from the interpreter itself: CPython 3.13 and later describe their own structs
//! in `_Py_DebugOffsets`, the first member of `_PyRuntime` (cookie `xdebugpy`).
//!
//! Only the position of each value inside `_Py_DebugOffsets` is known here, per layout of that
//! struct; the offsets themselves come from the process. A future version that keeps the 3.14
//! arrangement works without a code change.

use profiler_common::python::{FRAME_FIELDS_END, FrameModel, PyOffsets};

use super::{
    layout::{CodeLayout, InstrModel, Layout, ObjectLayout},
    linetable::LineTableFormat,
    memory,
};

/// The cookie at the start of `_Py_DebugOffsets`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Where each needed value sits inside `_Py_DebugOffsets`.
#[derive(Clone, Copy, Debug)]
struct Positions {
    size: usize,
    interpreters_head: u32,
    threads_head: u32,
    tstate_next: u32,
    tstate_current_frame: u32,
    tstate_native_thread_id: u32,
    frame_previous: u32,
    frame_executable: u32,
    frame_instr_ptr: u32,
    frame_owner: u32,
    code_size: u32,
    code_filename: u32,
    code_name: u32,
    code_qualname: u32,
    code_linetable: u32,
    code_firstlineno: u32,
    code_adaptive: u32,
    bytes_size: u32,
    bytes_sval: u32,
    unicode_state: u32,
    unicode_length: u32,
    unicode_ascii_size: u32,
}

/// `struct _Py_DebugOffsets` of 3.13.
const V3_13: Positions = Positions {
    size: 584,
    interpreters_head: 40,
    threads_head: 72,
    tstate_next: 168,
    tstate_current_frame: 184,
    tstate_native_thread_id: 200,
    frame_previous: 232,
    frame_executable: 240,
    frame_instr_ptr: 248,
    frame_owner: 264,
    code_size: 272,
    code_filename: 280,
    code_name: 288,
    code_qualname: 296,
    code_linetable: 304,
    code_firstlineno: 312,
    code_adaptive: 344,
    bytes_size: 520,
    bytes_sval: 528,
    unicode_state: 544,
    unicode_length: 552,
    unicode_ascii_size: 560,
};

/// `struct _Py_DebugOffsets` of 3.14 (new members moved everything after the interpreter state).
const V3_14: Positions = Positions {
    size: 760,
    interpreters_head: 40,
    threads_head: 72,
    tstate_next: 192,
    tstate_current_frame: 208,
    tstate_native_thread_id: 224,
    frame_previous: 256,
    frame_executable: 264,
    frame_instr_ptr: 272,
    frame_owner: 288,
    code_size: 312,
    code_filename: 320,
    code_name: 328,
    code_qualname: 336,
    code_linetable: 344,
    code_firstlineno: 352,
    code_adaptive: 384,
    bytes_size: 600,
    bytes_sval: 608,
    unicode_state: 624,
    unicode_length: 632,
    unicode_ascii_size: 640,
};

/// The layout described by the `_Py_DebugOffsets` at `runtime` in process `pid`, with the
/// version it announces.
pub fn read(pid: u32, runtime: u64) -> Result<((u8, u8, u8), Layout), String> {
    let head =
        memory::read_vec(pid, runtime, 24).map_err(|e| format!("reading _Py_DebugOffsets: {e}"))?;
    if &head[..8] != COOKIE {
        return Err("_PyRuntime does not start with the _Py_DebugOffsets cookie".into());
    }
    let hex = memory::u64_at(&head, 8);
    let version = ((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8);
    if memory::u64_at(&head, 16) != 0 {
        return Err(format!(
            "CPython {}.{}.{} free-threaded builds are not supported yet (native stacks only)",
            version.0, version.1, version.2
        ));
    }
    let positions = match (version.0, version.1) {
        (3, 13) => V3_13,
        (3, minor) if minor >= 14 => V3_14,
        _ => return Err(format!("unexpected _Py_DebugOffsets version {hex:#x}")),
    };
    let bytes = memory::read_vec(pid, runtime, positions.size)
        .map_err(|e| format!("reading _Py_DebugOffsets: {e}"))?;
    let layout = from_bytes(&bytes, &positions, version.1)?;
    Ok((version, layout))
}

fn from_bytes(bytes: &[u8], p: &Positions, minor: u8) -> Result<Layout, String> {
    let get = |at: u32| -> Result<u32, String> {
        u32::try_from(memory::u64_at(bytes, at)).map_err(|_| format!("implausible offset at {at}"))
    };
    let frame_fields = [
        get(p.frame_previous)?,
        get(p.frame_executable)?,
        get(p.frame_instr_ptr)?,
        get(p.frame_owner)?,
    ];
    if frame_fields.iter().any(|&f| f >= FRAME_FIELDS_END) {
        return Err(format!("frame fields {frame_fields:?} are beyond what the kernel reads"));
    }
    let code_size = get(p.code_size)?;
    let code = CodeLayout {
        filename: get(p.code_filename)?,
        name: get(p.code_name)?,
        qualname: Some(get(p.code_qualname)?),
        firstlineno: get(p.code_firstlineno)?,
        linetable: get(p.code_linetable)?,
        code_adaptive: Some(get(p.code_adaptive)?),
        header_len: get(p.code_adaptive)?,
    };
    if [code.filename, code.name, code.firstlineno, code.linetable, code.header_len]
        .iter()
        .any(|&f| f > code_size || f == 0)
    {
        return Err("implausible code object offsets".into());
    }
    let ascii_data = get(p.unicode_ascii_size)?;
    Ok(Layout {
        kernel: PyOffsets {
            frame_model: FrameModel::CurrentFrame as u32,
            interp_threads_head: get(p.threads_head)?,
            tstate_next: get(p.tstate_next)?,
            tstate_thread_id: get(p.tstate_native_thread_id)?,
            match_pthread: 0,
            tstate_frame: get(p.tstate_current_frame)?,
            cframe_current_frame: 0,
            frame_code: frame_fields[1],
            frame_back: frame_fields[0],
            frame_instr: frame_fields[2],
            frame_owner: frame_fields[3],
            _pad: 0,
            // 3.14 tags `f_executable` as a `_PyStackRef`; objects are 8-aligned, so clearing
            // the two low bits is exact for both versions.
            code_tag_bits: if minor >= 14 { 3 } else { 0 },
        },
        runtime_interpreters_head: get(p.interpreters_head)?,
        code,
        objects: ObjectLayout {
            unicode_length: get(p.unicode_length)?,
            unicode_state: get(p.unicode_state)?,
            ascii_data,
            // PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
            compact_data: ascii_data + 16,
            bytes_size: get(p.bytes_size)?,
            bytes_data: get(p.bytes_sval)?,
        },
        linetable: LineTableFormat::Locations311,
        instr: InstrModel::InstrPtr,
        // 3.13: FRAME_OWNED_BY_CSTACK = 3; 3.14: INTERPRETER = 3 and CSTACK = 4.
        skip_owner_from: Some(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as a 3.13 `_Py_DebugOffsets` would hold them, with values from CPython 3.13.5.
    fn sample_313() -> Vec<u8> {
        let mut b = vec![0u8; V3_13.size];
        let mut put =
            |at: u32, v: u64| b[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes());
        for (at, v) in [
            (8, 0x030d05f0),
            (40, 632),
            (72, 7344),
            (168, 8),
            (184, 72),
            (200, 160),
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
            (520, 16),
            (528, 32),
            (544, 32),
            (552, 16),
            (560, 40),
        ] {
            put(at, v);
        }
        b[..8].copy_from_slice(COOKIE);
        b
    }

    #[test]
    fn a_313_table_becomes_a_layout() {
        let layout = from_bytes(&sample_313(), &V3_13, 13).unwrap();
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!((layout.kernel.interp_threads_head, layout.kernel.tstate_frame), (7344, 72));
        assert_eq!(
            (layout.kernel.frame_back, layout.kernel.frame_instr, layout.kernel.frame_owner),
            (8, 56, 70)
        );
        assert_eq!(layout.code.code_adaptive, Some(200));
        assert_eq!((layout.objects.ascii_data, layout.objects.compact_data), (40, 56));
        assert_eq!(layout.kernel.code_tag_bits, 0);
    }

    #[test]
    fn implausible_tables_are_refused() {
        let mut bytes = sample_313();
        bytes[248..256].copy_from_slice(&4096u64.to_ne_bytes()); // instr_ptr far away
        assert!(
            from_bytes(&bytes, &V3_13, 13).unwrap_err().contains("beyond what the kernel reads")
        );
    }
}
