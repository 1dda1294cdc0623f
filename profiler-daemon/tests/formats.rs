//! The client-side formats end to end, without BPF: a profile with known Python, native and
//! kernel frames goes through pprof (as the daemon answers a query) into speedscope, flame
//! graphs and diffs. One test opens the speedscope file in the real speedscope web app under
//! headless Chromium; `.ci/setup-browser` installs both.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser as _;
use profiler_daemon::{
    aggregate::{Frame, FrameKind, Labels, MergedProfile, Module, Tally},
    ctl::{self, Cli, TimePoint},
    export::{
        self, ProfileView,
        diff::DiffSort,
        flamegraph::{self as fg, FlamegraphOptions},
        view::ViewKind,
    },
};
use profiler_proto::v1;

/// The speedscope release the browser test runs; `.ci/setup-browser` installs the same one.
const SPEEDSCOPE_VERSION: &str = "1.25.0";

/// speedscope's file format schema, copied unchanged from the npm package speedscope@1.25.0
/// (`dist/release/file-format-schema.json`, sha256 03d09892…c911), the file that
/// <https://www.speedscope.app/file-format-schema.json> serves.
const SCHEMA: &str = include_str!("data/speedscope-schema.json");

const PERIOD_NS: i64 = 10_000_000;
const APP_PY: &str = "/srv/app.py";

fn py(name: &str, line: u32, start_line: u32) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Python,
        file: Some(APP_PY.into()),
        line,
        start_line,
        ..Frame::marker(name)
    })
}

fn native(name: &str, path: &str, offset: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Native,
        module: Some(Arc::new(Module { path: path.into(), build_id: None })),
        address: offset,
        ..Frame::marker(name)
    })
}

fn kernel(name: &str) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Kernel,
        module: Some(Arc::new(Module { path: Module::KERNEL_PATH.into(), build_id: None })),
        address: 0xffff_ffff_8100_0040,
        ..Frame::marker(name)
    })
}

fn labels(pid: u32, comm: &str) -> Arc<Labels> {
    Arc::new(Labels {
        pid,
        comm: comm.into(),
        exe: format!("/usr/bin/{comm}").into(),
        ..Labels::default()
    })
}

/// Stacks of the Python process (pid 4242), root first, with their counts. The same frames
/// with other counts make the head of the diff tests.
struct PythonCounts {
    hot_inner: u64,
    deflate: u64,
    cold: u64,
    ksys_write: u64,
}

const BASE: PythonCounts = PythonCounts { hot_inner: 60, deflate: 20, cold: 10, ksys_write: 10 };

/// A pprof-layout profile as the daemon builds it: the Python process with `counts`, and, with
/// `with_native`, a native process `app` (pid 100) with 30 samples in fn_a and 5 in the kernel
/// under it.
fn profile(counts: &PythonCounts, with_native: bool) -> v1::Profile {
    let module = py("<module>", 96, 1);
    let main = py("main", 73, 70);
    let hot_outer = py("hot_outer", 28, 26);
    let hot_inner = py("hot_inner", 23, 21);
    let cold = py("cold", 40, 38);
    let zlib =
        native("zlib_compress", "/usr/lib/python3.11/lib-dynload/zlib.cpython-311.so", 0x2000);
    let deflate = native("deflate", "/usr/lib/x86_64-linux-gnu/libz.so.1", 0x3000);
    let write = native("write", "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x4000);
    let hot = vec![module.clone(), main.clone(), hot_outer, hot_inner];
    let with = |extra: &[&Arc<Frame>]| {
        let mut stack = hot.clone();
        stack.extend(extra.iter().map(|f| Arc::clone(f)));
        stack
    };
    let python = labels(4242, "python3");
    let mut stacks: Vec<(Arc<Labels>, Vec<Arc<Frame>>, u64)> = vec![
        (python.clone(), hot.clone(), counts.hot_inner),
        (python.clone(), with(&[&zlib, &deflate]), counts.deflate),
        (python.clone(), vec![module, main, cold], counts.cold),
        (python, with(&[&write, &kernel("ksys_write")]), counts.ksys_write),
    ];
    if with_native {
        let app = labels(100, "app");
        let path = "/opt/app/bin/app";
        let base = vec![
            native("main", path, 0x1100),
            native("run", path, 0x1200),
            native("fn_a", path, 0x1300),
        ];
        let mut in_kernel = base.clone();
        in_kernel.push(kernel("ksys_write"));
        stacks.push((app.clone(), base, 30));
        stacks.push((app, in_kernel, 5));
    }
    let mut merged = MergedProfile::default();
    merged.start_ns = 1_700_000_000_000_000_000;
    merged.end_ns = 1_700_000_060_000_000_000;
    merged.windows = 6;
    for (labels, mut stack, count) in stacks {
        if count == 0 {
            continue;
        }
        // The aggregator's stacks are leaf first.
        stack.reverse();
        merged.samples += count;
        let value = count * PERIOD_NS as u64;
        merged.entries.entry((labels, stack.into())).or_default().add(Tally { count, value });
    }
    export::pprof::build(&merged, PERIOD_NS)
}

fn view(counts: &PythonCounts, with_native: bool) -> ProfileView {
    ProfileView::new(&profile(counts, with_native)).unwrap()
}

fn speedscope_json() -> serde_json::Value {
    serde_json::from_str(&export::speedscope::render(&view(&BASE, true), "formats test")).unwrap()
}

fn schema_errors(instance: &serde_json::Value) -> Vec<String> {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the vendored schema compiles");
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn speedscope_file_validates_against_the_published_schema() {
    let json = speedscope_json();
    assert_eq!(schema_errors(&json), Vec::<String>::new(), "{json:#}");
    assert_eq!(json["$schema"], "https://www.speedscope.app/file-format-schema.json");

    // The validator really checks: files that break the schema are caught.
    let mut no_weights = json.clone();
    no_weights["profiles"][0].as_object_mut().unwrap().remove("weights");
    assert!(!schema_errors(&no_weights).is_empty());
    let mut bad_unit = json.clone();
    bad_unit["profiles"][0]["unit"] = "samples".into();
    assert!(!schema_errors(&bad_unit).is_empty());
    let mut bad_frame = json.clone();
    bad_frame["shared"]["frames"][0]["line"] = "23".into();
    assert!(!schema_errors(&bad_frame).is_empty());
}

#[test]
fn speedscope_has_a_profile_per_process_weighted_in_cpu_nanoseconds() {
    let json = speedscope_json();
    let profiles = json["profiles"].as_array().unwrap();
    let names: Vec<&str> = profiles.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["python3 (pid 4242)", "app (pid 100)"]);
    let python = &profiles[0];
    assert_eq!(python["type"], "sampled");
    assert_eq!(python["unit"], "nanoseconds");
    assert_eq!(python["startValue"], 0);
    assert_eq!(python["endValue"], 100 * PERIOD_NS);
    let weights: Vec<i64> =
        python["weights"].as_array().unwrap().iter().map(|w| w.as_i64().unwrap()).collect();
    assert_eq!(weights.iter().sum::<i64>(), 100 * PERIOD_NS);
    assert_eq!(weights.len(), python["samples"].as_array().unwrap().len());

    // Stacks are root first and name shared frames.
    let frames = json["shared"]["frames"].as_array().unwrap();
    let stack_names: Vec<Vec<&str>> = python["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|i| frames[i.as_u64().unwrap() as usize]["name"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert!(
        stack_names.contains(&vec![
            "<module>",
            "main",
            "hot_outer",
            "hot_inner",
            "zlib_compress",
            "deflate"
        ]),
        "{stack_names:?}"
    );
    let deflate_at = stack_names.iter().position(|s| s.last() == Some(&"deflate")).unwrap();
    assert_eq!(weights[deflate_at], 20 * PERIOD_NS);

    // Python frames have their file and line, native ones their binary, kernel ones the kernel.
    let frame = |name: &str, file: &str| {
        frames
            .iter()
            .find(|f| f["name"] == name && f["file"] == file)
            .unwrap_or_else(|| panic!("no frame {name} in {file}: {frames:?}"))
    };
    assert_eq!(frame("hot_inner", APP_PY)["line"], 23);
    assert!(frame("deflate", "libz.so.1").get("line").is_none());
    assert!(frame("ksys_write", "[kernel.kallsyms]").get("line").is_none());
    // The kernel frame is shared by both processes; the two `main`s stay apart.
    assert_eq!(frames.iter().filter(|f| f["name"] == "ksys_write").count(), 1);
    assert_eq!(frames.iter().filter(|f| f["name"] == "main").count(), 2);
}

/// One drawn frame of an inferno SVG.
#[derive(Debug)]
struct Drawn {
    /// The `<title>`: name, samples and share.
    title: String,
    /// Its row's `y`.
    y: u32,
    fill: String,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let at = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("no {name} in {tag}"))
        + name.len()
        + 3;
    &tag[at..at + tag[at..].find('"').unwrap()]
}

fn drawn(svg: &str) -> Vec<Drawn> {
    svg.split("<g><title>")
        .skip(1)
        .map(|g| {
            let (title, rest) = g.split_once("</title>").unwrap();
            let rect = &rest[..rest.find("/>").unwrap()];
            Drawn {
                title: unescape(title),
                y: attr(rect, "y").parse().unwrap(),
                fill: attr(rect, "fill").to_owned(),
            }
        })
        .collect()
}

/// The first frame drawn for `name` (its title is `NAME (N samples, …)`).
fn find<'a>(frames: &'a [Drawn], name: &str) -> &'a Drawn {
    frames
        .iter()
        .find(|d| {
            d.title
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(" ("))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("no frame {name} in {frames:#?}"))
}

fn rgb(fill: &str) -> (u8, u8, u8) {
    let v: Vec<u8> = fill
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

fn svg(view: &ProfileView, options: &FlamegraphOptions) -> String {
    String::from_utf8(fg::render(view, options).unwrap()).unwrap()
}

#[test]
fn flamegraph_draws_every_frame_with_python_coloured_apart() {
    let svg = svg(&view(&BASE, true), &FlamegraphOptions::default());
    let frames = drawn(&svg);
    let python = [
        "<module> (/srv/app.py:96)",
        "main (/srv/app.py:73)",
        "hot_outer (/srv/app.py:28)",
        "hot_inner (/srv/app.py:23)",
        "cold (/srv/app.py:40)",
    ];
    for name in python {
        let d = find(&frames, name);
        let (r, g, b) = rgb(&d.fill);
        assert!(g > r && g > b, "Python frame {name} is green: {d:?}");
        assert_eq!(d.fill, fg::fill(fg::color_of(ViewKind::Python, name)));
    }
    for name in ["zlib_compress", "deflate", "write", "run", "fn_a"] {
        let d = find(&frames, name);
        let (r, _, b) = rgb(&d.fill);
        assert!(r > 200 && b < 100, "native frame {name} is red to yellow: {d:?}");
    }
    let k = frames.iter().filter(|d| d.title.starts_with("ksys_write (")).collect::<Vec<_>>();
    assert_eq!(k.len(), 2, "one kernel frame per process stack");
    for d in k {
        let (r, g, b) = rgb(&d.fill);
        assert!(b > r && b > g, "kernel frame is blue: {d:?}");
        assert_eq!(d.fill, fg::fill(fg::color_of(ViewKind::Kernel, "ksys_write_[k]")));
    }
    assert!(find(&frames, "hot_inner (/srv/app.py:23)").title.ends_with("(90 samples, 66.67%)"));
    assert!(svg.contains(fg::LEGEND), "the subtitle explains the colours");
    assert!(svg.contains("function search("), "inferno's search script is embedded");
}

#[test]
fn icicle_and_reverse_change_the_drawing() {
    let view = view(&BASE, true);
    let plain = drawn(&svg(&view, &FlamegraphOptions::default()));
    let icicle =
        drawn(&svg(&view, &FlamegraphOptions { icicle: true, ..FlamegraphOptions::default() }));
    let reverse =
        drawn(&svg(&view, &FlamegraphOptions { reverse: true, ..FlamegraphOptions::default() }));
    let y = |frames: &[Drawn], name: &str| find(frames, name).y;

    // A flame graph grows up from its root row; an icicle graph hangs down from it.
    let (module, hot_inner) = ("<module> (/srv/app.py:96)", "hot_inner (/srv/app.py:23)");
    assert!(y(&plain, "all") > y(&plain, module) && y(&plain, module) > y(&plain, hot_inner));
    assert!(y(&icicle, "all") < y(&icicle, module) && y(&icicle, module) < y(&icicle, hot_inner));
    assert_eq!(plain.len(), icicle.len());

    // Reversed, the row above the root holds the leaves: where samples were taken.
    let first_row = y(&reverse, "all") - 16;
    let leaves: Vec<&str> = reverse
        .iter()
        .filter(|d| d.y == first_row)
        .map(|d| d.title.split(" (").next().unwrap())
        .collect();
    assert_eq!(leaves.len(), 5, "{leaves:?}");
    for leaf in ["hot_inner", "deflate", "cold", "ksys_write", "fn_a"] {
        assert!(leaves.contains(&leaf), "{leaf} in {leaves:?}");
    }
    assert_eq!(y(&plain, "all") - 16, y(&plain, module));
    assert!(
        find(&reverse, "ksys_write").title.contains("(15 samples,"),
        "both processes' kernel samples merge"
    );
}

/// The head of the diff tests: hot_inner's self share falls from 60% to 20%, deflate's rises
/// from 20% to 60%, with twice the samples in all.
const HEAD: PythonCounts = PythonCounts { hot_inner: 40, deflate: 120, cold: 20, ksys_write: 20 };

#[test]
fn diff_rows_show_known_changes_normalised_by_sample_counts() {
    let (base, head) = (view(&BASE, false), view(&HEAD, false));
    assert_eq!((base.total(), head.total()), (100, 200));
    let rows = export::diff::rows(&base, &head, DiffSort::SelfShare);
    let got: Vec<(&str, f64, f64, f64, f64)> = rows
        .iter()
        .map(|r| (r.function.as_str(), r.base_self, r.head_self, r.base_total, r.head_total))
        .collect();
    assert_eq!(
        got,
        [
            // Equal self changes: the larger total change first.
            ("deflate", 20.0, 60.0, 20.0, 60.0),
            ("hot_inner", 60.0, 20.0, 90.0, 90.0),
            ("zlib_compress", 0.0, 0.0, 20.0, 60.0),
        ]
    );
    let by_total: Vec<String> =
        export::diff::rows(&base, &head, DiffSort::Total).into_iter().map(|r| r.function).collect();
    assert_eq!(by_total[..2], ["deflate", "zlib_compress"]);
}

fn diff_args(extra: &[&str]) -> ctl::DiffArgs {
    let mut argv = vec!["profctl", "diff", "--base", "2h..1h", "--head", "1h.."];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        ctl::Command::Diff(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn profctl_diff_prints_the_table_and_draws_red_growth_and_blue_shrinkage() {
    let (base, head) = (profile(&BASE, false), profile(&HEAD, false));
    let stats = |samples| v1::QueryStats {
        samples,
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_060_000_000_000,
        ..v1::QueryStats::default()
    };
    let args = diff_args(&["--flamegraph", "-o", "diff.svg", "--limit", "2"]);
    let (table, svg) = ctl::render_diff(&args, (&base, &stats(100)), (&head, &stats(200))).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "base (2h..1h): 100 samples from 2023-11-14T22:13:20Z to 2023-11-14T22:14:20Z"
    );
    assert!(lines[1].starts_with("head (1h..): 200 samples"), "{table}");
    assert_eq!(
        lines.len(),
        6,
        "two header lines, the legend, the column names and --limit 2 rows:\n{table}"
    );
    assert_eq!(
        lines[4],
        "   20.00%    60.00%   +40.00    20.00%    60.00%   +40.00  deflate (libz.so.1)"
    );
    assert_eq!(
        lines[5],
        "   60.00%    20.00%   -40.00    90.00%    90.00%    +0.00  hot_inner (/srv/app.py)"
    );

    let frames = drawn(&String::from_utf8(svg.expect("--flamegraph draws")).unwrap());
    // Base scaled to head's 200 samples: deflate 40 -> 120, hot_inner's own 120 -> 40.
    let deflate = find(&frames, "deflate");
    assert!(deflate.title.ends_with("(120 samples, 60.00%; +40.00%)"), "{deflate:?}");
    let (r, g, b) = rgb(&deflate.fill);
    assert!(r == 255 && g < 255 && g == b, "growth is red: {deflate:?}");
    let hot_inner = find(&frames, "hot_inner (/srv/app.py:23)");
    let (r, g, b) = rgb(&hot_inner.fill);
    assert!(b == 255 && r < 255 && r == g, "shrinkage is blue: {hot_inner:?}");
    let cold = find(&frames, "cold (/srv/app.py:40)");
    assert_eq!(cold.fill, "rgb(250,250,250)", "no change is white");

    // Without samples in a range, the error names its flag.
    let empty = v1::Profile::default();
    let err = ctl::render_diff(&args, (&empty, &stats(0)), (&head, &stats(200))).unwrap_err();
    assert!(err.to_string().starts_with("--base 2h..1h: no samples"), "{err}");
}

#[test]
fn diff_ranges_parse_and_bad_ones_name_their_flag() {
    let args = diff_args(&[]);
    let hour = Duration::from_secs(3600);
    assert_eq!((args.base.from, args.base.to), (TimePoint::Ago(2 * hour), TimePoint::Ago(hour)));
    assert_eq!((args.head.from, args.head.to), (TimePoint::Ago(hour), TimePoint::Now));
    let now = 1_800_000_000_000_000_000;
    let hour_ns = 3_600_000_000_000;
    let base = args.base.resolve(now).unwrap();
    assert_eq!((base.start_unix_nanos, base.end_unix_nanos), (now - 2 * hour_ns, now - hour_ns));
    // An end at now stays open, so the daemon's newest samples count.
    assert_eq!(args.head.resolve(now).unwrap().end_unix_nanos, 0);

    let span = |s: &str| s.parse::<ctl::TimeSpan>();
    assert_eq!(span("30m").unwrap().to, TimePoint::Now);
    assert_eq!(span("..1h").unwrap().from, TimePoint::Oldest);
    let absolute = span("2026-01-02T10:00:00Z..2026-01-02T11:00:00Z").unwrap();
    let range = absolute.resolve(now).unwrap();
    assert_eq!(range.end_unix_nanos - range.start_unix_nanos, hour_ns);
    // A mixed range is checked against the clock: 10:00 to an hour before 10:30 is empty.
    let mixed = span("2026-01-02T10:00:00Z..1h").unwrap();
    let at_1030 = absolute.resolve(now).unwrap().start_unix_nanos + hour_ns / 2;
    assert!(mixed.resolve(at_1030).unwrap_err().contains("the range is empty"));

    for (flag, bad, why) in [
        ("--base", "1h..2h", "starts after it ends"),
        ("--base", "yesterday", "neither a duration ago"),
        ("--base", "now..", "FROM must be before TO"),
        ("--head", "2026-01-02T11:00:00Z..2026-01-02T10:00:00Z", "starts after it ends"),
        ("--head", "1h..2x", "\"2x\" is neither"),
        ("--head", "", "expected FROM..TO"),
    ] {
        let mut argv = vec!["profctl", "diff", "--base", "2h..1h", "--head", "1h.."];
        let at = argv.iter().position(|a| *a == flag).unwrap() + 1;
        argv[at] = bad;
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains(&format!("for '{flag} <RANGE>'")), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
    }
    // --flamegraph and -o go together.
    assert!(
        Cli::try_parse_from(["profctl", "diff", "--base", "1h", "--head", "5m", "--flamegraph"])
            .is_err()
    );
    assert!(
        Cli::try_parse_from(["profctl", "diff", "--base", "1h", "--head", "5m", "-o", "x.svg"])
            .is_err()
    );
}

#[test]
fn profctl_accepts_the_new_formats_and_the_flamegraph_command() {
    for format in ["speedscope", "flamegraph"] {
        let cli =
            Cli::try_parse_from(["profctl", "query", "--format", format, "-o", "out"]).unwrap();
        assert!(matches!(cli.command, ctl::Command::Query(_)), "{format}");
    }
    let cli = Cli::try_parse_from([
        "profctl",
        "flamegraph",
        "--since",
        "5m",
        "--pid",
        "42",
        "--icicle",
        "--reverse",
        "-o",
        "out.svg",
    ])
    .unwrap();
    let ctl::Command::Flamegraph(args) = cli.command else { panic!("not flamegraph") };
    assert!(args.icicle && args.reverse);
    assert_eq!(args.output.as_deref(), Some(Path::new("out.svg")));
    assert_eq!(args.select.selector().unwrap().to_proto().matchers.len(), 1);
    let range = args.range.range(1_000_000_000_000);
    assert_eq!((range.start_unix_nanos, range.end_unix_nanos), (700_000_000_000, 0));
}

// The real speedscope app in headless Chromium.

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Chromium and speedscope's `index.html`, when both are installed. Under `CI=true` a missing
/// one is a failure, because CI runs `.ci/setup-browser` and a skip would hide a broken setup.
fn require_browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = find_in_path(&["chromium", "chromium-browser", "google-chrome"]);
    let package = repo().join(".cache/node/node_modules/speedscope");
    let version = std::fs::read_to_string(package.join("package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json["version"].as_str().map(str::to_owned));
    let index = package.join("dist/release/index.html");
    let missing = match (&chromium, version.as_deref()) {
        (None, _) => "chromium is not installed".to_owned(),
        (_, Some(SPEEDSCOPE_VERSION)) if index.is_file() => return Some((chromium?, index)),
        (_, Some(v)) => {
            format!("{} holds speedscope {v}, not {SPEEDSCOPE_VERSION}", package.display())
        }
        (_, None) => format!("speedscope is not installed in {}", package.display()),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: CI=true but {missing}; .ci/setup-browser installs it");
    }
    eprintln!("skipped {test}: {missing} (run .ci/setup-browser)");
    None
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs Chromium on `url` and returns the page's DOM once it settled, or "" when Chromium did
/// not finish within a minute.
fn dump_dom(chromium: &Path, url: &str, dir: &Path, budget_ms: u32) -> String {
    let out_path = dir.join(format!("dom-{budget_ms}.html"));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            // The sandbox needs user namespaces, which root and containers often lack; the
            // page is our own file.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", dir.join("chromium-profile").display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(out_path).unwrap_or_default()
}

#[test]
fn speedscope_app_opens_the_file_and_lists_its_frames() {
    let test = "speedscope_app_opens_the_file_and_lists_its_frames";
    let Some((chromium, index)) = require_browser(test) else { return };
    // The vendored schema is the one of the release the browser runs.
    let shipped = std::fs::read_to_string(index.with_file_name("file-format-schema.json")).unwrap();
    assert_eq!(
        shipped, SCHEMA,
        "tests/data/speedscope-schema.json differs from speedscope {SPEEDSCOPE_VERSION}'s"
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json = export::speedscope::render(&view(&BASE, true), "formats test profile");
    // speedscope's own command line opens a file this way: index.html#localProfilePath=FILE,
    // where FILE is a script that hands the file to the app, base64-encoded. It works from
    // file:// URLs, so no web server is needed.
    let script = dir.join("profile.js");
    std::fs::write(
        &script,
        format!(
            "speedscope.loadFileFromBase64(\"profile.speedscope.json\", \"{}\")",
            base64(json.as_bytes())
        ),
    )
    .unwrap();
    // The sandwich view lists every function of the first (busiest) profile in an HTML table.
    let url =
        format!("file://{}#localProfilePath={}&view=sandwich", index.display(), script.display());
    let expected = [
        "hot_inner",
        "hot_outer",
        "&lt;module&gt;",
        "zlib_compress",
        "deflate",
        "ksys_write",
        "write",
        "cold",
    ];
    let mut dom = String::new();
    for budget_ms in [10_000, 30_000] {
        dom = dump_dom(&chromium, &url, &dir, budget_ms);
        if expected.iter().all(|name| dom.contains(&format!(">{name}</td>"))) {
            break;
        }
    }
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    assert!(
        dom.contains("<title>formats test profile - speedscope</title>"),
        "the file did not load; DOM in {}; chromium log:\n{log}",
        dir.display()
    );
    assert!(dom.contains("python3 (pid 4242)"), "the busiest process is shown first");
    for name in expected {
        assert!(
            dom.contains(&format!(">{name}</td>")),
            "{name} is not listed; DOM in {}",
            dir.display()
        );
    }
    // Weights are read as nanoseconds: 100 samples of 10 ms are one second at the root.
    assert!(dom.contains("1.00s (100%)"), "total time of <module>; DOM in {}", dir.display());
}

/// The Python interpreter with `protobuf` and `grpcio-tools` that `.ci/setup` installs.
fn protobuf_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/pyproto-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing (.ci/setup installs it)",
        python.display()
    );
    eprintln!("skipped: no {} (run .ci/setup)", python.display());
    None
}

#[test]
fn pprof_decodes_with_an_independent_protobuf_implementation() {
    let Some(python) = protobuf_python() else { return };
    let mut merged = MergedProfile::default();
    (merged.start_ns, merged.end_ns, merged.windows) = (1, 2, 1);
    let app = labels(4242, "python3");
    let build_id =
        Arc::new(Module { path: "/usr/lib/libz.so.1".into(), build_id: Some("0badc0de".into()) });
    let deflate =
        Arc::new(Frame { module: Some(build_id), ..(*native("deflate", "", 0x30)).clone() });
    // Leaf first, as the aggregator keeps stacks.
    let stack: Vec<Arc<Frame>> = vec![deflate, py("compress", 12, 10), py("<module>", 3, 1)];
    merged
        .entries
        .insert((app.clone(), stack.into()), Tally { count: 7, value: 7 * PERIOD_NS as u64 });
    merged.calls.insert((app, py("compress", 10, 10)), 1234);
    merged.samples = 7;
    let profile = export::pprof::build(&merged, PERIOD_NS);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof_python");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cpu.pb.gz");
    std::fs::write(&file, export::pprof::encode_gzip(&profile)).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let out = Command::new(python)
        .arg(data.join("check_pprof.py"))
        .arg(&file)
        .arg(&data)
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["sample_types"],
        serde_json::json!([["cpu-samples", "count"], ["cpu", "nanoseconds"], ["calls", "count"]])
    );
    assert_eq!(json["period"], PERIOD_NS);
    assert_eq!(json["totals"], serde_json::json!([7, 7 * PERIOD_NS, 1234]));
    let stack = json["samples"].as_array().unwrap().iter().find(|s| s["values"][0] == 7).unwrap();
    let frames = stack["frames"].as_array().unwrap();
    assert_eq!(frames[0]["function"], "deflate");
    assert_eq!(frames[0]["build_id"], "0badc0de", "mappings carry build-ids");
    assert_eq!((&frames[1]["function"], &frames[1]["file"]), (&"compress".into(), &APP_PY.into()));
    assert_eq!(
        (&frames[1]["line"], &frames[1]["start_line"]),
        (&12.into(), &10.into()),
        "Python lines"
    );
    assert_eq!(stack["labels"]["pid"], 4242);
    assert_eq!(stack["labels"]["comm"], "python3");
}
