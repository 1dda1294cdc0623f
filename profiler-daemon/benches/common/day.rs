//! A synthetic day of profiles in the on-disk store, shared by the store benchmark and the
//! peers harness: 10 busy processes, 10 s windows, 200 distinct stacks of 20 frames per process
//! and window.

use std::{sync::Arc, time::Duration};

use profiler_daemon::{
    aggregate::{Frame, FrameKind, Labels, SampleKind, Stack, Window, window::WindowEntry},
    stats::DropSnapshot,
    store::{DiskRetention, Store},
};

/// A second, in nanoseconds.
pub const S: i64 = 1_000_000_000;
const PROCESSES: u32 = 10;
const STACKS: usize = 200;
const DEPTH: usize = 20;
/// Windows in a day.
pub const WINDOWS_PER_DAY: i64 = 24 * 360;

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

/// A store in `dir` (emptied first) with `windows` windows of 10 s from `start`.
pub fn build(dir: &std::path::Path, start: i64, windows: i64) -> Store {
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
    for w in 0..windows {
        let entries: Vec<WindowEntry> = processes
            .iter()
            .flat_map(|(labels, stacks)| {
                stacks.iter().enumerate().map(|(i, s)| WindowEntry {
                    kind: SampleKind::Cpu,
                    labels: labels.clone(),
                    stack: s.clone(),
                    count: 1 + (i as u64 + w as u64) % 5,
                    value: (1 + (i as u64 + w as u64) % 5) * 10_101_010,
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
            persisted: Default::default(),
        };
        store.append(&window, window.end_ns).unwrap();
    }
    store.set_durable(true);
    store
}
