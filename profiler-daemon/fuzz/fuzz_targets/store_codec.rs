//! The store's records on arbitrary bytes, as a damaged or foreign file would give them:
//! decoding fails cleanly or gives a record that can be merged and read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::store::codec::{Dictionary, WindowRecord, stack_frames};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = WindowRecord::decode(data) {
        let mut merged = record.clone();
        merged.merge(&record);
        let _ = merged.drop_snapshot();
        let _ = merged.encode_to_vec();
    }
    let _ = stack_frames(data);
    let mut dict = Dictionary::default();
    // Each table's loader on the same bytes, then the lookups a query makes.
    if dict.load_frame(1, data).is_ok() {
        let _ = dict.frame(1);
    }
    let _ = dict.load_labels(2, data).map(|()| dict.labels(2));
    let _ = dict.load_stack(3, data).map(|()| dict.stack(3));
});
