//! How much of a process's stack its samples copy, learnt from what unwinding the copies read.
//!
//! The kernel copies up to [`STACK_COPY_MAX`] bytes from the stack pointer up, and each byte
//! costs twice: in the sampling program, which reads user memory and writes the ring, and in
//! the ring's room. Most stacks need far less: a C program's whole chain, or a C extension's
//! frames down to the interpreter that runs it, often fit in a few hundred bytes. So each
//! process starts at the most, and the size then follows the deepest word that unwinding read
//! over an epoch of samples, with room to spare. A sample whose unwinding ran past the end of
//! a full copy doubles the size at once, and the size then holds for a while before it may
//! shrink again, so that a process whose deep paths are rare does not keep losing them.

use std::time::{Duration, Instant};

use profiler_common::sample::STACK_COPY_MAX;

/// The smallest copy.
pub const MIN_BYTES: u32 = 512;
/// Samples, and time, over which the deepest read is taken before the size may shrink.
const EPOCH_SAMPLES: u32 = 32;
const EPOCH: Duration = Duration::from_secs(1);
/// How long the size holds after it grew.
const HOLD: Duration = Duration::from_secs(10);
/// Sizes are multiples of this.
const STEP: u32 = 256;

/// What unwinding one sample's copy found, for [`CopySize::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Bytes in the copy.
    pub copied: u32,
    /// Bytes from the copy's start to the end of the deepest word unwinding read.
    pub used: u64,
    /// Whether unwinding stopped at a word past the copy's end.
    pub ran_out: bool,
}

/// One process's copy size.
#[derive(Clone, Debug)]
pub struct CopySize {
    bytes: u32,
    /// The deepest read of the current epoch, its samples and its start.
    deepest: u64,
    samples: u32,
    since: Instant,
    hold_until: Instant,
}

impl CopySize {
    /// A process seen at `now` starts at the largest copy.
    pub fn new(now: Instant) -> CopySize {
        CopySize {
            bytes: STACK_COPY_MAX as u32,
            deepest: 0,
            samples: 0,
            since: now,
            hold_until: now,
        }
    }

    /// The bytes to copy.
    pub fn bytes(&self) -> u32 {
        self.bytes
    }

    /// Learns from one sample; returns the new size when it changed.
    pub fn learn(&mut self, reading: Reading, now: Instant) -> Option<u32> {
        // A copy that ended at the end of the stack's mapping, short of the size, ran out of
        // stack, not of copy: a larger one would hold no more.
        if reading.ran_out && reading.copied >= self.bytes && self.bytes < STACK_COPY_MAX as u32 {
            self.bytes = (self.bytes * 2).min(STACK_COPY_MAX as u32);
            self.start_epoch(now);
            self.hold_until = now + HOLD;
            return Some(self.bytes);
        }
        self.deepest = self.deepest.max(reading.used);
        self.samples += 1;
        if self.samples < EPOCH_SAMPLES || now.duration_since(self.since) < EPOCH {
            return None;
        }
        let fit = fit(self.deepest);
        self.start_epoch(now);
        if fit >= self.bytes || now < self.hold_until {
            return None;
        }
        self.bytes = fit;
        Some(fit)
    }

    fn start_epoch(&mut self, now: Instant) {
        self.deepest = 0;
        self.samples = 0;
        self.since = now;
    }
}

/// The size for stacks that used `deepest` bytes: a quarter and a step more, rounded up to a
/// step, within the bounds.
fn fit(deepest: u64) -> u32 {
    let room = deepest.saturating_add(deepest / 4).saturating_add(u64::from(STEP));
    let rounded = room.div_ceil(u64::from(STEP)).saturating_mul(u64::from(STEP));
    u32::try_from(rounded).unwrap_or(u32::MAX).clamp(MIN_BYTES, STACK_COPY_MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = STACK_COPY_MAX as u32;

    fn used(copied: u32, used: u64) -> Reading {
        Reading { copied, used, ran_out: false }
    }

    /// Feeds `n` samples, one every `every`, from `at` on; returns the last change and the
    /// time after them.
    fn feed(
        size: &mut CopySize,
        reading: Reading,
        n: u32,
        mut at: Instant,
        every: Duration,
    ) -> (Option<u32>, Instant) {
        let mut changed = None;
        for _ in 0..n {
            changed = size.learn(reading, at).or(changed);
            at += every;
        }
        (changed, at)
    }

    #[test]
    fn the_size_shrinks_to_the_deepest_read_of_an_epoch_with_room_to_spare() {
        let t0 = Instant::now();
        let mut size = CopySize::new(t0);
        assert_eq!(size.bytes(), MAX);
        // Not before an epoch's samples and time have both passed.
        let (changed, t) = feed(&mut size, used(MAX, 700), 31, t0, Duration::from_millis(100));
        assert_eq!(changed, None);
        let (changed, _) = feed(&mut size, used(MAX, 600), 1, t, Duration::ZERO);
        // 700 + 175 + 256 = 1131, rounded up to 1280.
        assert_eq!(changed, Some(1280));
        assert_eq!(size.bytes(), 1280);
    }

    #[test]
    fn a_sample_that_ran_out_of_a_full_copy_doubles_it_and_holds_it() {
        let t0 = Instant::now();
        let mut size = CopySize::new(t0);
        let (_, t) = feed(&mut size, used(MAX, 100), 40, t0, Duration::from_millis(50));
        assert_eq!(size.bytes(), MIN_BYTES);
        let deep = Reading { copied: MIN_BYTES, used: 512, ran_out: true };
        assert_eq!(size.learn(deep, t), Some(1024));
        assert_eq!(size.learn(Reading { copied: 1024, ..deep }, t), Some(2048));
        // Shallow samples do not shrink it again while it holds...
        let (changed, t) = feed(&mut size, used(2048, 100), 100, t, Duration::from_millis(50));
        assert_eq!(changed, None);
        // ...and do after.
        let (changed, _) = feed(&mut size, used(2048, 100), 200, t, Duration::from_millis(50));
        assert_eq!(changed, Some(MIN_BYTES));
    }

    #[test]
    fn a_copy_cut_short_by_the_stacks_end_does_not_grow() {
        let t0 = Instant::now();
        let mut size = CopySize::new(t0);
        feed(&mut size, used(MAX, 1000), 40, t0, Duration::from_millis(50));
        let bytes = size.bytes();
        assert!(bytes < MAX);
        let short = Reading { copied: bytes - 256, used: u64::from(bytes - 256), ran_out: true };
        assert_eq!(size.learn(short, t0 + Duration::from_secs(3)), None);
        // Nor does a full copy at the most.
        let mut size = CopySize::new(t0);
        assert_eq!(size.learn(Reading { copied: MAX, used: 8192, ran_out: true }, t0), None);
    }

    #[test]
    fn sizes_are_steps_within_bounds() {
        assert_eq!(fit(0), MIN_BYTES);
        assert_eq!(fit(8), MIN_BYTES);
        assert_eq!(fit(1024), 1536);
        assert_eq!(fit(100_000), MAX);
        assert_eq!(fit(u64::MAX), MAX);
    }
}
