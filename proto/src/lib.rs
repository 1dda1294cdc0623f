//! Generated Rust types and gRPC stubs for the `profiler.v1` API, and for what the daemon's
//! exporters send: the OpenTelemetry profiles signal and Grafana Pyroscope's push messages.
//!
//! The `.proto` sources live in `proto/profiler/v1/`, `proto/opentelemetry/` (the official
//! files of opentelemetry-proto v1.10.0, unchanged) and `proto/pyroscope/`; `build.rs` compiles
//! them with protox.

/// Package `profiler.v1`.
#[expect(clippy::allow_attributes, reason = "the generated server code uses #[allow]")]
pub mod v1 {
    tonic::include_proto!("profiler.v1");
}

/// The OpenTelemetry protocol's packages that the OTLP profiles exporter uses.
#[expect(clippy::allow_attributes, reason = "the generated server code uses #[allow]")]
pub mod opentelemetry {
    /// `opentelemetry.proto.*`.
    pub mod proto {
        /// `opentelemetry.proto.common`.
        pub mod common {
            /// `opentelemetry.proto.common.v1`: attribute values and the instrumentation scope.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        /// `opentelemetry.proto.resource`.
        pub mod resource {
            /// `opentelemetry.proto.resource.v1`: the entity that produced the profiles.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        /// `opentelemetry.proto.profiles`.
        pub mod profiles {
            /// `opentelemetry.proto.profiles.v1development`: the profiles data model.
            pub mod v1development {
                tonic::include_proto!("opentelemetry.proto.profiles.v1development");
            }
        }
        /// `opentelemetry.proto.collector`.
        pub mod collector {
            /// `opentelemetry.proto.collector.profiles`.
            pub mod profiles {
                /// `opentelemetry.proto.collector.profiles.v1development`: the export service.
                pub mod v1development {
                    tonic::include_proto!("opentelemetry.proto.collector.profiles.v1development");
                }
            }
        }
    }
}

/// Grafana Pyroscope's push API messages (`push.v1`), which the Pyroscope exporter sends.
pub mod pyroscope {
    /// `push.v1`: a request of pprof profiles, each with the labels of its series.
    pub mod v1 {
        tonic::include_proto!("push.v1");
    }
}
