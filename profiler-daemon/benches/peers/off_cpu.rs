//! The off-CPU program's cost per context switch, from `kernel.bpf_stats_enabled`, while two
//! processes ping-pong over pipes (as many switches as the machine makes).
//!
//! With statistics on, the kernel times every run of a program with two clock reads of its
//! own, which `run_time_ns` includes. An empty program attached to the same tracepoint in the
//! same run measures that floor, and the report gives the off-CPU program's cost less it:
//! what the program costs when the statistics are off, as they are in production.

use std::{
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use profiler_common::{counters::Counter, off_cpu::SCALE_ONE};
use profiler_daemon::loader::{self, OffCpuConfig, OffCpuThreads, Sampler, SamplerConfig};

use crate::{measure::BpfCost, report::OffCpuCost, watchdog, workloads::Programs};

/// The switch rate the goal is stated at.
pub const GOAL_SWITCHES_PER_SECOND: f64 = 50_000.0;

/// Measures the off-CPU program at the scales "nothing recorded" (0, the path every switch
/// takes) and 1 (the loader's default, before the daemon's budget lowers it), each for
/// `seconds` of ping-pong: with thread state in task-local storage (Linux 6.4 on) and in the
/// hash map of older kernels.
pub fn cost(programs: &Programs, seconds: f64) -> Result<Vec<OffCpuCost>, String> {
    let mut out = cost_with(programs, seconds, true)?;
    out.extend(cost_with(programs, seconds, false)?);
    Ok(out)
}

fn cost_with(
    programs: &Programs,
    seconds: f64,
    task_storage: bool,
) -> Result<Vec<OffCpuCost>, String> {
    let mut sampler = Sampler::load(&SamplerConfig {
        // The perf-event program is not measured here.
        frequency: 1,
        include_idle: false,
        bpf_stats: false,
        ring_buffer_bytes: 8 << 20,
        off_cpu: Some(OffCpuConfig { task_storage, ..OffCpuConfig::default() }),
        memory: None,
    })
    .map_err(|e| format!("loading the off-CPU program: {e}"))?;
    let threads = match sampler.off_cpu_threads() {
        Some(OffCpuThreads::TaskStorage) => "threads in task storage",
        _ => "threads in a hash map",
    };
    let id = sampler.off_cpu_program_id().ok_or("the off-CPU program is not attached")?;
    let mut scale = sampler.take_off_cpu_scale().map_err(|e| e.to_string())?;
    let counters = sampler.take_counters().map_err(|e| e.to_string())?;
    // Records are read and dropped as the daemon would read them, so that the ring never
    // fills (a full ring makes a capture cheaper).
    let mut ring = sampler.take_samples().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("off-cpu-drain".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    while ring.next().is_some() {}
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .map_err(|e| e.to_string())?
    };
    let floor = EmptyProgram::attach("sched_switch")?;
    let mut out = Vec::new();
    for (scale_case, value) in [("nothing recorded (scale 0)", 0), ("scale 1", SCALE_ONE)] {
        let case = format!("{scale_case}, {threads}");
        watchdog::step(1, format!("off-CPU, {case}"));
        scale.set(value).map_err(|e| e.to_string())?;
        let captured = |c: &loader::KernelCounters| {
            c.read().map_or(0, |t| t[Counter::OffCpuCaptured as usize])
        };
        let mut child = programs.ping_pong(seconds)?;
        // Past the workload's start.
        std::thread::sleep(Duration::from_millis(200));
        let (ours, empty, records) = (program_cost(id)?, floor.cost()?, captured(&counters));
        let wall = Instant::now();
        std::thread::sleep(Duration::from_secs_f64((seconds - 0.5).max(0.3)));
        let ours = program_cost(id)?.since(ours);
        let empty = floor.cost()?.since(empty);
        let records = captured(&counters).saturating_sub(records);
        let wall = wall.elapsed().as_secs_f64();
        let mut rounds = String::new();
        child
            .stdout
            .take()
            .ok_or("no stdout")?
            .read_to_string(&mut rounds)
            .map_err(|e| e.to_string())?;
        let _ = child.wait();
        if ours.runs == 0 || empty.runs == 0 {
            return Err(format!("off-CPU, {case}: no program runs (are BPF statistics on?)"));
        }
        out.push(OffCpuCost {
            case,
            switches_per_second: ours.runs as f64 / wall,
            records_per_second: records as f64 / wall,
            ns_per_switch: ours.run_ns as f64 / ours.runs as f64,
            floor_ns_per_switch: empty.run_ns as f64 / empty.runs as f64,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    Ok(out)
}

fn program_cost(id: u32) -> Result<BpfCost, String> {
    let cost = loader::kernel_cost(id).ok_or("no statistics of the off-CPU program")?;
    Ok(BpfCost { run_ns: cost.run_time_ns, runs: cost.run_count })
}

/// A program that does nothing (`r0 = 0; exit`), attached as a raw tracepoint: the cost of
/// running any program there, with the statistics' own timing. A BTF tracepoint runs through
/// the same `bpf_trace_run`, so the floor is the same for either attachment of the off-CPU
/// program.
struct EmptyProgram {
    program: OwnedFd,
    _link: OwnedFd,
}

/// `bpf(2)` commands and the program type used.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

impl EmptyProgram {
    fn attach(tracepoint: &str) -> Result<EmptyProgram, String> {
        // `mov r0, 0` (BPF_ALU64 | BPF_MOV | BPF_K) and `exit` (BPF_JMP | BPF_EXIT).
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = c"GPL";
        /// The leading fields of `bpf_attr` for `BPF_PROG_LOAD`.
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"stats_floor");
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
        };
        let program =
            bpf(BPF_PROG_LOAD, &attr).map_err(|e| format!("loading an empty program: {e}"))?;
        /// `bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
        #[repr(C)]
        struct RawTracepointOpen {
            name: u64,
            prog_fd: u32,
            _pad: u32,
        }
        let tracepoint = std::ffi::CString::new(tracepoint).map_err(|e| e.to_string())?;
        let attr = RawTracepointOpen {
            name: tracepoint.as_ptr() as u64,
            prog_fd: program.as_raw_fd() as u32,
            _pad: 0,
        };
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
            .map_err(|e| format!("attaching an empty program to {tracepoint:?}: {e}"))?;
        Ok(EmptyProgram { program, _link: link })
    }

    /// Its run time and runs so far, from its descriptor's fdinfo.
    fn cost(&self) -> Result<BpfCost, String> {
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.program.as_raw_fd()))
                .map_err(|e| e.to_string())?;
        let field = |name: &str| {
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no {name} in the empty program's fdinfo"))
        };
        Ok(BpfCost { run_ns: field("run_time_ns:")?, runs: field("run_cnt:")? })
    }
}

/// `bpf(cmd, attr)` returning a new descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `attr` is a `bpf_attr` prefix for `cmd`, valid for its size, and every pointer in
    // it points at memory that outlives the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), std::mem::size_of::<T>())
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
