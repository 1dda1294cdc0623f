//! The `top` table: one row per function with self and cumulative samples, like pstats sorted
//! by tottime or cumtime.

use std::{collections::HashMap, fmt::Write as _};

use super::{ProfileView, view::ViewFrame};

/// Column to sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Samples in the function itself (pstats' tottime).
    #[value(name = "self", alias = "tottime")]
    SelfSamples,
    /// Samples in the function and its callees (pstats' cumtime).
    #[value(name = "cumulative", alias = "cumtime")]
    Cumulative,
    /// Function name.
    Name,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRow {
    /// The function as shown.
    pub function: String,
    /// Where it lives: the binary, or file:line of its first line for interpreted code.
    pub location: String,
    /// Samples with this function as the leaf.
    pub self_samples: u64,
    /// Samples with this function anywhere on the stack (counted once per sample).
    pub cumulative: u64,
}

/// The rows for `view`, sorted by `sort` (largest first), ties by name.
pub fn rows(view: &ProfileView, sort: SortKey) -> Vec<TopRow> {
    let key = |f: &ViewFrame| (f.function.clone(), f.file.clone());
    let mut table: HashMap<(String, String), TopRow> = HashMap::new();
    for sample in &view.samples {
        let mut seen: Vec<(String, String)> = Vec::with_capacity(sample.frames.len());
        for (depth, frame) in sample.frames.iter().rev().enumerate() {
            let k = key(frame);
            let row = table.entry(k.clone()).or_insert_with(|| TopRow {
                function: frame.function.clone(),
                location: frame.file.clone(),
                self_samples: 0,
                cumulative: 0,
            });
            if depth == 0 {
                row.self_samples += sample.count;
            }
            // Recursion: a function counts once per sample in the cumulative column.
            if !seen.contains(&k) {
                row.cumulative += sample.count;
                seen.push(k);
            }
        }
    }
    let mut rows: Vec<TopRow> = table.into_values().collect();
    rows.sort_by(|a, b| {
        let primary = match sort {
            SortKey::SelfSamples => b.self_samples.cmp(&a.self_samples),
            SortKey::Cumulative => b.cumulative.cmp(&a.cumulative),
            SortKey::Name => a.function.cmp(&b.function),
        };
        primary.then_with(|| a.function.cmp(&b.function)).then_with(|| a.location.cmp(&b.location))
    });
    rows
}

/// Renders the table body (no header), at most `limit` rows.
pub fn render(view: &ProfileView, sort: SortKey, limit: usize) -> String {
    let total = view.total().max(1) as f64;
    let secs = |samples: u64| samples as f64 * view.period_ns as f64 / 1e9;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>7} {:>9} {:>8} {:>7} {:>9}  function (location)",
        "self", "self%", "self_s", "cumul", "cumul%", "cumul_s"
    );
    for row in rows(view, sort).into_iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>8} {:>6.2}% {:>9.3} {:>8} {:>6.2}% {:>9.3}  {} ({})",
            row.self_samples,
            100.0 * row.self_samples as f64 / total,
            secs(row.self_samples),
            row.cumulative,
            100.0 * row.cumulative as f64 / total,
            secs(row.cumulative),
            row.function,
            row.location,
        );
    }
    out
}
