//! The daemon's memory under `--max-memory`.
//!
//! `--max-memory` bounds what the daemon holds in all. Part of it is taken whatever is
//! profiled (the sample ring buffer, mapped twice, the queues at their bounds, the program
//! itself); the caches, tables and the store's dictionary take what they hold now, each with
//! a bound of its own (see [`crate::caches`]); the recent windows kept in memory for fast
//! queries get the rest, and they give way first: the store has every window, so a query
//! reads from disk what memory let go of.

use std::fmt::Write as _;

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

/// `--max-memory`, divided.
pub struct MemoryBudget {
    max_bytes: usize,
    fixed: Vec<MemoryPart>,
    held: Vec<(&'static str, Held)>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("max_bytes", &self.max_bytes)
            .field("fixed", &self.fixed)
            .field("held", &self.held.iter().map(|(name, _)| name).collect::<Vec<_>>())
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
        Ok(MemoryBudget { max_bytes, fixed, held: Vec::new() })
    }

    /// Counts `bytes()`, read whenever the budget is, as held by `name`.
    pub fn hold(
        mut self,
        name: &'static str,
        bytes: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        self.held.push((name, Box::new(bytes)));
        self
    }

    /// `--max-memory`.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// What the recent windows may hold now: the budget less the fixed and the held parts.
    pub fn window_bytes(&self) -> usize {
        let taken: usize = self.fixed.iter().map(|p| p.bytes).sum::<usize>()
            + self.held.iter().map(|(_, bytes)| bytes()).sum::<usize>();
        self.max_bytes.saturating_sub(taken)
    }

    /// Every part but the windows, fixed ones first.
    pub fn parts(&self) -> Vec<MemoryPart> {
        let held = self.held.iter().map(|(name, bytes)| MemoryPart { name, bytes: bytes() });
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
