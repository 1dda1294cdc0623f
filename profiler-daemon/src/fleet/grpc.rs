//! OTLP over gRPC: the `ProfilesService/Export` call of an OpenTelemetry Collector or any OTLP
//! profiles receiver.

use std::{str::FromStr, time::Duration};

use profiler_proto::opentelemetry::proto::collector::profiles::v1development::{
    ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
};
use prost::Message as _;
use tonic::{
    Code,
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::{Delivered, EndpointError, OtlpEncoder, SendError, Sink};
use crate::tls::ClientTls;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC sink: one lazily connected channel, reconnected by tonic after a failure.
#[derive(Debug)]
pub struct GrpcSink {
    url: String,
    encoder: OtlpEncoder,
    client: ProfilesServiceClient<Channel>,
    headers: Vec<(MetadataKey<tonic::metadata::Ascii>, MetadataValue<tonic::metadata::Ascii>)>,
}

impl GrpcSink {
    /// A sink for `url` (`http://` or `https://`, the system's CA certificates for the latter)
    /// that adds `headers` (`KEY=VALUE`, as in `OTEL_EXPORTER_OTLP_HEADERS`) to each call.
    /// Nothing is connected until the first send.
    pub fn new(
        url: &str,
        headers: &[String],
        encoder: OtlpEncoder,
        tls: Option<&ClientTls>,
    ) -> Result<GrpcSink, EndpointError> {
        let bad_url = || EndpointError::Url { url: url.to_owned() };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad_url());
        }
        let mut endpoint = Endpoint::from_str(url)
            .map_err(|_| bad_url())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if url.starts_with("https://") {
            let config = tls.map_or_else(
                || ClientTlsConfig::new().with_native_roots(),
                |tls| tls.config.clone(),
            );
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| EndpointError::Tls { url: url.to_owned(), source: e.into() })?;
        }
        let headers = headers
            .iter()
            .map(|header| {
                parse_header(header).ok_or_else(|| EndpointError::Header { header: header.clone() })
            })
            .collect::<Result<_, _>>()?;
        // gzip, which OTLP receivers accept: profiles shrink to a fifth or less.
        let client = ProfilesServiceClient::new(endpoint.connect_lazy())
            .max_encoding_message_size(usize::MAX)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        Ok(GrpcSink { url: url.to_owned(), encoder, client, headers })
    }
}

/// `KEY=VALUE` as gRPC metadata.
fn parse_header(
    header: &str,
) -> Option<(MetadataKey<tonic::metadata::Ascii>, MetadataValue<tonic::metadata::Ascii>)> {
    let (key, value) = header.split_once('=')?;
    let key = MetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes()).ok()?;
    let value = MetadataValue::try_from(value.trim()).ok()?;
    Some((key, value))
}

impl Sink for GrpcSink {
    type Encoder = OtlpEncoder;

    fn encoder(&self) -> OtlpEncoder {
        self.encoder.clone()
    }

    async fn send(
        &mut self,
        request: ExportProfilesServiceRequest,
    ) -> Result<Delivered, SendError> {
        let bytes = request.encoded_len() as u64;
        let mut call = tonic::Request::new(request);
        for (key, value) in &self.headers {
            call.metadata_mut().insert(key.clone(), value.clone());
        }
        match self.client.export(call).await {
            Ok(response) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_profiles).unwrap_or(0));
                Ok(Delivered { bytes, rejected_profiles: rejected })
            }
            Err(status) => Err(classify(&self.url, &status)),
        }
    }
}

/// Whether a failed call is worth retrying, and what to tell the operator.
fn classify(url: &str, status: &tonic::Status) -> SendError {
    let detail = status.message();
    match status.code() {
        Code::InvalidArgument => {
            SendError::Refused(format!("{url} refused the profiles as invalid: {detail}"))
        }
        Code::Unimplemented => SendError::Retry(format!(
            "{url} does not accept OTLP profiles (an OpenTelemetry Collector needs \
             --feature-gates=+service.profilesSupport and a pipeline for profiles): {detail}"
        )),
        Code::Unauthenticated | Code::PermissionDenied => SendError::Retry(format!(
            "{url} refused the credentials ({}): {detail}; check the configured headers",
            status.code().description()
        )),
        Code::Unavailable => SendError::Retry(format!("{url} is unreachable: {detail}")),
        code => SendError::Retry(format!("{url} failed: {} ({detail})", code.description())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_and_headers_are_checked() {
        let encoder = || {
            OtlpEncoder(crate::fleet::Source {
                host: crate::fleet::otlp::Host::default(),
                period_ns: 1,
                max_request_bytes: 1,
            })
        };
        let err = GrpcSink::new("collector:4317", &[], encoder(), None).unwrap_err();
        assert!(matches!(err, EndpointError::Url { .. }));
        let err = GrpcSink::new("http://collector:4317", &["no-equals".into()], encoder(), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid export header \"no-equals\": expected KEY=VALUE with an ASCII key and value"
        );
        let sink = GrpcSink::new(
            "http://collector:4317",
            &["Authorization=Bearer abc".into()],
            encoder(),
            None,
        )
        .unwrap();
        assert_eq!(sink.headers[0].0.as_str(), "authorization");
        assert_eq!(sink.headers[0].1.to_str().unwrap(), "Bearer abc");
    }

    #[test]
    fn only_invalid_data_is_given_up_on() {
        let refused = classify("http://c", &tonic::Status::invalid_argument("bad"));
        assert!(matches!(refused, SendError::Refused(_)));
        for status in [
            tonic::Status::unavailable("down"),
            tonic::Status::unimplemented("no profiles"),
            tonic::Status::unauthenticated("who"),
            tonic::Status::resource_exhausted("busy"),
        ] {
            assert!(matches!(classify("http://c", &status), SendError::Retry(_)), "{status}");
        }
        let SendError::Retry(text) = classify("http://c", &tonic::Status::unimplemented("x"))
        else {
            unreachable!()
        };
        assert!(text.contains("service.profilesSupport"), "{text}");
    }
}
