//! How full the daemon's bounded caches and tables are, by name, for `Status` and `/metrics`.
//!
//! Each owner (the collector, the symbolizer) publishes the sizes of what it holds after it
//! changes them, and readers take a copy; the sizes are entry counts next to each bound, and
//! the approximate bytes the entries hold, which count against `--max-memory` (see
//! [`crate::budget`]).

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hash},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
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

/// Drops the least recently used `fraction` of `cache`'s entries (at least one when the
/// fraction is above zero); returns how many it dropped.
pub fn shed_lru<K: Hash + Eq, V, S: BuildHasher>(
    cache: &mut lru::LruCache<K, V, S>,
    fraction: f64,
) -> usize {
    let n = ((cache.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize).min(cache.len());
    for _ in 0..n {
        cache.pop_lru();
    }
    n
}

/// The sizes one owner publishes, and the share of its entries it is asked to drop.
#[derive(Debug, Default)]
pub struct Caches {
    sizes: Mutex<BTreeMap<&'static str, CacheSize>>,
    /// The share of entries to drop at the next publication, in millionths (0: none).
    shed_ppm: AtomicU64,
    /// Entries dropped when asked, since start.
    shed_entries: AtomicU64,
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

    /// Asks the owner to drop `fraction` of the entries of each of its caches (the larger of
    /// two requests before it acts).
    pub fn request_shed(&self, fraction: f64) {
        let ppm = (fraction.clamp(0.0, 1.0) * 1e6).ceil() as u64;
        self.shed_ppm.fetch_max(ppm, Relaxed);
    }

    /// The share asked for since the last call, if any (the owner's side).
    pub fn take_shed(&self) -> Option<f64> {
        let ppm = self.shed_ppm.swap(0, Relaxed);
        (ppm > 0).then(|| ppm as f64 / 1e6)
    }

    /// Records that the owner dropped `entries` when asked.
    pub fn count_shed(&self, entries: usize) {
        self.shed_entries.fetch_add(entries as u64, Relaxed);
    }

    /// Entries dropped when asked, since start.
    pub fn shed_total(&self) -> u64 {
        self.shed_entries.load(Relaxed)
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
    fn a_shed_request_is_taken_once_and_drops_the_least_recently_used() {
        let caches = Caches::default();
        assert_eq!(caches.take_shed(), None);
        caches.request_shed(0.1);
        caches.request_shed(0.25);
        assert_eq!(caches.take_shed(), Some(0.25));
        assert_eq!(caches.take_shed(), None);

        let mut cache = lru::LruCache::new(std::num::NonZeroUsize::new(100).unwrap());
        for i in 0..100 {
            cache.put(i, ());
        }
        cache.get(&0);
        assert_eq!(shed_lru(&mut cache, 0.25), 25);
        assert_eq!(cache.len(), 75);
        // The oldest went (1 to 25), not the one just used.
        assert!(cache.contains(&0) && !cache.contains(&25) && cache.contains(&26));
        assert_eq!(shed_lru(&mut cache, 0.001), 1);
        assert_eq!(shed_lru(&mut cache, 2.0), 74);
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
