//! The store's writer thread: closed windows are queued to it and written in order, so that
//! the aggregator never waits on the disk.
//!
//! A window that cannot be stored (the queue is full, or the write fails) is marked lost
//! ([`super::lost`]): it stays visible from memory while memory retention keeps it, and it is
//! counted.

use std::{
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use tracing::{error, info, warn};

use super::Store;
use crate::{aggregate::Window, clock::now_ns};

/// Closed windows waiting to be written.
const QUEUE: usize = 16;

/// The sending side of the writer's queue.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    queue: mpsc::SyncSender<Arc<Window>>,
    store: Arc<Store>,
}

impl WriterHandle {
    /// Queues a closed window; marks it lost when the queue is full.
    pub fn write(&self, window: Arc<Window>) {
        if let Err(e) = self.queue.try_send(window) {
            let (mpsc::TrySendError::Full(window) | mpsc::TrySendError::Disconnected(window)) = e;
            warn!(start_ns = window.start_ns, "the store writer is behind; a window is not stored");
            self.store.lost().record(&window);
        }
    }
}

/// Starts the writer thread. It ends once every [`WriterHandle`] is dropped and the queue is
/// written.
pub fn spawn(store: Arc<Store>) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    spawn_with_queue(store, QUEUE)
}

/// [`spawn`] with a queue of `capacity` windows.
pub fn spawn_with_queue(
    store: Arc<Store>,
    capacity: usize,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (queue, rx) = mpsc::sync_channel::<Arc<Window>>(capacity);
    let writer = store.clone();
    let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || {
        for window in rx {
            if let Err(e) = writer.append(&window, now_ns()) {
                writer.lost().record(&window);
                error!(error = %e, start_ns = window.start_ns, "storing a window failed; it is kept in memory only");
            }
        }
        info!("store writer stopped");
    })?;
    Ok((WriterHandle { queue, store }, thread))
}
