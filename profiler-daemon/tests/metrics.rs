//! The metrics endpoint over a real socket: `/metrics`, `/healthz` and the rest on an in-memory
//! pipeline (no privileges), and the endpoint of a real profilerd (root).

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use profiler_daemon::{
    aggregate::{
        Retention,
        actor::{self, AggregatorConfig},
    },
    metrics,
    server::DaemonInfo,
    stats::PipelineStats,
    symbolize::SymbolizerStats,
};
use support::{Daemon, require_bpf, scratch};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

/// The parts of an HTTP response the tests look at.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Status line and headers.
    head: String,
    body: String,
}

/// Sends one HTTP/1.1 request on a new connection and reads the whole response.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    Reply { status, head: head.to_ascii_lowercase(), body: body.to_owned() }
}

#[tokio::test]
async fn serves_metrics_health_and_nothing_else() {
    let stats = Arc::new(PipelineStats::default());
    let (_input, rx) = mpsc::channel(1);
    let config = AggregatorConfig {
        window: Duration::from_secs(3600),
        max_stacks: 1000,
        retention: Retention { max_age: Duration::from_secs(3600), max_bytes: 1 << 20 },
    };
    let (aggregator, _task) = actor::spawn(config, rx, stats.clone(), None);
    let info = Arc::new(DaemonInfo {
        frequency: 99,
        cpus: 2,
        started: Instant::now(),
        window: config.window,
        max_stacks: 1000,
        stats: stats.clone(),
        symbolizer: Arc::new(SymbolizerStats::default()),
        processes: Arc::new(AtomicU64::new(3)),
        program_id: 0,
        runtimes: Arc::default(),
        pods: None,
        oom_kills: Default::default(),
        resident: Default::default(),
        exporters: Vec::new(),
        memory: None,
    });
    let sources = metrics::Sources { info, aggregator, store: None, grpc: Arc::default() };
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(metrics::serve(listener, sources, shutdown.clone()));

    let metrics = request(addr, "GET", "/metrics").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.head.contains("content-type: text/plain; version=0.0.4"), "{metrics:?}");
    let body = &metrics.body;
    assert!(body.contains("# TYPE profilerd_samples_total counter\nprofilerd_samples_total 0\n"));
    assert!(body.contains("\nprofilerd_processes 3\n"), "{body}");
    assert!(body.contains("\nprofilerd_dropped_samples_total{reason=\"ring_buffer_full\"} 0\n"));
    assert!(body.contains("\nprofilerd_grpc_requests_total{method=\"Query\"} 0\n"), "{body}");

    // Before the collector's first drain the daemon is not healthy, and says why.
    let health = request(addr, "GET", "/healthz").await;
    assert_eq!(health.status, 503, "{health:?}");
    assert!(health.body.contains("has not drained the ring buffer"), "{health:?}");
    stats.drained();
    let health = request(addr, "GET", "/healthz?verbose=1").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(request(addr, "HEAD", "/healthz").await.status, 200);

    assert_eq!(request(addr, "GET", "/nope").await.status, 404);
    assert_eq!(request(addr, "GET", "/").await.status, 404);
    let post = request(addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert!(post.head.contains("allow: get, head"), "{post:?}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener closed at shutdown");
}

#[tokio::test]
async fn a_taken_address_is_an_error_that_names_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = metrics::bind(addr).await.unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()) && err.contains("--metrics-listen"), "{err}");
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_daemon_serves_health_and_metrics() {
    if !require_bpf("the_daemon_serves_health_and_metrics") {
        return;
    }
    let dir = scratch("metrics_daemon");
    let listen = format!("127.0.0.1:{}", free_port());
    // Blocks this test's runtime until profilerd answers `profctl status`; nothing else runs
    // on it yet.
    let daemon = Daemon::start(&dir, &["--metrics-listen", &listen]);
    let addr: SocketAddr = listen.parse().unwrap();

    // The collector drains every 100 ms; give a loaded machine some slack.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = request(addr, "GET", "/healthz").await;
        if health.status == 200 || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"), "{}", daemon.log());

    let metrics = request(addr, "GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    let body = &metrics.body;
    for family in [
        "# TYPE profilerd_samples_total counter",
        "# TYPE profilerd_kernel_samples_total counter",
        "# TYPE profilerd_store_windows gauge",
        "# TYPE profilerd_memory_windows gauge",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    // Daemon::start asked for the status at least once.
    let status_requests = body
        .lines()
        .find_map(|l| l.strip_prefix("profilerd_grpc_requests_total{method=\"Status\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(status_requests >= 1, "{body}");

    // Each bounded cache and table, with its bound; the collector and the symbolizer publish
    // their sizes about once a second.
    let entries = |body: &str, cache: &str| -> Option<u64> {
        let prefix = format!("profilerd_cache_entries{{cache=\"{cache}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = request(addr, "GET", "/metrics").await.body;
        let ready = entries(&body, "processes").is_some_and(|n| n > 0)
            && entries(&body, "user frames").is_some_and(|n| n > 0);
        if ready || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(entries(&body, "processes").is_some_and(|n| n > 0), "{body}");
    assert!(entries(&body, "user frames").is_some_and(|n| n > 0), "{body}");
    for bound in [
        "profilerd_cache_capacity{cache=\"processes\"} 32768",
        "profilerd_cache_capacity{cache=\"open off-CPU blocks\"} 65536",
        "profilerd_cache_capacity{cache=\"leaf rules\"} ",
        "profilerd_cache_capacity{cache=\"python code objects\"} ",
    ] {
        assert!(body.contains(bound), "{bound} missing:\n{body}");
    }
    // What each holds, and --max-memory (256MiB by default) divided among every part.
    let value = |prefix: &str| -> Option<u64> {
        body.lines().find_map(|l| l.strip_prefix(prefix)?.parse().ok())
    };
    assert!(
        value("profilerd_cache_bytes{cache=\"user frames\"} ").is_some_and(|b| b > 0),
        "{body}"
    );
    assert_eq!(value("profilerd_memory_max_bytes "), Some(256 << 20), "{body}");
    let parts: Vec<(&str, u64)> = body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("profilerd_memory_bytes{part=\"")?;
            let (name, value) = rest.split_once("\"} ")?;
            Some((name, value.parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = parts.iter().map(|(name, _)| *name).collect();
    for part in ["sample ring buffer", "caches and tables", "store", "recent windows"] {
        assert!(names.contains(&part), "{part} missing:\n{body}");
    }
    let total: u64 = parts.iter().map(|(_, bytes)| bytes).sum();
    assert!(total <= 256 << 20, "{total} bytes held:\n{body}");
    assert!(daemon.stop(), "profilerd stops cleanly");
}

#[test]
fn a_taken_metrics_port_stops_the_daemon_at_start() {
    if !require_bpf("a_taken_metrics_port_stops_the_daemon_at_start") {
        return;
    }
    let dir = scratch("metrics_taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--metrics-listen", &addr, "--data-dir"])
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(format!("unix://{}/p.sock", dir.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen for metrics on {addr}")), "{err}");
    assert!(err.contains("--metrics-listen"), "{err}");
    assert!(!dir.join("p.sock").exists(), "the gRPC socket is removed again");
}
