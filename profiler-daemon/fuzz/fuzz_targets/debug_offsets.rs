//! `_Py_DebugOffsets` tables on arbitrary bytes: the table is read from the profiled process's
//! memory, so any bytes must give a layout or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::python::debug_offsets::parse;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
});
