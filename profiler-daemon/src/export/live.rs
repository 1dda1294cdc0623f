//! `profctl watch` and `profctl targets`: a live table per window, in the spirit of
//! `py-spy top`, and the processes seen in a range.

use std::{collections::HashMap, fmt::Write as _};

use super::{ProfileView, top};

/// One window of `profctl watch`: the functions by self share, with their total share, then
/// the busiest processes.
pub fn render_window(view: &ProfileView, header: &str, limit: usize) -> String {
    let total = view.total_value().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{:>7} {:>7} {:>8}  function (location)", "self%", "total%", "samples");
    for row in top::rows(view, top::SortKey::SelfSamples).into_iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>6.1}% {:>6.1}% {:>8}  {} ({})",
            100.0 * row.self_ns as f64 / total,
            100.0 * row.cum_ns as f64 / total,
            row.self_samples,
            row.function,
            row.location
        );
    }
    let processes = processes(view);
    let busiest: Vec<String> =
        processes.iter().take(5).map(|p| format!("{} {} ({})", p.pid, p.comm, p.samples)).collect();
    let _ = writeln!(out, "processes: {} — {}", processes.len(), busiest.join(", "));
    out
}

/// What a range says about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Process id.
    pub pid: String,
    /// Process name.
    pub comm: String,
    /// Executable.
    pub exe: String,
    /// Runtime, or `native`.
    pub runtime: String,
    /// Container id, shortened to 12 characters.
    pub container: String,
    /// Pod UID.
    pub pod_uid: String,
    /// `namespace/pod`, when the Kubernetes API named the pod.
    pub pod: String,
    /// Samples in the range.
    pub samples: u64,
    /// Distinct threads sampled.
    pub threads: usize,
}

/// The processes of `view`, busiest first.
pub fn processes(view: &ProfileView) -> Vec<Target> {
    let mut by_pid: HashMap<String, (Target, Vec<String>)> = HashMap::new();
    for sample in &view.samples {
        let label = |key: &str| {
            sample.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let (target, threads) = by_pid.entry(label("pid")).or_insert_with(|| {
            let mut container = label("container");
            container.truncate(12);
            let runtime = label("runtime");
            (
                Target {
                    pid: label("pid"),
                    comm: label("comm"),
                    exe: label("exe"),
                    runtime: if runtime.is_empty() { "native".to_owned() } else { runtime },
                    container,
                    pod_uid: label("pod_uid"),
                    pod: match (label("namespace"), label("pod")) {
                        (_, pod) if pod.is_empty() => String::new(),
                        (namespace, pod) => format!("{namespace}/{pod}"),
                    },
                    ..Target::default()
                },
                Vec::new(),
            )
        });
        target.samples += sample.count;
        let tid = label("tid");
        if !tid.is_empty() && !threads.contains(&tid) {
            threads.push(tid);
        }
    }
    let mut out: Vec<Target> = by_pid
        .into_values()
        .map(|(mut t, threads)| {
            t.threads = threads.len();
            t
        })
        .collect();
    out.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.pid.cmp(&b.pid)));
    out
}

/// `profctl targets`: one line per process.
pub fn render_targets(view: &ProfileView) -> String {
    let mut out = String::new();
    let targets = processes(view);
    // The pod column only when some process is in a named pod.
    let pods = targets.iter().map(|t| t.pod.len()).max().unwrap_or(0);
    let pod_column = |pod: &str| match pods {
        0 => String::new(),
        _ => format!("{:<width$}  ", if pod.is_empty() { "-" } else { pod }, width = pods.max(3)),
    };
    let _ = writeln!(
        out,
        "{:>8} {:<16} {:>8} {:>7}  {:<24} {:<12}  {}exe",
        "pid",
        "comm",
        "samples",
        "threads",
        "runtime",
        "container",
        if pods == 0 { String::new() } else { format!("{:<width$}  ", "pod", width = pods.max(3)) }
    );
    for t in targets {
        let container = if t.container.is_empty() { "-" } else { &t.container };
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>8} {:>7}  {:<24} {:<12}  {}{}",
            t.pid,
            t.comm,
            t.samples,
            t.threads,
            t.runtime,
            container,
            pod_column(&t.pod),
            t.exe
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::view::{ViewFrame, ViewKind, ViewSample};

    fn view() -> ProfileView {
        let frame = |f: &str| ViewFrame {
            kind: ViewKind::Python,
            function: f.into(),
            file: "app.py".into(),
            line: 3,
            start_line: 1,
        };
        let labels = |pid: &str, tid: &str, runtime: &str| {
            vec![
                ("pid".to_owned(), pid.to_owned()),
                ("tid".to_owned(), tid.to_owned()),
                ("comm".to_owned(), "app".to_owned()),
                ("runtime".to_owned(), runtime.to_owned()),
            ]
        };
        ProfileView {
            samples: vec![
                ViewSample {
                    frames: vec![frame("main"), frame("hot")],
                    count: 30,
                    value: 30 * 10_000_000,
                    labels: labels("7", "7", "CPython 3.12.1"),
                },
                ViewSample {
                    frames: vec![frame("main")],
                    count: 10,
                    value: 10 * 10_000_000,
                    labels: labels("7", "8", "CPython 3.12.1"),
                },
                ViewSample {
                    frames: vec![frame("loop")],
                    count: 60,
                    value: 600_000_000,
                    labels: labels("9", "9", ""),
                },
            ],
            period_ns: 10_000_000,
            ..ProfileView::default()
        }
    }

    #[test]
    fn targets_are_grouped_per_process_busiest_first() {
        let t = processes(&view());
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].pid.as_str(), t[0].samples, t[0].runtime.as_str()), ("9", 60, "native"));
        assert_eq!((t[1].samples, t[1].threads, t[1].runtime.as_str()), (40, 2, "CPython 3.12.1"));
    }

    #[test]
    fn a_window_ranks_by_self_and_shows_total_share_without_escape_codes() {
        let text = render_window(&view(), "window", 10);
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[2].contains("60.0%") && rows[2].ends_with("loop (app.py)"), "{text}");
        assert!(rows[3].contains("30.0%") && rows[3].contains("hot (app.py)"), "{text}");
        assert!(rows[4].contains(" 10.0%   40.0%"), "main: 10% self, 40% total\n{text}");
        assert!(text.contains("processes: 2 — 9 app (60), 7 app (40)"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }
}
