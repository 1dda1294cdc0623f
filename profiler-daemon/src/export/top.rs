//! The `top` table: one row per function with self and cumulative samples, like pstats sorted
//! by tottime or cumtime. When Python calls were counted, the table has pstats' columns:
//! ncalls, tottime, percall, cumtime, percall and filename:lineno(function).

use std::{collections::HashMap, fmt::Write as _};

use super::{
    ProfileView,
    view::{ViewFrame, ViewKind},
};
use crate::aggregate::Mode;

/// Column to sort by (largest first, except for names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Samples in the function itself (pstats' tottime).
    #[value(name = "self", alias = "tottime", alias = "time")]
    SelfSamples,
    /// Samples in the function and its callees (pstats' cumtime).
    #[value(name = "cumulative", alias = "cumtime")]
    Cumulative,
    /// Counted calls (pstats' ncalls).
    #[value(name = "ncalls", alias = "calls")]
    Calls,
    /// Self time per call.
    #[value(name = "percall", alias = "tottime-percall")]
    PerCall,
    /// Cumulative time per call.
    #[value(name = "cumpercall", alias = "cumtime-percall")]
    CumPerCall,
    /// File name, then first line.
    #[value(name = "filename", alias = "file")]
    File,
    /// Function name.
    Name,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// The function as shown.
    pub function: String,
    /// Where it lives: the binary, or the source file for interpreted code.
    pub location: String,
    /// First line of the function (interpreted code), else 0.
    pub start_line: i64,
    /// What kind of code it is.
    pub kind: ViewKind,
    /// Samples with this function as the leaf.
    pub self_samples: u64,
    /// Samples with this function anywhere on the stack (counted once per sample).
    pub cumulative: u64,
    /// Time (nanoseconds) with this function as the leaf: pstats' tottime.
    pub self_ns: u64,
    /// Time with this function anywhere on the stack: pstats' cumtime.
    pub cum_ns: u64,
    /// Calls counted by the entry probe, when it was on for this function's process.
    pub ncalls: Option<u64>,
}

impl TopRow {
    fn per_call(&self, samples: u64) -> Option<f64> {
        self.ncalls.filter(|&n| n > 0).map(|n| samples as f64 / n as f64)
    }

    /// pstats' `filename:lineno(function)`; native code shows its binary instead.
    pub fn pstats_name(&self) -> String {
        match self.kind {
            ViewKind::Python => format!("{}:{}({})", self.location, self.start_line, self.function),
            _ if self.location.is_empty() => self.function.clone(),
            _ => format!("{{{}}}({})", self.location, self.function),
        }
    }
}

fn row_key(f: &ViewFrame) -> (String, String) {
    (f.function.clone(), f.file.clone())
}

/// The rows for `view`, sorted by `sort`, ties by name.
pub fn rows(view: &ProfileView, sort: SortKey) -> Vec<TopRow> {
    let mut table: HashMap<(String, String), TopRow> = HashMap::new();
    let new_row = |frame: &ViewFrame| TopRow {
        function: frame.function.clone(),
        location: frame.file.clone(),
        start_line: frame.start_line,
        kind: frame.kind,
        self_samples: 0,
        cumulative: 0,
        self_ns: 0,
        cum_ns: 0,
        ncalls: None,
    };
    for sample in &view.samples {
        let mut seen: Vec<(String, String)> = Vec::with_capacity(sample.frames.len());
        for (depth, frame) in sample.frames.iter().rev().enumerate() {
            let k = row_key(frame);
            let row = table.entry(k.clone()).or_insert_with(|| new_row(frame));
            if depth == 0 {
                row.self_samples += sample.count;
                row.self_ns += sample.value;
            }
            // Recursion: a function counts once per sample in the cumulative column.
            if !seen.contains(&k) {
                row.cumulative += sample.count;
                row.cum_ns += sample.value;
                seen.push(k);
            }
        }
    }
    for calls in &view.calls {
        let row = table.entry(row_key(&calls.frame)).or_insert_with(|| new_row(&calls.frame));
        *row.ncalls.get_or_insert(0) += calls.count;
    }
    let mut rows: Vec<TopRow> = table.into_values().collect();
    let desc = |a: Option<f64>, b: Option<f64>| {
        b.unwrap_or(-1.0).partial_cmp(&a.unwrap_or(-1.0)).unwrap_or(std::cmp::Ordering::Equal)
    };
    rows.sort_by(|a, b| {
        let primary = match sort {
            SortKey::SelfSamples => b.self_ns.cmp(&a.self_ns),
            SortKey::Cumulative => b.cum_ns.cmp(&a.cum_ns),
            SortKey::Calls => b.ncalls.cmp(&a.ncalls),
            SortKey::PerCall => desc(a.per_call(a.self_ns), b.per_call(b.self_ns)),
            SortKey::CumPerCall => desc(a.per_call(a.cum_ns), b.per_call(b.cum_ns)),
            SortKey::File => {
                a.location.cmp(&b.location).then_with(|| a.start_line.cmp(&b.start_line))
            }
            SortKey::Name => a.function.cmp(&b.function),
        };
        primary.then_with(|| a.function.cmp(&b.function)).then_with(|| a.location.cmp(&b.location))
    });
    rows
}

/// Renders the table body (no header), at most `limit` rows.
pub fn render(view: &ProfileView, sort: SortKey, limit: usize) -> String {
    if view.calls.is_empty() || view.mode == Mode::Memory {
        render_samples(view, sort, limit)
    } else {
        render_pstats(view, sort, limit)
    }
}

fn render_samples(view: &ProfileView, sort: SortKey, limit: usize) -> String {
    let total = view.total_value().max(1) as f64;
    // Seconds, or MiB in the memory mode (tracemalloc's and memory_profiler's unit).
    let (scale, self_col, cum_col) = if view.mode == Mode::Memory {
        (1_048_576.0, "self_MiB", "cumul_MiB")
    } else {
        (1e9, "self_s", "cumul_s")
    };
    let secs = |v: u64| v as f64 / scale;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>7} {:>9} {:>8} {:>7} {:>9}  function (location)",
        "self", "self%", self_col, "cumul", "cumul%", cum_col
    );
    for row in rows(view, sort).into_iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>8} {:>6.2}% {:>9.3} {:>8} {:>6.2}% {:>9.3}  {} ({})",
            row.self_samples,
            100.0 * row.self_ns as f64 / total,
            secs(row.self_ns),
            row.cumulative,
            100.0 * row.cum_ns as f64 / total,
            secs(row.cum_ns),
            row.function,
            row.location,
        );
    }
    out
}

/// pstats' layout. Times are estimates (samples times the sampling period), so their columns
/// are starred and explained in a footnote; ncalls are exact counts.
fn render_pstats(view: &ProfileView, sort: SortKey, limit: usize) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    let per_call = |ns: u64, row: &TopRow| {
        row.ncalls
            .filter(|&n| n > 0)
            .map_or_else(|| "-".to_owned(), |n| format!("{:.6}", secs(ns) / n as f64))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>10} {:>9} {:>9} {:>9} {:>9}  filename:lineno(function)",
        "ncalls", "tottime*", "percall", "cumtime*", "percall"
    );
    for row in rows(view, sort).into_iter().take(limit) {
        let ncalls = row.ncalls.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:>10} {:>9.3} {:>9} {:>9.3} {:>9}  {}",
            ncalls,
            secs(row.self_ns),
            per_call(row.self_ns, &row),
            secs(row.cum_ns),
            per_call(row.cum_ns, &row),
            row.pstats_name(),
        );
    }
    let estimate = match view.mode {
        Mode::Cpu => {
            format!("CPU time: samples x {:.3} ms sampling period", view.period_ns as f64 / 1e6)
        }
        Mode::Wall => format!(
            "wall time: CPU samples x {:.3} ms, plus blocked time from sampled context switches",
            view.period_ns as f64 / 1e6
        ),
        Mode::OffCpu => "time off the CPU, from sampled context switches".to_owned(),
        Mode::Gil => format!(
            "GIL time: CPU samples holding it x {:.3} ms, plus waits for it from sampled context \
             switches",
            view.period_ns as f64 / 1e6
        ),
        Mode::Memory => "memory growth, from sampled page faults".to_owned(),
        Mode::Resident => "resident memory, summed over readings".to_owned(),
    };
    let _ = writeln!(
        out,
        "* estimated {estimate}. ncalls are exact counts of calls into the interpreter's frame \
         evaluation (every call on CPython 3.9-3.10; calls from C code on 3.11+); '-' where \
         calls were not counted."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::view::{ViewCalls, ViewSample};

    fn py(function: &str, start_line: i64) -> ViewFrame {
        ViewFrame {
            kind: ViewKind::Python,
            function: function.into(),
            file: "app.py".into(),
            line: start_line + 1,
            start_line,
        }
    }

    fn view() -> ProfileView {
        let sample = |frames: Vec<ViewFrame>, count: u64| ViewSample {
            frames,
            count,
            value: count * 10_000_000,
            labels: vec![],
        };
        let calls = |frame: ViewFrame, count| ViewCalls { frame, count, labels: vec![] };
        ProfileView {
            samples: vec![
                sample(vec![py("main", 1), py("cb", 10)], 30),
                sample(vec![py("main", 1), py("slow", 20)], 60),
                sample(vec![py("main", 1)], 10),
            ],
            calls: vec![
                calls(py("cb", 10), 3000),
                calls(py("slow", 20), 2),
                calls(py("cb", 10), 1000),
            ],
            period_ns: 10_000_000,
            ..ProfileView::default()
        }
    }

    #[test]
    fn calls_join_their_functions_rows() {
        let rows = rows(&view(), SortKey::Calls);
        let got: Vec<_> = rows.iter().map(|r| (r.function.as_str(), r.ncalls)).collect();
        assert_eq!(got, [("cb", Some(4000)), ("slow", Some(2)), ("main", None)]);
        assert_eq!(rows[0].pstats_name(), "app.py:10(cb)");
    }

    #[test]
    fn every_pstats_column_sorts() {
        let order =
            |sort| -> Vec<String> { rows(&view(), sort).into_iter().map(|r| r.function).collect() };
        assert_eq!(order(SortKey::SelfSamples), ["slow", "cb", "main"]);
        assert_eq!(order(SortKey::Cumulative), ["main", "slow", "cb"]);
        // slow: 0.6 s over 2 calls; cb: 0.3 s over 4000 calls; main has no count.
        assert_eq!(order(SortKey::PerCall), ["slow", "cb", "main"]);
        assert_eq!(order(SortKey::CumPerCall), ["slow", "cb", "main"]);
        assert_eq!(order(SortKey::File), ["main", "cb", "slow"]);
        assert_eq!(order(SortKey::Name), ["cb", "main", "slow"]);
    }

    #[test]
    fn the_pstats_table_labels_estimates() {
        let text = render(&view(), SortKey::Calls, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("ncalls  tottime*   percall  cumtime*   percall"), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["4000", "0.300", "0.000075", "0.300", "0.000075", "app.py:10(cb)"]
        );
        assert!(lines[3].starts_with("         -"), "{text}");
        assert!(text.contains("* estimated CPU time: samples x 10.000 ms"), "{text}");
    }
}
