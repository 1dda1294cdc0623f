//! Interpreter files on arbitrary bytes: detection parses every executable and library a
//! process maps whose name looks like CPython's, so any bytes must give an answer, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::python::{image_needs_libpython, is_interpreter_image};

fuzz_target!(|data: &[u8]| {
    let _ = is_interpreter_image(data);
    let _ = image_needs_libpython(data);
});
