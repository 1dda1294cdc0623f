//! Query latency of the on-disk store: 1 hour and 24 hours out of a store that holds a day of
//! 10 busy processes (10 s windows, 200 distinct stacks of 20 frames per process and window).
//!
//! `cargo bench --bench store` prints the latencies and the store's bytes per hour.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use profiler_daemon::{
    aggregate::{Frame, FrameKind, Labels, Stack, Window, window::WindowEntry},
    selector::Selector,
    stats::DropSnapshot,
    store::{DiskRetention, Store},
};

const S: i64 = 1_000_000_000;
const PROCESSES: u32 = 10;
const STACKS: usize = 200;
const DEPTH: usize = 20;
const WINDOWS_PER_DAY: i64 = 24 * 360;

fn stacks(pid: u32) -> Vec<Stack> {
    let frame = |i: usize| {
        Arc::new(Frame {
            kind: FrameKind::Python,
            file: Some(format!("/srv/app{pid}/module{}.py", i % 7).into()),
            line: 10 + i as u32,
            start_line: 5 + i as u32,
            ..Frame::marker(&format!("function_{pid}_{i}"))
        })
    };
    (0..STACKS)
        .map(|s| (0..DEPTH).map(|d| frame(if d < DEPTH - 3 { d } else { d + s * 3 })).collect())
        .collect()
}

fn build(dir: &std::path::Path, start: i64) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    let store = Store::open(
        dir,
        DiskRetention { max_age: Duration::from_secs(48 * 3600), max_bytes: 8 << 30 },
        false,
    )
    .unwrap();
    store.set_durable(false);
    let processes: Vec<(Arc<Labels>, Vec<Stack>)> = (0..PROCESSES)
        .map(|pid| {
            let labels = Arc::new(Labels {
                pid: 1000 + pid,
                comm: format!("worker{pid}").into(),
                runtime: "CPython 3.12.1".into(),
                ..Labels::default()
            });
            (labels, stacks(pid))
        })
        .collect();
    for w in 0..WINDOWS_PER_DAY {
        let entries: Vec<WindowEntry> = processes
            .iter()
            .flat_map(|(labels, stacks)| {
                stacks.iter().enumerate().map(|(i, s)| WindowEntry {
                    labels: labels.clone(),
                    stack: s.clone(),
                    count: 1 + (i as u64 + w as u64) % 5,
                })
            })
            .collect();
        let window = Window {
            start_ns: start + w * 10 * S,
            end_ns: start + (w + 1) * 10 * S,
            samples: entries.iter().map(|e| e.count).sum(),
            drops: DropSnapshot::default(),
            entries,
            calls: Vec::new(),
        };
        store.append(&window, window.end_ns).unwrap();
    }
    store.set_durable(true);
    store
}

fn queries(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("profiler-bench-store");
    // An unaligned day, as a real one is.
    let start = 1_750_000_000 * S + 1234 * S;
    let filled = Instant::now();
    let store = build(&dir, start);
    let status = store.status();
    println!(
        "store: {} windows in {:.1}s, {} MiB of records, {} MiB file, {:.2} MiB per hour",
        status.windows,
        filled.elapsed().as_secs_f64(),
        status.bytes >> 20,
        status.file_bytes >> 20,
        status.file_bytes as f64 / 24.0 / f64::from(1 << 20)
    );
    let end = start + WINDOWS_PER_DAY * 10 * S;
    let all = Selector::default();
    let mut group = c.benchmark_group("store_query");
    group.sample_size(10);
    group.bench_function("last_1h_of_24h", |b| {
        b.iter(|| black_box(store.merge(end - 3600 * S, end, &all).unwrap()));
    });
    group.bench_function("all_24h", |b| {
        b.iter(|| black_box(store.merge(start, end, &all).unwrap()));
    });
    let one: Selector = "pid=1003".parse().unwrap();
    group.bench_function("last_1h_of_24h_one_process", |b| {
        b.iter(|| black_box(store.merge(end - 3600 * S, end, &one).unwrap()));
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, queries);
criterion_main!(benches);
