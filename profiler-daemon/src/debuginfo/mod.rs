//! Separate debug files for stripped binaries. Distributions strip their binaries and ship the
//! full symbol tables apart (Debian's `-dbgsym` packages, Fedora's `-debuginfo`), installed
//! under `/usr/lib/debug/.build-id/NN/REST.debug`, and fleets serve them by build-id through
//! debuginfod. A stripped binary keeps only its exported functions; its debug file names the
//! internal ones too.
//!
//! [`DebugInfo::find`] looks for the debug file of a binary as GDB does, in the configured
//! directories as the binary's process sees them (inside its container, if it runs in one) and
//! as this daemon sees them: by build-id, then in the download cache, then by the name and CRC
//! in its `.gnu_debuglink` (next to the binary, in `.debug/` beside it, and under each directory
//! at the binary's own path), and otherwise queues a download ([`fetch`]) without waiting.

pub mod elf;
pub mod fetch;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use thiserror::Error;

use self::elf::Debuglink;

/// The directory distributions install debug files under.
pub const DEFAULT_DIR: &str = "/usr/lib/debug";

/// Where the debug file of a build-id is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Here.
    Found(PathBuf),
    /// Being downloaded: ask again later.
    Pending,
    /// Nowhere.
    Missing,
}

/// Counts shared with `Status` and the metrics.
#[derive(Debug, Default)]
pub struct DebugInfoStats {
    /// Stripped binaries named through a debug file found in the directories or the cache.
    pub found: AtomicU64,
    /// Whether debuginfod servers are configured.
    pub debuginfod: AtomicBool,
    /// Debug files downloaded.
    pub downloads: AtomicU64,
    /// Bytes downloaded.
    pub download_bytes: AtomicU64,
    /// Build-ids that no server had.
    pub not_found: AtomicU64,
    /// Requests that failed (server unreachable, an error answer, a file that was not the one
    /// asked for, the cache unwritable).
    pub failures: AtomicU64,
    /// Build-ids not queued because the download queue was full.
    pub dropped: AtomicU64,
    /// Bytes in the download cache after the last download.
    pub cache_bytes: AtomicU64,
    last_error: Mutex<String>,
}

impl DebugInfoStats {
    /// The last failure, empty if none.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// A debuginfod setting that cannot work.
#[derive(Debug, Error)]
pub enum DebugInfoError {
    /// A server URL that is not `http://HOST[:PORT][/PATH]` or `https://…`.
    #[error("invalid debuginfod server {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    /// The download cache cannot be created.
    #[error("cannot create the debug file cache {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The system's CA certificates cannot be loaded.
    #[error("cannot load the system's CA certificates for debuginfod: {0}")]
    Tls(String),
}

/// What is known of a stripped binary's debug file, and where its process looks for files.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// The binary's build-id (lowercase hex).
    pub build_id: Option<&'a str>,
    /// Its `.gnu_debuglink`.
    pub debuglink: Option<&'a Debuglink>,
    /// The binary's path, as its process's `/proc/PID/maps` names it.
    pub path: &'a Path,
    /// The root of the binary's process, when it is not this daemon's (a container's, a
    /// chroot's): `/proc/PID/root`.
    pub root: Option<&'a Path>,
}

/// The debug directories and, if servers are configured, the fetcher and its cache.
#[derive(Debug)]
pub struct DebugInfo {
    dirs: Vec<PathBuf>,
    cache: Option<PathBuf>,
    fetcher: Option<fetch::Fetcher>,
    stats: Arc<DebugInfoStats>,
}

impl DebugInfo {
    /// Looks in `dirs` (each with a `.build-id` directory inside) and downloads nothing.
    pub fn new(dirs: Vec<PathBuf>, stats: Arc<DebugInfoStats>) -> DebugInfo {
        DebugInfo { dirs, cache: None, fetcher: None, stats }
    }

    /// Also downloads through `fetcher` into `cache`, which is then searched after the
    /// directories.
    pub fn with_fetcher(mut self, fetcher: fetch::Fetcher, cache: PathBuf) -> DebugInfo {
        self.cache = Some(cache);
        self.fetcher = Some(fetcher);
        self.stats.debuginfod.store(true, Relaxed);
        self
    }

    /// The counts.
    pub fn stats(&self) -> &Arc<DebugInfoStats> {
        &self.stats
    }

    /// The debug file of `build_id` (lowercase hex), or whether it is on its way.
    pub fn lookup(&self, build_id: &str) -> Lookup {
        self.find(&Wanted {
            build_id: Some(build_id),
            debuglink: None,
            path: Path::new(""),
            root: None,
        })
    }

    /// The debug file of the binary `wanted` describes, or whether it is on its way.
    pub fn find(&self, wanted: &Wanted<'_>) -> Lookup {
        let roots: Vec<&Path> = wanted.root.into_iter().chain([Path::new("/")]).collect();
        let build_id = wanted.build_id.filter(|id| is_build_id(id));
        if let Some(id) = build_id {
            let in_dirs = roots.iter().flat_map(|root| {
                self.dirs.iter().map(move |dir| under(root, &build_id_path(dir, id)))
            });
            let found = in_dirs
                .chain(self.cache.iter().map(|c| build_id_path(c, id)))
                .find(|p| p.is_file());
            if let Some(path) = found {
                return Lookup::Found(path);
            }
        }
        if let (Some(link), Some(dir)) = (wanted.debuglink, wanted.path.parent()) {
            let relative = dir.strip_prefix("/").unwrap_or(dir);
            let candidates = [dir.join(&link.name), dir.join(".debug").join(&link.name)]
                .into_iter()
                .chain(self.dirs.iter().map(|d| d.join(relative).join(&link.name)));
            let candidates: Vec<PathBuf> = candidates.collect();
            let found = roots
                .iter()
                .flat_map(|root| candidates.iter().map(move |c| under(root, c)))
                .find(|p| p.is_file() && crc32_of(p).is_ok_and(|crc| crc == link.crc));
            if let Some(path) = found {
                return Lookup::Found(path);
            }
        }
        match (&self.fetcher, build_id) {
            (Some(fetcher), Some(id)) => fetcher.request(id),
            _ => Lookup::Missing,
        }
    }
}

/// `path` (absolute, as a process sees it) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The CRC-32 of the file at `path`, as `.gnu_debuglink` records it.
fn crc32_of(path: &Path) -> std::io::Result<u32> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// `DIR/.build-id/NN/REST.debug`, the layout GDB, elfutils and the distributions share.
pub fn build_id_path(dir: &Path, build_id: &str) -> PathBuf {
    let (first, rest) = build_id.split_at(2.min(build_id.len()));
    dir.join(".build-id").join(first).join(format!("{rest}.debug"))
}

/// Whether `s` can be a build-id: lowercase hex, whole bytes, at least 4 of them (which also
/// keeps it a plain file name).
pub fn is_build_id(s: &str) -> bool {
    s.len() >= 8
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_id_names_its_file_under_each_directory() {
        assert_eq!(
            build_id_path(Path::new("/usr/lib/debug"), "0a1b2c3d4e"),
            Path::new("/usr/lib/debug/.build-id/0a/1b2c3d4e.debug")
        );
        assert!(is_build_id("0a1b2c3d"));
        for bad in ["", "0a1b2c3", "0A1B2C3D", "../../etc", "0a1b2c3d/.."] {
            assert!(!is_build_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_file_in_a_later_directory_is_found_and_a_missing_one_is_not_fetched_without_servers() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let path = build_id_path(second.path(), "0a1b2c3d4e");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        let stats = Arc::new(DebugInfoStats::default());
        let info = DebugInfo::new(vec![first.path().to_owned(), second.path().to_owned()], stats);
        assert_eq!(info.lookup("0a1b2c3d4e"), Lookup::Found(path));
        assert_eq!(info.lookup("0a1b2c3d4f"), Lookup::Missing);
    }
}
