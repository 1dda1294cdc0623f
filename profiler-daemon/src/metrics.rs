//! The HTTP endpoint of `--metrics-listen`: Prometheus metrics on `/metrics` and a health check
//! on `/healthz`, on a listener of its own so that probes and scrapers need no gRPC.
//!
//! The exposition text (format 0.0.4) is written by hand: a few dozen series do not need a
//! metrics framework, and every value is read from the counters `Status` reports, at scrape
//! time, so the two never disagree.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::{self, Write as _},
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    aggregate::{AggregatorHandle, AggregatorStatus},
    server::{DaemonInfo, GrpcMethod, GrpcStats, cpu_seconds, rss_bytes},
    store::Store,
};

/// The collector drains the ring buffer every 100 ms; this long without a drain means the
/// pipeline is stuck and `/healthz` fails.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How long a scrape or a probe waits for the aggregator (probes time out after 2 s).
const AGGREGATOR_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shutdown waits for the requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The media type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics address could not be bound.
#[derive(Debug, Error)]
#[error(
    "cannot listen for metrics on {addr}: {source}; choose another address with \
     --metrics-listen ADDR:PORT, or turn the endpoint off with --metrics-listen off"
)]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })
}

/// Where the metrics come from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Pipeline, symbolizer and process counters.
    pub info: Arc<DaemonInfo>,
    /// Windows held in memory; also a liveness check of the aggregator.
    pub aggregator: AggregatorHandle,
    /// The on-disk store, if there is one.
    pub store: Option<Arc<Store>>,
    /// Requests per gRPC method.
    pub grpc: Arc<GrpcStats>,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`, then gives the requests in
/// progress a moment to finish.
pub async fn serve(listener: TcpListener, sources: Sources, shutdown: CancellationToken) {
    let sources = Arc::new(sources);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Reaps finished connections, which makes room for new ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(connection(stream, sources.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        // Typically out of file descriptors: wait rather than spin.
                        warn!(error = %e, "accepting a metrics connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    // Dropping the set aborts whatever is still running after the grace period.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
}

/// Serves one HTTP/1.1 connection; at `shutdown`, finishes its current request and closes.
async fn connection(stream: TcpStream, sources: Arc<Sources>, shutdown: CancellationToken) {
    let service = service_fn(move |request: Request<Incoming>| {
        let sources = sources.clone();
        async move { Ok::<_, Infallible>(respond(&request, &sources).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "a metrics connection failed");
    }
}

async fn respond(request: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, "not found: try /metrics or /healthz\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/metrics" {
        let mut response = text(StatusCode::OK, render(sources).await);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        return response;
    }
    match health(sources).await {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The aggregator's sizes, or `None` when it has stopped or does not answer in time.
async fn aggregator_status(aggregator: &AggregatorHandle) -> Option<AggregatorStatus> {
    tokio::time::timeout(AGGREGATOR_TIMEOUT, aggregator.status()).await.ok()?.ok()
}

/// Whether the pipeline is alive: the collector drained the ring buffer within
/// [`STALE_AFTER`], and the aggregator answers (it stops when the symbolizer does). The error
/// says what is wrong.
pub async fn health(sources: &Sources) -> Result<(), String> {
    let since_drain = sources.info.stats.since_drain();
    judge(since_drain, aggregator_status(&sources.aggregator).await.is_some())
}

fn judge(since_drain: Option<Duration>, aggregator_answers: bool) -> Result<(), String> {
    match since_drain {
        None => return Err("the collector has not drained the ring buffer yet".into()),
        Some(age) if age > STALE_AFTER => {
            return Err(format!(
                "the collector last drained the ring buffer {:.1}s ago (more than {}s)",
                age.as_secs_f64(),
                STALE_AFTER.as_secs()
            ));
        }
        Some(_) => {}
    }
    if !aggregator_answers {
        return Err(format!(
            "the aggregator does not answer (stopped, or busy for more than {}s)",
            AGGREGATOR_TIMEOUT.as_secs()
        ));
    }
    Ok(())
}

/// Processes in `profilerd_process_resident_bytes` (those with the most): a bound on the
/// series a host exports whatever runs on it.
const MAX_PROCESS_SERIES: usize = 100;

/// The Prometheus exposition text of every metric, read now.
pub async fn render(sources: &Sources) -> String {
    let aggregation = aggregator_status(&sources.aggregator).await;
    let info = &*sources.info;
    let stats = &info.stats;
    let mut out = Exposition::default();

    out.family("profilerd_build_info", Kind::Gauge, "Always 1; the version is a label.")
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    let start = SystemTime::now()
        .checked_sub(info.started.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    out.single(
        "profilerd_start_time_seconds",
        Kind::Gauge,
        "When sampling started, in seconds since the Unix epoch.",
        start,
    );
    out.single(
        "profilerd_sampling_frequency_hertz",
        Kind::Gauge,
        "Samples per second and CPU; samples divided by it are CPU seconds.",
        info.frequency,
    );

    out.single(
        "profilerd_samples_total",
        Kind::Counter,
        "Samples that reached the aggregator.",
        stats.aggregated_total(),
    );
    out.single(
        "profilerd_late_samples_total",
        Kind::Counter,
        "Samples that reached the aggregator after their window had closed (kept in the oldest \
         open window).",
        stats.late_total(),
    );
    out.single(
        "profilerd_kernel_samples_total",
        Kind::Counter,
        "Sample records the kernel wrote to the ring buffer.",
        stats.kernel_sampled(),
    );
    out.single(
        "profilerd_off_cpu_switches_recorded_total",
        Kind::Counter,
        "Switches off the CPU the kernel recorded (the off-CPU sampler's captures).",
        stats.off_cpu_captured(),
    );
    out.single(
        "profilerd_oom_kills_total",
        Kind::Counter,
        "Processes the kernel killed for lack of memory (the global OOM killer or a cgroup's); \
         profctl status names the most recent.",
        stats.oom_kills(),
    );
    exporter_metrics(&mut out, &info.exporters);
    {
        let mut latest =
            info.resident.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        latest.sort_by_key(|(l, s)| (std::cmp::Reverse(s.resident), l.pid));
        let mut family = out.family(
            "profilerd_process_resident_bytes",
            Kind::Gauge,
            "Resident memory of the processes with the most, at the last reading (alert on \
             growth with deriv()); profctl memory has the history.",
        );
        for (labels, statm) in latest.iter().take(MAX_PROCESS_SERIES) {
            let pid = labels.pid.to_string();
            family.sample(
                &[
                    ("pid", &pid),
                    ("comm", &labels.comm),
                    ("container", &labels.container),
                    ("namespace", &labels.namespace),
                    ("pod", &labels.pod),
                ],
                statm.resident,
            );
        }
    }
    let unwind = &stats.unwind;
    out.single(
        "profilerd_native_unwind_processes",
        Kind::Gauge,
        "Processes whose code lacks frame pointers: their samples copy the user stack, which is \
         unwound with the files' unwind tables.",
        unwind.processes.load(Relaxed),
    );
    out.single(
        "profilerd_native_unwind_files",
        Kind::Gauge,
        "Files whose unwind tables are mapped for unwinding (at most 512, least recently used \
         out).",
        unwind.files.load(Relaxed),
    );
    out.single(
        "profilerd_native_unwind_table_bytes",
        Kind::Gauge,
        "Bytes of the mapped unwind tables (each file's .eh_frame and its index, and its DWARF \
         call frame information when it has some).",
        unwind.table_bytes.load(Relaxed),
    );
    {
        let mut family = out.family(
            "profilerd_native_unwind_samples_total",
            Kind::Counter,
            "Samples with a stack copy, by whether unwinding found a caller (failed ones keep \
             the frame-pointer walk).",
        );
        family.sample(&[("result", "unwound")], unwind.unwound.load(Relaxed));
        family.sample(&[("result", "failed")], unwind.failed.load(Relaxed));
    }
    out.single(
        "profilerd_native_unwind_ran_out_total",
        Kind::Counter,
        "Samples whose unwinding went past the end of their stack copy; the process's copy then \
         grows, up to 8 KiB.",
        unwind.ran_out.load(Relaxed),
    );
    out.single(
        "profilerd_native_unwind_copied_bytes_total",
        Kind::Counter,
        "Bytes of user stack copied by samples (each process's copy follows what unwinding \
         read).",
        unwind.copied_bytes.load(Relaxed),
    );
    {
        let open_blocks = aggregation.as_ref().map_or(0, |a| a.open_blocks);
        let caches = crate::server::caches(info, open_blocks);
        let mut family = out.family(
            "profilerd_cache_entries",
            Kind::Gauge,
            "Entries held by each bounded cache or table of the daemon.",
        );
        for c in &caches {
            family.sample(&[("cache", &c.name)], c.entries);
        }
        let mut family = out.family(
            "profilerd_cache_capacity",
            Kind::Gauge,
            "The most entries each bounded cache or table of the daemon holds.",
        );
        for c in &caches {
            family.sample(&[("cache", &c.name)], c.capacity);
        }
        let mut family = out.family(
            "profilerd_cache_bytes",
            Kind::Gauge,
            "Approximate bytes held by each bounded cache or table of the daemon.",
        );
        for c in &caches {
            family.sample(&[("cache", &c.name)], c.bytes);
        }
        let window_bytes = aggregation.as_ref().map_or(0, |a| a.bytes);
        if let Some(memory) = crate::server::memory(info, window_bytes) {
            out.single(
                "profilerd_memory_max_bytes",
                Kind::Gauge,
                "--max-memory: the bound on everything the daemon holds.",
                memory.max_bytes,
            );
            let mut family = out.family(
                "profilerd_memory_bytes",
                Kind::Gauge,
                "Approximate bytes each part of the daemon holds under --max-memory.",
            );
            for part in &memory.parts {
                family.sample(&[("part", &part.name)], part.bytes);
            }
            out.single(
                "profilerd_memory_sheds_total",
                Kind::Counter,
                "Times the caches were asked to drop their least recently used entries to stay \
                 inside --max-memory.",
                memory.sheds,
            );
            out.single(
                "profilerd_memory_shed_entries_total",
                Kind::Counter,
                "Cache entries dropped to stay inside --max-memory.",
                memory.shed_entries,
            );
        }
    }
    out.single(
        "profilerd_native_unwind_table_full_total",
        Kind::Counter,
        "Processes left to the frame-pointer walk because the kernel's table of copied \
         processes (16,384) was full.",
        unwind.table_full.load(Relaxed),
    );
    out.single(
        "profilerd_off_cpu_scale",
        Kind::Gauge,
        "Factor on every thread's capture probability that keeps the off-CPU sampler inside \
         --off-cpu-budget (1 when it is within budget).",
        stats.off_cpu_scale(),
    );
    out.single(
        "profilerd_kernel_idle_samples_skipped_total",
        Kind::Counter,
        "Samples of the idle task the kernel skipped (see --include-idle).",
        stats.kernel_idle_skipped(),
    );
    let mut drops = out.family(
        "profilerd_dropped_samples_total",
        Kind::Counter,
        "Samples lost or degraded, by reason.",
    );
    for (reason, count) in stats.drops().iter() {
        drops.sample(&[("reason", reason.name())], count);
    }

    out.single(
        "profilerd_processes",
        Kind::Gauge,
        "Processes tracked by the collector.",
        info.processes.load(Relaxed),
    );
    let mut versions = BTreeMap::<String, u64>::new();
    for runtime in info.runtimes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        *versions.entry(python_version(&runtime.description).to_owned()).or_default() += 1;
    }
    let mut python = out.family(
        "profilerd_python_processes",
        Kind::Gauge,
        "Python processes by CPython version; \"unsupported\" ones get native stacks only, \
         \"pending\" ones have not initialized their interpreter yet.",
    );
    for (version, count) in &versions {
        python.sample(&[("version", version)], *count);
    }

    if let Some(pods) = &info.pods {
        let h = pods.health();
        out.single(
            "profilerd_kubernetes_pods",
            Kind::Gauge,
            "Pods on this node in the last listing from the Kubernetes API.",
            h.pods,
        );
        out.family(
            "profilerd_kubernetes_listings_total",
            Kind::Counter,
            "Listings of this node's pods, by result.",
        )
        .sample(&[("result", "ok")], h.listings)
        .sample(&[("result", "error")], h.errors);
    }

    let sym = &info.symbolizer;
    out.single(
        "profilerd_symbol_cache_hits_total",
        Kind::Counter,
        "Frame lookups answered from the symbol caches.",
        sym.hits.load(Relaxed),
    );
    out.single(
        "profilerd_symbol_cache_misses_total",
        Kind::Counter,
        "Frame lookups that went to the symbolizer.",
        sym.misses.load(Relaxed),
    );
    out.single(
        "profilerd_symbolizer_restarts_total",
        Kind::Counter,
        "Times the symbolizer was started afresh to close the files it held (64 at most).",
        sym.restarts.load(Relaxed),
    );
    if let Some(d) = sym.debug_files.get() {
        out.single(
            "profilerd_debug_files_found_total",
            Kind::Counter,
            "Stripped binaries named through a separate debug file found locally.",
            d.found.load(Relaxed),
        );
        if d.debuginfod.load(Relaxed) {
            out.family(
                "profilerd_debuginfod_requests_total",
                Kind::Counter,
                "Debug files asked of the debuginfod servers, by result.",
            )
            .sample(&[("result", "downloaded")], d.downloads.load(Relaxed))
            .sample(&[("result", "not_found")], d.not_found.load(Relaxed))
            .sample(&[("result", "failed")], d.failures.load(Relaxed))
            .sample(&[("result", "dropped")], d.dropped.load(Relaxed));
            out.single(
                "profilerd_debuginfod_download_bytes_total",
                Kind::Counter,
                "Bytes of debug files downloaded.",
                d.download_bytes.load(Relaxed),
            );
            out.single(
                "profilerd_debuginfod_cache_bytes",
                Kind::Gauge,
                "Bytes of downloaded debug files kept (--debuginfod-cache-size).",
                d.cache_bytes.load(Relaxed),
            );
        }
    }
    out.family("profilerd_symbol_cache_entries", Kind::Gauge, "Frames in the symbol caches.")
        .sample(&[("kind", "user")], sym.user_frames.load(Relaxed))
        .sample(&[("kind", "kernel")], sym.kernel_frames.load(Relaxed));
    out.family(
        "profilerd_symbol_cache_capacity",
        Kind::Gauge,
        "Frames the user symbol cache holds at most (--symbol-cache-size).",
    )
    .sample(&[("kind", "user")], sym.user_capacity.load(Relaxed));
    out.single(
        "profilerd_code_cache_entries",
        Kind::Gauge,
        "Python code objects cached (names and line tables).",
        sym.code_objects.load(Relaxed),
    );
    out.single(
        "profilerd_code_cache_bytes",
        Kind::Gauge,
        "What the cached Python code objects weigh.",
        sym.code_bytes.load(Relaxed),
    );
    out.single(
        "profilerd_code_cache_max_bytes",
        Kind::Gauge,
        "The most the cached Python code objects may weigh.",
        sym.code_bytes_limit.load(Relaxed),
    );

    // Without an answer from the aggregator these series are left out rather than zeroed.
    if let Some(a) = aggregation {
        out.single(
            "profilerd_memory_windows",
            Kind::Gauge,
            "Closed windows held in memory for recent queries.",
            a.windows,
        );
        out.single(
            "profilerd_memory_windows_bytes",
            Kind::Gauge,
            "Approximate bytes of the closed windows held in memory (--max-memory).",
            a.bytes,
        );
        out.single(
            "profilerd_memory_evicted_windows_total",
            Kind::Counter,
            "Closed windows dropped from memory by age or size.",
            a.evicted,
        );
        out.single(
            "profilerd_open_window_stacks",
            Kind::Gauge,
            "Distinct stacks in the open window (--max-stacks-per-window).",
            a.open_stacks,
        );
    }
    if let Some(store) = &sources.store {
        let s = store.status();
        out.single(
            "profilerd_unstored_windows_total",
            Kind::Counter,
            "Closed windows that could not be stored (the writer was behind, or a write failed).",
            s.unstored,
        );
        out.single("profilerd_store_bytes", Kind::Gauge, "Bytes of stored records.", s.bytes);
        out.single(
            "profilerd_store_file_bytes",
            Kind::Gauge,
            "Size of the store's database file.",
            s.file_bytes,
        );
        out.single("profilerd_store_windows", Kind::Gauge, "Windows in the store.", s.windows);
        out.single(
            "profilerd_store_evicted_windows_total",
            Kind::Counter,
            "Windows dropped from the store by --retention or --max-disk.",
            s.evicted,
        );
        out.single(
            "profilerd_store_dictionary_entries",
            Kind::Gauge,
            "Distinct frames, stacks and label sets in the store.",
            s.dictionary,
        );
        out.single(
            "profilerd_store_dictionary_swept_total",
            Kind::Counter,
            "Frames, stacks and label sets forgotten once no stored window referred to them.",
            s.dictionary_swept,
        );
        out.single(
            "profilerd_store_dictionary_cached_entries",
            Kind::Gauge,
            "Dictionary entries whose ids are remembered in memory for writing (bounded).",
            s.dictionary_cached,
        );
        out.single(
            "profilerd_store_dictionary_pending_rows",
            Kind::Gauge,
            "Dictionary rows waiting to be written because writes failed (at most 65,536, then \
             dropped and written again by later windows).",
            s.dictionary_pending,
        );
        out.single(
            "profilerd_store_dictionary_restarts_total",
            Kind::Counter,
            "Times the rows waiting for failed writes passed their bound and were dropped.",
            s.dictionary_restarts,
        );
    }

    out.single(
        "profilerd_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time of the daemon.",
        cpu_seconds(),
    );
    out.single(
        "profilerd_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of the daemon.",
        rss_bytes(),
    );
    let cost = crate::loader::kernel_cost(info.program_id).unwrap_or_default();
    out.single(
        "profilerd_kernel_run_time_seconds_total",
        Kind::Counter,
        "Run time of the sampling program in the kernel; 0 unless BPF statistics are on \
         (--bpf-stats).",
        Duration::from_nanos(cost.run_time_ns).as_secs_f64(),
    );
    out.single(
        "profilerd_kernel_runs_total",
        Kind::Counter,
        "Runs of the sampling program; 0 unless BPF statistics are on (--bpf-stats).",
        cost.run_count,
    );

    let grpc = &sources.grpc;
    let mut requests =
        out.family("profilerd_grpc_requests_total", Kind::Counter, "gRPC requests, by method.");
    for method in GrpcMethod::ALL {
        requests.sample(&[("method", method.name())], grpc.requests(method));
    }
    let mut errors = out.family(
        "profilerd_grpc_errors_total",
        Kind::Counter,
        "gRPC requests that ended with an error (cancelled ones included), by method.",
    );
    for method in GrpcMethod::ALL {
        errors.sample(&[("method", method.name())], grpc.errors(method));
    }
    out.text
}

/// The `version` label of a runtime description: `3.11.2` from
/// `CPython 3.11.2, static, offsets from table`, `unsupported` for native stacks only, and
/// `pending` for an interpreter that is not initialized yet.
fn python_version(description: &str) -> &str {
    // An unsupported interpreter's description names its version too.
    if description.contains("native stacks only") {
        return "unsupported";
    }
    let version = description.strip_prefix("CPython ").map_or("", |rest| {
        let end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        rest[..end].trim_end_matches('.')
    });
    if version.starts_with(|c: char| c.is_ascii_digit()) {
        version
    } else if description.contains("not initialized") {
        "pending"
    } else {
        "unknown"
    }
}

/// A metric type.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
}

/// Each exporter's deliveries and failures, labelled by its name.
fn exporter_metrics(out: &mut Exposition, exporters: &[Arc<crate::fleet::ExporterStats>]) {
    if exporters.is_empty() {
        return;
    }
    type Read = fn(&crate::fleet::ExporterStats) -> u64;
    let counters: [(&'static str, &str, Read); 6] = [
        (
            "profilerd_export_evicted_windows_total",
            "Windows the store's retention dropped before they were delivered.",
            |e| e.evicted_windows.load(Relaxed),
        ),
        ("profilerd_export_windows_total", "Windows delivered to the receiver.", |e| {
            e.windows.load(Relaxed)
        }),
        ("profilerd_export_bytes_total", "Bytes of requests delivered to the receiver.", |e| {
            e.bytes.load(Relaxed)
        }),
        (
            "profilerd_export_failures_total",
            "Failed export attempts (each retried with backoff unless refused).",
            |e| e.failures.load(Relaxed),
        ),
        (
            "profilerd_export_refused_windows_total",
            "Windows the receiver refused as invalid, which were skipped.",
            |e| e.refused_windows.load(Relaxed),
        ),
        (
            "profilerd_export_rejected_profiles_total",
            "Profiles the receiver reported rejecting in requests it accepted.",
            |e| e.rejected_profiles.load(Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        let mut family = out.family(name, Kind::Counter, help);
        for e in exporters {
            family.sample(&[("exporter", &e.name)], read(e));
        }
    }
    let mut family = out.family(
        "profilerd_export_delivered_until_seconds",
        Kind::Gauge,
        "End of the last window delivered, in seconds since the Unix epoch (time() minus this \
         is the exporter's lag).",
    );
    for e in exporters {
        family.sample(&[("exporter", &e.name)], e.delivered_until_ns.load(Relaxed) as f64 / 1e9);
    }
}

/// A sample value: integers stay exact, floats use Prometheus's spelling of the specials.
#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Text format 0.0.4. A family holds the writer while its samples are written, so the samples
/// of a family cannot be split up or come before its `# TYPE` line.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts family `name` with its `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { text: &mut self.text, name }
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &'static str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help).sample(&[], value);
    }
}

/// The family being written.
#[derive(Debug)]
struct Family<'a> {
    text: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample. Label names are identifiers chosen here; values are escaped.
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.text.push_str(self.name);
        for (i, (name, value)) in labels.iter().enumerate() {
            self.text.push(if i == 0 { '{' } else { ',' });
            self.text.push_str(name);
            self.text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str(r"\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str(r"\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        sync::{Mutex, atomic::AtomicU64},
        time::Instant,
    };

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        aggregate::Retention,
        aggregate::{
            Resolved,
            actor::{self, AggregatorConfig},
        },
        collector::RuntimeStatus,
        stats::{DropReason, PipelineStats},
        store::DiskRetention,
        symbolize::SymbolizerStats,
    };

    /// Sources over an empty in-memory pipeline. The aggregator runs while the sender lives.
    fn sources(runtimes: &[&str], store: Option<Arc<Store>>) -> (Sources, mpsc::Sender<Resolved>) {
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel(1);
        let config = AggregatorConfig {
            window: Duration::from_secs(3600),
            max_stacks: 100,
            retention: Retention { max_age: Duration::from_secs(3600), max_bytes: 1 << 20 },
        };
        let (aggregator, _task) = actor::spawn(config, rx, stats.clone(), None);
        let runtimes = runtimes
            .iter()
            .zip(1..)
            .map(|(d, pid)| RuntimeStatus { pid, comm: "python3".into(), description: (*d).into() })
            .collect();
        let info = Arc::new(DaemonInfo {
            frequency: 99,
            cpus: 2,
            started: Instant::now(),
            window: config.window,
            max_stacks: 100,
            stats,
            symbolizer: Arc::new(SymbolizerStats::default()),
            processes: Arc::new(AtomicU64::new(7)),
            program_id: 0,
            runtimes: Arc::new(Mutex::new(runtimes)),
            pods: None,
            oom_kills: Default::default(),
            resident: Default::default(),
            exporters: Vec::new(),
            memory: None,
        });
        (Sources { info, aggregator, store, grpc: Arc::default() }, tx)
    }

    fn valid_name(name: &str) -> bool {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// Checks the text format rules a scraper relies on, and returns the family names.
    fn check_well_formed(text: &str) -> HashSet<&str> {
        let mut families = HashSet::new();
        let mut help = None;
        let mut current = None;
        assert!(text.ends_with('\n'), "the last line ends too");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_name(name), "{line}");
                assert!(families.insert(name), "family {name} appears twice");
                (help, current) = (Some(name), None);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help.take(), Some(name), "{line}: not right after its HELP line");
                assert!(
                    kind == "gauge" || (kind == "counter" && name.ends_with("_total")),
                    "{line}"
                );
                current = Some(name);
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                assert_eq!(current, Some(name), "{line}: no TYPE line of its own before it");
                let labels = &series[name.len()..];
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with("\"}")),
                    "{line}"
                );
                assert!(value.parse::<f64>().is_ok(), "{line}: bad value");
            }
        }
        assert_eq!(help, None, "a HELP line without its TYPE line");
        families
    }

    #[tokio::test]
    async fn every_sample_follows_the_type_line_of_its_family() {
        let dir = std::env::temp_dir().join(format!("profilerd-metrics-{}", std::process::id()));
        let retention = DiskRetention { max_age: Duration::from_secs(3600), max_bytes: 1 << 30 };
        let store = Arc::new(Store::open(&dir, retention, false).unwrap());
        let (sources, _input) =
            sources(&["CPython 3.11.2, static, offsets from table"], Some(store));
        sources.info.stats.record_drop(DropReason::SymbolizerQueueFull);
        sources.info.resident.lock().unwrap().push((
            Arc::new(crate::aggregate::Labels {
                pid: 42,
                comm: "api".into(),
                ..crate::aggregate::Labels::default()
            }),
            crate::resident::Statm { resident: 1 << 20, shared: 0 },
        ));
        let text = render(&sources).await;
        let _ = std::fs::remove_dir_all(&dir);
        let families = check_well_formed(&text);
        for name in [
            "profilerd_samples_total",
            "profilerd_late_samples_total",
            "profilerd_kernel_samples_total",
            "profilerd_oom_kills_total",
            "profilerd_dropped_samples_total",
            "profilerd_processes",
            "profilerd_python_processes",
            "profilerd_symbol_cache_hits_total",
            "profilerd_symbol_cache_misses_total",
            "profilerd_symbol_cache_entries",
            "profilerd_memory_windows",
            "profilerd_memory_windows_bytes",
            "profilerd_store_bytes",
            "profilerd_store_file_bytes",
            "profilerd_store_windows",
            "profilerd_store_evicted_windows_total",
            "profilerd_store_dictionary_swept_total",
            "profilerd_cpu_seconds_total",
            "profilerd_resident_memory_bytes",
            "profilerd_kernel_run_time_seconds_total",
            "profilerd_kernel_runs_total",
            "profilerd_grpc_requests_total",
            "profilerd_grpc_errors_total",
        ] {
            assert!(families.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.contains("\nprofilerd_processes 7\n"), "{text}");
        assert!(
            text.contains(
                "\nprofilerd_process_resident_bytes{pid=\"42\",comm=\"api\",container=\"\",\
                 namespace=\"\",pod=\"\"} 1048576\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nprofilerd_symbol_cache_entries{kind=\"kernel\"} 0\n"), "{text}");
        assert!(text.contains("\nprofilerd_grpc_requests_total{method=\"SetPythonCalls\"} 0\n"));
    }

    #[tokio::test]
    async fn debug_file_series_appear_once_debug_files_are_on() {
        let (sources, _input) = sources(&[], None);
        let without = render(&sources).await;
        assert!(!without.contains("debug"), "{without}");
        let debug = Arc::new(crate::debuginfo::DebugInfoStats::default());
        debug.debuginfod.store(true, Relaxed);
        debug.downloads.store(2, Relaxed);
        debug.failures.store(3, Relaxed);
        sources.info.symbolizer.debug_files.set(debug).unwrap();
        let text = render(&sources).await;
        let families = check_well_formed(&text);
        assert!(families.contains("profilerd_debug_files_found_total"), "{text}");
        assert!(text.contains("\nprofilerd_debuginfod_requests_total{result=\"downloaded\"} 2\n"));
        assert!(text.contains("\nprofilerd_debuginfod_requests_total{result=\"failed\"} 3\n"));
        assert!(text.contains("\nprofilerd_debuginfod_cache_bytes 0\n"), "{text}");
    }

    #[tokio::test]
    async fn every_drop_reason_is_reported_even_at_zero() {
        let (sources, _input) = sources(&[], None);
        sources.info.stats.record_drop(DropReason::StackTableFull);
        let text = render(&sources).await;
        for reason in DropReason::ALL {
            let count = u64::from(reason == DropReason::StackTableFull);
            let line = format!(
                "profilerd_dropped_samples_total{{reason=\"{}\"}} {count}\n",
                reason.name()
            );
            assert!(text.contains(&line), "{line}missing:\n{text}");
        }
        // No store: its series are left out rather than reported as zero.
        assert!(!text.contains("profilerd_store_"), "{text}");
    }

    #[tokio::test]
    async fn python_processes_are_counted_by_version() {
        let (sources, _input) = sources(
            &[
                "CPython 3.11.2, static, offsets from table",
                "CPython 3.11.2, shared libpython, offsets from table; calls counted for 4s",
                "CPython 3.13, static, _Py_DebugOffsets",
                "CPython 3.16.0a2: debug offsets layout not known to this profilerd 0.1.0; native stacks only",
                "CPython, interpreter not initialized yet",
            ],
            None,
        );
        let text = render(&sources).await;
        let lines: Vec<_> =
            text.lines().filter(|l| l.starts_with("profilerd_python_processes{")).collect();
        assert_eq!(
            lines,
            [
                "profilerd_python_processes{version=\"3.11.2\"} 2",
                "profilerd_python_processes{version=\"3.13\"} 1",
                "profilerd_python_processes{version=\"pending\"} 1",
                "profilerd_python_processes{version=\"unsupported\"} 1",
            ]
        );
        assert_eq!(python_version("Java 21"), "unknown");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("x_total", Kind::Counter, "a \\ b\nc")
            .sample(&[("a", "q\"b\\s\nn"), ("b", "plain")], 3u64);
        assert_eq!(
            out.text,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\s\\nn\",b=\"plain\"} 3\n"
        );
    }

    #[test]
    fn values_use_the_prometheus_spelling() {
        let shown = [
            Value::from(0.25),
            Value::from(f64::NAN),
            Value::from(f64::INFINITY),
            Value::from(f64::NEG_INFINITY),
            Value::from(u64::MAX),
            Value::from(3usize),
        ]
        .map(|v| v.to_string());
        assert_eq!(shown, ["0.25", "NaN", "+Inf", "-Inf", "18446744073709551615", "3"]);
    }

    #[test]
    fn health_needs_a_recent_drain_and_an_answering_aggregator() {
        let recent = Some(Duration::from_millis(100));
        assert_eq!(judge(recent, true), Ok(()));
        assert!(judge(None, true).unwrap_err().contains("not drained"));
        let stale = judge(Some(Duration::from_secs(9)), true).unwrap_err();
        assert!(stale.contains("9.0s ago"), "{stale}");
        assert!(judge(recent, false).unwrap_err().contains("aggregator"));
    }

    #[tokio::test]
    async fn health_follows_the_pipeline() {
        let (sources, input) = sources(&[], None);
        assert!(health(&sources).await.is_err(), "nothing drained yet");
        sources.info.stats.drained();
        assert_eq!(health(&sources).await, Ok(()));
        // The aggregator stops once its input closes (the symbolizer stopped).
        drop(input);
        let mut result = Ok(());
        for _ in 0..100 {
            result = health(&sources).await;
            if result.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(result.unwrap_err().contains("aggregator"));
        let text = render(&sources).await;
        assert!(!text.contains("profilerd_memory_windows"), "{text}");
        check_well_formed(&text);
    }
}
