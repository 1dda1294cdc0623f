//! Folded stacks: one line per distinct stack, `root;…;leaf count`, as read by flamegraph.pl
//! and inferno. The count is samples in a CPU profile and nanoseconds in the others.

use std::collections::BTreeMap;

use super::ProfileView;

/// Renders `view` as folded stacks, merged over labels and sorted by stack.
pub fn render(view: &ProfileView) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &view.samples {
        let line = sample
            .frames
            .iter()
            .map(|f| f.display().replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *stacks.entry(line).or_insert(0) += view.weight(sample);
    }
    let mut out = String::new();
    for (stack, count) in stacks {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}
