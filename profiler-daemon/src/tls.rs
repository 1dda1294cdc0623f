//! TLS for gRPC over TCP: loading and checking the certificate files of the daemon and of
//! `profctl`, and naming what went wrong in a handshake.
//!
//! The files are checked here, before tonic sees them, so that a bad file is reported with the
//! option that named it rather than as a handshake failure later.

use std::{
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    AlertDescription, CertificateError, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
    sign::{CertifiedKey, SingleCertAndKey},
};
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a peer may take over the TLS handshake, so that a silent one cannot hold it open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate or key file that cannot be used. Each error names the file and the option
/// that gave it.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {option} {}: {source}", path.display())]
    Read {
        /// The option, for example `--tls-cert`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file holds no PEM certificate.
    #[error(
        "{option} {} holds no certificate: expected PEM \"-----BEGIN CERTIFICATE-----\" blocks{detail}",
        path.display()
    )]
    NoCertificate {
        /// The option.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader said, if anything.
        detail: String,
    },
    /// The file holds no PEM private key.
    #[error(
        "{option} {} holds no private key: expected a PEM \"-----BEGIN PRIVATE KEY-----\" \
         (PKCS#8), \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block{detail}",
        path.display()
    )]
    NoKey {
        /// The option.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader said, if anything.
        detail: String,
    },
    /// The key is not the one of the certificate.
    #[error(
        "the private key in {key_option} {} does not belong to the certificate in {cert_option} \
         {}: give the key that was generated with that certificate",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate option.
        cert_option: &'static str,
        /// The certificate file.
        cert: PathBuf,
        /// The key option.
        key_option: &'static str,
        /// The key file.
        key: PathBuf,
    },
    /// The file was read but cannot be used (an unsupported key type, a malformed CA).
    #[error("{option} {}: {reason}", path.display())]
    Unusable {
        /// The option.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A PEM file and the option that named it.
#[derive(Clone, Copy, Debug)]
pub struct PemFile<'a> {
    /// The option, for example `--tls-cert`, as errors name it.
    pub option: &'static str,
    /// The file.
    pub path: &'a Path,
}

impl PemFile<'_> {
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(self.path).map_err(|source| TlsError::Read {
            option: self.option,
            path: self.path.to_owned(),
            source,
        })
    }

    fn certificates(&self, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let none = |detail: String| TlsError::NoCertificate {
            option: self.option,
            path: self.path.to_owned(),
            detail,
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| none(format!(" ({e})")))?;
        if certs.is_empty() {
            return Err(none(String::new()));
        }
        Ok(certs)
    }

    fn private_key(&self, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::NoKey {
            option: self.option,
            path: self.path.to_owned(),
            detail: match e {
                rustls::pki_types::pem::Error::NoItemsFound => String::new(),
                e => format!(" ({e})"),
            },
        })
    }

    fn unusable(&self, reason: impl std::fmt::Display) -> TlsError {
        TlsError::Unusable {
            option: self.option,
            path: self.path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The crypto provider: ring. tonic builds its server config with rustls' process default,
/// which rustls only picks by itself while exactly one provider is compiled in; installing it
/// keeps the server working if another dependency ever turns on aws-lc-rs too.
fn provider() -> Arc<CryptoProvider> {
    if let Some(provider) = CryptoProvider::get_default() {
        return provider.clone();
    }
    // Losing a race to install is fine: someone installed a provider, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn key_pair(cert: PemFile<'_>, key: PemFile<'_>) -> Result<(Identity, CertifiedKey), TlsError> {
    let (cert_pem, key_pem) = (cert.read()?, key.read()?);
    let chain = cert.certificates(&cert_pem)?;
    let private = key.private_key(&key_pem)?;
    let pair = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert_option: cert.option,
            cert: cert.path.to_owned(),
            key_option: key.option,
            key: key.path.to_owned(),
        },
        rustls::Error::InvalidCertificate(e) => cert.unusable(format!("bad certificate: {e}")),
        e => key.unusable(format!("unusable private key: {e}")),
    })?;
    Ok((Identity::from_pem(cert_pem, key_pem), pair))
}

/// Reads CA certificates into a root store, refusing a file with none that rustls accepts.
fn roots(ca: PemFile<'_>) -> Result<(Vec<u8>, RootCertStore), TlsError> {
    let pem = ca.read()?;
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(ca.certificates(&pem)?);
    if roots.is_empty() {
        return Err(ca.unusable(format!("none of its {rejected} certificates is a usable CA")));
    }
    Ok((pem, roots))
}

/// The daemon's TLS: its certificate chain and key and, for mutual TLS, the CA certificates
/// that client certificates must be signed by (a client without one is refused).
pub fn server_config(
    cert: PemFile<'_>,
    key: PemFile<'_>,
    client_ca: Option<PemFile<'_>>,
) -> Result<ServerTlsConfig, TlsError> {
    let (identity, _) = key_pair(cert, key)?;
    let mut config = ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca {
        let (pem, roots) = roots(ca)?;
        // tonic builds the same verifier; building it here reports a bad CA up front.
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| ca.unusable(e))?;
        config = config.client_ca_root(Certificate::from_pem(pem));
    }
    Ok(config)
}

/// profctl's TLS settings: for tonic, and the same as a rustls config for [`diagnose`].
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// What tonic connects with.
    pub config: ClientTlsConfig,
    /// The same CA and client certificate, for [`diagnose`].
    pub rustls: Arc<rustls::ClientConfig>,
}

/// profctl's TLS: the CA that signed the daemon's certificate, optionally a client certificate
/// and key (mutual TLS), and the name to check the daemon's certificate against when it is not
/// the endpoint's host.
pub fn client_config(
    ca: PemFile<'_>,
    client: Option<(PemFile<'_>, PemFile<'_>)>,
    server_name: Option<&str>,
) -> Result<ClientTls, TlsError> {
    let (pem, roots) = roots(ca)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .timeout(HANDSHAKE_TIMEOUT);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ca.unusable(e))?
        .with_root_certificates(roots);
    let mut rustls = match client {
        Some((cert, key)) => {
            let (identity, pair) = key_pair(cert, key)?;
            config = config.identity(identity);
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(pair)))
        }
        None => builder.with_no_client_auth(),
    };
    rustls.alpn_protocols = vec![b"h2".to_vec()];
    if let Some(name) = server_name {
        config = config.domain_name(name);
    }
    Ok(ClientTls { config, rustls: Arc::new(rustls) })
}

/// The start of an HTTP/2 connection: the preface and an empty SETTINGS frame.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Connects to `authority` once more with rustls alone, checking the certificate against
/// `server_name`, and reads the daemon's first answer, to tell why a TLS connection failed.
/// Under TLS 1.3 the daemon judges the client certificate after the client has finished its
/// handshake, and the failed request that tonic reports has lost the alert that says so.
pub async fn diagnose(
    config: Arc<rustls::ClientConfig>,
    authority: String,
    server_name: String,
) -> Option<HandshakeFailure> {
    let blocking = move || -> Option<HandshakeFailure> {
        let name = ServerName::try_from(server_name).ok()?;
        let mut conn = rustls::ClientConnection::new(config, name).ok()?;
        let addr = authority.to_socket_addrs().ok()?.next()?;
        let mut tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT).ok()?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).ok()?;
        tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).ok()?;
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        // A daemon that accepted the handshake answers with its own SETTINGS frame.
        let answer = tls.write_all(H2_START).and_then(|()| tls.read(&mut [0; 1]));
        answer.err().and_then(|e| handshake_failure(&e))
    };
    tokio::task::spawn_blocking(blocking).await.ok().flatten()
}

/// What a failed TLS connection says about its cause, as far as the client can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server asked for a client certificate and none was sent.
    ClientCertificateRequired,
    /// The server refused the client certificate (the alert it sent).
    ClientCertificateRejected(String),
    /// The server's certificate is not signed by the client's CA.
    UnknownIssuer,
    /// The server's certificate does not hold the name that was checked.
    WrongName {
        /// The name checked.
        expected: String,
        /// The names the certificate holds, when known.
        presented: Vec<String>,
    },
    /// The server's certificate was refused for another reason.
    BadServerCertificate(String),
    /// The server did not answer in TLS: it serves plain text.
    NotTls,
}

/// Finds the rustls error in `err`'s chain and says what it means. tonic and hyper wrap it,
/// often inside an `io::Error` whose `source` skips it; once it has passed through h2 only its
/// text is left, which is why [`diagnose`] exists.
pub fn handshake_failure(err: &(dyn std::error::Error + 'static)) -> Option<HandshakeFailure> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return classify(tls);
        }
        cur = e.source();
    }
    None
}

/// A name as rustls presents it (`DnsName("host")`, `IpAddress(10.0.0.1)`), as a user wrote it.
fn plain_name(presented: &str) -> String {
    let inner = presented
        .strip_prefix("DnsName(")
        .or_else(|| presented.strip_prefix("IpAddress("))
        .and_then(|rest| rest.strip_suffix(')'));
    inner.map_or(presented, |name| name.trim_matches('"')).to_owned()
}

fn classify(e: &rustls::Error) -> Option<HandshakeFailure> {
    Some(match e {
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            HandshakeFailure::ClientCertificateRequired
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => HandshakeFailure::ClientCertificateRejected(format!("{alert:?}")),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            HandshakeFailure::UnknownIssuer
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => HandshakeFailure::WrongName {
            expected: expected.to_str().into_owned(),
            presented: presented.iter().map(|name| plain_name(name)).collect(),
        },
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            HandshakeFailure::WrongName { expected: String::new(), presented: Vec::new() }
        }
        rustls::Error::InvalidCertificate(e) => {
            HandshakeFailure::BadServerCertificate(e.to_string())
        }
        rustls::Error::InvalidMessage(_) => HandshakeFailure::NotTls,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_rustls_error_inside_an_io_error() {
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let io = io::Error::other(alert);
        assert_eq!(handshake_failure(&io), Some(HandshakeFailure::ClientCertificateRequired));
        let plain = io::Error::other("connection reset");
        assert_eq!(handshake_failure(&plain), None);
    }

    #[test]
    fn presented_names_read_as_written() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("URI(x)"), "URI(x)");
    }

    #[test]
    fn a_missing_file_is_named_with_its_option() {
        let path = Path::new("/nonexistent/cert.pem");
        let file = PemFile { option: "--tls-cert", path };
        let err = key_pair(file, PemFile { option: "--tls-key", path }).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot read --tls-cert /nonexistent/cert.pem: "), "{text}");
    }

    #[test]
    fn a_file_without_pem_blocks_is_refused() {
        let path = Path::new("x.pem");
        let file = PemFile { option: "--ca", path };
        let err = file.certificates(b"not a certificate\n").unwrap_err().to_string();
        assert!(err.contains("--ca x.pem holds no certificate"), "{err}");
        let err = file.private_key(b"").unwrap_err().to_string();
        assert!(err.contains("--ca x.pem holds no private key"), "{err}");
    }
}
