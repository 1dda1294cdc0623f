//! The running kernel's release, and the oldest release the kernel programs can run on.
//!
//! The programs need, by the upstream release that brought each: the BPF ring buffer and
//! `bpf_ktime_get_boot_ns` (5.8), `bpf_probe_read_user` (5.5), `bpf_get_stack` (4.18) and
//! kernel BTF (checked on its own, since a kernel can be new enough and built without it). A
//! release older than the newest of these is refused at start, with what it lacks named, rather
//! than failing later with a verifier log or an `EINVAL` from the map creation.

use std::{cmp::Ordering, fmt};

use thiserror::Error;

/// Where the running kernel's release string is read from (the `release` of `uname(2)`).
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// A kernel version, as the leading `MAJOR.MINOR[.PATCH]` of a release string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// The major number (6 in 6.1.0).
    pub major: u32,
    /// The minor number (1 in 6.1.0).
    pub minor: u32,
    /// The patch level (0 when the release has none).
    pub patch: u32,
}

impl KernelVersion {
    /// `major.minor.0`.
    pub const fn new(major: u32, minor: u32) -> KernelVersion {
        KernelVersion { major, minor, patch: 0 }
    }

    /// Parses the version at the start of a release string such as `6.12.117+deb13-amd64`,
    /// `5.15.0-119-generic` or `4.18.0-553.el8_10.x86_64`; `None` when it does not start with
    /// `MAJOR.MINOR`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release.trim().split('.').map(leading_number);
        let major = numbers.next()??;
        let minor = numbers.next()??;
        // A missing or non-numeric patch level ("6.8-rc1", "6.8") counts as 0.
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(KernelVersion { major, minor, patch })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The digits at the start of `s`, if there are any.
fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// A kernel feature the programs use, and the upstream release that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What the feature is, as a reader of the error would look it up.
    pub name: &'static str,
    /// The first upstream release with it.
    pub since: KernelVersion,
}

/// Every versioned feature the kernel programs need, oldest first.
pub const FEATURES: &[Feature] = &[
    Feature { name: "bpf_get_stack", since: KernelVersion::new(4, 18) },
    Feature { name: "bpf_probe_read_user", since: KernelVersion::new(5, 5) },
    Feature { name: "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)", since: KernelVersion::new(5, 8) },
    Feature { name: "bpf_ktime_get_boot_ns", since: KernelVersion::new(5, 8) },
];

/// The oldest release that has every feature in [`FEATURES`].
pub fn minimum() -> KernelVersion {
    FEATURES.iter().map(|f| f.since).max().unwrap_or(KernelVersion::new(0, 0))
}

/// Why the running kernel cannot run the programs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KernelError {
    /// The kernel is older than [`minimum`].
    #[error(
        "the running kernel is Linux {release}, which lacks {missing}; profilerd needs Linux \
         {minimum} or later (see the README's kernel table)"
    )]
    TooOld {
        /// The release string, as `uname -r` prints it.
        release: String,
        /// The missing features, each with the release that brought it.
        missing: String,
        /// The oldest release that has them all.
        minimum: KernelVersion,
    },
}

/// Checks a release string (as `uname -r` prints it) against [`FEATURES`]. A release whose
/// version cannot be parsed passes: a vendor naming scheme is no reason to refuse, and a
/// missing feature still fails at load time.
pub fn check_release(release: &str) -> Result<Option<KernelVersion>, KernelError> {
    let Some(version) = KernelVersion::parse(release) else {
        return Ok(None);
    };
    let missing: Vec<String> = FEATURES
        .iter()
        .filter(|f| version.cmp(&f.since) == Ordering::Less)
        .map(|f| format!("{} (Linux {}.{})", f.name, f.since.major, f.since.minor))
        .collect();
    if missing.is_empty() {
        Ok(Some(version))
    } else {
        Err(KernelError::TooOld {
            release: release.trim().to_owned(),
            missing: missing.join(", "),
            minimum: minimum(),
        })
    }
}

/// How much of a Python stack the kernel programs walk per sample. The verifier of an older
/// kernel explores every iteration of the walk's loops for every way into them and gives up
/// after a million instructions: Debian's 5.10 and 6.1 refuse the whole walk, 6.12 accepts it
/// (the kernel matrix). Older kernels get a shorter walk, which their verifier checks in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonWalk {
    /// Python frames walked per sample; a deeper stack is marked truncated.
    pub frames: u32,
    /// Thread states examined per sample while looking for the sampled thread; a search
    /// that runs out goes on at the thread's next sample.
    pub threads: u32,
}

/// The first release whose verifier accepts the whole Python walk.
pub const WHOLE_PYTHON_WALK: KernelVersion = KernelVersion::new(6, 12);

impl PythonWalk {
    /// The whole walk the programs are built for.
    pub const WHOLE: PythonWalk = PythonWalk {
        frames: profiler_common::python::MAX_PY_FRAMES as u32,
        threads: profiler_common::python::MAX_PY_THREADS as u32,
    };
    /// The shorter walk of kernels before [`WHOLE_PYTHON_WALK`].
    pub const SHORT: PythonWalk = PythonWalk { frames: 16, threads: 8 };

    /// The walk for a kernel of `version` (the whole walk when the version is unknown).
    pub fn for_kernel(version: Option<KernelVersion>) -> PythonWalk {
        match version {
            Some(v) if v < WHOLE_PYTHON_WALK => PythonWalk::SHORT,
            _ => PythonWalk::WHOLE,
        }
    }
}

// The shorter walk is shorter on both counts.
const _: () = assert!(
    PythonWalk::SHORT.frames < PythonWalk::WHOLE.frames
        && PythonWalk::SHORT.threads < PythonWalk::WHOLE.threads
);

/// The running kernel's release string, if it can be read.
pub fn running_release() -> Option<String> {
    std::fs::read_to_string(OSRELEASE).ok().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_6_12_walk_a_shorter_python_stack() {
        let walk = |release: &str| PythonWalk::for_kernel(KernelVersion::parse(release));
        assert_eq!(walk("5.10.0-32-amd64"), PythonWalk::SHORT);
        assert_eq!(walk("5.15.0-119-generic"), PythonWalk::SHORT);
        assert_eq!(walk("6.1.0-50-amd64"), PythonWalk::SHORT);
        assert_eq!(walk("6.12.117+deb13-amd64"), PythonWalk::WHOLE);
        assert_eq!(walk("6.18.0"), PythonWalk::WHOLE);
        assert_eq!(PythonWalk::for_kernel(None), PythonWalk::WHOLE);
    }

    #[test]
    fn parses_distribution_release_strings() {
        let v = |s| KernelVersion::parse(s).unwrap();
        assert_eq!(v("5.10.0-32-amd64"), KernelVersion { major: 5, minor: 10, patch: 0 });
        assert_eq!(v("6.12.117+deb13-amd64"), KernelVersion { major: 6, minor: 12, patch: 117 });
        assert_eq!(v("5.15.0-119-generic"), KernelVersion { major: 5, minor: 15, patch: 0 });
        assert_eq!(
            v("5.10.226-214.880.amzn2.x86_64"),
            KernelVersion { major: 5, minor: 10, patch: 226 }
        );
        assert_eq!(v("6.8-rc1"), KernelVersion { major: 6, minor: 8, patch: 0 });
        assert_eq!(v("7.2\n"), KernelVersion { major: 7, minor: 2, patch: 0 });
        assert_eq!(KernelVersion::parse("linux"), None);
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse(""), None);
    }

    #[test]
    fn the_minimum_is_the_ring_buffer_release() {
        assert_eq!(minimum(), KernelVersion::new(5, 8));
    }

    #[test]
    fn supported_releases_pass() {
        for release in [
            "5.8.0-63-generic",
            "5.10.0-32-amd64",
            "5.14.0-427.13.1.el9_4.x86_64",
            "6.1.0-50-arm64",
            "7.2.13+deb14-amd64",
            "10.0.0",
        ] {
            assert!(check_release(release).unwrap().is_some(), "{release}");
        }
    }

    #[test]
    fn an_old_release_is_refused_with_its_version_and_what_it_lacks() {
        let err = check_release("5.4.0-150-generic").unwrap_err();
        assert_eq!(
            err,
            KernelError::TooOld {
                release: "5.4.0-150-generic".into(),
                missing:
                    "bpf_probe_read_user (Linux 5.5), the BPF ring buffer (BPF_MAP_TYPE_RINGBUF) \
                      (Linux 5.8), bpf_ktime_get_boot_ns (Linux 5.8)"
                        .into(),
                minimum: KernelVersion::new(5, 8),
            }
        );
        let text = err.to_string();
        assert!(text.contains("Linux 5.4.0-150-generic"), "{text}");
        assert!(text.contains("needs Linux 5.8.0 or later"), "{text}");

        let err = check_release("5.7.19").unwrap_err().to_string();
        assert!(err.contains("lacks the BPF ring buffer"), "{err}");
        assert!(!err.contains("bpf_probe_read_user"), "{err}");
        let err = check_release("4.18.0-553.el8_10.x86_64").unwrap_err().to_string();
        assert!(err.contains("bpf_probe_read_user (Linux 5.5)"), "{err}");
        assert!(!err.contains("bpf_get_stack"), "{err}");
    }

    #[test]
    fn an_unparsable_release_is_not_refused() {
        assert_eq!(check_release("custom-kernel"), Ok(None));
    }
}
