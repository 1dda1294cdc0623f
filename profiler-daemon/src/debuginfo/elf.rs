//! What the symbolizer needs to know of an ELF file before it picks a symbol source: whether it
//! has a full symbol table, where its debug file is said to be (`.gnu_debuglink`), and how its
//! file offsets map to virtual addresses (a separate debug file has the same addresses, not the
//! same offsets).

use std::path::Path;

use object::{Object as _, ObjectSegment as _};

/// A loadable segment: `size` bytes at file `offset`, loaded at `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// File offset of the segment.
    pub offset: u64,
    /// Bytes of the segment in the file.
    pub size: u64,
    /// Its virtual address.
    pub address: u64,
}

/// A `.gnu_debuglink` section: the file name of the debug file and the CRC-32 of its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debuglink {
    /// A plain file name (one without a `/`, never `.` or `..`).
    pub name: String,
    /// The CRC-32 (the one of zlib and gzip) of the whole debug file.
    pub crc: u32,
}

/// What an ELF file says of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Whether it has a `.symtab` (all functions, not only the exported ones).
    pub symtab: bool,
    /// Its `.gnu_debuglink`, if it has one that names a plain file.
    pub debuglink: Option<Debuglink>,
    /// Its loadable segments.
    pub segments: Vec<Segment>,
}

impl Layout {
    /// The layout of the ELF file at `path`; `None` if it cannot be read or is not ELF.
    pub fn read(path: &Path) -> Option<Layout> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: the mapping is read-only and private, and is dropped before this returns.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        Layout::parse(&map)
    }

    /// The layout of the ELF image `data`. Files are untrusted: any bytes give an answer.
    pub fn parse(data: &[u8]) -> Option<Layout> {
        let file = object::File::parse(data).ok()?;
        let symtab = file.symbol_table().is_some();
        let segments = file
            .segments()
            .map(|seg| {
                let (offset, size) = seg.file_range();
                Segment { offset, size, address: seg.address() }
            })
            .collect();
        let debuglink = file.gnu_debuglink().ok().flatten().and_then(|(name, crc)| {
            let name = std::str::from_utf8(name).ok()?;
            let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
            plain.then(|| Debuglink { name: name.to_owned(), crc })
        });
        Some(Layout { symtab, debuglink, segments })
    }

    /// The virtual address at file `offset`, if a loadable segment holds it.
    pub fn address(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            (offset >= s.offset && offset - s.offset < s.size)
                .then(|| s.address.wrapping_add(offset - s.offset))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_symbol_table_and_its_code_is_in_a_segment() {
        let exe = std::env::current_exe().unwrap();
        let layout = Layout::read(&exe).expect("the test binary is ELF");
        assert!(layout.symtab, "test binaries are not stripped");
        let code = layout.segments.iter().find(|s| s.size > 0 && s.offset > 0).unwrap();
        assert_eq!(layout.address(code.offset + 4), Some(code.address + 4));
        let end = layout.segments.iter().map(|s| s.offset + s.size).max().unwrap();
        assert_eq!(layout.address(end + (1 << 30)), None);
    }

    #[test]
    fn any_bytes_give_an_answer() {
        assert_eq!(Layout::parse(b""), None);
        assert_eq!(Layout::parse(b"\x7fELF\x02\x01\x01"), None);
        assert_eq!(Layout::parse(&[0xffu8; 4096]), None);
    }
}
