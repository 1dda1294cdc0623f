//! Aggregation: symbolized samples are counted per (labels, stack) in fixed time windows, and
//! Python calls per (process, function).
//!
//! [`frame`] holds the resolved frame and label types, [`window`] the open and closed windows,
//! [`recent`] the closed windows kept in memory, and [`actor`] the task that owns them and
//! answers queries.

pub mod actor;
pub mod frame;
pub mod recent;
pub mod window;

pub use actor::{AggregatorHandle, AggregatorStatus};
pub use frame::{CallSample, Frame, FrameKind, Labels, Module, Resolved, Stack, StackSample};
pub use recent::{RecentWindows, Retention};
pub use window::{MergedProfile, Window, WindowBuilder};
