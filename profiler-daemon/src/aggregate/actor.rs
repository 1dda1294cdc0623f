//! The aggregator actor: one task that owns the open window and the window store.
//!
//! Samples arrive over a bounded channel; queries and status requests arrive over another one
//! and are answered with shared snapshots, so that merging happens outside the actor.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument as _, debug, info, info_span};

use super::{Resolved, Window, WindowBuilder};
use crate::{
    stats::PipelineStats,
    store::{Retention, WindowStore, writer::WriterHandle},
};

/// Closed windows buffered for each live watcher; a watcher further behind misses windows,
/// and is told how many.
pub const WATCH_BUFFER: usize = 8;

/// How the aggregator cuts and keeps windows.
#[derive(Clone, Copy, Debug)]
pub struct AggregatorConfig {
    /// Length of a window; windows start at multiples of it (wall clock).
    pub window: Duration,
    /// Distinct (labels, stack) entries per window.
    pub max_stacks: usize,
    /// What the store keeps.
    pub retention: Retention,
}

/// Sizes reported by `Status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AggregatorStatus {
    /// Closed windows held.
    pub windows: usize,
    /// Distinct entries in the open window.
    pub open_stacks: usize,
    /// Approximate bytes held by closed windows.
    pub bytes: usize,
    /// Windows dropped by retention.
    pub evicted: u64,
    /// Closed windows that could not be handed to the store.
    pub unstored: u64,
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

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Starts the aggregator task. It runs until `samples` closes (the symbolizer stopped), then
/// closes the open window and hands it to `writer`.
pub fn spawn(
    config: AggregatorConfig,
    samples: mpsc::Receiver<Resolved>,
    stats: Arc<PipelineStats>,
    writer: Option<WriterHandle>,
) -> (AggregatorHandle, JoinHandle<()>) {
    let (commands, command_rx) = mpsc::channel(64);
    let (closed, _) = broadcast::channel(WATCH_BUFFER);
    let actor = Actor {
        store: WindowStore::new(config.retention),
        open: WindowBuilder::new(
            window_start(now_ns(), config.window),
            config.max_stacks,
            stats.drops(),
        ),
        config,
        stats,
        writer,
        closed: closed.clone(),
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
    store: WindowStore,
    open: WindowBuilder,
    stats: Arc<PipelineStats>,
    writer: Option<WriterHandle>,
    closed: broadcast::Sender<Arc<Window>>,
}

impl Actor {
    async fn run(
        mut self,
        mut samples: mpsc::Receiver<Resolved>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        loop {
            let close_at = self.open.start_ns() + window_len_ns(self.config.window);
            let wait = Duration::from_nanos(u64::try_from(close_at - now_ns()).unwrap_or(0));
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(Instant::now() + wait) => self.rotate(close_at),
                input = samples.recv() => match input {
                    Some(Resolved::Sample(sample)) => {
                        self.stats.aggregated();
                        self.open.add(sample, &self.stats);
                    }
                    Some(Resolved::Calls(calls)) => self.open.add_calls(calls),
                    None => break,
                },
                Some(command) = commands.recv() => self.answer(command),
            }
        }
        let end = now_ns();
        self.rotate(end);
        info!(windows = self.store.len(), "aggregator stopped");
    }

    /// Closes the open window at `end_ns` and opens the next one.
    fn rotate(&mut self, end_ns: i64) {
        let drops = self.stats.drops();
        let next = WindowBuilder::new(end_ns, self.config.max_stacks, drops.clone());
        let closed = Arc::new(std::mem::replace(&mut self.open, next).close(end_ns, &drops));
        debug!(samples = closed.samples, stacks = closed.entries.len(), "window closed");
        if let Some(writer) = &self.writer {
            writer.write(closed.clone());
        }
        // No watcher is not an error.
        let _ = self.closed.send(closed.clone());
        self.store.push(closed, end_ns);
    }

    fn answer(&mut self, command: Command) {
        match command {
            Command::Windows { start_ns, end_ns, reply } => {
                let mut windows = self.store.select(start_ns, end_ns);
                let now = now_ns();
                let open = self.open.snapshot(now, &self.stats.drops());
                if open.overlaps(start_ns, end_ns) {
                    windows.push(Arc::new(open));
                }
                let _ = reply.send(windows);
            }
            Command::Status { reply } => {
                let _ = reply.send(AggregatorStatus {
                    windows: self.store.len(),
                    open_stacks: self.open.len(),
                    bytes: self.store.bytes(),
                    evicted: self.store.evicted(),
                    unstored: self
                        .writer
                        .as_ref()
                        .map_or(0, |w| w.lost.load(std::sync::atomic::Ordering::Relaxed)),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_multiples_of_their_length() {
        let ten = Duration::from_secs(10);
        assert_eq!(window_start(25_000_000_000, ten), 20_000_000_000);
        assert_eq!(window_start(20_000_000_000, ten), 20_000_000_000);
    }
}
