//! The store's writer thread: closed windows are queued to it and written in order, so that
//! the aggregator never waits on the disk.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::JoinHandle,
};

use tracing::{error, info};

use super::Store;
use crate::aggregate::{Window, actor::now_ns};

/// Closed windows waiting to be written.
const QUEUE: usize = 16;

/// The sending side of the writer's queue.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    queue: mpsc::SyncSender<Arc<Window>>,
    /// Windows not stored because the queue was full or the write failed.
    pub lost: Arc<AtomicU64>,
}

impl WriterHandle {
    /// Queues a closed window; counts it as lost when the queue is full.
    pub fn write(&self, window: Arc<Window>) {
        if self.queue.try_send(window).is_err() {
            self.lost.fetch_add(1, Relaxed);
        }
    }
}

/// Starts the writer thread. It ends once every [`WriterHandle`] is dropped and the queue is
/// written.
pub fn spawn(store: Arc<Store>) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (queue, rx) = mpsc::sync_channel::<Arc<Window>>(QUEUE);
    let lost = Arc::new(AtomicU64::new(0));
    let failed = lost.clone();
    let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || {
        for window in rx {
            if let Err(e) = store.append(&window, now_ns()) {
                failed.fetch_add(1, Relaxed);
                error!(error = %e, start_ns = window.start_ns, "storing a window failed");
            }
        }
        info!("store writer stopped");
    })?;
    Ok((WriterHandle { queue, lost }, thread))
}
