//! The gRPC API end to end, in memory: an aggregator fed with known samples, the real tonic
//! service over `tokio::io::duplex`, and the client-side formats rendered from the answer.
//! Needs no privileges.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use profiler_daemon::{
    aggregate::{
        Frame, FrameKind, Labels, Module, Resolved, Retention, SampleKind, StackSample,
        actor::{self, AggregatorConfig},
    },
    config::ListenAddr,
    ctl,
    export::{self, ProfileView, top::SortKey},
    server::{self, DaemonInfo, GrpcEndpoint, Listener, ProfilerService},
    stats::PipelineStats,
    symbolize::SymbolizerStats,
};
use profiler_proto::v1::{self, profiler_client::ProfilerClient};
use prost::Message as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tower::service_fn;

fn native(name: &str, module: &Arc<Module>, offset: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Native,
        function: name.into(),
        module: Some(module.clone()),
        address: offset,
        file: None,
        line: 0,
        start_line: 0,
    })
}

fn kernel(name: &str, addr: u64) -> Arc<Frame> {
    Arc::new(Frame {
        kind: FrameKind::Kernel,
        module: Some(Arc::new(Module { path: Module::KERNEL_PATH.into(), build_id: None })),
        address: addr,
        ..Frame::marker(name)
    })
}

/// Two processes: `app` spends 6 samples in fn_a, 3 in fn_b and 1 in the kernel under fn_b;
/// `other` spends 5 samples in its main.
fn samples() -> Vec<StackSample> {
    let app =
        Arc::new(Module { path: "/opt/app/bin/app".into(), build_id: Some("abcdef01".into()) });
    let labels = |pid: u32, comm: &str| {
        Arc::new(Labels {
            pid,
            tid: pid,
            comm: comm.into(),
            thread: comm.into(),
            exe: "/opt/app/bin/app".into(),
            cgroup: "/app.slice".into(),
            ..Labels::default()
        })
    };
    let (main, run) = (native("main", &app, 0x1100), native("run", &app, 0x1200));
    let fn_a = native("fn_a", &app, 0x1300);
    let fn_b = native("fn_b", &app, 0x1400);
    let mut out = Vec::new();
    let mut push = |n: usize, labels: &Arc<Labels>, stack: Vec<Arc<Frame>>| {
        for _ in 0..n {
            out.push(StackSample {
                time_ns: profiler_daemon::clock::now_ns(),
                labels: labels.clone(),
                stack: stack.clone().into(),
                kind: SampleKind::Cpu,
                value: 10_000_000,
                tid: labels.tid,
            });
        }
    };
    let l1 = labels(100, "app");
    push(6, &l1, vec![fn_a.clone(), run.clone(), main.clone()]);
    push(3, &l1, vec![fn_b.clone(), run.clone(), main.clone()]);
    push(1, &l1, vec![kernel("ksys_write", 0xffff_ffff_8100_0040), fn_b, run, main.clone()]);
    push(5, &labels(200, "other"), vec![main]);
    out
}

/// The real service over an aggregator that holds [`samples`]; the aggregator's input stays
/// open until `shutdown`.
async fn service(shutdown: &CancellationToken) -> ProfilerService {
    service_with(shutdown, samples()).await
}

/// The real service over an aggregator that holds `samples`.
async fn service_with(shutdown: &CancellationToken, samples: Vec<StackSample>) -> ProfilerService {
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = mpsc::channel(64);
    let config = AggregatorConfig {
        window: Duration::from_secs(3600),
        max_stacks: 100_000,
        retention: Retention { max_age: Duration::from_secs(3600), max_bytes: 1 << 30 },
    };
    let (aggregator, _task) = actor::spawn(config, rx, stats.clone(), None);
    let total = samples.len() as u64;
    for s in samples {
        tx.send(Resolved::Sample(s)).await.unwrap();
    }
    // The aggregator runs until its input closes; keep it open for the test's lifetime.
    let input_open = shutdown.clone();
    tokio::spawn(async move {
        input_open.cancelled().await;
        drop(tx);
    });
    // Each status round trip lets the actor run.
    while stats.aggregated_total() < total {
        aggregator.status().await.unwrap();
    }
    let info = Arc::new(DaemonInfo {
        frequency: 100,
        cpus: 2,
        started: Instant::now(),
        window: config.window,
        max_stacks: 1000,
        stats,
        symbolizer: Arc::new(SymbolizerStats::default()),
        processes: Arc::new(AtomicU64::new(2)),
        program_id: 0,
        runtimes: Arc::default(),
        pods: None,
        oom_kills: Default::default(),
        resident: Default::default(),
        exporters: Vec::new(),
        memory: None,
    });
    ProfilerService::new(aggregator, info)
}

async fn serve_in_memory() -> (ProfilerClient<Channel>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let service = service(&shutdown).await;
    (serve(service, &shutdown).await, shutdown)
}

/// Serves `service` in memory until `shutdown`; the client reads answers as profctl does.
async fn serve(service: ProfilerService, shutdown: &CancellationToken) -> ProfilerClient<Channel> {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server_shutdown = shutdown.clone();
    tokio::spawn(async move {
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                // One connection, then an incoming stream that stays open: when it ends, the
                // server stops and the client would reconnect.
                tokio_stream::StreamExt::chain(
                    tokio_stream::once(Ok::<_, std::io::Error>(server_io)),
                    tokio_stream::pending(),
                ),
                server_shutdown.cancelled(),
            )
            .await
    });
    let mut client_io = Some(client_io);
    let channel =
        Endpoint::from_static("http://in-memory")
            .connect_with_connector(service_fn(move |_: Uri| {
                let io = client_io.take();
                async move {
                    io.map(TokioIo::new).ok_or_else(|| std::io::Error::other("connected twice"))
                }
            }))
            .await
            .unwrap();
    profiler_daemon::client::client(channel)
}

/// `n` samples of one process, each with its own stack of 20 frames.
fn distinct_stacks(n: usize) -> Vec<StackSample> {
    let module = Arc::new(Module { path: "/usr/lib/libbig.so".into(), build_id: None });
    let labels = Arc::new(Labels { pid: 7, tid: 7, comm: "big".into(), ..Labels::default() });
    let now = profiler_daemon::clock::now_ns();
    (0..n)
        .map(|i| StackSample {
            time_ns: now,
            labels: labels.clone(),
            stack: (0..20)
                .map(|d| native(&format!("function_{i}_{d}"), &module, (i * 20 + d) as u64))
                .collect::<Vec<_>>()
                .into(),
            kind: SampleKind::Cpu,
            value: 10_000_000,
            tid: 7,
        })
        .collect()
}

#[tokio::test]
async fn an_answer_larger_than_grpc_default_limit_reaches_the_client() {
    let shutdown = CancellationToken::new();
    let service = service_with(&shutdown, distinct_stacks(30_000)).await;
    let mut client = serve(service, &shutdown).await;
    let response = client.query(query("")).await.unwrap().into_inner();
    assert!(
        response.encoded_len() > 4 << 20,
        "the answer must be over tonic's default 4 MiB decode limit: {} bytes",
        response.encoded_len()
    );
    let stats = response.stats.unwrap();
    assert_eq!((stats.samples, stats.truncated), (30_000, false));
    assert_eq!(response.profile.unwrap().sample.len(), 30_000);
    shutdown.cancel();
}

#[tokio::test]
async fn an_answer_over_the_entry_limit_folds_the_smallest_into_other() {
    let shutdown = CancellationToken::new();
    let mut samples = distinct_stacks(1_000);
    // The first stack is hot: it must survive the cut.
    for _ in 0..50 {
        samples.push(samples[0].clone());
    }
    let service = service_with(&shutdown, samples)
        .await
        .with_limits(profiler_daemon::query::QueryLimits { max_entries: 100 });
    let mut client = serve(service, &shutdown).await;
    let response = client.query(query("")).await.unwrap().into_inner();
    let stats = response.stats.unwrap();
    assert!(stats.truncated);
    assert_eq!((stats.folded_entries, stats.folded_samples), (901, 901));
    assert_eq!(stats.samples, 1_050, "every sample is still counted");
    let view = ProfileView::new(&response.profile.unwrap()).unwrap();
    let folded = export::folded::render(&view);
    let line = |prefix: &str| folded.lines().find(|l| l.contains(prefix)).map(str::to_owned);
    assert!(line("[other] 901").is_some(), "{folded}");
    assert!(line("function_0_0 51").is_some(), "the hot stack is kept whole");
    assert_eq!(folded.lines().count(), 100);
    shutdown.cancel();
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let (mut client, shutdown) = serve_in_memory().await;
    let backwards = v1::QueryRequest {
        range: Some(v1::TimeRange { start_unix_nanos: 2_000, end_unix_nanos: 1_000 }),
        filter: None,
        ..v1::QueryRequest::default()
    };
    let err = client.query(backwards).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("empty time range"), "{}", err.message());
    let many = v1::QueryRequest {
        range: None,
        filter: Some(v1::Filter {
            matchers: (0..10_000)
                .map(|i| v1::LabelMatcher { key: "pid".into(), value: i.to_string() })
                .collect(),
        }),
        ..v1::QueryRequest::default()
    };
    let err = client.query(many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 64 conditions"), "{}", err.message());
    // 100 MB of request: refused before it is decoded.
    let huge = v1::QueryRequest {
        range: None,
        filter: Some(v1::Filter {
            matchers: vec![v1::LabelMatcher { key: "comm".into(), value: "x".repeat(100 << 20) }],
        }),
        ..v1::QueryRequest::default()
    };
    let err = client.query(huge).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // The daemon still answers.
    let ok = client.query(query("")).await.unwrap().into_inner();
    assert_eq!(ok.stats.unwrap().samples, 15);
    shutdown.cancel();
}

fn query(selector: &str) -> v1::QueryRequest {
    let selector: profiler_daemon::selector::Selector = selector.parse().unwrap();
    v1::QueryRequest {
        range: Some(v1::TimeRange { start_unix_nanos: 1, end_unix_nanos: 0 }),
        filter: Some(selector.to_proto()),
        ..v1::QueryRequest::default()
    }
}

#[tokio::test]
async fn query_returns_a_pprof_profile_that_renders_to_folded_and_top() {
    let (mut client, shutdown) = serve_in_memory().await;
    let response = client.query(query("")).await.unwrap().into_inner();
    let stats = response.stats.unwrap();
    assert_eq!(stats.samples, 15);
    let profile = response.profile.unwrap();

    // pprof conventions: two sample types, 10 ms period, a build-id on the app's mapping.
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<_> = profile.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
    assert_eq!(types, [("cpu-samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(profile.period, 10_000_000);
    let app = profile.mapping.iter().find(|m| s(m.filename) == "/opt/app/bin/app").unwrap();
    assert_eq!(s(app.build_id), "abcdef01");
    assert!(profile.mapping.iter().any(|m| s(m.filename) == "[kernel.kallsyms]"));
    let total_ns: i64 = profile.sample.iter().map(|x| x.value[1]).sum();
    assert_eq!(total_ns, 15 * 10_000_000);
    // The gzip file decodes back to the same message.
    let gz = export::pprof::encode_gzip(&profile);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    assert_eq!(v1::Profile::decode(&raw[..]).unwrap(), profile);

    let view = ProfileView::new(&profile).unwrap();
    insta::assert_snapshot!("folded_all", export::folded::render(&view));
    insta::assert_snapshot!("top_by_self", export::top::render(&view, SortKey::SelfSamples, 10));
    insta::assert_snapshot!(
        "top_by_cumulative",
        export::top::render(&view, SortKey::Cumulative, 10)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn filters_select_processes_and_bad_selectors_are_rejected() {
    let (mut client, shutdown) = serve_in_memory().await;
    let response = client.query(query("comm=app")).await.unwrap().into_inner();
    assert_eq!(response.stats.unwrap().samples, 10);
    let view = ProfileView::new(&response.profile.unwrap()).unwrap();
    assert!(view.samples.iter().all(|s| s.labels.contains(&("pid".into(), "100".into()))));

    let mut bad = query("");
    bad.filter = Some(v1::Filter {
        matchers: vec![v1::LabelMatcher { key: "podname".into(), value: "x".into() }],
    });
    let err = client.query(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("unknown selector key \"podname\""), "{}", err.message());

    let empty = v1::QueryRequest {
        range: Some(v1::TimeRange { start_unix_nanos: 10, end_unix_nanos: 5 }),
        filter: None,
        ..v1::QueryRequest::default()
    };
    assert_eq!(client.query(empty).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    shutdown.cancel();
}

#[tokio::test]
async fn status_reports_samples_and_sizes() {
    let (mut client, shutdown) = serve_in_memory().await;
    let status = client.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.frequency_hz, status.cpus, status.samples, status.processes),
        (100, 2, 15, 2)
    );
    assert_eq!(status.aggregation.unwrap().open_stacks, 4);
    assert!(status.drops.iter().all(|d| d.count == 0));
    let text = ctl::render_status(&status);
    assert!(text.contains("sampling:    100 Hz on 2 CPUs"), "{text}");
    assert!(
        text.contains("kernel:      cost unknown (start profilerd with --bpf-stats)"),
        "{text}"
    );
    shutdown.cancel();
}

#[test]
fn the_top_header_names_samples_range_and_drops() {
    let stats = v1::QueryStats {
        windows: 3,
        samples: 1500,
        value: 1500 * 10_101_010,
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_030_000_000_000,
        drops: vec![
            v1::DropCount { reason: "ring_buffer_full".into(), count: 4 },
            v1::DropCount { reason: "user_stack_error".into(), count: 0 },
        ],
        ..v1::QueryStats::default()
    };
    insta::assert_snapshot!(ctl::render_header(&stats, profiler_daemon::aggregate::Mode::Cpu));
}

/// A client that stops answering (a hung `profctl`, or one whose runtime is no longer driven)
/// never acknowledges the server's shutdown notice. The daemon closes its connection after the
/// grace period instead of waiting for it forever.
#[tokio::test]
async fn a_client_that_stops_answering_does_not_hold_up_the_shutdown() {
    let dir = std::env::temp_dir().join(format!("profiler-grpc-grace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("profiler.sock");
    let endpoint =
        GrpcEndpoint { addr: ListenAddr::Unix(socket.clone()), tls: None, mutual: false };
    let listener = Listener::bind(&endpoint).await.unwrap();
    let shutdown = CancellationToken::new();
    let service = service(&shutdown).await;
    let serving = tokio::spawn(server::serve(
        listener,
        service,
        shutdown.clone(),
        Duration::from_millis(200),
    ));
    // An HTTP/2 client preface and an empty SETTINGS frame, then silence.
    let mut client = tokio::net::UnixStream::connect(&socket).await.unwrap();
    client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    // The server's SETTINGS frame header: the connection is established.
    let mut header = [0u8; 9];
    client.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
    shutdown.cancel();
    // Only a bound on a hang: the grace period is 200 ms.
    let served = tokio::time::timeout(Duration::from_secs(60), serving).await;
    assert!(served.is_ok(), "serve() still waits for a client that does not answer");
    served.unwrap().unwrap().unwrap();
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}
