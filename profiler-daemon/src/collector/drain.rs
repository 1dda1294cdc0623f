//! The ring buffer's drain: copies records out of the kernel's ring as soon as it is readable
//! (the kernel wakes it when the ring fills up) and on a short timer, into the collector's
//! queue. It never waits on anything else, so a collector that is slow for a while (a `/proc`
//! read that blocks, a burst of new processes) does not fill the ring; a queue that is full
//! loses the records it cannot take, and counts them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;

use crate::stats::{DropReason, PipelineStats};

/// How often the ring buffer is drained without a wakeup from the kernel. The kernel only wakes
/// the drain when the ring is a quarter full, so this bounds the latency of a sample.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Messages (batches and marks) the collector's queue holds.
const QUEUE_MESSAGES: usize = 4096;

/// What the drain hands the collector.
#[derive(Debug)]
pub enum Input {
    /// The records read in one pass, in ring order.
    Records(Batch),
    /// Every record the kernel wrote before this wall-clock time (ns) has been offered.
    Drained(i64),
    /// The inspector has answers (it is not the drain's, but wakes the same reader).
    Answers,
}

/// Records copied out of the ring in one pass, back to back.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Appends one record.
    pub fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
    }

    /// Bytes of memory the batch holds.
    fn size(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * size_of::<usize>()
    }
}

/// The sending side of the collector's queue, bounded in messages and in bytes.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<Input>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    stats: Arc<PipelineStats>,
}

/// The receiving side of the collector's queue.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Input>,
    queued: Arc<AtomicUsize>,
}

/// A queue that holds at most `max_bytes` of records; what it refuses is counted in `stats`.
pub fn queue(max_bytes: usize, stats: Arc<PipelineStats>) -> (Queue, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let queued = Arc::new(AtomicUsize::new(0));
    (Queue { tx, queued: queued.clone(), max_bytes, stats }, Inbox { rx, queued })
}

impl Queue {
    /// Queues `batch` without waiting; when the queue is full its records are counted as lost.
    pub fn offer(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let (records, size) = (batch.len(), batch.size());
        let before = self.queued.fetch_add(size, Relaxed);
        let refused = if before.saturating_add(size) > self.max_bytes {
            true
        } else {
            matches!(self.tx.try_send(Input::Records(batch)), Err(TrySendError::Full(_)))
        };
        if refused {
            self.queued.fetch_sub(size, Relaxed);
            for _ in 0..records {
                self.stats.record_drop(DropReason::CollectorQueueFull);
            }
        }
    }

    /// Says that every record written before `at` has been offered. A full queue skips the
    /// mark; the next one says more.
    pub fn mark(&self, at: i64) {
        let _ = self.tx.try_send(Input::Drained(at));
    }

    /// A function that wakes the collector with [`Input::Answers`]. It holds no sender, so the
    /// inbox still ends when the drain stops; a full queue skips the wakeup, as the collector
    /// then has inputs to take anyway.
    pub fn waker(&self) -> impl Fn() + Send + 'static {
        let tx = self.tx.downgrade();
        move || {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.try_send(Input::Answers);
            }
        }
    }
}

impl Inbox {
    /// The next input, waiting for it (on the collector's own thread); `None` once the drain
    /// has stopped and everything it queued was taken.
    pub fn recv(&mut self) -> Option<Input> {
        let input = self.rx.blocking_recv()?;
        if let Input::Records(batch) = &input {
            self.queued.fetch_sub(batch.size(), Relaxed);
        }
        Some(input)
    }
}

/// Drains `ring` into `queue` until `shutdown`.
pub async fn drain(
    ring: RingBuf<MapData>,
    queue: Queue,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let (batch, more) = read_some(guard.get_inner_mut(), queue.max_bytes / 4);
                queue.offer(batch);
                // With records left the ring stays ready, and is read again after the other
                // branches had their turn.
                if !more {
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {
                // Every record the kernel wrote before this moment is read below.
                let at = crate::clock::now_ns();
                let (batch, more) = read_some(ring.get_mut(), queue.max_bytes / 4);
                queue.offer(batch);
                if !more {
                    queue.mark(at);
                }
            }
        }
    }
    Ok(())
}

/// Reads records until the ring is empty or `max_bytes` were read, and says whether it
/// stopped for the latter. The kernel may write as fast as this reads (at a page-fault period
/// of 1 the daemon's own faults while it copies records are records too), so a read that only
/// ends on an empty ring may never end.
fn read_some(ring: &mut RingBuf<MapData>, max_bytes: usize) -> (Batch, bool) {
    let mut batch = Batch::default();
    while batch.size() < max_bytes {
        let Some(record) = ring.next() else { return (batch, false) };
        batch.push(&record);
    }
    (batch, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[&[u8]]) -> Batch {
        let mut b = Batch::default();
        for r in records {
            b.push(r);
        }
        b
    }

    #[test]
    fn a_batch_gives_back_its_records_in_order() {
        let b = batch(&[b"one", b"", b"three"]);
        assert_eq!(b.iter().collect::<Vec<_>>(), [&b"one"[..], b"", b"three"]);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn a_full_queue_counts_every_record_it_refuses_and_frees_what_was_taken() {
        let stats = Arc::new(PipelineStats::default());
        let one = batch(&[&[0u8; 100], &[0u8; 100]]).size();
        let (queue, mut inbox) = self::queue(one * 2, stats.clone());
        queue.offer(batch(&[&[0u8; 100], &[0u8; 100]]));
        queue.offer(batch(&[&[0u8; 100], &[0u8; 100]]));
        queue.offer(batch(&[&[0u8; 100], &[0u8; 100]]));
        assert_eq!(stats.drops().0[DropReason::CollectorQueueFull as usize], 2);
        queue.mark(7);
        assert!(matches!(inbox.recv(), Some(Input::Records(b)) if b.len() == 2));
        // The bytes taken are free again.
        queue.offer(batch(&[&[1u8; 100], &[1u8; 100]]));
        assert_eq!(stats.drops().0[DropReason::CollectorQueueFull as usize], 2);
        assert!(matches!(inbox.recv(), Some(Input::Records(_))));
        assert!(matches!(inbox.recv(), Some(Input::Drained(7))));
        assert!(matches!(inbox.recv(), Some(Input::Records(b)) if b.iter().all(|r| r[0] == 1)));
        drop(queue);
        assert!(inbox.recv().is_none());
    }
}
