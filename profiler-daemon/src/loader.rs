//! Loading and attaching the kernel programs.
//!
//! [`Sampler::load`] checks privileges, the kernel's version and BTF first, so that the common
//! failures get an actionable message rather than a raw errno or a verifier log. Dropping the [`Sampler`] detaches every program.
//!
//! With [`SamplerConfig::off_cpu`] set, the off-CPU program is attached to `sched_switch` as
//! well: as a BTF tracepoint, or as a raw tracepoint where the BTF tracepoint cannot be loaded
//! or attached.

use std::{collections::HashMap, io, num::NonZeroU32, path::Path, time::Instant};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        PerfEvent, ProgramError, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
    util::online_cpus,
};
use profiler_common::{counters::Counter, python::CallKey};
use thiserror::Error;
use tracing::{info, warn};

use crate::kernel::{self, KernelError};

mod off_cpu;

pub use off_cpu::{
    OffCpuAttachment, OffCpuConfig, OffCpuScale, OffCpuThreads, OptionalHelpers,
    TASK_STORAGE_KERNEL,
};

/// The kernel object, built by `build.rs`, with the off-CPU program's thread state in
/// task-local storage.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));
/// The same programs with that state in a hash map, for kernels before 6.4.
static EBPF_OBJECT_HASH: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-hash"));

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// The entry probe that counts CPython calls.
const CALL_PROBE: &str = "python_call";

/// What the sampler needs to know before loading.
#[derive(Clone, Copy, Debug)]
pub struct SamplerConfig {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Sample the idle task as well.
    pub include_idle: bool,
    /// Turn on the kernel's BPF run-time statistics while the sampler runs.
    pub bpf_stats: bool,
    /// Size of the sample ring buffer in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Record a sampled subset of context switches (off-CPU samples); `None` leaves the
    /// off-CPU program unloaded.
    pub off_cpu: Option<OffCpuConfig>,
    /// Record one page fault in every `period` (memory samples); `None` leaves the page-fault
    /// program unloaded.
    pub memory: Option<MemoryConfig>,
}

/// How page faults are sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// One fault in this many is recorded, weighted with the bytes of all of them.
    pub period: u64,
}

impl MemoryConfig {
    /// The bytes one recorded fault stands for: the period's faults of one page each.
    pub fn bytes_per_sample(&self) -> u64 {
        self.period.saturating_mul(page_size())
    }
}

/// The size of a page (4 KiB on x86_64; 4, 16 or 64 KiB on aarch64).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1)
}

/// Why the programs could not be loaded or attached.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Missing capabilities.
    #[error(
        "profilerd lacks the privileges to use BPF ({missing}). Run it as root, or grant \
         CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (for example with the shipped systemd unit)"
    )]
    Privileges {
        /// What is missing (`missing CAP_BPF, …`), or what the kernel said.
        missing: String,
    },
    /// `perf_event_open` was refused by a distribution's `perf_event_paranoid` level above 2,
    /// which only `CAP_SYS_ADMIN` passes.
    #[error(
        "the kernel refused the cpu-clock perf event: kernel.perf_event_paranoid is {level}, a \
         Debian and Ubuntu restriction above upstream's highest level (2) that only CAP_SYS_ADMIN \
         passes, not CAP_PERFMON. Set it to 2 (`sysctl -w kernel.perf_event_paranoid=2`, and a \
         line `kernel.perf_event_paranoid = 2` in /etc/sysctl.d/ to keep it), or run profilerd \
         as root"
    )]
    PerfParanoid {
        /// The sysctl's value.
        level: i64,
    },
    /// The kernel refused to create the call probe's uprobe to a daemon without
    /// `CAP_SYS_ADMIN`: current kernels take it for uprobe perf events, where `CAP_PERFMON`
    /// once sufficed.
    #[error(
        "the kernel refused the uprobe that counts Python calls: creating one takes \
         CAP_SYS_ADMIN on this kernel (CAP_PERFMON is not enough), which profilerd does not \
         have. CPU, wall-clock and memory profiles are unaffected. To count calls, grant \
         CAP_SYS_ADMIN too (under the shipped systemd unit, a drop-in that adds it to \
         CapabilityBoundingSet= and AmbientCapabilities=), or leave --python-calls off"
    )]
    UprobePrivileges,
    /// The kernel is too old for the programs.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The kernel exposes no BTF.
    #[error(
        "the kernel has no BTF ({BTF_PATH} is missing): profilerd needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later; most distribution kernels have it)"
    )]
    NoBtf,
    /// The kernel refused the programs.
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] Box<EbpfError>),
    /// The kernel refused the program at attach time.
    #[error("preparing the sampling program failed: {0}")]
    Program(#[source] ProgramError),
    /// The frequency is above what the kernel allows.
    #[error(
        "sampling at {frequency} Hz was refused: the kernel allows at most {max} Hz \
         (kernel.perf_event_max_sample_rate); choose a lower --frequency"
    )]
    Frequency {
        /// Requested frequency.
        frequency: u64,
        /// The kernel's limit.
        max: u64,
    },
    /// Attaching to a CPU failed.
    #[error("attaching the sampler to CPU {cpu} failed: {source}")]
    Attach {
        /// The CPU.
        cpu: u32,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map was missing or of the wrong type.
    #[error("the eBPF object has no usable map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// The cause.
        #[source]
        source: MapError,
    },
    /// The online CPUs could not be listed.
    #[error("listing the online CPUs failed ({0}): {1}")]
    Cpus(&'static str, #[source] io::Error),
    /// The page-fault event could not be opened or the program attached to it.
    #[error(
        "attaching the page-fault program to CPU {cpu} failed: {source}. Memory profiles need \
         the page-faults software event; run with --no-memory to profile without them"
    )]
    Faults {
        /// The CPU.
        cpu: u32,
        /// The kernel's reason.
        #[source]
        source: ProgramError,
    },
    /// The off-CPU interval is 0.
    #[error("the off-CPU sampling interval must be above 0")]
    OffCpuInterval,
    /// The kernel's BTF lacks a `task_struct` member the off-CPU program reads.
    #[error(
        "off-CPU sampling needs the offset of task_struct.{member} from the kernel's BTF, which \
         failed: {source}. Run profilerd without off-CPU sampling on this kernel"
    )]
    OffCpuBtf {
        /// The member.
        member: &'static str,
        /// The cause.
        #[source]
        source: crate::btf::BtfError,
    },
    /// Neither the BTF tracepoint nor the raw tracepoint `sched_switch` could be used.
    #[error(
        "off-CPU sampling could not be attached to the sched_switch tracepoint: as a BTF \
         tracepoint the kernel said: {btf}; as a raw tracepoint it said: {raw}. Off-CPU \
         sampling needs BPF tracing programs (CONFIG_BPF_EVENTS) and kernel BTF; run profilerd \
         without off-CPU sampling on this kernel"
    )]
    OffCpuAttach {
        /// Why the BTF tracepoint failed.
        btf: Box<ProgramError>,
        /// Why the raw tracepoint failed.
        #[source]
        raw: ProgramError,
    },
}

/// The loaded and attached programs. Dropping it detaches them.
#[derive(Debug)]
pub struct Sampler {
    ebpf: Ebpf,
    cpus: Vec<u32>,
    program_id: u32,
    off_cpu: Option<(OffCpuAttachment, u32, OffCpuThreads)>,
    memory_program_id: Option<u32>,
    call_links: HashMap<u64, UProbeLinkId>,
    next_call_link: u64,
    _stats: Option<std::os::fd::OwnedFd>,
}

/// Time the kernel spent in the sampling program, from the kernel's BPF run-time statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCost {
    /// Total run time of the program, in nanoseconds.
    pub run_time_ns: u64,
    /// Number of runs.
    pub run_count: u64,
}

/// The statistics of program `id`; zero unless BPF statistics are enabled (`--bpf-stats` or
/// the `kernel.bpf_stats_enabled` sysctl). Read from the fdinfo of the daemon's own descriptor
/// of the program: listing the kernel's programs by id needs CAP_SYS_ADMIN, which the systemd
/// unit does not grant.
pub fn kernel_cost(program_id: u32) -> Option<KernelCost> {
    std::fs::read_dir("/proc/self/fdinfo").ok()?.flatten().find_map(|entry| {
        std::fs::read_to_string(entry.path()).ok().and_then(|t| fdinfo_cost(&t, program_id))
    })
}

/// The run-time statistics in a BPF program descriptor's fdinfo, if it is program `id`'s.
fn fdinfo_cost(fdinfo: &str, program_id: u32) -> Option<KernelCost> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
    };
    if field("prog_id:")? != u64::from(program_id) {
        return None;
    }
    Some(KernelCost { run_time_ns: field("run_time_ns:")?, run_count: field("run_cnt:")? })
}

impl Sampler {
    /// Loads the programs and attaches one `cpu-clock` perf event per online CPU.
    pub fn load(config: &SamplerConfig) -> Result<Sampler, LoadError> {
        let helpers =
            if config.off_cpu.is_some() { OptionalHelpers::probe() } else { OptionalHelpers::NONE };
        Sampler::load_with(config, helpers)
    }

    /// Loads as [`Sampler::load`] does, using of the optional helpers only those in `helpers`
    /// (which the kernel must have): this runs the fallbacks of older kernels on a newer one.
    pub fn load_with(
        config: &SamplerConfig,
        helpers: OptionalHelpers,
    ) -> Result<Sampler, LoadError> {
        let started = Instant::now();
        check_privileges(effective_capabilities())?;
        require_kernel()?;
        if !Path::new(BTF_PATH).exists() {
            return Err(LoadError::NoBtf);
        }
        raise_memlock_limit();
        let include_idle = u32::from(config.include_idle);
        // Wake the daemon early once a quarter of the ring is used; otherwise it drains on its
        // timer.
        let wakeup_bytes = u64::from(config.ring_buffer_bytes / 4);
        // CPython 3.9/3.10 threads are matched by thread pointer; without it they fall back
        // to native stacks.
        let btf = crate::btf::Btf::from_sys();
        let task_offset = |path: &str| {
            btf.as_ref()
                .map_err(Clone::clone)
                .and_then(|btf| btf.member_offset("task_struct", path))
                .map(u64::from)
        };
        let thread_pointer = task_offset(crate::btf::THREAD_POINTER_PATH).unwrap_or_else(|e| {
            warn!(error = %e, "no thread pointer offset; CPython 3.9/3.10 get native stacks only");
            0
        });
        // A process's identity beyond its pid; without it a reused pid or an execve is noticed
        // later, by /proc.
        let identity = ["group_leader", "start_boottime", "self_exec_id"].map(|path| {
            task_offset(path).unwrap_or_else(|e| {
                warn!(error = %e, "no offset of task_struct.{path}; processes are told apart by pid");
                0
            })
        });
        let off_cpu_globals = config
            .off_cpu
            .map(|c| off_cpu::globals(c, helpers, btf.as_ref()))
            .transpose()?
            .unwrap_or_default();
        let fault_bytes = config.memory.map_or(0, |m| m.bytes_per_sample());
        // mark_victim passes the victim's task since Linux 6.9 (a private pointer, then the
        // task and its uid), and only its pid before.
        let oom_arg_is_task = btf
            .as_ref()
            .ok()
            .and_then(|btf| btf.function_pointer_params("btf_trace_mark_victim").ok())
            .map_or(0u32, |params| u32::from(params >= 3));
        let oom_task = ["pid", "tgid", "comm"].map(|path| task_offset(path).unwrap_or(0));
        let oom_rss = btf
            .as_ref()
            .map_err(Clone::clone)
            .and_then(crate::btf::Btf::rss_counters)
            .map(|(mm, first, stride)| [mm, first, stride].map(u64::from))
            .unwrap_or_else(|e| {
                warn!(error = %e, "no resident page counters; OOM kills are recorded without the victim's size");
                [0; 3]
            });
        let interval_reciprocal = profiler_common::off_cpu::reciprocal(off_cpu_globals.interval_ns);
        let python_walk = kernel::PythonWalk::for_kernel(
            kernel::running_release().and_then(|r| kernel::KernelVersion::parse(&r)),
        );
        if python_walk != kernel::PythonWalk::WHOLE {
            info!(
                frames = python_walk.frames,
                threads = python_walk.threads,
                "a kernel before {}: Python stacks are walked {} frames deep",
                kernel::WHOLE_PYTHON_WALK,
                python_walk.frames
            );
        }
        let mut loader = EbpfLoader::new();
        loader
            // aya has no typed wrapper for task storage; the daemon never opens that map.
            .allow_unsupported_maps()
            .override_global("INCLUDE_IDLE", &include_idle, true)
            .override_global("FAULT_PERIOD_BYTES", &fault_bytes, true)
            .override_global("OFF_CPU_INTERVAL_NS", &off_cpu_globals.interval_ns, true)
            .override_global("OFF_CPU_INTERVAL_RECIPROCAL", &interval_reciprocal, true)
            .override_global("OFF_CPU_SKIP_PID", &off_cpu_globals.skip_pid, true)
            .override_global("TASK_PID", &off_cpu_globals.task_pid, true)
            .override_global("TASK_FLAGS", &off_cpu_globals.task_flags, true)
            .override_global("TASK_STATE", &off_cpu_globals.task_state, true)
            .override_global("SWITCH_HAS_PREV_STATE", &off_cpu_globals.has_prev_state, true)
            .override_global("TICK_NS", &off_cpu_globals.tick_ns, true)
            .override_global("TASK_PT_REGS", &off_cpu_globals.task_pt_regs, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("TASK_THREAD_POINTER", &thread_pointer, true)
            .override_global("PY_FRAMES_LIMIT", &python_walk.frames, true)
            .override_global("PY_THREADS_LIMIT", &python_walk.threads, true)
            .override_global("TASK_GROUP_LEADER", &identity[0], true)
            .override_global("TASK_START_BOOTTIME", &identity[1], true)
            .override_global("TASK_SELF_EXEC_ID", &identity[2], true)
            .override_global("OOM_ARG_IS_TASK", &oom_arg_is_task, true)
            .override_global("OOM_TASK_PID", &oom_task[0], true)
            .override_global("OOM_TASK_TGID", &oom_task[1], true)
            .override_global("OOM_TASK_COMM", &oom_task[2], true)
            .override_global("OOM_TASK_MM", &oom_rss[0], true)
            .override_global("OOM_RSS_FIRST", &oom_rss[1], true)
            .override_global("OOM_RSS_STRIDE", &oom_rss[2], true)
            .map_max_entries("SAMPLES", config.ring_buffer_bytes);
        let mut threads = OffCpuThreads::choose(config.off_cpu.as_ref());
        let loaded = match threads {
            OffCpuThreads::TaskStorage => match loader.load(EBPF_OBJECT) {
                Err(e) if !is_permission_error(&e) => {
                    warn!(error = %e, "the programs with task-local storage failed to load; using a hash map for off-CPU thread state");
                    threads = OffCpuThreads::HashMap;
                    loader.load(EBPF_OBJECT_HASH)
                }
                loaded => loaded,
            },
            OffCpuThreads::HashMap => loader.load(EBPF_OBJECT_HASH),
        };
        let mut ebpf = loaded.map_err(|e| privileges_or(e, |e| LoadError::Load(Box::new(e))))?;
        let program: &mut PerfEvent = ebpf
            .program_mut("sample_cpu")
            .ok_or(LoadError::Program(ProgramError::UnexpectedProgramType))?
            .try_into()
            .map_err(LoadError::Program)?;
        program.load().map_err(|e| privileges_or(e, LoadError::Program))?;
        let program_id = program.info().map_err(LoadError::Program)?.id();
        let cpus = online_cpus().map_err(|(what, e)| LoadError::Cpus(what, e))?;
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(config.frequency),
                    true,
                )
                .map_err(|source| attach_error(config.frequency, cpu, source))?;
        }
        let calls: &mut UProbe = ebpf
            .program_mut(CALL_PROBE)
            .ok_or(LoadError::Program(ProgramError::UnexpectedProgramType))?
            .try_into()
            .map_err(LoadError::Program)?;
        calls.load().map_err(|e| privileges_or(e, LoadError::Program))?;
        let off_cpu = match config.off_cpu {
            Some(c) => Some(off_cpu::attach(&mut ebpf, c.raw_tracepoint)?),
            None => None,
        };
        // The raw tracepoint keeps thread state in the hash map in either object.
        if off_cpu.is_some_and(|(how, _)| how == OffCpuAttachment::RawTracePoint) {
            threads = OffCpuThreads::HashMap;
        }
        let memory_program_id = match config.memory {
            Some(m) => Some(attach_faults(&mut ebpf, &cpus, m)?),
            None => None,
        };
        // A kernel without the tracepoint (or its BTF) still profiles; it does not see kills.
        match attach_oom(&mut ebpf) {
            Ok(()) => {}
            Err(e) if is_permission_error(&e) => return Err(privileges_or(e, LoadError::Program)),
            Err(e) => warn!(error = %e, "OOM kills are not recorded: mark_victim failed"),
        }
        // Without it a new program is read at its first sample, which a short-lived one may
        // not outlive.
        match attach_btf_tracepoint(&mut ebpf, "process_exec", "sched_process_exec") {
            Ok(()) => {}
            Err(e) if is_permission_error(&e) => return Err(privileges_or(e, LoadError::Program)),
            Err(e) => warn!(error = %e, "execve is not traced: sched_process_exec failed"),
        }
        let stats = config
            .bpf_stats
            .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
            .transpose()
            .unwrap_or_else(|e| {
                warn!(error = %e, "could not enable BPF run-time statistics");
                None
            });
        info!(
            cpus = cpus.len(),
            frequency = config.frequency,
            off_cpu = ?off_cpu.map(|(how, _)| how),
            off_cpu_threads = ?off_cpu.map(|_| threads),
            load_ms = started.elapsed().as_millis(),
            "sampler attached"
        );
        Ok(Sampler {
            ebpf,
            cpus,
            program_id,
            off_cpu: off_cpu.map(|(how, id)| (how, id, threads)),
            memory_program_id,
            call_links: HashMap::new(),
            next_call_link: 0,
            _stats: stats,
        })
    }

    /// Attaches the call-counting probe at file offset `offset` of `target` (an interpreter
    /// file as process `pid` sees it), for that process only. Returns a handle for
    /// [`Sampler::detach_calls`].
    pub fn attach_calls(&mut self, pid: u32, target: &Path, offset: u64) -> Result<u64, LoadError> {
        let pid = NonZeroU32::new(pid).ok_or(LoadError::Program(ProgramError::NotAttached))?;
        let program = self.call_probe()?;
        let link = program
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                target,
                UProbeScope::OneProcess(pid),
            )
            .map_err(|e| {
                let admin = effective_capabilities() & (1 << CAP_SYS_ADMIN) != 0;
                if is_permission_error(&e) && !admin {
                    LoadError::UprobePrivileges
                } else {
                    privileges_or(e, LoadError::Program)
                }
            })?;
        self.next_call_link += 1;
        self.call_links.insert(self.next_call_link, link);
        Ok(self.next_call_link)
    }

    /// Detaches a probe attached by [`Sampler::attach_calls`].
    pub fn detach_calls(&mut self, handle: u64) {
        let Some(link) = self.call_links.remove(&handle) else { return };
        if let Ok(program) = self.call_probe()
            && let Err(e) = program.detach(link)
        {
            warn!(error = %e, "detaching the call probe failed");
        }
    }

    fn call_probe(&mut self) -> Result<&mut UProbe, LoadError> {
        self.ebpf
            .program_mut(CALL_PROBE)
            .ok_or(LoadError::Program(ProgramError::UnexpectedProgramType))?
            .try_into()
            .map_err(LoadError::Program)
    }

    /// Takes the kernel's call counts (once).
    pub fn take_python_calls(&mut self) -> Result<KernelCalls, LoadError> {
        self.take("PY_CALLS", PerCpuHashMap::try_from).map(KernelCalls)
    }

    /// Kernel id of the sampling program.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Kernel id of the page-fault program, when it is attached.
    pub fn memory_program_id(&self) -> Option<u32> {
        self.memory_program_id
    }

    /// Kernel id of the off-CPU program, when it is attached.
    pub fn off_cpu_program_id(&self) -> Option<u32> {
        self.off_cpu.map(|(_, id, _)| id)
    }

    /// How the off-CPU program is attached, when it is.
    pub fn off_cpu_attachment(&self) -> Option<OffCpuAttachment> {
        self.off_cpu.map(|(how, _, _)| how)
    }

    /// Where the off-CPU program keeps thread state, when it is attached.
    pub fn off_cpu_threads(&self) -> Option<OffCpuThreads> {
        self.off_cpu.map(|(_, _, threads)| threads)
    }

    /// Takes the scale of the off-CPU capture probability (once).
    pub fn take_off_cpu_scale(&mut self) -> Result<OffCpuScale, LoadError> {
        self.take("OFF_CPU_SCALE", Array::try_from).map(OffCpuScale)
    }

    /// The CPUs sampled.
    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// Takes the sample ring buffer (once).
    pub fn take_samples(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        self.take("SAMPLES", RingBuf::try_from)
    }

    /// Takes the kernel's table of Python processes (once).
    pub fn take_python_procs(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u32, profiler_common::python::PyProcess>, LoadError>
    {
        self.take("PY_PROCS", aya::maps::HashMap::try_from)
    }

    /// Takes the kernel's table of processes whose user stacks samples copy (once).
    pub fn take_stack_copies(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u32, u32>, LoadError> {
        self.take("UNWIND_PROCS", aya::maps::HashMap::try_from)
    }

    /// Takes the per-CPU counters (once).
    pub fn take_counters(&mut self) -> Result<KernelCounters, LoadError> {
        self.take("COUNTERS", PerCpuArray::try_from).map(KernelCounters)
    }

    fn take<T>(
        &mut self,
        name: &'static str,
        convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
    ) -> Result<T, LoadError> {
        let map = self.ebpf.take_map(name).ok_or(LoadError::Map {
            name,
            source: MapError::InvalidName { name: name.to_owned() },
        })?;
        convert(map).map_err(|source| LoadError::Map { name, source })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        info!(cpus = self.cpus.len(), "detaching the sampler");
    }
}

/// The kernel side's `COUNTERS` map.
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl KernelCounters {
    /// Totals over all CPUs, indexed by [`Counter`].
    pub fn read(&self) -> Result<[u64; Counter::COUNT as usize], MapError> {
        let mut totals = [0; Counter::COUNT as usize];
        for counter in Counter::ALL {
            totals[counter as usize] = self.0.get(&(counter as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }
}

/// The kernel side's `PY_CALLS` map: cumulative calls per (process, code object).
pub struct KernelCalls(PerCpuHashMap<MapData, CallKey, u64>);

impl std::fmt::Debug for KernelCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCalls")
    }
}

impl KernelCalls {
    /// Every key with its count summed over CPUs.
    pub fn read(&self) -> Vec<(CallKey, u64)> {
        self.0.iter().filter_map(Result::ok).map(|(key, cpus)| (key, cpus.iter().sum())).collect()
    }

    /// Deletes a key.
    pub fn remove(&mut self, key: &CallKey) {
        let _ = self.0.remove(key);
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Fails unless the effective capability set `caps` allows loading BPF, opening perf events
/// and reading other processes' memory.
fn check_privileges(caps: u64) -> Result<(), LoadError> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Privileges { missing: format!("missing {}", missing.join(", ")) })
    }
}

/// Fails with the missing capabilities named, before anything else is set up.
pub fn require_privileges() -> Result<(), LoadError> {
    check_privileges(effective_capabilities())
}

/// Fails when the running kernel is older than the programs need, naming its release and what
/// it lacks. A release that cannot be read or parsed passes (see [`kernel::check_release`]).
pub fn require_kernel() -> Result<(), LoadError> {
    let Some(release) = kernel::running_release() else {
        warn!("could not read the kernel release; not checking the kernel version");
        return Ok(());
    };
    match kernel::check_release(&release)? {
        Some(version) => info!(%release, %version, "kernel version supported"),
        None => warn!(%release, "unrecognized kernel release; not checking the kernel version"),
    }
    Ok(())
}

/// Whether BPF privileges are present; used by tests to decide whether to skip.
pub fn has_bpf_privileges() -> bool {
    check_privileges(effective_capabilities()).is_ok() && Path::new(BTF_PATH).exists()
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones charge the cgroup.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid, initialized struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        warn!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on Linux 5.11+, where BPF memory is charged to the cgroup"
        );
    }
}

/// Whether `err` says that privileges are missing. The verifier refusing a program fails with
/// `EACCES` too, but then it explains why in its log, and no privilege would help.
fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    if is_verifier_rejection(err) {
        return false;
    }
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether `err` is the verifier refusing a program: a failed load with a verifier log.
fn is_verifier_rejection(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(ProgramError::LoadError { verifier_log, .. }) = e.downcast_ref::<ProgramError>()
        {
            return !verifier_log.to_string().trim().is_empty();
        }
        cur = e.source();
    }
    false
}

fn privileges_or<E: std::error::Error + 'static>(
    err: E,
    other: impl FnOnce(E) -> LoadError,
) -> LoadError {
    if is_permission_error(&err) {
        LoadError::Privileges { missing: format!("the kernel said: {err}") }
    } else {
        other(err)
    }
}

fn attach_error(frequency: u64, cpu: u32, source: ProgramError) -> LoadError {
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(max) if frequency > max => LoadError::Frequency { frequency, max },
        _ if is_permission_error(&source) => {
            let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok());
            paranoid_refusal(paranoid, effective_capabilities()).unwrap_or_else(|| {
                privileges_or(source, |source| LoadError::Attach { cpu, source })
            })
        }
        _ => LoadError::Attach { cpu, source },
    }
}

/// Debian and Ubuntu kernels add `perf_event_paranoid` levels above upstream's 2 (Debian's
/// default is 3) at which `perf_event_open` needs `CAP_SYS_ADMIN`: a refusal there is that
/// setting, not a missing `CAP_PERFMON`.
fn paranoid_refusal(level: Option<i64>, caps: u64) -> Option<LoadError> {
    match level {
        Some(level) if level > 2 && caps & (1 << CAP_SYS_ADMIN) == 0 => {
            Some(LoadError::PerfParanoid { level })
        }
        _ => None,
    }
}

/// Loads `sample_fault` and attaches it to the `page-faults` software event of every CPU in
/// `cpus`, one event in every `period` faults. Returns its kernel id.
fn attach_faults(ebpf: &mut Ebpf, cpus: &[u32], config: MemoryConfig) -> Result<u32, LoadError> {
    let program: &mut PerfEvent = ebpf
        .program_mut("sample_fault")
        .ok_or(LoadError::Program(ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(LoadError::Program)?;
    program.load().map_err(|e| privileges_or(e, LoadError::Program))?;
    let id = program.info().map_err(LoadError::Program)?.id();
    for &cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::PageFaults),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(config.period),
                true,
            )
            .map_err(|source| LoadError::Faults { cpu, source })?;
    }
    Ok(id)
}

/// Loads `oom_victim` and attaches it to the `mark_victim` BTF tracepoint.
fn attach_oom(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    attach_btf_tracepoint(ebpf, "oom_victim", "mark_victim")
}

/// Loads `program` and attaches it to the BTF tracepoint `tracepoint`.
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
) -> Result<(), ProgramError> {
    let btf = aya::Btf::from_sys_fs()?;
    let program: &mut aya::programs::BtfTracePoint =
        ebpf.program_mut(program).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
    program.load(tracepoint, &btf)?;
    program.attach()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_capabilities_are_enough() {
        assert!(check_privileges(u64::MAX).is_ok());
        let split = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        assert!(check_privileges(split).is_ok());
    }

    #[test]
    fn missing_capabilities_are_named() {
        let err = check_privileges(1 << CAP_SYS_PTRACE).unwrap_err().to_string();
        assert!(err.contains("missing CAP_BPF, CAP_PERFMON)"), "{err}");
        assert!(err.contains("Run it as root"), "{err}");
        let err = check_privileges(1 << CAP_SYS_ADMIN).unwrap_err().to_string();
        assert!(err.contains("missing CAP_SYS_PTRACE)"), "{err}");
    }

    #[test]
    fn a_refusal_above_paranoid_2_without_cap_sys_admin_names_the_sysctl() {
        let perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        let err = paranoid_refusal(Some(3), perfmon).unwrap().to_string();
        assert!(err.contains("kernel.perf_event_paranoid is 3"), "{err}");
        assert!(err.contains("sysctl -w kernel.perf_event_paranoid=2"), "{err}");
        assert!(paranoid_refusal(Some(4), perfmon).is_some());
        // Upstream levels, CAP_SYS_ADMIN, or an unreadable sysctl: some other cause.
        assert!(paranoid_refusal(Some(2), perfmon).is_none());
        assert!(paranoid_refusal(Some(-1), perfmon).is_none());
        assert!(paranoid_refusal(Some(3), perfmon | (1 << CAP_SYS_ADMIN)).is_none());
        assert!(paranoid_refusal(None, perfmon).is_none());
    }

    #[test]
    fn kernel_cost_comes_from_the_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2059\nprog_type:\t7\n\
                      prog_jited:\t1\nprog_tag:\tab15a0c4218f2564\nmemlock:\t8192\n\
                      prog_id:\t371\nrun_time_ns:\t1234567\nrun_cnt:\t890\n\
                      recursion_misses:\t0\nverified_insns:\t1523\n";
        assert_eq!(
            fdinfo_cost(fdinfo, 371),
            Some(KernelCost { run_time_ns: 1_234_567, run_count: 890 })
        );
        assert_eq!(fdinfo_cost(fdinfo, 372), None);
        // A map's or a file's fdinfo.
        assert_eq!(fdinfo_cost("pos:\t0\nflags:\t02\nmap_type:\t27\nmap_id:\t371\n", 371), None);
    }

    #[test]
    fn a_verifier_rejection_is_not_a_privilege_problem() {
        let load_error = |errno: i32, log: &str| ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
        };
        let rejected = load_error(libc::EACCES, "273: (bf) r7 = r6\nR6 !read_ok\n");
        assert!(!is_permission_error(&rejected));
        let err = privileges_or(rejected, LoadError::Program).to_string();
        assert!(err.starts_with("preparing the sampling program failed"), "{err}");
        assert!(err.contains("R6 !read_ok"), "{err}");
        // Without CAP_BPF the kernel refuses before verifying: no log.
        assert!(is_permission_error(&load_error(libc::EPERM, "")));
        assert!(matches!(
            privileges_or(load_error(libc::EPERM, ""), LoadError::Program),
            LoadError::Privileges { .. }
        ));
    }

    #[test]
    fn permission_errors_are_found_in_the_source_chain() {
        #[derive(Debug, Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        assert!(is_permission_error(&Outer(io::Error::from_raw_os_error(libc::EPERM))));
        assert!(!is_permission_error(&Outer(io::Error::from_raw_os_error(libc::EINVAL))));
    }
}
