//! Root integration tests of the off-CPU program on the real kernel: the `sched_switch` program
//! loaded through the real loader, its records read straight from the ring buffer while
//! threads of this test sleep and ping-pong over pipes.

mod support;

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use profiler_common::{
    off_cpu::SCALE_ONE,
    sample::{RECORD_OFF_CPU, Record, WEIGHT_ONE},
};
use profiler_daemon::loader::{
    OffCpuAttachment, OffCpuConfig, OffCpuThreads, OptionalHelpers, Sampler, SamplerConfig,
};
use support::require_bpf;

/// The interval `T` of the tests.
const INTERVAL: Duration = Duration::from_millis(10);
/// `TASK_INTERRUPTIBLE`; the state may carry modifier bits (`TASK_FREEZABLE` in a sleep).
const TASK_INTERRUPTIBLE: u32 = 1;
/// The kernel's `TASK_REPORT` bits: the state proper, without modifiers.
const TASK_REPORT: u32 = 0x7f;
/// How long the tests wait for records before they give up (a bound for a stuck kernel side,
/// not a measure: under load the records arrive later, never fewer).
const DEADLINE: Duration = Duration::from_secs(60);

/// A recorded switch-out.
#[derive(Clone, Debug)]
struct Start {
    tgid: u32,
    time_ns: u64,
    state: u32,
    weight: u64,
    kernel: Vec<u64>,
    user_len: u32,
}

/// Records of the threads a test watches, by thread id.
#[derive(Debug, Default)]
struct Seen {
    starts: HashMap<u32, Vec<Start>>,
    /// (start_ns, end_ns, tgid) per thread.
    ends: HashMap<u32, Vec<(u64, u64, u32)>>,
}

impl Seen {
    /// Reads every record in `ring`, keeping those of the threads in `tids`.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, tids: &[u32]) {
        while let Some(item) = ring.next() {
            match Record::parse(&item).expect("every record parses") {
                Record::Sample(s) if s.header.kind == RECORD_OFF_CPU => {
                    let h = s.header;
                    if tids.contains(&h.tid) {
                        self.starts.entry(h.tid).or_default().push(Start {
                            tgid: h.tgid,
                            time_ns: h.time_ns,
                            state: h.state,
                            weight: h.weight,
                            kernel: s.kernel_stack().collect(),
                            user_len: h.user_len,
                        });
                    }
                }
                Record::Sample(_) | Record::OomKill(_) | Record::Exec(_) => {}
                Record::OffCpuEnd(e) => {
                    if tids.contains(&e.tid) {
                        self.ends.entry(e.tid).or_default().push((e.start_ns, e.end_ns, e.tgid));
                    }
                }
            }
        }
    }

    /// The recorded blocks of `tid` that ended: (start record, end_ns).
    fn blocks(&self, tid: u32) -> Vec<(Start, u64)> {
        let starts = self.starts.get(&tid).map(Vec::as_slice).unwrap_or_default();
        let ends = self.ends.get(&tid).map(Vec::as_slice).unwrap_or_default();
        ends.iter()
            .map(|&(start_ns, end_ns, tgid)| {
                let start = starts.iter().find(|s| s.time_ns == start_ns).unwrap_or_else(|| {
                    panic!("the end of a block of thread {tid} at {start_ns} has no start")
                });
                assert_eq!(start.tgid, tgid, "the end names the start's process");
                assert!(end_ns > start_ns, "a block ends after it starts");
                (start.clone(), end_ns)
            })
            .collect()
    }
}

fn load(attachment: OffCpuAttachment) -> Sampler {
    load_with(attachment, OptionalHelpers::probe())
}

/// Loads the programs using only the optional kernel helpers in `helpers`.
fn load_with(attachment: OffCpuAttachment, helpers: OptionalHelpers) -> Sampler {
    load_skipping(attachment, helpers, 0)
}

/// Loads the programs, not recording the switches of process `skip_pid` (0: none).
fn load_skipping(attachment: OffCpuAttachment, helpers: OptionalHelpers, skip_pid: u32) -> Sampler {
    load_config(attachment, helpers, skip_pid, true)
}

/// Loads the programs with thread state in task storage where the kernel allows it
/// (`task_storage`), else in the hash map.
fn load_config(
    attachment: OffCpuAttachment,
    helpers: OptionalHelpers,
    skip_pid: u32,
    task_storage: bool,
) -> Sampler {
    let raw_tracepoint = attachment == OffCpuAttachment::RawTracePoint;
    let config = SamplerConfig {
        frequency: 19,
        include_idle: false,
        bpf_stats: false,
        // Room for every host thread's records between two drains, even on a busy machine.
        ring_buffer_bytes: 32 << 20,
        off_cpu: Some(OffCpuConfig {
            interval_ns: INTERVAL.as_nanos() as u64,
            raw_tracepoint,
            skip_pid,
            task_storage,
        }),
        memory: None,
    };
    let sampler = Sampler::load_with(&config, helpers)
        .unwrap_or_else(|e| panic!("loading the sampler with off-CPU sampling: {e}"));
    assert_eq!(sampler.off_cpu_attachment(), Some(attachment));
    assert!(sampler.off_cpu_program_id().is_some());
    // Task storage where it was asked for, the BTF tracepoint passes typed task pointers and
    // the kernel is new enough; the hash map everywhere else.
    let kernel = profiler_daemon::kernel::running_release()
        .and_then(|r| profiler_daemon::kernel::KernelVersion::parse(&r));
    let threads = if task_storage
        && !raw_tracepoint
        && kernel.is_some_and(|v| v >= profiler_daemon::loader::TASK_STORAGE_KERNEL)
    {
        OffCpuThreads::TaskStorage
    } else {
        OffCpuThreads::HashMap
    };
    assert_eq!(sampler.off_cpu_threads(), Some(threads));
    sampler
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Kernel text symbols, sorted by address.
fn kallsyms() -> Vec<(u64, String)> {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("reading /proc/kallsyms");
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let address = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_owned()))
        })
        .collect();
    symbols.sort_unstable();
    symbols
}

/// The function containing `address`.
fn symbol(symbols: &[(u64, String)], address: u64) -> Option<&str> {
    let i = symbols.partition_point(|(a, _)| *a <= address).checked_sub(1)?;
    Some(&symbols[i].1)
}

/// A thread that sleeps 50 ms at a time until `stop`, counting its sleeps in `sleeps`, and its
/// thread id.
fn sleeper(stop: Arc<AtomicBool>, sleeps: Arc<AtomicU64>) -> (JoinHandle<()>, u32) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("sleeper".into())
        .spawn(move || {
            tx.send(gettid()).unwrap();
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                sleeps.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    (handle, rx.recv().unwrap())
}

/// Waits until the sleeper has slept `n` more times.
fn wait_for_sleeps(sleeps: &AtomicU64, n: u64, deadline: Instant) {
    let until = sleeps.load(Relaxed) + n;
    while sleeps.load(Relaxed) < until {
        assert!(Instant::now() < deadline, "the sleeping thread stopped sleeping");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sleeps_are_recorded_with_their_kernel_stacks_and_durations() {
    if !require_bpf("sleeps_are_recorded_with_their_kernel_stacks_and_durations") {
        return;
    }
    sleeps_are_recorded_through(OffCpuAttachment::BtfTracePoint);
}

/// The daemon's own process is skipped: its threads block and wake for every record they
/// handle, and recording that would feed itself.
#[test]
fn the_skipped_process_is_not_recorded() {
    if !require_bpf("the_skipped_process_is_not_recorded") {
        return;
    }
    let mut sampler = load_skipping(
        OffCpuAttachment::BtfTracePoint,
        OptionalHelpers::probe(),
        std::process::id(),
    );
    let mut ring = sampler.take_samples().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sleeps = Arc::new(AtomicU64::new(0));
    let (handle, tid) = sleeper(stop.clone(), sleeps.clone());
    wait_for_sleeps(&sleeps, 20, Instant::now() + DEADLINE);
    let mut seen = Seen::default();
    seen.drain(&mut ring, &[tid]);
    stop.store(true, Relaxed);
    handle.join().unwrap();
    assert!(seen.starts.get(&tid).is_none_or(Vec::is_empty), "20 sleeps, none recorded: {seen:?}");
}

/// The same through the raw tracepoint, the fallback where BTF tracepoints fail.
#[test]
fn sleeps_are_recorded_through_the_raw_tracepoint() {
    if !require_bpf("sleeps_are_recorded_through_the_raw_tracepoint") {
        return;
    }
    sleeps_are_recorded_through(OffCpuAttachment::RawTracePoint);
}

/// The same with thread state in the hash map that kernels before 6.4 get, through the BTF
/// tracepoint.
#[test]
fn sleeps_are_recorded_with_thread_state_in_a_hash_map() {
    if !require_bpf("sleeps_are_recorded_with_thread_state_in_a_hash_map") {
        return;
    }
    sleeps_are_recorded(load_config(
        OffCpuAttachment::BtfTracePoint,
        OptionalHelpers::probe(),
        0,
        false,
    ));
}

/// The same as on a kernel that lets tracing programs call neither `bpf_jiffies64` nor
/// `bpf_task_pt_regs`: every switch-out reads the precise clock.
#[test]
fn sleeps_are_recorded_without_the_newer_helpers() {
    if !require_bpf("sleeps_are_recorded_without_the_newer_helpers") {
        return;
    }
    for attachment in [OffCpuAttachment::RawTracePoint, OffCpuAttachment::BtfTracePoint] {
        sleeps_are_recorded(load_with(attachment, OptionalHelpers::NONE));
    }
}

/// On a kernel without the newer helpers the verifier must never see a call to them: the
/// globals that gate them are read-only, so the calls are dead code, which the kernel removes
/// from the program it runs. Here, where the kernel has them, that program is read back: it
/// calls them only when they are used.
#[test]
fn the_newer_helpers_are_dead_code_when_not_used() {
    if !require_bpf("the_newer_helpers_are_dead_code_when_not_used") {
        return;
    }
    let newer = ["bpf_get_current_task_btf", "bpf_task_pt_regs"];
    let all = OptionalHelpers { jiffies: true, task_pt_regs: true };
    assert_eq!(OptionalHelpers::probe(), all, "this kernel (6.x) has every optional helper");
    for attachment in [OffCpuAttachment::RawTracePoint, OffCpuAttachment::BtfTracePoint] {
        let sampler = load_with(attachment, all);
        let calls = helper_calls(sampler.off_cpu_program_id().unwrap());
        drop(sampler);
        for helper in newer {
            assert!(calls.contains(&helper), "{attachment:?}: {helper} is called: {calls:?}");
        }
        let sampler = load_with(attachment, OptionalHelpers::NONE);
        let calls = helper_calls(sampler.off_cpu_program_id().unwrap());
        assert!(calls.contains(&"bpf_ktime_get_boot_ns"), "{attachment:?}: {calls:?}");
        for helper in newer {
            assert!(!calls.contains(&helper), "{attachment:?}: {helper} is called: {calls:?}");
        }
    }
}

/// The kernel functions of the helpers that program `id`, as the kernel runs it, calls. After
/// verification a helper call's immediate is the helper's address relative to
/// `__bpf_call_base`.
fn helper_calls(id: u32) -> Vec<&'static str> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let program = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .expect("the off-CPU program is loaded");
    let fd = program.fd().expect("a descriptor of the program");
    let len = program.size_translated().expect("the translated program's size") as usize;
    let mut insns = vec![0u64; len / 8];
    // SAFETY: a plain-data struct of integers, valid when zeroed.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    info.xlated_prog_len = len as u32;
    info.xlated_prog_insns = insns.as_mut_ptr() as u64;
    /// `BPF_OBJ_GET_INFO_BY_FD`'s attributes.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: the attributes point at `info`, which points at `insns`, both large enough.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    assert_eq!(ret, 0, "BPF_OBJ_GET_INFO_BY_FD: {}", std::io::Error::last_os_error());
    let symbols = kallsyms();
    let base = symbols.iter().find(|(_, n)| n == "__bpf_call_base").expect("__bpf_call_base").0;
    let names = ["bpf_ktime_get_boot_ns", "bpf_get_current_task_btf", "bpf_task_pt_regs"];
    const CALL: u8 = 0x85;
    insns
        .iter()
        // A helper call: opcode CALL, source register 0 (not a BPF function or a kfunc).
        .filter(|&&insn| insn as u8 == CALL && (insn >> 12) & 0xf == 0)
        .filter_map(|&insn| {
            let target = base.wrapping_add_signed(i64::from((insn >> 32) as i32));
            names
                .into_iter()
                .find(|name| symbols.iter().any(|(address, n)| *address == target && n == name))
        })
        .collect()
}

fn sleeps_are_recorded_through(attachment: OffCpuAttachment) {
    sleeps_are_recorded(load(attachment));
}

fn sleeps_are_recorded(mut sampler: Sampler) {
    let mut ring = sampler.take_samples().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sleeps = Arc::new(AtomicU64::new(0));
    let (handle, tid) = sleeper(stop.clone(), sleeps.clone());
    let mut seen = Seen::default();
    let deadline = Instant::now() + DEADLINE;
    // About 2 s of sleeps.
    while seen.ends.get(&tid).map_or(0, Vec::len) < 40 {
        assert!(Instant::now() < deadline, "too few records of the sleeping thread: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
        seen.drain(&mut ring, &[tid]);
    }

    // At scale 0 the daemon's budget allows nothing: no switch-out is recorded. A switch-out
    // that read the old scale may still be on its way at first.
    let mut scale = sampler.take_off_cpu_scale().unwrap();
    assert_eq!(scale.get().unwrap(), SCALE_ONE, "the loader starts at a scale of one");
    scale.set(0).unwrap();
    wait_for_sleeps(&sleeps, 2, deadline);
    seen.drain(&mut ring, &[tid]);
    let recorded = seen.starts[&tid].len();
    wait_for_sleeps(&sleeps, 10, deadline);
    seen.drain(&mut ring, &[tid]);
    assert_eq!(seen.starts[&tid].len(), recorded, "10 sleeps at scale 0 are not recorded");
    stop.store(true, Relaxed);
    handle.join().unwrap();

    let pid = std::process::id();
    let symbols = kallsyms();
    let blocks = seen.blocks(tid);
    let sleeps: Vec<_> = blocks
        .iter()
        .filter(|(start, _)| start.state & TASK_REPORT == TASK_INTERRUPTIBLE)
        .collect();
    // Nearly every switch-out of the thread is a sleep; a rare preemption is runnable (0).
    assert!(
        sleeps.len() * 10 >= blocks.len() * 9,
        "{} of {} blocks are sleeps (states {:?})",
        sleeps.len(),
        blocks.len(),
        blocks.iter().map(|(s, _)| s.state).collect::<Vec<_>>()
    );
    for (start, end_ns) in &sleeps {
        assert_eq!(start.tgid, pid);
        // Blocking at most every 50 ms, with T = 10 ms: always recorded, unless the thread's
        // last recorded switch-out was less than T before (a preemption just before its first
        // sleep).
        let previous =
            seen.starts[&tid].iter().map(|s| s.time_ns).filter(|&t| t < start.time_ns).max();
        if previous.is_none_or(|t| start.time_ns - t >= INTERVAL.as_nanos() as u64) {
            assert_eq!(start.weight, WEIGHT_ONE, "{start:?}");
        }
        assert!(!start.kernel.is_empty(), "a switch-out has a kernel stack: {start:?}");
        assert!(start.user_len >= 1, "and a user stack (at least the syscall's ip): {start:?}");
        let names: Vec<_> = start.kernel.iter().filter_map(|&a| symbol(&symbols, a)).collect();
        assert!(
            names.contains(&"do_nanosleep"),
            "the kernel stack of a sleep goes through do_nanosleep: {names:?}"
        );
        // The probe's own frames (the program, bpf_trace_run) are skipped: the stack starts in
        // the scheduler, at the tracepoint's iterator when other programs are attached to it
        // too.
        assert!(
            matches!(names.first(), Some(&("__schedule" | "__traceiter_sched_switch"))),
            "the kernel stack starts at __schedule: {names:?}"
        );
        assert!(*end_ns > start.time_ns);
    }
    // A sleep of 50 ms lasts at least 50 ms; under load it may last longer, never shorter.
    let long = sleeps.iter().filter(|(s, end)| end - s.time_ns >= 40_000_000).count();
    assert!(
        long * 10 >= sleeps.len() * 9,
        "{long} of {} sleeps lasted 40 ms or more: {:?}",
        sleeps.len(),
        sleeps.iter().map(|(s, end)| end - s.time_ns).collect::<Vec<_>>()
    );
}

/// A thread's switch-outs up to a time.
#[derive(Clone, Copy, Debug)]
struct Switches {
    /// `CLOCK_BOOTTIME` (the clock of the records) just before the count was read.
    at_ns: u64,
    /// Voluntary plus involuntary context switches, from `/proc/thread-self/status`.
    count: u64,
}

/// Two threads passing a byte back and forth.
struct PingPong {
    handles: Vec<JoinHandle<()>>,
    tids: [u32; 2],
    /// Each thread's switch-outs, counted just before it exits.
    switches: mpsc::Receiver<(u32, Switches)>,
}

/// Starts two threads that pass a byte back and forth `rounds` times over a socket pair, each
/// blocking in `read` until the other answers.
fn ping_pong(rounds: u32) -> PingPong {
    let (a, b) = UnixStream::pair().unwrap();
    let (tids_tx, tids_rx) = mpsc::channel();
    let (counts_tx, counts_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, mut socket) in [a, b].into_iter().enumerate() {
        let (tids_tx, counts_tx) = (tids_tx.clone(), counts_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("ping-pong-{i}"))
            .spawn(move || {
                tids_tx.send(gettid()).unwrap();
                let mut byte = [0u8];
                if i == 0 {
                    socket.write_all(&byte).unwrap();
                }
                for _ in 0..rounds {
                    socket.read_exact(&mut byte).unwrap();
                    socket.write_all(&byte).unwrap();
                }
                let at_ns = boot_ns();
                counts_tx.send((gettid(), Switches { at_ns, count: switch_outs() })).unwrap();
                // The other side's last write finds this end still open.
                let _ = socket.read(&mut byte);
            })
            .unwrap();
        handles.push(handle);
    }
    let tids = [tids_rx.recv().unwrap(), tids_rx.recv().unwrap()];
    PingPong { handles, tids, switches: counts_rx }
}

/// `CLOCK_BOOTTIME`, the clock of `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's context switches so far.
fn switch_outs() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn frequent_switches_are_sampled_with_weights_that_add_up() {
    if !require_bpf("frequent_switches_are_sampled_with_weights_that_add_up") {
        return;
    }
    let mut sampler = load(OffCpuAttachment::BtfTracePoint);
    let mut ring = sampler.take_samples().unwrap();
    let counters = sampler.take_counters().unwrap();
    let PingPong { handles, tids, switches: counts } = ping_pong(100_000);
    let mut seen = Seen::default();
    let mut truth = HashMap::new();
    let deadline = Instant::now() + DEADLINE;
    while truth.len() < 2 {
        assert!(Instant::now() < deadline, "the ping-pong did not finish");
        std::thread::sleep(Duration::from_millis(10));
        seen.drain(&mut ring, &tids);
        truth.extend(counts.try_iter());
    }
    for handle in handles {
        handle.join().unwrap();
    }
    seen.drain(&mut ring, &tids);
    let lost =
        counters.read().unwrap()[profiler_common::counters::Counter::OffCpuRingBufFull as usize];
    assert_eq!(lost, 0, "no off-CPU record was lost; the estimate below needs them all");

    for tid in tids {
        let Switches { at_ns, count: switches } = truth[&tid];
        let starts = seen.starts.get(&tid).map(Vec::as_slice).unwrap_or_default();
        // The switch-outs the count includes.
        let before: Vec<_> = starts.iter().filter(|s| s.time_ns < at_ns).collect();
        assert!(switches > 20_000, "thread {tid} switched {switches} times, expected ~100000");
        // The first switch-out of a thread never seen is recorded for sure; after that, one
        // that follows the last capture by less than T is recorded with a lower probability
        // and stands for more switches.
        let heavier = starts.iter().skip(1).filter(|s| s.weight > WEIGHT_ONE).count();
        assert!(
            starts.len() > 10 && heavier * 10 >= (starts.len() - 1) * 9,
            "thread {tid}: {heavier} of {} records weigh more than one switch",
            starts.len()
        );
        assert!(
            (starts.len() as u64) < switches / 2,
            "thread {tid}: {} of {switches} switches recorded; most should not be",
            starts.len()
        );
        // Weights estimate the number of switch-outs without bias.
        let estimate = before.iter().map(|s| s.weight).sum::<u64>() as f64 / WEIGHT_ONE as f64;
        let error = (estimate - switches as f64).abs() / switches as f64;
        assert!(
            error < 0.2,
            "thread {tid}: weights estimate {estimate:.0} switch-outs, it made {switches} \
             ({} records)",
            before.len()
        );
        // Every block but the last few ends, and the ends are the starts'.
        assert!(seen.blocks(tid).len() + 3 >= starts.len());
    }
}
