//! Which pre-merged rollups and raw windows answer a time range.
//!
//! A rollup of level `L` holds every window whose start lies in `[b, b + L)` for a bucket
//! start `b` that is a multiple of `L`. A range is covered by the largest buckets that fit in
//! it, then smaller ones, and raw windows at the edges, so a day is 24 hourly rollups and an
//! hour at most 60 minute rollups plus the windows of two partial minutes.

/// Rollup bucket lengths in nanoseconds, largest first.
pub const LEVELS_NS: [i64; 2] = [3_600_000_000_000, 60_000_000_000];

/// One piece of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The rollup of level `LEVELS_NS[level]` starting at `start`.
    Rollup {
        /// Index into [`LEVELS_NS`].
        level: usize,
        /// Bucket start, in nanoseconds since the epoch.
        start: i64,
    },
    /// Raw windows whose start lies in `[start, end)`.
    Raw {
        /// Inclusive.
        start: i64,
        /// Exclusive.
        end: i64,
    },
}

/// Covers `[start, end)` with rollups and raw ranges, in time order.
pub fn plan(start: i64, end: i64) -> Vec<Piece> {
    let mut out = Vec::new();
    cover(start, end, 0, &mut out);
    out
}

fn cover(start: i64, end: i64, level: usize, out: &mut Vec<Piece>) {
    if start >= end {
        return;
    }
    let Some(&len) = LEVELS_NS.get(level) else {
        out.push(Piece::Raw { start, end });
        return;
    };
    let first = start.div_euclid(len) * len + if start.rem_euclid(len) == 0 { 0 } else { len };
    let last = end.div_euclid(len) * len;
    if first >= last {
        cover(start, end, level + 1, out);
        return;
    }
    cover(start, first, level + 1, out);
    let mut b = first;
    while b < last {
        out.push(Piece::Rollup { level, start: b });
        b += len;
    }
    cover(last, end, level + 1, out);
}

/// Covers the bucket of level `level` that starts at `start` with the levels below it (and
/// raw windows below the smallest): for a rollup that was given up as too large.
pub fn below(level: usize, start: i64) -> Vec<Piece> {
    let mut out = Vec::new();
    if let Some(&len) = LEVELS_NS.get(level) {
        cover(start, start.saturating_add(len), level + 1, &mut out);
    }
    out
}

/// The bucket of level `level` that contains `t`.
pub fn bucket(level: usize, t: i64) -> i64 {
    let len = LEVELS_NS[level];
    t.div_euclid(len) * len
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000_000_000;
    const H: i64 = 60 * M;
    const S: i64 = 1_000_000_000;

    #[test]
    fn a_bucket_below_its_level_is_the_next_level_then_raw_windows() {
        let hour = below(0, 10 * H);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[0], Piece::Rollup { level: 1, start: 10 * H });
        assert_eq!(hour[59], Piece::Rollup { level: 1, start: 11 * H - M });
        assert_eq!(
            below(1, 10 * H + 5 * M),
            [Piece::Raw { start: 10 * H + 5 * M, end: 10 * H + 6 * M }]
        );
    }

    #[test]
    fn a_day_is_hourly_rollups() {
        let p = plan(10 * H, 34 * H);
        assert_eq!(p.len(), 24);
        assert!(p.iter().all(|p| matches!(p, Piece::Rollup { level: 0, .. })));
    }

    #[test]
    fn an_unaligned_hour_is_minutes_and_raw_edges() {
        let start = 10 * H + 5 * M + 30 * S;
        let p = plan(start, start + H);
        assert_eq!(p.first(), Some(&Piece::Raw { start, end: 10 * H + 6 * M }));
        assert_eq!(p.last(), Some(&Piece::Raw { start: 11 * H + 5 * M, end: start + H }));
        let minutes = p.iter().filter(|p| matches!(p, Piece::Rollup { level: 1, .. })).count();
        assert_eq!(minutes, 59);
        assert_eq!(p.len(), 61);
    }

    #[test]
    fn pieces_tile_the_range_in_order() {
        let (start, end) = (3 * H + 59 * M + 50 * S, 6 * H + 2 * M + 10 * S);
        let mut t = start;
        for piece in plan(start, end) {
            let (s, e) = match piece {
                Piece::Rollup { level, start } => (start, start + LEVELS_NS[level]),
                Piece::Raw { start, end } => (start, end),
            };
            assert_eq!(s, t);
            t = e;
        }
        assert_eq!(t, end);
        assert_eq!(plan(5, 5), []);
    }
}
