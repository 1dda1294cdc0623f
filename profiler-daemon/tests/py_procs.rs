//! Root integration tests of the kernel's table of Python processes (`PY_PROCS`) while the
//! daemon rewrites it. The kernel keeps the table's elements preallocated and gives the
//! element an update replaced to the next update at once, so a program that went on reading
//! the element it looked up (a sampled walk, the call probe) could read another process's
//! entry.

#[path = "support/pythons.rs"]
mod pythons;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use profiler_common::{
    python::PyProcess,
    sample::{RECORD_CPU, Record},
};
use profiler_daemon::{
    host::{own_path, process_root},
    loader::{OptionalHelpers, Sampler, SamplerConfig},
    python::{Detection, Detector, PythonProcess},
};
use pythons::{Interpreter, one_per_version};
use support::require_bpf;

/// How long samples are counted while the table is rewritten.
const MEASURE: Duration = Duration::from_secs(3);
/// A bound for a stuck kernel side, not a measure.
const DEADLINE: Duration = Duration::from_secs(60);
/// The key of the other entry: a pid no process has (above the kernel's `PID_MAX_LIMIT`).
const OTHER: u32 = 0x7fff_fff0;

/// The programs, and a CPython process running a mode of the workload, registered as the
/// daemon registers it.
struct Setup {
    sampler: Sampler,
    /// Away while [`Setup::rewritten_while`] rewrites it.
    procs: Option<BpfHashMap<MapData, u32, PyProcess>>,
    ring: RingBuf<MapData>,
    it: Interpreter,
    child: std::process::Child,
    pid: u32,
    python: Arc<PythonProcess>,
    entry: PyProcess,
}

impl Setup {
    fn start(mode: &str) -> Setup {
        let it = one_per_version()
            .into_iter()
            .find(|it| it.supported() && it.root.is_none())
            .expect("a supported CPython on this machine");
        let mut sampler = Sampler::load_with(
            &SamplerConfig {
                frequency: 999,
                include_idle: false,
                bpf_stats: false,
                ring_buffer_bytes: 32 << 20,
                off_cpu: None,
                memory: None,
            },
            OptionalHelpers::probe(),
        )
        .unwrap_or_else(|e| panic!("loading the sampler: {e}"));
        let procs = Some(sampler.take_python_procs().unwrap());
        let mut ring = sampler.take_samples().unwrap();
        let child = it
            .command()
            .arg(it.workload("workload.py"))
            .args([mode, "30"])
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", it.name()));
        let pid = child.id();
        let deadline = Instant::now() + DEADLINE;
        let mut detector = Detector::default();
        let python = loop {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            let exe = own_path(process_root(pid).as_deref(), &exe);
            match detector.detect(pid, exe.to_str().unwrap()) {
                Detection::Python(p) => break p,
                Detection::NotReady | Detection::NotPython => {
                    assert!(Instant::now() < deadline, "{} never became ready", it.name());
                    thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{}: detected as {other:?}", it.name()),
            }
        };
        // The process's identity, as the kernel reads it, from a sample taken after the exec
        // that made it the interpreter.
        while ring.next().is_some() {}
        let identity = loop {
            assert!(Instant::now() < deadline, "no sample of {}", it.name());
            let mut found = None;
            while let Some(item) = ring.next() {
                if let Some(Record::Sample(s)) = Record::parse(&item)
                    && s.header.tgid == pid
                {
                    found = Some((s.header.start_ns, s.header.exec_id));
                }
            }
            if let Some(identity) = found {
                break identity;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let entry = python.kernel_entry(identity.0, identity.1);
        Setup { sampler, procs, ring, it, child, pid, python, entry }
    }

    /// Rewrites the process's entry and another in turn, as fast as the kernel takes them,
    /// while `during` runs: each update's new element is the one the update before it
    /// replaced. The other entry has the same identity, so that only the memory tells it
    /// apart, and masks every code word to nothing: a frame or a call read with it has code
    /// address 0, which no frame of a running interpreter has. Returns the updates made.
    fn rewritten_while(&mut self, during: impl FnOnce(&mut Self)) -> u64 {
        let (pid, entry) = (self.pid, self.entry);
        let mut other = entry;
        other.offsets.code_tag_bits = u64::MAX;
        let mut procs = self.procs.take().expect("the table");
        procs.insert(pid, entry, 0).unwrap();
        procs.insert(OTHER, other, 0).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, updates) = (stop.clone(), updates.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    procs.insert(pid, entry, 0).unwrap();
                    procs.insert(OTHER, other, 0).unwrap();
                    updates.fetch_add(2, Ordering::Relaxed);
                }
                procs
            })
        };
        during(self);
        stop.store(true, Ordering::Relaxed);
        let mut procs = writer.join().unwrap();
        procs.remove(&pid).unwrap();
        procs.remove(&OTHER).unwrap();
        self.procs = Some(procs);
        updates.load(Ordering::Relaxed)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_walk_never_reads_an_entry_the_table_gave_to_another_process() {
    if !require_bpf("a_walk_never_reads_an_entry_the_table_gave_to_another_process") {
        return;
    }
    // 150 nested calls: each walk reads 128 frames, long enough for many updates.
    let mut setup = Setup::start("recurse");
    let (mut samples, mut walked, mut foreign) = (0usize, 0usize, 0usize);
    let updates = setup.rewritten_while(|setup| {
        let until = Instant::now() + MEASURE;
        while Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
            while let Some(item) = setup.ring.next() {
                let Some(Record::Sample(s)) = Record::parse(&item) else { continue };
                if s.header.tgid != setup.pid || s.header.kind != RECORD_CPU {
                    continue;
                }
                samples += 1;
                if s.header.py_len > 0 {
                    walked += 1;
                }
                if s.python_stack().any(|f| f.code_addr() == 0) {
                    foreign += 1;
                }
            }
        }
    });
    let name = setup.it.name();
    eprintln!(
        "{name}: {samples} samples while the table took {updates} updates: {walked} walked, \
         {foreign} with frames read through the other entry"
    );
    assert!(updates >= 100_000, "the table was rewritten often enough to matter");
    assert!(samples >= 500, "{name}: enough samples to tell");
    assert_eq!(foreign, 0, "no walk reads an entry that was given to another key");
    // A sample whose entry was replaced while it was looked up has no Python frames; most
    // have them.
    assert!(walked * 2 >= samples, "{name}: {walked} of {samples} samples walked");
}

#[test]
fn a_call_is_never_counted_through_an_entry_the_table_gave_to_another_process() {
    if !require_bpf("a_call_is_never_counted_through_an_entry_the_table_gave_to_another_process") {
        return;
    }
    // Python functions called from C (a sort's key), each through the probed function.
    let mut setup = Setup::start("callbacks");
    let name = setup.it.name();
    let offset = setup.python.eval_frame_offset.unwrap_or_else(|| panic!("{name}: no eval"));
    let path = setup.python.interpreter_path.clone();
    setup
        .sampler
        .attach_calls(setup.pid, &path, offset)
        .unwrap_or_else(|e| panic!("{name}: attaching the call probe: {e}"));
    let calls = setup.sampler.take_python_calls().unwrap();
    let updates = setup.rewritten_while(|_| thread::sleep(MEASURE));
    let counted: Vec<_> = calls.read().into_iter().filter(|(k, _)| k.tgid == setup.pid).collect();
    let total: u64 = counted.iter().map(|(_, n)| n).sum();
    let foreign: u64 = counted.iter().filter(|(k, _)| k.code == 0).map(|(_, n)| n).sum();
    eprintln!(
        "{name}: {total} calls counted while the table took {updates} updates, {foreign} \
         through the other entry"
    );
    assert!(updates >= 100_000, "the table was rewritten often enough to matter");
    assert!(total >= 100_000, "{name}: enough calls to tell");
    // The probe runs in the process's context, where it can be interrupted between its two
    // lookups: the same element can then come back to the process after it was given to the
    // other key, which a comparison of pointers cannot tell (here, where the table takes
    // 600,000 updates a second, about one call in two million; the daemon makes a few a
    // second). Without the check, one call in six thousand is counted through the other entry.
    assert!(
        foreign * 1_000_000 <= total,
        "{name}: at most one call in a million is counted through an entry given to another key"
    );
}
