//! Pushing each stored window to the engines a fleet already runs (an OpenTelemetry Collector
//! or any OTLP profiles receiver).
//!
//! The store is the buffer. An exporter reads the windows stored after the last one it
//! delivered, sends each (every kind of sample in it), and records the window as delivered in
//! the store only once the receiver has taken it. A receiver that is down is retried with
//! backoff for as long as it takes; the windows wait in the store meanwhile, up to its
//! retention, and a restarted daemon goes on from where its exporter stopped.

pub mod grpc;
pub mod http;
pub mod otlp;
pub mod pyroscope;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use profiler_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    aggregate::{MergedProfile, Mode},
    selector::Selector,
    store::{Store, StoreError},
};

/// The kinds of samples exported: each is one profile per process and window. Wall and GIL
/// profiles are sums of these, which a receiver can form itself.
pub const EXPORTED_MODES: [Mode; 3] = [Mode::Cpu, Mode::OffCpu, Mode::Memory];
/// How often an exporter that is caught up looks for new windows.
const POLL: Duration = Duration::from_secs(1);
/// The first wait after a failed send; it doubles on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Windows read from the store at a time.
const BATCH: usize = 16;
/// The largest request sent, before splitting a window's processes between requests: gRPC
/// servers refuse messages over 4 MiB unless configured otherwise.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// An exporter's endpoint or headers that cannot be used.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// Not an http:// or https:// URL.
    #[error("invalid export endpoint {url:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url {
        /// The endpoint as given.
        url: String,
    },
    /// A header that gRPC cannot carry.
    #[error("invalid export header {header:?}: expected KEY=VALUE with an ASCII key and value")]
    Header {
        /// The header as given.
        header: String,
    },
    /// TLS could not be set up.
    #[error("export endpoint {url}: {source}")]
    Tls {
        /// The endpoint.
        url: String,
        /// What the TLS setup said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a send failed.
#[derive(Debug, Error)]
pub enum SendError {
    /// Worth trying again later: the receiver is down, overloaded or refused for now.
    #[error("{0}")]
    Retry(String),
    /// The receiver refused the data itself; sending it again would fail the same way.
    #[error("{0}")]
    Refused(String),
}

/// Turns one window's profiles into a receiver's requests. Runs on a blocking thread.
pub trait Encode: Clone + Send + Sync + 'static {
    /// One request.
    type Request: Clone + Send + 'static;

    /// The requests of one window: a [`MergedProfile`] per mode of [`EXPORTED_MODES`].
    fn encode(&self, profiles: &[MergedProfile]) -> Vec<Self::Request>;
}

/// A receiver of export requests.
pub trait Sink: Send {
    /// How its requests are made.
    type Encoder: Encode;

    /// The encoder of its requests.
    fn encoder(&self) -> Self::Encoder;

    /// Sends `request`; returns the bytes sent and the profiles the receiver rejected.
    fn send(
        &mut self,
        request: <Self::Encoder as Encode>::Request,
    ) -> impl Future<Output = Result<Delivered, SendError>> + Send;
}

/// What a receiver took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delivered {
    /// Encoded bytes of the request, before the transport's compression.
    pub bytes: u64,
    /// Profiles the receiver said it rejected (OTLP's partial success).
    pub rejected_profiles: u64,
}

/// An exporter's counters, for Status and metrics.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// `otlp` and the endpoint.
    pub name: String,
    /// Windows delivered since start.
    pub windows: AtomicU64,
    /// Requests delivered since start.
    pub requests: AtomicU64,
    /// Bytes delivered since start.
    pub bytes: AtomicU64,
    /// Failed attempts since start (each retried).
    pub failures: AtomicU64,
    /// Windows the receiver refused and that were skipped.
    pub refused_windows: AtomicU64,
    /// Profiles the receiver accepted the request of but rejected.
    pub rejected_profiles: AtomicU64,
    /// Windows the store's retention dropped before they were delivered (an outage longer
    /// than the retention).
    pub evicted_windows: AtomicU64,
    /// End of the last window delivered, nanoseconds since the Unix epoch (0: none yet).
    pub delivered_until_ns: AtomicI64,
    /// The last failure, or empty.
    pub last_error: Mutex<String>,
}

impl ExporterStats {
    /// Counters of the exporter called `name`.
    pub fn new(name: String) -> ExporterStats {
        ExporterStats { name, ..ExporterStats::default() }
    }

    /// The last failure, or empty.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn failed(&self, error: &str) {
        self.failures.fetch_add(1, Relaxed);
        error.clone_into(&mut self.last_error.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// What every export says about where it comes from, and how requests are bounded.
#[derive(Clone, Debug)]
pub struct Source {
    /// This host.
    pub host: otlp::Host,
    /// The CPU sampling period, nanoseconds.
    pub period_ns: i64,
    /// The largest request.
    pub max_request_bytes: usize,
}

/// OTLP requests, for the gRPC and the HTTP sinks.
#[derive(Clone, Debug)]
pub struct OtlpEncoder(pub Source);

impl Encode for OtlpEncoder {
    type Request = ExportProfilesServiceRequest;

    fn encode(&self, profiles: &[MergedProfile]) -> Vec<ExportProfilesServiceRequest> {
        otlp::requests(&self.0.host, profiles, self.0.period_ns, self.0.max_request_bytes)
    }
}

/// Runs one exporter until `shutdown`: sends every window stored after the last one it
/// delivered to `sink`, in order.
pub async fn run<S: Sink>(
    mut sink: S,
    store: Arc<Store>,
    stats: Arc<ExporterStats>,
    shutdown: CancellationToken,
) {
    let name = stats.name.clone();
    let encoder = sink.encoder();
    let Some(mut cursor) = start_cursor(&store, &name, &stats, &shutdown).await else { return };
    let mut backoff = MIN_BACKOFF;
    loop {
        stats.evicted_windows.store(store.evicted_before_export(&name), Relaxed);
        let pending = {
            let store = store.clone();
            blocking(move || store.windows_after(cursor, BATCH)).await
        };
        let pending = match pending {
            Ok(pending) => pending,
            Err(e) => {
                stats.failed(&format!("reading the store: {e}"));
                Vec::new()
            }
        };
        if pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => continue,
            }
        }
        for (start, end) in pending {
            let requests = {
                let (store, encoder) = (store.clone(), encoder.clone());
                blocking(move || window_profiles(&store, start, end).map(|p| encoder.encode(&p)))
                    .await
            };
            let requests = match requests {
                Ok(requests) => requests,
                Err(e) => {
                    // The window cannot be read: it is not sent, and the next one is.
                    warn!(exporter = %name, start, error = %e, "a stored window could not be read; skipped");
                    stats.failed(&format!("reading the window at {start}: {e}"));
                    Vec::new()
                }
            };
            let mut refused = false;
            for request in requests {
                loop {
                    match sink.send(request.clone()).await {
                        Ok(delivered) => {
                            backoff = MIN_BACKOFF;
                            stats.requests.fetch_add(1, Relaxed);
                            stats.bytes.fetch_add(delivered.bytes, Relaxed);
                            if delivered.rejected_profiles > 0 {
                                stats
                                    .rejected_profiles
                                    .fetch_add(delivered.rejected_profiles, Relaxed);
                            }
                            break;
                        }
                        Err(SendError::Refused(e)) => {
                            warn!(exporter = %name, start, error = %e, "the receiver refused a window; skipped");
                            stats.failed(&e);
                            refused = true;
                            break;
                        }
                        Err(SendError::Retry(e)) => {
                            if stats.failures.load(Relaxed) == 0 || backoff == MAX_BACKOFF {
                                warn!(exporter = %name, error = %e, retry_in = ?backoff, "export failed; retrying");
                            }
                            stats.failed(&e);
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            if refused {
                stats.refused_windows.fetch_add(1, Relaxed);
            } else {
                stats.windows.fetch_add(1, Relaxed);
            }
            stats.delivered_until_ns.store(end, Relaxed);
            cursor = start;
            let saved = {
                let (store, name) = (store.clone(), name.clone());
                blocking(move || store.set_export_cursor(&name, start)).await
            };
            if let Err(e) = saved {
                // Delivered but not recorded: after a restart this window would be sent again.
                stats.failed(&format!("recording the delivered window: {e}"));
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// Where exporter `name` starts: after the last window it delivered, or, the first time, after
/// the newest window already stored (an exporter added to a daemon with days of history sends
/// what comes next, not the history). `None` on shutdown.
async fn start_cursor(
    store: &Arc<Store>,
    name: &str,
    stats: &ExporterStats,
    shutdown: &CancellationToken,
) -> Option<i64> {
    loop {
        let found = {
            let (store, name) = (store.clone(), name.to_owned());
            blocking(move || -> Result<i64, StoreError> {
                if let Some(cursor) = store.export_cursor(&name)? {
                    return Ok(cursor);
                }
                let newest = store.newest_window()?.unwrap_or(i64::MIN);
                store.set_export_cursor(&name, newest)?;
                Ok(newest)
            })
            .await
        };
        match found {
            Ok(cursor) => {
                info!(exporter = %name, after = cursor, "exporter started");
                return Some(cursor);
            }
            Err(e) => stats.failed(&format!("reading the store: {e}")),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(MAX_BACKOFF) => {}
        }
    }
}

/// The profiles of the stored window `[start, end)`, one per mode of [`EXPORTED_MODES`].
pub fn window_profiles(
    store: &Store,
    start: i64,
    end: i64,
) -> Result<Vec<MergedProfile>, StoreError> {
    let (snapshot, _) = store.snapshot(Vec::new())?;
    let mut profiles = Vec::with_capacity(EXPORTED_MODES.len());
    for mode in EXPORTED_MODES {
        // Threads that only waited are kept: the receiver decides what to show.
        let mut merged = MergedProfile::new(mode, true);
        snapshot.merge_into(start, end, &Selector::default(), &mut merged)?;
        merged.finish();
        profiles.push(merged);
    }
    Ok(profiles)
}

/// A configured exporter, of any kind.
#[derive(Debug)]
pub enum Exporter {
    /// OTLP over gRPC.
    OtlpGrpc(grpc::GrpcSink),
    /// OTLP over HTTP/protobuf.
    OtlpHttp(http::OtlpHttpSink),
    /// Grafana Pyroscope's push API.
    Pyroscope(pyroscope::PyroscopeSink),
}

impl Exporter {
    /// Starts the exporter on the runtime; it stops on `shutdown`.
    pub fn spawn(
        self,
        store: Arc<Store>,
        stats: Arc<ExporterStats>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        use tracing::Instrument as _;
        let span = tracing::info_span!("export", exporter = %stats.name);
        match self {
            Exporter::OtlpGrpc(sink) => {
                tokio::spawn(run(sink, store, stats, shutdown).instrument(span))
            }
            Exporter::OtlpHttp(sink) => {
                tokio::spawn(run(sink, store, stats, shutdown).instrument(span))
            }
            Exporter::Pyroscope(sink) => {
                tokio::spawn(run(sink, store, stats, shutdown).instrument(span))
            }
        }
    }
}

/// Runs `work` (store reads and writes, encoding) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("exporter store work panicked")
}
