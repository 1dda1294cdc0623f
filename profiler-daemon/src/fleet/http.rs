//! The exporters' HTTP client (hyper, rustls with the system's CA certificates), and OTLP over
//! HTTP/protobuf: `POST /v1development/profiles` of an OpenTelemetry Collector.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, StatusCode, Uri,
    body::Bytes,
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use profiler_proto::opentelemetry::proto::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message as _;

use super::{Delivered, EndpointError, OtlpEncoder, SendError, Sink};
use crate::tls::ClientTls;

/// How long one request may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The path of the profiles signal under an OTLP/HTTP endpoint.
pub const OTLP_PROFILES_PATH: &str = "/v1development/profiles";

/// A client that posts to one endpoint with fixed headers.
#[derive(Clone, Debug)]
pub struct HttpClient {
    url: String,
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpClient {
    /// A client posting to `url` (`http://` or `https://`; the system's CA certificates check
    /// the latter) with `headers` (`KEY=VALUE`).
    pub fn new(
        url: &str,
        headers: &[String],
        tls: Option<&ClientTls>,
    ) -> Result<HttpClient, EndpointError> {
        let bad_url = || EndpointError::Url { url: url.to_owned() };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad_url());
        }
        let uri: Uri = url.parse().map_err(|_| bad_url())?;
        if uri.host().is_none() {
            return Err(bad_url());
        }
        let headers = headers
            .iter()
            .map(|header| {
                parse_header(header).ok_or_else(|| EndpointError::Header { header: header.clone() })
            })
            .collect::<Result<_, _>>()?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match tls {
            Some(tls) => {
                // The configured CA and client certificate, over HTTP/1.1.
                let mut config = (*tls.rustls).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                builder.with_tls_config(config)
            }
            None => builder
                .with_provider_and_native_roots(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .map_err(|e| EndpointError::Tls { url: url.to_owned(), source: e.into() })?,
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(HttpClient { url: url.to_owned(), uri, client, headers })
    }

    /// The endpoint as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `body` to the endpoint's `path` (appended to its own path) with `query`; returns
    /// the response body of a 2xx answer.
    pub async fn post(
        &self,
        path: &str,
        query: &str,
        content_type: &'static str,
        body: Body,
    ) -> Result<Bytes, SendError> {
        let base = self.uri.path().trim_end_matches('/');
        let path = if base.ends_with(path) { base.to_owned() } else { format!("{base}{path}") };
        let mut target = format!(
            "{}://{}{path}",
            self.uri.scheme_str().unwrap_or("http"),
            self.uri.authority().map_or("", |a| a.as_str())
        );
        if !query.is_empty() {
            target.push('?');
            target.push_str(query);
        }
        let mut request = Request::post(&target).header(CONTENT_TYPE, content_type);
        if body.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let mut request = request
            .body(Full::new(Bytes::from(body.bytes)))
            .map_err(|e| SendError::Refused(format!("{target}: {e}")))?;
        for (key, value) in &self.headers {
            request.headers_mut().insert(key.clone(), value.clone());
        }
        let response = match tokio::time::timeout(CALL_TIMEOUT, self.client.request(request)).await
        {
            Err(_) => return Err(SendError::Retry(format!("{target} did not answer in time"))),
            Ok(Err(e)) => {
                let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                return Err(SendError::Retry(format!("{target} is unreachable: {cause}")));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let body = tokio::time::timeout(CALL_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| SendError::Retry(format!("{target} did not finish its answer")))?
            .map_err(|e| SendError::Retry(format!("{target}: reading the answer: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let detail = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
        Err(classify(&target, status, &detail))
    }
}

/// A request body.
#[derive(Debug)]
pub struct Body {
    /// The bytes sent.
    pub bytes: Vec<u8>,
    /// Whether they are gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Body {
    /// `bytes` as they are.
    pub fn plain(bytes: Vec<u8>) -> Body {
        Body { bytes, gzip: false }
    }

    /// `bytes`, gzip-compressed.
    pub fn gzipped(bytes: &[u8]) -> Body {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).expect("writing to a Vec cannot fail");
        Body { bytes: gz.finish().expect("writing to a Vec cannot fail"), gzip: true }
    }
}

/// `KEY=VALUE` as an HTTP header.
fn parse_header(header: &str) -> Option<(HeaderName, HeaderValue)> {
    let (key, value) = header.split_once('=')?;
    let key = HeaderName::from_bytes(key.trim().to_ascii_lowercase().as_bytes()).ok()?;
    let value = HeaderValue::from_str(value.trim()).ok()?;
    Some((key, value))
}

/// Whether a refused request is worth sending again, and what to tell the operator.
fn classify(target: &str, status: StatusCode, detail: &str) -> SendError {
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => {
            SendError::Refused(format!("{target} refused the profiles ({status}): {detail}"))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SendError::Retry(format!(
            "{target} refused the credentials ({status}): {detail}; check the configured headers"
        )),
        StatusCode::NOT_FOUND => SendError::Retry(format!(
            "{target} does not accept profiles at this path ({status}); check the endpoint"
        )),
        _ => SendError::Retry(format!("{target} failed ({status}): {detail}")),
    }
}

/// OTLP over HTTP/protobuf.
#[derive(Debug)]
pub struct OtlpHttpSink {
    client: HttpClient,
    encoder: OtlpEncoder,
}

impl OtlpHttpSink {
    /// A sink posting to `url` (its `/v1development/profiles`, unless the URL ends with it).
    pub fn new(
        url: &str,
        headers: &[String],
        encoder: OtlpEncoder,
        tls: Option<&ClientTls>,
    ) -> Result<OtlpHttpSink, EndpointError> {
        Ok(OtlpHttpSink { client: HttpClient::new(url, headers, tls)?, encoder })
    }
}

impl Sink for OtlpHttpSink {
    type Encoder = OtlpEncoder;

    fn encoder(&self) -> OtlpEncoder {
        self.encoder.clone()
    }

    async fn send(
        &mut self,
        request: ExportProfilesServiceRequest,
    ) -> Result<Delivered, SendError> {
        let body = request.encode_to_vec();
        let bytes = body.len() as u64;
        // gzip, which OTLP receivers accept: profiles shrink to a fifth or less.
        let body = Body::gzipped(&body);
        let answer =
            self.client.post(OTLP_PROFILES_PATH, "", "application/x-protobuf", body).await?;
        // An empty answer is a full success.
        let rejected = ExportProfilesServiceResponse::decode(answer)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| u64::try_from(p.rejected_profiles).unwrap_or(0));
        Ok(Delivered { bytes, rejected_profiles: rejected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_data_is_given_up_on_and_the_rest_retried() {
        let refused = classify("u", StatusCode::BAD_REQUEST, "bad");
        assert!(matches!(refused, SendError::Refused(_)));
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_FOUND,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(matches!(classify("u", status, ""), SendError::Retry(_)), "{status}");
        }
    }

    #[tokio::test]
    async fn endpoints_and_headers_are_checked() {
        assert!(matches!(
            HttpClient::new("pyroscope:4040", &[], None),
            Err(EndpointError::Url { .. })
        ));
        assert!(matches!(
            HttpClient::new("http://p:4040", &["x-scope-orgid".into()], None),
            Err(EndpointError::Header { .. })
        ));
        let client = HttpClient::new("https://p.example/base/", &["X-Scope-OrgID=t1".into()], None);
        assert_eq!(client.unwrap().headers[0].0.as_str(), "x-scope-orgid");
    }
}
