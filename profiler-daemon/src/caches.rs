//! How full the daemon's bounded caches and tables are, by name, for `Status` and `/metrics`.
//!
//! Each owner (the collector, the symbolizer) publishes the sizes of what it holds after it
//! changes them, and readers take a copy; the sizes are entry counts next to each bound, and
//! the approximate bytes the entries hold, which count against `--max-memory` (see
//! [`crate::budget`]).

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
    /// Approximate bytes its entries hold.
    pub bytes: u64,
}

/// Approximate bytes of a hash table or LRU cache of `entries` entries of type `T`: each entry
/// with its hashing and list pointers, at the load factor such tables keep.
pub fn table_bytes<T>(entries: usize) -> usize {
    entries * (size_of::<T>() + 4 * size_of::<usize>()) * 8 / 7
}

/// Approximate bytes of `len` items from the sizes of the first of them (at most 256), so that
/// a large cache is not walked whole to be weighed.
pub fn estimate(sizes: impl Iterator<Item = usize>, len: usize) -> usize {
    let (sum, n) = sizes.take(256).fold((0, 0), |(sum, n), size| (sum + size, n + 1));
    sum.checked_div(n).map_or(0, |mean| mean * len)
}

/// The sizes one owner publishes.
#[derive(Debug, Default)]
pub struct Caches {
    sizes: Mutex<BTreeMap<&'static str, CacheSize>>,
}

impl Caches {
    /// Publishes the size of cache `name`: `entries` of at most `capacity`, holding about
    /// `bytes`.
    pub fn set(&self, name: &'static str, entries: usize, capacity: usize, bytes: usize) {
        let size =
            CacheSize { entries: entries as u64, capacity: capacity as u64, bytes: bytes as u64 };
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner).insert(name, size);
    }

    /// Every published size, by name.
    pub fn sizes(&self) -> Vec<(&'static str, CacheSize)> {
        let sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        sizes.iter().map(|(name, size)| (*name, *size)).collect()
    }

    /// The bytes of every published cache together.
    pub fn bytes(&self) -> u64 {
        let sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        sizes.values().map(|size| size.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_entries_weighs_more_than_its_entries() {
        assert_eq!(table_bytes::<u64>(0), 0);
        assert!(table_bytes::<[u8; 100]>(1_000) > 100_000);
    }

    #[test]
    fn an_estimate_scales_the_mean_of_the_first_items() {
        assert_eq!(estimate(std::iter::empty(), 10), 0);
        assert_eq!(estimate([100, 300].into_iter(), 1_000), 200_000);
        assert_eq!(estimate(std::iter::repeat(8), 1_000_000), 8_000_000);
    }

    #[test]
    fn the_last_published_size_of_each_cache_is_read_back_by_name() {
        let caches = Caches::default();
        caches.set("processes", 3, 32_768, 3_000);
        caches.set("leaf rules", 10, 65_536, 500);
        caches.set("processes", 4, 32_768, 4_000);
        assert_eq!(
            caches.sizes(),
            [
                ("leaf rules", CacheSize { entries: 10, capacity: 65_536, bytes: 500 }),
                ("processes", CacheSize { entries: 4, capacity: 32_768, bytes: 4_000 }),
            ]
        );
        assert_eq!(caches.bytes(), 4_500);
    }
}
