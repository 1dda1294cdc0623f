//! One window as an OTLP profiles export (`opentelemetry.proto.profiles.v1development`, as
//! released in opentelemetry-proto v1.10.0).
//!
//! Each profiled process is a resource, described with OpenTelemetry's semantic conventions
//! (`host.name`, `process.pid`, `container.id`, `k8s.pod.name`, …); under it, one profile per
//! kind of sample the window holds. Functions, locations, mappings, stacks, attributes and
//! strings are shared by all of them in one deduplicated dictionary, as the signal intends.

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    sync::Arc,
};

use profiler_proto::opentelemetry::proto::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development as otel,
    resource::v1::Resource,
};
use prost::Message as _;

use crate::aggregate::{Frame, FrameKind, Labels, MergedProfile, Mode, Stack, Tally};

/// What describes this host in every export.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// `host.name`.
    pub name: String,
    /// `k8s.node.name`, on Kubernetes.
    pub node_name: Option<String>,
}

/// The attribute naming why an off-CPU sample's thread was off the CPU (`sleep`, `io`, `gil`…).
pub const OFF_CPU_REASON: &str = "profilerd.off_cpu.reason";
/// The attribute saying whether a Python thread held the GIL (`held`, `released`).
pub const PYTHON_GIL: &str = "profilerd.python.gil";

/// The export requests of one window of `profiles` (one [`MergedProfile`] per mode, CPU samples
/// taken every `period_ns`), each at most `max_bytes` encoded unless one process alone is
/// larger: the processes are split between requests as needed.
pub fn requests(
    host: &Host,
    profiles: &[MergedProfile],
    period_ns: i64,
    max_bytes: usize,
) -> Vec<ExportProfilesServiceRequest> {
    let mut processes: Vec<ProcessKey> = profiles
        .iter()
        .flat_map(|p| p.entries.keys().map(|(labels, _)| ProcessKey::of(labels)))
        .collect();
    processes.sort();
    processes.dedup();
    let mut out = Vec::new();
    split(host, profiles, period_ns, max_bytes, &processes, &mut out);
    out
}

fn split(
    host: &Host,
    profiles: &[MergedProfile],
    period_ns: i64,
    max_bytes: usize,
    processes: &[ProcessKey],
    out: &mut Vec<ExportProfilesServiceRequest>,
) {
    if processes.is_empty() {
        return;
    }
    let request = build(host, profiles, period_ns, processes);
    if processes.len() == 1 || request.encoded_len() <= max_bytes {
        out.push(request);
        return;
    }
    let (a, b) = processes.split_at(processes.len() / 2);
    split(host, profiles, period_ns, max_bytes, a, out);
    split(host, profiles, period_ns, max_bytes, b, out);
}

/// What a resource is: the labels a process's threads share.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ProcessKey {
    pid: u32,
    comm: Arc<str>,
    exe: Arc<str>,
    container: Arc<str>,
    pod_uid: Arc<str>,
    pod: Arc<str>,
    namespace: Arc<str>,
    container_name: Arc<str>,
    runtime: Arc<str>,
}

impl ProcessKey {
    fn of(labels: &Labels) -> ProcessKey {
        ProcessKey {
            pid: labels.pid,
            comm: labels.comm.clone(),
            exe: labels.exe.clone(),
            container: labels.container.clone(),
            pod_uid: labels.pod_uid.clone(),
            pod: labels.pod.clone(),
            namespace: labels.namespace.clone(),
            container_name: labels.container_name.clone(),
            runtime: labels.runtime.clone(),
        }
    }

    fn attributes(&self, host: &Host) -> Vec<KeyValue> {
        let mut out = vec![string("host.name", &host.name)];
        if let Some(node) = &host.node_name {
            out.push(string("k8s.node.name", node));
        }
        out.push(KeyValue {
            key: "process.pid".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(self.pid.into())) }),
            ..KeyValue::default()
        });
        let optional = [
            ("process.executable.name", &self.comm),
            ("process.executable.path", &self.exe),
            ("container.id", &self.container),
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.pod.name", &self.pod),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.container.name", &self.container_name),
        ];
        out.extend(optional.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| string(k, v)));
        // `CPython 3.12.4`: the runtime's name and version.
        if let Some((name, version)) = self.runtime.split_once(' ') {
            out.push(string("process.runtime.name", name));
            out.push(string("process.runtime.version", version));
        }
        out
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// The request for `processes` of `profiles`.
fn build(
    host: &Host,
    profiles: &[MergedProfile],
    period_ns: i64,
    processes: &[ProcessKey],
) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let index: HashMap<&ProcessKey, usize> =
        processes.iter().enumerate().map(|(i, p)| (p, i)).collect();
    // Per process, per mode: its samples.
    let mut samples: Vec<Vec<Vec<otel::Sample>>> =
        vec![vec![Vec::new(); profiles.len()]; processes.len()];
    for (m, profile) in profiles.iter().enumerate() {
        // A stable order makes the output reproducible.
        let mut entries: Vec<(&(Arc<Labels>, Stack), &Tally)> = profile.entries.iter().collect();
        entries.sort_by(|a, b| b.1.value.cmp(&a.1.value).then_with(|| a.0.0.cmp(&b.0.0)));
        for ((labels, stack), tally) in entries {
            let Some(&p) = index.get(&ProcessKey::of(labels)) else { continue };
            let value = if profile.mode == Mode::Cpu { tally.count } else { tally.value };
            samples[p][m].push(otel::Sample {
                stack_index: dict.stack(stack),
                attribute_indices: dict.sample_attributes(labels),
                values: vec![i64::try_from(value).unwrap_or(i64::MAX)],
                ..otel::Sample::default()
            });
        }
    }
    let scope = InstrumentationScope {
        name: "profilerd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    };
    let mut resource_profiles = Vec::new();
    for (process, per_mode) in processes.iter().zip(samples) {
        let mut out = Vec::new();
        for (profile, samples) in profiles.iter().zip(per_mode) {
            if samples.is_empty() {
                continue;
            }
            out.push(dict.profile(host, process, profile, period_ns, samples));
        }
        if out.is_empty() {
            continue;
        }
        resource_profiles.push(otel::ResourceProfiles {
            resource: Some(Resource {
                attributes: process.attributes(host),
                ..Resource::default()
            }),
            scope_profiles: vec![otel::ScopeProfiles {
                scope: Some(scope.clone()),
                profiles: out,
                ..otel::ScopeProfiles::default()
            }],
            ..otel::ResourceProfiles::default()
        });
    }
    ExportProfilesServiceRequest { resource_profiles, dictionary: Some(dict.tables) }
}

/// An attribute value in the dictionary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Value {
    Str(Arc<str>),
    Int(i64),
}

/// The dictionary being built, with an index per table. Every table starts with its zero
/// value, as the signal requires.
struct Dictionary {
    tables: otel::ProfilesDictionary,
    strings: HashMap<Arc<str>, i32>,
    functions: HashMap<(i32, i32, i64), i32>,
    mappings: HashMap<(Arc<str>, Option<Arc<str>>), i32>,
    locations: HashMap<Arc<Frame>, i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(i32, Value), i32>,
}

impl Dictionary {
    fn new() -> Dictionary {
        let mut d = Dictionary {
            tables: otel::ProfilesDictionary {
                mapping_table: vec![otel::Mapping::default()],
                location_table: vec![otel::Location::default()],
                function_table: vec![otel::Function::default()],
                link_table: vec![otel::Link::default()],
                string_table: Vec::new(),
                attribute_table: vec![otel::KeyValueAndUnit::default()],
                stack_table: vec![otel::Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
        };
        d.string("");
        d
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = index(self.tables.string_table.len());
        self.tables.string_table.push(s.to_owned());
        self.strings.insert(s.into(), i);
        i
    }

    fn attribute(&mut self, key: &str, value: Value) -> i32 {
        let key = self.string(key);
        if let Some(&i) = self.attributes.get(&(key, value.clone())) {
            return i;
        }
        let any = match &value {
            Value::Str(s) => any_value::Value::StringValue(s.to_string()),
            Value::Int(n) => any_value::Value::IntValue(*n),
        };
        let i = index(self.tables.attribute_table.len());
        self.tables.attribute_table.push(otel::KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue { value: Some(any) }),
            unit_strindex: 0,
        });
        self.attributes.insert((key, value), i);
        i
    }

    /// A sample's own attributes: its thread, and why it was off the CPU or whether it held
    /// the GIL.
    fn sample_attributes(&mut self, labels: &Labels) -> Vec<i32> {
        let mut out = Vec::new();
        if labels.tid != 0 {
            out.push(self.attribute("thread.id", Value::Int(labels.tid.into())));
            out.push(self.attribute("thread.name", Value::Str(labels.thread.clone())));
        }
        if !labels.reason.is_empty() {
            out.push(self.attribute(OFF_CPU_REASON, Value::Str(labels.reason.clone())));
        }
        if !labels.gil.is_empty() {
            out.push(self.attribute(PYTHON_GIL, Value::Str(labels.gil.clone())));
        }
        out
    }

    fn stack(&mut self, stack: &Stack) -> i32 {
        let locations: Vec<i32> = stack.iter().map(|f| self.location(f)).collect();
        if let Some(&i) = self.stacks.get(&locations) {
            return i;
        }
        let i = index(self.tables.stack_table.len());
        self.tables.stack_table.push(otel::Stack { location_indices: locations.clone() });
        self.stacks.insert(locations, i);
        i
    }

    fn location(&mut self, frame: &Arc<Frame>) -> i32 {
        if let Some(&i) = self.locations.get(frame) {
            return i;
        }
        let name = self.string(&frame.function);
        let file = frame.file.as_deref().map_or(0, |f| self.string(f));
        let function_key = (name, file, i64::from(frame.start_line));
        let function = match self.functions.get(&function_key) {
            Some(&i) => i,
            None => {
                let i = index(self.tables.function_table.len());
                self.tables.function_table.push(otel::Function {
                    name_strindex: name,
                    system_name_strindex: name,
                    filename_strindex: file,
                    start_line: i64::from(frame.start_line),
                });
                self.functions.insert(function_key, i);
                i
            }
        };
        let mapping = frame.module.as_ref().map_or(0, |m| self.mapping(&m.path, &m.build_id));
        let kind = match frame.kind {
            FrameKind::Kernel => "kernel",
            FrameKind::Native => "native",
            FrameKind::Python => "cpython",
            FrameKind::Marker => "abort-marker",
        };
        let frame_type = self.attribute("profile.frame.type", Value::Str(kind.into()));
        let i = index(self.tables.location_table.len());
        self.tables.location_table.push(otel::Location {
            mapping_index: mapping,
            // The offset in the file (native) or the address (kernel): what the frame knows.
            address: frame.address,
            lines: vec![otel::Line {
                function_index: function,
                line: i64::from(frame.line),
                column: 0,
            }],
            attribute_indices: vec![frame_type],
        });
        self.locations.insert(frame.clone(), i);
        i
    }

    fn mapping(&mut self, path: &Arc<str>, build_id: &Option<Arc<str>>) -> i32 {
        let key = (path.clone(), build_id.clone());
        if let Some(&i) = self.mappings.get(&key) {
            return i;
        }
        let filename = self.string(path);
        let attribute_indices = build_id
            .iter()
            .map(|id| self.attribute("process.executable.build_id.gnu", Value::Str(id.clone())))
            .collect();
        let i = index(self.tables.mapping_table.len());
        self.tables.mapping_table.push(otel::Mapping {
            filename_strindex: filename,
            attribute_indices,
            ..otel::Mapping::default()
        });
        self.mappings.insert(key, i);
        i
    }

    fn profile(
        &mut self,
        host: &Host,
        process: &ProcessKey,
        profile: &MergedProfile,
        period_ns: i64,
        samples: Vec<otel::Sample>,
    ) -> otel::Profile {
        let mode = profile.mode;
        // CPU time as sampled events every period, as other eBPF profilers send it; the other
        // kinds carry their value (nanoseconds off the CPU, bytes first touched).
        let (sample_type, period_type, period) = if mode == Mode::Cpu {
            let cpu = otel::ValueType {
                type_strindex: self.string("cpu"),
                unit_strindex: self.string("nanoseconds"),
            };
            let samples = otel::ValueType {
                type_strindex: self.string("samples"),
                unit_strindex: self.string("count"),
            };
            (samples, Some(cpu), period_ns)
        } else {
            let value = otel::ValueType {
                type_strindex: self.string(mode.value_type()),
                unit_strindex: self.string(mode.unit().name()),
            };
            (value, None, 0)
        };
        otel::Profile {
            sample_type: Some(sample_type),
            samples,
            time_unix_nano: u64::try_from(profile.start_ns).unwrap_or(0),
            duration_nano: u64::try_from(profile.end_ns - profile.start_ns).unwrap_or(0),
            period_type,
            period,
            profile_id: profile_id(host, process, profile.start_ns, mode),
            ..otel::Profile::default()
        }
    }
}

/// A table index as the protocol stores it.
fn index(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// The same 16 bytes each time this host exports this process's profile of this window and
/// mode, so that a receiver can recognize a profile sent again. A pid that ran two programs
/// in the window (before and after an `execve`) is two processes, with two ids.
fn profile_id(host: &Host, process: &ProcessKey, start_ns: i64, mode: Mode) -> Vec<u8> {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, &host.name, process, start_ns, mode.value_type()).hash(&mut h);
        h.finish().to_le_bytes()
    };
    [half(1), half(2)].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Module;

    fn frame(kind: FrameKind, function: &str, line: u32) -> Arc<Frame> {
        Arc::new(Frame {
            kind,
            function: function.into(),
            module: (kind == FrameKind::Native).then(|| {
                Arc::new(Module { path: "/usr/bin/app".into(), build_id: Some("abcd".into()) })
            }),
            address: 0x1234,
            file: (kind == FrameKind::Python).then(|| "app.py".into()),
            line,
            start_line: line.saturating_sub(2),
        })
    }

    fn labels(pid: u32, tid: u32, runtime: &str) -> Arc<Labels> {
        Arc::new(Labels {
            pid,
            tid,
            comm: "app".into(),
            thread: format!("worker-{tid}").into(),
            exe: "/usr/bin/app".into(),
            runtime: runtime.into(),
            pod: "web-1".into(),
            namespace: "shop".into(),
            ..Labels::default()
        })
    }

    /// A sample's labels, stack, count and value.
    type Entry = (Arc<Labels>, Vec<Arc<Frame>>, u64, u64);

    fn profile(mode: Mode, entries: &[Entry]) -> MergedProfile {
        let mut merged = MergedProfile::new(mode, false);
        merged.start_ns = 1_000_000_000;
        merged.end_ns = 11_000_000_000;
        for (labels, stack, count, value) in entries {
            merged.entries.insert(
                (labels.clone(), stack.clone().into()),
                Tally { count: *count, value: *value },
            );
        }
        merged
    }

    fn attributes(
        dict: &otel::ProfilesDictionary,
        indices: &[i32],
    ) -> Vec<(String, any_value::Value)> {
        indices
            .iter()
            .map(|&i| {
                let kv = &dict.attribute_table[i as usize];
                let value = kv.value.clone().unwrap().value.unwrap();
                (dict.string_table[kv.key_strindex as usize].clone(), value)
            })
            .collect()
    }

    #[test]
    fn each_process_is_a_resource_and_the_dictionary_is_shared() {
        let host = Host { name: "node-a".into(), node_name: Some("node-a".into()) };
        let leaf = frame(FrameKind::Python, "handler", 12);
        let native = frame(FrameKind::Native, "compress", 0);
        let py = labels(10, 11, "CPython 3.12.4");
        let other = labels(20, 21, "");
        let cpu = profile(
            Mode::Cpu,
            &[
                (py.clone(), vec![leaf.clone(), native.clone()], 7, 70),
                (other.clone(), vec![native.clone()], 3, 30),
            ],
        );
        let off = profile(Mode::OffCpu, &[(py.clone(), vec![leaf.clone()], 2, 5_000)]);
        let requests = requests(&host, &[cpu, off], 10, usize::MAX);
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        let dict = request.dictionary.as_ref().unwrap();
        assert_eq!(dict.string_table[0], "");
        assert_eq!(dict.location_table[0], otel::Location::default());
        assert_eq!(request.resource_profiles.len(), 2);

        let first = &request.resource_profiles[0];
        let resource = first.resource.as_ref().unwrap();
        let attr = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| kv.value.clone().unwrap().value.unwrap())
        };
        assert_eq!(attr("process.pid"), Some(any_value::Value::IntValue(10)));
        assert_eq!(attr("host.name"), Some(any_value::Value::StringValue("node-a".into())));
        assert_eq!(attr("k8s.pod.name"), Some(any_value::Value::StringValue("web-1".into())));
        assert_eq!(
            attr("process.runtime.version"),
            Some(any_value::Value::StringValue("3.12.4".into()))
        );
        assert_eq!(attr("container.id"), None, "empty labels are left out");
        let profiles = &first.scope_profiles[0].profiles;
        assert_eq!(profiles.len(), 2, "CPU and off-CPU");
        let cpu = &profiles[0];
        let name = |i: i32| dict.string_table[i as usize].as_str();
        let sample_type = cpu.sample_type.unwrap();
        assert_eq!(
            (name(sample_type.type_strindex), name(sample_type.unit_strindex)),
            ("samples", "count")
        );
        assert_eq!(cpu.period, 10);
        assert_eq!(cpu.duration_nano, 10_000_000_000);
        assert_eq!(cpu.samples[0].values, vec![7]);
        let stack = &dict.stack_table[cpu.samples[0].stack_index as usize];
        let names: Vec<&str> = stack
            .location_indices
            .iter()
            .map(|&l| {
                let line = &dict.location_table[l as usize].lines[0];
                name(dict.function_table[line.function_index as usize].name_strindex)
            })
            .collect();
        assert_eq!(names, ["handler", "compress"], "leaf first");
        let line = &dict.location_table[stack.location_indices[0] as usize].lines[0];
        assert_eq!(line.line, 12);
        assert_eq!(
            attributes(dict, &cpu.samples[0].attribute_indices),
            [
                ("thread.id".to_owned(), any_value::Value::IntValue(11)),
                ("thread.name".to_owned(), any_value::Value::StringValue("worker-11".into())),
            ]
        );
        let off = &profiles[1];
        assert_eq!(name(off.sample_type.unwrap().type_strindex), "off_cpu");
        assert_eq!(off.samples[0].values, vec![5_000]);
        assert_ne!(cpu.profile_id, off.profile_id);
        assert_eq!(cpu.profile_id.len(), 16);

        // The native frame is one location for both processes.
        let second = &request.resource_profiles[1].scope_profiles[0].profiles[0];
        let their_stack = &dict.stack_table[second.samples[0].stack_index as usize];
        assert_eq!(their_stack.location_indices[0], stack.location_indices[1]);
        let mapping = &dict.mapping_table
            [dict.location_table[their_stack.location_indices[0] as usize].mapping_index as usize];
        assert_eq!(name(mapping.filename_strindex), "/usr/bin/app");
    }

    #[test]
    fn a_request_over_the_limit_is_split_by_process() {
        let host = Host { name: "h".into(), node_name: None };
        let entries: Vec<_> = (0..40)
            .map(|pid| {
                let stack = (0..20).map(|d| frame(FrameKind::Native, &format!("f{pid}_{d}"), 0));
                (labels(pid, pid, ""), stack.collect(), 1, 1)
            })
            .collect();
        let cpu = profile(Mode::Cpu, &entries);
        let whole = requests(&host, std::slice::from_ref(&cpu), 10, usize::MAX);
        assert_eq!(whole.len(), 1);
        let limit = whole[0].encoded_len() / 3;
        let parts = requests(&host, &[cpu], 10, limit);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert!(parts.iter().all(|r| r.encoded_len() <= limit));
        let processes: usize = parts.iter().map(|r| r.resource_profiles.len()).sum();
        assert_eq!(processes, 40, "every process once");
    }
}
