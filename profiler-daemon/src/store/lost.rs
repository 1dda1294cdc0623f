//! Windows that could not be stored: counted, and their time ranges remembered, so that a
//! query over them can say that samples are missing once memory no longer holds them.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use crate::aggregate::{Window, window::PersistState};

/// Time ranges of lost windows remembered for queries; older ones are only counted.
const LOST_RANGES: usize = 4096;

/// Windows that could not be stored.
#[derive(Debug, Default)]
pub struct LostWindows {
    count: AtomicU64,
    ranges: Mutex<VecDeque<(i64, i64)>>,
}

impl LostWindows {
    /// Records `window` as lost.
    pub fn record(&self, window: &Window) {
        window.persisted.set(PersistState::Lost);
        self.count.fetch_add(1, Relaxed);
        let mut ranges = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        if ranges.len() == LOST_RANGES {
            ranges.pop_front();
        }
        ranges.push_back((window.start_ns, window.end_ns));
    }

    /// Windows lost since start.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The lost windows that overlap `[start_ns, end_ns)`, as remembered (the newest
    /// [`LOST_RANGES`]).
    pub fn overlapping(&self, start_ns: i64, end_ns: i64) -> Vec<(i64, i64)> {
        let ranges = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        ranges.iter().filter(|(s, e)| *s < end_ns && *e > start_ns).copied().collect()
    }
}
