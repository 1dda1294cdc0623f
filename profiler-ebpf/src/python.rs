//! The CPython frame walker: finds the sampled thread's `PyThreadState` and records
//! (code object, instruction) for each frame, leaf first.
//!
//! Nothing here trusts the target's memory: every read may fail, loops are bounded, and a
//! stack that is deeper than the limit is marked as truncated.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use profiler_common::{
    python::{
        FLAG_PY_NO_THREAD, FLAG_PY_READ_ERROR, FLAG_PY_TRUNCATED, FRAME_CHUNK, FrameModel,
        MAX_PY_FRAMES, MAX_PY_THREADS, MAX_PY_THREADS_SEARCHED, PyOffsets, PyProcess,
    },
    sample::DATA_WORDS,
};

use crate::arch::PTHREAD_BELOW_TP;

/// Python processes and their layouts, keyed by tgid; written by the daemon.
#[map]
pub(crate) static PY_PROCS: HashMap<u32, PyProcess> = HashMap::with_max_entries(8192, 0);

/// Thread id -> its `PyThreadState`, found by a walk of the thread list and checked on use.
#[map]
static PY_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// Thread id -> where its unfinished search of the thread list goes on (the next thread state,
/// and the threads followed so far), for processes with more threads than one sample
/// examines.
#[map]
static PY_THREAD_SEARCH: LruHashMap<u32, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU copy of the sampled process's `PY_PROCS` entry (see [`thread`]).
#[map]
static PY_PROC_COPY: PerCpuArray<PyProcess> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of the frame being examined.
#[map]
static FRAME_BUF: PerCpuArray<[u8; FRAME_CHUNK]> = PerCpuArray::with_max_entries(1, 0);

/// Offset of the user thread pointer (`thread.fsbase` on x86_64, `thread.uw.tp_value` on
/// aarch64) in `task_struct`, from the kernel's BTF; 0 when unknown. Set by the loader.
#[unsafe(no_mangle)]
static TASK_THREAD_POINTER: u64 = 0;

/// Python frames walked per sample, at most `MAX_PY_FRAMES`, and thread states examined per
/// sample, at most `MAX_PY_THREADS`. Set by the loader: fewer on kernels whose verifier
/// cannot check the whole walk within its instruction budget. Constants to the verifier (the
/// map holding them is frozen), so it does not explore the iterations beyond them.
#[unsafe(no_mangle)]
static PY_FRAMES_LIMIT: u32 = MAX_PY_FRAMES as u32;
#[unsafe(no_mangle)]
static PY_THREADS_LIMIT: u32 = MAX_PY_THREADS as u32;

const CFRAME: u32 = FrameModel::CFrame as u32;
pub(crate) const CODE_MASK: u64 = (1 << 56) - 1;

#[inline(always)]
pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Reads a field of the frame copy. Verifier: the mask bounds the offset so that no branch is
/// needed; offsets are checked against `FRAME_FIELDS_END` by the daemon.
#[inline(always)]
fn field_u64(chunk: &[u8; FRAME_CHUNK], offset: u32) -> u64 {
    let o = (offset as usize) & 0x7f;
    let b = &chunk[o..o + 8];
    u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The value the thread list is matched against, and how far below it a match may lie: the
/// kernel thread id exactly, or the thread pointer for interpreters that only store a
/// `pthread_t` (`pthread_self()`, which lies up to `PTHREAD_BELOW_TP` below it).
#[inline(always)]
fn thread_key(offsets: &PyOffsets, tid: u32) -> Option<(u64, u64)> {
    if offsets.match_pthread == 0 {
        return Some((u64::from(tid), 0));
    }
    // SAFETY: a read of a global the loader may rewrite before load.
    let at = unsafe { core::ptr::read_volatile(&TASK_THREAD_POINTER) };
    if at == 0 {
        return None;
    }
    // SAFETY: helper without memory arguments; the task pointer is only read through
    // bpf_probe_read_kernel, which fails instead of faulting.
    let task = unsafe { bpf_get_current_task() };
    let pointer = unsafe { bpf_probe_read_kernel((task + at) as *const u64) }.ok()?;
    Some((pointer, PTHREAD_BELOW_TP))
}

/// Whether a thread state's id is the sampled thread's. An id above the key wraps around to a
/// large distance, so one comparison does.
#[inline(always)]
fn is_sampled_thread((key, below): (u64, u64), id: Option<u64>) -> bool {
    id.is_some_and(|id| key.wrapping_sub(id) <= below)
}

fn find_thread_state(process: &PyProcess, tid: u32) -> Option<u64> {
    let offsets = &process.offsets;
    let key = thread_key(offsets, tid)?;
    let id_at = u64::from(offsets.tstate_thread_id);
    // SAFETY: map lookups return valid pointers or None.
    if let Some(&cached) = unsafe { PY_THREADS.get(&tid) } {
        if is_sampled_thread(key, read_u64(cached + id_at)) {
            return Some(cached);
        }
    }
    // New threads go to the head of the list, so the oldest (the main thread among them) are
    // at its end: a search that runs out of steps goes on at this thread's next sample.
    // SAFETY: map lookups return valid pointers or None.
    let (mut tstate, mut followed) = match unsafe { PY_THREAD_SEARCH.get(&tid) } {
        Some(&[next, followed]) if followed < u64::from(MAX_PY_THREADS_SEARCHED) => {
            (next, followed)
        }
        _ => (read_u64(process.interp + u64::from(offsets.interp_threads_head))?, 0),
    };
    // SAFETY: a plain read of a constant the loader sets.
    let limit = unsafe { core::ptr::read_volatile(&PY_THREADS_LIMIT) } as usize;
    for i in 0..MAX_PY_THREADS {
        if i >= limit {
            break;
        }
        if tstate == 0 {
            // The end of the list: the next search starts at the head again.
            let _ = PY_THREAD_SEARCH.remove(&tid);
            return None;
        }
        if is_sampled_thread(key, read_u64(tstate + id_at)) {
            let _ = PY_THREAD_SEARCH.remove(&tid);
            let _ = PY_THREADS.insert(&tid, &tstate, 0);
            return Some(tstate);
        }
        let Some(next) = read_u64(tstate + u64::from(offsets.tstate_next)) else {
            let _ = PY_THREAD_SEARCH.remove(&tid);
            return None;
        };
        tstate = next;
        followed += 1;
    }
    let _ = PY_THREAD_SEARCH.insert(&tid, &[tstate, followed], 0);
    None
}

/// A thread of a known Python process.
pub struct PyThread<'a> {
    /// The process's entry.
    pub process: &'a PyProcess,
    /// The thread's `PyThreadState`, when it was found.
    pub tstate: Option<u64>,
}

/// Thread `tid` of `tgid`, whose identity (start time, `execve` count) is given, when the
/// process is a known Python process.
#[inline(always)]
pub fn thread<'a>(
    (tgid, tid): (u32, u32),
    (start_ns, exec_id): (u64, u32),
) -> Option<PyThread<'a>> {
    // The daemon replaces and deletes entries while programs run, and the kernel gives an
    // entry's memory to the map's next update at once (preallocated elements), so a pointer to
    // it could come to show another process's layout in the middle of a walk. The walk uses a
    // copy instead, taken while the entry was this process's: the same element before and
    // after the copy (the identity is checked on the copy, below).
    let entry = PY_PROCS.get_ptr(&tgid)?;
    let copy = PY_PROC_COPY.get_ptr_mut(0)?;
    // SAFETY: map lookups return valid pointers or None; the copy is this CPU's buffer, which
    // nothing else uses while this program runs here.
    unsafe { *copy = core::ptr::read_volatile(entry) };
    if !core::ptr::eq(PY_PROCS.get_ptr(&tgid)?, entry) {
        return None;
    }
    // SAFETY: as above; the buffer outlives this program's run.
    let process = unsafe { &*copy };
    // An entry for another process under a reused pid, or for the program this one replaced
    // by `execve`: its addresses mean nothing here. The daemon re-registers the process.
    if process.start_ns != start_ns || process.exec_id != exec_id {
        return None;
    }
    Some(PyThread { process, tstate: find_thread_state(process, tid) })
}

/// Walks the Python stack of `thread` into `data[start..]` as (code, instruction) pairs and
/// returns the number of frames. Adds `FLAG_PY_*` bits to `flags`.
///
/// Inlined into each program that records stacks: as a BPF function of its own it would take
/// more than the five arguments a BPF call passes in registers.
#[inline(always)]
pub fn walk(
    data: &mut [u64; DATA_WORDS],
    start: usize,
    thread: &PyThread<'_>,
    flags: &mut u32,
) -> u32 {
    let process = thread.process;
    let Some(tstate) = thread.tstate else {
        *flags |= FLAG_PY_NO_THREAD;
        return 0;
    };
    let offsets = &process.offsets;
    let Some(mut frame) = read_u64(tstate + u64::from(offsets.tstate_frame)) else {
        *flags |= FLAG_PY_READ_ERROR;
        return 0;
    };
    if offsets.frame_model == CFRAME && frame != 0 {
        let Some(current) = read_u64(frame + u64::from(offsets.cframe_current_frame)) else {
            *flags |= FLAG_PY_READ_ERROR;
            return 0;
        };
        frame = current;
    }
    let Some(chunk) = FRAME_BUF.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's buffer; nothing else uses it while this program runs here.
    let chunk = unsafe { &mut *chunk };
    let mut n = 0usize;
    // SAFETY: a plain read of a constant the loader sets.
    let limit = unsafe { core::ptr::read_volatile(&PY_FRAMES_LIMIT) } as usize;
    // Verifier: the slot written depends only on the loop counter, so that the states of
    // different iterations can be pruned.
    for i in 0..MAX_PY_FRAMES {
        if frame == 0 || i >= limit {
            break;
        }
        // One read per frame: a frame's fields all lie in its first FRAME_CHUNK bytes.
        // SAFETY: bpf_probe_read_user_buf fails instead of faulting.
        if unsafe { bpf_probe_read_user_buf(frame as *const u8, chunk) }.is_err() {
            *flags |= FLAG_PY_READ_ERROR;
            break;
        }
        // Everything below is branch-free so that iterations stay cheap to verify: the owner
        // byte rides in the top byte of the code word (user addresses leave it free), and the
        // daemon drops shim frames and narrows `f_lasti` for the models that need it.
        let owner = u64::from(chunk[(offsets.frame_owner as usize) & 0x7f]);
        let code = (field_u64(chunk, offsets.frame_code) & !offsets.code_tag_bits & CODE_MASK)
            | (owner << 56);
        let instr = field_u64(chunk, offsets.frame_instr);
        frame = field_u64(chunk, offsets.frame_back);
        // Verifier: start <= 254 and i < 128, so both indexes stay below DATA_WORDS; the
        // masks prove it.
        let slot = (start + 2 * i) & (DATA_WORDS - 1);
        data[slot] = code;
        data[(slot + 1) & (DATA_WORDS - 1)] = instr;
        n = i + 1;
    }
    if frame != 0 && n == limit.min(MAX_PY_FRAMES) {
        *flags |= FLAG_PY_TRUNCATED;
    }
    n as u32
}
