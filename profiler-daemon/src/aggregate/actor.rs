//! The aggregator actor: one task that owns the open windows and the recent closed ones.
//!
//! Samples arrive over a bounded channel; queries and status requests arrive over another one
//! and are answered with shared snapshots, so that merging happens outside the actor. Both are
//! served fairly: a backlog of samples never makes a query or the health check wait for it.
//!
//! A sample counts in the window of its own time (taken in the kernel), not of its arrival. A
//! window stays open for a grace period after its end, for samples still in the queues; a
//! sample that arrives later than that (a backlog, as at start-up while symbol caches are
//! cold) is counted as late and goes into the oldest open window, so that it is not lost.
//!
//! Off-CPU blocks count into the windows whose time they span ([`super::blocks`]).

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument as _, debug, info, info_span};

use super::{
    RecentWindows, Resolved, Retention, SampleKind, StackSample, Window, WindowBuilder,
    blocks::{Accrual, MAX_OPEN_BLOCKS, OpenBlocks},
};
use crate::{budget::MemoryBudget, clock::now_ns, stats::PipelineStats};

/// Closed windows buffered for each live watcher; a watcher further behind misses windows,
/// and is told how many.
pub const WATCH_BUFFER: usize = 8;

/// How long a window stays open after its end, at most: samples take about 100 ms (the ring
/// buffer's drain interval) plus two queues to arrive.
pub const MAX_GRACE: Duration = Duration::from_secs(1);

/// Where closed windows go besides memory (the store's writer). It must not block.
pub type WindowSink = Box<dyn Fn(Arc<Window>) + Send>;

/// How the aggregator cuts and keeps windows.
#[derive(Clone, Copy, Debug)]
pub struct AggregatorConfig {
    /// Length of a window; windows start at multiples of it (wall clock).
    pub window: Duration,
    /// Distinct (labels, stack) entries per window.
    pub max_stacks: usize,
    /// What is kept in memory.
    pub retention: Retention,
}

impl AggregatorConfig {
    /// How long a window stays open after its end: [`MAX_GRACE`], or a quarter of a shorter
    /// window.
    pub fn grace(&self) -> Duration {
        MAX_GRACE.min(self.window / 4)
    }
}

/// Sizes reported by `Status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AggregatorStatus {
    /// Closed windows held.
    pub windows: usize,
    /// Distinct entries in the open windows.
    pub open_stacks: usize,
    /// Approximate bytes held by closed windows.
    pub bytes: usize,
    /// Windows dropped by retention.
    pub evicted: u64,
    /// Off-CPU blocks still open.
    pub open_blocks: usize,
}

/// The aggregator stopped (the daemon is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the aggregator has stopped")]
pub struct AggregatorGone;

enum Command {
    Windows { start_ns: i64, end_ns: i64, reply: oneshot::Sender<Vec<Arc<Window>>> },
    Status { reply: oneshot::Sender<AggregatorStatus> },
}

/// Cheap, cloneable access to the aggregator.
#[derive(Clone, Debug)]
pub struct AggregatorHandle {
    commands: mpsc::Sender<Command>,
    closed: broadcast::Sender<Arc<Window>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Windows { start_ns, end_ns, .. } => {
                write!(f, "Windows({start_ns}..{end_ns})")
            }
            Command::Status { .. } => f.write_str("Status"),
        }
    }
}

impl AggregatorHandle {
    /// The windows overlapping `[start_ns, end_ns)`, including a snapshot of the open one.
    pub async fn windows(
        &self,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<Arc<Window>>, AggregatorGone> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Windows { start_ns, end_ns, reply })
            .await
            .map_err(|_| AggregatorGone)?;
        rx.await.map_err(|_| AggregatorGone)
    }

    /// Every window closed from now on. A receiver that falls more than [`WATCH_BUFFER`]
    /// windows behind gets `Lagged(n)` with the number it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Window>> {
        self.closed.subscribe()
    }

    /// Current sizes.
    pub async fn status(&self) -> Result<AggregatorStatus, AggregatorGone> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Status { reply }).await.map_err(|_| AggregatorGone)?;
        rx.await.map_err(|_| AggregatorGone)
    }
}

/// Starts the aggregator task. It runs until `samples` closes (the symbolizer stopped), then
/// closes the open windows and hands them to `sink`.
pub fn spawn(
    config: AggregatorConfig,
    samples: mpsc::Receiver<Resolved>,
    stats: Arc<PipelineStats>,
    sink: Option<WindowSink>,
) -> (AggregatorHandle, JoinHandle<()>) {
    spawn_in_budget(config, samples, stats, sink, None)
}

/// [`spawn`], with the recent windows held in memory to what `budget` leaves them (and to
/// `config.retention` at most).
pub fn spawn_in_budget(
    config: AggregatorConfig,
    samples: mpsc::Receiver<Resolved>,
    stats: Arc<PipelineStats>,
    sink: Option<WindowSink>,
    budget: Option<Arc<MemoryBudget>>,
) -> (AggregatorHandle, JoinHandle<()>) {
    let (commands, command_rx) = mpsc::channel(64);
    let (closed, _) = broadcast::channel(WATCH_BUFFER);
    let actor = Actor {
        recent: RecentWindows::new(config.retention),
        open: Vec::new(),
        blocks: OpenBlocks::new(MAX_OPEN_BLOCKS),
        watermark_ns: i64::MIN,
        config,
        stats,
        sink,
        closed: closed.clone(),
        budget,
    };
    // Task names need tokio_unstable; the span names the task in logs instead.
    let task = tokio::spawn(actor.run(samples, command_rx).instrument(info_span!("aggregator")));
    (AggregatorHandle { commands, closed }, task)
}

fn window_len_ns(window: Duration) -> i64 {
    i64::try_from(window.as_nanos()).unwrap_or(i64::MAX).max(1)
}

/// The start of the window that contains `t_ns`.
fn window_start(t_ns: i64, window: Duration) -> i64 {
    let len = window_len_ns(window);
    t_ns - t_ns.rem_euclid(len)
}

struct Actor {
    config: AggregatorConfig,
    recent: RecentWindows,
    /// Open windows, oldest first: the current one, and the previous one during its grace.
    open: Vec<WindowBuilder>,
    /// Off-CPU blocks that have not ended.
    blocks: OpenBlocks,
    /// Time up to which every kernel record has arrived: blocks are counted up to here, never
    /// beyond, so that the end of a block still in the queues cannot be overtaken.
    watermark_ns: i64,
    stats: Arc<PipelineStats>,
    sink: Option<WindowSink>,
    closed: broadcast::Sender<Arc<Window>>,
    budget: Option<Arc<MemoryBudget>>,
}

impl Actor {
    async fn run(
        mut self,
        mut samples: mpsc::Receiver<Resolved>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let len = window_len_ns(self.config.window);
        let grace = i64::try_from(self.config.grace().as_nanos()).unwrap_or(0);
        self.open_window(window_start(now_ns(), self.config.window));
        loop {
            let now = now_ns();
            // The oldest open window closes at its end plus the grace; the current one's end
            // opens the next.
            let oldest = self.open.first().map_or(now, WindowBuilder::start_ns);
            let newest = self.open.last().map_or(now, WindowBuilder::start_ns);
            let wake = (oldest + len + grace).min(newest + len);
            let wait = Duration::from_nanos(u64::try_from(wake - now).unwrap_or(0));
            // Not biased: under a backlog of samples, commands still get their turn.
            tokio::select! {
                () = tokio::time::sleep_until(Instant::now() + wait) => self.tick(now_ns()),
                input = samples.recv() => match input {
                    Some(Resolved::Sample(sample)) => self.add(sample),
                    Some(Resolved::BlockStart(start)) => self.blocks.start(start, &self.stats),
                    Some(Resolved::BlockEnd(end)) => {
                        if let Some(done) = self.blocks.end(end) {
                            self.add_accrual(done, end.time_ns);
                        }
                    }
                    Some(Resolved::Watermark(t)) => self.watermark_ns = self.watermark_ns.max(t),
                    Some(Resolved::Calls(calls)) => {
                        if let Some(open) = self.open.last_mut() {
                            open.add_calls(calls);
                        }
                    }
                    None => break,
                },
                Some(command) = commands.recv() => self.answer(command),
            }
        }
        // The input is closed: nothing more can arrive for any open window.
        let end = now_ns();
        self.watermark_ns = end;
        for open in std::mem::take(&mut self.open) {
            let close_at = end.min(open.start_ns() + len);
            self.close(open, close_at);
        }
        info!(windows = self.recent.len(), "aggregator stopped");
    }

    /// Opens the window that starts at `start_ns`, after the open ones.
    fn open_window(&mut self, start_ns: i64) {
        let drops = self.stats.drops();
        let mut window = WindowBuilder::new(start_ns, self.config.max_stacks, drops.clone());
        if let Some(previous) = self.open.last_mut() {
            // Host-wide drops count for the window whose time they happened in.
            previous.end_drops(drops);
            // The next window will hold about as many stacks as this one.
            window.reserve(previous.len());
        }
        self.open.push(window);
    }

    /// Opens the next window once the current one has ended, and closes the windows whose
    /// grace is over.
    fn tick(&mut self, now: i64) {
        let len = window_len_ns(self.config.window);
        let grace = i64::try_from(self.config.grace().as_nanos()).unwrap_or(0);
        let current = window_start(now, self.config.window);
        if self.open.last().is_none_or(|w| w.start_ns() < current) {
            self.open_window(current);
        }
        while self.open.len() > 1 && self.open[0].start_ns() + len + grace <= now {
            let oldest = self.open.remove(0);
            let end = oldest.start_ns() + len;
            self.close(oldest, end);
        }
    }

    /// Counts a sample in the window of its time. A thread seen on a CPU ends its open block.
    fn add(&mut self, sample: StackSample) {
        if sample.kind == SampleKind::Cpu
            && let Some(done) = self.blocks.ran(sample.tid, sample.time_ns, &self.stats)
        {
            self.add_accrual(done, sample.time_ns);
        }
        let index = self.window_index(sample.time_ns);
        if let Some(open) = self.open.get_mut(index) {
            if sample.kind.is_event() {
                self.stats.aggregated();
            }
            open.add(sample, &self.stats);
        }
    }

    /// Counts the end of an off-CPU block, at `time_ns`.
    fn add_accrual(&mut self, done: Accrual, time_ns: i64) {
        let index = self.window_index(time_ns);
        if let Some(open) = self.open.get_mut(index) {
            open.add_tally(SampleKind::OffCpu, done.labels, done.stack, done.tally, &self.stats);
        }
    }

    /// The index of the open window of `time_ns`: the oldest one for a late sample.
    fn window_index(&mut self, time_ns: i64) -> usize {
        let start = window_start(time_ns, self.config.window);
        if self.open.last().is_some_and(|w| w.start_ns() < start) {
            // The sample's window has begun before the timer noticed.
            self.tick(now_ns());
        }
        // Newest first: nearly every sample belongs to the current window. A sample from the
        // future (the wall clock was set back) counts in the current window.
        self.open.iter().rposition(|w| w.start_ns() <= start).unwrap_or_else(|| {
            self.stats.late();
            0
        })
    }

    /// Closes a window at `end_ns`: to watchers, to the sink and to memory.
    fn close(&mut self, mut open: WindowBuilder, end_ns: i64) {
        // The time that open blocks spent in this window, as far as the records tell: the rest
        // counts in a later window.
        for done in self.blocks.take_until(end_ns.min(self.watermark_ns)) {
            open.add_tally(SampleKind::OffCpu, done.labels, done.stack, done.tally, &self.stats);
        }
        let drops = self.stats.drops();
        let closed = Arc::new(open.close(end_ns, &drops));
        debug!(samples = closed.samples, stacks = closed.entries.len(), "window closed");
        if let Some(sink) = &self.sink {
            sink(closed.clone());
        }
        // No watcher is not an error.
        let _ = self.closed.send(closed.clone());
        let bytes = self.recent.push(closed, now_ns());
        if let Some(budget) = &self.budget {
            // The window that just opened will hold about as much as this one.
            let room = budget.window_bytes().saturating_sub(bytes);
            self.recent.set_max_bytes(room.min(self.config.retention.max_bytes));
            self.recent.expire(now_ns());
        }
    }

    fn answer(&mut self, command: Command) {
        match command {
            Command::Windows { start_ns, end_ns, reply } => {
                let mut windows = self.recent.select(start_ns, end_ns);
                let now = now_ns();
                let len = window_len_ns(self.config.window);
                let drops = self.stats.drops();
                for open in &self.open {
                    let snapshot = open.snapshot(now.min(open.start_ns() + len), &drops);
                    if snapshot.overlaps(start_ns, end_ns) {
                        windows.push(Arc::new(snapshot));
                    }
                }
                let _ = reply.send(windows);
            }
            Command::Status { reply } => {
                let _ = reply.send(AggregatorStatus {
                    windows: self.recent.len(),
                    open_stacks: self.open.iter().map(WindowBuilder::len).sum(),
                    bytes: self.recent.bytes(),
                    evicted: self.recent.evicted(),
                    open_blocks: self.blocks.len(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Frame, FrameKind, Labels, StackSample};

    const S: i64 = 1_000_000_000;

    fn sample(time_ns: i64, function: &str) -> Resolved {
        let frame = Frame { kind: FrameKind::Native, ..Frame::marker(function) };
        Resolved::Sample(StackSample {
            time_ns,
            labels: Arc::new(Labels { pid: 1, comm: "app".into(), ..Labels::default() }),
            stack: Arc::from([Arc::new(frame)]),
            kind: SampleKind::Cpu,
            value: 1,
            tid: 1,
        })
    }

    fn config(window: Duration) -> AggregatorConfig {
        AggregatorConfig {
            window,
            max_stacks: 1000,
            retention: Retention { max_age: Duration::from_secs(3600), max_bytes: 1 << 30 },
        }
    }

    fn functions(windows: &[Arc<Window>]) -> Vec<String> {
        let mut out: Vec<String> = windows
            .iter()
            .flat_map(|w| w.entries.iter().map(|e| e.stack[0].function.to_string()))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_command_is_answered_while_samples_are_queued() {
        const BACKLOG: usize = 20_000;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let now = now_ns();
        for _ in 0..BACKLOG {
            tx.try_send(sample(now, "busy")).unwrap();
        }
        let stats = Arc::new(PipelineStats::default());
        let (handle, _task) = spawn(config(Duration::from_secs(3600)), rx, stats.clone(), None);
        handle.status().await.unwrap();
        let aggregated = stats.aggregated_total();
        assert!(
            aggregated < BACKLOG as u64,
            "the status request waited for the whole backlog ({aggregated} samples)"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn samples_count_in_the_window_of_their_own_time() {
        let window = Duration::from_secs(4);
        let len = 4 * S;
        let (tx, rx) = mpsc::channel(16);
        let stats = Arc::new(PipelineStats::default());
        let (handle, _task) = spawn(config(window), rx, stats.clone(), None);
        // Just after a window boundary, while the previous window is in its grace period.
        let boundary = window_start(now_ns(), window) + len;
        tokio::time::sleep(Duration::from_nanos((boundary + S / 10 - now_ns()) as u64)).await;
        tx.send(sample(boundary - S / 2, "previous")).await.unwrap();
        tx.send(sample(boundary + S / 20, "current")).await.unwrap();
        // From a window closed long ago: counted as late, kept in the oldest open window.
        tx.send(sample(boundary - len - S, "too_late")).await.unwrap();
        handle.status().await.unwrap();
        let previous = handle.windows(boundary - len, boundary).await.unwrap();
        let current = handle.windows(boundary, boundary + len).await.unwrap();
        assert_eq!(functions(&previous), ["previous", "too_late"]);
        assert_eq!(functions(&current), ["current"]);
        assert_eq!(stats.late_total(), 1);
        assert_eq!(stats.aggregated_total(), 3);
        drop(tx);
    }

    #[tokio::test]
    async fn recent_windows_give_way_to_what_the_budget_holds_elsewhere() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let held = Arc::new(AtomicUsize::new(0));
        let budget = MemoryBudget::new(crate::budget::MIN_WINDOW_BYTES, Vec::new()).unwrap().hold(
            "caches",
            {
                let held = held.clone();
                move || held.load(Relaxed)
            },
        );
        let (tx, rx) = mpsc::channel(16);
        let config = config(Duration::from_millis(100));
        let (handle, _task) =
            spawn_in_budget(config, rx, Arc::default(), None, Some(Arc::new(budget)));
        let windows_after = |pause_ms| {
            let (tx, handle) = (&tx, &handle);
            async move {
                for _ in 0..pause_ms / 20 {
                    tx.send(sample(now_ns(), "work")).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                handle.status().await.unwrap().windows
            }
        };
        assert!(windows_after(600).await >= 4, "windows are kept while the budget has room");
        // The caches now take the whole budget: only the newest window stays.
        held.store(crate::budget::MIN_WINDOW_BYTES, Relaxed);
        assert_eq!(windows_after(300).await, 1);
        drop(tx);
    }

    /// An aggregator with 400 ms windows and a thread (tid 1) that blocked half way through
    /// the current window, captured with `weight`: its input, its handle and the window's
    /// start.
    async fn blocked_half_way(
        boot_ns: u64,
        weight: u64,
    ) -> (mpsc::Sender<Resolved>, AggregatorHandle, i64) {
        use crate::aggregate::BlockStart;
        let window = Duration::from_millis(400);
        let (tx, rx) = mpsc::channel(16);
        let (handle, _task) = spawn(config(window), rx, Arc::default(), None);
        // Begin as a window begins, so that the steps below have a whole window in hand on a
        // slow machine (the aarch64 unit tests run under emulation).
        let start = window_start(now_ns(), window) + window_len_ns(window);
        tokio::time::sleep(Duration::from_nanos((start + 1_000_000 - now_ns()).max(0) as u64))
            .await;
        let Resolved::Sample(blocked) = sample(start + 200_000_000, "read") else { unreachable!() };
        let blocked = StackSample { kind: SampleKind::OffCpu, value: 0, ..blocked };
        tx.send(Resolved::BlockStart(BlockStart { sample: blocked, tid: 1, boot_ns, weight }))
            .await
            .unwrap();
        (tx, handle, start)
    }

    #[tokio::test]
    async fn a_block_counts_in_each_window_it_spans_and_ends_once() {
        use crate::aggregate::{BlockEnd, MergedProfile, Mode};
        let len = 400_000_000;
        // Captured with probability one half: each nanosecond counts twice.
        let (tx, handle, start) = blocked_half_way(42, 2 * 65_536).await;
        // The collector read the kernel's records past the first window's end: the block was
        // still open then.
        tx.send(Resolved::Watermark(start + len + len / 8)).await.unwrap();
        // Let the window close (its end plus a grace of a quarter window), then end the block
        // in the next one while that one is open.
        let end = start + len + len / 2;
        tokio::time::sleep(Duration::from_nanos((end + len / 4 - now_ns()).max(0) as u64)).await;
        tx.send(Resolved::BlockEnd(BlockEnd { tid: 1, boot_ns: 42, time_ns: end })).await.unwrap();
        handle.status().await.unwrap();
        let first = handle.windows(start, start + len).await.unwrap();
        let second = handle.windows(start + len, start + 2 * len).await.unwrap();
        let everything: crate::selector::Selector = "".parse().unwrap();
        let value = |w: &[Arc<Window>]| {
            MergedProfile::merge(w.iter().map(|w| &**w), &everything, Mode::OffCpu, true).value()
        };
        assert_eq!(value(&first), 2 * (len / 2) as u64, "the first half window, while it lasted");
        assert_eq!(value(&second), 2 * (len / 2) as u64, "the rest, at its end");
        let ended: u64 = second.iter().flat_map(|w| &w.entries).map(|e| e.count).sum();
        assert_eq!(ended, 1, "one block ended");
        drop(tx);
    }

    #[tokio::test]
    async fn a_block_is_counted_only_as_far_as_the_records_go() {
        use crate::aggregate::{BlockEnd, MergedProfile, Mode};
        let len = 400_000_000;
        let (tx, handle, start) = blocked_half_way(7, 65_536).await;
        // The records stop a quarter window in (the collector is behind): the block ended
        // there, and its end is still in the queues when the window closes.
        tx.send(Resolved::Watermark(start + 3 * len / 4)).await.unwrap();
        tokio::time::sleep(Duration::from_nanos((start + 3 * len / 2 - now_ns()).max(0) as u64))
            .await;
        let end = start + 3 * len / 4 + 1_000;
        tx.send(Resolved::BlockEnd(BlockEnd { tid: 1, boot_ns: 7, time_ns: end })).await.unwrap();
        handle.status().await.unwrap();
        let everything: crate::selector::Selector = "".parse().unwrap();
        let all = handle.windows(start, start + 2 * len).await.unwrap();
        let value =
            MergedProfile::merge(all.iter().map(|w| &**w), &everything, Mode::OffCpu, true).value();
        assert_eq!(value, (end - (start + len / 2)) as u64, "the block's own length, once");
        drop(tx);
    }

    #[test]
    fn windows_start_on_multiples_of_their_length() {
        let ten = Duration::from_secs(10);
        assert_eq!(window_start(25_000_000_000, ten), 20_000_000_000);
        assert_eq!(window_start(20_000_000_000, ten), 20_000_000_000);
    }
}
