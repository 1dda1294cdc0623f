//! Wiring: starts the sampler, the pipeline stages, the gRPC server and the metrics endpoint,
//! and stops them in order.
//!
//! ```text
//! ring buffer -> drain (task) -> collector (thread) -> symbolizer (thread) -> aggregator (task)
//!                                  inspector (thread)                              |    ^
//!                                                         store writer (thread) <--+  server
//! ```
//! Every arrow is a bounded channel; only the drain's and the collector's sends can lose a
//! sample, and they count what they lose.

use std::{
    num::NonZeroUsize,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{
    aggregate::{
        Retention,
        actor::{self, AggregatorConfig},
    },
    budget::{MemoryBudget, MemoryPart},
    calls::CallTracker,
    collector::{
        Collector, Waiting,
        drain::{self, Inbox},
        inspect::Inspector,
    },
    config::{DaemonArgs, MetricsListen},
    fleet,
    loader::{LoadError, MemoryConfig, OffCpuConfig, Sampler, SamplerConfig},
    metrics,
    off_cpu::Budget,
    pods,
    process::ProcessTable,
    python::Detector,
    server::{DaemonInfo, GrpcEndpoint, ListenError, Listener, ProfilerService, serve},
    stats::PipelineStats,
    store::{self, DiskRetention, Store, StoreError},
    symbolize::{self, SymbolizerStats},
};

/// Samples queued between the collector and the symbolizer.
const SYMBOLIZER_QUEUE: usize = 4096;
/// The collector's queue holds this many ring buffers' worth of records: seconds of samples
/// at any rate the ring itself can take.
const COLLECTOR_QUEUE_RINGS: usize = 4;
/// Samples queued between the symbolizer and the aggregator.
const AGGREGATOR_QUEUE: usize = 4096;
/// What one sample holds while it waits in the symbolizer's or the aggregator's queue, as
/// counted against `--max-memory`: its record, addresses and frames.
const QUEUED_SAMPLE_BYTES: usize = 1024;
/// What the daemon's own code, data and thread stacks take, as counted against
/// `--max-memory` (its resident memory with nothing to profile, rounded up).
const PROGRAM_BYTES: usize = 32 << 20;
/// Closed windows kept in memory (besides the store), for fast queries of the recent past.
const MEMORY_WINDOWS_AGE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long open gRPC calls and connections get to finish once the daemon is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The kernel programs could not be set up.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC endpoint could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] metrics::BindError),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// `--kubernetes on`, but the Kubernetes API cannot be used.
    #[error("--kubernetes on: {0}")]
    Pods(#[from] crate::pods::PodsError),
    /// An exporter's settings cannot be used.
    #[error(transparent)]
    Export(#[from] crate::fleet::EndpointError),
    /// The exporters' headers file cannot be read.
    #[error("--export-headers-file {path}: {source}")]
    ExportHeaders {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exporters' TLS files cannot be used.
    #[error("export TLS: {0}")]
    ExportTls(#[source] crate::tls::TlsError),
    /// An exporter's client certificate without its key, or without the CA to check with.
    #[error("{0}")]
    ExportTlsOptions(&'static str),
    /// `--max-memory` is too small.
    #[error(transparent)]
    Memory(#[from] crate::budget::BudgetError),
    /// The debuginfod settings cannot be used.
    #[error(transparent)]
    DebugInfo(#[from] crate::debuginfo::DebugInfoError),
    /// A pipeline stage could not start.
    #[error("starting the {stage} failed: {source}")]
    Start {
        /// Which stage.
        stage: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The exporters that `args` (or the `OTEL_EXPORTER_OTLP_*` variables) ask for, checked but
/// not connected.
fn exporters(
    args: &DaemonArgs,
) -> Result<Vec<(Arc<fleet::ExporterStats>, fleet::Exporter)>, DaemonError> {
    use crate::config::OtlpProtocol;
    let env = |vars: &[&str]| {
        vars.iter().find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
    };
    let otlp = match &args.export_otlp {
        Some(targets) => targets.0.clone(),
        None => env(&["OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"])
            .map(|url| vec![url.trim().to_owned()])
            .unwrap_or_default(),
    };
    let protocol = match args.export_otlp_protocol {
        Some(protocol) => protocol,
        None => match env(&["OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
            .as_deref()
            .map(str::trim)
        {
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        },
    };
    let headers: Vec<String> = match &args.export_headers_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| DaemonError::ExportHeaders { path: path.clone(), source })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => env(&["OTEL_EXPORTER_OTLP_HEADERS"])
            .map(|v| v.split(',').filter(|h| !h.trim().is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let source = fleet::Source {
        host: fleet::otlp::Host {
            name: host_name(),
            node_name: args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()),
        },
        period_ns: args.period_ns(),
        max_request_bytes: fleet::MAX_REQUEST_BYTES,
    };
    let tls = export_tls(args)?;
    let tls = tls.as_ref();
    let mut out = Vec::new();
    for url in &otlp {
        let encoder = fleet::OtlpEncoder(source.clone());
        let (name, exporter) = match protocol {
            OtlpProtocol::Grpc => (
                format!("otlp {url}"),
                fleet::Exporter::OtlpGrpc(fleet::grpc::GrpcSink::new(url, &headers, encoder, tls)?),
            ),
            OtlpProtocol::HttpProtobuf => (
                format!("otlp/http {url}"),
                fleet::Exporter::OtlpHttp(fleet::http::OtlpHttpSink::new(
                    url, &headers, encoder, tls,
                )?),
            ),
        };
        out.push((Arc::new(fleet::ExporterStats::new(name)), exporter));
    }
    for url in args.export_pyroscope.iter().flat_map(|t| &t.0) {
        let encoder = fleet::pyroscope::PyroscopeEncoder(source.clone());
        let sink = fleet::pyroscope::PyroscopeSink::new(url, &headers, encoder, tls)?;
        let stats = Arc::new(fleet::ExporterStats::new(format!("pyroscope {url}")));
        out.push((stats, fleet::Exporter::Pyroscope(sink)));
    }
    Ok(out)
}

/// The exporters' TLS settings: a CA file, and a client certificate with its key.
fn export_tls(args: &DaemonArgs) -> Result<Option<crate::tls::ClientTls>, DaemonError> {
    use crate::tls::PemFile;
    let client = match (&args.export_client_cert, &args.export_client_key) {
        (Some(cert), Some(key)) => Some((
            PemFile { option: "--export-client-cert", path: cert },
            PemFile { option: "--export-client-key", path: key },
        )),
        (None, None) => None,
        _ => {
            return Err(DaemonError::ExportTlsOptions(
                "--export-client-cert and --export-client-key go together",
            ));
        }
    };
    let Some(ca) = &args.export_ca_file else {
        if client.is_some() {
            return Err(DaemonError::ExportTlsOptions(
                "--export-client-cert needs --export-ca-file, the CA that signed the receivers' \
                 certificates",
            ));
        }
        return Ok(None);
    };
    crate::tls::client_config(PemFile { option: "--export-ca-file", path: ca }, client, None)
        .map(Some)
        .map_err(DaemonError::ExportTls)
}

/// This host's name, as `uname` gives it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Raises the soft limit on open files to the hard one: the daemon keeps each mapped binary and
/// each profiled process's `statm` open, more than the usual soft limit of 1024 on a busy host.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into a valid struct, and setrlimit reads it.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        debug!(open_files = limit.rlim_cur, "raised the open files limit");
    } else {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise the open files limit; on a busy host some binaries and memory readings may be missed"
        );
    }
}

/// `--max-memory` with the parts the daemon takes whatever it profiles; the caches and the
/// store are added once they exist.
fn memory_budget(args: &DaemonArgs) -> Result<MemoryBudget, crate::budget::BudgetError> {
    let ring = usize::try_from(args.ring_buffer_size).unwrap_or(usize::MAX);
    let fixed = vec![
        // The kernel maps the ring's data pages twice in a row, and both count as resident.
        MemoryPart { name: crate::budget::RING_BUFFER, bytes: ring.saturating_mul(2) },
        MemoryPart { name: "collector queue", bytes: ring.saturating_mul(COLLECTOR_QUEUE_RINGS) },
        MemoryPart {
            name: "pipeline queues",
            bytes: (SYMBOLIZER_QUEUE + AGGREGATOR_QUEUE) * QUEUED_SAMPLE_BYTES,
        },
        MemoryPart { name: "program", bytes: PROGRAM_BYTES },
    ];
    MemoryBudget::new(usize::try_from(args.max_memory).unwrap_or(usize::MAX), fixed)
}

/// Keeps the caches inside `budget`, once a second, until `shutdown`.
async fn govern(budget: Arc<MemoryBudget>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    let mut just_shed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The caches act on a request when they next publish their sizes, about a second
        // later: until then the sizes read here are the old ones.
        if std::mem::take(&mut just_shed) {
            continue;
        }
        if let Some(fraction) = budget.govern() {
            just_shed = true;
            if !warned {
                warned = true;
                warn!(
                    max_memory = budget.max_bytes(),
                    share = fraction,
                    "the caches hold more than --max-memory leaves them: dropping their least recently used entries (see the memory: line of profctl status; a larger --max-memory keeps more)"
                );
            } else {
                debug!(share = fraction, "caches asked to shed entries");
            }
        }
    }
}

/// The debug directories and debuginfod servers that `args` (or `DEBUGINFOD_URLS`) ask for;
/// `None` when there are neither. Downloads start on the current runtime.
fn debug_info(args: &DaemonArgs) -> Result<Option<Arc<crate::debuginfo::DebugInfo>>, DaemonError> {
    use crate::debuginfo::{DebugInfo, DebugInfoStats, fetch::Fetcher};
    let servers: Vec<String> = match &args.debuginfod_urls {
        Some(urls) => urls.0.clone(),
        None => std::env::var("DEBUGINFOD_URLS")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    if args.debug_dirs.0.is_empty() && servers.is_empty() {
        return Ok(None);
    }
    let stats = Arc::new(DebugInfoStats::default());
    let mut info = DebugInfo::new(args.debug_dirs.0.clone(), stats.clone());
    if !servers.is_empty() {
        let cache = args.data_dir.join("debuginfo");
        let fetcher = Fetcher::spawn(servers, cache.clone(), args.debuginfod_cache_size, stats)?;
        info = info.with_fetcher(fetcher, cache);
    }
    Ok(Some(Arc::new(info)))
}

/// Runs the daemon until `shutdown` is cancelled. `ready` is called once the programs are
/// attached and the gRPC and metrics endpoints are listening.
pub async fn run(
    args: DaemonArgs,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), DaemonError> {
    // The gRPC endpoint's options first: a bad certificate file or a refused plain-text address
    // is a configuration error, reported before anything is loaded.
    let endpoint = GrpcEndpoint::from_args(&args)?;
    let budget = memory_budget(&args)?;
    let pods = pods::configure(args.kubernetes, args.node_name.clone()).await?;
    let exporters = exporters(&args)?;
    let debug_info = debug_info(&args)?;
    crate::loader::require_privileges()?;
    crate::loader::require_kernel()?;
    raise_open_files_limit();
    // The store next: a damaged or locked store should stop the daemon before it attaches.
    let store = Arc::new(Store::open(
        &args.data_dir,
        DiskRetention { max_age: args.retention, max_bytes: args.max_disk },
        args.repair,
    )?);
    let mut sampler = Sampler::load(&SamplerConfig {
        frequency: args.frequency,
        include_idle: args.include_idle,
        bpf_stats: args.bpf_stats,
        ring_buffer_bytes: args.ring_buffer_size,
        off_cpu: (!args.no_off_cpu).then(|| OffCpuConfig {
            interval_ns: u64::try_from(args.off_cpu_interval.as_nanos()).unwrap_or(u64::MAX),
            raw_tracepoint: false,
            skip_pid: std::process::id(),
            task_storage: true,
        }),
        memory: (!args.no_memory).then_some(MemoryConfig { period: args.memory_fault_period }),
    })?;
    let listener = Listener::bind(&endpoint).await?;
    let metrics_listener = match args.metrics_listen {
        MetricsListen::Off => None,
        MetricsListen::Tcp(addr) => Some(metrics::bind(addr).await?),
    };
    let pods = pods.map(|lister| pods::spawn(lister, pods::REFRESH_INTERVAL, shutdown.clone()));
    let ring = sampler.take_samples()?;
    let counters = sampler.take_counters()?;
    let py_procs = sampler.take_python_procs()?;
    let stack_copies = sampler.take_stack_copies()?;
    let py_calls = sampler.take_python_calls()?;
    let off_cpu_scale = if args.no_off_cpu { None } else { Some(sampler.take_off_cpu_scale()?) };
    let cpus = u32::try_from(sampler.cpus().len()).unwrap_or(u32::MAX);
    let program_id = sampler.program_id();
    let runtimes = Arc::new(std::sync::Mutex::new(Vec::new()));

    let stats = Arc::new(PipelineStats::default());
    stats.set_off_cpu_scale(crate::off_cpu::SCALE_ONE);
    let symbolizer_stats = Arc::new(SymbolizerStats::default());
    let budget = Arc::new(
        budget
            .hold_sheddable(
                "caches and tables",
                {
                    let (pipeline, symbolizer) = (stats.clone(), symbolizer_stats.clone());
                    move || {
                        let bytes = pipeline.caches.bytes() + symbolizer.caches.bytes();
                        usize::try_from(bytes).unwrap_or(usize::MAX)
                    }
                },
                {
                    let (pipeline, symbolizer) = (stats.clone(), symbolizer_stats.clone());
                    move |fraction| {
                        pipeline.caches.request_shed(fraction);
                        symbolizer.caches.request_shed(fraction);
                    }
                },
            )
            .hold("store", {
                let store = store.clone();
                move || store.memory_bytes()
            }),
    );
    let processes = Arc::new(AtomicU64::new(0));
    let (raw_tx, raw_rx) = mpsc::channel(SYMBOLIZER_QUEUE);
    let (sample_tx, sample_rx) = mpsc::channel(AGGREGATOR_QUEUE);

    let capacity = NonZeroUsize::new(usize::try_from(args.symbol_cache_size).unwrap_or(usize::MAX))
        .unwrap_or(NonZeroUsize::MIN);
    let symbolizer =
        symbolize::spawn(raw_rx, sample_tx, capacity, symbolizer_stats.clone(), debug_info)
            .map_err(|source| DaemonError::Start { stage: "symbolizer thread", source })?;

    let (writer, writer_thread) = store::writer::spawn(store.clone())
        .map_err(|source| DaemonError::Start { stage: "store writer thread", source })?;
    let (aggregator, aggregator_task) = actor::spawn_in_budget(
        AggregatorConfig {
            window: args.window,
            max_stacks: usize::try_from(args.max_stacks_per_window).unwrap_or(usize::MAX),
            // Recent windows stay in memory too; the store has the rest.
            retention: Retention {
                max_age: args.retention.min(MEMORY_WINDOWS_AGE),
                max_bytes: usize::try_from(args.max_memory).unwrap_or(usize::MAX),
            },
        },
        sample_rx,
        stats.clone(),
        Some(Box::new(move |window| writer.write(window))),
        Some(budget.clone()),
    );

    let governor = tokio::spawn(
        govern(budget.clone(), shutdown.child_token()).instrument(info_span!("memory")),
    );
    let resident_targets = (!args.no_resident).then(crate::resident::Targets::default);
    let oom_kills = Arc::<crate::oom::KillLog>::default();
    let resident_latest = crate::resident::Latest::default();
    if let Some(targets) = &resident_targets {
        crate::resident::spawn(
            targets.clone(),
            resident_latest.clone(),
            args.resident_interval,
            raw_tx.downgrade(),
            stats.clone(),
        )
        .map_err(|source| DaemonError::Start { stage: "resident memory thread", source })?;
    }
    let queue_bytes = usize::try_from(args.ring_buffer_size)
        .unwrap_or(usize::MAX)
        .saturating_mul(COLLECTOR_QUEUE_RINGS);
    let (queue, inbox) = drain::queue(queue_bytes, stats.clone());
    let collector = Collector {
        processes: ProcessTable::new(usize::try_from(args.max_processes).unwrap_or(usize::MAX)),
        by_thread: !args.no_thread_labels,
        cpu_period_ns: u64::try_from(args.period_ns()).unwrap_or(0),
        output: raw_tx,
        stats: stats.clone(),
        processes_gauge: processes.clone(),
        inspector: Inspector::spawn(Detector::default(), queue.waker())
            .map_err(|source| DaemonError::Start { stage: "inspector thread", source })?,
        waiting: Waiting::default(),
        py_procs: Some(py_procs),
        runtimes: runtimes.clone(),
        calls: CallTracker::new(args.python_calls, args.python_calls_budget),
        // The collector owns the sampler from here on; it detaches everything when it stops.
        probes: Some(Box::new(sampler)),
        py_calls: Some(py_calls),
        pods: pods.as_ref().map(|(names, _)| names.clone()),
        off_cpu: off_cpu_scale.map(|scale| (scale, Budget::new(args.off_cpu_budget))),
        resident: resident_targets.clone(),
        oom_kills: oom_kills.clone(),
        leaf_rules: crate::leaf::LeafRules::default(),
        stack_copies: crate::collector::native::StackCopies::new(Some(stack_copies), stats.clone()),
        huge_pages: if args.no_memory { None } else { crate::huge_pages::HugePages::new() },
        unmapped_faults: Default::default(),
    };
    let (command_tx, command_rx) = mpsc::channel(16);
    let collector_thread = spawn_collector(collector, inbox, counters, command_rx)?;
    let drain_task = tokio::spawn(
        drain::drain(ring, queue, shutdown.child_token()).instrument(info_span!("drain")),
    );

    let info = Arc::new(DaemonInfo {
        frequency: args.frequency,
        cpus,
        started: Instant::now(),
        window: args.window,
        max_stacks: args.max_stacks_per_window,
        stats,
        symbolizer: symbolizer_stats,
        processes,
        program_id,
        runtimes,
        pods: pods.as_ref().map(|(names, _)| names.clone()),
        oom_kills,
        resident: resident_latest,
        exporters: exporters.iter().map(|(stats, _)| stats.clone()).collect(),
        memory: Some(budget),
    });
    let export_tasks: Vec<_> = exporters
        .into_iter()
        .map(|(stats, exporter)| exporter.spawn(store.clone(), stats, shutdown.clone()))
        .collect();
    let service = ProfilerService::new(aggregator.clone(), info.clone())
        .with_collector(command_tx)
        .with_store(store.clone());
    // The bound address, which differs from the option for port 0.
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_task = metrics_listener.map(|listener| {
        let sources =
            metrics::Sources { info, aggregator, store: Some(store), grpc: service.grpc_stats() };
        tokio::spawn(
            metrics::serve(listener, sources, shutdown.clone()).instrument(info_span!("metrics")),
        )
    });
    info!(
        listen = %args.listen,
        tls = endpoint.security(),
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        frequency = args.frequency,
        window = ?args.window,
        "profilerd ready"
    );
    ready();
    let served = serve(listener, service, shutdown.clone(), SHUTDOWN_GRACE).await;

    // Stop sampling first (the collector owns the sampler), then drain the stages in order.
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some((_, task)) = pods {
        let _ = task.await;
    }
    for task in export_tasks {
        let _ = task.await;
    }
    let _ = governor.await;
    match drain_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "draining the ring buffer failed"),
        Err(e) => error!(error = %e, "the drain panicked"),
    }
    // The drain has stopped: the collector handles what it queued, then stops.
    if let Ok(Err(_)) = tokio::task::spawn_blocking(move || collector_thread.join()).await {
        error!("the collector panicked");
    }
    let _ = tokio::task::spawn_blocking(move || symbolizer.join()).await;
    // The aggregator stops once the symbolizer has; it hands the last window to the writer.
    let _ = aggregator_task.await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    info!("profilerd stopped");
    served.map_err(DaemonError::from)
}

/// Starts the collector's thread.
fn spawn_collector(
    collector: Collector,
    inbox: Inbox,
    counters: crate::loader::KernelCounters,
    commands: mpsc::Receiver<crate::collector::Command>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    let span = info_span!("collector");
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || span.in_scope(|| collector.run(inbox, counters, commands)))
        .map_err(|source| DaemonError::Start { stage: "collector thread", source })
}
