//! The collector: a thread that takes the records the drain copied out of the ring buffer,
//! attaches process facts and normalized addresses, and hands samples to the symbolizer without
//! ever waiting on it. New processes are looked inside by the inspector thread, so that no
//! sample waits on another process's memory. The collector also owns the Python call probe: it
//! attaches it, reads its counts every second and enforces the call budget.
//!
//! ```text
//! ring buffer -> drain (task) -> collector (thread) -> symbolizer
//!                                   ^      |
//!                                   inspector (thread)
//! ```

pub mod copy_size;
pub mod drain;
pub mod inspect;
pub mod native;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use profiler_common::{
    counters::Counter,
    python::PyProcess,
    sample::{
        LEAF_WORDS, OomKill, RECORD_CPU, RECORD_MEMORY, RECORD_OFF_CPU, Record, SampleRecord,
    },
};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};
use tracing::{info, warn};

use self::{
    drain::{Inbox, Input},
    inspect::{Inspected, Inspector, Request},
};

use crate::{
    aggregate::{BlockEnd, SampleKind},
    calls::{CallProbes, CallTracker, CallsError},
    loader::{KernelCalls, KernelCounters, OffCpuScale},
    off_cpu::Budget,
    pods::PodNames,
    process::{Identity, ProcessInfo, ProcessTable, Runtime, UserAddr},
    python::Detection,
    resident::{Frames, Statm},
    stats::{DropReason, PipelineStats},
    symbolize::{RawBlock, RawCalls, RawStack, Work},
};

/// How often the kernel counters are mirrored and the call counts read.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);
/// How often exited processes are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Forgotten pids kept for the symbolizer while its queue is full; beyond it, the code cache's
/// own bounds drop what they leave.
const MAX_FORGET_PENDING: usize = 65_536;
/// Memory samples held back while their fault's page is not mapped yet, at most.
const MAX_UNMAPPED_FAULTS: usize = 4096;
/// How long after its sample was read such a fault is weighed again.
const UNMAPPED_FAULT_RETRY: Duration = Duration::from_millis(20);
/// How long it is held back at most.
const UNMAPPED_FAULT_WAIT: Duration = Duration::from_millis(500);

/// A memory sample whose fault had not mapped its page yet when it was read.
#[derive(Debug)]
pub struct UnmappedFault {
    seen: Instant,
    pid: u32,
    identity: Identity,
    addr: u64,
}

/// How long a call-count request waits for its process's inspection.
const CALLS_WAIT: Duration = Duration::from_secs(5);

/// Everything the collector owns.
#[derive(Debug)]
pub struct Collector {
    /// Process facts and maps.
    pub processes: ProcessTable,
    /// Label samples by thread id and name.
    pub by_thread: bool,
    /// CPU time of one perf-event sample, in nanoseconds.
    pub cpu_period_ns: u64,
    /// Queue to the symbolizer thread.
    pub output: mpsc::Sender<Work>,
    /// Shared counters.
    pub stats: Arc<PipelineStats>,
    /// Processes tracked, for `Status`.
    pub processes_gauge: Arc<AtomicU64>,
    /// Finds CPython interpreters, on its own thread.
    pub inspector: Inspector,
    /// Call-count requests waiting for their process's inspection.
    pub waiting: Waiting,
    /// The kernel's table of Python processes (absent in tests without BPF).
    pub py_procs: Option<aya::maps::HashMap<aya::maps::MapData, u32, PyProcess>>,
    /// Per-process runtime descriptions, for `Status`.
    pub runtimes: Arc<Mutex<Vec<RuntimeStatus>>>,
    /// Which processes have the call probe.
    pub calls: CallTracker,
    /// Attaches the call probe (the sampler; absent in tests without BPF).
    pub probes: Option<Box<dyn CallProbes>>,
    /// The kernel's call counts (absent in tests without BPF).
    pub py_calls: Option<KernelCalls>,
    /// Pod names from the Kubernetes API (absent outside a cluster).
    pub pods: Option<PodNames>,
    /// The off-CPU sampler's scale and budget (absent when it is off, and in tests).
    pub off_cpu: Option<(OffCpuScale, Budget)>,
    /// The processes whose resident memory is read, published every second.
    pub resident: Option<crate::resident::Targets>,
    /// The most recent OOM kills, for `Status`.
    pub oom_kills: Arc<crate::oom::KillLog>,
    /// Where functions sampled before they set up a frame record keep their return address.
    pub leaf_rules: crate::leaf::LeafRules,
    /// The processes whose stacks the kernel copies, and the unwinding of the copies.
    pub stack_copies: native::StackCopies,
    /// Tells the faults that mapped a huge page (absent without transparent huge pages).
    pub huge_pages: Option<crate::huge_pages::HugePages>,
    /// Memory samples whose fault had not mapped its page yet, oldest first.
    pub unmapped_faults: std::collections::VecDeque<(UnmappedFault, RawStack)>,
}

/// A request to the collector.
#[derive(Debug)]
pub enum Command {
    /// Turns call counting on or off for a process; answers with what was done.
    SetCalls {
        /// Process id.
        pid: u32,
        /// On or off.
        enable: bool,
        /// The answer.
        reply: oneshot::Sender<Result<String, CallsError>>,
    },
}

/// Where the answer to a call-count request goes.
type CallsReply = oneshot::Sender<Result<String, CallsError>>;

/// Call-count requests waiting for their process's inspection (empty at start).
#[derive(Debug, Default)]
pub struct Waiting(Vec<(u32, Instant, CallsReply)>);

/// One line of `Status` about a process's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub comm: String,
    /// For example `CPython 3.11.2, static, offsets from table`.
    pub description: String,
}

impl Collector {
    /// Handles one ring buffer record.
    pub fn handle(&mut self, record: &[u8]) {
        let record = match Record::parse(record) {
            Some(Record::Sample(record)) => record,
            Some(Record::OomKill(kill)) => {
                self.oom_kill(&kill);
                return;
            }
            Some(Record::Exec(exec)) => {
                // Read now, while the new program runs. It is looked inside (for a Python
                // runtime) at its first sample, once its loader has mapped its libraries.
                let identity = Identity { start_ns: exec.start_ns, exec_id: exec.exec_id };
                let time_ns = i64::try_from(exec.time_ns).unwrap_or(i64::MAX);
                let process = self.processes.observe_at(
                    exec.tgid,
                    exec.tid,
                    exec.comm_bytes(),
                    identity,
                    time_ns,
                );
                process.expect_new_mappings();
                // Its first samples copy the stack if its program needs it.
                self.stack_copies.update(process);
                return;
            }
            Some(Record::OffCpuEnd(end)) => {
                let end = BlockEnd {
                    tid: end.tid,
                    boot_ns: end.start_ns,
                    time_ns: crate::clock::boot_to_wall_ns(end.end_ns),
                };
                self.send(Work::BlockEnd(end));
                return;
            }
            None => {
                self.stats.record_drop(DropReason::MalformedRecord);
                return;
            }
        };
        let h = &record.header;
        let pid = h.tgid;
        let identity = Identity { start_ns: h.start_ns, exec_id: h.exec_id };
        let sample_ns = i64::try_from(h.time_ns).unwrap_or(i64::MAX);
        let process = self.processes.observe_at(pid, h.tid, h.comm_bytes(), identity, sample_ns);
        if process.runtime.needs_detection() {
            self.inspect(pid);
        }
        let Some(process) = self.processes.get_mut(pid) else { return };
        self.stack_copies.update(process);
        if let Some(names) = &self.pods
            && process.awaits_pod_name(|| names.generation())
            && !process.name_pod(&names.directory())
        {
            // A pod that started after the last listing.
            names.request_refresh();
        }
        let python = match &process.runtime {
            Runtime::Python(p) => Some(p.clone()),
            _ => None,
        };
        let labels = process.labels(h.tid, h.comm_bytes(), self.by_thread);
        // A fault whose page is not mapped yet is weighed again a little later.
        let mut unmapped_fault = false;
        let value = match h.kind {
            RECORD_CPU => self.cpu_period_ns,
            RECORD_MEMORY => match &mut self.huge_pages {
                Some(huge) => huge
                    .fault_bytes_if_mapped(pid, identity, h.addr, h.weight)
                    .unwrap_or_else(|| {
                        unmapped_fault = true;
                        h.weight
                    }),
                None => h.weight,
            },
            _ => 0,
        };
        let walked: Vec<u64> = record.user_stack().collect();
        let stack = self.stack_copies.user_stack(pid, &record, walked);
        let mut user = self.processes.normalize(h.tgid, &stack.addrs);
        if !stack.unwound {
            self.add_leaf_caller(pid, &record, &mut user);
        }
        let raw = RawStack {
            time_ns: crate::clock::boot_to_wall_ns(h.time_ns),
            labels,
            kernel: record.kernel_stack().collect(),
            user,
            python: python.map(|p| (p, record.python_stack().collect())),
            flags: h.flags,
            tid: h.tid,
            kind: match h.kind {
                RECORD_OFF_CPU => SampleKind::OffCpu,
                RECORD_MEMORY => SampleKind::Memory,
                _ => SampleKind::Cpu,
            },
            value,
            block: (h.kind == RECORD_OFF_CPU).then_some(RawBlock {
                boot_ns: h.time_ns,
                weight: h.weight,
                state: h.state,
            }),
        };
        if unmapped_fault && self.unmapped_faults.len() < MAX_UNMAPPED_FAULTS {
            let fault = UnmappedFault { seen: Instant::now(), pid, identity, addr: h.addr };
            self.unmapped_faults.push_back((fault, raw));
            return;
        }
        self.send(Work::Stack(pid, raw));
    }

    /// Publishes the sizes of its caches and tables (see [`crate::caches`]), after dropping
    /// what the memory budget asked for (see [`crate::budget`]).
    fn publish_caches(&mut self) {
        if let Some(fraction) = self.stats.caches.take_shed() {
            let dropped = self.leaf_rules.shed(fraction) + self.stack_copies.shed(fraction);
            self.stats.caches.count_shed(dropped);
            tracing::debug!(
                fraction,
                dropped,
                "collector caches shed entries for the memory budget"
            );
        }
        let caches = &self.stats.caches;
        self.processes.publish(caches);
        self.leaf_rules.publish(caches);
        self.stack_copies.publish(caches);
        let faults = self.unmapped_faults.len();
        let stack_bytes: usize = self.unmapped_faults.iter().map(|(_, raw)| raw.heap_bytes()).sum();
        caches.set(
            "faults awaiting their page",
            faults,
            MAX_UNMAPPED_FAULTS,
            faults * size_of::<(UnmappedFault, RawStack)>() + stack_bytes,
        );
    }

    /// Weighs again the faults whose page was not mapped when their sample was read, once
    /// [`UNMAPPED_FAULT_RETRY`] has passed, and sends them on; after [`UNMAPPED_FAULT_WAIT`]
    /// (or at the end, `all`) one still unmapped counts as the pages of its period.
    fn weigh_unmapped_faults(&mut self, all: bool) {
        while let Some((fault, _)) = self.unmapped_faults.front() {
            let age = fault.seen.elapsed();
            if !all && age < UNMAPPED_FAULT_RETRY {
                break;
            }
            let Some((fault, mut raw)) = self.unmapped_faults.pop_front() else { break };
            if let Some(huge) = &mut self.huge_pages {
                match huge.fault_bytes_if_mapped(fault.pid, fault.identity, fault.addr, raw.value) {
                    Some(bytes) => raw.value = bytes,
                    None if !all && age < UNMAPPED_FAULT_WAIT => {
                        self.unmapped_faults.push_front((fault, raw));
                        break;
                    }
                    None => {}
                }
            }
            self.send(Work::Stack(fault.pid, raw));
        }
    }

    /// Puts back the caller that the frame-pointer walk skips when the sampled function has
    /// not set up its frame record (see [`crate::leaf`]).
    fn add_leaf_caller(&mut self, pid: u32, record: &SampleRecord<'_>, user: &mut Vec<UserAddr>) {
        let Some(UserAddr::File { file, offset, .. }) = user.first() else { return };
        let (words, lr) = (record.leaf_words(), record.header.leaf_lr);
        if words == [0; LEAF_WORDS] && lr == 0 {
            return;
        }
        let rule = self.leaf_rules.rule(pid, file, *offset);
        let Some(caller) = crate::leaf::caller(rule, &words, lr) else { return };
        let walked = match user.get(1) {
            Some(UserAddr::File { addr, .. } | UserAddr::Anonymous { addr, .. }) => Some(*addr),
            None => None,
        };
        if walked != Some(caller) {
            let found = self.processes.normalize(pid, &[caller]);
            user.splice(1..1, found);
        }
    }

    /// Records an OOM kill under its victim's labels, and keeps it for `Status`.
    fn oom_kill(&mut self, kill: &OomKill) {
        let time_ns = crate::clock::boot_to_wall_ns(kill.time_ns);
        // The victim may be gone from /proc already: a process seen before keeps its labels.
        let process =
            self.processes.observe(kill.tgid, kill.tid, kill.comm_bytes(), Identity::default());
        let labels = process.labels(0, b"", false);
        // Its size at the kill is its timeline's last reading.
        let page = crate::loader::page_size();
        let [file, anon, shmem] = kill.rss_pages.map(|p| p.saturating_mul(page));
        let statm = Statm { resident: file + anon + shmem, shared: file + shmem };
        warn!(
            pid = kill.tgid,
            comm = %labels.comm,
            resident_mib = statm.resident >> 20,
            "the kernel killed a process for lack of memory"
        );
        self.oom_kills.record(&labels, time_ns, statm.resident);
        let mut samples = vec![crate::oom::sample(labels.clone(), kill.tid, time_ns)];
        if statm.resident > 0 {
            samples.extend(crate::resident::samples(&labels, statm, time_ns, &Frames::default()));
        }
        self.send(Work::Resolved(samples));
    }

    /// Tells the symbolizer that the processes `pids` are gone for good, so that their code
    /// objects leave its cache; what a full queue refused is kept for the next sweep (the
    /// cache's own bounds hold meanwhile).
    fn forget_code(&self, pids: &mut Vec<u32>) {
        if pids.is_empty() {
            return;
        }
        match self.output.try_send(Work::Forget(std::mem::take(pids))) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(Work::Forget(back))) => {
                *pids = back;
                pids.truncate(MAX_FORGET_PENDING);
            }
            Err(TrySendError::Full(_)) => {}
        }
    }

    /// Queues work for the symbolizer without waiting; a full queue is counted.
    fn send(&self, work: Work) {
        match self.output.try_send(work) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.record_drop(DropReason::SymbolizerQueueFull),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Asks the inspector what runs in process `pid` (tracked already). A full queue leaves
    /// the process to be asked about again at its next sample.
    fn inspect(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(pid) else { return };
        let request = Request { pid, identity: process.identity, exe: process.exe.clone() };
        if self.inspector.request(request) {
            process.set_runtime(Runtime::Inspecting);
        }
    }

    /// Takes the inspector's answers: registers each Python process with the kernel, attaches
    /// the call probe when every process gets it, and answers the call-count requests that
    /// waited for it.
    fn take_answers(&mut self) {
        while let Some(Inspected { pid, identity, detection }) = self.inspector.answers().next() {
            let Some(process) = self.processes.get_mut(pid) else { continue };
            // The pid's process changed while it was looked at: its own request is queued.
            if process.identity != identity || !matches!(process.runtime, Runtime::Inspecting) {
                continue;
            }
            let runtime = match detection {
                Detection::NotPython => {
                    // A pid seen again after an execve may still be registered.
                    if let Some(map) = &mut self.py_procs {
                        let _ = map.remove(&pid);
                    }
                    if let Some(probes) = self.probes.as_deref_mut() {
                        self.calls.forget(probes, pid);
                    }
                    Runtime::Native
                }
                Detection::Python(p) => {
                    if let Some(map) = &mut self.py_procs {
                        let mut entry = p.kernel_entry(identity.start_ns, identity.exec_id);
                        // Samples in the interpreter's own code copy no stack.
                        let text = process
                            .file_mappings()
                            .filter(|m| m.file.key == p.interpreter_file)
                            .map(|m| (m.start, m.end))
                            .reduce(|(s0, e0), (s1, e1)| (s0.min(s1), e0.max(e1)));
                        (entry.text_start, entry.text_end) = text.unwrap_or_default();
                        if let Err(e) = map.insert(pid, entry, 0) {
                            warn!(pid, error = %e, "registering a Python process failed");
                        }
                    }
                    info!(pid, comm = %process.comm, "{p}");
                    if self.calls.probes_new_processes()
                        && let Some(probes) = self.probes.as_deref_mut()
                        && let Err(e) = self.calls.enable(probes, pid, &p)
                    {
                        // After a refusal for privileges, once: the others are not tried.
                        warn!(pid, error = %e, "Python calls are not counted");
                    }
                    Runtime::Python(p)
                }
                Detection::Unsupported(why) => {
                    info!(pid, comm = %process.comm, "{why}; native stacks only");
                    Runtime::Unsupported(why.to_string())
                }
                Detection::NotReady => Runtime::Pending(Instant::now()),
            };
            process.set_runtime(runtime);
        }
        self.answer_waiting();
    }

    /// Answers the waiting call-count requests whose process was inspected, or has waited for
    /// too long.
    fn answer_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.waiting.0);
        for (pid, since, reply) in waiting {
            let inspecting = self
                .processes
                .get_mut(pid)
                .is_some_and(|p| matches!(p.runtime, Runtime::Inspecting));
            if !inspecting || since.elapsed() >= CALLS_WAIT {
                let _ = reply.send(self.enable_calls(pid));
            } else {
                self.waiting.0.push((pid, since, reply));
            }
        }
    }

    /// Turns call counting on or off for process `pid`; the answer goes to `reply`, once the
    /// process has been inspected.
    fn set_calls(&mut self, pid: u32, enable: bool, reply: CallsReply) {
        let Some(probes) = self.probes.as_deref_mut() else {
            let _ = reply.send(Err(CallsError::NotLoaded));
            return;
        };
        if !enable {
            let _ = reply.send(Ok(if self.calls.disable(probes, pid) {
                format!("stopped counting the calls of process {pid}")
            } else {
                format!("the calls of process {pid} were not being counted")
            }));
            return;
        }
        // The process may not have been sampled yet (it may be idle).
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            let _ = reply.send(Err(CallsError::NoProcess(pid)));
            return;
        };
        let process =
            self.processes.observe(pid, pid, comm.trim_end().as_bytes(), Identity::default());
        if process.runtime.needs_detection() {
            self.inspect(pid);
        }
        self.waiting.0.push((pid, Instant::now(), reply));
        self.answer_waiting();
    }

    /// Turns call counting on for process `pid`, once it was inspected.
    fn enable_calls(&mut self, pid: u32) -> Result<String, CallsError> {
        let Some(ProcessInfo { runtime, .. }) = self.processes.get_mut(pid) else {
            return Err(CallsError::NoProcess(pid));
        };
        match runtime {
            Runtime::Python(p) => {
                let p = p.clone();
                let probes = self.probes.as_deref_mut().ok_or(CallsError::NoProcess(pid))?;
                self.calls.enable(probes, pid, &p)?;
                Ok(format!("counting the calls of process {pid} ({p})"))
            }
            other => Err(CallsError::NotPython {
                pid,
                what: other.describe().unwrap_or_else(|| "a native process".to_owned()),
            }),
        }
    }

    /// Reads the kernel's call counts and sends the new ones on for naming.
    fn poll_calls(&mut self, elapsed: Duration) {
        let (Some(map), Some(probes)) = (&mut self.py_calls, self.probes.as_deref_mut()) else {
            return;
        };
        if !self.calls.has_work() {
            return;
        }
        let counts = map.read();
        if counts.is_empty() {
            return;
        }
        let poll = self.calls.poll(probes, counts, elapsed);
        for key in &poll.stale {
            map.remove(key);
        }
        for (pid, rate) in &poll.stopped {
            warn!(pid, rate = *rate as u64, "Python call counting stopped: over the call budget");
        }
        for deltas in poll.deltas {
            let Some(process) = self.processes.get_mut(deltas.pid) else { continue };
            let Runtime::Python(python) = &process.runtime else { continue };
            let raw =
                RawCalls { python: python.clone(), labels: process.labels(0, b"", false), deltas };
            if let Err(TrySendError::Full(_)) = self.output.try_send(Work::Calls(raw)) {
                self.stats.record_drop(DropReason::SymbolizerQueueFull);
            }
        }
    }

    /// Sets the off-CPU sampler's scale from the captures since the last reading.
    fn keep_off_cpu_budget(&mut self, totals: &[u64; Counter::COUNT as usize], elapsed: Duration) {
        let Some((scale, budget)) = &mut self.off_cpu else { return };
        let Some(new) = budget.update(totals[Counter::OffCpuCaptured as usize], elapsed) else {
            return;
        };
        match scale.set(new) {
            Ok(()) => self.stats.set_off_cpu_scale(new),
            Err(e) => warn!(error = %e, "setting the off-CPU scale failed"),
        }
    }

    /// Lists the live processes, with their process labels, for the resident memory reader.
    fn publish_resident_targets(&mut self) {
        let Some(targets) = &self.resident else { return };
        let pids: Vec<u32> =
            self.processes.iter().filter(|p| !p.has_exited()).map(|p| p.pid).collect();
        let list: Vec<_> = pids
            .into_iter()
            .filter_map(|pid| Some((pid, self.processes.get_mut(pid)?.labels(0, b"", false))))
            .collect();
        *targets.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = list;
    }

    fn publish_runtimes(&self) {
        let mut list: Vec<RuntimeStatus> = self
            .processes
            .iter()
            .filter_map(|p| {
                let mut description = p.runtime.describe()?;
                if let Some(calls) = self.calls.describe(p.pid) {
                    description = format!("{description}; {calls}");
                }
                Some(RuntimeStatus { pid: p.pid, comm: p.comm.to_string(), description })
            })
            .collect();
        list.sort_by_key(|r| r.pid);
        *self.runtimes.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = list;
    }

    /// Handles what the drain queues until it stops, on the calling thread; serves `commands`
    /// between inputs (the drain queues a mark every [`drain::DRAIN_INTERVAL`]).
    pub fn run(
        mut self,
        mut inbox: Inbox,
        counters: KernelCounters,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut counted_at = Instant::now();
        let mut swept_at = Instant::now();
        // Forgotten processes whose code objects are still to be dropped (the queue was full).
        let mut forgotten = Vec::new();
        while let Some(input) = inbox.recv() {
            while let Ok(Command::SetCalls { pid, enable, reply }) = commands.try_recv() {
                self.set_calls(pid, enable, reply);
            }
            self.take_answers();
            match input {
                Input::Records(batch) => batch.iter().for_each(|record| self.handle(record)),
                Input::Drained(at) => {
                    self.send(Work::Watermark(at));
                    self.stats.drained();
                }
                Input::Answers => {}
            }
            self.weigh_unmapped_faults(false);
            if counted_at.elapsed() >= COUNTERS_INTERVAL {
                let elapsed = counted_at.elapsed();
                counted_at = Instant::now();
                match counters.read() {
                    Ok(totals) => {
                        self.stats.set_kernel_counters(&totals);
                        self.keep_off_cpu_budget(&totals, elapsed);
                    }
                    Err(e) => warn!(error = %e, "reading the kernel counters failed"),
                }
                self.processes_gauge.store(self.processes.len() as u64, Relaxed);
                self.publish_caches();
                self.poll_calls(elapsed);
                self.publish_runtimes();
                self.publish_resident_targets();
            }
            if swept_at.elapsed() >= SWEEP_INTERVAL {
                swept_at = Instant::now();
                for pid in self.processes.sweep() {
                    if let Some(map) = &mut self.py_procs {
                        let _ = map.remove(&pid);
                    }
                    if let Some(probes) = self.probes.as_deref_mut() {
                        self.calls.forget(probes, pid);
                    }
                    self.stack_copies.forget(pid);
                    forgotten.push(pid);
                }
                self.forget_code(&mut forgotten);
            }
        }
        self.weigh_unmapped_faults(true);
        if let Ok(totals) = counters.read() {
            self.stats.set_kernel_counters(&totals);
        }
        // The last counts, so that a short run keeps them.
        self.poll_calls(counted_at.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use profiler_common::sample::SampleHeader;

    use crate::python::Detector;

    fn collector(capacity: usize) -> (Collector, mpsc::Receiver<Work>) {
        let (output, rx) = mpsc::channel(capacity);
        let collector = Collector {
            processes: ProcessTable::new(8),
            by_thread: true,
            cpu_period_ns: 10_000_000,
            output,
            stats: Arc::default(),
            processes_gauge: Arc::default(),
            inspector: Inspector::spawn(Detector::default(), || ()).unwrap(),
            waiting: Waiting::default(),
            py_procs: None,
            runtimes: Arc::default(),
            calls: CallTracker::new(crate::calls::CallsMode::Off, 1),
            probes: None,
            py_calls: None,
            pods: None,
            off_cpu: None,
            resident: None,
            oom_kills: Arc::default(),
            leaf_rules: crate::leaf::LeafRules::default(),
            stack_copies: native::StackCopies::default(),
            huge_pages: None,
            unmapped_faults: Default::default(),
        };
        (collector, rx)
    }

    fn record(tgid: u32, tid: u32) -> Vec<u8> {
        let mut header = SampleHeader {
            kind: RECORD_CPU,
            tgid,
            tid,
            kernel_len: 2,
            user_len: 1,
            ..SampleHeader::default()
        };
        header.comm[..6].copy_from_slice(b"worker");
        // SAFETY: SampleHeader is repr(C) plain data without padding.
        let mut bytes = unsafe {
            std::slice::from_raw_parts((&raw const header).cast::<u8>(), SampleHeader::SIZE)
        }
        .to_vec();
        for ip in [0xffff_ffff_8100_0000u64, 0xffff_ffff_8100_0010, 0x1000] {
            bytes.extend_from_slice(&ip.to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn records_become_labelled_raw_stacks() {
        let (mut c, mut rx) = collector(4);
        let pid = std::process::id();
        c.handle(&record(pid, pid + 1));
        let Work::Stack(got_pid, raw) = rx.try_recv().unwrap() else { panic!("not a stack") };
        assert_eq!(got_pid, pid);
        assert_eq!((raw.labels.pid, raw.labels.tid, &*raw.labels.thread), (pid, pid + 1, "worker"));
        assert_eq!(raw.kernel, [0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010]);
        assert_eq!(raw.user.len(), 1);
    }

    #[test]
    fn a_full_queue_and_bad_records_are_counted_not_waited_on() {
        let (mut c, _rx) = collector(1);
        let pid = std::process::id();
        c.handle(&record(pid, pid));
        c.handle(&record(pid, pid));
        c.handle(&record(pid, pid));
        c.handle(&[0u8; 12]);
        let mut short = record(pid, pid);
        short.pop();
        c.handle(&short);
        let drops = c.stats.drops();
        assert_eq!(drops.0[DropReason::SymbolizerQueueFull as usize], 2);
        assert_eq!(drops.0[DropReason::MalformedRecord as usize], 2);
    }

    #[test]
    fn a_process_is_sampled_while_it_is_inspected_and_takes_the_answer_after() {
        let (mut c, mut rx) = collector(4);
        let pid = std::process::id();
        c.handle(&record(pid, pid));
        assert!(matches!(rx.try_recv(), Ok(Work::Stack(..))), "sampled before the answer");
        assert!(matches!(c.processes.get_mut(pid).unwrap().runtime, Runtime::Inspecting));
        // A second sample does not ask again.
        c.handle(&record(pid, pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(c.processes.get_mut(pid).unwrap().runtime, Runtime::Inspecting) {
            assert!(Instant::now() < deadline, "no answer from the inspector");
            std::thread::sleep(Duration::from_millis(10));
            c.take_answers();
        }
        // The daemon's own process is never a Python one.
        assert!(matches!(c.processes.get_mut(pid).unwrap().runtime, Runtime::Native));
        assert!(c.inspector.wait(Duration::from_millis(100)).is_none(), "asked once");
    }
}
