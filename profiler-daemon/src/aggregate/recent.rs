//! Recent closed windows, kept in memory by the aggregator for fast queries of the recent past.
//!
//! Windows are kept in memory, oldest first, and dropped by age and by total size. Every window
//! dropped is counted.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use super::Window;

/// Limits on what the store keeps.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Windows older than this (by end time) are dropped.
    pub max_age: Duration,
    /// Once the windows hold more than this many bytes, the oldest are dropped.
    pub max_bytes: usize,
}

/// Closed windows, oldest first.
#[derive(Debug)]
pub struct RecentWindows {
    retention: Retention,
    windows: VecDeque<(Arc<Window>, usize)>,
    bytes: usize,
    evicted: u64,
}

impl RecentWindows {
    /// An empty store.
    pub fn new(retention: Retention) -> RecentWindows {
        RecentWindows { retention, windows: VecDeque::new(), bytes: 0, evicted: 0 }
    }

    /// Adds a closed window and applies retention as of `now_ns`; returns the window's
    /// approximate bytes.
    pub fn push(&mut self, window: Arc<Window>, now_ns: i64) -> usize {
        let bytes = window.approx_bytes();
        self.bytes += bytes;
        self.windows.push_back((window, bytes));
        self.expire(now_ns);
        bytes
    }

    /// Bounds the windows' bytes to `max_bytes` from the next [`RecentWindows::expire`] on.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.retention.max_bytes = max_bytes;
    }

    /// Drops windows that are too old, then the oldest until the size bound holds. The newest
    /// window stays whatever its size, until it is too old: it may not be stored yet.
    pub fn expire(&mut self, now_ns: i64) {
        let max_age = i64::try_from(self.retention.max_age.as_nanos()).unwrap_or(i64::MAX);
        let oldest_kept = now_ns.saturating_sub(max_age);
        while let Some((front, bytes)) = self.windows.front() {
            let too_old = front.end_ns <= oldest_kept;
            let too_big = self.bytes > self.retention.max_bytes && self.windows.len() > 1;
            if !too_old && !too_big {
                break;
            }
            self.bytes -= bytes;
            self.evicted += 1;
            self.windows.pop_front();
        }
    }

    /// The windows that overlap `[start_ns, end_ns)`, oldest first.
    pub fn select(&self, start_ns: i64, end_ns: i64) -> Vec<Arc<Window>> {
        self.windows
            .iter()
            .filter(|(w, _)| w.overlaps(start_ns, end_ns))
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Windows dropped by retention since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DropSnapshot;

    fn window(start: i64, end: i64) -> Window {
        Window {
            calls: Vec::new(),
            start_ns: start,
            end_ns: end,
            samples: 0,
            drops: DropSnapshot::default(),
            entries: vec![],
            persisted: Default::default(),
        }
    }

    #[test]
    fn drops_old_windows_first_and_counts_them() {
        let mut store = RecentWindows::new(Retention {
            max_age: Duration::from_nanos(25),
            max_bytes: usize::MAX,
        });
        for start in (0..50).step_by(10) {
            store.push(Arc::new(window(start, start + 10)), start + 10);
        }
        // now = 50, keep windows ending after 25: [20,30) [30,40) [40,50)
        assert_eq!(store.len(), 3);
        assert_eq!(store.evicted(), 2);
        let selected = store.select(25, 35);
        assert_eq!(selected.iter().map(|w| w.start_ns).collect::<Vec<_>>(), vec![20, 30]);
    }

    #[test]
    fn the_size_bound_holds() {
        let one = window(0, 1).approx_bytes();
        let mut store = RecentWindows::new(Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 2 * one,
        });
        for start in 0..5 {
            store.push(Arc::new(window(start, start + 1)), start + 1);
        }
        assert_eq!(store.len(), 2);
        assert!(store.bytes() <= 2 * one);
        assert_eq!(store.select(0, 10)[0].start_ns, 3);
        // With no room at all, the newest window stays (it may not be stored yet).
        store.set_max_bytes(0);
        store.expire(5);
        assert_eq!(store.len(), 1);
        assert_eq!(store.select(0, 10)[0].start_ns, 4);
    }
}
