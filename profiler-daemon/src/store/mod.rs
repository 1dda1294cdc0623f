//! Where closed windows are kept: in memory for the most recent ones ([`memory`]), and on disk
//! in an embedded database for the whole retention period ([`disk`]).

pub mod codec;
pub mod disk;
pub mod memory;
pub mod plan;
pub mod writer;

pub use disk::{DiskRetention, Store, StoreError, StoreStatus};
pub use memory::{Retention, WindowStore};
