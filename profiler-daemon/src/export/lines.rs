//! The `lines` table: samples per line of one function, in the spirit of line_profiler.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{ProfileView, view::ViewKind};

/// Samples of one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineHits {
    /// Samples with the function on the stack at this line.
    pub hits: u64,
    /// Of those, samples where this line was the leaf Python frame.
    pub own: u64,
}

/// Per-line samples of the function named `function` (its qualified name), keyed by
/// (file, line). Recursive calls count once per sample, at the innermost call.
pub fn lines(view: &ProfileView, function: &str) -> BTreeMap<(String, i64), LineHits> {
    let mut out: BTreeMap<(String, i64), LineHits> = BTreeMap::new();
    for sample in &view.samples {
        let python: Vec<_> = sample.frames.iter().filter(|f| f.kind == ViewKind::Python).collect();
        let Some(pos) = python.iter().rposition(|f| f.function == function) else { continue };
        let frame = python[pos];
        let entry = out.entry((frame.file.clone(), frame.line)).or_default();
        entry.hits += sample.count;
        if pos + 1 == python.len() {
            entry.own += sample.count;
        }
    }
    out
}

/// Renders the table; `source` returns the text of a line when the file is readable.
pub fn render(
    view: &ProfileView,
    function: &str,
    source: impl Fn(&str, i64) -> Option<String>,
) -> String {
    let table = lines(view, function);
    let total: u64 = table.values().map(|h| h.hits).sum();
    let mut out = String::new();
    if total == 0 {
        let _ = writeln!(out, "no samples in a Python function named {function:?}");
        return out;
    }
    let secs = total as f64 * view.period_ns as f64 / 1e9;
    let files: std::collections::BTreeSet<&str> = table.keys().map(|(f, _)| f.as_str()).collect();
    let files: Vec<&str> = files.into_iter().collect();
    let _ = writeln!(out, "Function: {function} in {}", files.join(", "));
    let _ = writeln!(out, "Samples: {total} ({secs:.2} s of CPU, estimated from samples)");
    out.push('\n');
    let _ =
        writeln!(out, "{:>6} {:>8} {:>8} {:>8}  Line contents", "Line", "Hits", "% Time", "Own");
    for ((file, line), hits) in &table {
        let text = source(file, *line).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:>7.1}% {:>8}  {}",
            line,
            hits.hits,
            100.0 * hits.hits as f64 / total as f64,
            hits.own,
            text.trim_end()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::view::{ViewFrame, ViewSample};

    fn py(function: &str, line: i64) -> ViewFrame {
        ViewFrame {
            kind: ViewKind::Python,
            function: function.into(),
            file: "app.py".into(),
            line,
            start_line: 1,
        }
    }

    #[test]
    fn counts_hits_and_own_samples_per_line_at_the_innermost_call() {
        let native = ViewFrame {
            kind: ViewKind::Native,
            function: "deflate".into(),
            file: "libz.so".into(),
            line: 0,
            start_line: 0,
        };
        let sample = |frames: Vec<ViewFrame>, count| ViewSample { frames, count, labels: vec![] };
        let view = ProfileView {
            samples: vec![
                sample(vec![py("main", 10), py("work", 3)], 6),
                sample(vec![py("main", 10), py("work", 4), native], 3),
                sample(vec![py("main", 10), py("work", 5), py("helper", 20)], 2),
                // Recursion: counted once, at the innermost call's line.
                sample(vec![py("work", 5), py("work", 3)], 1),
            ],
            period_ns: 10_000_000,
            ..ProfileView::default()
        };
        let table = lines(&view, "work");
        assert_eq!(table[&("app.py".into(), 3)], LineHits { hits: 7, own: 7 });
        assert_eq!(table[&("app.py".into(), 4)], LineHits { hits: 3, own: 3 });
        assert_eq!(table[&("app.py".into(), 5)], LineHits { hits: 2, own: 0 });
        let text = render(&view, "work", |_, line| Some(format!("source of {line}")));
        insta::assert_snapshot!(text);
        assert!(render(&view, "absent", |_, _| None).starts_with("no samples"));
    }
}
