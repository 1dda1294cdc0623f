//! Grafana Pyroscope: each window as pprof profiles, one per kind of sample and series, sent
//! through Pyroscope's push API (`POST /push.v1.PusherService/Push`, the Connect protocol with
//! a binary protobuf body), which Pyroscope and Grafana Alloy's `pyroscope.receive_http` serve.
//!
//! A series is what Pyroscope users select by: `service_name` (the Kubernetes namespace and
//! container, else the process name) with the host, pod, namespace, container and executable.
//! Processes with the same series labels are one profile; the pid, which would make a series
//! per process, is left out.

use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
    sync::Arc,
};

use profiler_proto::pyroscope::v1::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use prost::Message as _;

use super::{
    Delivered, Encode, EndpointError, SendError, Sink, Source,
    http::{Body, HttpClient},
};
use crate::{
    aggregate::{Labels, MergedProfile, Mode},
    export::pprof,
};

/// The path of the push call under a Pyroscope endpoint.
pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// Pyroscope's name (`__name__`) of each exported kind.
fn profile_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Cpu => "process_cpu",
        Mode::OffCpu => "off_cpu",
        Mode::Memory => "memory",
        Mode::Wall => "wall",
        Mode::Gil => "gil",
        Mode::Resident => "resident",
    }
}

/// The labels of the series that a sample of `labels` belongs to.
fn series_labels(host: &super::otlp::Host, labels: &Labels) -> Vec<(&'static str, String)> {
    let service = if !labels.namespace.is_empty() && !labels.container_name.is_empty() {
        format!("{}/{}", labels.namespace, labels.container_name)
    } else {
        labels.comm.to_string()
    };
    let mut out = vec![("service_name", service), ("hostname", host.name.clone())];
    if let Some(node) = &host.node_name {
        out.push(("node", node.clone()));
    }
    for (key, value) in [
        ("namespace", &labels.namespace),
        ("pod", &labels.pod),
        ("container", &labels.container_name),
        ("container_id", &labels.container),
        ("exe", &labels.exe),
        ("runtime", &labels.runtime),
    ] {
        if !value.is_empty() {
            out.push((key, value.to_string()));
        }
    }
    out
}

/// Pyroscope push requests.
#[derive(Clone, Debug)]
pub struct PyroscopeEncoder(pub Source);

impl Encode for PyroscopeEncoder {
    type Request = PushRequest;

    fn encode(&self, profiles: &[MergedProfile]) -> Vec<PushRequest> {
        let mut series = Vec::new();
        for profile in profiles {
            // Per series: the process-wide part of each sample's labels, and its entries.
            let mut groups: BTreeMap<Vec<(&'static str, String)>, MergedProfile> = BTreeMap::new();
            for ((labels, stack), tally) in &profile.entries {
                let key = series_labels(&self.0.host, labels);
                let group = groups.entry(key).or_insert_with(|| {
                    let mut m = MergedProfile::new(profile.mode, true);
                    (m.start_ns, m.end_ns) = (profile.start_ns, profile.end_ns);
                    m
                });
                // Only why a thread waited, and whether it held the GIL, stay on the samples.
                let sample_labels = Arc::new(Labels {
                    reason: labels.reason.clone(),
                    gil: labels.gil.clone(),
                    ..Labels::default()
                });
                let entry = group.entries.entry((sample_labels, stack.clone())).or_default();
                entry.count = entry.count.saturating_add(tally.count);
                entry.value = entry.value.saturating_add(tally.value);
            }
            for (labels, merged) in groups {
                let mut pprof = pprof::build(&merged, self.0.period_ns);
                strip_process_labels(&mut pprof);
                let raw_profile = pprof::encode_gzip(&pprof);
                let mut pairs = vec![LabelPair {
                    name: "__name__".into(),
                    value: profile_name(profile.mode).into(),
                }];
                pairs.extend(
                    labels.into_iter().map(|(name, value)| LabelPair { name: name.into(), value }),
                );
                let id = series_id(&pairs, profile.start_ns);
                series.push(RawProfileSeries {
                    labels: pairs,
                    samples: vec![RawSample { raw_profile, id }],
                });
            }
        }
        // Requests of at most the bound, a series each at least.
        let mut out: Vec<PushRequest> = Vec::new();
        let mut size = 0;
        for s in series {
            let len = s.encoded_len();
            match out.last_mut() {
                Some(last) if size + len <= self.0.max_request_bytes => {
                    last.series.push(s);
                    size += len;
                }
                _ => {
                    out.push(PushRequest { series: vec![s] });
                    size = len;
                }
            }
        }
        out
    }
}

/// Leaves on each sample only the labels that are not the process's: `reason` and `gil`. The
/// process's are the series labels; the thread's would make a series per thread.
fn strip_process_labels(profile: &mut profiler_proto::v1::Profile) {
    let keep: Vec<i64> = profile
        .string_table
        .iter()
        .enumerate()
        .filter(|(_, s)| *s == "reason" || *s == "gil")
        .map(|(i, _)| i as i64)
        .collect();
    for sample in &mut profile.sample {
        sample.label.retain(|l| keep.contains(&l.key));
    }
}

/// The same id each time this series of this window is sent.
fn series_id(labels: &[LabelPair], start_ns: i64) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in labels {
        (&l.name, &l.value).hash(&mut h);
    }
    start_ns.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The Pyroscope sink.
#[derive(Debug)]
pub struct PyroscopeSink {
    client: HttpClient,
    encoder: PyroscopeEncoder,
}

impl PyroscopeSink {
    /// A sink pushing to the Pyroscope (or Alloy) at `url`, with `headers` (for example
    /// `x-scope-orgid=TENANT`, or `authorization=Basic ...` for Grafana Cloud).
    pub fn new(
        url: &str,
        headers: &[String],
        encoder: PyroscopeEncoder,
        tls: Option<&crate::tls::ClientTls>,
    ) -> Result<PyroscopeSink, EndpointError> {
        let mut headers = headers.to_vec();
        headers.push("connect-protocol-version=1".into());
        Ok(PyroscopeSink { client: HttpClient::new(url, &headers, tls)?, encoder })
    }
}

impl Sink for PyroscopeSink {
    type Encoder = PyroscopeEncoder;

    fn encoder(&self) -> PyroscopeEncoder {
        self.encoder.clone()
    }

    async fn send(&mut self, request: PushRequest) -> Result<Delivered, SendError> {
        let body = request.encode_to_vec();
        let bytes = body.len() as u64;
        // The profiles inside are gzipped already.
        self.client.post(PUSH_PATH, "", "application/proto", Body::plain(body)).await?;
        Ok(Delivered { bytes, rejected_profiles: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Frame, Tally};

    #[test]
    fn processes_of_one_service_are_one_series_without_thread_labels() {
        let labels = |pid: u32, comm: &str, reason: &str| {
            Arc::new(Labels {
                pid,
                tid: pid + 1,
                comm: comm.into(),
                thread: "t".into(),
                reason: reason.into(),
                ..Labels::default()
            })
        };
        let stack: crate::aggregate::Stack = vec![Arc::new(Frame::marker("f"))].into();
        let mut cpu = MergedProfile::new(Mode::Cpu, true);
        (cpu.start_ns, cpu.end_ns) = (1_000_000_000, 2_000_000_000);
        for (pid, comm) in [(1, "web"), (2, "web"), (3, "db")] {
            cpu.entries
                .insert((labels(pid, comm, ""), stack.clone()), Tally { count: 5, value: 50 });
        }
        let mut off = MergedProfile::new(Mode::OffCpu, true);
        off.entries.insert((labels(1, "web", "io"), stack.clone()), Tally { count: 1, value: 7 });
        let source = Source {
            host: super::super::otlp::Host { name: "h1".into(), node_name: None },
            period_ns: 10,
            max_request_bytes: usize::MAX,
        };
        let requests = PyroscopeEncoder(source).encode(&[cpu, off]);
        assert_eq!(requests.len(), 1);
        let series = &requests[0].series;
        let names: Vec<Vec<(String, String)>> = series
            .iter()
            .map(|s| s.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect())
            .collect();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&vec![
            pair("__name__", "process_cpu"),
            pair("service_name", "web"),
            pair("hostname", "h1")
        ]));
        assert!(names.iter().any(|n| n[0] == pair("__name__", "off_cpu")));
        // Both web processes' samples are in the web series' pprof, without pid or thread.
        let web = &series[names
            .iter()
            .position(|n| n[1] == pair("service_name", "web") && n[0].1 == "process_cpu")
            .unwrap()];
        let raw = &web.samples[0].raw_profile;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut text).unwrap();
        let profile = profiler_proto::v1::Profile::decode(&text[..]).unwrap();
        let counts: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(counts, 10);
        assert!(profile.sample.iter().all(|s| s.label.is_empty()));
    }
}
