//! A resolved view of a pprof-layout profile: each sample's frames as names, root first.

use std::collections::HashMap;

use profiler_proto::v1;
use thiserror::Error;

use crate::aggregate::Mode;

/// Where a frame's code lives, as recovered from the profile's conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// In the `[kernel.kallsyms]` mapping.
    Kernel,
    /// In a file mapping.
    Native,
    /// No mapping, with a source file: interpreted code.
    Python,
    /// No mapping and no file: a marker.
    Marker,
}

/// One frame of a view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewFrame {
    /// The kind of code.
    pub kind: ViewKind,
    /// Function name.
    pub function: String,
    /// Source file, or the binary's file name for native code.
    pub file: String,
    /// Line number, or 0.
    pub line: i64,
    /// First line of the function, or 0.
    pub start_line: i64,
}

impl ViewFrame {
    /// The name shown in stacks: `function` for native code, `function (file:line)` for
    /// interpreted code.
    pub fn display(&self) -> String {
        match self.kind {
            ViewKind::Python if self.line > 0 => {
                format!("{} ({}:{})", self.function, self.file, self.line)
            }
            ViewKind::Python => format!("{} ({})", self.function, self.file),
            _ => self.function.clone(),
        }
    }
}

/// One sample of a view.
#[derive(Clone, Debug)]
pub struct ViewSample {
    /// Frames, root first.
    pub frames: Vec<ViewFrame>,
    /// Number of samples.
    pub count: u64,
    /// Their value in the mode's unit (nanoseconds).
    pub value: u64,
    /// Labels as `key -> value` text.
    pub labels: Vec<(String, String)>,
}

/// Counted calls of one function.
#[derive(Clone, Debug)]
pub struct ViewCalls {
    /// The function (at its first line).
    pub frame: ViewFrame,
    /// Calls.
    pub count: u64,
    /// Labels as `key -> value` text.
    pub labels: Vec<(String, String)>,
}

/// The resolved profile.
#[derive(Clone, Debug, Default)]
pub struct ProfileView {
    /// The samples.
    pub samples: Vec<ViewSample>,
    /// Python call counts, when the entry probe was on.
    pub calls: Vec<ViewCalls>,
    /// What the values measure.
    pub mode: Mode,
    /// Nanoseconds of CPU per CPU sample.
    pub period_ns: i64,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Length, in nanoseconds.
    pub duration_ns: i64,
}

/// A profile whose references do not resolve.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ViewError {
    /// A reference to a missing table entry.
    #[error("malformed profile: {what} {id} does not exist")]
    Dangling {
        /// Which table.
        what: &'static str,
        /// The missing id or index.
        id: i64,
    },
}

impl ProfileView {
    /// Resolves every sample of `profile`.
    pub fn new(profile: &v1::Profile) -> Result<ProfileView, ViewError> {
        let string = |i: i64| -> Result<&str, ViewError> {
            usize::try_from(i)
                .ok()
                .and_then(|i| profile.string_table.get(i))
                .map(String::as_str)
                .ok_or(ViewError::Dangling { what: "string", id: i })
        };
        let functions: HashMap<u64, &v1::Function> =
            profile.function.iter().map(|f| (f.id, f)).collect();
        let mappings: HashMap<u64, &v1::Mapping> =
            profile.mapping.iter().map(|m| (m.id, m)).collect();
        let mut locations: HashMap<u64, Vec<ViewFrame>> = HashMap::new();
        for loc in &profile.location {
            let mapping = match loc.mapping_id {
                0 => None,
                id => Some(
                    *mappings
                        .get(&id)
                        .ok_or(ViewError::Dangling { what: "mapping", id: id as i64 })?,
                ),
            };
            let mapping_name = mapping.map(|m| string(m.filename)).transpose()?;
            let mut frames = Vec::new();
            // pprof lists inlined callees first; keep the outermost last so that root-first
            // order puts it first.
            for line in &loc.line {
                let f = functions
                    .get(&line.function_id)
                    .ok_or(ViewError::Dangling { what: "function", id: line.function_id as i64 })?;
                let file = string(f.filename)?;
                let kind = match mapping_name {
                    Some("[kernel.kallsyms]") => ViewKind::Kernel,
                    Some(_) => ViewKind::Native,
                    None if !file.is_empty() => ViewKind::Python,
                    None => ViewKind::Marker,
                };
                let file = match (kind, mapping_name) {
                    (ViewKind::Native | ViewKind::Kernel, Some(m)) => {
                        m.rsplit('/').next().unwrap_or(m)
                    }
                    _ => file,
                };
                frames.push(ViewFrame {
                    kind,
                    function: string(f.name)?.to_owned(),
                    file: file.to_owned(),
                    line: line.line,
                    start_line: f.start_line,
                });
            }
            locations.insert(loc.id, frames);
        }
        let type_name = |t: &v1::ValueType| {
            usize::try_from(t.r#type)
                .ok()
                .and_then(|i| profile.string_table.get(i))
                .map(String::as_str)
        };
        let calls_at =
            profile.sample_type.iter().position(|t| type_name(t) == Some(super::pprof::CALLS_TYPE));
        // The mode's value; a profile without one (another tool's CPU profile) counts samples
        // times the period.
        let (value_at, mode) = profile
            .sample_type
            .iter()
            .enumerate()
            .find_map(|(i, t)| Some((Some(i), Mode::from_value_type(type_name(t)?)?)))
            .unwrap_or((None, Mode::Cpu));
        let mut samples = Vec::with_capacity(profile.sample.len());
        let mut calls = Vec::new();
        for s in &profile.sample {
            let mut frames = Vec::with_capacity(s.location_id.len());
            for id in s.location_id.iter().rev() {
                let loc = locations
                    .get(id)
                    .ok_or(ViewError::Dangling { what: "location", id: *id as i64 })?;
                frames.extend(loc.iter().rev().cloned());
            }
            let mut labels = Vec::with_capacity(s.label.len());
            for l in &s.label {
                let value = if l.str != 0 { string(l.str)?.to_owned() } else { l.num.to_string() };
                labels.push((string(l.key)?.to_owned(), value));
            }
            let count = s.value.first().copied().unwrap_or(0).max(0) as u64;
            let value = match value_at {
                Some(i) => s.value.get(i).copied().unwrap_or(0).max(0) as u64,
                None => count.saturating_mul(profile.period.max(0) as u64),
            };
            let called = calls_at.and_then(|i| s.value.get(i)).copied().unwrap_or(0).max(0) as u64;
            if called > 0 {
                if let Some(frame) = frames.last() {
                    calls.push(ViewCalls { frame: frame.clone(), count: called, labels });
                }
                continue;
            }
            samples.push(ViewSample { frames, count, value, labels });
        }
        Ok(ProfileView {
            samples,
            calls,
            mode,
            period_ns: profile.period,
            start_ns: profile.time_nanos,
            duration_ns: profile.duration_nanos,
        })
    }

    /// Total samples.
    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }

    /// What a sample weighs in folded stacks, flame graphs and shares: its count in a CPU
    /// profile (the convention of those formats), its value (nanoseconds, or bytes in the
    /// memory mode) otherwise, where samples of blocked threads stand for very different
    /// lengths of time.
    pub fn weight(&self, sample: &ViewSample) -> u64 {
        match self.mode {
            Mode::Cpu => sample.count,
            Mode::Wall | Mode::OffCpu | Mode::Gil | Mode::Memory | Mode::Resident => sample.value,
        }
    }

    /// The unit of [`ProfileView::weight`].
    pub fn weight_unit(&self) -> &'static str {
        match self.mode {
            Mode::Cpu => "samples",
            Mode::Wall | Mode::OffCpu | Mode::Gil => "nanoseconds",
            Mode::Memory | Mode::Resident => "bytes",
        }
    }

    /// The sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.samples.iter().map(|s| self.weight(s)).sum()
    }

    /// The sum of the values.
    pub fn total_value(&self) -> u64 {
        self.samples.iter().map(|s| s.value).sum()
    }
}
