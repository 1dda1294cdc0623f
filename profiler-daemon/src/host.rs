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

/// The root directory of process `pid` as this daemon sees it: `/`, or the directory a
/// chrooted process runs in. `None` once the process is gone.
pub fn process_root(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/root")).ok()
}

/// `/proc/PID/root` when process `pid` runs in another root than this daemon (a container, a
/// chroot), `None` when it shares the daemon's root or is gone.
pub fn foreign_root(pid: u32) -> Option<PathBuf> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let theirs = std::fs::metadata(&root).ok()?;
    let ours = std::fs::metadata("/").ok()?;
    (file_key(&theirs) != file_key(&ours)).then_some(root)
}

/// `path`, as `/proc` shows it to this daemon, turned into the path the process itself uses:
/// the kernel shows the files of a process chrooted into `root` under `root`'s path
/// (`/srv/root/usr/bin/python3.14`), while the process knows them as `/usr/bin/python3.14`.
/// Files of another mount namespace are already shown as the process sees them.
pub fn own_path(root: Option<&Path>, path: &Path) -> PathBuf {
    match root.filter(|r| *r != Path::new("/")).and_then(|r| path.strip_prefix(r).ok()) {
        Some(rest) => Path::new("/").join(rest),
        None => path.to_path_buf(),
    }
}

/// Like [`readable_path`] for the mapped file `key`: once the process is gone, the path itself
/// is used only when it names that same file. The process's `/usr/lib/libz.so.1` may be
/// another root's, and the one on this machine another library.
pub fn readable_file(pid: u32, path: &Path, key: FileKey) -> Option<PathBuf> {
    let found = readable_path(pid, path)?;
    if found.starts_with("/proc") {
        return Some(found);
    }
    let meta = std::fs::metadata(&found).ok()?;
    (file_key(&meta) == key).then_some(found)
}

/// The identity of the file `meta` describes, as `/proc/PID/maps` shows it.
pub fn file_key(meta: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt as _;
    // glibc's dev_t encoding.
    let dev = meta.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    FileKey { dev: (major << 32) | minor, inode: meta.ino() }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_a_chrooted_process_are_its_own() {
        let root = Path::new("/srv/roots/sid");
        let own = |p: &str| own_path(Some(root), Path::new(p));
        assert_eq!(own("/srv/roots/sid/usr/bin/python3.14"), Path::new("/usr/bin/python3.14"));
        // A file from outside the root (an inherited mapping), and a root of `/`.
        assert_eq!(own("/usr/lib/libc.so.6"), Path::new("/usr/lib/libc.so.6"));
        assert_eq!(own("/srv/roots/sidx/a"), Path::new("/srv/roots/sidx/a"));
        let host = own_path(Some(Path::new("/")), Path::new("/usr/bin/python3"));
        assert_eq!(host, Path::new("/usr/bin/python3"));
    }

    #[test]
    fn a_gone_process_s_path_is_used_only_for_the_same_file() {
        use std::os::unix::fs::MetadataExt as _;
        let exe = std::env::current_exe().unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let dev = meta.dev();
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        let key = FileKey { dev: (major << 32) | minor, inode: meta.ino() };
        // No process 999999999: only the path itself is left.
        assert_eq!(readable_file(999_999_999, &exe, key), Some(exe.clone()));
        let other = FileKey { inode: key.inode + 1, ..key };
        assert_eq!(readable_file(999_999_999, &exe, other), None);
    }
}
