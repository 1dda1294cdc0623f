//! Resolved frames, stacks and the labels that a sample carries.

use std::{fmt, sync::Arc};

use super::kind::SampleKind;

/// Where a frame's code lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// Kernel code.
    Kernel,
    /// Native user-space code (machine code in an ELF file).
    Native,
    /// Interpreted Python code.
    Python,
    /// Not code: a marker such as a truncation or overflow note.
    Marker,
}

/// A binary that native frames point into.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Module {
    /// Path of the file as the process mapped it (`[kernel.kallsyms]` for the kernel).
    pub path: Arc<str>,
    /// Hex GNU build-id, when the file has one.
    pub build_id: Option<Arc<str>>,
}

impl Module {
    /// Pseudo-path of the kernel, as perf and pprof name it.
    pub const KERNEL_PATH: &'static str = "[kernel.kallsyms]";

    /// The file name after the last `/`.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// One resolved frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// What kind of code this is.
    pub kind: FrameKind,
    /// Function name (demangled), or `[unknown] 0x… (file+0x…)` when it could not be resolved.
    pub function: Arc<str>,
    /// The binary, for native and kernel frames.
    pub module: Option<Arc<Module>>,
    /// File offset in `module` for native frames, the address for kernel frames, 0 otherwise.
    pub address: u64,
    /// Source file, when known (always for Python frames).
    pub file: Option<Arc<str>>,
    /// Line number, or 0 when unknown.
    pub line: u32,
    /// First line of the function, or 0 when unknown.
    pub start_line: u32,
}

/// Bytes of an `Arc` allocation holding `payload` bytes: the two reference counts, the
/// payload, and the allocator's header.
pub const fn arc_bytes(payload: usize) -> usize {
    2 * size_of::<usize>() + payload + 16
}

impl Frame {
    /// Rough bytes this frame holds on the heap in its `Arc`, its strings and its module,
    /// counted as if nothing were shared (an upper bound for one frame).
    pub fn approx_bytes(&self) -> usize {
        arc_bytes(size_of::<Frame>())
            + arc_bytes(self.function.len())
            + self.file.as_ref().map_or(0, |f| arc_bytes(f.len()))
            + self.module.as_ref().map_or(0, |m| {
                arc_bytes(size_of::<Module>())
                    + arc_bytes(m.path.len())
                    + m.build_id.as_ref().map_or(0, |b| arc_bytes(b.len()))
            })
    }

    /// A marker frame, such as `[truncated]`.
    pub fn marker(text: &str) -> Frame {
        Frame {
            kind: FrameKind::Marker,
            function: text.into(),
            module: None,
            address: 0,
            file: None,
            line: 0,
            start_line: 0,
        }
    }
}

/// A stack, leaf first. Shared: the same stack is stored once per window.
pub type Stack = Arc<[Arc<Frame>]>;

/// What a sample is grouped and filtered by, besides its stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// Process id.
    pub pid: u32,
    /// Thread id, or 0 when samples are not grouped by thread.
    pub tid: u32,
    /// Process name (`/proc/PID/comm` of the main thread).
    pub comm: Arc<str>,
    /// Thread name, or empty when samples are not grouped by thread.
    pub thread: Arc<str>,
    /// Executable path.
    pub exe: Arc<str>,
    /// cgroup v2 path.
    pub cgroup: Arc<str>,
    /// Container id, from the cgroup path, or empty.
    pub container: Arc<str>,
    /// Kubernetes pod UID, from the cgroup path, or empty.
    pub pod_uid: Arc<str>,
    /// Pod name, from the Kubernetes API, or empty.
    pub pod: Arc<str>,
    /// Pod namespace, from the Kubernetes API, or empty.
    pub namespace: Arc<str>,
    /// Container name, from the Kubernetes API, or empty.
    pub container_name: Arc<str>,
    /// The runtime found in the process, for example `CPython 3.11.2`, or empty for native
    /// code.
    pub runtime: Arc<str>,
    /// Why an off-CPU sample's thread was off the CPU (`sleep`, `lock`, `io`, `gil`, …), or
    /// empty.
    pub reason: Arc<str>,
    /// For a Python thread whose process's GIL is known: `held` or `released`; else empty.
    pub gil: Arc<str>,
}

impl Labels {
    /// Rough bytes this label set holds on the heap, counted as if none of its strings were
    /// shared (an upper bound).
    pub fn approx_bytes(&self) -> usize {
        let strings = [
            &self.comm,
            &self.thread,
            &self.exe,
            &self.cgroup,
            &self.container,
            &self.pod_uid,
            &self.pod,
            &self.namespace,
            &self.container_name,
            &self.runtime,
            &self.reason,
            &self.gil,
        ];
        arc_bytes(size_of::<Labels>()) + strings.iter().map(|s| arc_bytes(s.len())).sum::<usize>()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid={} comm={}", self.pid, self.comm)?;
        if self.tid != 0 {
            write!(f, " tid={} thread={}", self.tid, self.thread)?;
        }
        Ok(())
    }
}

/// One symbolized sample on its way to the aggregator.
#[derive(Clone, Debug)]
pub struct StackSample {
    /// When the sample was taken, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The labels of the sampled thread.
    pub labels: Arc<Labels>,
    /// The merged stack, leaf first.
    pub stack: Stack,
    /// What it measures.
    pub kind: SampleKind,
    /// What it is worth, in the kind's unit (for a CPU sample, the sampling period).
    pub value: u64,
    /// The sampled thread (also when the labels leave it out).
    pub tid: u32,
}

/// A thread left the CPU and was captured: its stack from that moment, waiting for the
/// block's end. Its time counts as it passes, window by window, until the end arrives.
#[derive(Clone, Debug)]
pub struct BlockStart {
    /// The stack (kind [`SampleKind::OffCpu`], value 0), at the time the thread left the CPU.
    pub sample: StackSample,
    /// Thread id.
    pub tid: u32,
    /// Kernel time of the switch (boot clock), which the block's end names.
    pub boot_ns: u64,
    /// Inverse of the capture probability, in units of 1/65536.
    pub weight: u64,
}

/// A captured block ended: the thread is back on a CPU.
#[derive(Clone, Copy, Debug)]
pub struct BlockEnd {
    /// Thread id.
    pub tid: u32,
    /// Kernel time of the switch that began the block.
    pub boot_ns: u64,
    /// When the thread came back, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
}

/// Python calls counted by the entry probe, for one process, since the previous report.
#[derive(Clone, Debug)]
pub struct CallSample {
    /// The process's labels (without thread).
    pub labels: Arc<Labels>,
    /// Each function (a frame at its first line) and its new calls.
    pub counts: Vec<(Arc<Frame>, u64)>,
}

/// What the aggregator counts.
#[derive(Clone, Debug)]
pub enum Resolved {
    /// One sample.
    Sample(StackSample),
    /// Call counts.
    Calls(CallSample),
    /// A captured thread left the CPU.
    BlockStart(BlockStart),
    /// A captured block ended.
    BlockEnd(BlockEnd),
    /// Every record of the kernel up to this time (Unix nanoseconds) has arrived: a block
    /// still open is open at this time.
    Watermark(i64),
}
