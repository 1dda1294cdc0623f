//! Off-CPU samples: why a thread left the CPU, and the shape of its stack.
//!
//! The kernel program captures a thread's stacks when the scheduler switches it out, with the
//! task state the scheduler saw. The reason is read from that state and from the system call
//! the thread was in (its kernel stack's syscall entry frame), never guessed from user code.
//!
//! [`Budget`] keeps the number of captures per second inside a budget whatever the switch
//! rate, by lowering the probability of every capture (which the weights make up for).

use std::{sync::Arc, time::Duration};

pub use profiler_common::off_cpu::SCALE_ONE;

use crate::aggregate::{Frame, FrameKind, Stack};

/// `TASK_INTERRUPTIBLE`: asleep until an event or a signal.
const TASK_INTERRUPTIBLE: u32 = 0x1;
/// `TASK_UNINTERRUPTIBLE`: asleep until an event (disk I/O, page-in, kernel locks).
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `__TASK_STOPPED` and `__TASK_TRACED`.
const TASK_STOPPED_OR_TRACED: u32 = 0x4 | 0x8;

/// Why a thread was off the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Preempted: runnable, waiting for a CPU.
    Runnable,
    /// Uninterruptible sleep: disk I/O, a page-in, a kernel lock.
    Io,
    /// Waiting on a futex: a mutex, a condition variable, a semaphore, a thread join.
    Lock,
    /// In `nanosleep` or `clock_nanosleep` (`time.sleep`).
    Sleep,
    /// Any other interruptible wait: poll, epoll, select, a socket or pipe read, `wait`.
    Wait,
    /// A Python thread waiting for the GIL (on the GIL's condition variable).
    Gil,
    /// Stopped by a signal or a tracer.
    Stopped,
}

impl Reason {
    /// The label value and the marker frame's word.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Runnable => "runnable",
            Reason::Io => "io",
            Reason::Lock => "lock",
            Reason::Sleep => "sleep",
            Reason::Wait => "wait",
            Reason::Gil => crate::aggregate::kind::GIL_WAIT_REASON,
            Reason::Stopped => "stopped",
        }
    }

    /// The reason of a switch with task state `state` (0 when preempted) and kernel stack
    /// `stack` (leaf first).
    pub fn of(state: u32, stack: &[Arc<Frame>]) -> Reason {
        if state == 0 {
            return Reason::Runnable;
        }
        if state & TASK_UNINTERRUPTIBLE != 0 {
            return Reason::Io;
        }
        if state & TASK_INTERRUPTIBLE == 0 && state & TASK_STOPPED_OR_TRACED != 0 {
            return Reason::Stopped;
        }
        match syscall(stack) {
            Some("futex" | "futex_wait" | "futex_waitv") => Reason::Lock,
            Some("nanosleep" | "clock_nanosleep" | "clock_nanosleep_time32") => Reason::Sleep,
            _ => Reason::Wait,
        }
    }
}

/// The system call a kernel stack is in, from its syscall entry frame (`__x64_sys_futex`).
fn syscall(stack: &[Arc<Frame>]) -> Option<&str> {
    const ENTRIES: [&str; 4] = ["__x64_sys_", "__arm64_sys_", "__ia32_sys_", "__do_sys_"];
    stack
        .iter()
        .filter(|f| f.kind == FrameKind::Kernel)
        .find_map(|f| ENTRIES.iter().find_map(|prefix| f.function.strip_prefix(prefix)))
}

/// The text of the leaf marker frame of an off-CPU stack.
pub fn marker(reason: Reason) -> String {
    format!("[off-CPU: {}]", reason.name())
}

/// The stack of an off-CPU sample: the scheduler's own frames above `__schedule` (the
/// tracepoint and the program) dropped, and a marker frame naming the reason at the leaf, so
/// that a flame graph separates the reasons.
pub fn shape(stack: &Stack, reason: Reason) -> Stack {
    let start = stack
        .iter()
        .position(|f| f.kind == FrameKind::Kernel && &*f.function == "__schedule")
        .unwrap_or(0);
    std::iter::once(Arc::new(Frame::marker(&marker(reason))))
        .chain(stack[start..].iter().cloned())
        .collect()
}

/// The host-wide capture budget: from the captures of the last period, the scale of every
/// thread's capture probability for the next one.
#[derive(Debug)]
pub struct Budget {
    per_second: f64,
    scale: u32,
    captured: Option<u64>,
}

impl Budget {
    /// A budget of `per_second` captures, starting at scale one.
    pub fn new(per_second: u64) -> Budget {
        Budget { per_second: per_second.max(1) as f64, scale: SCALE_ONE, captured: None }
    }

    /// The scale in effect.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Takes the kernel's running total of captures after `elapsed`; returns the new scale
    /// when it should change. The rate the switches would have at scale one is estimated from
    /// the rate at the current scale, and the scale set so that it meets the budget; changes
    /// under a tenth are ignored, so that the scale does not flutter.
    pub fn update(&mut self, captured_total: u64, elapsed: Duration) -> Option<u32> {
        let previous = self.captured.replace(captured_total)?;
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let rate = captured_total.saturating_sub(previous) as f64 / secs;
        let unscaled = rate * f64::from(SCALE_ONE) / f64::from(self.scale.max(1));
        let wanted = if unscaled <= self.per_second {
            SCALE_ONE
        } else {
            // At least 1/65536: a scale of zero would record nothing and learn nothing.
            ((self.per_second / unscaled) * f64::from(SCALE_ONE)).clamp(1.0, f64::from(SCALE_ONE))
                as u32
        };
        let change = f64::from(wanted) / f64::from(self.scale.max(1));
        if (0.9..=1.1).contains(&change) && wanted != SCALE_ONE {
            return None;
        }
        if wanted == self.scale {
            return None;
        }
        self.scale = wanted;
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(names: &[&str]) -> Vec<Arc<Frame>> {
        names
            .iter()
            .map(|n| Arc::new(Frame { kind: FrameKind::Kernel, ..Frame::marker(n) }))
            .collect()
    }

    #[test]
    fn the_reason_comes_from_the_state_and_the_system_call() {
        let futex = kernel(&["__schedule", "futex_wait_queue", "__x64_sys_futex"]);
        let sleep = kernel(&["__schedule", "do_nanosleep", "__x64_sys_clock_nanosleep"]);
        let poll = kernel(&["__schedule", "ep_poll", "__arm64_sys_epoll_pwait"]);
        assert_eq!(Reason::of(0, &futex), Reason::Runnable, "preempted");
        assert_eq!(Reason::of(TASK_UNINTERRUPTIBLE, &poll), Reason::Io);
        assert_eq!(Reason::of(0x102, &poll), Reason::Io, "TASK_KILLABLE");
        assert_eq!(Reason::of(TASK_INTERRUPTIBLE, &futex), Reason::Lock);
        assert_eq!(Reason::of(TASK_INTERRUPTIBLE, &sleep), Reason::Sleep);
        assert_eq!(Reason::of(TASK_INTERRUPTIBLE, &poll), Reason::Wait);
        assert_eq!(Reason::of(TASK_INTERRUPTIBLE, &[]), Reason::Wait, "no kernel stack");
        assert_eq!(Reason::of(0x4, &[]), Reason::Stopped);
    }

    #[test]
    fn the_shape_drops_the_schedulers_frames_and_names_the_reason_at_the_leaf() {
        let stack: Stack = kernel(&[
            "bpf_trace_run3",
            "__traceiter_sched_switch",
            "__schedule",
            "schedule",
            "__x64_sys_futex",
        ])
        .into();
        let shaped = shape(&stack, Reason::Lock);
        let names: Vec<&str> = shaped.iter().map(|f| &*f.function).collect();
        assert_eq!(names, ["[off-CPU: lock]", "__schedule", "schedule", "__x64_sys_futex"]);
        assert_eq!(shaped[0].kind, FrameKind::Marker);
    }

    #[test]
    fn the_budget_scales_the_probability_down_and_back_up() {
        let second = Duration::from_secs(1);
        let mut budget = Budget::new(1_000);
        assert_eq!(budget.update(0, second), None, "the first reading is a baseline");
        // 4,000 captures a second at scale one: a quarter of them are wanted.
        assert_eq!(budget.update(4_000, second), Some(SCALE_ONE / 4));
        // At a quarter, the same switches give 1,000 a second: nothing to change.
        assert_eq!(budget.update(5_000, second), None);
        // Within a tenth of the budget: left alone.
        assert_eq!(budget.update(6_050, second), None);
        // The switches calm down: back to one.
        assert_eq!(budget.update(6_100, second), Some(SCALE_ONE));
        assert_eq!(budget.scale(), SCALE_ONE);
        assert_eq!(budget.update(6_200, second), None);
        // A storm far beyond the budget is cut, never to zero.
        assert_eq!(budget.update(u64::MAX, second), Some(1));
    }
}
