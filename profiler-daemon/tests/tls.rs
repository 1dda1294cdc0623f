//! TLS and mutual TLS on the gRPC endpoint, over TCP on loopback: certificates made here with
//! rcgen, the real service served through the daemon's own listener code, and the connection
//! errors `profctl` reports. Needs no privileges.

mod support;

use std::{
    net::SocketAddr,
    path::Path,
    process::Output,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use clap::Parser as _;
use profiler_daemon::{
    aggregate::{
        Retention,
        actor::{self, AggregatorConfig},
    },
    client::{self, ConnectError, TlsOptions},
    config::DaemonArgs,
    server::{
        DaemonInfo, GrpcEndpoint, ListenError, Listener, Plaintext, ProfilerService,
        plaintext_allowed, serve,
    },
    stats::PipelineStats,
    symbolize::SymbolizerStats,
};
use profiler_proto::v1;
use support::pki::Pki;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn daemon_args(listen: &str, flags: &[String]) -> DaemonArgs {
    let argv = ["profilerd", "--listen", listen].into_iter().map(str::to_owned);
    DaemonArgs::try_parse_from(argv.chain(flags.iter().cloned())).unwrap()
}

/// The real service over an empty in-memory pipeline.
fn service(shutdown: &CancellationToken) -> ProfilerService {
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = mpsc::channel(1);
    let config = AggregatorConfig {
        window: Duration::from_secs(3600),
        max_stacks: 1000,
        retention: Retention { max_age: Duration::from_secs(3600), max_bytes: 1 << 20 },
    };
    let (aggregator, _task) = actor::spawn(config, rx, stats.clone(), None);
    // The aggregator runs until its input closes; keep it open until the test ends.
    let input_open = shutdown.clone();
    tokio::spawn(async move {
        input_open.cancelled().await;
        drop(tx);
    });
    let info = Arc::new(DaemonInfo {
        frequency: 99,
        cpus: 1,
        started: Instant::now(),
        window: config.window,
        max_stacks: 1000,
        stats,
        symbolizer: Arc::new(SymbolizerStats::default()),
        processes: Arc::new(AtomicU64::new(0)),
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

/// Serves the service on 127.0.0.1 with `flags` the way profilerd does: options checked by
/// `GrpcEndpoint::from_args`, bound by `Listener::bind`, served by `serve`.
async fn serve_tcp(flags: &[String]) -> (SocketAddr, CancellationToken) {
    let endpoint = GrpcEndpoint::from_args(&daemon_args("tcp://127.0.0.1:0", flags)).unwrap();
    let listener = Listener::bind(&endpoint).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let service = service(&shutdown);
    tokio::spawn(serve(listener, service, shutdown.clone(), Duration::from_secs(1)));
    (addr, shutdown)
}

async fn status(endpoint: &str, tls: &TlsOptions) -> Result<v1::StatusResponse, ConnectError> {
    let connect = client::connect_with(endpoint, tls);
    let mut client = tokio::time::timeout(Duration::from_secs(30), connect).await.unwrap()?;
    Ok(client.status(v1::StatusRequest {}).await.unwrap().into_inner())
}

async fn status_error(endpoint: &str, tls: &TlsOptions) -> String {
    match status(endpoint, tls).await {
        Ok(_) => panic!("{endpoint} answered with {tls:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn tls_status_works_with_the_ca() {
    let pki = Pki::new("tls_status_works_with_the_ca");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(false)).await;
    let ca = pki.client("ca", None);
    let port = addr.port();
    // By DNS name, by IP address (the certificate holds both), and tcp:// with --ca is TLS.
    for endpoint in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("tcp://127.0.0.1:{port}"),
    ] {
        let answer = status(&endpoint, &ca).await.unwrap();
        assert_eq!(answer.version, env!("CARGO_PKG_VERSION"), "{endpoint}");
    }
    // A client certificate is fine where none is required.
    status(&format!("https://localhost:{port}"), &pki.client("ca", Some("client"))).await.unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn the_daemon_certificate_must_come_from_the_ca_and_hold_the_name() {
    let pki = Pki::new("the_daemon_certificate_must_come_from_the_ca_and_hold_the_name");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(false)).await;
    let endpoint = format!("https://127.0.0.1:{}", addr.port());

    let err = status_error(&endpoint, &pki.client("other-ca", None)).await;
    assert!(err.contains("was not accepted: it is not signed by the CA in --ca"), "{err}");

    let wrong = TlsOptions { server_name: Some("db.example".into()), ..pki.client("ca", None) };
    let err = status_error(&endpoint, &wrong).await;
    assert!(
        err.contains("not valid for the name \"db.example\" (it holds localhost, 127.0.0.1)"),
        "{err}"
    );
    assert!(err.contains("--tls-server-name"), "{err}");
    // An IP endpoint checked against a name the certificate holds.
    let named = TlsOptions { server_name: Some("localhost".into()), ..pki.client("ca", None) };
    status(&endpoint, &named).await.unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn mutual_tls_accepts_a_client_certificate_from_the_ca() {
    let pki = Pki::new("mutual_tls_accepts_a_client_certificate_from_the_ca");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(true)).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    let answer = status(&endpoint, &pki.client("ca", Some("client"))).await.unwrap();
    assert_eq!(answer.version, env!("CARGO_PKG_VERSION"));
    shutdown.cancel();
}

#[tokio::test]
async fn mutual_tls_rejects_a_client_certificate_from_another_ca() {
    let pki = Pki::new("mutual_tls_rejects_a_client_certificate_from_another_ca");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(true)).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    let err = status_error(&endpoint, &pki.client("ca", Some("other-client"))).await;
    assert!(err.contains("rejected the client certificate"), "{err}");
    assert!(err.contains("other-client.pem"), "{err}");
    assert!(err.contains("--tls-client-ca"), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let pki = Pki::new("mutual_tls_rejects_a_client_without_a_certificate");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(true)).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    let err = status_error(&endpoint, &pki.client("ca", None)).await;
    assert!(err.contains("requires a client certificate"), "{err}");
    assert!(err.contains("--cert FILE and --key FILE"), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_plain_text_client_is_told_that_the_daemon_requires_tls() {
    let pki = Pki::new("a_plain_text_client_is_told_that_the_daemon_requires_tls");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(false)).await;
    for endpoint in [format!("http://127.0.0.1:{}", addr.port()), format!("tcp://{addr}")] {
        let err = status_error(&endpoint, &TlsOptions::default()).await;
        let hint = format!("requires TLS: connect with https://127.0.0.1:{} and --ca", addr.port());
        assert!(err.contains(&hint), "{err}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_tls_client_is_told_that_the_daemon_serves_plain_text() {
    let pki = Pki::new("a_tls_client_is_told_that_the_daemon_serves_plain_text");
    // Plain text on loopback needs no --insecure.
    let (addr, shutdown) = serve_tcp(&[]).await;
    let err =
        status_error(&format!("https://127.0.0.1:{}", addr.port()), &pki.client("ca", None)).await;
    assert!(
        err.contains(&format!(
            "does not use TLS (it answered in plain text): connect with http://{addr} and no --ca"
        )),
        "{err}"
    );
    // And the same daemon answers in plain text.
    status(&format!("http://{addr}"), &TlsOptions::default()).await.unwrap();
    shutdown.cancel();
}

#[test]
fn plain_text_is_refused_off_loopback_unless_insecure() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    for local in ["127.0.0.1:50051", "127.1.2.3:1", "[::1]:50051", "[::ffff:127.0.0.1]:1"] {
        assert_eq!(plaintext_allowed(addr(local), false).unwrap(), Plaintext::Loopback, "{local}");
    }
    for network in ["0.0.0.0:50051", "[::]:50051", "192.0.2.7:50051"] {
        let err = plaintext_allowed(addr(network), false).unwrap_err().to_string();
        for needle in ["plain text", network, "--tls-cert", "--tls-key", "--insecure"] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        assert_eq!(plaintext_allowed(addr(network), true).unwrap(), Plaintext::Insecure);
    }
}

#[tokio::test]
async fn the_listener_applies_the_plain_text_rule() {
    let pki = Pki::new("the_listener_applies_the_plain_text_rule");
    let refused = GrpcEndpoint::from_args(&daemon_args("tcp://0.0.0.0:0", &[])).unwrap_err();
    assert!(matches!(refused, ListenError::PlaintextRefused(_)), "{refused}");

    let insecure = ["--insecure".to_owned()];
    let endpoint = GrpcEndpoint::from_args(&daemon_args("tcp://0.0.0.0:0", &insecure)).unwrap();
    assert_eq!(endpoint.security(), "off");
    let listener = Listener::bind(&endpoint).await.unwrap();
    assert!(listener.local_addr().unwrap().ip().is_unspecified());
    drop(listener);

    // TLS needs no --insecure anywhere.
    let flags = pki.server_flags(true);
    let endpoint = GrpcEndpoint::from_args(&daemon_args("tcp://0.0.0.0:0", &flags)).unwrap();
    assert_eq!(endpoint.security(), "mutual-tls");
}

#[test]
fn bad_certificate_files_are_named_with_their_option() {
    let pki = Pki::new("bad_certificate_files_are_named_with_their_option");
    let error = |flags: &[&str]| {
        let flags: Vec<String> = flags.iter().map(|&f| f.to_owned()).collect();
        GrpcEndpoint::from_args(&daemon_args("tcp://127.0.0.1:0", &flags)).unwrap_err().to_string()
    };
    let path = |name: &str| pki.path(name).display().to_string();
    let (cert, key, missing) = (path("server.pem"), path("server.key"), path("missing.pem"));

    let err = error(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(err.starts_with(&format!("cannot read --tls-cert {missing}: ")), "{err}");
    let err = error(&["--tls-cert", &cert, "--tls-key", &missing]);
    assert!(err.starts_with(&format!("cannot read --tls-key {missing}: ")), "{err}");
    // A key in place of the certificate, and a certificate in place of the key.
    let err = error(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(err.contains(&format!("--tls-cert {key} holds no certificate")), "{err}");
    let err = error(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(err.contains(&format!("--tls-key {cert} holds no private key")), "{err}");
    // The client's key with the server's certificate.
    let err = error(&["--tls-cert", &cert, "--tls-key", &path("client.key")]);
    assert!(err.contains("does not belong to the certificate in --tls-cert"), "{err}");
    let err = error(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &key]);
    assert!(err.contains(&format!("--tls-client-ca {key} holds no certificate")), "{err}");
    assert!(error(&["--tls-cert", &cert]).contains("--tls-cert needs --tls-key"));
}

async fn profctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_profctl"))
        .args(args)
        .env_remove("PROFCTL_ENDPOINT")
        .output();
    tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profctl_over_mutual_tls() {
    let pki = Pki::new("profctl_over_mutual_tls");
    let (addr, shutdown) = serve_tcp(&pki.server_flags(true)).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    let path = |name: &str| pki.path(name).display().to_string();
    let (ca, client, client_key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let (other, other_key) = (path("other-client.pem"), path("other-client.key"));

    let tls = ["--endpoint", &endpoint, "--ca", &ca];
    let out =
        profctl(&[&tls[..], &["--cert", &client, "--key", &client_key, "status"]].concat()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");

    let out =
        profctl(&[&tls[..], &["--cert", &other, "--key", &other_key, "status"]].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("rejected the client certificate"), "{stderr}");

    let out = profctl(&[&tls[..], &["status"]].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires a client certificate"), "{stderr}");

    let plain = format!("http://127.0.0.1:{}", addr.port());
    let out = profctl(&["--endpoint", &plain, "status"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    shutdown.cancel();
}

#[test]
fn profilerd_refuses_plain_text_on_the_network() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    // An empty config file, so that one in /etc cannot change the options.
    let config = dir.join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--config", config.to_str().unwrap(), "--listen", "tcp://0.0.0.0:50051"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in ["refusing to serve gRPC in plain text", "--tls-cert", "--tls-key", "--insecure"]
    {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}
