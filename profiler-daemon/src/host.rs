//! How this daemon reaches a process's files: their identity (device and inode), and paths as
//! the process sees them, through its own root (a container's files live under another root).
//! A leaf module: the process table and the Python reader both use it.

use std::path::{Path, PathBuf};

/// Identity of a mapped file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Device number (`makedev(major, minor)`).
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
}

/// A path to open `path` as process `pid` sees it: through `/proc/PID/root` (its mount
/// namespace) while it runs, else the path itself.
pub fn readable_path(pid: u32, path: &Path) -> Option<PathBuf> {
    let via_root = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path));
    [via_root, path.to_path_buf()].into_iter().find(|p| p.exists())
}

/// Whether the unit tests run under qemu-user, where `.ci/cross-aarch64` sets
/// `PROFILER_UNDER_QEMU=1`; if so, prints why `test` is skipped. There the kernel runs qemu, not
/// the test binary: `/proc/<own pid>` describes qemu's executable and mappings (qemu rewrites
/// only some of its own `/proc` paths), `process_vm_readv` is not emulated, and the kernel is
/// the host's, of another architecture.
#[cfg(test)]
pub(crate) fn skip_under_qemu_user(test: &str, reason: &str) -> bool {
    let under_qemu = std::env::var_os("PROFILER_UNDER_QEMU").is_some_and(|v| v == "1");
    if under_qemu {
        eprintln!("skipped under qemu-user: {test}: {reason}");
    }
    under_qemu
}
