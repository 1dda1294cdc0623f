//! speedscope's JSON file format (<https://www.speedscope.app/file-format-schema.json>): one
//! "sampled" profile per process, busiest first, over one shared frame table.
//!
//! Weights are nanoseconds of the profile's mode (CPU, wall or off-CPU time), so speedscope
//! shows times. Threads of a
//! process are merged into its profile. Stacks are sorted by their frame names, so speedscope's
//! time-ordered view reads like a flame graph (the profile has no sample order to preserve).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    ProfileView,
    view::{ViewFrame, ViewKind},
};

/// The value of the file's `$schema` field.
pub const SCHEMA_URL: &str = "https://www.speedscope.app/file-format-schema.json";

/// A speedscope file (`FileFormat.File`).
#[derive(Debug, Serialize)]
pub struct File {
    /// Always [`SCHEMA_URL`].
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    /// The frames that profiles refer to by index.
    pub shared: Shared,
    /// One profile per process.
    pub profiles: Vec<SampledProfile>,
    /// Title shown by speedscope.
    pub name: String,
    /// Profile shown first.
    #[serde(rename = "activeProfileIndex")]
    pub active_profile_index: usize,
    /// The program that wrote the file.
    pub exporter: String,
}

/// The shared frame table.
#[derive(Debug, Serialize)]
pub struct Shared {
    /// Frames, referred to by index.
    pub frames: Vec<Frame>,
}

/// One frame (`FileFormat.Frame`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Function name (a Python qualified name, a native or kernel symbol, or a marker).
    pub name: String,
    /// Source file for Python frames, the binary's file name for native and kernel frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line number of Python frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
}

/// One sampled profile (`FileFormat.SampledProfile`).
#[derive(Debug, Serialize)]
pub struct SampledProfile {
    /// Always `sampled`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `comm (pid N)`.
    pub name: String,
    /// `nanoseconds`, or `none` for sample counts.
    pub unit: &'static str,
    /// Always 0.
    #[serde(rename = "startValue")]
    pub start_value: u64,
    /// The sum of the weights.
    #[serde(rename = "endValue")]
    pub end_value: u64,
    /// Stacks as frame indices, root first.
    pub samples: Vec<Vec<usize>>,
    /// The weight of each stack.
    pub weights: Vec<u64>,
}

fn frame_of(f: &ViewFrame) -> Frame {
    let line = (f.kind == ViewKind::Python && f.line > 0).then_some(f.line);
    let file = (!f.file.is_empty()).then(|| f.file.clone());
    Frame { name: f.function.clone(), file, line }
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The speedscope file of `view`, titled `name`.
pub fn file(view: &ProfileView, name: &str) -> File {
    let mut frames: Vec<Frame> = Vec::new();
    let mut index: HashMap<Frame, usize> = HashMap::new();
    // (pid, comm) -> stack -> samples, merged over threads.
    let mut processes: BTreeMap<(String, String), BTreeMap<Vec<usize>, u64>> = BTreeMap::new();
    for sample in &view.samples {
        let stack: Vec<usize> = sample
            .frames
            .iter()
            .map(|f| {
                let frame = frame_of(f);
                *index.entry(frame.clone()).or_insert_with(|| {
                    frames.push(frame);
                    frames.len() - 1
                })
            })
            .collect();
        let pid = label(&sample.labels, "pid").unwrap_or("?").to_owned();
        let comm = label(&sample.labels, "comm").unwrap_or("").to_owned();
        *processes.entry((pid, comm)).or_default().entry(stack).or_insert(0) += sample.value;
    }
    let unit = "nanoseconds";
    let mut profiles: Vec<SampledProfile> = processes
        .into_iter()
        .map(|((pid, comm), stacks)| {
            let mut stacks: Vec<(Vec<usize>, u64)> = stacks.into_iter().collect();
            // By names, root first; by index where names tie (a Python and a native `main`).
            stacks.sort_by(|a, b| {
                a.0.iter()
                    .map(|&i| &frames[i].name)
                    .cmp(b.0.iter().map(|&i| &frames[i].name))
                    .then_with(|| a.0.cmp(&b.0))
            });
            let weights: Vec<u64> = stacks.iter().map(|(_, n)| *n).collect();
            let name =
                if comm.is_empty() { format!("pid {pid}") } else { format!("{comm} (pid {pid})") };
            SampledProfile {
                kind: "sampled",
                name,
                unit,
                start_value: 0,
                end_value: weights.iter().sum(),
                samples: stacks.into_iter().map(|(s, _)| s).collect(),
                weights,
            }
        })
        .collect();
    profiles.sort_by(|a, b| b.end_value.cmp(&a.end_value).then_with(|| a.name.cmp(&b.name)));
    File {
        schema: SCHEMA_URL,
        shared: Shared { frames },
        profiles,
        name: name.to_owned(),
        active_profile_index: 0,
        exporter: concat!("profctl ", env!("CARGO_PKG_VERSION")).to_owned(),
    }
}

/// Renders `view` as a speedscope JSON file titled `name`.
pub fn render(view: &ProfileView, name: &str) -> String {
    serde_json::to_string(&file(view, name))
        .expect("the speedscope types have string keys and no floats, so they always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::view::ViewSample;

    fn frame(kind: ViewKind, function: &str, file: &str, line: i64) -> ViewFrame {
        ViewFrame { kind, function: function.into(), file: file.into(), line, start_line: 0 }
    }

    fn sample(pid: &str, comm: &str, frames: Vec<ViewFrame>, count: u64) -> ViewSample {
        let labels = vec![("pid".into(), pid.into()), ("comm".into(), comm.into())];
        ViewSample { frames, count, value: count * 10_000_000, labels }
    }

    fn view() -> ProfileView {
        let main = frame(ViewKind::Python, "main", "/srv/app.py", 10);
        let hot = frame(ViewKind::Python, "hot", "/srv/app.py", 3);
        let write = frame(ViewKind::Kernel, "ksys_write", "[kernel.kallsyms]", 0);
        let c_main = frame(ViewKind::Native, "main", "app", 0);
        ProfileView {
            samples: vec![
                sample("7", "python3", vec![main.clone(), hot.clone()], 4),
                sample("7", "python3", vec![main.clone(), hot, write.clone()], 1),
                sample("7", "python3", vec![main], 2),
                sample("9", "app", vec![c_main, write], 10),
            ],
            period_ns: 10_000_000,
            ..ProfileView::default()
        }
    }

    #[test]
    fn one_profile_per_process_busiest_first_weighted_in_nanoseconds() {
        let f = file(&view(), "t");
        let names: Vec<_> = f.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["app (pid 9)", "python3 (pid 7)"]);
        let py = &f.profiles[1];
        assert_eq!(py.unit, "nanoseconds");
        assert_eq!(py.end_value, 7 * 10_000_000);
        assert_eq!(py.weights.iter().sum::<u64>(), py.end_value);
        // Root first, sorted by names: main, main;hot, main;hot;ksys_write.
        let stacks: Vec<Vec<&str>> = py
            .samples
            .iter()
            .map(|s| s.iter().map(|&i| f.shared.frames[i].name.as_str()).collect())
            .collect();
        assert_eq!(stacks, [vec!["main"], vec!["main", "hot"], vec!["main", "hot", "ksys_write"]]);
        assert_eq!(py.weights, [20_000_000, 40_000_000, 10_000_000]);
    }

    #[test]
    fn frames_are_shared_and_python_and_native_functions_stay_apart() {
        let f = file(&view(), "t");
        // Python main, Python hot, the kernel function (shared by both processes), native main.
        assert_eq!(f.shared.frames.len(), 4);
        let mains: Vec<_> = f.shared.frames.iter().filter(|fr| fr.name == "main").collect();
        assert_eq!(mains.len(), 2);
        assert!(
            mains.iter().any(|m| m.file.as_deref() == Some("/srv/app.py") && m.line == Some(10))
        );
        assert!(mains.iter().any(|m| m.file.as_deref() == Some("app") && m.line.is_none()));
    }

    #[test]
    fn json_names_the_schema_and_uses_speedscope_field_names() {
        let json: serde_json::Value = serde_json::from_str(&render(&view(), "title")).unwrap();
        assert_eq!(json["$schema"], SCHEMA_URL);
        assert_eq!(json["activeProfileIndex"], 0);
        assert_eq!(json["profiles"][0]["type"], "sampled");
        assert_eq!(json["profiles"][0]["unit"], "nanoseconds");
        assert_eq!(json["profiles"][0]["endValue"], 100_000_000);
        assert_eq!(json["profiles"][0]["startValue"], 0);
        assert!(json["shared"]["frames"][2].get("line").is_none());
    }
}
