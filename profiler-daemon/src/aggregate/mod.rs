//! Aggregation: symbolized samples are counted per (labels, stack) in fixed time windows, and
//! Python calls per (process, function).
//!
//! [`frame`] holds the resolved frame and label types, [`window`] the open and closed windows,
//! and [`actor`] the task that owns the open window and answers queries.

pub mod actor;
pub mod frame;
pub mod window;

pub use actor::{AggregatorHandle, AggregatorStatus};
pub use frame::{CallSample, Frame, FrameKind, Labels, Module, Resolved, Stack, StackSample};
pub use window::{MergedProfile, Window, WindowBuilder};
