//! Building the pprof-layout profile that `Query` returns.

use std::{collections::HashMap, io::Write as _, sync::Arc};

use flate2::{Compression, write::GzEncoder};
use profiler_proto::v1;
use prost::Message as _;

use crate::aggregate::{Frame, FrameKind, Labels, MergedProfile, Mode, Module};

/// Interns strings, functions, mappings and locations into a profile.
#[derive(Debug, Default)]
struct Builder {
    profile: v1::Profile,
    strings: HashMap<Arc<str>, i64>,
    functions: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    mappings: HashMap<Arc<Module>, u64>,
    locations: HashMap<Arc<Frame>, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.into(), i);
        i
    }

    fn mapping(&mut self, module: &Arc<Module>) -> u64 {
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let mapping = v1::Mapping {
            id,
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename: self.string(&module.path),
            build_id: module.build_id.as_deref().map_or(0, |b| self.string(b)),
            has_functions: true,
            ..v1::Mapping::default()
        };
        self.profile.mapping.push(mapping);
        self.mappings.insert(module.clone(), id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let key = (frame.function.clone(), frame.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(&frame.function);
        let function = v1::Function {
            id,
            name,
            system_name: name,
            filename: frame.file.as_deref().map_or(0, |f| self.string(f)),
            start_line: i64::from(frame.start_line),
        };
        self.profile.function.push(function);
        self.functions.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Arc<Frame>) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let mapping_id = match (&frame.module, frame.kind) {
            (Some(module), FrameKind::Kernel | FrameKind::Native) => self.mapping(module),
            _ => 0,
        };
        let line =
            v1::Line { function_id: self.function(frame), line: i64::from(frame.line), column: 0 };
        self.profile.location.push(v1::Location {
            id,
            mapping_id,
            address: frame.address,
            line: vec![line],
            is_folded: false,
        });
        self.locations.insert(frame.clone(), id);
        id
    }

    fn labels(&mut self, labels: &Labels) -> Vec<v1::Label> {
        let mut out = vec![self.num_label("pid", labels.pid)];
        if labels.tid != 0 {
            out.push(self.num_label("tid", labels.tid));
        }
        for (key, value) in [
            ("comm", &labels.comm),
            ("thread", &labels.thread),
            ("exe", &labels.exe),
            ("cgroup", &labels.cgroup),
            ("container", &labels.container),
            ("container_name", &labels.container_name),
            ("pod_uid", &labels.pod_uid),
            ("pod", &labels.pod),
            ("namespace", &labels.namespace),
            ("runtime", &labels.runtime),
            ("reason", &labels.reason),
            ("gil", &labels.gil),
        ] {
            if !value.is_empty() {
                let key = self.string(key);
                let str = self.string(value);
                out.push(v1::Label { key, str, num: 0, num_unit: 0 });
            }
        }
        out
    }

    fn num_label(&mut self, key: &str, num: u32) -> v1::Label {
        v1::Label { key: self.string(key), str: 0, num: i64::from(num), num_unit: 0 }
    }
}

/// The pprof-layout profile of `merged`, whose CPU samples were taken every `period_ns`
/// nanoseconds. The sample types are a count and the mode's value: `cpu-samples`/`count` and
/// `cpu`/`nanoseconds` for CPU time, `samples`/`count` and `wall`/`nanoseconds` or
/// `off_cpu`/`nanoseconds` for the others.
pub fn build(merged: &MergedProfile, period_ns: i64) -> v1::Profile {
    let mut b = Builder::default();
    b.profile.string_table.push(String::new());
    let mode = merged.mode;
    let count_type = if mode == Mode::Cpu { "cpu-samples" } else { "samples" };
    let samples = v1::ValueType { r#type: b.string(count_type), unit: b.string("count") };
    let value =
        v1::ValueType { r#type: b.string(mode.value_type()), unit: b.string(mode.unit().name()) };
    b.profile.sample_type = vec![samples, value];
    // Call counts ride as a third sample type, on one-frame samples whose other values are 0,
    // so that any pprof reader can show them.
    let with_calls = !merged.calls.is_empty();
    if with_calls {
        let calls = v1::ValueType { r#type: b.string(CALLS_TYPE), unit: b.string("count") };
        b.profile.sample_type.push(calls);
    }
    b.profile.period_type = Some(value);
    b.profile.period = period_ns;
    b.profile.time_nanos = merged.start_ns;
    b.profile.duration_nanos = (merged.end_ns - merged.start_ns).max(0);
    // CPU profiles have always defaulted to the sample count; time is what the others mean.
    b.profile.default_sample_type = if mode == Mode::Cpu { samples.r#type } else { value.r#type };

    // A stable order makes the output reproducible.
    let mut entries: Vec<_> = merged.entries.iter().collect();
    entries.sort_by(|a, b| {
        (b.1.value, b.1.count).cmp(&(a.1.value, a.1.count)).then_with(|| a.0.0.cmp(&b.0.0))
    });
    for ((labels, stack), tally) in entries {
        let location_id = stack.iter().map(|f| b.location(f)).collect();
        let label = b.labels(labels);
        let count = i64::try_from(tally.count).unwrap_or(i64::MAX);
        let mut value = vec![count, i64::try_from(tally.value).unwrap_or(i64::MAX)];
        if with_calls {
            value.push(0);
        }
        b.profile.sample.push(v1::Sample { location_id, value, label });
    }
    let mut calls: Vec<_> = merged.calls.iter().collect();
    calls.sort_by(|a, b| {
        b.1.cmp(a.1)
            .then_with(|| a.0.0.cmp(&b.0.0))
            .then_with(|| a.0.1.function.cmp(&b.0.1.function))
    });
    for ((labels, function), &count) in calls {
        let location_id = vec![b.location(function)];
        let label = b.labels(labels);
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        b.profile.sample.push(v1::Sample { location_id, value: vec![0, 0, count], label });
    }
    b.profile
}

/// The sample type under which Python call counts are stored.
pub const CALLS_TYPE: &str = "calls";

/// The profile as a gzip-compressed pprof file.
pub fn encode_gzip(profile: &v1::Profile) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec()).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}
