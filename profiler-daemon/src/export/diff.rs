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
    view::ViewKind,
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
        .map(|r| ((r.function, r.location), (r.self_samples, r.cumulative, r.kind)))
        .collect()
}

/// The functions whose self or total share changed, ordered by `sort`, ties by name.
pub fn rows(base: &ProfileView, head: &ProfileView, sort: DiffSort) -> Vec<DiffRow> {
    let (base_n, head_n) = (base.total(), head.total());
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
    let (base_n, head_n) = (base.total(), head.total());
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
    let mut opt = options.inferno(LEGEND.to_owned());
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
    use crate::export::view::{ViewFrame, ViewSample};

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
