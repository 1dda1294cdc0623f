//! Compiles the `.proto` files with protox (pure Rust), so no system `protoc` is needed.
use anyhow::Context as _;
use prost::Message as _;

const PROTOS: &[&str] = &[
    "profiler/v1/calls.proto",
    "profiler/v1/common.proto",
    "profiler/v1/memory.proto",
    "profiler/v1/profile.proto",
    "profiler/v1/query.proto",
    "profiler/v1/status.proto",
    "profiler/v1/service.proto",
    // The OpenTelemetry profiles signal, as released in opentelemetry-proto v1.10.0 (the
    // release that the `opentelemetry-proto` package on PyPI, 1.45, is generated from), for
    // the OTLP exporter.
    "opentelemetry/proto/collector/profiles/v1development/profiles_service.proto",
    "opentelemetry/proto/common/v1/common.proto",
    "opentelemetry/proto/profiles/v1development/profiles.proto",
    "opentelemetry/proto/resource/v1/resource.proto",
    // Grafana Pyroscope's push messages, for the Pyroscope exporter.
    "pyroscope/push/v1/push.proto",
];

fn main() -> anyhow::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."]).context("compiling the .proto files")?;
    // protox and tonic-prost-build may link different prost-types; the encoded set is the
    // stable interface between them.
    let fds = prost::Message::decode(fds.encode_to_vec().as_slice())
        .context("re-decoding the descriptor set")?;
    tonic_prost_build::configure()
        .build_transport(true)
        .compile_fds(fds)
        .context("generating Rust code")?;
    Ok(())
}
