//! A copy of the top of the user stack, for code built without frame pointers.
//!
//! The frame-pointer walk (`user_stack.rs`) stops, or goes astray, at the first function that
//! keeps something else in the frame pointer register: most of Debian's libraries, libpython
//! and many wheels are built so. For the processes whose mapped code is built so, the daemon
//! puts the number of bytes to copy into `UNWIND_PROCS`, and a sample of their user code
//! carries the stack from the stack pointer up; the daemon unwinds it with each file's
//! `.eh_frame`, as `perf record --call-graph dwarf` does. Other processes pay one hash lookup.
//!
//! The copy goes page by page: a read that crosses the end of the stack's mapping fails as a
//! whole, so each read stays inside one page and the copy stops at the first page that cannot
//! be read.

use aya_ebpf::{helpers::generated::bpf_probe_read_user, macros::map, maps::HashMap};
use profiler_common::sample::{DATA_WORDS, STACK_COPY_MAX, UNWIND_PROCS_MAX};

/// Bytes of user stack to copy per process (thread-group id); the daemon keeps it.
#[map]
static UNWIND_PROCS: HashMap<u32, u32> = HashMap::with_max_entries(UNWIND_PROCS_MAX, 0);

const PAGE: u64 = 4096;
/// Reads of at most a page each: enough for `STACK_COPY_MAX` bytes from any start.
const CHUNKS: usize = STACK_COPY_MAX / PAGE as usize + 1;

/// The bytes of stack to copy for process `tgid`; 0 for none.
#[inline(always)]
pub fn wanted(tgid: u32) -> u32 {
    // SAFETY: a plain value read from the map.
    unsafe { UNWIND_PROCS.get(&tgid) }.copied().unwrap_or(0)
}

/// Copies up to `want` bytes of user stack from `sp` into `base + at` and returns how many it
/// copied (a multiple of 8). `base` is a record's data area, `DATA_WORDS` words followed by
/// `STACK_COPY_MAX` bytes of room, and `at` the byte offset after its frames.
#[inline(always)]
pub fn copy(base: *mut u8, at: usize, sp: u64, want: u32) -> u32 {
    let want = (want as usize).min(STACK_COPY_MAX) as u64;
    if sp == 0 || sp & 7 != 0 || at > DATA_WORDS * 8 {
        return 0;
    }
    let mut copied = 0u64;
    for _ in 0..CHUNKS {
        let page_left = PAGE - ((sp + copied) & (PAGE - 1));
        let n = page_left.min(want - copied) & !7;
        if n == 0 {
            break;
        }
        // Verifier: the read's length is bounded on its own register. LLVM knows that
        // `n <= PAGE` and would drop that bound; the verifiers of 5.10 and 6.1 do not know it
        // and refuse the program. The volatile read hides what LLVM knows.
        // SAFETY: a read of a local.
        let n = unsafe { core::ptr::read_volatile(&n) }.min(PAGE);
        // Verifier: the destination's bound restated where it is formed.
        if copied > STACK_COPY_MAX as u64 - n {
            break;
        }
        let offset = at + copied as usize;
        if offset > DATA_WORDS * 8 + STACK_COPY_MAX - n as usize {
            break;
        }
        // SAFETY: `base + offset .. + n` lies inside the record (checked just above);
        // bpf_probe_read_user checks the source and fails instead of faulting.
        let ret = unsafe {
            bpf_probe_read_user(base.add(offset).cast(), n as u32, (sp + copied) as *const _)
        };
        if ret != 0 {
            break;
        }
        copied += n;
    }
    copied as u32
}
