//! How full the daemon's bounded caches and tables are, by name, for `Status` and `/metrics`.
//!
//! Each owner (the collector, the symbolizer) publishes the sizes of what it holds after it
//! changes them, and readers take a copy; the sizes are entry counts next to each bound.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

/// One cache or table: its entries and the most it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSize {
    /// Entries held now.
    pub entries: u64,
    /// The most it holds.
    pub capacity: u64,
}

/// The sizes one owner publishes.
#[derive(Debug, Default)]
pub struct Caches {
    sizes: Mutex<BTreeMap<&'static str, CacheSize>>,
}

impl Caches {
    /// Publishes the size of cache `name`.
    pub fn set(&self, name: &'static str, entries: usize, capacity: usize) {
        let size = CacheSize { entries: entries as u64, capacity: capacity as u64 };
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner).insert(name, size);
    }

    /// Every published size, by name.
    pub fn sizes(&self) -> Vec<(&'static str, CacheSize)> {
        let sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        sizes.iter().map(|(name, size)| (*name, *size)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_published_size_of_each_cache_is_read_back_by_name() {
        let caches = Caches::default();
        caches.set("processes", 3, 32_768);
        caches.set("leaf rules", 10, 65_536);
        caches.set("processes", 4, 32_768);
        assert_eq!(
            caches.sizes(),
            [
                ("leaf rules", CacheSize { entries: 10, capacity: 65_536 }),
                ("processes", CacheSize { entries: 4, capacity: 32_768 }),
            ]
        );
    }
}
