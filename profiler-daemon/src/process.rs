//! Per-process facts: executable, command line, cgroup, build-ids and memory maps.
//!
//! A process is read from `/proc` on first sight, so that its facts survive its exit. User
//! addresses are normalized here to (file, offset) pairs, which is what symbols are cached by:
//! the same library in a thousand processes is symbolized once.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use procfs::process::{MMapPath, Process};
use tracing::debug;

use crate::{
    aggregate::{Labels, Module},
    host::{FileKey, file_key, own_path, process_root, readable_file},
    pods::PodDirectory,
    python::PythonProcess,
};

/// How often a process's maps may be re-read when an address falls outside them.
const MAPS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often an interpreter that was not initialized yet is looked at again; its samples lack
/// Python frames until then.
const PENDING_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// For this long after a process is first read, its executable is re-checked for an `execve`.
const YOUNG_PROCESS: Duration = Duration::from_secs(2);
/// How often a young process's maps may be read again for a caller outside them.
const YOUNG_MAPS_REFRESH: Duration = Duration::from_millis(100);
/// How often a young process's executable is re-checked.
const EXE_RECHECK: Duration = Duration::from_millis(20);
/// How long an exited process is kept, so that samples still in flight find it.
const EXITED_GRACE: Duration = Duration::from_secs(30);
/// Mapped files held open at most; each is one file descriptor. The daemon raises its
/// descriptor limit at start (`raise_open_files_limit`).
pub const MAX_HELD_FILES: usize = 16_384;
/// Thread label entries kept per process before the cache is reset.
const MAX_THREADS_PER_PROCESS: usize = 4096;

/// A file that some process maps executable code from.
#[derive(Debug)]
pub struct MappedFile {
    /// Device and inode.
    pub key: FileKey,
    /// Path and build-id, as shown in profiles.
    pub module: Arc<Module>,
    /// The file itself, opened when a process was first seen mapping it and kept open while
    /// any process in the table maps it: its symbols can then be read after the process has
    /// exited and the file was deleted or replaced. `None` when it could not be opened, or
    /// while [`MAX_HELD_FILES`] others are held.
    pub held: Option<std::fs::File>,
}

impl MappedFile {
    /// A path that opens this very file for as long as it is held.
    pub fn held_path(&self) -> Option<PathBuf> {
        self.held.as_ref().map(fd_path)
    }
}

/// The path through which this process opens its own descriptor of `file`.
fn fd_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A mapping of executable code from a file, as the process table lists it.
#[derive(Debug)]
pub struct FileMapping<'a> {
    /// Start address in the process.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Offset of `start` in the file.
    pub offset: u64,
    /// The file.
    pub file: &'a MappedFile,
}

/// A user address after normalization.
#[derive(Clone, Debug)]
pub enum UserAddr {
    /// Code in a file.
    File {
        /// The file.
        file: Arc<MappedFile>,
        /// Offset in the file.
        offset: u64,
        /// The address in the process.
        addr: u64,
    },
    /// Code outside any file (JIT, vdso, or an address no mapping covers).
    Anonymous {
        /// The address in the process.
        addr: u64,
        /// `[vdso]`, `[anon]`, `[heap]` or `[unmapped]`.
        region: &'static str,
    },
}

#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    target: MappingTarget,
}

#[derive(Debug)]
enum MappingTarget {
    File(Arc<MappedFile>),
    Region(&'static str),
}

/// What runs in a process.
#[derive(Clone, Debug)]
pub enum Runtime {
    /// Not looked at yet.
    Unknown,
    /// Native code only.
    Native,
    /// A CPython interpreter the kernel walks.
    Python(Arc<PythonProcess>),
    /// A CPython interpreter profiled natively only, and why.
    Unsupported(String),
    /// A CPython interpreter that was not initialized when last looked at.
    Pending(Instant),
    /// Being looked at by the inspector thread; native stacks until it answers.
    Inspecting,
}

impl Runtime {
    /// The runtime label of samples: `CPython 3.11.2` (or `CPython 3.9`), or empty.
    pub fn label(&self) -> String {
        match self {
            Runtime::Python(p) => p.short_name(),
            Runtime::Unsupported(_) => "CPython (native stacks only)".to_owned(),
            _ => String::new(),
        }
    }

    /// Whether detection should run (again) now.
    pub fn needs_detection(&self) -> bool {
        match self {
            Runtime::Unknown => true,
            Runtime::Pending(at) => at.elapsed() >= PENDING_RETRY_INTERVAL,
            _ => false,
        }
    }

    /// A one-line description for `Status`, or `None` for native processes.
    pub fn describe(&self) -> Option<String> {
        match self {
            Runtime::Python(p) => Some(p.to_string()),
            Runtime::Unsupported(why) => Some(format!("{why}; native stacks only")),
            Runtime::Pending(_) => Some("CPython, interpreter not initialized yet".to_owned()),
            Runtime::Inspecting => Some(
                "being inspected (its interpreter is starting, or its memory is slow to read)"
                    .to_owned(),
            ),
            Runtime::Unknown | Runtime::Native => None,
        }
    }
}

/// A process's pod and container, as the Kubernetes API names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNaming {
    /// Pod name.
    pub pod: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Container name, when the container id was listed.
    pub container: Option<Arc<str>>,
}

/// What is known about one process.
#[derive(Debug)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot; tells a reused pid apart.
    /// Start time and `execve` count, from the sample that introduced it (zeros when
    /// unknown).
    pub identity: Identity,
    pub start_time: u64,
    /// Process name.
    pub comm: Arc<str>,
    /// Executable path (empty when unreadable, for example for kernel threads).
    pub exe: Arc<str>,
    /// Command line, space separated.
    pub cmdline: String,
    /// cgroup v2 path.
    pub cgroup: Arc<str>,
    /// Container id from the cgroup path, or empty.
    pub container: Arc<str>,
    /// Kubernetes pod UID from the cgroup path, or empty.
    pub pod_uid: Arc<str>,
    /// The pod's name and namespace and the container's name, once the Kubernetes API named
    /// them.
    pub pod: Option<PodNaming>,
    /// The pod directory listing last searched for this pod (0: none yet).
    pods_searched: u64,
    /// Build-id of the executable.
    pub exe_build_id: Option<Arc<str>>,
    /// What runs in the process, as far as the profiler can tell.
    pub runtime: Runtime,
    /// The main thread's name as the kernel reported it, to notice an `execve`.
    main_comm: Vec<u8>,
    read_at: Instant,
    exe_checked_at: Instant,
    maps: Vec<Mapping>,
    /// Changes with every new reading of `maps` (unique across processes).
    maps_generation: u64,
    maps_read_at: Instant,
    /// When [`read_process`] began, in nanoseconds of `CLOCK_BOOTTIME` (the samples' clock).
    read_boot_ns: i64,
    last_seen: Instant,
    exited_at: Option<Instant>,
    threads: HashMap<u32, Arc<Labels>>,
}

impl ProcessInfo {
    /// Rough bytes it holds on the heap beyond its table entry: its maps, command line and
    /// threads' labels.
    fn heap_bytes(&self) -> usize {
        self.maps.capacity() * size_of::<Mapping>()
            + self.cmdline.capacity()
            + self.main_comm.capacity()
            + crate::caches::table_bytes::<(u32, Arc<Labels>)>(self.threads.len())
            + self.threads.values().map(|l| l.approx_bytes()).sum::<usize>()
    }

    /// Lets the next sample whose leaf is outside the maps have them read again at once,
    /// however recently they were read: maps read at an `execve` hold the program and its
    /// loader, not yet the libraries the loader is about to map.
    pub fn expect_new_mappings(&mut self) {
        if let Some(earlier) = Instant::now().checked_sub(MAPS_REFRESH_INTERVAL) {
            self.maps_read_at = earlier;
        }
    }

    /// Whether the process has probably called `execve` since it was read: its main thread's
    /// name changed, or (while it is young, when a fork is usually followed by an exec) its
    /// executable changed.
    fn exec_suspected(&mut self, tid: u32, comm: &[u8]) -> bool {
        if self.exited_at.is_some() {
            return false;
        }
        if tid == self.pid && !self.main_comm.is_empty() && self.main_comm != comm {
            return true;
        }
        if self.read_at.elapsed() < YOUNG_PROCESS && self.exe_checked_at.elapsed() >= EXE_RECHECK {
            self.exe_checked_at = Instant::now();
            let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok();
            let root = process_root(self.pid);
            return exe
                .is_some_and(|e| *own_path(root.as_deref(), &e).to_string_lossy() != *self.exe);
        }
        false
    }

    /// Whether the process is in a pod that the Kubernetes API has not named yet, and the pod
    /// directory has a listing this process has not been looked up in. The listing number is
    /// asked for only then: most processes are not in a pod, and this runs for every sample.
    pub fn awaits_pod_name(&self, directory_generation: impl FnOnce() -> u64) -> bool {
        let unnamed = match &self.pod {
            None => true,
            // A container that had not started when its pod was listed.
            Some(pod) => pod.container.is_none() && !self.container.is_empty(),
        };
        unnamed && !self.pod_uid.is_empty() && self.pods_searched < directory_generation()
    }

    /// Looks the process's pod up in `directory`; labels made from now on carry its names.
    /// Returns false when the pod is not listed (yet).
    pub fn name_pod(&mut self, directory: &PodDirectory) -> bool {
        self.pods_searched = directory.generation();
        let Some(pod) = directory.get(&self.pod_uid) else { return false };
        self.pod = Some(PodNaming {
            pod: pod.name.clone(),
            namespace: pod.namespace.clone(),
            container: pod.container_name(&self.container).cloned(),
        });
        self.threads.clear();
        true
    }

    /// Sets what runs in the process; labels made from now on carry it.
    pub fn set_runtime(&mut self, runtime: Runtime) {
        self.runtime = runtime;
        self.threads.clear();
    }

    /// The labels of thread `tid` named `thread_name`, grouped by thread or not.
    /// Whether the process was seen to exit.
    pub fn has_exited(&self) -> bool {
        self.exited_at.is_some()
    }

    pub fn labels(&mut self, tid: u32, thread_name: &[u8], by_thread: bool) -> Arc<Labels> {
        let tid = if by_thread { tid } else { 0 };
        if let Some(labels) = self.threads.get(&tid)
            && (!by_thread || labels.thread.as_bytes() == thread_name)
        {
            return labels.clone();
        }
        if self.threads.len() >= MAX_THREADS_PER_PROCESS {
            self.threads.clear();
        }
        let labels = Arc::new(Labels {
            pid: self.pid,
            tid,
            comm: self.comm.clone(),
            thread: if by_thread { String::from_utf8_lossy(thread_name).into() } else { "".into() },
            exe: self.exe.clone(),
            cgroup: self.cgroup.clone(),
            container: self.container.clone(),
            pod_uid: self.pod_uid.clone(),
            pod: self.pod.as_ref().map_or_else(|| "".into(), |p| p.pod.clone()),
            namespace: self.pod.as_ref().map_or_else(|| "".into(), |p| p.namespace.clone()),
            container_name: self
                .pod
                .as_ref()
                .and_then(|p| p.container.clone())
                .unwrap_or_else(|| "".into()),
            runtime: self.runtime.label().into(),
            reason: "".into(),
            gil: "".into(),
        });
        self.threads.insert(tid, labels.clone());
        labels
    }

    /// Changes whenever the process's mappings are read again.
    pub fn maps_generation(&self) -> u64 {
        self.maps_generation
    }

    /// The process's mappings of executable code from files.
    pub fn file_mappings(&self) -> impl Iterator<Item = FileMapping<'_>> {
        self.maps.iter().filter_map(|m| match &m.target {
            MappingTarget::File(file) => {
                Some(FileMapping { start: m.start, end: m.end, offset: m.offset, file })
            }
            MappingTarget::Region(_) => None,
        })
    }

    fn lookup(&self, addr: u64) -> Option<UserAddr> {
        let idx = self.maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
        let m = &self.maps[idx];
        if addr >= m.end {
            return None;
        }
        Some(match &m.target {
            MappingTarget::File(file) => {
                UserAddr::File { file: file.clone(), offset: addr - m.start + m.offset, addr }
            }
            MappingTarget::Region(region) => UserAddr::Anonymous { addr, region },
        })
    }
}

/// Who a process is, beyond its pid: when it started and how many times it called `execve`,
/// as the kernel program reads them at each sample. Pids are reused, and `execve` replaces the
/// program under the same pid, so a sample whose identity differs from the tracked process's
/// belongs to a new process. All zero when the kernel could not tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The group leader's `start_boottime`, nanoseconds since boot.
    pub start_ns: u64,
    /// The group leader's `self_exec_id`.
    pub exec_id: u32,
}

impl Identity {
    /// Whether the kernel gave an identity.
    pub fn is_known(&self) -> bool {
        self.start_ns != 0
    }

    /// The start time in clock ticks since boot, as `/proc/PID/stat` field 22 gives it.
    fn start_ticks(&self) -> u64 {
        // SAFETY: sysconf has no memory arguments.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
        self.start_ns / (1_000_000_000 / hz)
    }
}

/// Every process seen recently, and the files they map.
#[derive(Debug)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
    /// Pids dropped to make room, not yet reported by `sweep`.
    evicted: Vec<u32>,
    files: HashMap<FileKey, Arc<MappedFile>>,
    max_processes: usize,
}

impl ProcessTable {
    /// An empty table that tracks at most `max_processes` processes.
    pub fn new(max_processes: usize) -> ProcessTable {
        ProcessTable {
            procs: HashMap::new(),
            evicted: Vec::new(),
            files: HashMap::new(),
            max_processes,
        }
    }

    /// Processes tracked.
    pub fn publish(&self, caches: &crate::caches::Caches) {
        use crate::caches::{estimate, table_bytes};
        let processes =
            estimate(self.procs.values().map(ProcessInfo::heap_bytes), self.procs.len());
        // The files their maps point to (kept only while a process maps them).
        let files = estimate(
            self.files.values().map(|f| crate::aggregate::arc_bytes(f.module.path.len())),
            self.files.len(),
        );
        caches.set(
            "processes",
            self.procs.len(),
            self.max_processes,
            table_bytes::<(u32, ProcessInfo)>(self.procs.len())
                + processes
                + table_bytes::<(FileKey, Arc<MappedFile>)>(self.files.len())
                + files,
        );
    }

    /// Processes tracked.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no process is tracked.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Files tracked.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// The process `pid`, read from `/proc` on first sight. `comm` (from the sample of thread
    /// `tid`) names it when it has already exited. A sample with another `identity` than the
    /// tracked process's is of a new process under a reused pid, or of a new program after an
    /// `execve`: the old entry is forgotten (and reported by `sweep`, so that what was
    /// registered for it goes too) and the process is read again. Without an identity from the
    /// kernel, a main thread whose name changed is taken as the sign of an `execve`.
    pub fn observe(
        &mut self,
        pid: u32,
        tid: u32,
        comm: &[u8],
        identity: Identity,
    ) -> &mut ProcessInfo {
        self.observe_at(pid, tid, comm, identity, 0)
    }

    /// [`ProcessTable::observe`] for a sample taken at `sample_ns` (`CLOCK_BOOTTIME`).
    ///
    /// A process that is new to the table is often first sampled inside its `execve` (a page
    /// fault of the forked child), and read at once; when its first sample after the `execve`
    /// arrives, a short-lived program may have exited already, and reading it again finds
    /// nothing. If the first read began after that sample was taken, it was after the
    /// `execve` too, and what it found is the new program's: it is kept.
    pub fn observe_at(
        &mut self,
        pid: u32,
        tid: u32,
        comm: &[u8],
        identity: Identity,
        sample_ns: i64,
    ) -> &mut ProcessInfo {
        let replaced = self.procs.get_mut(&pid).is_some_and(|p| {
            if identity.is_known() { p.identity != identity } else { p.exec_suspected(tid, comm) }
        });
        let mut before_exec = None;
        if replaced {
            let old = self.procs.remove(&pid);
            self.evicted.push(pid);
            before_exec = old.filter(|old| {
                identity.is_known()
                    && old.identity.start_ns == identity.start_ns
                    && sample_ns > 0
                    && old.read_boot_ns > sample_ns
            });
        }
        if !self.procs.contains_key(&pid) && self.procs.len() >= self.max_processes {
            let forgotten = self.sweep();
            self.evicted.extend(forgotten);
            if self.procs.len() >= self.max_processes {
                // Still full of live processes: forget the one seen longest ago.
                if let Some(&oldest) =
                    self.procs.iter().min_by_key(|(_, p)| p.last_seen).map(|(k, _)| k)
                {
                    self.procs.remove(&oldest);
                    self.evicted.push(oldest);
                }
            }
        }
        let files = &mut self.files;
        let info = self.procs.entry(pid).or_insert_with(|| {
            let fresh = read_process(pid, comm, identity, files);
            match before_exec {
                Some(read_after_exec) if fresh.exited_at.is_some() => {
                    ProcessInfo { identity, exited_at: fresh.exited_at, ..read_after_exec }
                }
                _ => fresh,
            }
        });
        if tid == pid && info.main_comm.is_empty() {
            info.main_comm = comm.to_vec();
        }
        info.last_seen = Instant::now();
        info
    }

    /// Normalizes `addrs` (leaf first) of process `pid`, re-reading its maps (at most once a
    /// second) when the leaf falls outside them, as after a `dlopen`. Only the leaf is a sure
    /// instruction address: in code built without frame pointers the callers are whatever the
    /// frame-pointer walk found on the stack, and re-reading the maps for those would cost a
    /// `/proc` read per process every second for nothing.
    pub fn normalize(&mut self, pid: u32, addrs: &[u64]) -> Vec<UserAddr> {
        let Some(info) = self.procs.get_mut(&pid) else {
            return addrs
                .iter()
                .map(|&addr| UserAddr::Anonymous { addr, region: "[unmapped]" })
                .collect();
        };
        let leaf_missing = addrs.first().is_some_and(|&leaf| info.lookup(leaf).is_none());
        // A young process's maps may have been read inside its `execve`, after the kernel
        // mapped the program and before the loader mapped its libraries: then the leaf is
        // known and the callers in the C library are not. For a young process a caller
        // outside the maps has them read again too, at most every YOUNG_MAPS_REFRESH.
        let young = info.read_at.elapsed() < YOUNG_PROCESS;
        let caller_missing =
            young && addrs.iter().skip(1).any(|&addr| addr != 0 && info.lookup(addr).is_none());
        let interval = if young { YOUNG_MAPS_REFRESH } else { MAPS_REFRESH_INTERVAL };
        if (leaf_missing || caller_missing)
            && info.exited_at.is_none()
            && info.maps_read_at.elapsed() >= interval
        {
            if let Ok(maps) = read_maps(pid, &mut self.files) {
                info.maps = maps;
                info.maps_generation = next_maps_generation();
            }
            info.maps_read_at = Instant::now();
        }
        addrs
            .iter()
            .map(|&addr| {
                info.lookup(addr).unwrap_or(UserAddr::Anonymous { addr, region: "[unmapped]" })
            })
            .collect()
    }

    /// Process `pid`, if tracked.
    pub fn get_mut(&mut self, pid: u32) -> Option<&mut ProcessInfo> {
        self.procs.get_mut(&pid)
    }

    /// Every tracked process.
    pub fn iter(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.procs.values()
    }

    /// Marks exited processes and forgets those that exited a while ago. A pid that was reused
    /// by a new process is forgotten at once. Returns the pids forgotten.
    pub fn sweep(&mut self) -> Vec<u32> {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&mut self, now: Instant) -> Vec<u32> {
        let mut forgotten = std::mem::take(&mut self.evicted);
        self.procs.retain(|&pid, info| {
            if info.exited_at.is_none() {
                match read_start_time(pid) {
                    Some(start) if start == info.start_time => return true,
                    Some(_) => {
                        forgotten.push(pid);
                        return false;
                    }
                    None => info.exited_at = Some(now),
                }
            }
            let keep = info.exited_at.is_some_and(|t| now.duration_since(t) < EXITED_GRACE);
            if !keep {
                forgotten.push(pid);
            }
            keep
        });
        // A pid dropped after an `execve` is tracked again as the new program, which now owns
        // the pid and everything registered under it.
        forgotten.retain(|pid| !self.procs.contains_key(pid));
        // Files no process maps any more.
        self.files.retain(|_, f| Arc::strong_count(f) > 1);
        // A hash table keeps the capacity of its largest size: after a burst of short-lived
        // processes, that was tens of MiB of empty slots for good.
        shrink_after_sweep(&mut self.procs);
        shrink_after_sweep(&mut self.files);
        forgotten
    }
}

/// Gives back most of `map`'s capacity once it holds under a quarter of it.
fn shrink_after_sweep<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    const KEEP: usize = 256;
    if map.capacity() > 4 * map.len().max(KEEP) {
        map.shrink_to(2 * map.len().max(KEEP));
    }
}

fn read_start_time(pid: u32) -> Option<u64> {
    Process::new(pid as i32).and_then(|p| p.stat()).ok().map(|s| s.starttime)
}

fn read_process(
    pid: u32,
    comm: &[u8],
    identity: Identity,
    files: &mut HashMap<FileKey, Arc<MappedFile>>,
) -> ProcessInfo {
    let now = Instant::now();
    let mut info = ProcessInfo {
        pid,
        identity,
        start_time: 0,
        comm: String::from_utf8_lossy(comm).into(),
        exe: "".into(),
        cmdline: String::new(),
        cgroup: "".into(),
        container: "".into(),
        pod_uid: "".into(),
        pod: None,
        pods_searched: 0,
        exe_build_id: None,
        runtime: Runtime::Unknown,
        main_comm: Vec::new(),
        read_at: now,
        exe_checked_at: now,
        maps: Vec::new(),
        maps_generation: next_maps_generation(),
        maps_read_at: now,
        read_boot_ns: crate::clock::boot_ns(),
        last_seen: now,
        exited_at: None,
        threads: HashMap::new(),
    };
    let Ok(process) = Process::new(pid as i32) else {
        info.exited_at = Some(now);
        return info;
    };
    match process.stat() {
        Ok(stat) if identity.is_known() && stat.starttime != identity.start_ticks() => {
            // The sampled process is gone and its pid already belongs to another: what /proc
            // says now is not about the sampled process.
            info.exited_at = Some(now);
            return info;
        }
        Ok(stat) => {
            info.start_time = stat.starttime;
            info.comm = stat.comm.into();
        }
        Err(_) => {
            info.exited_at = Some(now);
            return info;
        }
    }
    let root = process_root(pid);
    if let Ok(exe) = process.exe() {
        info.exe = own_path(root.as_deref(), &exe).to_string_lossy().into();
    }
    if let Ok(cmdline) = process.cmdline() {
        info.cmdline = cmdline.join(" ");
    }
    if let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        info.cgroup = parse_cgroup_v2(&cgroup).into();
        let (container, pod_uid) = container_ids(&info.cgroup);
        info.container = container.into();
        info.pod_uid = pod_uid.into();
    }
    match read_maps(pid, files) {
        Ok(maps) => {
            info.maps = maps;
            info.maps_generation = next_maps_generation();
        }
        Err(e) => debug!(pid, error = %e, "reading maps failed"),
    }
    info.exe_build_id = info
        .maps
        .iter()
        .filter_map(|m| match &m.target {
            MappingTarget::File(f) if *f.module.path == *info.exe => f.module.build_id.clone(),
            _ => None,
        })
        .next();
    debug!(pid, comm = %info.comm, exe = %info.exe, cmdline = %info.cmdline, cgroup = %info.cgroup,
        build_id = info.exe_build_id.as_deref().unwrap_or(""), "new process");
    info
}

/// The container id and the Kubernetes pod UID in a cgroup path, each empty when absent.
///
/// Container runtimes name a container's cgroup after its 64-hex-digit id
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, or a bare `<id>`), and
/// the kubelet puts it under a pod's cgroup, `pod<uid>` (systemd driver: `...-pod<uid with _>.slice`).
pub fn container_ids(cgroup: &str) -> (String, String) {
    let mut container = String::new();
    let mut pod = String::new();
    for part in cgroup.split('/') {
        let stem =
            part.strip_suffix(".scope").or_else(|| part.strip_suffix(".slice")).unwrap_or(part);
        let id = stem.rsplit(['-', ':']).next().unwrap_or(stem);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            container = id.to_owned();
        } else if let Some(uid) =
            stem.strip_prefix("pod").or_else(|| stem.rsplit_once("-pod").map(|(_, uid)| uid))
        {
            let uid = uid.replace('_', "-");
            if uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                pod = uid;
            }
        }
    }
    (container, pod)
}

/// The cgroup v2 path from the contents of `/proc/PID/cgroup` (the `0::` line).
pub fn parse_cgroup_v2(contents: &str) -> &str {
    contents.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("")
}

fn read_maps(
    pid: u32,
    files: &mut HashMap<FileKey, Arc<MappedFile>>,
) -> procfs::ProcResult<Vec<Mapping>> {
    let maps = Process::new(pid as i32)?.maps()?;
    let root = process_root(pid);
    let mut out = Vec::new();
    for m in maps {
        // Only executable mappings can hold a sampled instruction pointer.
        if !m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            continue;
        }
        let target = match &m.pathname {
            MMapPath::Path(path) => {
                let key = FileKey { dev: makedev(m.dev), inode: m.inode };
                let held_files = files.len();
                let file = files.entry(key).or_insert_with(|| {
                    let path = own_path(root.as_deref(), path);
                    let held = (held_files < MAX_HELD_FILES)
                        .then(|| open_mapped(pid, m.address, &path, key))
                        .flatten();
                    Arc::new(MappedFile::new(pid, key, &path, held))
                });
                MappingTarget::File(file.clone())
            }
            MMapPath::Vdso => MappingTarget::Region("[vdso]"),
            MMapPath::Heap => MappingTarget::Region("[heap]"),
            _ => MappingTarget::Region("[anon]"),
        };
        out.push(Mapping { start: m.address.0, end: m.address.1, offset: m.offset, target });
    }
    out.sort_by_key(|m| m.start);
    Ok(out)
}

/// A number no earlier reading of any process's maps had.
fn next_maps_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn makedev((major, minor): (i32, i32)) -> u64 {
    ((major as u64) << 32) | (minor as u64 & 0xffff_ffff)
}

impl MappedFile {
    /// The file `key`, which process `pid` maps from `path`, with its build-id read from `held`
    /// (or else found through the process).
    pub(crate) fn new(
        pid: u32,
        key: FileKey,
        path: &Path,
        held: Option<std::fs::File>,
    ) -> MappedFile {
        let build_id = held
            .as_ref()
            .map(fd_path)
            .or_else(|| readable_file(pid, path, key))
            .and_then(|p| blazesym::helper::read_elf_build_id(&p).ok().flatten())
            .map(|id| hex(&id).into());
        let module = Arc::new(Module { path: path.to_string_lossy().into(), build_id });
        MappedFile { key, module, held }
    }
}

/// Opens the file that process `pid` maps at `start..end` from `path`: through the mapping itself
/// (`map_files`, which reaches a file already deleted), else through the process's root. A
/// file opened by path is kept only if it is still file `key`.
fn open_mapped(
    pid: u32,
    (start, end): (u64, u64),
    path: &Path,
    key: FileKey,
) -> Option<std::fs::File> {
    let mapping = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    std::fs::File::open(mapping)
        .ok()
        .or_else(|| readable_file(pid, path, key).and_then(|p| std::fs::File::open(p).ok()))
        .filter(|f| f.metadata().is_ok_and(|m| file_key(&m) == key))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::skip_under_qemu_user;

    #[test]
    fn container_and_pod_ids_come_from_the_cgroup_path() {
        let id = "4f1c0b8e2a9d4c7e8b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0e5c7d2a_1b3f_4c8e_9a6d_2f4b8c1e7a3d.slice/cri-containerd-{id}.scope"
        );
        assert_eq!(
            container_ids(&systemd),
            (id.to_owned(), "0e5c7d2a-1b3f-4c8e-9a6d-2f4b8c1e7a3d".to_owned())
        );
        let cgroupfs = format!("/kubepods/besteffort/pod0e5c7d2a-1b3f-4c8e-9a6d-2f4b8c1e7a3d/{id}");
        assert_eq!(container_ids(&cgroupfs).1, "0e5c7d2a-1b3f-4c8e-9a6d-2f4b8c1e7a3d");
        assert_eq!(container_ids(&format!("/system.slice/docker-{id}.scope")).0, id);
        assert_eq!(
            container_ids("/user.slice/user-0.slice/session-1.scope"),
            (String::new(), String::new())
        );
    }

    #[test]
    fn cgroup_v2_line_is_picked() {
        let contents = "12:cpu:/legacy\n0::/system.slice/app.service\n";
        assert_eq!(parse_cgroup_v2(contents), "/system.slice/app.service");
        assert_eq!(parse_cgroup_v2("3:memory:/x\n"), "");
    }

    #[test]
    fn own_process_normalizes_to_its_executable() {
        if skip_under_qemu_user(
            "own_process_normalizes_to_its_executable",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(16);
        let info = table.observe(pid, pid, b"test", Identity::default());
        assert!(
            info.exe.ends_with(
                &*std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()
            )
        );
        assert!(info.exe_build_id.is_some(), "rustc links a build-id");
        let addr = own_process_normalizes_to_its_executable as *const () as u64;
        let normalized = table.normalize(pid, &[addr, 8]);
        match &normalized[0] {
            UserAddr::File { file, offset, .. } => {
                assert_eq!(file.module.path, table.procs[&pid].exe);
                assert!(*offset > 0 && *offset < addr);
            }
            other => panic!("expected a file address, got {other:?}"),
        }
        assert!(matches!(normalized[1], UserAddr::Anonymous { region: "[unmapped]", .. }));
    }

    #[test]
    fn only_an_unknown_leaf_makes_the_maps_be_read_again() {
        if skip_under_qemu_user(
            "only_an_unknown_leaf_makes_the_maps_be_read_again",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(16);
        table.observe(pid, pid, b"test", Identity::default());
        let leaf = only_an_unknown_leaf_makes_the_maps_be_read_again as *const () as u64;
        let long_ago = Instant::now() - 2 * MAPS_REFRESH_INTERVAL;
        let info = table.procs.get_mut(&pid).unwrap();
        (info.maps_read_at, info.read_at) = (long_ago, Instant::now() - 2 * YOUNG_PROCESS);
        // A known leaf under a garbage caller, as a walk without frame pointers finds.
        table.normalize(pid, &[leaf, 6]);
        assert_eq!(table.procs[&pid].maps_read_at, long_ago);
        table.normalize(pid, &[6, leaf]);
        assert!(table.procs[&pid].maps_read_at > long_ago);
    }

    #[test]
    fn a_young_process_whose_callers_are_outside_its_maps_has_them_read_again() {
        if skip_under_qemu_user(
            "a_young_process_whose_callers_are_outside_its_maps_has_them_read_again",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(16);
        table.observe(pid, pid, b"test", Identity::default());
        let leaf = a_young_process_whose_callers_are_outside_its_maps_has_them_read_again
            as *const () as u64;
        // A caller in the C library, whose mapping the maps read inside an execve lack.
        let caller = libc_address();
        let info = table.procs.get_mut(&pid).unwrap();
        info.maps.retain(|m| !(m.start..m.end).contains(&caller));
        let read = Instant::now() - 2 * YOUNG_MAPS_REFRESH;
        info.maps_read_at = read;
        let normalized = table.normalize(pid, &[leaf, caller]);
        assert!(table.procs[&pid].maps_read_at > read, "read again");
        assert!(
            !matches!(normalized[1], UserAddr::Anonymous { region: "[unmapped]", .. }),
            "{:?}",
            normalized[1]
        );
    }

    /// An address in the C library's code.
    fn libc_address() -> u64 {
        unsafe extern "C" {
            fn getpid() -> i32;
        }
        getpid as *const () as u64
    }

    #[test]
    fn maps_read_at_an_execve_are_read_again_at_the_first_unknown_leaf() {
        if skip_under_qemu_user(
            "maps_read_at_an_execve_are_read_again_at_the_first_unknown_leaf",
            "the kernel's view of this process is qemu's executable and mappings",
        ) {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new(16);
        table.observe(pid, pid, b"test", Identity::default());
        let read = table.procs[&pid].maps_read_at;
        table.normalize(pid, &[6]);
        assert_eq!(table.procs[&pid].maps_read_at, read, "read a moment ago: not again");
        table.procs.get_mut(&pid).unwrap().expect_new_mappings();
        table.normalize(pid, &[6]);
        assert!(table.procs[&pid].maps_read_at > read, "read again at once");
    }

    #[test]
    fn labels_are_shared_per_thread_and_renamed_threads_get_new_ones() {
        let mut table = ProcessTable::new(16);
        let info = table.observe(std::process::id(), 0, b"test", Identity::default());
        let a = info.labels(7, b"worker", true);
        let b = info.labels(7, b"worker", true);
        assert!(Arc::ptr_eq(&a, &b));
        let renamed = info.labels(7, b"renamed", true);
        assert_eq!(&*renamed.thread, "renamed");
        let process_only = info.labels(7, b"worker", false);
        assert_eq!((process_only.tid, &*process_only.thread), (0, ""));
    }

    #[test]
    fn a_program_read_after_its_execve_keeps_what_was_read_once_it_has_exited() {
        if skip_under_qemu_user(
            "a_program_read_after_its_execve_keeps_what_was_read_once_it_has_exited",
            "the kernel's view of processes is qemu's",
        ) {
            return;
        }
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = child.id();
        let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        while !exe().ends_with("sleep") {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: sysconf has no memory arguments.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let start_ns = read_start_time(pid).unwrap() * (1_000_000_000 / hz);
        let (before, after) =
            (Identity { start_ns, exec_id: 1 }, Identity { start_ns, exec_id: 2 });
        // The first sample was taken inside the execve; the process is read after it.
        let exec_ns = crate::clock::boot_ns();
        let mut table = ProcessTable::new(16);
        let first = table.observe_at(pid, pid, b"test", before, exec_ns - 1_000);
        assert!(first.exe.ends_with("sleep") && !first.maps.is_empty());
        child.wait().unwrap();
        // The first sample after the execve (taken before that read) arrives once the program
        // has exited: what the read found is the program's.
        let kept = table.observe_at(pid, pid, b"sleep", after, exec_ns);
        assert_eq!(kept.identity, after);
        assert!(kept.exited_at.is_some());
        assert!(kept.exe.ends_with("sleep") && !kept.maps.is_empty(), "{kept:?}");
        // A later execve, sampled after every read: nothing to keep.
        let later = Identity { start_ns, exec_id: 3 };
        let gone = table.observe_at(pid, pid, b"sleep", later, crate::clock::boot_ns());
        assert!(gone.exited_at.is_some() && gone.maps.is_empty() && gone.exe.is_empty());
    }

    #[test]
    fn a_sample_of_another_process_under_the_same_pid_replaces_the_entry() {
        if skip_under_qemu_user(
            "a_sample_of_another_process_under_the_same_pid_replaces_the_entry",
            "the kernel's view of this process is qemu's",
        ) {
            return;
        }
        let pid = std::process::id();
        let ticks = read_start_time(pid).unwrap();
        // SAFETY: sysconf has no memory arguments.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let own = Identity { start_ns: ticks * (1_000_000_000 / hz), exec_id: 3 };
        let mut table = ProcessTable::new(16);
        let exe = table.observe(pid, pid, b"test", own).exe.clone();
        assert!(!exe.is_empty());
        // The same process after an execve: read again.
        let execed = Identity { exec_id: 4, ..own };
        assert_eq!(table.observe(pid, pid, b"test", execed).identity, execed);
        // A process that started 5 s later under this pid (reused): /proc describes another
        // process than the sampled one, so nothing is taken from it.
        let reused = Identity { start_ns: own.start_ns + 5_000_000_000, exec_id: 1 };
        let info = table.observe(pid, pid, b"other", reused);
        assert_eq!((info.identity, &*info.exe, &*info.comm), (reused, "", "other"));
        assert!(info.exited_at.is_some());
        // Samples without an identity keep whatever is tracked.
        assert_eq!(table.observe(pid, pid, b"other", Identity::default()).identity, reused);
        assert_eq!(table.observe(pid, pid, b"test", own).exe, exe);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_pid_read_again_after_an_exec_is_not_reported_as_forgotten() {
        let mut table = ProcessTable::new(16);
        let pid = std::process::id();
        table.observe(pid, pid, b"before-exec", Identity::default());
        // The main thread's new name means an exec: the process is read again.
        table.observe(pid, pid, b"after-exec", Identity::default());
        assert_eq!(table.len(), 1);
        assert!(!table.sweep().contains(&pid), "the live process keeps its registrations");
    }

    #[test]
    fn the_table_gives_back_its_room_once_a_burst_of_processes_is_forgotten() {
        let mut table = ProcessTable::new(1_000_000);
        // Pids above the kernel's limit (4,194,304): never alive, so read as exited.
        for pid in 5_000_000..5_050_000 {
            table.observe(pid, pid, b"short", Identity::default());
        }
        let own = std::process::id();
        table.observe(own, own, b"test", Identity::default());
        let grown = table.procs.capacity();
        assert!(grown >= 50_000, "{grown}");
        let forgotten = table.sweep_at(Instant::now() + EXITED_GRACE + Duration::from_secs(1));
        assert_eq!((forgotten.len(), table.len()), (50_000, 1));
        assert!(table.procs.capacity() <= 1024, "{} of {grown} slots kept", table.procs.capacity());
    }

    #[test]
    fn exited_processes_keep_their_facts_until_the_grace_period_ends() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // spawn may return before the child has called exec: glibc's posix_spawn relies on
        // vfork for that, and qemu-user runs vfork as a plain fork. Wait until it is sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "sleep\n" {
            assert!(Instant::now() < deadline, "the child never became sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut table = ProcessTable::new(16);
        assert_eq!(&*table.observe(pid, 0, b"sleep", Identity::default()).comm, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        table.sweep();
        assert_eq!(table.len(), 1, "kept for samples still in flight");
        assert_eq!(&*table.observe(pid, 0, b"sleep", Identity::default()).exe, "/usr/bin/sleep");
    }

    #[test]
    fn a_mapped_binary_is_held_open_after_its_process_exits_and_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("sleeper");
        std::fs::copy("/usr/bin/sleep", &copy).unwrap();
        let mut child = std::process::Command::new(&copy).arg("30").spawn().unwrap();
        let pid = child.id();
        // The kernel renames the process before it maps the new program: wait for its code.
        let mapped = || {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .unwrap()
                .lines()
                .any(|l| l.contains(" r-xp ") && l.ends_with("/sleeper"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mapped() {
            if Instant::now() >= deadline {
                child.kill().unwrap();
                panic!("the child never mapped its program");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut table = ProcessTable::new(16);
        let info = table.observe(pid, 0, b"sleeper", Identity::default());
        let exe = info.maps.iter().find_map(|m| match &m.target {
            MappingTarget::File(f) if f.module.path.ends_with("/sleeper") => Some(f.clone()),
            _ => None,
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let exe = exe.expect("the program's code is mapped");
        std::fs::remove_file(&copy).unwrap();
        let held = exe.held_path().expect("the mapped file is held open");
        assert_eq!(std::fs::read(held).unwrap(), std::fs::read("/usr/bin/sleep").unwrap());
        assert!(exe.module.build_id.is_some(), "Debian's sleep has a build-id");
    }
}
