//! The config file from arbitrary text: read or refused with an error that names the file,
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use profiler_daemon::config::Config;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::from_text(Path::new("fuzz.toml"), text) {
        let _ = e.to_string();
    }
});
