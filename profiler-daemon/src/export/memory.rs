//! Memory timelines as mprof shows them: a table per process with its growth, a ranking of
//! the processes that grew most (`--top`), CSV for spreadsheets and pandas, and an SVG plot of
//! resident memory over time.

use std::fmt::Write as _;

use plotters::prelude::*;
use profiler_proto::v1;

use crate::timeline::{Point, growth};

/// Bytes in a MiB, as mprof counts.
const MIB: f64 = 1_048_576.0;

fn points(series: &v1::MemorySeries) -> Vec<Point> {
    series
        .points
        .iter()
        .map(|p| Point {
            time_ns: p.time_unix_nanos,
            anon: p.anon_bytes,
            file: p.file_bytes,
            readings: p.readings,
            oom_kills: p.oom_kills,
        })
        .collect()
}

/// When the process was killed for lack of memory, in words ("" when it was not).
fn kill_words(points: &[Point]) -> String {
    let kills: Vec<String> =
        points.iter().filter(|p| p.oom_kills > 0).map(|p| time(p.time_ns)).collect();
    if kills.is_empty() {
        String::new()
    } else {
        format!("  OOM-killed in the step of {}", kills.join(", "))
    }
}

fn time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How a process (or a container) is named in tables and legends.
fn name(series: &v1::MemorySeries) -> String {
    let mut s = if series.pid == 0 {
        format!("container {}", short_id(&series.container))
    } else {
        format!("{} ({})", series.pid, series.comm)
    };
    if !series.pod.is_empty() {
        let _ = write!(s, " pod {}/{}", series.namespace, series.pod);
    }
    s
}

/// A container id as `docker ps` shows it: its first 12 digits.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The growth of a series in words: "+12.0 MiB (0.20 MiB/s)".
fn growth_words(points: &[Point]) -> String {
    let (delta, rate) = growth(points);
    format!("{:+.1} MiB ({:+.3} MiB/s)", delta as f64 / MIB, rate / MIB)
}

/// One table per process: time, RSS, anonymous and file-backed MiB, and its growth.
pub fn render_table(response: &v1::MemoryTimelineResponse) -> String {
    let mut out = String::new();
    if response.series.is_empty() {
        out.push_str("no resident memory readings in this range\n");
    }
    for series in &response.series {
        let pts = points(series);
        let _ = writeln!(
            out,
            "{} {}  exe {}  grew {}{}",
            if series.pid == 0 { "cgroup of" } else { "process" },
            name(series),
            if series.exe.is_empty() { "-" } else { &series.exe },
            growth_words(&pts),
            kill_words(&pts)
        );
        let _ =
            writeln!(out, "{:<22} {:>10} {:>10} {:>10}", "time", "RSS MiB", "anon MiB", "file MiB");
        for p in &pts {
            if p.readings == 0 {
                let _ = writeln!(out, "{:<22} {:>10}", time(p.time_ns), "OOM kill");
                continue;
            }
            let _ = writeln!(
                out,
                "{:<22} {:>10.1} {:>10.1} {:>10.1}{}",
                time(p.time_ns),
                p.rss() as f64 / MIB,
                p.anon as f64 / MIB,
                p.file as f64 / MIB,
                if p.oom_kills > 0 { "  OOM kill" } else { "" }
            );
        }
        out.push('\n');
    }
    out.push_str(&footer(response));
    out
}

fn footer(response: &v1::MemoryTimelineResponse) -> String {
    let mut out = format!(
        "* each row is the mean of the readings in one step of {:.0} s\n",
        response.step_nanos as f64 / 1e9
    );
    if response.missing_windows > 0 {
        let _ = writeln!(
            out,
            "* {} windows of this range could not be stored: their readings are missing",
            response.missing_windows
        );
    }
    out
}

/// The processes ranked by growth over the range, largest first.
pub fn render_top(response: &v1::MemoryTimelineResponse, limit: usize) -> String {
    let mut rows: Vec<(&v1::MemorySeries, Vec<Point>)> =
        response.series.iter().map(|s| (s, points(s))).collect();
    rows.sort_by_key(|(s, p)| (std::cmp::Reverse(growth(p).0), s.pid));
    let mut out = format!(
        "{:>8} {:<16} {:>10} {:>10} {:>10} {:>10} {:>4}  {}\n",
        "pid", "comm", "first MiB", "last MiB", "grew MiB", "MiB/s", "OOM", "container/pod"
    );
    for (series, pts) in rows.iter().take(limit) {
        let kills: u64 = pts.iter().map(|p| p.oom_kills).sum();
        let read: Vec<&Point> = pts.iter().filter(|p| p.readings > 0).collect();
        let (Some(first), Some(last)) = (read.first(), read.last()) else { continue };
        let (delta, rate) = growth(pts);
        let place = if series.pod.is_empty() {
            short_id(&series.container)
        } else {
            format!("{}/{}", series.namespace, series.pod)
        };
        let pid = if series.pid == 0 { "-".to_owned() } else { series.pid.to_string() };
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>10.1} {:>10.1} {:>+10.1} {:>+10.3} {:>4}  {}",
            pid,
            series.comm,
            first.rss() as f64 / MIB,
            last.rss() as f64 / MIB,
            delta as f64 / MIB,
            rate / MIB,
            kills,
            place
        );
    }
    out.push_str(&footer(response));
    out
}

/// CSV, one row per point: `time` (Unix seconds), `pid`, `comm`, `rss_bytes`, `anon_bytes`,
/// `file_bytes`, `readings`, `oom_kills`, `container` (a container's own rows have pid 0).
pub fn render_csv(response: &v1::MemoryTimelineResponse) -> String {
    let mut out = String::from(
        "time,pid,comm,rss_bytes,anon_bytes,file_bytes,readings,oom_kills,container\n",
    );
    for series in &response.series {
        let comm = csv_field(&series.comm);
        let container = csv_field(&series.container);
        for p in &series.points {
            let _ = writeln!(
                out,
                "{:.3},{},{comm},{},{},{},{},{},{container}",
                p.time_unix_nanos as f64 / 1e9,
                series.pid,
                p.rss_bytes,
                p.anon_bytes,
                p.file_bytes,
                p.readings,
                p.oom_kills
            );
        }
    }
    out
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the memory plot: {0}")]
pub struct PlotError(String);

/// An mprof-style plot: resident MiB over seconds since the range's first point, one line
/// per process (the `limit` that grew most).
pub fn render_svg(
    response: &v1::MemoryTimelineResponse,
    title: &str,
    limit: usize,
) -> Result<String, PlotError> {
    let mut ranked: Vec<(&v1::MemorySeries, Vec<Point>)> =
        response.series.iter().map(|s| (s, points(s))).collect();
    ranked.sort_by_key(|(s, p)| (std::cmp::Reverse(growth(p).0), s.pid));
    ranked.truncate(limit);
    let t0 = ranked.iter().filter_map(|(_, p)| p.first()).map(|p| p.time_ns).min().unwrap_or(0);
    let lines: Vec<(String, Vec<(f64, f64)>)> = ranked
        .iter()
        .map(|(s, pts)| {
            let xy = pts
                .iter()
                .filter(|p| p.readings > 0)
                .map(|p| ((p.time_ns - t0) as f64 / 1e9, p.rss() as f64 / MIB))
                .collect();
            let killed = if pts.iter().any(|p| p.oom_kills > 0) { ", OOM-killed" } else { "" };
            (format!("{}{killed}", name(s)), xy)
        })
        .collect();
    draw(&lines, title).map_err(|e| PlotError(e.to_string()))
}

fn draw(
    lines: &[(String, Vec<(f64, f64)>)],
    title: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1024, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let all = || lines.iter().flat_map(|(_, p)| p.iter().copied());
        let x_max = all().map(|p| p.0).fold(0.0, f64::max).max(1.0);
        let y_max = all().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (in seconds)")
            .y_desc("memory used (in MiB)")
            .x_label_formatter(&|x: &f64| format!("{x:.0}"))
            .y_label_formatter(&|y: &f64| format!("{y:.0}"))
            .draw()?;
        for (i, (name, xy)) in lines.iter().enumerate() {
            let color = Palette99::pick(i);
            chart
                .draw_series(LineSeries::new(xy.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> v1::MemoryTimelineResponse {
        let series = |pid, comm: &str, mib: &[u64]| v1::MemorySeries {
            pid,
            comm: comm.into(),
            points: mib
                .iter()
                .enumerate()
                .map(|(i, m)| v1::MemoryPoint {
                    time_unix_nanos: 1_700_000_000_000_000_000 + i as i64 * 10_000_000_000,
                    rss_bytes: (m + 1) << 20,
                    anon_bytes: m << 20,
                    file_bytes: 1 << 20,
                    readings: 10,
                    oom_kills: 0,
                })
                .collect(),
            ..v1::MemorySeries::default()
        };
        v1::MemoryTimelineResponse {
            series: vec![
                series(10, "steady", &[50, 50, 50]),
                series(20, "leaky, \"x\"", &[10, 40, 70]),
            ],
            step_nanos: 10_000_000_000,
            missing_windows: 0,
        }
    }

    #[test]
    fn top_ranks_the_process_that_grew_most_first() {
        let top = render_top(&response(), 10);
        let rows: Vec<&str> = top.lines().skip(1).filter(|l| !l.starts_with('*')).collect();
        assert!(rows[0].trim_start().starts_with("20 "), "{top}");
        assert!(rows[0].contains("+60.0") && rows[0].contains("+3.000"), "{top}");
        assert!(rows[1].trim_start().starts_with("10 ") && rows[1].contains("+0.0"), "{top}");
    }

    #[test]
    fn csv_has_a_row_per_point_with_quoted_names() {
        let csv = render_csv(&response());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "time,pid,comm,rss_bytes,anon_bytes,file_bytes,readings,oom_kills,container"
        );
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[4],
            format!(
                "1700000000.000,20,\"leaky, \"\"x\"\"\",{},{},{},10,0,",
                11 << 20,
                10 << 20,
                1 << 20
            )
        );
    }

    #[test]
    fn the_plot_has_a_line_and_a_legend_entry_per_process() {
        let svg = render_svg(&response(), "memory", 10).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(
            svg.contains("20 (leaky, &quot;x&quot;)") || svg.contains("20 (leaky, \"x\")"),
            "{svg}"
        );
        assert!(svg.contains("10 (steady)"));
        // Two data lines of three points, and two legend marks.
        let drawn: Vec<&str> = svg.lines().filter(|l| l.contains("stroke-width=\"2\"")).collect();
        assert_eq!(drawn.len(), 4, "{svg}");
        assert_eq!(drawn.iter().filter(|l| l.matches(',').count() == 3).count(), 2, "{svg}");
    }

    #[test]
    fn a_containers_series_is_named_by_its_id_and_pod() {
        let mut response = response();
        let id = "4f3a".repeat(16);
        response.series.push(v1::MemorySeries {
            pid: 0,
            comm: "[container]".into(),
            container: id.clone(),
            pod: "api-7f9c".into(),
            namespace: "default".into(),
            ..response.series[1].clone()
        });
        let top = render_top(&response, 10);
        let row = top.lines().find(|l| l.contains("[container]")).unwrap();
        assert!(row.trim_start().starts_with("- "), "{top}");
        assert!(row.ends_with("default/api-7f9c"), "{top}");
        let table = render_table(&response);
        assert!(table.contains("cgroup of container 4f3a4f3a4f3a pod default/api-7f9c"), "{table}");
        let csv = render_csv(&response);
        assert!(csv.lines().last().unwrap().starts_with("1700000020.000,0,[container],"), "{csv}");
        assert!(csv.lines().last().unwrap().ends_with(&format!(",{id}")), "{csv}");
    }

    #[test]
    fn the_table_says_each_process_growth() {
        let table = render_table(&response());
        assert!(
            table.contains("process 20 (leaky, \"x\")") && table.contains("grew +60.0 MiB"),
            "{table}"
        );
        assert!(render_table(&v1::MemoryTimelineResponse::default()).contains("no resident"));
    }
}
