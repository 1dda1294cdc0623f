//! Aggregation: symbolized samples are counted per (labels, stack) in fixed time windows, and
//! Python calls per (process, function).
//!
//! [`frame`] holds the resolved frame and label types, [`kind`] what samples measure,
//! [`window`] the open and closed windows, [`blocks`] the off-CPU blocks still open,
//! [`recent`] the closed windows kept in memory, and [`actor`] the task that owns them and
//! answers queries.

pub mod actor;
pub mod blocks;
pub mod frame;
pub mod kind;
pub mod recent;
pub mod window;

pub use actor::{AggregatorHandle, AggregatorStatus};
pub use frame::{
    BlockEnd, BlockStart, CallSample, Frame, FrameKind, Labels, Module, Resolved, Stack,
    StackSample, arc_bytes,
};
pub use kind::{Mode, SampleKind, Tally, Unit};
pub use recent::{RecentWindows, Retention};
pub use window::{MergedProfile, Window, WindowBuilder};
