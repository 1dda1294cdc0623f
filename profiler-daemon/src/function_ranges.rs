//! Where each function of a file lies, learnt from the symbolizer. A busy interpreter's samples
//! land on thousands of distinct instructions of a few functions; an address inside a function
//! met before is named from here, without symbolizing it again.

use std::{collections::HashMap, sync::Arc};

use crate::host::FileKey;

#[derive(Debug)]
struct Range {
    start: u64,
    end: u64,
    name: Arc<str>,
}

/// Function ranges (in file offsets) per file, at most `max` in all; when full it starts over.
#[derive(Debug)]
pub struct FunctionRanges {
    files: HashMap<FileKey, Vec<Range>>,
    len: usize,
    max: usize,
}

impl FunctionRanges {
    /// Empty, holding at most `max` ranges.
    pub fn new(max: usize) -> FunctionRanges {
        FunctionRanges { files: HashMap::new(), len: 0, max }
    }

    /// Records that `name` spans `[start, end)` of `file`.
    pub fn insert(&mut self, file: FileKey, start: u64, end: u64, name: Arc<str>) {
        if end <= start || self.get(file, start).is_some() {
            return;
        }
        if self.len >= self.max {
            self.files.clear();
            self.len = 0;
        }
        let ranges = self.files.entry(file).or_default();
        let at = ranges.partition_point(|r| r.start < start);
        ranges.insert(at, Range { start, end, name });
        self.len += 1;
    }

    /// The function of `file` that holds `offset`, if one is known.
    pub fn get(&self, file: FileKey, offset: u64) -> Option<&Arc<str>> {
        let ranges = self.files.get(&file)?;
        let range = &ranges[ranges.partition_point(|r| r.start <= offset).checked_sub(1)?];
        (offset < range.end).then_some(&range.name)
    }

    /// Forgets every range.
    pub fn clear(&mut self) {
        self.files.clear();
        self.len = 0;
    }

    /// Forgets the ranges of `file` (its names came from a source now replaced).
    pub fn forget(&mut self, file: FileKey) {
        if let Some(ranges) = self.files.remove(&file) {
            self.len -= ranges.len();
        }
    }

    /// The most ranges held.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Rough bytes held: the ranges and their names (names shared with frames are counted
    /// here too).
    pub fn heap_bytes(&self) -> usize {
        let names = crate::caches::estimate(
            self.files.values().flatten().map(|r| crate::aggregate::arc_bytes(r.name.len())),
            self.len,
        );
        crate::caches::table_bytes::<(FileKey, Vec<Range>)>(self.files.len())
            + self.len * size_of::<Range>()
            + names
    }

    /// Ranges held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: FileKey = FileKey { dev: 1, inode: 2 };
    const B: FileKey = FileKey { dev: 1, inode: 3 };

    #[test]
    fn an_offset_is_named_by_the_range_that_holds_it() {
        let mut r = FunctionRanges::new(10);
        r.insert(A, 0x2000, 0x2100, "eval".into());
        r.insert(A, 0x1000, 0x1010, "small".into());
        assert_eq!(r.get(A, 0x2000).map(|n| &**n), Some("eval"));
        assert_eq!(r.get(A, 0x20ff).map(|n| &**n), Some("eval"));
        assert_eq!(r.get(A, 0x2100), None);
        assert_eq!(r.get(A, 0x1008).map(|n| &**n), Some("small"));
        assert_eq!(r.get(A, 0x1800), None);
        assert_eq!(r.get(A, 0xfff), None);
        assert_eq!(r.get(B, 0x2000), None);
        // Already covered: not added twice.
        r.insert(A, 0x2000, 0x2100, "eval".into());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_full_table_starts_over() {
        let mut r = FunctionRanges::new(2);
        r.insert(A, 0, 10, "a".into());
        r.insert(A, 10, 20, "b".into());
        r.insert(A, 20, 30, "c".into());
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(A, 5), None);
        assert_eq!(r.get(A, 25).map(|n| &**n), Some("c"));
        // An empty range says nothing.
        r.insert(B, 5, 5, "d".into());
        assert_eq!(r.get(B, 5), None);
    }
}
