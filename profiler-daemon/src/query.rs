//! Query planning: a time range and a selector, answered from the store and from the windows
//! the aggregator holds in memory, each window counted exactly once, and bounded in size.
//!
//! The store and the in-memory windows are read as one consistent snapshot
//! ([`Store::snapshot`]): a window counts from the store once it is committed there, and from
//! memory until then, or for good when it could not be stored. An answer holds at most
//! [`QueryLimits::max_entries`] distinct (labels, stack) entries; the smallest of the rest are
//! folded into one `[other]` entry, and the answer says so.

use std::{collections::HashSet, sync::Arc};

use thiserror::Error;

use crate::{
    aggregate::{
        AggregatorHandle, Frame, Labels, MergedProfile, Mode, Stack, Tally, Window,
        window::PersistState,
    },
    selector::Selector,
    store::{Store, StoreError},
};

/// Stack of the entry that the smallest entries of a truncated answer are folded into.
pub const OTHER_FRAME: &str = "[other]";

/// Distinct (labels, stack) entries in one answer, by default. A day of a busy host holds a
/// few hundred thousand; the largest hundred thousand cover nearly all samples, and encode to
/// some tens of MiB of pprof.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Bounds on the work and the size of one answer.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    /// Distinct (labels, stack) entries in an answer; the rest are folded into `[other]`.
    pub max_entries: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_entries: DEFAULT_MAX_ENTRIES }
    }
}

/// What a query asks for.
#[derive(Clone, Debug)]
pub struct QueryPlan {
    /// Start of the range, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// End of the range (exclusive).
    pub end_ns: i64,
    /// Which samples to keep.
    pub selector: Selector,
    /// What the profile measures.
    pub mode: Mode,
    /// Whether threads that never ran keep their blocked time (wall and off-CPU modes).
    pub idle: bool,
    /// Bounds on the answer.
    pub limits: QueryLimits,
}

/// A query's answer and where it came from.
#[derive(Debug, Default)]
pub struct Answer {
    /// The merged profile.
    pub merged: MergedProfile,
    /// Windows in the range that could not be stored.
    pub unstored_windows: u64,
    /// Of those, the ones no longer in memory: their samples are missing.
    pub missing_windows: u64,
    /// Entries folded into `[other]` (zero when the answer is complete).
    pub folded_entries: u64,
    /// Samples and value in the folded entries.
    pub folded: Tally,
}

/// Why a query failed.
#[derive(Debug, Error)]
pub enum QueryError {
    /// The range is empty.
    #[error("empty time range: start {start} is not before end {end}")]
    EmptyRange {
        /// Start of the range.
        start: i64,
        /// End of the range.
        end: i64,
    },
    /// The daemon is shutting down.
    #[error(transparent)]
    Stopped(#[from] crate::aggregate::actor::AggregatorGone),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The merge itself failed (it panicked).
    #[error("query failed: {0}")]
    Failed(String),
}

/// Answers `plan` from `aggregator`'s memory and `store`. The merge runs on a blocking thread:
/// it is CPU and disk work.
pub async fn run(
    aggregator: &AggregatorHandle,
    store: Option<Arc<Store>>,
    plan: QueryPlan,
) -> Result<Answer, QueryError> {
    if plan.start_ns >= plan.end_ns {
        return Err(QueryError::EmptyRange { start: plan.start_ns, end: plan.end_ns });
    }
    let windows = aggregator.windows(plan.start_ns, plan.end_ns).await?;
    tokio::task::spawn_blocking(move || answer(store.as_deref(), windows, &plan))
        .await
        .map_err(|e| QueryError::Failed(e.to_string()))?
}

/// Merges the store's windows and those of `windows` (recent windows from memory) that it does
/// not hold, then bounds the answer.
pub fn answer(
    store: Option<&Store>,
    windows: Vec<Arc<Window>>,
    plan: &QueryPlan,
) -> Result<Answer, QueryError> {
    let (start, end) = (plan.start_ns, plan.end_ns);
    let mut out = Answer::default();
    let mut merged = MergedProfile::new(plan.mode, plan.idle);
    let memory = match store {
        Some(store) => {
            let (snapshot, unstored) = store.snapshot(windows)?;
            snapshot.merge_into(start, end, &plan.selector, &mut merged)?;
            let lost = store.lost().overlapping(start, end);
            let in_memory: HashSet<i64> = unstored
                .iter()
                .filter(|w| w.persisted.get() == PersistState::Lost)
                .map(|w| w.start_ns)
                .collect();
            out.unstored_windows = lost.len() as u64;
            out.missing_windows =
                lost.iter().filter(|(s, _)| !in_memory.contains(s)).count() as u64;
            unstored
        }
        None => windows,
    };
    for window in &memory {
        merged.add(window, &plan.selector);
    }
    merged.finish();
    (out.folded_entries, out.folded) = truncate(&mut merged, plan.limits.max_entries);
    out.merged = merged;
    Ok(out)
}

/// Keeps the `max` largest entries (by value) and folds the others into one `[other]` entry
/// (which takes one of the `max` places). Returns the entries folded and their sum.
pub fn truncate(merged: &mut MergedProfile, max: usize) -> (u64, Tally) {
    if merged.entries.len() <= max {
        return (0, Tally::default());
    }
    let mut entries: Vec<_> = std::mem::take(&mut merged.entries).into_iter().collect();
    // Largest first; ties in a stable order so that equal queries give equal answers.
    entries.sort_unstable_by(|((la, sa), ca), ((lb, sb), cb)| {
        (cb.value, cb.count).cmp(&(ca.value, ca.count)).then_with(|| la.cmp(lb)).then_with(|| {
            let names = |s: &Stack| s.iter().map(|f| f.function.clone()).collect::<Vec<_>>();
            names(sa).cmp(&names(sb))
        })
    });
    let keep = max.saturating_sub(1);
    let folded = entries.split_off(keep.min(entries.len()));
    let mut sum = Tally::default();
    for (_, t) in &folded {
        sum.add(*t);
    }
    merged.entries = entries.into_iter().collect();
    let other: Stack = Arc::from([Arc::new(Frame::marker(OTHER_FRAME))]);
    let labels = Arc::new(Labels { comm: OTHER_FRAME.into(), ..Labels::default() });
    merged.entries.entry((labels, other)).or_default().add(sum);
    (folded.len() as u64, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::FrameKind;

    fn profile(counts: &[u64]) -> MergedProfile {
        let mut merged = MergedProfile::default();
        for (i, &count) in counts.iter().enumerate() {
            let labels = Arc::new(Labels { pid: 1, comm: "app".into(), ..Labels::default() });
            let frame = Frame { kind: FrameKind::Native, ..Frame::marker(&format!("f{i}")) };
            merged.entries.insert((labels, Arc::from([Arc::new(frame)])), Tally::one(count));
            merged.samples += count;
        }
        merged
    }

    #[test]
    fn an_answer_over_the_limit_keeps_the_largest_and_folds_the_rest_into_other() {
        let mut merged = profile(&[50, 1, 40, 2, 30, 3]);
        let (entries, folded) = truncate(&mut merged, 4);
        assert_eq!((entries, folded), (3, Tally { count: 3, value: 6 }));
        assert_eq!(merged.entries.len(), 4);
        let mut kept: Vec<(String, u64)> =
            merged.entries.iter().map(|((_, s), t)| (s[0].function.to_string(), t.value)).collect();
        kept.sort();
        assert_eq!(
            kept,
            [("[other]".into(), 6), ("f0".into(), 50), ("f2".into(), 40), ("f4".into(), 30)]
        );
        assert_eq!(merged.entries.values().map(|t| t.value).sum::<u64>(), 126, "no time is lost");
    }

    #[test]
    fn an_answer_within_the_limit_is_left_alone() {
        let mut merged = profile(&[5, 4, 3]);
        assert_eq!(truncate(&mut merged, 3), (0, Tally::default()));
        assert_eq!(merged.entries.len(), 3);
    }
}
