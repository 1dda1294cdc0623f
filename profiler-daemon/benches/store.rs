//! Query latency of the on-disk store: 1 hour and 24 hours out of a store that holds a day of
//! 10 busy processes (10 s windows, 200 distinct stacks of 20 frames per process and window).
//!
//! `cargo bench --bench store` prints the latencies, the store's bytes per hour and the time of
//! a dictionary sweep over the whole day.

#[path = "common/day.rs"]
mod day;

use std::{hint::black_box, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use day::{S, WINDOWS_PER_DAY};
use profiler_daemon::selector::Selector;

fn queries(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("profiler-bench-store");
    // An unaligned day, as a real one is.
    let start = 1_750_000_000 * S + 1234 * S;
    let filled = Instant::now();
    let store = day::build(&dir, start, WINDOWS_PER_DAY);
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
    use profiler_daemon::aggregate::Mode;
    let all = Selector::default();
    let mut group = c.benchmark_group("store_query");
    group.sample_size(10);
    group.bench_function("last_1h_of_24h", |b| {
        b.iter(|| black_box(store.merge(end - 3600 * S, end, &all, Mode::Cpu).unwrap()));
    });
    group.bench_function("all_24h", |b| {
        b.iter(|| black_box(store.merge(start, end, &all, Mode::Cpu).unwrap()));
    });
    let one: Selector = "pid=1003".parse().unwrap();
    group.bench_function("last_1h_of_24h_one_process", |b| {
        b.iter(|| black_box(store.merge(end - 3600 * S, end, &one, Mode::Cpu).unwrap()));
    });
    group.finish();
    // The worst case of a dictionary sweep: every record is read, and nothing is forgotten.
    let swept = Instant::now();
    store.sweep_now().unwrap();
    println!(
        "store: a dictionary sweep of the day ({} entries) took {} ms",
        store.status().dictionary,
        swept.elapsed().as_millis()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, queries);
criterion_main!(benches);
