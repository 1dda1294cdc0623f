//! The three CPython line-table formats on arbitrary bytes: a line table comes from the
//! profiled process's memory, so any bytes must give a line or none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::python::linetable::{LineTableFormat, line_at};

fuzz_target!(|data: &[u8]| {
    let Some((&[format, l0, l1, l2, l3, o0, o1, o2, o3], table)) = data.split_first_chunk::<9>()
    else {
        return;
    };
    let format = match format % 3 {
        0 => LineTableFormat::Lnotab,
        1 => LineTableFormat::Linetable310,
        _ => LineTableFormat::Locations311,
    };
    let first_line = u32::from_le_bytes([l0, l1, l2, l3]);
    let offset = u64::from(u32::from_le_bytes([o0, o1, o2, o3]));
    let _ = line_at(format, table, first_line, offset);
});
