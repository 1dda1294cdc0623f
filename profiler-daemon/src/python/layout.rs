//! CPython struct layouts: the offsets the kernel walker and the code-object reader need, per
//! interpreter version. Taken from each version's headers (x86_64 and aarch64 share them).

use profiler_common::python::{FrameModel, PyOffsets};

use super::linetable::LineTableFormat;

/// What the instruction field of a recorded frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrModel {
    /// `f_lasti` in bytes (3.9).
    LastiBytes,
    /// `f_lasti` in code units (3.10).
    LastiUnits,
    /// `prev_instr`: a pointer to the last instruction started (3.11, 3.12).
    PrevInstr,
    /// `instr_ptr`: a pointer to the instruction being executed (3.13+).
    InstrPtr,
}

/// Where the fields of a code object are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    /// `co_filename`.
    pub filename: u32,
    /// `co_name`.
    pub name: u32,
    /// `co_qualname` (3.11+; 3.9 and 3.10 show `co_name`).
    pub qualname: Option<u32>,
    /// `co_firstlineno` (an `int`).
    pub firstlineno: u32,
    /// The line table object (`co_lnotab` or `co_linetable`, a bytes object).
    pub linetable: u32,
    /// `co_code_adaptive`: start of the instructions inside the code object (3.11+).
    pub code_adaptive: Option<u32>,
    /// Bytes of the code object to read to cover every field above.
    pub header_len: u32,
}

/// Where the fields of objects, strings and bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `PyObject.ob_type` (8, or 24 in free-threaded builds).
    pub ob_type: u32,
    /// `PyASCIIObject.length`.
    pub unicode_length: u32,
    /// `PyASCIIObject.state` (kind in bits 2-4, compact bit 5, ascii bit 6; 3.13's free-threaded
    /// build packs them the same way).
    pub unicode_state: u32,
    /// `sizeof(PyASCIIObject)`: where compact ASCII data starts.
    pub ascii_data: u32,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact data starts.
    pub compact_data: u32,
    /// `PyVarObject.ob_size` of a bytes object.
    pub bytes_size: u32,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: u32,
}

/// Everything needed to read one interpreter version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// For the kernel walker.
    pub kernel: PyOffsets,
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u32,
    /// Code objects.
    pub code: CodeLayout,
    /// Strings and bytes.
    pub objects: ObjectLayout,
    /// Line table format.
    pub linetable: LineTableFormat,
    /// Meaning of the recorded instruction field.
    pub instr: InstrModel,
    /// Frames whose `owner` is at least this value are the interpreter's own entry frames
    /// (C-to-Python shims) and are not shown; `None` when the version has no such frames.
    pub skip_owner_from: Option<u8>,
    /// Where the main interpreter's GIL state (`struct _gil_runtime_state`) is.
    pub gil: GilPlace,
}

/// Where the main interpreter's `struct _gil_runtime_state` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GilPlace {
    /// Embedded in `_PyRuntime` at this offset (`_PyRuntime.ceval.gil`, 3.9 to 3.11).
    InRuntime(u32),
    /// Pointed to by the interpreter state's `ceval.gil`, at this offset (3.12 and later).
    InterpPointer(u32),
}

const OBJECTS_39_311: ObjectLayout = ObjectLayout {
    ob_type: 8,
    unicode_length: 16,
    unicode_state: 32,
    ascii_data: 48,
    compact_data: 72,
    bytes_size: 16,
    bytes_data: 32,
};

/// The built-in layout of CPython `major.minor`, if there is one.
pub fn table(major: u8, minor: u8) -> Option<Layout> {
    match (major, minor) {
        (3, 9) | (3, 10) => Some(Layout {
            kernel: PyOffsets {
                frame_model: FrameModel::FrameObject as u32,
                interp_threads_head: 8, // tstate_head
                tstate_next: 8,
                tstate_thread_id: 176, // thread_id: a pthread_t
                match_pthread: 1,
                tstate_frame: 24, // frame
                cframe_current_frame: 0,
                frame_code: 32,
                frame_back: 24,
                frame_instr: if minor == 9 { 104 } else { 96 }, // f_lasti
                frame_owner: 0,
                _pad: 0,
                code_tag_bits: 0,
            },
            runtime_interpreters_head: 32,
            code: CodeLayout {
                filename: 104,
                name: 112,
                qualname: None,
                firstlineno: 40,
                linetable: 120, // co_lnotab (3.9) or co_linetable (3.10)
                code_adaptive: None,
                header_len: 128,
            },
            objects: OBJECTS_39_311,
            linetable: if minor == 9 {
                LineTableFormat::Lnotab
            } else {
                LineTableFormat::Linetable310
            },
            instr: if minor == 9 { InstrModel::LastiBytes } else { InstrModel::LastiUnits },
            skip_owner_from: None,
            gil: GilPlace::InRuntime(352),
        }),
        (3, 11) => Some(Layout {
            kernel: PyOffsets {
                frame_model: FrameModel::CFrame as u32,
                interp_threads_head: 16,
                tstate_next: 8,
                tstate_thread_id: 160, // native_thread_id
                match_pthread: 0,
                tstate_frame: 56, // cframe
                cframe_current_frame: 8,
                frame_code: 32,
                frame_back: 48,
                frame_instr: 56, // prev_instr
                frame_owner: 69,
                _pad: 0,
                code_tag_bits: 0,
            },
            runtime_interpreters_head: 40,
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                firstlineno: 72,
                linetable: 136,
                code_adaptive: Some(184),
                header_len: 184,
            },
            objects: OBJECTS_39_311,
            linetable: LineTableFormat::Locations311,
            instr: InstrModel::PrevInstr,
            skip_owner_from: None,
            gil: GilPlace::InRuntime(360),
        }),
        (3, 12) => Some(Layout {
            kernel: PyOffsets {
                frame_model: FrameModel::CFrame as u32,
                interp_threads_head: 72,
                tstate_next: 8,
                tstate_thread_id: 144, // native_thread_id
                match_pthread: 0,
                tstate_frame: 56, // cframe
                cframe_current_frame: 0,
                frame_code: 0,
                frame_back: 8,
                frame_instr: 56, // prev_instr
                frame_owner: 70,
                _pad: 0,
                code_tag_bits: 0,
            },
            runtime_interpreters_head: 40,
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                firstlineno: 68,
                linetable: 136,
                code_adaptive: Some(192),
                header_len: 192,
            },
            objects: OBJECTS_312,
            linetable: LineTableFormat::Locations311,
            instr: InstrModel::PrevInstr,
            // FRAME_OWNED_BY_CSTACK: the "<interpreter trampoline>" entry frames.
            skip_owner_from: Some(3),
            gil: GilPlace::InterpPointer(384), // ceval.gil
        }),
        _ => None,
    }
}

/// From 3.12 on, `PyASCIIObject` lost its `wstr` pointer.
pub const OBJECTS_312: ObjectLayout = ObjectLayout {
    ob_type: 8,
    unicode_length: 16,
    unicode_state: 32,
    ascii_data: 40,
    compact_data: 56,
    bytes_size: 16,
    bytes_data: 32,
};

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::python::FRAME_FIELDS_END;

    #[test]
    fn frame_fields_fit_the_kernel_chunk() {
        for minor in 9..=12 {
            let Some(layout) = table(3, minor) else { continue };
            let k = layout.kernel;
            for (name, off) in [
                ("code", k.frame_code),
                ("back", k.frame_back),
                ("instr", k.frame_instr),
                ("owner", k.frame_owner),
            ] {
                assert!(off < FRAME_FIELDS_END, "3.{minor} frame {name} at {off}");
            }
        }
    }
}
