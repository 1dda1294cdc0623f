//! Selectors from arbitrary text (a `-s` flag, or a gRPC request's matchers): parsed or refused
//! with an error, and a parsed one prints back to an equal selector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::selector::Selector;

fuzz_target!(|text: &str| {
    if let Ok(selector) = text.parse::<Selector>() {
        let printed = selector.to_string();
        let again: Selector = printed.parse().expect("a printed selector parses");
        assert_eq!(again.to_string(), printed);
    }
});
