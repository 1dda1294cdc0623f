//! Connecting to profilerd: the endpoint syntax `profctl` accepts and the errors it reports.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use profiler_proto::v1::profiler_client::ProfilerClient;
use thiserror::Error;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// Why profilerd could not be reached.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint string is malformed.
    #[error("invalid endpoint {0:?}: expected unix:///PATH, http://HOST:PORT or tcp://HOST:PORT")]
    Invalid(String),
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

/// Connects to `endpoint` (`unix:///PATH`, `http://HOST:PORT` or `tcp://HOST:PORT`).
pub async fn connect(endpoint: &str) -> Result<ProfilerClient<Channel>, ConnectError> {
    let unreachable = |e: tonic::transport::Error| ConnectError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason: reason(&e),
    };
    let channel = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(ConnectError::Invalid(endpoint.to_owned()));
        }
        let path = PathBuf::from(path);
        // The URI is required by the API but unused: the connector dials the socket.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(unreachable)?
    } else {
        let uri = match endpoint.strip_prefix("tcp://") {
            Some(rest) => format!("http://{rest}"),
            None if endpoint.starts_with("http://") => endpoint.to_owned(),
            None => return Err(ConnectError::Invalid(endpoint.to_owned())),
        };
        Endpoint::from_shared(uri)
            .map_err(|_| ConnectError::Invalid(endpoint.to_owned()))?
            .connect()
            .await
            .map_err(unreachable)?
    };
    Ok(ProfilerClient::new(channel))
}
