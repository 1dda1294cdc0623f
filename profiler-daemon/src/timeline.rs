//! Memory timelines: the resident memory readings of a range (see [`crate::resident`]), step
//! by step, as one series per process and per container. Each step is answered like a query, from the store's
//! rollups and windows and from memory, so a day's timeline reads hourly rollups.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    aggregate::{Labels, Mode, Tally, Window},
    oom::OOM_KILL_FRAME,
    query::{self, QueryError, QueryLimits, QueryPlan},
    resident::{ANON_FRAME, FILE_FRAME},
    selector::Selector,
    store::Store,
};

/// Points a timeline has at most when no step is asked for.
pub const DEFAULT_POINTS: i64 = 200;

/// One point: the means of the readings of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Point {
    /// Start of the step (Unix nanoseconds).
    pub time_ns: i64,
    /// Mean anonymous resident bytes.
    pub anon: u64,
    /// Mean file-backed and shared resident bytes.
    pub file: u64,
    /// Readings.
    pub readings: u64,
    /// OOM kills of the process.
    pub oom_kills: u64,
}

impl Point {
    /// Mean resident bytes.
    pub fn rss(&self) -> u64 {
        self.anon.saturating_add(self.file)
    }
}

/// The timeline of one process.
#[derive(Clone, Debug)]
pub struct Series {
    /// The labels of its first reading in the range.
    pub labels: Arc<Labels>,
    /// Points in time order.
    pub points: Vec<Point>,
}

/// A series: a process by its pid, or a container (pid 0) by its id.
pub type SeriesKey = (u32, Arc<str>);

/// The key of the series a reading under `labels` belongs to.
fn series_key(labels: &Labels) -> SeriesKey {
    if labels.pid == 0 { (0, labels.container.clone()) } else { (labels.pid, "".into()) }
}

/// Timelines by pid, and the windows whose readings are missing.
#[derive(Debug, Default)]
pub struct Timelines {
    /// One series per process, then one per container (pid 0).
    pub series: BTreeMap<SeriesKey, Series>,
    /// The step used.
    pub step_ns: i64,
    /// Windows that could not be stored and are gone from memory.
    pub missing_windows: u64,
}

/// The step for `[start, end)`: `asked` (or one giving at most [`DEFAULT_POINTS`] points when
/// 0), rounded up to whole windows of `window_ns`.
pub fn step(start_ns: i64, end_ns: i64, asked: i64, window_ns: i64) -> i64 {
    let window = window_ns.max(1);
    let want = if asked > 0 { asked } else { (end_ns - start_ns) / DEFAULT_POINTS };
    let windows = (want.max(1) + window - 1) / window;
    windows.max(1) * window
}

/// The timelines of `[start, end)` in steps of `step_ns` (whole windows), aligned to the step,
/// for processes that `selector` keeps; `windows` are the recent windows from memory.
pub fn build(
    store: Option<&Store>,
    windows: &[Arc<Window>],
    (start_ns, end_ns): (i64, i64),
    step_ns: i64,
    selector: &Selector,
) -> Result<Timelines, QueryError> {
    let step_ns = step_ns.max(1);
    let mut out = Timelines { step_ns, ..Timelines::default() };
    let mut t = start_ns.div_euclid(step_ns) * step_ns;
    while t < end_ns {
        let (from, to) = (t, t + step_ns);
        let here: Vec<Arc<Window>> =
            windows.iter().filter(|w| w.start_ns < to && w.end_ns > from).cloned().collect();
        let plan = QueryPlan {
            start_ns: from,
            end_ns: to,
            selector: selector.clone(),
            mode: Mode::Resident,
            idle: true,
            limits: QueryLimits { max_entries: usize::MAX },
        };
        let answer = query::answer(store, here, &plan)?;
        out.missing_windows += answer.missing_windows;
        // Per pid: its labels, and the (anonymous, file) tallies. A process whose labels
        // changed within the step (a pod name that arrived) has two entries per part, whose
        // readings add up.
        let mut sums: BTreeMap<SeriesKey, (Arc<Labels>, [Tally; 3])> = BTreeMap::new();
        for ((labels, stack), tally) in &answer.merged.entries {
            let part = match stack.first().map(|f| &*f.function) {
                Some(ANON_FRAME) => 0,
                Some(FILE_FRAME) => 1,
                Some(OOM_KILL_FRAME) => 2,
                _ => continue,
            };
            sums.entry(series_key(labels))
                .or_insert_with(|| (labels.clone(), [Tally::default(); 3]))
                .1[part]
                .add(*tally);
        }
        for (key, (labels, [anon, file, kills])) in sums {
            let mean = |t: Tally| t.value.checked_div(t.count).unwrap_or(0);
            let point = Point {
                time_ns: from,
                anon: mean(anon),
                file: mean(file),
                readings: anon.count,
                oom_kills: kills.count,
            };
            out.series
                .entry(key)
                .or_insert_with(|| Series { labels, points: Vec::new() })
                .points
                .push(point);
        }
        t = to;
    }
    Ok(out)
}

/// Growth of a series over its points: (bytes from the first point to the last, bytes per
/// second by a least-squares fit of rss over time).
pub fn growth(points: &[Point]) -> (i64, f64) {
    // A kill's step after the last reading has no reading.
    let points: Vec<Point> = points.iter().filter(|p| p.readings > 0).copied().collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return (0, 0.0) };
    let delta = last.rss() as i64 - first.rss() as i64;
    if points.len() < 2 {
        return (delta, 0.0);
    }
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| (p.time_ns - first.time_ns) as f64 / 1e9).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.rss() as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (delta, if sxx > 0.0 { sxy / sxx } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_is_whole_windows_and_at_most_the_default_points() {
        let s = 1_000_000_000;
        assert_eq!(step(0, 3600 * s, 0, 10 * s), 20 * s);
        assert_eq!(step(0, 60 * s, 0, 10 * s), 10 * s);
        assert_eq!(step(0, 60 * s, 15 * s, 10 * s), 20 * s);
        assert_eq!(step(0, 60 * s, 1, 10 * s), 10 * s);
    }

    #[test]
    fn each_container_is_a_series_of_its_own_next_to_its_processes() {
        use crate::{
            aggregate::WindowBuilder,
            resident::{Frames, Statm, container_labels, samples},
            stats::{DropSnapshot, PipelineStats},
        };
        let s = 1_000_000_000;
        let stats = PipelineStats::default();
        let frames = Frames::default();
        let process = |pid, container: &str| Labels {
            pid,
            comm: "api".into(),
            container: container.into(),
            cgroup: format!("/docker-{container}.scope").into(),
            ..Labels::default()
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let readings = [
            (process(10, &a), 10 << 20),
            (process(11, &b), 20 << 20),
            (container_labels(&process(10, &a)), 100 << 20),
            (container_labels(&process(11, &b)), 200 << 20),
        ];
        let mut w = WindowBuilder::new(0, 100, DropSnapshot::default());
        for (labels, bytes) in readings {
            let labels = Arc::new(labels);
            for sample in samples(&labels, Statm { resident: bytes, shared: 0 }, s / 2, &frames) {
                w.add(sample, &stats);
            }
        }
        let window = Arc::new(w.close(s, &DropSnapshot::default()));
        let all: Selector = "".parse().unwrap();
        let t = build(None, &[window], (0, s), s, &all).unwrap();
        let rss: Vec<(u32, &str, u64)> = t
            .series
            .iter()
            .map(|((pid, c), series)| (*pid, &**c, series.points[0].rss() >> 20))
            .collect();
        assert_eq!(rss, [(0, a.as_str(), 100), (0, b.as_str(), 200), (10, "", 10), (11, "", 20)]);
    }

    #[test]
    fn growth_is_the_slope_of_the_points() {
        let point = |secs: i64, mib: u64| Point {
            time_ns: secs * 1_000_000_000,
            anon: mib << 20,
            file: 0,
            readings: 1,
            oom_kills: 0,
        };
        let steady: Vec<Point> = (0..10).map(|i| point(i, 100 + 2 * i as u64)).collect();
        let (delta, rate) = growth(&steady);
        assert_eq!(delta, 18 << 20);
        assert!((rate - f64::from(2 << 20)).abs() < 1.0, "{rate}");
        assert_eq!(growth(&[]), (0, 0.0));
        // The step of a kill after the last reading does not count as a fall to zero.
        let mut killed = steady.clone();
        killed.push(Point { time_ns: 10_000_000_000, oom_kills: 1, ..Point::default() });
        assert_eq!(growth(&killed).0, 18 << 20);
        assert_eq!(growth(&steady[..1]), (0, 0.0));
    }
}
