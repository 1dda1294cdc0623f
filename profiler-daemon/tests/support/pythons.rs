//! The CPython interpreters the Python tests run under: this machine's (Debian's static
//! python3.11, pyenv's shared-libpython builds), the ones `.ci/build-pythons` built into
//! `.cache/pythons`, and Debian's own 3.14 and 3.15 in the sid root that `.ci/sid-root` made,
//! which run there under `chroot` and are profiled from outside.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The interpreters the project promises to test. Under `CI=true` a missing one fails the
/// tests, unless setup recorded in `.cache/unserved` that the archive stopped serving it.
pub const PROMISED: [&str; 5] = ["3.9", "3.13", "3.13t", "3.14", "3.15"];

/// Where a workload file is put inside another root.
const WORKLOAD_DIR_IN_ROOT: &str = "/opt/profiler-tests";

/// One interpreter under test.
#[derive(Clone, Debug)]
pub struct Interpreter {
    /// `3.11`, or `3.13t` for a free-threaded build.
    pub version: String,
    /// The minor version.
    pub minor: u8,
    /// Built with `--disable-gil`.
    pub free_threaded: bool,
    /// The executable, by the path its process knows it by.
    pub exe: PathBuf,
    /// The root directory it runs in, when it is not this machine's.
    pub root: Option<PathBuf>,
}

impl Interpreter {
    /// A command that runs the interpreter (inside its root, if any) with `args`.
    pub fn command(&self) -> Command {
        match &self.root {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        }
    }

    /// The path of the test workload `name` (in `tests/workloads`) as the interpreter's process
    /// knows it; in another root, the file is copied there first.
    pub fn workload(&self, name: &str) -> PathBuf {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads").join(name);
        let Some(root) = &self.root else { return here };
        let own = Path::new(WORKLOAD_DIR_IN_ROOT).join(name);
        let there = root.join(own.strip_prefix("/").unwrap());
        std::fs::create_dir_all(there.parent().unwrap()).unwrap();
        std::fs::copy(&here, &there).unwrap();
        own
    }

    /// Whether this profiler walks this interpreter's Python frames.
    pub fn supported(&self) -> bool {
        profiler_daemon::python::is_supported(3, self.minor)
            && !(self.free_threaded && self.minor >= 14)
    }

    /// A name for messages: the executable, and its root.
    pub fn name(&self) -> String {
        match &self.root {
            Some(root) => format!(
                "{} (CPython {}, root {})",
                self.exe.display(),
                self.version,
                root.display()
            ),
            None => format!("{} (CPython {})", self.exe.display(), self.version),
        }
    }
}

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache")
}

/// Asks the interpreter its version; `None` when it does not run.
fn probe(exe: &Path, root: Option<&Path>) -> Option<Interpreter> {
    let mut it = Interpreter {
        version: String::new(),
        minor: 0,
        free_threaded: false,
        exe: exe.into(),
        root: root.map(Into::into),
    };
    let out = it
        .command()
        .args([
            "-c",
            "import sys, sysconfig; print(sys.version_info[1], int(bool(sysconfig.get_config_var('Py_GIL_DISABLED'))))",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    it.minor = words.next()?.parse().ok()?;
    it.free_threaded = words.next()? == "1";
    it.version = format!("3.{}{}", it.minor, if it.free_threaded { "t" } else { "" });
    Some(it)
}

/// `python3.X` or `python3.Xt`, X at least 9.
fn is_versioned_python(name: &str) -> bool {
    name.strip_prefix("python3.")
        .map(|m| m.strip_suffix('t').unwrap_or(m))
        .and_then(|m| m.parse::<u8>().ok())
        .is_some_and(|m| m >= 9)
}

/// Every interpreter found, after checking that the promised ones are there (see
/// [`PROMISED`]). Prints what it found.
pub fn interpreters() -> Vec<Interpreter> {
    let mut found = Vec::new();
    if let Some(it) = probe(Path::new("/usr/bin/python3.11"), None) {
        found.push(it);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let roots = [
        PathBuf::from(std::env::var("PYENV_ROOT").unwrap_or(format!("{home}/.pyenv")))
            .join("versions"),
        cache().join("pythons"),
    ];
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let Ok(bins) = std::fs::read_dir(dir.join("bin")) else { continue };
            let mut exes: Vec<PathBuf> = bins
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_versioned_python))
                .collect();
            exes.sort();
            found.extend(exes.into_iter().take(1).filter_map(|exe| probe(&exe, None)));
        }
    }
    // Canonical, as the kernel shows paths under it.
    let sid = cache().join("sid-root").canonicalize().unwrap_or_default();
    for minor in [14, 15] {
        let exe = PathBuf::from(format!("/usr/bin/python3.{minor}"));
        if sid.join(exe.strip_prefix("/").unwrap()).exists()
            && let Some(it) = probe(&exe, Some(&sid))
        {
            found.push(it);
        }
    }
    assert!(!found.is_empty(), "no CPython interpreter found to test");
    check_promised(&found);
    // While working on one version: PROFILER_TEST_PYTHONS=3.14,3.15 runs only those.
    if let Ok(only) = std::env::var("PROFILER_TEST_PYTHONS") {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "PROFILER_TEST_PYTHONS narrows the matrix, which CI must not do"
        );
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        found.retain(|it| only.contains(&it.version.as_str()));
        eprintln!("PROFILER_TEST_PYTHONS={}: running {} of them", only.join(","), found.len());
        assert!(!found.is_empty(), "PROFILER_TEST_PYTHONS matches no interpreter found");
    }
    found
}

/// One interpreter of each version, the first found: for the tests of what differs between
/// versions (frame layouts, the GIL, thread lists), whatever the interpreter's linking. The
/// tests of what depends on linking (symbols in the executable or in libpython, the call
/// probe, native frames under Python) run under every interpreter ([`interpreters`]).
pub fn one_per_version() -> Vec<Interpreter> {
    let mut seen = std::collections::HashSet::new();
    interpreters().into_iter().filter(|it| seen.insert(it.version.clone())).collect()
}

fn check_promised(found: &[Interpreter]) {
    let names: Vec<String> = found.iter().map(Interpreter::name).collect();
    eprintln!("CPython interpreters found: {}", names.join(", "));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    for version in PROMISED {
        if found.iter().any(|it| it.version == version) {
            continue;
        }
        let unserved = cache().join("unserved").join(version);
        match std::fs::read_to_string(&unserved) {
            Ok(why) => eprintln!(
                "!!! CPython {version} is NOT TESTED: the archive no longer serves it ({}) !!!",
                why.trim()
            ),
            Err(_) if ci => panic!(
                "CPython {version} is promised but missing; `make setup-tests` (.ci/build-pythons, .ci/sid-root) installs it"
            ),
            Err(_) => eprintln!(
                "warning: CPython {version} is missing, so it is not tested; `make setup-tests` installs it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names() {
        assert!(is_versioned_python("python3.13t") && is_versioned_python("python3.9"));
        assert!(!is_versioned_python("python3.8") && !is_versioned_python("python3.13-config"));
    }
}
