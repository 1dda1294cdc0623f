//! Wiring: starts the sampler, the pipeline stages, the gRPC server and the metrics endpoint,
//! and stops them in order.
//!
//! ```text
//! kernel ring buffer -> collector (task) -> symbolizer (thread) -> aggregator (task) <- server
//!                                                                       |                  |
//!                                                          store writer (thread) -> store <-
//! ```
//! Every arrow is a bounded channel; only the collector's send can lose a sample, and it counts
//! what it loses.

use std::{
    num::NonZeroUsize,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span};

use crate::{
    aggregate::{
        Retention,
        actor::{self, AggregatorConfig},
    },
    calls::CallTracker,
    collector::Collector,
    config::{DaemonArgs, MetricsListen},
    loader::{LoadError, Sampler, SamplerConfig},
    metrics, pods,
    process::ProcessTable,
    python::Detector,
    server::{DaemonInfo, GrpcEndpoint, ListenError, Listener, ProfilerService, serve},
    stats::PipelineStats,
    store::{self, DiskRetention, Store, StoreError},
    symbolize::{self, SymbolizerStats},
};

/// Samples queued between the collector and the symbolizer.
const SYMBOLIZER_QUEUE: usize = 4096;
/// Samples queued between the symbolizer and the aggregator.
const AGGREGATOR_QUEUE: usize = 4096;
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
    let pods = pods::configure(args.kubernetes, args.node_name.clone()).await?;
    crate::loader::require_privileges()?;
    crate::loader::require_kernel()?;
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
    let py_calls = sampler.take_python_calls()?;
    let cpus = u32::try_from(sampler.cpus().len()).unwrap_or(u32::MAX);
    let program_id = sampler.program_id();
    let runtimes = Arc::new(std::sync::Mutex::new(Vec::new()));

    let stats = Arc::new(PipelineStats::default());
    let symbolizer_stats = Arc::new(SymbolizerStats::default());
    let processes = Arc::new(AtomicU64::new(0));
    let (raw_tx, raw_rx) = mpsc::channel(SYMBOLIZER_QUEUE);
    let (sample_tx, sample_rx) = mpsc::channel(AGGREGATOR_QUEUE);

    let capacity = NonZeroUsize::new(usize::try_from(args.symbol_cache_size).unwrap_or(usize::MAX))
        .unwrap_or(NonZeroUsize::MIN);
    let symbolizer = symbolize::spawn(raw_rx, sample_tx, capacity, symbolizer_stats.clone())
        .map_err(|source| DaemonError::Start { stage: "symbolizer thread", source })?;

    let (writer, writer_thread) = store::writer::spawn(store.clone())
        .map_err(|source| DaemonError::Start { stage: "store writer thread", source })?;
    let (aggregator, aggregator_task) = actor::spawn(
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
    );

    let collector = Collector {
        processes: ProcessTable::new(usize::try_from(args.max_processes).unwrap_or(usize::MAX)),
        by_thread: !args.no_thread_labels,
        output: raw_tx,
        stats: stats.clone(),
        processes_gauge: processes.clone(),
        detector: Detector::default(),
        py_procs: Some(py_procs),
        runtimes: runtimes.clone(),
        calls: CallTracker::new(args.python_calls, args.python_calls_budget),
        // The collector owns the sampler from here on; it detaches everything when it stops.
        probes: Some(Box::new(sampler)),
        py_calls: Some(py_calls),
        pods: pods.as_ref().map(|(names, _)| names.clone()),
    };
    let (command_tx, command_rx) = mpsc::channel(16);
    let collector_shutdown = shutdown.child_token();
    let collector_task = tokio::spawn(
        collector
            .run(ring, counters, command_rx, collector_shutdown.clone())
            .instrument(info_span!("collector")),
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
    });
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
    match collector_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "the collector failed"),
        Err(e) => error!(error = %e, "the collector panicked"),
    }
    let _ = tokio::task::spawn_blocking(move || symbolizer.join()).await;
    // The aggregator stops once the symbolizer has; it hands the last window to the writer.
    let _ = aggregator_task.await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    info!("profilerd stopped");
    served.map_err(DaemonError::from)
}
