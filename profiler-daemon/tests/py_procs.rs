//! Root integration test of the kernel's table of Python processes (`PY_PROCS`) while the
//! daemon rewrites it. The kernel keeps the table's elements preallocated and gives the
//! element an update replaced to the next update at once, so a sampled walk that went on
//! reading the element it looked up could read another process's entry halfway through.

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

use profiler_common::sample::{RECORD_CPU, Record};
use profiler_daemon::{
    host::{own_path, process_root},
    loader::{OptionalHelpers, Sampler, SamplerConfig},
    python::{Detection, Detector},
};
use pythons::one_per_version;
use support::require_bpf;

/// How long samples are counted while the table is rewritten.
const MEASURE: Duration = Duration::from_secs(3);
/// A bound for a stuck kernel side, not a measure.
const DEADLINE: Duration = Duration::from_secs(60);
/// The key of the other entry: a pid no process has (above the kernel's `PID_MAX_LIMIT`).
const OTHER: u32 = 0x7fff_fff0;

#[test]
fn a_walk_never_reads_an_entry_the_table_gave_to_another_process() {
    if !require_bpf("a_walk_never_reads_an_entry_the_table_gave_to_another_process") {
        return;
    }
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
    let mut procs = sampler.take_python_procs().unwrap();
    let mut ring = sampler.take_samples().unwrap();

    // 150 nested calls: each walk reads 128 frames, long enough for many updates.
    let mut child = it
        .command()
        .arg(it.workload("workload.py"))
        .args(["recurse", "30"])
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", it.name()));
    let pid = child.id();
    let deadline = Instant::now() + DEADLINE;
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
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = own_path(process_root(pid).as_deref(), &exe);
    let mut detector = Detector::default();
    let python = loop {
        match detector.detect(pid, exe.to_str().unwrap()) {
            Detection::Python(p) => break p,
            Detection::NotReady => {
                assert!(Instant::now() < deadline, "{} never became ready", it.name());
                thread::sleep(Duration::from_millis(20));
            }
            other => panic!("{}: detected as {other:?}", it.name()),
        }
    };
    let entry = python.kernel_entry(identity.0, identity.1);
    // The other entry has the same identity, so that only the memory tells it apart, and
    // masks every code word to nothing: a frame read with it has code address 0, which no
    // frame of a running interpreter has.
    let mut other = entry;
    other.offsets.code_tag_bits = u64::MAX;
    procs.insert(pid, entry, 0).unwrap();
    procs.insert(OTHER, other, 0).unwrap();

    // Rewrites both entries in turn, as fast as the kernel takes them: each update's new
    // element is the one the update before it replaced.
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
    let (mut samples, mut walked, mut foreign) = (0usize, 0usize, 0usize);
    let until = Instant::now() + MEASURE;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
        while let Some(item) = ring.next() {
            let Some(Record::Sample(s)) = Record::parse(&item) else { continue };
            if s.header.tgid != pid || s.header.kind != RECORD_CPU {
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
    stop.store(true, Ordering::Relaxed);
    let mut procs = writer.join().unwrap();
    procs.remove(&pid).unwrap();
    procs.remove(&OTHER).unwrap();
    let _ = child.kill();
    let _ = child.wait();

    let updates = updates.load(Ordering::Relaxed);
    eprintln!(
        "{}: {samples} samples while the table took {updates} updates: {walked} walked, \
         {foreign} with frames read through the other entry",
        it.name()
    );
    assert!(updates >= 100_000, "the table was rewritten often enough to matter");
    assert!(samples >= 500, "{}: enough samples to tell", it.name());
    assert_eq!(foreign, 0, "no walk reads an entry that was given to another key");
    // A sample whose entry was replaced while it was looked up has no Python frames; most
    // have them.
    assert!(walked * 2 >= samples, "{}: {walked} of {samples} samples walked", it.name());
}
