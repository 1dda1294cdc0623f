//! Comparing two profiles, a base and a head: a table of the functions whose share of the
//! samples changed most, and a differential flame graph.
//!
//! Shares are normalised by each profile's own sample count, so a base of 10 minutes and a head
//! of 1 minute compare fairly: a function's self share is its self samples over all samples of
//! its profile, its total share the samples with it anywhere on the stack. Changes are in
//! percentage points (head minus base).

use std::{collections::HashMap, fmt::Write as _};

use inferno::flamegraph;

use super::{
    ProfileView,
    flamegraph::{FlamegraphError, FlamegraphOptions},
    top::{self, SortKey},
    view::{ViewFrame, ViewKind, ViewSample},
};

/// What the differential graph's colours mean.
pub const LEGEND: &str = "red: more self samples in head than in base, blue: fewer; base \
                          scaled to the head sample count; widths are head samples";

/// Which change orders the table (largest absolute change first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DiffSort {
    /// Change of the self share (samples in the function itself).
    #[default]
    #[value(name = "self")]
    SelfShare,
    /// Change of the total share (samples with the function anywhere on the stack).
    #[value(name = "total", alias = "cumulative")]
    Total,
}

/// One function's shares in both profiles, in percent of each profile's samples.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffRow {
    /// The function as shown.
    pub function: String,
    /// The binary, or the source file of interpreted code.
    pub location: String,
    /// What kind of code it is.
    pub kind: ViewKind,
    /// Self share in the base.
    pub base_self: f64,
    /// Self share in the head.
    pub head_self: f64,
    /// Total share in the base.
    pub base_total: f64,
    /// Total share in the head.
    pub head_total: f64,
}

impl DiffRow {
    /// Change of the self share, in percentage points.
    pub fn self_change(&self) -> f64 {
        self.head_self - self.base_self
    }

    /// Change of the total share, in percentage points.
    pub fn total_change(&self) -> f64 {
        self.head_total - self.base_total
    }
}

/// Samples per function: (self, cumulative).
type Counts = HashMap<(String, String), (u64, u64, ViewKind)>;

fn counts(view: &ProfileView) -> Counts {
    top::rows(view, SortKey::Name)
        .into_iter()
        .map(|r| ((r.function, r.location), (r.self_ns, r.cum_ns, r.kind)))
        .collect()
}

/// The functions whose self or total share changed, ordered by `sort`, ties by name.
pub fn rows(base: &ProfileView, head: &ProfileView, sort: DiffSort) -> Vec<DiffRow> {
    let (base_n, head_n) = (base.total_value(), head.total_value());
    let (base_counts, head_counts) = (counts(base), counts(head));
    let share = |n: u64, total: u64| if total == 0 { 0.0 } else { 100.0 * n as f64 / total as f64 };
    // Exact comparison of a/A with b/B, so that rounding never shows a change that is not one.
    let same =
        |a: u64, b: u64| u128::from(a) * u128::from(head_n) == u128::from(b) * u128::from(base_n);
    let mut keys: Vec<&(String, String)> = base_counts.keys().chain(head_counts.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<DiffRow> = keys
        .into_iter()
        .filter_map(|key| {
            let b = base_counts.get(key);
            let h = head_counts.get(key);
            let (bs, bt) = b.map_or((0, 0), |c| (c.0, c.1));
            let (hs, ht) = h.map_or((0, 0), |c| (c.0, c.1));
            if same(bs, hs) && same(bt, ht) {
                return None;
            }
            Some(DiffRow {
                function: key.0.clone(),
                location: key.1.clone(),
                kind: h.or(b).map_or(ViewKind::Native, |c| c.2),
                base_self: share(bs, base_n),
                head_self: share(hs, head_n),
                base_total: share(bt, base_n),
                head_total: share(ht, head_n),
            })
        })
        .collect();
    let by = |primary: fn(&DiffRow) -> f64, secondary: fn(&DiffRow) -> f64| {
        move |a: &DiffRow, b: &DiffRow| {
            let abs_desc = |f: fn(&DiffRow) -> f64| f(b).abs().total_cmp(&f(a).abs());
            abs_desc(primary)
                .then_with(|| abs_desc(secondary))
                .then_with(|| a.function.cmp(&b.function))
                .then_with(|| a.location.cmp(&b.location))
        }
    };
    match sort {
        DiffSort::SelfShare => rows.sort_by(by(DiffRow::self_change, DiffRow::total_change)),
        DiffSort::Total => rows.sort_by(by(DiffRow::total_change, DiffRow::self_change)),
    }
    rows
}

/// The table: a line with both sample counts, a header, and at most `limit` rows.
pub fn render(base: &ProfileView, head: &ProfileView, sort: DiffSort, limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "base: {} samples, head: {} samples; shares are % of each profile's samples, changes \
         are percentage points (head - base)",
        base.total(),
        head.total()
    );
    let _ = writeln!(
        out,
        "{:>9} {:>9} {:>8} {:>9} {:>9} {:>8}  function (location)",
        "self_base", "self_head", "self_pp", "tot_base", "tot_head", "tot_pp"
    );
    let rows = rows(base, head, sort);
    if rows.is_empty() {
        out.push_str("no function's share changed\n");
    }
    for row in rows.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>8.2}% {:>8.2}% {:>+8.2} {:>8.2}% {:>8.2}% {:>+8.2}  {} ({})",
            row.base_self,
            row.head_self,
            row.self_change(),
            row.base_total,
            row.head_total,
            row.total_change(),
            row.function,
            row.location,
        );
    }
    out
}

/// One line's memory growth in both profiles of the memory mode: tracemalloc's `compare_to`
/// by line, for memory touched for the first time.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthRow {
    /// The innermost Python frame with a line (`function (file:line)`), or the leaf function
    /// of a stack without one.
    pub line: String,
    /// Bytes in the base.
    pub base_bytes: u64,
    /// Bytes in the head.
    pub head_bytes: u64,
    /// Bytes per second of the base's range.
    pub base_rate: f64,
    /// Bytes per second of the head's range.
    pub head_rate: f64,
}

impl GrowthRow {
    /// Change of the rate, in bytes per second.
    pub fn change(&self) -> f64 {
        self.head_rate - self.base_rate
    }
}

/// Where a memory sample's growth is charged: the innermost Python line, else the leaf.
fn growth_line(sample: &ViewSample) -> String {
    let python = sample.frames.iter().rev().find(|f| f.kind == ViewKind::Python && f.line > 0);
    python.or(sample.frames.last()).map_or_else(|| "[no frames]".to_owned(), ViewFrame::display)
}

/// Bytes per line of `view`.
fn growth(view: &ProfileView) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for sample in &view.samples {
        let bytes = out.entry(growth_line(sample)).or_default();
        *bytes = bytes.saturating_add(sample.value);
    }
    out
}

/// The length of `view`'s range in seconds (one second if it has none).
fn seconds(view: &ProfileView) -> f64 {
    if view.duration_ns > 0 { view.duration_ns as f64 / 1e9 } else { 1.0 }
}

/// The lines whose growth rate changed, largest change first (ties by line). Rates, not
/// amounts, so that ranges of different lengths compare fairly.
pub fn growth_rows(base: &ProfileView, head: &ProfileView) -> Vec<GrowthRow> {
    let (b, h) = (growth(base), growth(head));
    let (base_s, head_s) = (seconds(base), seconds(head));
    let mut lines: Vec<&String> = b.keys().chain(h.keys()).collect();
    lines.sort();
    lines.dedup();
    let mut rows: Vec<GrowthRow> = lines
        .into_iter()
        .map(|line| {
            let (base_bytes, head_bytes) =
                (b.get(line).copied().unwrap_or(0), h.get(line).copied().unwrap_or(0));
            GrowthRow {
                line: line.clone(),
                base_bytes,
                head_bytes,
                base_rate: base_bytes as f64 / base_s,
                head_rate: head_bytes as f64 / head_s,
            }
        })
        .collect();
    rows.sort_by(|x, y| y.change().abs().total_cmp(&x.change().abs()).then(x.line.cmp(&y.line)));
    rows
}

/// The memory mode's table by line: each range's growth and its rate, and the change.
pub fn render_growth(base: &ProfileView, head: &ProfileView, limit: usize) -> String {
    const MIB: f64 = 1_048_576.0;
    let mut out = String::from(
        "memory touched for the first time by line (the innermost Python line, else the leaf \
         function), largest change of rate first\n",
    );
    let _ = writeln!(
        out,
        "{:>10} {:>10} {:>12} {:>12} {:>12}  line",
        "base_MiB", "head_MiB", "base_MiB/s", "head_MiB/s", "change_MiB/s"
    );
    for row in growth_rows(base, head).iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>10.2} {:>10.2} {:>12.3} {:>12.3} {:>+12.3}  {}",
            row.base_bytes as f64 / MIB,
            row.head_bytes as f64 / MIB,
            row.base_rate / MIB,
            row.head_rate / MIB,
            row.change() / MIB,
            row.line,
        );
    }
    out
}

/// Draws a differential flame graph: frames as wide as their samples in `head`, coloured by
/// the change of their self samples from `base` (scaled to `head`'s sample count): red for
/// growth, blue for shrinkage, white for none. Stacks that only `base` has are not drawn (they
/// have no width); the table lists them.
pub fn render_flamegraph(
    base: &ProfileView,
    head: &ProfileView,
    options: &FlamegraphOptions,
) -> Result<Vec<u8>, FlamegraphError> {
    // Colours are the deltas; this palette is not used for drawing.
    let mut unused = flamegraph::color::PaletteMap::default();
    let base_stacks = super::flamegraph::folded(base, &mut unused);
    let head_stacks = super::flamegraph::folded(head, &mut unused);
    let (base_n, head_n) = (base.total_weight(), head.total_weight());
    if head_n == 0 {
        return Err(FlamegraphError::Empty);
    }
    let scaled = |n: u64| {
        if base_n == 0 {
            0
        } else {
            // Rounded to the nearest sample; u128 cannot overflow.
            ((u128::from(n) * u128::from(head_n) + u128::from(base_n) / 2) / u128::from(base_n))
                as u64
        }
    };
    let mut stacks: Vec<&String> = base_stacks.keys().chain(head_stacks.keys()).collect();
    stacks.sort();
    stacks.dedup();
    let lines: Vec<String> = stacks
        .into_iter()
        .map(|s| {
            let b = scaled(base_stacks.get(s).copied().unwrap_or(0));
            let h = head_stacks.get(s).copied().unwrap_or(0);
            format!("{s} {b} {h}")
        })
        .collect();
    let mut opt = options.inferno(LEGEND.to_owned(), head.weight_unit());
    if options.title.is_empty() {
        opt.title = "Differential Flame Graph".to_owned();
    }
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(function: &str) -> ViewFrame {
        ViewFrame {
            kind: ViewKind::Python,
            function: function.into(),
            file: "app.py".into(),
            line: 1,
            start_line: 1,
        }
    }

    fn view(stacks: &[(&[&str], u64)]) -> ProfileView {
        ProfileView {
            samples: stacks
                .iter()
                .map(|(names, count)| ViewSample {
                    frames: names.iter().map(|n| py(n)).collect(),
                    count: *count,
                    value: *count,
                    labels: vec![],
                })
                .collect(),
            period_ns: 1,
            ..ProfileView::default()
        }
    }

    #[test]
    fn shares_are_normalised_by_each_profiles_samples() {
        // Base: 100 samples, fast 50%, slow 50%. Head: 1000 samples, fast 20%, slow 80%.
        let base = view(&[(&["main", "fast"], 50), (&["main", "slow"], 50)]);
        let head = view(&[(&["main", "fast"], 200), (&["main", "slow"], 800)]);
        let rows = rows(&base, &head, DiffSort::SelfShare);
        let got: Vec<_> =
            rows.iter().map(|r| (r.function.as_str(), r.self_change(), r.total_change())).collect();
        // main is 100% of both and does not change, so it is not listed.
        assert_eq!(got, [("fast", -30.0, -30.0), ("slow", 30.0, 30.0)]);
    }

    #[test]
    fn new_and_vanished_functions_and_the_total_order() {
        let base = view(&[(&["main", "old"], 3), (&["main"], 1)]);
        let head = view(&[(&["main", "mid", "new"], 2), (&["main"], 2)]);
        let by_total: Vec<_> = rows(&base, &head, DiffSort::Total)
            .into_iter()
            .map(|r| (r.function, r.base_total, r.head_total))
            .collect();
        assert_eq!(
            by_total,
            [
                ("old".to_owned(), 75.0, 0.0),
                // Equal total changes: the larger self change first.
                ("new".to_owned(), 0.0, 50.0),
                ("mid".to_owned(), 0.0, 50.0),
                ("main".to_owned(), 100.0, 100.0),
            ]
        );
        let table = render(&base, &head, DiffSort::SelfShare, 10);
        assert!(
            table.contains(
                "   75.00%     0.00%   -75.00    75.00%     0.00%   -75.00  old (app.py)"
            ),
            "{table}"
        );
        assert!(table.starts_with("base: 4 samples, head: 4 samples"), "{table}");
    }

    #[test]
    fn memory_growth_compares_lines_by_rate_and_lists_new_ones() {
        let line = |function: &str, line: i64| ViewFrame { line, ..py(function) };
        let memory = |samples: Vec<(Vec<ViewFrame>, u64)>, seconds: i64| ProfileView {
            samples: samples
                .into_iter()
                .map(|(frames, value)| ViewSample { frames, count: 1, value, labels: vec![] })
                .collect(),
            mode: crate::aggregate::Mode::Memory,
            duration_ns: seconds * 1_000_000_000,
            ..ProfileView::default()
        };
        let native = ViewFrame {
            kind: ViewKind::Native,
            function: "memset".into(),
            file: "libc.so.6".into(),
            line: 0,
            start_line: 0,
        };
        const MIB: u64 = 1 << 20;
        // Base: 10 s; the scratch line touched 10 MiB (1 MiB/s). Head: 2 s; the scratch line
        // 2 MiB (the same 1 MiB/s), a new leaking line 8 MiB (4 MiB/s), under a native leaf.
        let base = memory(vec![(vec![line("handle", 3)], 10 * MIB)], 10);
        let head = memory(
            vec![
                (vec![line("handle", 3)], 2 * MIB),
                (vec![line("handle", 4), native.clone()], 8 * MIB),
                (vec![native], MIB),
            ],
            2,
        );
        let rows = growth_rows(&base, &head);
        let got: Vec<_> =
            rows.iter().map(|r| (r.line.as_str(), r.base_bytes, r.head_bytes)).collect();
        assert_eq!(
            got,
            [
                ("handle (app.py:4)", 0, 8 * MIB),
                ("memset", 0, MIB),
                ("handle (app.py:3)", 10 * MIB, 2 * MIB),
            ]
        );
        assert_eq!(rows[0].change(), 4.0 * MIB as f64);
        assert_eq!(rows[2].change(), 0.0, "the same rate over ranges of different lengths");
        let table = render_growth(&base, &head, 10);
        assert!(
            table.contains(
                "      0.00       8.00        0.000        4.000       +4.000  handle (app.py:4)"
            ),
            "{table}"
        );
    }

    #[test]
    fn identical_profiles_have_no_rows() {
        let a = view(&[(&["main", "f"], 2)]);
        let b = view(&[(&["main", "f"], 6)]);
        assert!(render(&a, &b, DiffSort::SelfShare, 10).contains("no function's share changed"));
    }

    #[test]
    fn the_graph_colours_growth_red_and_shrinkage_blue() {
        let base = view(&[(&["main", "grows"], 10), (&["main", "shrinks"], 90)]);
        let head = view(&[(&["main", "grows"], 9), (&["main", "shrinks"], 1)]);
        let svg = String::from_utf8(
            render_flamegraph(&base, &head, &FlamegraphOptions::default()).unwrap(),
        )
        .unwrap();
        let fill_of = |name: &str| {
            let at = svg.find(&format!("<title>{name} (app.py:1) (")).expect(name);
            let rest = &svg[at..];
            let fill = rest.find("fill=\"").unwrap() + 6;
            rest[fill..fill + rest[fill..].find('"').unwrap()].to_owned()
        };
        // Base scaled to 10 samples: grows 1 -> 9, shrinks 9 -> 1.
        assert_eq!(fill_of("grows"), "rgb(255,100,100)");
        assert_eq!(fill_of("shrinks"), "rgb(100,100,255)");
        assert!(svg.contains("Differential Flame Graph"));
        assert!(svg.contains(LEGEND));
    }
}
