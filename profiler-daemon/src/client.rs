//! Connecting to profilerd: the endpoint syntax `profctl` accepts, TLS, and the errors it
//! reports.
//!
//! Endpoints: `unix:///PATH`; `http://HOST:PORT` (plain text); `https://HOST:PORT` (TLS, needs
//! `--ca`); `tcp://HOST:PORT`, which is TLS when `--ca` is given and plain text otherwise, so
//! that the daemon's own `--listen tcp://…` works with or without TLS.

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use profiler_proto::v1::profiler_client::ProfilerClient;
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UnixStream},
};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::{ServiceExt as _, service_fn};

use crate::tls::{self, ClientTls, HandshakeFailure, PemFile, TlsError};

/// How long to wait for a TCP connection to the daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a connection (`profctl --ca`, `--cert`, `--key`, `--tls-server-name`).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// The CA certificate (PEM) that signed the daemon's certificate.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for a daemon that requires one.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// The name to check the daemon's certificate against, instead of the endpoint's host.
    pub server_name: Option<String>,
}

/// Why profilerd could not be reached.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint string is malformed.
    #[error(
        "invalid endpoint {0:?}: expected unix:///PATH, http://HOST:PORT, https://HOST:PORT or \
         tcp://HOST:PORT"
    )]
    Invalid(String),
    /// The TLS options do not fit together or with the endpoint.
    #[error("{0}")]
    Options(String),
    /// A certificate or key file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Nothing answered.
    #[error(
        "cannot reach profilerd at {endpoint}: {reason}. Is profilerd running, and may you use its socket?"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// A plain-text connection to a daemon that serves TLS.
    #[error(
        "the daemon at {endpoint} requires TLS: connect with https://{authority} and --ca FILE \
         (the CA certificate that signed the daemon's certificate)"
    )]
    NeedsTls {
        /// The endpoint.
        endpoint: String,
        /// Its `HOST:PORT`.
        authority: String,
    },
    /// A TLS connection to a daemon that serves plain text.
    #[error(
        "the daemon at {endpoint} does not use TLS (it answered in plain text): connect with \
         http://{authority} and no --ca, or start profilerd with --tls-cert and --tls-key"
    )]
    NotTls {
        /// The endpoint.
        endpoint: String,
        /// Its `HOST:PORT`.
        authority: String,
    },
    /// The daemon requires a client certificate and none was given.
    #[error(
        "the daemon at {0} requires a client certificate (mutual TLS): pass --cert FILE and --key \
         FILE, signed by a CA in the daemon's --tls-client-ca"
    )]
    ClientCertificateRequired(String),
    /// The daemon refused the client certificate.
    #[error(
        "the daemon at {endpoint} rejected the client certificate {} (TLS alert {alert}): it \
         must be signed by a CA in the daemon's --tls-client-ca and be valid now",
        cert.display()
    )]
    ClientCertificateRejected {
        /// The endpoint.
        endpoint: String,
        /// The client certificate file.
        cert: PathBuf,
        /// The alert the daemon sent.
        alert: String,
    },
    /// The daemon's certificate was not accepted.
    #[error("the certificate of the daemon at {endpoint} was not accepted: {reason}")]
    ServerCertificate {
        /// The endpoint.
        endpoint: String,
        /// Why, with the way out.
        reason: String,
    },
}

fn reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.contains(&s) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A TCP endpoint: the URI tonic dials, and the TLS to use.
#[derive(Debug)]
struct TcpTarget {
    uri: String,
    tls: Option<ClientTls>,
}

/// Reads a `HOST:PORT` endpoint with its TLS options; see the module doc for the schemes.
fn tcp_target(endpoint: &str, options: &TlsOptions) -> Result<Option<TcpTarget>, ConnectError> {
    let (rest, tls) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = endpoint.strip_prefix("tcp://") {
        (rest, options.ca.is_some() || options.cert.is_some())
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        if options.ca.is_some() || options.cert.is_some() || options.key.is_some() {
            return Err(ConnectError::Options(format!(
                "{endpoint} is plain text, but --ca, --cert or --key was given: connect with \
                 https://{rest} for TLS"
            )));
        }
        (rest, false)
    } else {
        return Ok(None);
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(ConnectError::Invalid(endpoint.to_owned()));
    }
    let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
    if !tls {
        if options.server_name.is_some() {
            return Err(ConnectError::Options(
                "--tls-server-name needs a TLS endpoint: https://HOST:PORT and --ca".to_owned(),
            ));
        }
        return Ok(Some(TcpTarget { uri, tls: None }));
    }
    let ca = options.ca.as_deref().ok_or_else(|| {
        ConnectError::Options(format!(
            "{endpoint} uses TLS and needs --ca FILE: the CA certificate (PEM) that signed the \
             daemon's certificate"
        ))
    })?;
    let client = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            Some((PemFile { option: "--cert", path: cert }, PemFile { option: "--key", path: key }))
        }
        (None, None) => None,
        (Some(_), None) => return Err(ConnectError::Options("--cert needs --key".to_owned())),
        (None, Some(_)) => return Err(ConnectError::Options("--key needs --cert".to_owned())),
    };
    let config = tls::client_config(
        PemFile { option: "--ca", path: ca },
        client,
        options.server_name.as_deref(),
    )?;
    Ok(Some(TcpTarget { uri, tls: Some(config) }))
}

/// The largest answer a client reads. The daemon bounds each answer by entries
/// ([`crate::query::DEFAULT_MAX_ENTRIES`]), which encode to some tens of MiB; tonic's default of
/// 4 MiB would refuse a host-wide day.
pub const MAX_ANSWER_BYTES: usize = 1 << 30;

/// A client on `channel` that reads answers up to [`MAX_ANSWER_BYTES`].
pub fn client(channel: Channel) -> ProfilerClient<Channel> {
    ProfilerClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES)
}

/// Connects to `endpoint` (`unix:///PATH`, `http://HOST:PORT` or `tcp://HOST:PORT`) without
/// TLS.
pub async fn connect(endpoint: &str) -> Result<ProfilerClient<Channel>, ConnectError> {
    connect_with(endpoint, &TlsOptions::default()).await
}

/// Connects to `endpoint` with `options` for TLS; see the module doc for the endpoint forms.
/// A TCP connection is tried with one request before it is returned, so that a TLS mismatch
/// or a refused certificate is reported here, in words, rather than by the first call.
pub async fn connect_with(
    endpoint: &str,
    options: &TlsOptions,
) -> Result<ProfilerClient<Channel>, ConnectError> {
    let unreachable = |e: &tonic::transport::Error| ConnectError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason: reason(e),
    };
    if let Some(path) = endpoint.strip_prefix("unix://") {
        // A Unix socket needs no TLS (its file mode decides who connects): the TLS options,
        // perhaps set in the environment for remote daemons, do not apply.
        if !path.starts_with('/') {
            return Err(ConnectError::Invalid(endpoint.to_owned()));
        }
        let path = PathBuf::from(path);
        // The URI is required by the API but unused: the connector dials the socket.
        let channel =
            Endpoint::from_static("http://localhost")
                .connect_with_connector(service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|e| unreachable(&e))?;
        return Ok(client(channel));
    }
    let target =
        tcp_target(endpoint, options)?.ok_or_else(|| ConnectError::Invalid(endpoint.to_owned()))?;
    let uri: Uri = target.uri.parse().map_err(|_| ConnectError::Invalid(endpoint.to_owned()))?;
    let mut channel = Endpoint::from(uri.clone()).connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = &target.tls {
        channel = channel.tls_config(tls.config.clone()).map_err(|e| unreachable(&e))?;
    }
    let failed = async |e: tonic::transport::Error| {
        let tls = target.tls.as_ref();
        explain(endpoint, options, tls, &uri, &e).await.unwrap_or_else(|| unreachable(&e))
    };
    let channel = match channel.connect().await {
        Ok(channel) => channel,
        Err(e) => return Err(failed(e).await),
    };
    if let Err(e) = probe(&channel).await {
        return Err(failed(e).await);
    }
    Ok(client(channel))
}

/// Sends one request for a method no daemon has: any answer (tonic's `UNIMPLEMENTED`) shows
/// that TLS and HTTP/2 work. With TLS 1.3 the server checks the client certificate after the
/// client has finished its handshake, so a refusal only shows up here. The request reaches no
/// handler, so it costs the daemon nothing and counts in no metric.
async fn probe(channel: &Channel) -> Result<(), tonic::transport::Error> {
    use tonic::codegen::http::{self, HeaderValue, header};
    let mut request = http::Request::new(tonic::body::Body::empty());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = Uri::from_static("/profiler.v1.Profiler/ConnectionProbe");
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    channel.clone().oneshot(request).await.map(drop)
}

/// Says in words why a TCP connection failed, when TLS explains it: a plain-text client is
/// checked for a TLS daemon; a TLS client's error is read, or the handshake tried once more to
/// see the daemon's alert.
async fn explain(
    endpoint: &str,
    options: &TlsOptions,
    tls: Option<&ClientTls>,
    uri: &Uri,
    err: &tonic::transport::Error,
) -> Option<ConnectError> {
    let endpoint = endpoint.to_owned();
    let authority = uri.authority()?.as_str();
    let Some(tls) = tls else {
        let needs_tls = ConnectError::NeedsTls { endpoint, authority: authority.to_owned() };
        return answers_in_tls(authority).await.then_some(needs_tls);
    };
    let failure = match tls::handshake_failure(err) {
        Some(failure) => failure,
        None => {
            // tonic checks the certificate against the endpoint's host unless told otherwise.
            let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
            let name = options.server_name.as_deref().unwrap_or(host);
            tls::diagnose(tls.rustls.clone(), authority.to_owned(), name.to_owned()).await?
        }
    };
    Some(match failure {
        HandshakeFailure::ClientCertificateRequired => {
            ConnectError::ClientCertificateRequired(endpoint)
        }
        HandshakeFailure::ClientCertificateRejected(alert) => match &options.cert {
            Some(cert) => {
                ConnectError::ClientCertificateRejected { endpoint, cert: cert.clone(), alert }
            }
            None => ConnectError::ClientCertificateRequired(endpoint),
        },
        HandshakeFailure::UnknownIssuer => ConnectError::ServerCertificate {
            endpoint,
            reason: match &options.ca {
                Some(ca) => format!("it is not signed by the CA in --ca {}", ca.display()),
                None => "it is not signed by the CA given with --ca".to_owned(),
            },
        },
        HandshakeFailure::WrongName { expected, presented } => ConnectError::ServerCertificate {
            endpoint,
            reason: format!(
                "it is not valid for the name {}{}; connect with a name it holds, or pass \
                 --tls-server-name NAME",
                if expected.is_empty() { "checked".to_owned() } else { format!("{expected:?}") },
                if presented.is_empty() {
                    String::new()
                } else {
                    format!(" (it holds {})", presented.join(", "))
                }
            ),
        },
        HandshakeFailure::BadServerCertificate(why) => {
            ConnectError::ServerCertificate { endpoint, reason: why }
        }
        HandshakeFailure::NotTls => {
            ConnectError::NotTls { endpoint, authority: authority.to_owned() }
        }
    })
}

/// Whether the server at `authority` is a TLS server: sent the HTTP/2 preface in plain text,
/// it answers with a TLS alert record (type 21, version 3.x) before closing.
async fn answers_in_tls(authority: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(authority).await.ok()?;
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        Some(head == [21, 3])
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ca: bool, cert: bool, key: bool) -> TlsOptions {
        TlsOptions {
            ca: ca.then(|| "/nonexistent/ca.pem".into()),
            cert: cert.then(|| "/nonexistent/client.pem".into()),
            key: key.then(|| "/nonexistent/client.key".into()),
            server_name: None,
        }
    }

    fn error(endpoint: &str, options: &TlsOptions) -> String {
        tcp_target(endpoint, options).unwrap_err().to_string()
    }

    #[test]
    fn plain_text_endpoints() {
        for endpoint in ["http://127.0.0.1:50051", "tcp://127.0.0.1:50051"] {
            let target = tcp_target(endpoint, &TlsOptions::default()).unwrap().unwrap();
            assert_eq!(target.uri, "http://127.0.0.1:50051");
            assert!(target.tls.is_none());
        }
        assert!(tcp_target("unix:///run/x.sock", &TlsOptions::default()).unwrap().is_none());
    }

    #[test]
    fn tls_endpoints_need_a_readable_ca() {
        let err = error("https://h:1", &TlsOptions::default());
        assert!(err.contains("needs --ca FILE"), "{err}");
        // https:// and tcp:// with --ca both mean TLS: the CA file is read.
        for endpoint in ["https://h:1", "tcp://h:1"] {
            let err = error(endpoint, &options(true, false, false));
            assert!(err.starts_with("cannot read --ca /nonexistent/ca.pem: "), "{err}");
        }
    }

    #[test]
    fn contradictory_options_are_refused() {
        let err = error("http://h:1", &options(true, false, false));
        assert!(err.contains("is plain text") && err.contains("https://h:1"), "{err}");
        assert!(error("https://h:1", &options(true, true, false)).contains("--cert needs --key"));
        assert!(error("https://h:1", &options(true, false, true)).contains("--key needs --cert"));
        let named = TlsOptions { server_name: Some("x".into()), ..TlsOptions::default() };
        assert!(error("tcp://h:1", &named).contains("--tls-server-name needs a TLS endpoint"));
        assert!(error("https://h:1/path", &options(true, false, false)).contains("invalid"));
    }
}
