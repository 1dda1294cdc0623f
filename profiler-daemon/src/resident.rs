//! Memory timelines: every profiled process's resident memory, read from `/proc/PID/statm` at
//! a fixed interval on a thread of its own, and counted into the windows like any sample, so
//! that timelines share the store's retention, rollups and labels.
//!
//! A reading becomes two samples of kind [`SampleKind::Resident`] under the process's labels:
//! one on the stack `[anonymous]` and one on `[file and shared]`, each worth its bytes. A
//! window (or a rollup) then holds, per process, the number of readings and the sum of their
//! bytes, so the mean resident memory over any stored range is exact, and the finest timeline
//! has one point per window.
//!
//! Each container of those processes is read too, from its cgroup (v2): `memory.current`, all
//! the memory charged to it, of which `memory.stat`'s `anon` is the anonymous part. A container's
//! readings are counted under labels with pid 0 and the container's labels, so that its
//! timeline is one series next to those of its processes.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::FileExt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::info;

use crate::{
    aggregate::{Frame, Labels, SampleKind, Stack, StackSample},
    stats::{DropReason, PipelineStats},
    symbolize::Work,
};

/// The stack of the anonymous part of a reading (heap, stacks, private mappings).
pub const ANON_FRAME: &str = "[anonymous]";
/// The stack of the file-backed and shared part (mapped files, shared memory).
pub const FILE_FRAME: &str = "[file and shared]";

/// The processes to read, published by the collector: (pid, process labels).
pub type Targets = Arc<Mutex<Vec<(u32, Arc<Labels>)>>>;

/// The latest reading of each process, for metrics.
pub type Latest = Arc<Mutex<Vec<(Arc<Labels>, Statm)>>>;

/// One reading of `/proc/PID/statm`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statm {
    /// Resident memory.
    pub resident: u64,
    /// Of it, file-backed and shared pages.
    pub shared: u64,
}

impl Statm {
    /// Parses the text of `statm` (sizes in pages of `page_size` bytes).
    pub fn parse(text: &str, page_size: u64) -> Option<Statm> {
        let mut fields = text.split_ascii_whitespace().skip(1).map(|f| f.parse::<u64>().ok());
        let resident = fields.next()??.saturating_mul(page_size);
        let shared = fields.next()??.saturating_mul(page_size);
        Some(Statm { resident, shared: shared.min(resident) })
    }

    /// Anonymous resident memory.
    pub fn anonymous(&self) -> u64 {
        self.resident - self.shared
    }
}

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The memory of the cgroup at `dir` (a cgroup v2 directory): `memory.current`, with
/// `memory.stat`'s `anon` as the anonymous part and the rest (page cache, shared memory, kernel
/// memory) as the other. `None` without a memory controller there.
pub fn read_cgroup(dir: &std::path::Path) -> Option<Statm> {
    let current = std::fs::read_to_string(dir.join("memory.current")).ok()?;
    let current: u64 = current.trim().parse().ok()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let anon = stat
        .lines()
        .find_map(|l| l.strip_prefix("anon ")?.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(current);
    Some(Statm { resident: current, shared: current - anon })
}

/// The labels of the container of `process`: pid 0, its container id, pod and cgroup.
pub fn container_labels(process: &Labels) -> Labels {
    Labels {
        pid: 0,
        comm: "[container]".into(),
        cgroup: process.cgroup.clone(),
        container: process.container.clone(),
        pod_uid: process.pod_uid.clone(),
        pod: process.pod.clone(),
        namespace: process.namespace.clone(),
        container_name: process.container_name.clone(),
        ..Labels::default()
    }
}

/// The containers of `targets`, once each: their labels, by cgroup path.
fn containers(targets: &[(u32, Arc<Labels>)]) -> Vec<Arc<Labels>> {
    let mut seen = HashSet::new();
    targets
        .iter()
        .filter(|(_, l)| !l.container.is_empty() && seen.insert(l.cgroup.clone()))
        .map(|(_, l)| Arc::new(container_labels(l)))
        .collect()
}

/// Reads process `pid`'s `statm`; `None` once it has exited (or is a zombie, whose memory is
/// gone).
#[cfg(test)]
fn read_statm(pid: u32, page_size: u64) -> Option<Statm> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    Statm::parse(&text, page_size).filter(|s| s.resident > 0)
}

/// The `statm` files of the processes read, kept open and read again from their start each
/// time: opening a `/proc` file (a path walk through procfs) costs more than reading it.
#[derive(Debug, Default)]
struct StatmFiles {
    files: HashMap<u32, std::fs::File>,
    buf: Vec<u8>,
}

impl StatmFiles {
    /// Process `pid`'s reading; `None` once it has exited. A file whose process is gone reads
    /// as zeros and is closed, so that a new process under the pid is opened afresh.
    fn read(&mut self, pid: u32, page_size: u64) -> Option<Statm> {
        let file = match self.files.entry(pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(std::fs::File::open(format!("/proc/{pid}/statm")).ok()?)
            }
        };
        self.buf.resize(128, 0);
        let statm = match file.read_at(&mut self.buf, 0) {
            Ok(n) => std::str::from_utf8(&self.buf[..n])
                .ok()
                .and_then(|text| Statm::parse(text, page_size))
                .filter(|s| s.resident > 0),
            _ => None,
        };
        if statm.is_none() {
            self.files.remove(&pid);
        }
        statm
    }

    /// Closes the files of processes no longer read.
    fn retain(&mut self, pids: &HashSet<u32>) {
        self.files.retain(|pid, _| pids.contains(pid));
    }
}

/// The two samples of one reading.
pub fn samples(
    labels: &Arc<Labels>,
    statm: Statm,
    time_ns: i64,
    frames: &Frames,
) -> [StackSample; 2] {
    let sample = |stack: &Stack, value| StackSample {
        time_ns,
        labels: labels.clone(),
        stack: stack.clone(),
        kind: SampleKind::Resident,
        value,
        tid: 0,
    };
    [sample(&frames.anonymous, statm.anonymous()), sample(&frames.file, statm.shared)]
}

/// The two stacks readings are counted on.
#[derive(Debug)]
pub struct Frames {
    anonymous: Stack,
    file: Stack,
}

impl Default for Frames {
    fn default() -> Self {
        let stack = |name| -> Stack { vec![Arc::new(Frame::marker(name))].into() };
        Frames { anonymous: stack(ANON_FRAME), file: stack(FILE_FRAME) }
    }
}

/// Starts the reader thread: every `interval`, reads each of `targets` and queues the readings
/// on `output` without waiting (what a full queue refuses is counted). It holds no sender, so
/// the queue still closes when the collector stops, and then the thread ends.
pub fn spawn(
    targets: Targets,
    latest: Latest,
    interval: Duration,
    output: mpsc::WeakSender<Work>,
    stats: Arc<PipelineStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: sysconf has no memory arguments.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    std::thread::Builder::new().name("resident".into()).spawn(move || {
        let frames = Frames::default();
        let mut files = StatmFiles::default();
        let mut next = Instant::now() + interval;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += interval;
            if next < Instant::now() {
                // Fell behind (the machine was suspended, or reads were slow): skip ahead.
                next = Instant::now() + interval;
            }
            let Some(output) = output.upgrade() else { break };
            let list = targets.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let time_ns = crate::clock::now_ns();
            let mut readings = Vec::with_capacity(list.len() * 2);
            let mut now = Vec::with_capacity(list.len());
            files.retain(&list.iter().map(|(pid, _)| *pid).collect());
            for (pid, labels) in &list {
                if let Some(statm) = files.read(*pid, page_size) {
                    readings.extend(samples(labels, statm, time_ns, &frames));
                    now.push((labels.clone(), statm));
                }
            }
            for labels in containers(&list) {
                let dir =
                    std::path::Path::new(CGROUP_ROOT).join(labels.cgroup.trim_start_matches('/'));
                if let Some(memory) = read_cgroup(&dir) {
                    readings.extend(samples(&labels, memory, time_ns, &frames));
                }
            }
            *latest.lock().unwrap_or_else(PoisonError::into_inner) = now;
            if readings.is_empty() {
                continue;
            }
            match output.try_send(Work::Resolved(readings)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => stats.record_drop(DropReason::SymbolizerQueueFull),
                Err(TrySendError::Closed(_)) => break,
            }
        }
        info!("resident memory reader stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_is_read_in_bytes_and_split_into_anonymous_and_shared() {
        let s = Statm::parse("5000 300 100 20 0 400 0\n", 4096).unwrap();
        assert_eq!(s, Statm { resident: 300 * 4096, shared: 100 * 4096 });
        assert_eq!(s.anonymous(), 200 * 4096);
        // A damaged line is refused; shared never exceeds resident.
        assert_eq!(Statm::parse("5000", 4096), None);
        assert_eq!(Statm::parse("5000 x 1", 4096), None);
        assert_eq!(Statm::parse("1 2 3", 4096).unwrap().anonymous(), 0);
    }

    #[test]
    fn a_containers_cgroup_is_read_once_for_all_its_processes() {
        let root = tempfile::tempdir().unwrap();
        let id = "4f3a".repeat(16);
        let cgroup = format!("/system.slice/docker-{id}.scope");
        let dir = root.path().join(cgroup.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "104857600\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 73400320\nfile 31457280\nkernel 0\n")
            .unwrap();
        let memory = read_cgroup(&dir).unwrap();
        assert_eq!(memory, Statm { resident: 100 << 20, shared: 30 << 20 });
        assert_eq!(memory.anonymous(), 70 << 20);
        // Without a memory controller (cgroup v1 hosts, or a cgroup gone): nothing.
        assert_eq!(read_cgroup(root.path()), None);

        let process = |pid, container: &str, cgroup: &str| {
            let labels = Labels {
                pid,
                comm: "api".into(),
                cgroup: cgroup.into(),
                container: container.into(),
                pod: "api-7f9c".into(),
                namespace: "default".into(),
                ..Labels::default()
            };
            (pid, Arc::new(labels))
        };
        let targets =
            [process(10, &id, &cgroup), process(11, &id, &cgroup), process(12, "", "/user.slice")];
        let found = containers(&targets);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].pid, &*found[0].container), (0, id.as_str()));
        assert_eq!((&*found[0].pod, &*found[0].cgroup), ("api-7f9c", cgroup.as_str()));
    }

    #[test]
    fn this_process_has_resident_memory() {
        let s = read_statm(std::process::id(), 4096).unwrap();
        assert!(s.resident > 1 << 20 && s.shared <= s.resident, "{s:?}");
        assert_eq!(read_statm(u32::MAX, 4096), None);
    }

    #[test]
    fn open_files_follow_their_process_and_close_when_it_is_gone() {
        let mut files = StatmFiles::default();
        let me = std::process::id();
        let first = files.read(me, 4096).unwrap();
        // Read again through the open file: this process grew in between.
        let grown = vec![1u8; 64 << 20];
        let second = files.read(me, 4096).unwrap();
        assert!(
            second.resident >= first.resident + (60 << 20) / 4096 * 4096,
            "{first:?} {second:?}"
        );
        std::hint::black_box(&grown);
        // A process that exits reads as gone, and its file is closed.
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = child.id();
        assert!(files.read(pid, 4096).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(files.read(pid, 4096), None);
        assert!(!files.files.contains_key(&pid));
        files.retain(&HashSet::new());
        assert!(files.files.is_empty());
    }
}
