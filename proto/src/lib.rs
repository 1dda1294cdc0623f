//! Generated Rust types and gRPC stubs for the `profiler.v1` API.
//!
//! The `.proto` sources live in `proto/profiler/v1/`; `build.rs` compiles them with protox.

/// Package `profiler.v1`.
#[expect(clippy::allow_attributes, reason = "the generated server code uses #[allow]")]
pub mod v1 {
    tonic::include_proto!("profiler.v1");
}
