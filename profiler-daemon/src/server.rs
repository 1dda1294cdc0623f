//! The gRPC server: thin handlers over the aggregator, and the listeners they are served on.
//!
//! Library errors become `tonic::Status` here and nowhere else.

use std::{
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use profiler_proto::v1::{
    self,
    profiler_server::{Profiler, ProfilerServer},
};
use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{broadcast, mpsc, oneshot},
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::ServerTlsConfig};
use tracing::warn;

use crate::{
    aggregate::{
        AggregatorHandle, MergedProfile, Mode, SampleKind, Window, blocks::MAX_OPEN_BLOCKS,
    },
    caches::CacheSize,
    calls::CallsError,
    clock::now_ns,
    collector,
    config::{DaemonArgs, ListenAddr},
    export,
    query::{self, QueryError, QueryLimits, QueryPlan},
    selector::Selector,
    stats::{DropReason, DropSnapshot, PipelineStats},
    store::Store,
    symbolize::SymbolizerStats,
    timeline,
    tls::{self, PemFile, TlsError},
};

/// The collector's and the symbolizer's caches and tables, and the aggregator's open off-CPU
/// blocks, by name.
pub fn caches(info: &DaemonInfo, open_blocks: usize) -> Vec<v1::CacheStatus> {
    let mut all = info.stats.caches.sizes();
    all.extend(info.symbolizer.caches.sizes());
    all.push((
        "open off-CPU blocks",
        CacheSize {
            entries: open_blocks as u64,
            capacity: MAX_OPEN_BLOCKS as u64,
            bytes: crate::caches::table_bytes::<crate::aggregate::BlockStart>(open_blocks) as u64,
        },
    ));
    all.sort_by_key(|(name, _)| *name);
    all.into_iter()
        .map(|(name, size)| v1::CacheStatus {
            name: name.to_owned(),
            entries: size.entries,
            capacity: size.capacity,
            bytes: size.bytes,
        })
        .collect()
}

/// `--max-memory` and its parts, the recent windows' `window_bytes` among them.
pub fn memory(info: &DaemonInfo, window_bytes: usize) -> Option<v1::MemoryStatus> {
    let budget = info.memory.as_ref()?;
    let mut parts: Vec<v1::MemoryPartStatus> = budget
        .parts()
        .into_iter()
        .map(|p| v1::MemoryPartStatus { name: p.name.to_owned(), bytes: p.bytes as u64 })
        .collect();
    parts.push(v1::MemoryPartStatus { name: "recent windows".into(), bytes: window_bytes as u64 });
    Some(v1::MemoryStatus {
        max_bytes: budget.max_bytes() as u64,
        parts,
        window_room_bytes: budget.window_bytes() as u64,
        sheds: budget.sheds(),
        shed_entries: info.stats.caches.shed_total() + info.symbolizer.caches.shed_total(),
    })
}

/// Facts and counters that `Status` reports.
#[derive(Debug)]
pub struct DaemonInfo {
    /// Sampling frequency per CPU.
    pub frequency: u64,
    /// CPUs sampled.
    pub cpus: u32,
    /// When sampling started.
    pub started: Instant,
    /// Length of a window.
    pub window: Duration,
    /// Entries per window.
    pub max_stacks: u64,
    /// Pipeline counters.
    pub stats: Arc<PipelineStats>,
    /// Symbolizer caches.
    pub symbolizer: Arc<SymbolizerStats>,
    /// Processes tracked by the collector.
    pub processes: Arc<AtomicU64>,
    /// Kernel id of the sampling program.
    pub program_id: u32,
    /// What the collector found in each non-native process.
    pub runtimes: Arc<std::sync::Mutex<Vec<crate::collector::RuntimeStatus>>>,
    /// Pod names from the Kubernetes API, when on.
    pub pods: Option<crate::pods::PodNames>,
    /// The most recent OOM kills.
    pub oom_kills: Arc<crate::oom::KillLog>,
    /// The latest resident memory reading of each process.
    pub resident: crate::resident::Latest,
    /// The exporters' counters.
    pub exporters: Vec<Arc<crate::fleet::ExporterStats>>,
    /// `--max-memory` and how it is divided (absent in tests).
    pub memory: Option<Arc<crate::budget::MemoryBudget>>,
}

impl DaemonInfo {
    fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::try_from(self.frequency).unwrap_or(1).max(1)
    }
}

/// A gRPC method, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcMethod {
    /// `Query`.
    Query,
    /// `Watch` (counted when the stream opens).
    Watch,
    /// `Status`.
    Status,
    /// `SetPythonCalls`.
    SetPythonCalls,
    /// `MemoryTimeline`.
    MemoryTimeline,
}

impl GrpcMethod {
    /// Every method, in reporting order.
    pub const ALL: [GrpcMethod; 5] = [
        GrpcMethod::Query,
        GrpcMethod::Watch,
        GrpcMethod::Status,
        GrpcMethod::SetPythonCalls,
        GrpcMethod::MemoryTimeline,
    ];

    /// The method's name in the proto service.
    pub const fn name(self) -> &'static str {
        match self {
            GrpcMethod::Query => "Query",
            GrpcMethod::Watch => "Watch",
            GrpcMethod::Status => "Status",
            GrpcMethod::SetPythonCalls => "SetPythonCalls",
            GrpcMethod::MemoryTimeline => "MemoryTimeline",
        }
    }
}

/// Requests and failed requests per gRPC method since start, for metrics.
#[derive(Debug, Default)]
pub struct GrpcStats {
    requests: [AtomicU64; GrpcMethod::ALL.len()],
    errors: [AtomicU64; GrpcMethod::ALL.len()],
}

impl GrpcStats {
    /// Counts a request. It counts as an error too unless it ends with [`Call::ok`], so every
    /// `?` in a handler is counted, and so is a request the client gave up on (`CANCELLED`).
    fn call(&self, method: GrpcMethod) -> Call<'_> {
        self.requests[method as usize].fetch_add(1, Relaxed);
        Call { stats: self, method, ok: false }
    }

    /// Requests of `method` since start.
    pub fn requests(&self, method: GrpcMethod) -> u64 {
        self.requests[method as usize].load(Relaxed)
    }

    /// Requests of `method` that did not succeed, since start.
    pub fn errors(&self, method: GrpcMethod) -> u64 {
        self.errors[method as usize].load(Relaxed)
    }
}

/// One request in progress; see [`GrpcStats::call`].
#[must_use = "a call dropped without `ok` counts as an error"]
struct Call<'a> {
    stats: &'a GrpcStats,
    method: GrpcMethod,
    ok: bool,
}

impl Call<'_> {
    /// Ends the request successfully with `response`.
    fn ok<T>(mut self, response: T) -> Result<Response<T>, Status> {
        self.ok = true;
        Ok(Response::new(response))
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.ok {
            self.stats.errors[self.method as usize].fetch_add(1, Relaxed);
        }
    }
}

/// Implements `profiler.v1.Profiler`.
#[derive(Clone, Debug)]
pub struct ProfilerService {
    aggregator: AggregatorHandle,
    info: Arc<DaemonInfo>,
    collector: Option<mpsc::Sender<collector::Command>>,
    store: Option<Arc<Store>>,
    grpc: Arc<GrpcStats>,
    limits: QueryLimits,
}

impl ProfilerService {
    /// A service answering from `aggregator`.
    pub fn new(aggregator: AggregatorHandle, info: Arc<DaemonInfo>) -> ProfilerService {
        ProfilerService {
            aggregator,
            info,
            collector: None,
            store: None,
            grpc: Arc::default(),
            limits: QueryLimits::default(),
        }
    }

    /// The request counters of this service (shared by its clones), for metrics.
    pub fn grpc_stats(&self) -> Arc<GrpcStats> {
        self.grpc.clone()
    }

    /// Answers from the on-disk store too, for windows it has stored.
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Bounds each `Query` answer.
    pub fn with_limits(mut self, limits: QueryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Lets the service pass per-process settings to the collector.
    pub fn with_collector(mut self, commands: mpsc::Sender<collector::Command>) -> Self {
        self.collector = Some(commands);
        self
    }

    /// The tonic service.
    pub fn into_server(self) -> ProfilerServer<ProfilerService> {
        ProfilerServer::new(self)
    }
}

/// A request's selector, and its range with an open end (0) made now.
fn selector_and_range(
    filter: Option<v1::Filter>,
    range: Option<v1::TimeRange>,
) -> Result<(Selector, v1::TimeRange), Status> {
    let selector = Selector::from_proto(&filter.unwrap_or_default())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut range = range.unwrap_or_default();
    if range.end_unix_nanos == 0 {
        range.end_unix_nanos = now_ns() + 1;
    }
    Ok((selector, range))
}

fn drop_counts(drops: &DropSnapshot) -> Vec<v1::DropCount> {
    drops.iter().map(|(r, count)| v1::DropCount { reason: r.name().to_owned(), count }).collect()
}

#[tonic::async_trait]
impl Profiler for ProfilerService {
    async fn query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        let call = self.grpc.call(GrpcMethod::Query);
        let request = request.into_inner();
        let (selector, range) = selector_and_range(request.filter, request.range)?;
        let plan = QueryPlan {
            start_ns: range.start_unix_nanos,
            end_ns: range.end_unix_nanos,
            selector,
            mode: mode_of(request.mode)?,
            idle: request.idle,
            limits: self.limits,
        };
        let answer =
            query::run(&self.aggregator, self.store.clone(), plan).await.map_err(query_status)?;
        let period = self.info.period_ns();
        let mut stats = query_stats(&answer.merged);
        stats.unstored_windows = answer.unstored_windows;
        stats.missing_windows = answer.missing_windows;
        stats.truncated = answer.folded_entries > 0;
        stats.folded_entries = answer.folded_entries;
        stats.folded_samples = answer.folded.count;
        call.ok(v1::QueryResponse {
            profile: Some(export::pprof::build(&answer.merged, period)),
            stats: Some(stats),
        })
    }

    async fn memory_timeline(
        &self,
        request: Request<v1::MemoryTimelineRequest>,
    ) -> Result<Response<v1::MemoryTimelineResponse>, Status> {
        let call = self.grpc.call(GrpcMethod::MemoryTimeline);
        let request = request.into_inner();
        let (selector, range) = selector_and_range(request.filter, request.range)?;
        let end_ns = range.end_unix_nanos;
        let start_ns = if range.start_unix_nanos == 0 {
            end_ns - 3_600_000_000_000
        } else {
            range.start_unix_nanos
        };
        if start_ns >= end_ns || request.step_nanos < 0 {
            return Err(Status::invalid_argument(format!(
                "empty time range or negative step: start {start_ns}, end {end_ns}, step {}",
                request.step_nanos
            )));
        }
        let window_ns = i64::try_from(self.info.window.as_nanos()).unwrap_or(i64::MAX);
        let step_ns = timeline::step(start_ns, end_ns, request.step_nanos, window_ns);
        let windows = self
            .aggregator
            .windows(start_ns, end_ns)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let store = self.store.clone();
        let timelines = tokio::task::spawn_blocking(move || {
            timeline::build(store.as_deref(), &windows, (start_ns, end_ns), step_ns, &selector)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(query_status)?;
        let series = timelines
            .series
            .into_iter()
            .map(|((pid, _), s)| v1::MemorySeries {
                pid,
                comm: s.labels.comm.to_string(),
                exe: s.labels.exe.to_string(),
                container: s.labels.container.to_string(),
                pod: s.labels.pod.to_string(),
                namespace: s.labels.namespace.to_string(),
                points: s
                    .points
                    .iter()
                    .map(|p| v1::MemoryPoint {
                        time_unix_nanos: p.time_ns,
                        rss_bytes: p.rss(),
                        anon_bytes: p.anon,
                        file_bytes: p.file,
                        readings: p.readings,
                        oom_kills: p.oom_kills,
                    })
                    .collect(),
            })
            .collect();
        call.ok(v1::MemoryTimelineResponse {
            series,
            step_nanos: timelines.step_ns,
            missing_windows: timelines.missing_windows,
        })
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let call = self.grpc.call(GrpcMethod::Watch);
        let request = request.into_inner();
        let selector = Selector::from_proto(&request.filter.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (mode, idle) = (mode_of(request.mode)?, request.idle);
        let closed = self.aggregator.subscribe();
        let period = self.info.period_ns();
        // A small queue per client: while it is full, this client's task waits and the
        // broadcast buffer fills; beyond that the client misses windows, and is told.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(forward_windows(closed, tx, move |window| {
            let merged = MergedProfile::merge([window], &selector, mode, idle);
            v1::WatchResponse {
                profile: Some(export::pprof::build(&merged, period)),
                stats: Some(query_stats(&merged)),
                missed_windows: 0,
            }
        }));
        call.ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let call = self.grpc.call(GrpcMethod::Status);
        let aggregation =
            self.aggregator.status().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let info = &self.info;
        let sym = &info.symbolizer;
        let cost = crate::loader::kernel_cost(info.program_id).unwrap_or_default();
        call.ok(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            frequency_hz: u32::try_from(info.frequency).unwrap_or(u32::MAX),
            cpus: info.cpus,
            uptime_seconds: info.started.elapsed().as_secs(),
            samples: info.stats.aggregated_total(),
            drops: drop_counts(&info.stats.drops()),
            symbolizer: Some(v1::SymbolizerStatus {
                user_frames: sym.user_frames.load(Relaxed),
                user_frames_capacity: sym.user_capacity.load(Relaxed),
                kernel_frames: sym.kernel_frames.load(Relaxed),
                code_objects: sym.code_objects.load(Relaxed),
                code_bytes: sym.code_bytes.load(Relaxed),
                code_bytes_limit: sym.code_bytes_limit.load(Relaxed),
                hits: sym.hits.load(Relaxed),
                misses: sym.misses.load(Relaxed),
                debug_files: sym.debug_files.get().map(|d| v1::DebugFilesStatus {
                    found: d.found.load(Relaxed),
                    debuginfod: d.debuginfod.load(Relaxed),
                    downloads: d.downloads.load(Relaxed),
                    download_bytes: d.download_bytes.load(Relaxed),
                    not_found: d.not_found.load(Relaxed),
                    failures: d.failures.load(Relaxed),
                    dropped: d.dropped.load(Relaxed),
                    cache_bytes: d.cache_bytes.load(Relaxed),
                    last_error: d.last_error(),
                }),
            }),
            aggregation: Some(v1::AggregationStatus {
                window_seconds: info.window.as_secs(),
                windows: aggregation.windows as u64,
                open_stacks: aggregation.open_stacks as u64,
                max_stacks_per_window: info.max_stacks,
                bytes: aggregation.bytes as u64,
                late_samples: info.stats.late_total(),
            }),
            processes: u32::try_from(info.processes.load(Relaxed)).unwrap_or(u32::MAX),
            caches: caches(info, aggregation.open_blocks),
            memory: memory(info, aggregation.bytes),
            native_unwind: Some(v1::NativeUnwindStatus {
                processes: info.stats.unwind.processes.load(Relaxed),
                files: info.stats.unwind.files.load(Relaxed),
                table_bytes: info.stats.unwind.table_bytes.load(Relaxed),
                max_files: crate::unwind::MAX_FILES as u64,
                unwound: info.stats.unwind.unwound.load(Relaxed),
                failed: info.stats.unwind.failed.load(Relaxed),
                ran_out: info.stats.unwind.ran_out.load(Relaxed),
                copied_bytes: info.stats.unwind.copied_bytes.load(Relaxed),
                max_copy_bytes: profiler_common::sample::STACK_COPY_MAX as u64,
                table_full: info.stats.unwind.table_full.load(Relaxed),
            }),
            rss_bytes: rss_bytes(),
            cpu_seconds: cpu_seconds(),
            kernel_run_time_ns: cost.run_time_ns,
            kernel_run_count: cost.run_count,
            runtimes: info
                .runtimes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|r| v1::RuntimeStatus {
                    pid: r.pid,
                    comm: r.comm.clone(),
                    description: r.description.clone(),
                })
                .collect(),
            store: self.store.as_ref().map(|store| {
                let s = store.status();
                v1::StoreStatus {
                    path: s.path.display().to_string(),
                    bytes: s.bytes,
                    file_bytes: s.file_bytes,
                    windows: s.windows,
                    evicted: s.evicted,
                    dictionary: s.dictionary,
                    unstored: s.unstored,
                    dictionary_swept: s.dictionary_swept,
                    dictionary_cached: s.dictionary_cached,
                    dictionary_pending: s.dictionary_pending,
                    dictionary_restarts: s.dictionary_restarts,
                }
            }),
            kubernetes: info.pods.as_ref().map(|pods| {
                let h = pods.health();
                v1::KubernetesStatus {
                    node: h.node,
                    pods: h.pods,
                    listings: h.listings,
                    errors: h.errors,
                    last_error: h.last_error.unwrap_or_default(),
                }
            }),
            oom_kills_total: info.stats.oom_kills(),
            oom_kills: info
                .oom_kills
                .recent()
                .into_iter()
                .map(|k| v1::OomKill {
                    time_unix_nanos: k.time_ns,
                    pid: k.labels.pid,
                    comm: k.labels.comm.to_string(),
                    exe: k.labels.exe.to_string(),
                    container: k.labels.container.to_string(),
                    pod: k.labels.pod.to_string(),
                    namespace: k.labels.namespace.to_string(),
                    rss_bytes: k.rss_bytes,
                })
                .collect(),
            exporters: info
                .exporters
                .iter()
                .map(|e| v1::ExporterStatus {
                    name: e.name.clone(),
                    windows: e.windows.load(Relaxed),
                    requests: e.requests.load(Relaxed),
                    bytes: e.bytes.load(Relaxed),
                    failures: e.failures.load(Relaxed),
                    refused_windows: e.refused_windows.load(Relaxed),
                    rejected_profiles: e.rejected_profiles.load(Relaxed),
                    delivered_until_unix_nanos: e.delivered_until_ns.load(Relaxed),
                    last_error: e.last_error(),
                    evicted_windows: e.evicted_windows.load(Relaxed),
                })
                .collect(),
        })
    }

    async fn set_python_calls(
        &self,
        request: Request<v1::SetPythonCallsRequest>,
    ) -> Result<Response<v1::SetPythonCallsResponse>, Status> {
        let call = self.grpc.call(GrpcMethod::SetPythonCalls);
        let v1::SetPythonCallsRequest { pid, enabled } = request.into_inner();
        let collector = self
            .collector
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this server does not sample processes"))?;
        let (reply, answer) = oneshot::channel();
        let gone = || Status::unavailable("profilerd is shutting down");
        collector
            .send(collector::Command::SetCalls { pid, enable: enabled, reply })
            .await
            .map_err(|_| gone())?;
        let message = answer.await.map_err(|_| gone())?.map_err(|e| calls_status(&e))?;
        call.ok(v1::SetPythonCallsResponse { message })
    }
}

/// Sends each closed window, as `build` renders it, to one watcher until it hangs up. While
/// the watcher's queue is full this task waits and the broadcast buffer fills; beyond that the
/// watcher misses windows, and the next message says how many.
pub async fn forward_windows(
    mut closed: broadcast::Receiver<Arc<Window>>,
    tx: mpsc::Sender<Result<v1::WatchResponse, Status>>,
    build: impl Fn(&Window) -> v1::WatchResponse + Send + Sync + 'static,
) {
    let build = Arc::new(build);
    let mut missed = 0u64;
    loop {
        let window = match closed.recv().await {
            Ok(window) => window,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                missed += n;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let build = build.clone();
        // Rendering is CPU work; keep it off the async workers.
        let Ok(mut response) = tokio::task::spawn_blocking(move || build(&window)).await else {
            break;
        };
        response.missed_windows = std::mem::take(&mut missed);
        if tx.send(Ok(response)).await.is_err() {
            break;
        }
    }
}

/// The stream `Watch` answers with.
pub type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::WatchResponse, Status>> + Send>>;

fn query_stats(merged: &MergedProfile) -> v1::QueryStats {
    v1::QueryStats {
        windows: merged.windows,
        samples: merged.samples,
        start_unix_nanos: merged.start_ns,
        end_unix_nanos: merged.end_ns,
        // Losses of kinds this mode does not read do not concern its answer.
        drops: drop_counts(&merged.drops)
            .into_iter()
            .zip(DropReason::ALL)
            .filter(|(_, r)| concerns(*r, merged.mode))
            .map(|(d, _)| d)
            .collect(),
        idle_threads: merged.idle_threads,
        idle_nanos: merged.idle_left_out.value,
        value: merged.value(),
        ..v1::QueryStats::default()
    }
}

/// Whether losses for `reason` concern an answer in `mode`: those of a kind of sample the
/// mode does not read do not.
fn concerns(reason: DropReason, mode: Mode) -> bool {
    match reason {
        DropReason::OffCpuRingBufferFull
        | DropReason::OffCpuBlocksFull
        | DropReason::OffCpuEndLost => mode.reads(SampleKind::OffCpu),
        DropReason::MemoryRingBufferFull => mode.reads(SampleKind::Memory),
        DropReason::OomRingBufferFull => mode.reads(SampleKind::OomKill),
        _ => true,
    }
}

/// The mode of a request.
fn mode_of(mode: i32) -> Result<Mode, Status> {
    match v1::Mode::try_from(mode) {
        Ok(v1::Mode::Cpu) => Ok(Mode::Cpu),
        Ok(v1::Mode::Wall) => Ok(Mode::Wall),
        Ok(v1::Mode::OffCpu) => Ok(Mode::OffCpu),
        Ok(v1::Mode::Gil) => Ok(Mode::Gil),
        Ok(v1::Mode::Memory) => Ok(Mode::Memory),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown mode {mode}: this daemon knows cpu, wall, off-cpu, gil and memory"
        ))),
    }
}

fn query_status(e: QueryError) -> Status {
    match e {
        QueryError::EmptyRange { .. } => Status::invalid_argument(e.to_string()),
        QueryError::Stopped(_) => Status::unavailable(e.to_string()),
        QueryError::Store(_) | QueryError::Failed(_) => Status::internal(e.to_string()),
    }
}

fn calls_status(e: &CallsError) -> Status {
    match e {
        CallsError::NoProcess(_) => Status::not_found(e.to_string()),
        CallsError::NotPython { .. } | CallsError::NoEntryPoint(_) => {
            Status::failed_precondition(e.to_string())
        }
        CallsError::Attach { .. } => Status::internal(e.to_string()),
        CallsError::NotLoaded => Status::failed_precondition(e.to_string()),
    }
}

/// User plus system CPU time of this process, in seconds.
pub fn cpu_seconds() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0)
}

/// Resident memory of this process.
pub fn rss_bytes() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map(|s| s.resident * procfs::page_size())
        .unwrap_or(0)
}

/// Why the gRPC endpoint could not be set up.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another process serves the socket.
    #[error(
        "{0} is in use by a running process (another profilerd?); stop it or choose another \
         path with --listen unix:///PATH"
    )]
    SocketInUse(PathBuf),
    /// The path exists and is not a socket.
    #[error(
        "{0} exists and is not a socket; profilerd removes only a stale socket there. Move the \
         file away or choose another path with --listen unix:///PATH"
    )]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Only half of a certificate and key pair was given.
    #[error("{0}")]
    TlsIncomplete(&'static str),
    /// Plain text on a non-loopback address without `--insecure`.
    #[error(
        "refusing to serve gRPC in plain text on tcp://{0}, which is not a loopback address: \
         profiles (with command lines and paths) would cross the network unencrypted. Give a \
         certificate with --tls-cert and --tls-key (and --tls-client-ca to require client \
         certificates), listen on 127.0.0.1 or a unix:// socket, or pass --insecure to serve \
         plain text anyway"
    )]
    PlaintextRefused(SocketAddr),
}

/// Why plain-text gRPC is allowed on a TCP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plaintext {
    /// The address is a loopback one: only this machine can connect.
    Loopback,
    /// The address is reachable from the network, and `--insecure` accepts that.
    Insecure,
}

/// The rule for gRPC without TLS on `addr`: fine on loopback, refused elsewhere unless
/// `insecure`. The unspecified addresses (`0.0.0.0`, `::`) count as the network.
pub fn plaintext_allowed(addr: SocketAddr, insecure: bool) -> Result<Plaintext, ListenError> {
    if addr.ip().to_canonical().is_loopback() {
        Ok(Plaintext::Loopback)
    } else if insecure {
        Ok(Plaintext::Insecure)
    } else {
        Err(ListenError::PlaintextRefused(addr))
    }
}

/// The gRPC endpoint the options ask for, checked: where to listen and the TLS to serve.
#[derive(Clone, Debug)]
pub struct GrpcEndpoint {
    /// Where to listen.
    pub addr: ListenAddr,
    /// TLS for a TCP address (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<ServerTlsConfig>,
    /// Whether clients must present a certificate.
    pub mutual: bool,
}

impl GrpcEndpoint {
    /// Reads and checks the certificate files and applies [`plaintext_allowed`], warning when
    /// `--insecure` lets plain text onto the network. A Unix socket needs no TLS (its file mode
    /// decides who connects), so the TLS options are ignored there, with a warning.
    pub fn from_args(args: &DaemonArgs) -> Result<GrpcEndpoint, ListenError> {
        let files = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) if args.tls_client_ca.is_some() => {
                return Err(ListenError::TlsIncomplete(
                    "--tls-client-ca needs --tls-cert and --tls-key",
                ));
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ListenError::TlsIncomplete("--tls-cert needs --tls-key"));
            }
            (None, Some(_)) => {
                return Err(ListenError::TlsIncomplete("--tls-key needs --tls-cert"));
            }
        };
        let addr = args.listen.clone();
        let sock = match &addr {
            ListenAddr::Unix(_) => {
                if files.is_some() || args.insecure {
                    warn!(
                        listen = %addr,
                        "--tls-cert, --tls-key, --tls-client-ca and --insecure apply to tcp:// \
                         only; ignored for a unix socket"
                    );
                }
                return Ok(GrpcEndpoint { addr, tls: None, mutual: false });
            }
            ListenAddr::Tcp(sock) => *sock,
        };
        let Some((cert, key)) = files else {
            if plaintext_allowed(sock, args.insecure)? == Plaintext::Insecure {
                warn!(
                    listen = %addr,
                    "serving gRPC WITHOUT TLS on a network address (--insecure): profiles, with \
                     command lines and paths, cross the network in clear text, and anyone who \
                     reaches the port can read them and change settings"
                );
            }
            return Ok(GrpcEndpoint { addr, tls: None, mutual: false });
        };
        if args.insecure {
            warn!(listen = %addr, "--insecure has no effect: TLS is configured");
        }
        if args.tls_client_ca.is_none() && !sock.ip().to_canonical().is_loopback() {
            warn!(
                listen = %addr,
                "TLS without client certificates: any client that reaches the port can read \
                 profiles and change settings; require certificates with --tls-client-ca"
            );
        }
        let client_ca =
            args.tls_client_ca.as_deref().map(|path| PemFile { option: "--tls-client-ca", path });
        let tls = tls::server_config(
            PemFile { option: "--tls-cert", path: cert },
            PemFile { option: "--tls-key", path: key },
            client_ca,
        )?;
        Ok(GrpcEndpoint { addr, tls: Some(tls), mutual: client_ca.is_some() })
    }

    /// How clients are authenticated, for the log: `off`, `tls` or `mutual-tls`.
    pub fn security(&self) -> &'static str {
        match (&self.tls, self.mutual) {
            (None, _) => "off",
            (Some(_), false) => "tls",
            (Some(_), true) => "mutual-tls",
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// A Unix socket, removed again on drop.
    Unix(UnixListener, SocketFile),
    /// A TCP socket, with its TLS unless plain text is allowed.
    Tcp(TcpListener, Option<ServerTlsConfig>),
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `endpoint`. A stale Unix socket (nobody answers on it) is replaced; a live one, or
    /// anything that is not a socket, is an error. A new Unix socket gets mode 0660.
    pub async fn bind(endpoint: &GrpcEndpoint) -> Result<Listener, ListenError> {
        let addr = &endpoint.addr;
        let bind_err = |source| ListenError::Bind { addr: addr.to_string(), source };
        match addr {
            ListenAddr::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(bind_err)?;
                }
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(ListenError::NotASocket(path.clone()));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(ListenError::SocketInUse(path.clone()));
                    }
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                let listener = UnixListener::bind(path).map_err(bind_err)?;
                let file = SocketFile(path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(bind_err)?;
                Ok(Listener::Unix(listener, file))
            }
            ListenAddr::Tcp(sock) => Ok(Listener::Tcp(
                TcpListener::bind(sock).await.map_err(bind_err)?,
                endpoint.tls.clone(),
            )),
        }
    }

    /// The socket path, for a Unix listener.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, file) => Some(&file.0),
            Listener::Tcp(..) => None,
        }
    }

    /// The bound address, for a TCP listener (it differs from the option for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Unix(..) => None,
            Listener::Tcp(listener, _) => listener.local_addr().ok(),
        }
    }
}

/// Serves `service` on `listener` until `shutdown`. Then open calls get `grace` to finish, and
/// connections to close: an HTTP/2 connection closes gracefully only once the client has
/// acknowledged the server's notice, and a client that stopped answering never does. After
/// `grace` this returns without them; their tasks end with the runtime, as the daemon exits.
pub async fn serve(
    listener: Listener,
    service: ProfilerService,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let serving = serve_until(listener, service, shutdown.clone());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served,
        () = deadline => {
            warn!(?grace, "clients still connected after the shutdown grace period; not waiting");
            Ok(())
        }
    }
}

async fn serve_until(
    listener: Listener,
    service: ProfilerService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder();
    match listener {
        Listener::Unix(listener, _file) => {
            server
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    shutdown.cancelled(),
                )
                .await
        }
        Listener::Tcp(listener, tls) => {
            if let Some(tls) = tls {
                server = server.tls_config(tls)?;
            }
            server
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.cancelled(),
                )
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_answer_leaves_out_losses_of_off_cpu_samples() {
        let mut merged = MergedProfile::new(Mode::Cpu, false);
        merged.drops.0[DropReason::OffCpuEndLost as usize] = 3;
        merged.drops.0[DropReason::RingBufferFull as usize] = 2;
        let listed = |m: &MergedProfile| -> Vec<String> {
            query_stats(m).drops.into_iter().filter(|d| d.count > 0).map(|d| d.reason).collect()
        };
        assert_eq!(listed(&merged), ["ring_buffer_full"]);
        merged.mode = Mode::Wall;
        assert_eq!(listed(&merged), ["ring_buffer_full", "off_cpu_end_lost"]);
    }

    fn window(start_ns: i64) -> Arc<Window> {
        Arc::new(Window {
            start_ns,
            end_ns: start_ns + 1,
            samples: 0,
            drops: DropSnapshot::default(),
            entries: Vec::new(),
            calls: Vec::new(),
            persisted: Default::default(),
        })
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = std::env::temp_dir().join(format!("profiler-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("precious.txt");
        std::fs::write(&path, "keep me").unwrap();
        let endpoint =
            GrpcEndpoint { addr: ListenAddr::Unix(path.clone()), tls: None, mutual: false };
        let err = Listener::bind(&endpoint).await.unwrap_err();
        assert!(matches!(err, ListenError::NotASocket(_)), "{err}");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        // A stale socket, which nobody answers on, is replaced.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let endpoint =
            GrpcEndpoint { addr: ListenAddr::Unix(stale.clone()), tls: None, mutual: false };
        let listener = Listener::bind(&endpoint).await.unwrap();
        assert_eq!(listener.path(), Some(stale.as_path()));
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_call_counts_as_an_error_unless_it_succeeds() {
        let stats = GrpcStats::default();
        let _ = stats.call(GrpcMethod::Status).ok(());
        drop(stats.call(GrpcMethod::Status));
        let _ = stats.call(GrpcMethod::Query);
        let got = |m| (stats.requests(m), stats.errors(m));
        assert_eq!(got(GrpcMethod::Status), (2, 1));
        assert_eq!(got(GrpcMethod::Query), (1, 1));
        assert_eq!(got(GrpcMethod::Watch), (0, 0));
    }

    #[tokio::test]
    async fn a_stuck_watcher_misses_windows_and_is_told_how_many() {
        let (closed, rx) = broadcast::channel(4);
        let (tx, mut out) = mpsc::channel(1);
        let task = tokio::spawn(forward_windows(rx, tx, |w| v1::WatchResponse {
            stats: Some(v1::QueryStats { start_unix_nanos: w.start_ns, ..Default::default() }),
            ..Default::default()
        }));
        // The watcher reads nothing while 20 windows close: the sender never waits.
        for i in 0..20 {
            closed.send(window(i)).unwrap();
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        drop(closed);
        while let Some(Ok(r)) = out.recv().await {
            got.push((r.stats.unwrap().start_unix_nanos, r.missed_windows));
        }
        task.await.unwrap();
        let delivered = got.len() as u64;
        let missed: u64 = got.iter().map(|g| g.1).sum();
        assert_eq!(delivered + missed, 20, "every window is delivered or counted: {got:?}");
        assert!(missed > 0, "{got:?}");
        assert_eq!(got.last().unwrap().0, 19, "the newest window arrives");
    }
}
