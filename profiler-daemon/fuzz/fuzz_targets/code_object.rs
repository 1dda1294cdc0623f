//! Code objects read from arbitrary process memory: the symbolizer reads a sampled frame's
//! code object, its name, file and line table from a process that may be changing them, so any
//! bytes must give an object or an error, never a panic, and the line table read must give a
//! line or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::python::{code::read_code_object, layout, linetable::line_at, memory::Image};

/// Where the input's memory is seen; the code object is at its start.
const BASE: u64 = 0x10_000;

fuzz_target!(|data: &[u8]| {
    let Some((&[minor, t0, t1, t2, t3, t4, t5, t6, t7, o0, o1], memory)) =
        data.split_first_chunk::<11>()
    else {
        return;
    };
    // The built-in layouts, 3.9 to 3.12 (3.13+ come from `_Py_DebugOffsets`, fuzzed apart).
    let Some(layout) = layout::table(3, 9 + minor % 4) else {
        return;
    };
    let code_type = u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    let image = Image { base: BASE, bytes: memory };
    if let Ok(code) = read_code_object(&image, &layout, code_type, BASE) {
        assert!(code.qualname.chars().count() <= 1024, "names are bounded");
        assert!(code.filename.chars().count() <= 1024, "names are bounded");
        assert!(code.linetable.len() <= 1 << 20, "line tables are bounded");
        let offset = u64::from(u16::from_le_bytes([o0, o1]));
        let _ = line_at(layout.linetable, &code.linetable, code.first_line, offset);
    }
});
