//! Flame graphs as interactive SVG (click to zoom, Ctrl-F to search), drawn by inferno from
//! folded stacks.
//!
//! Frames are coloured by the kind of code, through an inferno [`PaletteMap`] filled with one
//! colour per frame name before drawing, so the colour never depends on guessing from a name:
//! [`PYTHON`] green, [`NATIVE`] red to yellow, [`KERNEL`] blue, [`MARKER`] grey (markers and
//! code outside any mapping). Within a kind the shade comes from a hash of the name, so a
//! function keeps its colour from one graph to the next. The SVG's subtitle says what the
//! colours mean ([`LEGEND`]).

use std::collections::BTreeMap;

use inferno::flamegraph::{
    self, Direction,
    color::{BackgroundColor, Color, PaletteMap},
};
use thiserror::Error;

use super::{
    ProfileView,
    view::{ViewFrame, ViewKind},
};

/// What the frame colours mean, as the subtitle of every non-differential graph says.
pub const LEGEND: &str = "green: Python, red to yellow: native code, blue: kernel, grey: other \
                          frames ([truncated], code outside any mapping)";

/// The colour family of Python frames (the greenest shade).
pub const PYTHON: Color = Color { r: 60, g: 200, b: 90 };
/// The colour family of native frames (the reddest shade).
pub const NATIVE: Color = Color { r: 230, g: 60, b: 20 };
/// The colour family of kernel frames.
pub const KERNEL: Color = Color { r: 90, g: 150, b: 235 };
/// The colour of marker frames.
pub const MARKER: Color = Color { r: 180, g: 180, b: 180 };

/// Why no flame graph was drawn.
#[derive(Debug, Error)]
pub enum FlamegraphError {
    /// The profile has no samples, so there is nothing to draw.
    #[error("no samples to draw: the range or selector matched nothing")]
    Empty,
    /// inferno failed.
    #[error("drawing the flame graph: {0}")]
    Render(#[from] std::io::Error),
}

/// How to draw a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlamegraphOptions {
    /// The title; empty for inferno's default ("Flame Graph" or "Icicle Graph").
    pub title: String,
    /// Roots at the top, stacks growing down (an icicle graph).
    pub icicle: bool,
    /// Merge stacks from the leaf instead of the root: the bottom row shows where samples
    /// were taken, and callers grow above it.
    pub reverse: bool,
}

impl FlamegraphOptions {
    /// inferno's options for these, with `subtitle`, widths counted in `count_name` (samples
    /// or nanoseconds), a stable colour choice and the search script (inferno's default).
    pub(crate) fn inferno(
        &self,
        subtitle: String,
        count_name: &str,
    ) -> flamegraph::Options<'static> {
        let mut opt = flamegraph::Options::default();
        opt.title = match (&self.title, self.icicle) {
            (t, _) if !t.is_empty() => t.clone(),
            (_, true) => "Icicle Graph".to_owned(),
            (_, false) => flamegraph::defaults::TITLE.to_owned(),
        };
        opt.subtitle = Some(subtitle);
        opt.direction = if self.icicle { Direction::Inverted } else { Direction::Straight };
        opt.reverse_stack_order = self.reverse;
        count_name.clone_into(&mut opt.count_name);
        opt.bgcolors = Some(BackgroundColor::Grey);
        opt.deterministic = true;
        opt
    }
}

/// A frame's name in folded stacks given to inferno. Kernel frames carry inferno's `_[k]`
/// annotation, which inferno hides when drawing, so that a kernel and a user function of the
/// same name keep their own colours.
pub(crate) fn folded_name(frame: &ViewFrame) -> String {
    let mut name = frame.display().replace(';', ":").replace(['\n', '\r'], " ");
    if name.trim().is_empty() {
        name = "[unknown]".to_owned();
    }
    if frame.kind == ViewKind::Kernel {
        name.push_str("_[k]");
    }
    name
}

/// FNV-1a: a small stable hash, so shades do not change between runs or Rust versions.
fn hash(name: &str) -> u64 {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The colour of a frame of `kind` named `name`.
pub fn color_of(kind: ViewKind, name: &str) -> Color {
    let h = hash(name);
    // Two independent values in 0..=255 from the hash.
    let (v1, v2) = ((h >> 8) as u8, (h >> 24) as u8);
    let scale = |v: u8, span: u8| (u16::from(v) * u16::from(span) / 255) as u8;
    match kind {
        // Greens: from PYTHON towards a lighter, bluer green.
        ViewKind::Python => Color {
            r: PYTHON.r + scale(v1, 60),
            g: PYTHON.g + scale(v2, 40),
            b: PYTHON.b + scale(v1, 60),
        },
        // inferno's "hot" spectrum: red to yellow.
        ViewKind::Native => Color {
            r: NATIVE.r + scale(v2, 25),
            g: NATIVE.g + scale(v1, 150),
            b: NATIVE.b + scale(v2, 30),
        },
        // Blues.
        ViewKind::Kernel => Color {
            r: KERNEL.r + scale(v1, 50),
            g: KERNEL.g + scale(v2, 50),
            b: KERNEL.b + scale(v1, 20),
        },
        ViewKind::Marker => MARKER,
    }
}

/// The folded stacks of `view` with their samples, merged over labels, and the palette that
/// colours their frames.
pub(crate) fn folded(view: &ProfileView, palette: &mut PaletteMap) -> BTreeMap<String, u64> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &view.samples {
        let names: Vec<String> = sample
            .frames
            .iter()
            .map(|f| {
                let name = folded_name(f);
                if palette.get(&name).is_none() {
                    palette.insert(&name, color_of(f.kind, &name));
                }
                name
            })
            .collect();
        let weight = view.weight(sample);
        if names.is_empty() || weight == 0 {
            continue;
        }
        *stacks.entry(names.join(";")).or_insert(0) += weight;
    }
    stacks
}

/// Draws `view` as an SVG flame graph.
pub fn render(view: &ProfileView, options: &FlamegraphOptions) -> Result<Vec<u8>, FlamegraphError> {
    let mut palette = PaletteMap::default();
    let stacks = folded(view, &mut palette);
    if stacks.is_empty() {
        return Err(FlamegraphError::Empty);
    }
    let lines: Vec<String> = stacks.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut opt = options.inferno(LEGEND.to_owned(), view.weight_unit());
    opt.palette_map = Some(&mut palette);
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

/// `rgb(r,g,b)`, as inferno writes a frame's fill.
pub fn fill(color: Color) -> String {
    format!("rgb({},{},{})", color.r, color.g, color.b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::view::ViewSample;

    fn frame(kind: ViewKind, function: &str) -> ViewFrame {
        let file = if kind == ViewKind::Python { "app.py" } else { "" };
        ViewFrame { kind, function: function.into(), file: file.into(), line: 3, start_line: 1 }
    }

    fn view() -> ProfileView {
        let sample =
            |frames, count: u64| ViewSample { frames, count, value: count, labels: vec![] };
        ProfileView {
            samples: vec![
                sample(vec![frame(ViewKind::Native, "main"), frame(ViewKind::Python, "work")], 6),
                sample(vec![frame(ViewKind::Native, "main"), frame(ViewKind::Kernel, "main")], 2),
            ],
            period_ns: 1,
            ..ProfileView::default()
        }
    }

    #[test]
    fn each_kind_has_its_own_colour_family() {
        for name in ["a", "main", "work (app.py:3)", "some::very::long::symbol"] {
            let py = color_of(ViewKind::Python, name);
            let native = color_of(ViewKind::Native, name);
            let kernel = color_of(ViewKind::Kernel, name);
            assert!(py.g > py.r && py.g > py.b, "Python is green: {py:?}");
            assert!(native.r > native.b + 100 && native.r >= native.g, "native is hot: {native:?}");
            assert!(kernel.b > kernel.r && kernel.b > kernel.g, "kernel is blue: {kernel:?}");
        }
        assert_eq!(color_of(ViewKind::Marker, "[truncated]"), MARKER);
        assert_eq!(color_of(ViewKind::Native, "x"), color_of(ViewKind::Native, "x"));
    }

    #[test]
    fn kernel_frames_are_annotated_so_their_colour_is_their_own() {
        let mut palette = PaletteMap::default();
        let stacks = folded(&view(), &mut palette);
        let keys: Vec<_> = stacks.keys().map(String::as_str).collect();
        assert_eq!(keys, ["main;main_[k]", "main;work (app.py:3)"]);
        assert_eq!(palette.get("main_[k]"), Some(color_of(ViewKind::Kernel, "main_[k]")));
        assert_eq!(palette.get("main"), Some(color_of(ViewKind::Native, "main")));
    }

    #[test]
    fn the_svg_draws_names_in_their_colours_with_a_legend_and_search() {
        let svg =
            String::from_utf8(render(&view(), &FlamegraphOptions::default()).unwrap()).unwrap();
        assert!(svg.contains(">work (app.py:3) (6 samples, 75.00%)</title>"), "{svg}");
        // The kernel frame is drawn under its own name, without the annotation.
        assert!(svg.contains(">main (2 samples, 25.00%)</title>"), "{svg}");
        assert!(svg.contains(&fill(color_of(ViewKind::Python, "work (app.py:3)"))));
        assert!(svg.contains(&fill(color_of(ViewKind::Kernel, "main_[k]"))));
        assert!(svg.contains(LEGEND));
        assert!(svg.contains("function search("), "inferno's search script is embedded");
    }

    #[test]
    fn an_empty_profile_is_an_error() {
        let err = render(&ProfileView::default(), &FlamegraphOptions::default()).unwrap_err();
        assert!(matches!(err, FlamegraphError::Empty));
    }
}
