//! The `lines` table: time per line of one function, in the spirit of line_profiler. In the
//! wall mode a line's time includes the time it waited (a `time.sleep`, a socket read), as
//! line_profiler's does.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{ProfileView, view::ViewKind};
use crate::aggregate::Mode;

/// Samples and time of one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineHits {
    /// Samples with the function on the stack at this line.
    pub hits: u64,
    /// Of those, samples where this line was the leaf Python frame.
    pub own: u64,
    /// Time (nanoseconds) of the samples in `hits`.
    pub time_ns: u64,
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
        entry.time_ns += sample.value;
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
    let total_ns: u64 = table.values().map(|h| h.time_ns).sum();
    let mut out = String::new();
    if total == 0 {
        let _ = writeln!(out, "no samples in a Python function named {function:?}");
        return out;
    }
    let memory = view.mode.unit() == crate::aggregate::Unit::Bytes;
    // memory_profiler's Increment column is in MiB; line_profiler's time in seconds.
    let (scale, column) = if memory { (1_048_576.0, "Increment (MiB)") } else { (1e9, "Time (s)") };
    let amount = total_ns as f64 / scale;
    let what = match view.mode {
        Mode::Cpu => format!("{amount:.2} s of CPU"),
        Mode::Wall => format!("{amount:.2} s of wall time, on and off the CPU"),
        Mode::OffCpu => format!("{amount:.2} s off the CPU"),
        Mode::Gil => format!("{amount:.2} s holding or waiting for the GIL"),
        Mode::Memory => format!("{amount:.1} MiB of memory touched for the first time"),
        Mode::Resident => format!("{amount:.1} MiB resident, summed over readings"),
    };
    let files: std::collections::BTreeSet<&str> = table.keys().map(|(f, _)| f.as_str()).collect();
    let files: Vec<&str> = files.into_iter().collect();
    let _ = writeln!(out, "Function: {function} in {}", files.join(", "));
    let _ = writeln!(out, "Samples: {total} ({what}, estimated from samples)");
    out.push('\n');
    let share = if memory { "% Mem" } else { "% Time" };
    let _ = writeln!(
        out,
        "{:>6} {:>8} {:>width$} {:>8} {:>8}  Line contents",
        "Line",
        "Hits",
        column,
        share,
        "Own",
        width = column.len().max(10)
    );
    for ((file, line), hits) in &table {
        let text = source(file, *line).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:>width$.3} {:>7.1}% {:>8}  {}",
            line,
            hits.hits,
            hits.time_ns as f64 / scale,
            100.0 * hits.time_ns as f64 / total_ns.max(1) as f64,
            hits.own,
            text.trim_end(),
            width = column.len().max(10)
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
        let sample = |frames: Vec<ViewFrame>, count: u64| ViewSample {
            frames,
            count,
            value: count * 10_000_000,
            labels: vec![],
        };
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
        assert_eq!(
            table[&("app.py".into(), 3)],
            LineHits { hits: 7, own: 7, time_ns: 7 * 10_000_000 }
        );
        assert_eq!(
            table[&("app.py".into(), 4)],
            LineHits { hits: 3, own: 3, time_ns: 3 * 10_000_000 }
        );
        assert_eq!(
            table[&("app.py".into(), 5)],
            LineHits { hits: 2, own: 0, time_ns: 2 * 10_000_000 }
        );
        let text = render(&view, "work", |_, line| Some(format!("source of {line}")));
        insta::assert_snapshot!(text);
        assert!(render(&view, "absent", |_, _| None).starts_with("no samples"));
    }

    #[test]
    fn the_memory_mode_gives_each_line_its_increment_in_mib() {
        let sample = |line: i64, bytes: u64| ViewSample {
            frames: vec![py("my_func", line)],
            count: bytes / 262_144,
            value: bytes,
            labels: vec![],
        };
        let view = ProfileView {
            samples: vec![sample(4, 8 << 20), sample(5, 152 << 20)],
            mode: Mode::Memory,
            ..ProfileView::default()
        };
        let text = render(&view, "my_func", |_, _| None);
        assert!(text.contains("160.0 MiB of memory touched for the first time"), "{text}");
        let row = |line: &str| {
            text.lines().find(|l| l.trim_start().starts_with(line)).unwrap_or_default().to_owned()
        };
        assert!(text.contains("Increment (MiB)") && text.contains("% Mem"), "{text}");
        assert!(row("5 ").contains("152.000") && row("5 ").contains("95.0%"), "{text}");
        assert!(row("4 ").contains("8.000"), "{text}");
    }
}
