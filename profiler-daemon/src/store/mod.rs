//! Where closed windows are kept for the whole retention period: an embedded database on disk
//! ([`disk`]), written by its own thread ([`writer`]). The most recent windows are also held in
//! memory by the aggregator ([`crate::aggregate::recent`]).

pub mod codec;
pub mod disk;
pub mod lost;
pub mod plan;
pub mod writer;

pub use disk::{DiskRetention, Store, StoreError, StoreStatus};
