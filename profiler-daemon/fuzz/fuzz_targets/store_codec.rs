//! The store's records on arbitrary bytes, as a damaged or foreign file would give them:
//! decoding fails cleanly or gives a record that can be merged and read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler_daemon::store::codec::{Decoder, Table, WindowRecord, check_row, stack_frames};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = WindowRecord::decode(data) {
        let mut merged = record.clone();
        merged.merge(&record);
        let _ = merged.drop_snapshot();
        let _ = merged.encode_to_vec();
    }
    let _ = stack_frames(data);
    for table in [Table::Frames, Table::Stacks, Table::Labels] {
        let _ = check_row(table, data);
    }
    // The lookups a query makes, with these bytes as every stored row: a stack whose frames
    // are the same bytes, labels, a frame.
    let mut decoder = Decoder::new(|_, _| Some(data.to_vec()));
    let _ = decoder.stack(3);
    let _ = decoder.labels(2);
    let _ = decoder.frame(1);
});
