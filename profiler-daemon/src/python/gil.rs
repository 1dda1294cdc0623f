//! The GIL of a CPython process, found from outside: where its `struct _gil_runtime_state`
//! is, and the fields the kernel reads in it.
//!
//! The struct is the same from 3.9 to 3.15 (`interval`, `last_holder`, `locked`,
//! `switch_number`, then the condition variable `cond` that waiting threads sleep on, and the
//! mutexes), with an `enabled` flag first in free-threaded builds. It is embedded in
//! `_PyRuntime` up to 3.11; from 3.12 each interpreter points to its own (`ceval.gil`), which
//! for the main interpreter is embedded in `_PyRuntime._main_interpreter`, whose offset moves
//! between patch releases: the pointer is read, never computed.

use super::{layout::GilPlace, memory};

/// `pthread_cond_t` on Linux (glibc and musl, x86_64 and aarch64).
pub const COND_BYTES: u64 = 48;

/// A process's GIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gil {
    /// Address of `struct _gil_runtime_state`.
    pub addr: u64,
    /// Free-threaded build: an `int enabled` comes first, and the GIL is only there while it
    /// is not 0.
    pub free_threaded: bool,
}

impl Gil {
    fn shift(&self) -> u64 {
        if self.free_threaded { 8 } else { 0 }
    }

    /// Address of `last_holder`, the `PyThreadState *` of the holder while `locked` is 1.
    pub fn last_holder(&self) -> u64 {
        self.addr + 8 + self.shift()
    }

    /// Address of `int locked`.
    pub fn locked(&self) -> u64 {
        self.addr + 16 + self.shift()
    }

    /// Address of `cond`: a thread waiting for the GIL sleeps in `futex` on a word inside it
    /// (which word depends on the C library).
    pub fn cond(&self) -> u64 {
        self.addr + 32 + self.shift()
    }

    /// Address of `int enabled` (free-threaded builds), else `None`.
    pub fn enabled(&self) -> Option<u64> {
        self.free_threaded.then_some(self.addr)
    }
}

/// Why the GIL was not found.
#[derive(Debug, thiserror::Error)]
pub enum GilError {
    /// Memory could not be read.
    #[error("reading the GIL state: {0}")]
    Read(#[from] std::io::Error),
    /// The interpreter has no GIL yet: its pointer is still NULL while it is being made.
    #[error("the interpreter's GIL is not made yet")]
    NotMade,
    /// What was read is not a GIL state.
    #[error("no GIL state at {addr:#x} (locked = {locked})")]
    NotAGil {
        /// Where it was looked for.
        addr: u64,
        /// The `locked` value read there.
        locked: i32,
    },
}

/// The GIL of the main interpreter `interp` of process `pid`, whose runtime is at `runtime`.
pub fn find(
    pid: u32,
    place: GilPlace,
    runtime: u64,
    interp: u64,
    free_threaded: bool,
) -> Result<Gil, GilError> {
    let addr = match place {
        GilPlace::InRuntime(offset) => runtime + u64::from(offset),
        GilPlace::InterpPointer(offset) => match memory::read_u64(pid, interp + u64::from(offset))?
        {
            0 => return Err(GilError::NotMade),
            addr => addr,
        },
    };
    let gil = Gil { addr, free_threaded };
    let mut word = [0u8; 4];
    memory::read(pid, gil.locked(), &mut word)?;
    let locked = i32::from_ne_bytes(word);
    // 0 or 1, or -1 before the GIL is made and after it is destroyed.
    if addr == 0 || addr % 8 != 0 || !(-1..=1).contains(&locked) {
        return Err(GilError::NotAGil { addr, locked });
    }
    Ok(gil)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_struct_puts_them_in_both_builds() {
        let gil = Gil { addr: 0x1000, free_threaded: false };
        assert_eq!(
            (gil.last_holder(), gil.locked(), gil.cond(), gil.enabled()),
            (0x1008, 0x1010, 0x1020, None)
        );
        let ft = Gil { addr: 0x1000, free_threaded: true };
        assert_eq!(
            (ft.last_holder(), ft.locked(), ft.cond(), ft.enabled()),
            (0x1010, 0x1018, 0x1028, Some(0x1000))
        );
    }

    #[test]
    fn a_gil_in_this_process_memory_is_found_and_garbage_is_not() {
        if crate::host::skip_under_qemu_user(
            "a_gil_in_this_process_memory_is_found_and_garbage_is_not",
            "qemu-user does not emulate process_vm_readv",
        ) {
            return;
        }
        // A fake runtime: a GIL state at offset 64 with locked = 1, and an interpreter whose
        // `ceval.gil` points to it.
        let mut runtime = vec![0u64; 64];
        runtime[8 + 2] = 1; // locked, at GIL + 16
        let base = runtime.as_ptr() as u64;
        let interp = [0u64, 0, base + 64];
        let pid = std::process::id();
        let embedded = find(pid, GilPlace::InRuntime(64), base, 0, false).unwrap();
        assert_eq!(embedded.addr, base + 64);
        let pointed =
            find(pid, GilPlace::InterpPointer(16), base, interp.as_ptr() as u64, false).unwrap();
        assert_eq!(pointed, embedded);
        // An interpreter being made: `interpreters.main` is set before `ceval.gil` is.
        let unmade = [0u64; 3];
        assert!(matches!(
            find(pid, GilPlace::InterpPointer(16), base, unmade.as_ptr() as u64, false),
            Err(GilError::NotMade)
        ));
        std::hint::black_box(&unmade);
        runtime[8 + 2] = 7;
        assert!(matches!(
            find(pid, GilPlace::InRuntime(64), base, 0, false),
            Err(GilError::NotAGil { locked: 7, .. })
        ));
        std::hint::black_box(&runtime);
    }
}
