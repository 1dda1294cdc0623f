//! Output formats.
//!
//! The daemon answers queries with a pprof-layout [`Profile`](profiler_proto::v1::Profile)
//! ([`pprof`]); every other format is rendered from that message on the client side, through
//! the resolved stacks of a [`view::ProfileView`].

pub mod diff;
pub mod flamegraph;
pub mod folded;
pub mod lines;
pub mod live;
pub mod memory;
pub mod pprof;
pub mod speedscope;
pub mod top;
pub mod view;

pub use view::{ProfileView, ViewError};
