//! Line numbers from a code object's line table, in the three formats CPython has used:
//! `co_lnotab` (3.9), the 3.10 `co_linetable`, and the 3.11+ location table.

/// Which format a line table is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.9 `co_lnotab`: (bytecode offset increment, signed line increment) byte pairs.
    Lnotab,
    /// 3.10 `co_linetable`: (bytecode length, signed line delta or -128 for none) byte pairs.
    Linetable310,
    /// 3.11+ location table: variable-length entries covering runs of code units.
    Locations311,
}

/// The line of the instruction at `offset`, or `None` when the table says it has none.
///
/// `offset` is in bytes for [`LineTableFormat::Lnotab`] and [`LineTableFormat::Linetable310`],
/// and in code units (2 bytes) for [`LineTableFormat::Locations311`].
pub fn line_at(format: LineTableFormat, table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    match format {
        LineTableFormat::Lnotab => Some(lnotab(table, first_line, offset)),
        LineTableFormat::Linetable310 => linetable310(table, first_line, offset),
        LineTableFormat::Locations311 => locations311(table, first_line, offset),
    }
}

fn lnotab(table: &[u8], first_line: u32, offset: u64) -> u32 {
    let mut addr = 0u64;
    let mut line = i64::from(first_line);
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    u32::try_from(line).unwrap_or(0)
}

fn linetable310(table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let mut end = 0u64;
    let mut line = i64::from(first_line);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let has_line = delta != -128;
        if has_line {
            line += i64::from(delta);
        }
        if (start..end).contains(&offset) {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
    }
    None
}

/// Reads a 6-bit-chunk varint (the 0x40 bit continues).
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes.next()?;
        value |= u64::from(b & 0x3f) << shift;
        if b & 0x40 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 60 {
            return None;
        }
    }
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let v = varint(bytes)?;
    Some(if v & 1 != 0 { -((v >> 1) as i64) } else { (v >> 1) as i64 })
}

fn locations311(table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let mut bytes = table.iter().copied().peekable();
    let mut line = i64::from(first_line);
    let mut start = 0u64;
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            return None; // Not at an entry start: the table is corrupt.
        }
        let code = (head >> 3) & 0x0f;
        let length = u64::from(head & 0x07) + 1;
        let mut has_line = true;
        match code {
            15 => has_line = false,
            14 => {
                line = line.checked_add(signed_varint(&mut bytes)?)?;
                varint(&mut bytes)?; // end line delta
                varint(&mut bytes)?; // column + 1
                varint(&mut bytes)?; // end column + 1
            }
            // Deltas come from the process's memory: a corrupt table must not overflow.
            13 => line = line.checked_add(signed_varint(&mut bytes)?)?,
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
            }
            _ => {
                bytes.next()?; // short form: same line, one column byte
            }
        }
        if (start..start + length).contains(&offset) {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
        start += length;
        // Entries continue until the next byte with the top bit set.
        while bytes.peek().is_some_and(|b| b & 0x80 == 0) {
            bytes.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_line_deltas_in_a_corrupt_table_give_no_line() {
        // Found by the `linetable` fuzz target: long line deltas that add up past i64.
        let crash = [
            0x56, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc, 0xff,
            0xef, 0x37, 0x79, 0xc1, 0xfd, 0xf7, 0xb3, 0xc1, 0x7e, 0x01, 0x00, 0x00, 0x00, 0x0e,
            0x6b, 0xff, 0xf0, 0x60, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc8, 0xff, 0xff, 0xbf,
            0xff, 0xff, 0xff, 0x00, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0e, 0x6b, 0xff, 0xf0, 0x60,
            0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc, 0x19, 0xff, 0x23, 0xff, 0xff, 0xff,
            0xff,
        ];
        // The target's input: a format byte, the first line and the offset, then the table.
        let first_line = u32::from_le_bytes([crash[1], crash[2], crash[3], crash[4]]);
        let offset = u64::from(u32::from_le_bytes([crash[5], crash[6], crash[7], crash[8]]));
        assert_eq!(line_at(LineTableFormat::Locations311, &crash[9..], first_line, offset), None);
        // Two entries whose deltas are each near i64::MAX.
        let big = [0xe8, 0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x3f];
        let table: Vec<u8> = big.iter().chain(&big).copied().collect();
        assert_eq!(line_at(LineTableFormat::Locations311, &table, u32::MAX, 1), None);
    }

    // Tables and expected lines taken from real interpreters for:
    //
    //   def f(x):          # line 1
    //       y = x + 1      # line 2
    //       for i in range(3):
    //           y += i     # line 4
    //       return y       # line 5

    /// CPython 3.11.7: `f.__code__.co_linetable`, and `(code unit, line)` for every
    /// instruction from `dis.get_instructions(f)` (offset / 2, positions.lineno).
    const LOCATIONS_311: &[u8] = &[
        0x80, 0x00, 0xd8, 0x08, 0x09, 0x88, 0x41, 0x89, 0x05, 0x80, 0x41, 0xdd, 0x0d, 0x12, 0x90,
        0x31, 0x89, 0x58, 0x8c, 0x58, 0xf0, 0x00, 0x01, 0x05, 0x0f, 0xf0, 0x00, 0x01, 0x05, 0x0f,
        0x88, 0x01, 0xd8, 0x08, 0x09, 0x88, 0x51, 0x89, 0x06, 0x88, 0x01, 0x88, 0x01, 0xd8, 0x0b,
        0x0c, 0x80, 0x48,
    ];

    #[test]
    fn locations_311_matches_the_interpreter() {
        let expected = [
            (0, 1),
            (1, 2),
            (2, 2),
            (3, 2),
            (5, 2),
            (6, 3),
            (12, 3),
            (13, 3),
            (15, 3),
            (20, 3),
            (21, 3),
            (22, 3),
            (23, 4),
            (24, 4),
            (25, 4),
            (27, 4),
            (28, 4),
            (29, 5),
            (30, 5),
        ];
        for (unit, line) in expected {
            assert_eq!(
                line_at(LineTableFormat::Locations311, LOCATIONS_311, 1, unit),
                Some(line),
                "unit {unit}"
            );
        }
        assert_eq!(line_at(LineTableFormat::Locations311, LOCATIONS_311, 1, 10_000), None);
    }

    #[test]
    fn linetable_310_ranges() {
        // (length in bytes, line delta): 4 bytes on line +0 (1), 6 on +1 (2), 2 with no
        // line, 8 on +2 (4).
        let table = [4, 0, 6, 1, 2, 0x80, 8, 2];
        let at = |o| line_at(LineTableFormat::Linetable310, &table, 1, o);
        assert_eq!(at(0), Some(1));
        assert_eq!(at(3), Some(1));
        assert_eq!(at(4), Some(2));
        assert_eq!(at(10), None);
        assert_eq!(at(12), Some(4));
        assert_eq!(at(20), None);
    }

    #[test]
    fn lnotab_pairs() {
        // Offsets 0..6 on line 10, 6..14 on 11, 14.. on 9 (a negative increment).
        let table = [6, 1, 8, 0xfe];
        let at = |o| line_at(LineTableFormat::Lnotab, &table, 10, o);
        assert_eq!(
            (at(0), at(5), at(6), at(13), at(14), at(100)),
            (Some(10), Some(10), Some(11), Some(11), Some(9), Some(9))
        );
    }

    #[test]
    fn signed_varints() {
        let mut it = [0x03u8].into_iter();
        assert_eq!(signed_varint(&mut it), Some(-1));
        let mut it = [0x44u8, 0x01].into_iter();
        assert_eq!(varint(&mut it), Some(4 | (1 << 6)));
    }
}
