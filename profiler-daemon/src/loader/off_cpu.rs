//! The off-CPU program: what it needs from the kernel's BTF, which newer helpers it may use,
//! attaching it to `sched_switch` (as a BTF tracepoint, else as a raw tracepoint), and the
//! scale through which the daemon keeps its capture rate inside a budget.

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
    programs::{BtfTracePoint, ProgramError, ProgramType, RawTracePoint},
    sys::{BpfHelper, is_helper_supported},
};
use profiler_common::off_cpu::SCALE_ONE;
use tracing::{info, warn};

use super::{LoadError, is_permission_error, privileges_or};

/// The off-CPU program as a BTF tracepoint, and the same as a raw tracepoint.
const OFF_CPU_BTF: &str = "off_cpu_switch";
const OFF_CPU_RAW: &str = "off_cpu_switch_raw";
/// The tracepoint both attach to.
const SCHED_SWITCH: &str = "sched_switch";
/// Parameters of `btf_trace_sched_switch` once it passes `prev_state` (Linux 5.18): the
/// tracepoint's data pointer, `preempt`, `prev`, `next`, `prev_state`.
const SCHED_SWITCH_PARAMS_WITH_STATE: u32 = 5;

/// How the off-CPU program samples context switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuConfig {
    /// The interval `T`: a thread's switch-out is recorded with probability
    /// `min(1, time since its last recorded switch-out / T)` (times the scale the daemon sets
    /// through [`OffCpuScale`]), so a thread that blocks less often than every `T` has every
    /// block recorded. Must not be 0.
    pub interval_ns: u64,
    /// Attach as a raw tracepoint without trying the BTF tracepoint first: the fallback's
    /// program, which reads tasks through `bpf_probe_read_kernel`, on any kernel.
    pub raw_tracepoint: bool,
    /// A process whose switches are not recorded (0: none): the daemon itself, whose threads
    /// would otherwise block and wake for every record they handle, and be recorded for it.
    pub skip_pid: u32,
    /// Keep the per-thread state in the tasks themselves where the kernel allows it
    /// ([`OffCpuThreads::TaskStorage`]); `false` keeps it in a hash map on any kernel, the
    /// path of older kernels.
    pub task_storage: bool,
}

impl Default for OffCpuConfig {
    fn default() -> Self {
        OffCpuConfig {
            interval_ns: 10_000_000,
            raw_tracepoint: false,
            skip_pid: 0,
            task_storage: true,
        }
    }
}

/// Where the off-CPU program keeps each thread's state (its open block, its mean time between
/// switch-outs and its random generator), which it looks up twice at every context switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffCpuThreads {
    /// In task-local storage, found from the task pointers the BTF tracepoint passes and freed
    /// with the task: Linux 6.4 on, where it allocates from BPF's own allocator, which is safe
    /// under the scheduler's locks.
    TaskStorage,
    /// In a hash map keyed by thread id, the least recently used entry making room: older
    /// kernels, and the raw tracepoint, whose task pointers are untyped.
    HashMap,
}

/// The first kernel whose task-local storage the off-CPU program uses (see
/// [`OffCpuThreads::TaskStorage`]).
pub const TASK_STORAGE_KERNEL: crate::kernel::KernelVersion =
    crate::kernel::KernelVersion::new(6, 4);

impl OffCpuThreads {
    /// Where `config` keeps thread state on the running kernel (`None`: no off-CPU program,
    /// which the hash map's object serves as well).
    pub fn choose(config: Option<&OffCpuConfig>) -> OffCpuThreads {
        let wanted = config.is_some_and(|c| c.task_storage && !c.raw_tracepoint);
        let kernel =
            crate::kernel::running_release().and_then(|r| crate::kernel::KernelVersion::parse(&r));
        if wanted && kernel.is_some_and(|v| v >= TASK_STORAGE_KERNEL) {
            OffCpuThreads::TaskStorage
        } else {
            OffCpuThreads::HashMap
        }
    }
}

/// How the off-CPU program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffCpuAttachment {
    /// As the BTF tracepoint `tp_btf/sched_switch`.
    BtfTracePoint,
    /// As the raw tracepoint `raw_tp/sched_switch`: asked for, or the BTF tracepoint could not
    /// be loaded or attached.
    RawTracePoint,
}

/// The kernel side's `OFF_CPU_SCALE` map: the factor, in 1/65536, by which the off-CPU
/// program multiplies its capture probability.
pub struct OffCpuScale(pub(super) Array<MapData, u32>);

impl std::fmt::Debug for OffCpuScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OffCpuScale")
    }
}

impl OffCpuScale {
    /// Sets the scale: [`SCALE_ONE`] (65536) records with the full probability, lower values
    /// proportionally less often (and with proportionally larger weights).
    pub fn set(&mut self, scale: u32) -> Result<(), MapError> {
        self.0.set(0, scale, 0)
    }

    /// The current scale.
    pub fn get(&self) -> Result<u32, MapError> {
        self.0.get(&0, 0)
    }
}

/// Helpers that not every kernel the programs run on lets a tracing program call, which the
/// off-CPU program uses where the kernel does and does without elsewhere (the verifier never
/// sees a call to a helper the kernel refuses: the global that gates it is read-only, so the
/// call is dead code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalHelpers {
    /// `bpf_jiffies64`: most context switches are decided on the tick count; without it,
    /// every switch-out reads the precise clock.
    pub jiffies: bool,
    /// `bpf_get_current_task_btf` (Linux 5.11) and `bpf_task_pt_regs` (5.15): the system call
    /// a thread blocks in, which tells a wait for the GIL; without them GIL waits go unseen.
    pub task_pt_regs: bool,
}

impl OptionalHelpers {
    /// The helpers the running kernel lets a raw tracepoint program call, probed by loading a
    /// minimal program that calls each (the verifier names a helper it refuses).
    pub fn probe() -> OptionalHelpers {
        let has = |helper: BpfHelper, name: &str| {
            is_helper_supported(ProgramType::RawTracePoint, helper).unwrap_or_else(|e| {
                warn!(error = %e, "probing the kernel for {name} failed; not using it");
                false
            })
        };
        let jiffies = has(BpfHelper::BPF_FUNC_jiffies64, "bpf_jiffies64");
        let task_pt_regs =
            has(BpfHelper::BPF_FUNC_get_current_task_btf, "bpf_get_current_task_btf")
                && has(BpfHelper::BPF_FUNC_task_pt_regs, "bpf_task_pt_regs");
        if !jiffies {
            info!(
                "tracing programs cannot call bpf_jiffies64 here: off-CPU sampling reads the precise clock at every switch"
            );
        }
        if !task_pt_regs {
            info!("no bpf_task_pt_regs (Linux 5.15+): off-CPU samples do not tell GIL waits");
        }
        OptionalHelpers { jiffies, task_pt_regs }
    }

    /// None of them: how the programs run on the oldest kernels.
    pub const NONE: OptionalHelpers = OptionalHelpers { jiffies: false, task_pt_regs: false };
}

/// The off-CPU program's globals.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OffCpuGlobals {
    pub interval_ns: u64,
    pub task_pid: u64,
    pub task_flags: u64,
    pub task_state: u64,
    pub has_prev_state: u32,
    pub tick_ns: u64,
    pub task_pt_regs: u32,
    pub skip_pid: u32,
}

/// The length of a tick, `jiffies`' unit (`TICK_NSEC`): the resolution of
/// `CLOCK_MONOTONIC_COARSE`. `None` when the clock is missing.
fn tick_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes the timespec it is given.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return None;
    }
    let ns = u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    // The program's arithmetic allows up to a second.
    (ns > 0 && ns <= 1_000_000_000).then_some(ns)
}

/// The off-CPU program's globals for `config` on a kernel with `helpers`, with `task_struct`
/// offsets from `btf`.
pub(super) fn globals(
    config: OffCpuConfig,
    helpers: OptionalHelpers,
    btf: Result<&crate::btf::Btf, &crate::btf::BtfError>,
) -> Result<OffCpuGlobals, LoadError> {
    if config.interval_ns == 0 {
        return Err(LoadError::OffCpuInterval);
    }
    let btf = btf.map_err(|e| LoadError::OffCpuBtf { member: "pid", source: e.clone() })?;
    let offset = |member: &'static str| {
        btf.member_offset("task_struct", member)
            .map(u64::from)
            .map_err(|source| LoadError::OffCpuBtf { member, source })
    };
    // `state` became `__state` in Linux 5.14.
    let task_state = offset("__state").or_else(|_| offset("state"))?;
    let has_prev_state = match btf.function_pointer_params("btf_trace_sched_switch") {
        Ok(n) => u32::from(n >= SCHED_SWITCH_PARAMS_WITH_STATE),
        Err(e) => {
            warn!(error = %e, "sched_switch's arguments unknown; off-CPU states are read from the task");
            0
        }
    };
    let tick_ns = if helpers.jiffies { tick_ns() } else { None };
    Ok(OffCpuGlobals {
        interval_ns: config.interval_ns,
        task_pid: offset("pid")?,
        task_flags: offset("flags")?,
        task_state,
        has_prev_state,
        tick_ns: tick_ns.unwrap_or(0),
        task_pt_regs: u32::from(helpers.task_pt_regs),
        skip_pid: config.skip_pid,
    })
}

/// Sets the off-CPU scale to one and attaches the off-CPU program to `sched_switch`, as a BTF
/// tracepoint (unless `raw_only`) or else as a raw tracepoint. Returns how, and the program's
/// id.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    raw_only: bool,
) -> Result<(OffCpuAttachment, u32), LoadError> {
    let map = ebpf.map_mut("OFF_CPU_SCALE").ok_or(LoadError::Map {
        name: "OFF_CPU_SCALE",
        source: MapError::InvalidName { name: "OFF_CPU_SCALE".to_owned() },
    })?;
    let mut scale: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| LoadError::Map { name: "OFF_CPU_SCALE", source })?;
    scale
        .set(0, SCALE_ONE, 0)
        .map_err(|source| LoadError::Map { name: "OFF_CPU_SCALE", source })?;
    let btf_error = if raw_only {
        None
    } else {
        match attach_btf(ebpf) {
            Ok(id) => {
                info!("off-CPU sampling attached to sched_switch as a BTF tracepoint");
                return Ok((OffCpuAttachment::BtfTracePoint, id));
            }
            Err(e) if is_permission_error(&e) => {
                return Err(privileges_or(e, LoadError::Program));
            }
            Err(e) => {
                warn!(error = %e, "the BTF tracepoint sched_switch failed; trying the raw tracepoint");
                Some(e)
            }
        }
    };
    match attach_raw(ebpf) {
        Ok(id) => {
            info!("off-CPU sampling attached to sched_switch as a raw tracepoint");
            Ok((OffCpuAttachment::RawTracePoint, id))
        }
        Err(raw) if is_permission_error(&raw) => Err(privileges_or(raw, LoadError::Program)),
        Err(raw) => Err(match btf_error {
            Some(btf) => LoadError::OffCpuAttach { btf: Box::new(btf), raw },
            None => LoadError::Program(raw),
        }),
    }
}

fn attach_btf(ebpf: &mut Ebpf) -> Result<u32, ProgramError> {
    let btf = aya::Btf::from_sys_fs()?;
    let program: &mut BtfTracePoint =
        ebpf.program_mut(OFF_CPU_BTF).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
    program.load(SCHED_SWITCH, &btf)?;
    let id = program.info()?.id();
    if let Err(e) = program.attach() {
        let _ = program.unload();
        return Err(e);
    }
    Ok(id)
}

fn attach_raw(ebpf: &mut Ebpf) -> Result<u32, ProgramError> {
    let program: &mut RawTracePoint =
        ebpf.program_mut(OFF_CPU_RAW).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
    program.load()?;
    let id = program.info()?.id();
    program.attach(SCHED_SWITCH)?;
    Ok(id)
}
