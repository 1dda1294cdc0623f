//! Root integration tests of the GIL flags on the real kernel: CPython processes of every
//! interpreter in the matrix, registered with the kernel the way the daemon registers them
//! (its own detection, then the process's `PY_PROCS` entry), their CPU samples and off-CPU
//! records read straight from the ring buffer.

#[path = "support/pythons.rs"]
mod pythons;
mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use profiler_common::{
    python::{FLAG_PY_GIL_KNOWN, FLAG_PY_GIL_WAIT, FLAG_PY_HOLDS_GIL, PyProcess},
    sample::{RECORD_CPU, RECORD_OFF_CPU, Record},
};
use profiler_daemon::{
    host::{own_path, process_root},
    loader::{OffCpuConfig, OptionalHelpers, Sampler, SamplerConfig},
    python::{Detection, Detector},
};
use pythons::{Interpreter, one_per_version};
use support::require_bpf;

/// How long records are counted, per case.
const MEASURE: Duration = Duration::from_secs(2);
/// How long the tests wait for a process to be seen and registered (a bound for a stuck
/// kernel side, not a measure).
const DEADLINE: Duration = Duration::from_secs(60);
const GIL_BITS: u32 = FLAG_PY_GIL_KNOWN | FLAG_PY_HOLDS_GIL | FLAG_PY_GIL_WAIT;

/// The flags and Python depth of the records of the workload's threads.
#[derive(Debug, Default)]
struct Counts {
    /// CPU samples: (flags, Python frames).
    cpu: Vec<(u32, u32)>,
    /// Off-CPU records: flags.
    off_cpu: Vec<u32>,
}

impl Counts {
    fn cpu_with(&self, bits: u32) -> usize {
        self.cpu.iter().filter(|(f, _)| f & bits == bits).count()
    }

    fn off_cpu_with(&self, bits: u32) -> usize {
        self.off_cpu.iter().filter(|f| *f & bits == bits).count()
    }

    fn with_python_frames(&self) -> usize {
        self.cpu.iter().filter(|(_, py)| *py > 0).count()
    }
}

/// The programs, with the kernel's table of Python processes and the ring buffer.
struct Kernel {
    _sampler: Sampler,
    procs: BpfHashMap<MapData, u32, PyProcess>,
    ring: RingBuf<MapData>,
}

impl Kernel {
    fn load() -> Kernel {
        let helpers = OptionalHelpers::probe();
        assert!(helpers.task_pt_regs, "this kernel (6.x) has bpf_task_pt_regs");
        let mut sampler = Sampler::load_with(
            &SamplerConfig {
                frequency: 199,
                include_idle: false,
                bpf_stats: false,
                // Room for every host thread's records between two drains.
                ring_buffer_bytes: 32 << 20,
                off_cpu: Some(OffCpuConfig::default()),
                memory: None,
            },
            helpers,
        )
        .unwrap_or_else(|e| panic!("loading the sampler with off-CPU sampling: {e}"));
        let procs = sampler.take_python_procs().unwrap();
        let ring = sampler.take_samples().unwrap();
        Kernel { _sampler: sampler, procs, ring }
    }

    /// Runs `threads` CPU-bound threads under `it` (with `env`), registers the process as
    /// the daemon does, and counts its threads' records for [`MEASURE`].
    fn run(&mut self, it: &Interpreter, threads: u32, env: &[(&str, &str)]) -> Counts {
        let seconds = (MEASURE + Duration::from_secs(20)).as_secs();
        let mut child = it
            .command()
            .arg(it.workload("gil.py"))
            .args([threads.to_string(), seconds.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", it.name()));
        let counts = self.measure(&mut child, it, threads);
        let _ = child.kill();
        let _ = child.wait();
        counts
    }

    fn measure(&mut self, child: &mut Child, it: &Interpreter, threads: u32) -> Counts {
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let tids: Vec<u32> = (0..threads)
            .map(|_| {
                let line = lines.next().expect("a thread id").unwrap();
                line.strip_prefix("tid ").and_then(|t| t.parse().ok()).expect(&line)
            })
            .collect();
        let deadline = Instant::now() + DEADLINE;
        // The process's identity, as the kernel reads it, from one of its records.
        let identity = loop {
            assert!(Instant::now() < deadline, "no record of {}", it.name());
            let mut found = None;
            while let Some(item) = self.ring.next() {
                if let Some(Record::Sample(s)) = Record::parse(&item)
                    && s.header.tgid == pid
                {
                    found = Some((s.header.start_ns, s.header.exec_id));
                }
            }
            if let Some(identity) = found {
                break identity;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let exe = own_path(process_root(pid).as_deref(), &exe);
        let mut detector = Detector::default();
        let python = loop {
            match detector.detect(pid, exe.to_str().unwrap()) {
                Detection::Python(p) => break p,
                Detection::NotReady => {
                    assert!(Instant::now() < deadline, "{} never became ready", it.name());
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{}: detected as {other:?}", it.name()),
            }
        };
        let entry = python.kernel_entry(identity.0, identity.1);
        assert_ne!(entry.gil_locked, 0, "{}: the daemon finds the GIL", it.name());
        assert_eq!(entry.gil_enabled != 0, it.free_threaded, "{}", it.name());
        self.procs.insert(pid, entry, 0).unwrap();
        // Past the main thread's last use of the GIL: it waits in join() from now on.
        std::thread::sleep(Duration::from_millis(200));
        let from = boot_ns();
        let until = Instant::now() + MEASURE;
        let mut counts = Counts::default();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            while let Some(item) = self.ring.next() {
                let Some(Record::Sample(s)) = Record::parse(&item) else { continue };
                let h = s.header;
                if h.tgid != pid || !tids.contains(&h.tid) || h.time_ns < from {
                    continue;
                }
                match h.kind {
                    RECORD_CPU => counts.cpu.push((h.flags, h.py_len)),
                    RECORD_OFF_CPU => counts.off_cpu.push(h.flags),
                    _ => {}
                }
            }
        }
        self.procs.remove(&pid).unwrap();
        counts
    }
}

/// `CLOCK_BOOTTIME`, the clock of the records.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The counts are of a registered Python process: most CPU samples have Python frames.
fn assert_walked(it: &Interpreter, case: &str, counts: &Counts) {
    assert!(
        counts.cpu.len() >= 50 && counts.with_python_frames() * 10 >= counts.cpu.len() * 8,
        "{} ({case}): {} of {} CPU samples have Python frames",
        it.name(),
        counts.with_python_frames(),
        counts.cpu.len()
    );
}

/// Two threads with a GIL: a large share of their off-CPU records wait for it, and a large
/// share of their CPU samples hold it.
fn assert_contended(it: &Interpreter, counts: &Counts) {
    let case = "two threads";
    assert_walked(it, case, counts);
    let known = counts.cpu_with(FLAG_PY_GIL_KNOWN);
    let held = counts.cpu_with(FLAG_PY_GIL_KNOWN | FLAG_PY_HOLDS_GIL);
    let waits = counts.off_cpu_with(FLAG_PY_GIL_WAIT);
    eprintln!(
        "{} ({case}): {held} of {} CPU samples hold the GIL ({known} known); {waits} of {} \
         off-CPU records wait for it",
        it.name(),
        counts.cpu.len(),
        counts.off_cpu.len()
    );
    assert!(known * 10 >= counts.cpu.len() * 9, "{}: the GIL state is known", it.name());
    assert!(held * 10 >= counts.cpu.len() * 3, "{}: held in ≥ 30% of CPU samples", it.name());
    assert!(
        counts.off_cpu.len() >= 20 && waits * 10 >= counts.off_cpu.len() * 2,
        "{}: ≥ 20% of the off-CPU records wait for the GIL",
        it.name()
    );
}

/// One thread with a GIL: it holds the GIL in nearly every CPU sample and never waits for it.
fn assert_alone(it: &Interpreter, counts: &Counts) {
    let case = "one thread";
    assert_walked(it, case, counts);
    let held = counts.cpu_with(FLAG_PY_GIL_KNOWN | FLAG_PY_HOLDS_GIL);
    let waits = counts.off_cpu_with(FLAG_PY_GIL_WAIT);
    eprintln!(
        "{} ({case}): {held} of {} CPU samples hold the GIL; {waits} of {} off-CPU records \
         wait for it",
        it.name(),
        counts.cpu.len(),
        counts.off_cpu.len()
    );
    assert!(held * 10 >= counts.cpu.len() * 9, "{}: held in ≥ 90% of CPU samples", it.name());
    assert_eq!(waits, 0, "{}: a thread alone never waits for the GIL", it.name());
}

#[test]
fn gil_holders_and_waiters_in_every_interpreter() {
    if !require_bpf("gil_holders_and_waiters_in_every_interpreter") {
        return;
    }
    let mut kernel = Kernel::load();
    let mut tested = Vec::new();
    for it in one_per_version().into_iter().filter(Interpreter::supported) {
        if it.free_threaded {
            // Without its GIL (the default): no thread holds it or waits for it.
            for threads in [2, 1] {
                let counts = kernel.run(&it, threads, &[]);
                assert_walked(&it, "free-threaded", &counts);
                let flagged = counts.cpu.iter().map(|(f, _)| f).chain(&counts.off_cpu);
                assert!(
                    flagged.clone().all(|f| f & GIL_BITS == 0),
                    "{}: no GIL flag without a GIL: {:?}",
                    it.name(),
                    flagged.map(|f| f & GIL_BITS).filter(|f| *f != 0).collect::<Vec<_>>()
                );
            }
            // With the GIL enabled at run time it is a GIL build.
            assert_contended(&it, &kernel.run(&it, 2, &[("PYTHON_GIL", "1")]));
        } else {
            assert_contended(&it, &kernel.run(&it, 2, &[]));
            assert_alone(&it, &kernel.run(&it, 1, &[]));
        }
        tested.push(it.name());
    }
    eprintln!("tested: {}", tested.join(", "));
}
