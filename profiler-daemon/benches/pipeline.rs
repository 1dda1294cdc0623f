//! Throughput of the daemon's CPU-bound pipeline stages, without BPF:
//!
//! - `aggregate`: [`WindowBuilder::add`] counting 10 000 samples into a fresh window (10
//!   processes, 500 distinct stacks of 20 to 30 Python and native frames, so 5 000 distinct
//!   (labels, stack) entries). `fits` has room for every entry; `overflow` holds only 1 000,
//!   so most new stacks take the stack-table-full path. Throughput: samples added.
//! - `linetable`: [`linetable::line_at`] on a ~200-line function, one benchmark per
//!   [`LineTableFormat`] (3.9 `co_lnotab`, 3.10 `co_linetable`, 3.11+ locations).
//!   Throughput: lookups.
//! - `formats`: rendering one merged profile of those samples (6 windows) as folded stacks,
//!   the top table, speedscope JSON, a flame graph SVG, and building plus gzip-encoding the
//!   pprof message from the [`MergedProfile`]. Throughput: elements are the profile's distinct
//!   (labels, stack) samples rendered per iteration (the same count for every format).
//!
//! Run with `cargo bench --bench pipeline` (add `-- aggregate`, `-- linetable` or
//! `-- formats` to run one group).

use std::{hint::black_box, sync::Arc};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use profiler_daemon::{
    aggregate::{
        Frame, FrameKind, Labels, MergedProfile, Mode, Module, SampleKind, Stack, StackSample,
        Window, WindowBuilder,
    },
    export::{
        ProfileView, flamegraph, folded, pprof, speedscope,
        top::{self, SortKey},
    },
    python::linetable::{self, LineTableFormat},
    selector::Selector,
    stats::{DropSnapshot, PipelineStats},
};

const PROCESSES: u32 = 10;
const STACKS: usize = 500;
const BATCH: usize = 10_000;
const MAX_STACKS: usize = 50_000;
const SMALL_MAX_STACKS: usize = 1_000;
const WINDOWS: usize = 6;
const WINDOW_NS: i64 = 10_000_000_000;
const START_NS: i64 = 1_750_000_000_000_000_000;
const PERIOD_NS: i64 = 10_101_010;

/// xorshift64*: deterministic input without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn module(path: &str) -> Arc<Module> {
    Arc::new(Module { path: path.into(), build_id: Some("4f1c0c8e2d6b9a7f30e1".into()) })
}

fn native(name: &str, module: &Arc<Module>, address: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Native,
        module: Some(module.clone()),
        address,
        ..Frame::marker(name)
    })
}

fn python(function: &str, file: &str, start_line: u32, line: u32) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Python,
        file: Some(file.into()),
        line,
        start_line,
        ..Frame::marker(function)
    })
}

/// 500 distinct stacks of 20 to 30 frames, leaf first: the interpreter's 6 native entry frames
/// at the root, 14 to 20 Python frames, and up to 4 native frames (an extension module or libc) at the leaf.
/// Each stack after the first shares a prefix with an earlier one, as real call trees do.
fn stacks() -> Vec<Stack> {
    let interpreter = module("/usr/bin/python3.12");
    let libc = module("/usr/lib/x86_64-linux-gnu/libc.so.6");
    let numpy = module(
        "/srv/venv/lib/python3.12/site-packages/numpy/core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so",
    );
    let root: Vec<Arc<Frame>> = [
        ("_start", 0x2_4a10),
        ("__libc_start_main", 0x2_9dc0),
        ("main", 0x2_4b30),
        ("Py_BytesMain", 0x14_1120),
        ("Py_RunMain", 0x14_0e40),
        ("_PyRun_SimpleFileObject", 0x13_8f60),
    ]
    .into_iter()
    .map(|(name, address)| native(name, &interpreter, address))
    .collect();
    let leaves: Vec<Arc<Frame>> = vec![
        native("PyArray_MatrixProduct2", &numpy, 0x9_3e20),
        native("DOUBLE_dot", &numpy, 0x1_c7a40),
        native("cblas_ddot", &numpy, 0x2_0e100),
        native("__memmove_avx_unaligned_erms", &libc, 0x18_8b40),
        native("_int_malloc", &libc, 0xa_2f30),
        native("PyObject_Malloc", &interpreter, 0x8_1d90),
        native("[unknown] 0x7f3a1c2e40 (libfoo.so+0x2e40)", &libc, 0x2e40),
    ];
    // 40 files of 8 functions, each function seen at 4 lines.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let functions: Vec<Vec<Arc<Frame>>> = (0..320u32)
        .map(|f| {
            let file = format!("/srv/app/pkg{}/module{}.py", f / 80, f / 8);
            let name = format!("function_{f}");
            let start = 10 + (f % 8) * 40;
            (0..4).map(|l| python(&name, &file, start, start + 1 + l * 7)).collect()
        })
        .collect();
    let python_frame = |rng: &mut Rng| {
        let f = &functions[rng.below(functions.len())];
        f[rng.below(f.len())].clone()
    };
    let mut root_first: Vec<Vec<Arc<Frame>>> = Vec::with_capacity(STACKS);
    while root_first.len() < STACKS {
        let depth = 14 + rng.below(7);
        let mut frames = root.clone();
        if let Some(parent) = root_first.get(rng.below(root_first.len().max(1))) {
            // The root and some of the parent's Python frames.
            let python = parent.iter().filter(|f| f.kind == FrameKind::Python).count();
            frames = parent[..root.len() + rng.below(python)].to_vec();
        }
        while frames.len() < root.len() + depth {
            frames.push(python_frame(&mut rng));
        }
        for _ in 0..rng.below(5) {
            frames.push(leaves[rng.below(leaves.len())].clone());
        }
        // A random walk can repeat a stack; keep them distinct.
        if !root_first.contains(&frames) {
            root_first.push(frames);
        }
    }
    root_first.into_iter().map(|frames| frames.into_iter().rev().collect()).collect()
}

/// `BATCH` samples, round-robin over the processes and the stacks: 5 000 distinct (labels,
/// stack) entries, each sampled twice.
fn samples() -> Vec<StackSample> {
    let labels: Vec<Arc<Labels>> = (0..PROCESSES)
        .map(|p| {
            Arc::new(Labels {
                pid: 4000 + p,
                comm: format!("gunicorn-{p}").into(),
                exe: "/usr/bin/python3.12".into(),
                cgroup: "/system.slice/app.service".into(),
                runtime: "CPython 3.12.1".into(),
                ..Labels::default()
            })
        })
        .collect();
    let stacks = stacks();
    (0..BATCH)
        .map(|i| StackSample {
            time_ns: 0,
            labels: labels[i % labels.len()].clone(),
            stack: stacks[(i / labels.len()) % stacks.len()].clone(),
            kind: SampleKind::Cpu,
            value: 10_101_010,
            tid: 0,
        })
        .collect()
}

fn aggregate(c: &mut Criterion) {
    let samples = samples();
    let stats = PipelineStats::default();
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(samples.len() as u64));
    for (name, max_stacks) in [("fits", MAX_STACKS), ("overflow", SMALL_MAX_STACKS)] {
        group.bench_function(BenchmarkId::new("add", name), |b| {
            b.iter_batched(
                || samples.clone(),
                |batch| {
                    let mut window =
                        WindowBuilder::new(START_NS, max_stacks, DropSnapshot::default());
                    for sample in batch {
                        window.add(sample, &stats);
                    }
                    // Returned so that freeing the window is not timed.
                    window
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// A function of about 200 lines as runs of instructions: (line, code units), in code order.
/// Lines mostly advance by one, sometimes skip blank lines, and loops jump back.
fn function_layout(first_line: u32) -> Vec<(u32, u64)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut layout = vec![(first_line, 1)]; // RESUME on the `def` line
    let mut line = first_line;
    while line < first_line + 200 {
        line = match rng.below(10) {
            0 => line - rng.below(6).min((line - first_line).saturating_sub(1) as usize) as u32,
            1 | 2 => line + 2 + rng.below(3) as u32,
            _ => line + 1,
        };
        layout.push((line, 1 + rng.below(12) as u64));
    }
    layout
}

fn line_delta(from: u32, to: u32) -> i64 {
    i64::from(to) - i64::from(from)
}

/// 3.9 `co_lnotab`: (byte offset increment, line increment) at each change of line.
fn lnotab(layout: &[(u32, u64)]) -> Vec<u8> {
    layout
        .windows(2)
        .flat_map(|pair| {
            let [(from, units), (to, _)] = [pair[0], pair[1]];
            [u8::try_from(units * 2).expect("small run"), line_delta(from, to) as i8 as u8]
        })
        .collect()
}

/// 3.10 `co_linetable`: (byte length, line delta) per run.
fn linetable310(layout: &[(u32, u64)], first_line: u32) -> Vec<u8> {
    let mut previous = first_line;
    let mut table = Vec::new();
    for &(line, units) in layout {
        table.push(u8::try_from(units * 2).expect("small run"));
        table.push(line_delta(previous, line) as i8 as u8);
        previous = line;
    }
    table
}

/// Appends a 6-bit-chunk varint (0x40 continues).
fn push_varint(table: &mut Vec<u8>, mut value: u64) {
    while value >= 0x40 {
        table.push(0x40 | (value & 0x3f) as u8);
        value >>= 6;
    }
    table.push(value as u8);
}

/// 3.11+ location table: entries of at most 8 code units. A run's first entry moves the line
/// (one-line form for deltas 0 to 2, no-column form otherwise); the rest use the short form.
fn locations311(layout: &[(u32, u64)], first_line: u32) -> Vec<u8> {
    let mut previous = first_line;
    let mut table = Vec::new();
    for &(line, units) in layout {
        let mut left = units;
        let mut first = true;
        while left > 0 {
            let length = left.min(8);
            let head = |code: u8| 0x80 | (code << 3) | (length - 1) as u8;
            let delta = line_delta(previous, line);
            match (first, delta) {
                (true, 0..=2) => {
                    table.push(head(10 + delta as u8));
                    table.extend([4, 20]); // start and end column
                }
                (true, _) => {
                    table.push(head(13));
                    let zigzag = (delta.unsigned_abs() << 1) | u64::from(delta < 0);
                    push_varint(&mut table, zigzag);
                }
                (false, _) => table.extend([head(1), 0x25]),
            }
            first = false;
            previous = line;
            left -= length;
        }
    }
    table
}

fn linetables(c: &mut Criterion) {
    const FIRST_LINE: u32 = 120;
    const LOOKUPS: u64 = 1_000;
    let layout = function_layout(FIRST_LINE);
    let units: u64 = layout.iter().map(|&(_, u)| u).sum();
    // Instruction starts spread over the whole function, in code units, with their lines.
    let queries: Vec<(u64, u32)> = (0..LOOKUPS)
        .map(|i| {
            let unit = i * 7919 % units;
            let mut end = 0;
            let line = layout
                .iter()
                .find(|&&(_, u)| {
                    end += u;
                    unit < end
                })
                .map_or(0, |&(line, _)| line);
            (unit, line)
        })
        .collect();
    let formats = [
        ("lnotab_3.9", LineTableFormat::Lnotab, lnotab(&layout), 2),
        ("linetable_3.10", LineTableFormat::Linetable310, linetable310(&layout, FIRST_LINE), 2),
        ("locations_3.11", LineTableFormat::Locations311, locations311(&layout, FIRST_LINE), 1),
    ];
    let mut group = c.benchmark_group("linetable");
    group.throughput(Throughput::Elements(LOOKUPS));
    for (name, format, table, unit_bytes) in formats {
        let offsets: Vec<u64> = queries.iter().map(|&(unit, _)| unit * unit_bytes).collect();
        for (&offset, &(_, line)) in offsets.iter().zip(&queries) {
            assert_eq!(
                linetable::line_at(format, &table, FIRST_LINE, offset),
                Some(line),
                "{name}: offset {offset}"
            );
        }
        group.bench_function(BenchmarkId::new("line_at", name), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &offset in &offsets {
                    let line = linetable::line_at(format, black_box(&table), FIRST_LINE, offset);
                    sum += u64::from(line.unwrap_or(0));
                }
                sum
            });
        });
    }
    group.finish();
}

/// The merged profile of `WINDOWS` windows of the aggregation samples.
fn merged(samples: &[StackSample]) -> MergedProfile {
    let stats = PipelineStats::default();
    let windows: Vec<Window> = (0..WINDOWS)
        .map(|w| {
            let start = START_NS + w as i64 * WINDOW_NS;
            let mut builder = WindowBuilder::new(start, MAX_STACKS, DropSnapshot::default());
            for sample in samples.iter().cycle().skip(w * 997).take(samples.len()) {
                builder.add(sample.clone(), &stats);
            }
            builder.close(start + WINDOW_NS, &stats.drops())
        })
        .collect();
    MergedProfile::merge(&windows, &Selector::default(), Mode::Cpu, false)
}

fn formats(c: &mut Criterion) {
    let merged = merged(&samples());
    let profile = pprof::build(&merged, PERIOD_NS);
    let view = ProfileView::new(&profile).expect("pprof::build makes a valid profile");
    let options = flamegraph::FlamegraphOptions::default();
    let mut group = c.benchmark_group("formats");
    group.sample_size(10);
    group.throughput(Throughput::Elements(view.samples.len() as u64));
    group.bench_function("folded", |b| b.iter(|| folded::render(black_box(&view))));
    group.bench_function("top", |b| {
        b.iter(|| top::render(black_box(&view), SortKey::SelfSamples, 50));
    });
    group.bench_function("speedscope", |b| {
        b.iter(|| speedscope::render(black_box(&view), "bench"));
    });
    group.bench_function("flamegraph", |b| {
        b.iter(|| flamegraph::render(black_box(&view), &options));
    });
    group.bench_function("pprof_build_gzip", |b| {
        b.iter(|| pprof::encode_gzip(&pprof::build(black_box(&merged), PERIOD_NS)));
    });
    group.finish();
}

criterion_group!(benches, aggregate, linetables, formats);
criterion_main!(benches);
