//! CPython frame walking: what the daemon tells the kernel about each Python process (the
//! `PY_PROCS` map) and what the kernel records per Python frame.
//!
//! The daemon picks the struct offsets for the interpreter's version (or reads them from the
//! interpreter's `_Py_DebugOffsets` on 3.13+); the kernel program only follows pointers.

/// Deepest Python stack recorded.
pub const MAX_PY_FRAMES: usize = 128;

/// Threads examined per sample when looking for the current thread's `PyThreadState`. A
/// search that does not find it within this many resumes at the next sample of the same
/// thread where it stopped, so a thread among `n` is found within `n / MAX_PY_THREADS + 1` of
/// its samples, and then cached.
pub const MAX_PY_THREADS: usize = 64;

/// Threads one resumed search follows in all before it starts again at the head of the list:
/// a bound in case the list changed under it and the saved position leads nowhere useful.
pub const MAX_PY_THREADS_SEARCHED: u32 = 65_536;

/// Bytes of a frame read at once. The kernel masks field offsets with 0x7f, so every frame
/// field (at most 8 bytes) must start below 128 and the chunk covers 128 + 8 bytes.
pub const FRAME_CHUNK: usize = 136;

/// Frame field offsets must be below this.
pub const FRAME_FIELDS_END: u32 = 128;

/// How frames are chained, by CPython version.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameModel {
    /// 3.9 and 3.10: `tstate->frame` is a `PyFrameObject`, chained by `f_back`; `f_lasti` is
    /// an `int`.
    FrameObject = 1,
    /// 3.11 and 3.12: `tstate->cframe->current_frame` is a `_PyInterpreterFrame`, chained by
    /// `previous`; `prev_instr` points at the last instruction started.
    CFrame = 2,
    /// 3.13 and later: `tstate->current_frame`, chained by `previous`; `instr_ptr` points at
    /// the current instruction. `f_executable` may be a tagged `_PyStackRef` (3.14).
    CurrentFrame = 3,
}

/// Offsets and constants the kernel walker needs for one interpreter. Unused offsets are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyOffsets {
    /// A [`FrameModel`] value.
    pub frame_model: u32,
    /// `PyInterpreterState` -> first `PyThreadState`.
    pub interp_threads_head: u32,
    /// `PyThreadState` -> next thread.
    pub tstate_next: u32,
    /// `PyThreadState` -> `native_thread_id` (3.11+), or `thread_id` (a `pthread_t`, matched
    /// against the thread pointer) when `match_pthread` is 1.
    pub tstate_thread_id: u32,
    /// 1 when `tstate_thread_id` holds a `pthread_t` rather than a kernel thread id.
    pub match_pthread: u32,
    /// `PyThreadState` -> frame pointer (`frame`, `cframe` or `current_frame`).
    pub tstate_frame: u32,
    /// `_PyCFrame` -> `current_frame` (model `CFrame` only).
    pub cframe_current_frame: u32,
    /// Frame -> code object (`f_code` or `f_executable`).
    pub frame_code: u32,
    /// Frame -> previous frame (`f_back` or `previous`).
    pub frame_back: u32,
    /// Frame -> instruction position (`f_lasti`, `prev_instr` or `instr_ptr`).
    pub frame_instr: u32,
    /// Frame -> `owner` byte (any offset when frames have no owner field).
    pub frame_owner: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Low bits to clear from the code pointer (tagged `_PyStackRef` in 3.14), else 0.
    pub code_tag_bits: u64,
}

/// One entry of `PY_PROCS`, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcess {
    /// Address of the main `PyInterpreterState`.
    pub interp: u64,
    /// Layout of this interpreter.
    pub offsets: PyOffsets,
    /// The process this entry describes: its start (`start_boottime`, ns since boot) and
    /// `execve` count. A sample of another process under the same pid (reused), or of the same
    /// process after an `execve`, is not walked with this entry's addresses. 0 when unknown.
    pub start_ns: u64,
    /// See `start_ns`.
    pub exec_id: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Address of the GIL's `int locked` (1 while some thread holds it); 0 when the GIL is
    /// unknown, and then every other `gil_*` address is 0 too.
    pub gil_locked: u64,
    /// Address of the GIL's `last_holder`, the holder's `PyThreadState *` while `locked` is 1.
    pub gil_holder: u64,
    /// Address of the GIL's condition variable `cond` (48 bytes): a thread waiting for the GIL
    /// sleeps in `futex` on a word inside it.
    pub gil_cond: u64,
    /// Address of the GIL's `int enabled` in a free-threaded build, where the GIL exists only
    /// while it is not 0; 0 in a build with a GIL.
    pub gil_enabled: u64,
    /// Where the interpreter's code is mapped (`text_start..text_end`, the executable or
    /// libpython), 0 to 0 when unknown. A sample whose instruction is there copies no stack:
    /// the Python frames replace the interpreter's native ones.
    pub text_start: u64,
    /// See `text_start`.
    pub text_end: u64,
}

/// One recorded Python frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    /// Address of the code object in the low 56 bits; the frame's `owner` byte in the top 8
    /// (meaningless for models without an owner field).
    pub code: u64,
    /// The 8 bytes at the instruction field: `f_lasti` in the low 32 bits (model
    /// `FrameObject`) or the instruction pointer (other models).
    pub instr: u64,
}

impl PyFrame {
    /// The code object's address.
    pub const fn code_addr(&self) -> u64 {
        self.code & ((1 << 56) - 1)
    }

    /// The frame's owner byte.
    pub const fn owner(&self) -> u8 {
        (self.code >> 56) as u8
    }
}

/// Key of the `PY_CALLS` table: calls of one code object in one process, counted by the
/// probe on `_PyEval_EvalFrameDefault`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CallKey {
    /// Process id.
    pub tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Address of the code object.
    pub code: u64,
}

/// Header flag: the Python stack has more frames than were recorded.
pub const FLAG_PY_TRUNCATED: u32 = 1 << 4;
/// Header flag: the process is a known Python process but the current thread's state was not
/// found (a thread that never ran Python, or one not reached yet by a resumed search).
pub const FLAG_PY_NO_THREAD: u32 = 1 << 5;
/// Header flag: reading the interpreter's memory failed part way.
pub const FLAG_PY_READ_ERROR: u32 = 1 << 6;
/// Header flag: whether the thread holds the GIL is known, and [`FLAG_PY_HOLDS_GIL`] says it:
/// the process has a GIL (not a free-threaded build running without one), the thread's
/// `PyThreadState` was found, and the GIL's state could be read.
pub const FLAG_PY_GIL_KNOWN: u32 = 1 << 7;
/// Header flag: the thread held the GIL (`locked` was 1 and `last_holder` was its
/// `PyThreadState`) when the sample was taken; for an off-CPU record, when it left the CPU
/// (blocked in C code that did not release it, or preempted).
pub const FLAG_PY_HOLDS_GIL: u32 = 1 << 8;
/// Header flag (off-CPU records): the thread left the CPU waiting for the GIL, asleep in a
/// `futex` wait on a word of the GIL's condition variable.
pub const FLAG_PY_GIL_WAIT: u32 = 1 << 9;
/// Bytes of the GIL's condition variable (`pthread_cond_t` on Linux, glibc and musl, x86_64
/// and aarch64).
pub const GIL_COND_BYTES: u64 = 48;

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding, any bit pattern valid.
unsafe impl aya::Pod for PyProcess {}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding, any bit pattern valid.
unsafe impl aya::Pod for CallKey {}

const _: () = assert!(core::mem::size_of::<PyOffsets>() == 56);
const _: () = assert!(core::mem::size_of::<PyProcess>() == 128);
const _: () = assert!(core::mem::size_of::<CallKey>() == 16);
