//! The daemon's memory under `--max-memory`.
//!
//! `--max-memory` bounds what the daemon holds in all. Part of it is taken whatever is
//! profiled (the sample ring buffer, mapped twice, the queues at their bounds, the program
//! itself); the caches, tables and the store's dictionary take what they hold now, each with
//! a bound of its own (see [`crate::caches`]); the recent windows kept in memory for fast
//! queries get the rest, and they give way first: the store has every window, so a query
//! reads from disk what memory let go of.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use thiserror::Error;

/// Room the recent windows need at least: `--max-memory` must leave this much after the fixed
/// parts.
pub const MIN_WINDOW_BYTES: usize = 8 << 20;

/// What one part of the daemon holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPart {
    /// For example "sample ring buffer" or "caches".
    pub name: &'static str,
    /// Approximate bytes.
    pub bytes: usize,
}

/// A part whose size changes: read when asked.
type Held = Box<dyn Fn() -> usize + Send + Sync>;
/// Asks a part to drop a share of its entries.
type Shed = Box<dyn Fn(f64) + Send + Sync>;

/// `--max-memory`, divided.
pub struct MemoryBudget {
    max_bytes: usize,
    fixed: Vec<MemoryPart>,
    held: Vec<(&'static str, Held, Option<Shed>)>,
    /// Times the sheddable parts were asked to give memory back.
    sheds: AtomicU64,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("max_bytes", &self.max_bytes)
            .field("fixed", &self.fixed)
            .field("held", &self.held.iter().map(|(name, ..)| name).collect::<Vec<_>>())
            .finish()
    }
}

/// `--max-memory` is too small for what the daemon holds whatever it profiles.
#[derive(Debug, Error)]
#[error(
    "--max-memory {} is too small: profilerd holds {} whatever it profiles ({parts}) and needs \
     {} more for recent windows; give --max-memory {} or more{hint}",
    mib(*.max), mib(*.fixed), mib(MIN_WINDOW_BYTES), mib(*.needed)
)]
pub struct BudgetError {
    max: usize,
    fixed: usize,
    parts: String,
    needed: usize,
    hint: &'static str,
}

impl MemoryBudget {
    /// A budget of `max_bytes`, of which the `fixed` parts are always taken.
    pub fn new(max_bytes: usize, fixed: Vec<MemoryPart>) -> Result<MemoryBudget, BudgetError> {
        let fixed_bytes: usize = fixed.iter().map(|p| p.bytes).sum();
        let needed = fixed_bytes + MIN_WINDOW_BYTES;
        if max_bytes < needed {
            let mut parts = String::new();
            for (i, part) in fixed.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(parts, "{sep}{} {}", part.name, mib(part.bytes));
            }
            let hint = if fixed.iter().any(|p| p.name == RING_BUFFER) {
                " (or a smaller --ring-buffer-size)"
            } else {
                ""
            };
            return Err(BudgetError {
                max: max_bytes,
                fixed: fixed_bytes,
                parts,
                needed: needed.next_multiple_of(1 << 20),
                hint,
            });
        }
        Ok(MemoryBudget { max_bytes, fixed, held: Vec::new(), sheds: AtomicU64::new(0) })
    }

    /// Counts `bytes()`, read whenever the budget is, as held by `name`.
    pub fn hold(
        mut self,
        name: &'static str,
        bytes: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        self.held.push((name, Box::new(bytes), None));
        self
    }

    /// Like [`MemoryBudget::hold`], for a part that gives memory back when `shed(fraction)`
    /// asks it to drop that share of its entries (see [`MemoryBudget::govern`]).
    pub fn hold_sheddable(
        mut self,
        name: &'static str,
        bytes: impl Fn() -> usize + Send + Sync + 'static,
        shed: impl Fn(f64) + Send + Sync + 'static,
    ) -> Self {
        self.held.push((name, Box::new(bytes), Some(Box::new(shed))));
        self
    }

    /// Keeps the parts inside the budget: when the fixed and held parts leave the recent
    /// windows less than [`MIN_WINDOW_BYTES`], asks every sheddable part to drop the same
    /// share of its entries, enough (with a quarter more, so that the next step is not at
    /// once) for what is missing. Returns the share asked, if any. Called about once a second.
    pub fn govern(&self) -> Option<f64> {
        let held: Vec<(usize, Option<&Shed>)> =
            self.held.iter().map(|(_, bytes, shed)| (bytes(), shed.as_ref())).collect();
        let taken = self.fixed.iter().map(|p| p.bytes).sum::<usize>()
            + held.iter().map(|(bytes, _)| bytes).sum::<usize>();
        let missing = (taken + MIN_WINDOW_BYTES).saturating_sub(self.max_bytes);
        let sheddable: usize =
            held.iter().filter(|(_, shed)| shed.is_some()).map(|(bytes, _)| bytes).sum();
        if missing == 0 || sheddable == 0 {
            return None;
        }
        let fraction = (missing as f64 * 1.25 / sheddable as f64).min(1.0);
        for shed in held.iter().filter_map(|(_, shed)| *shed) {
            shed(fraction);
        }
        self.sheds.fetch_add(1, Relaxed);
        Some(fraction)
    }

    /// Times [`MemoryBudget::govern`] asked the parts to give memory back.
    pub fn sheds(&self) -> u64 {
        self.sheds.load(Relaxed)
    }

    /// `--max-memory`.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// What the recent windows may hold now: the budget less the fixed and the held parts.
    pub fn window_bytes(&self) -> usize {
        let taken: usize = self.fixed.iter().map(|p| p.bytes).sum::<usize>()
            + self.held.iter().map(|(_, bytes, _)| bytes()).sum::<usize>();
        self.max_bytes.saturating_sub(taken)
    }

    /// Every part but the windows, fixed ones first.
    pub fn parts(&self) -> Vec<MemoryPart> {
        let held = self.held.iter().map(|(name, bytes, _)| MemoryPart { name, bytes: bytes() });
        self.fixed.iter().cloned().chain(held).collect()
    }
}

/// The name of the sample ring buffer's part (the error's hint names its flag).
pub const RING_BUFFER: &str = "sample ring buffer";

/// `bytes` in MiB, as the flags take it.
fn mib(bytes: usize) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    if mib.fract() == 0.0 { format!("{mib:.0}MiB") } else { format!("{mib:.1}MiB") }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    };

    use super::*;

    fn fixed() -> Vec<MemoryPart> {
        vec![
            MemoryPart { name: RING_BUFFER, bytes: 16 << 20 },
            MemoryPart { name: "program", bytes: 24 << 20 },
        ]
    }

    #[test]
    fn windows_get_what_the_fixed_and_held_parts_leave() {
        let cache = Arc::new(AtomicUsize::new(10 << 20));
        let held = cache.clone();
        let budget = MemoryBudget::new(64 << 20, fixed())
            .unwrap()
            .hold("caches", move || held.load(Relaxed));
        assert_eq!(budget.window_bytes(), 14 << 20);
        // A cache that grows takes its room from the windows, down to none.
        cache.store(20 << 20, Relaxed);
        assert_eq!(budget.window_bytes(), 4 << 20);
        cache.store(40 << 20, Relaxed);
        assert_eq!(budget.window_bytes(), 0);
        let parts = budget.parts();
        assert_eq!(
            parts.iter().map(|p| p.name).collect::<Vec<_>>(),
            [RING_BUFFER, "program", "caches"]
        );
        assert_eq!(parts[2].bytes, 40 << 20);
    }

    #[test]
    fn parts_over_the_budget_are_asked_to_shed_a_share_that_covers_it() {
        let caches = Arc::new(AtomicUsize::new(16 << 20));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let budget =
            MemoryBudget::new(64 << 20, fixed()).unwrap().hold("store", || 4 << 20).hold_sheddable(
                "caches",
                {
                    let caches = caches.clone();
                    move || caches.load(Relaxed)
                },
                {
                    let asked = asked.clone();
                    move |fraction| asked.lock().unwrap().push(fraction)
                },
            );
        // 40 fixed + 4 + 16 leave 4 MiB for windows, 4 short of the minimum: a quarter of
        // the caches' 16 MiB with a quarter more.
        assert_eq!(budget.govern(), Some(0.3125));
        assert_eq!(*asked.lock().unwrap(), [0.3125]);
        assert_eq!(budget.sheds(), 1);
        // Once they fit, nothing is asked.
        caches.store(12 << 20, Relaxed);
        assert_eq!(budget.govern(), None);
        assert_eq!(budget.sheds(), 1);
        // Never more than all of them.
        caches.store(200 << 20, Relaxed);
        assert_eq!(budget.govern(), Some(1.0));
    }

    #[test]
    fn a_budget_below_the_fixed_parts_is_refused_with_what_it_needs() {
        let err = MemoryBudget::new(32 << 20, fixed()).unwrap_err().to_string();
        assert_eq!(
            err,
            "--max-memory 32MiB is too small: profilerd holds 40MiB whatever it profiles \
             (sample ring buffer 16MiB, program 24MiB) and needs 8MiB more for recent windows; \
             give --max-memory 48MiB or more (or a smaller --ring-buffer-size)"
        );
        assert!(MemoryBudget::new(48 << 20, fixed()).is_ok());
    }
}
