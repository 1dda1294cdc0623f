//! Off-CPU sampling: the `OFF_CPU_THREADS` map the `sched_switch` program keeps per thread,
//! the `OFF_CPU_SCALE` map through which the daemon keeps its capture rate inside a budget,
//! and the capture decision both sides agree on.
//!
//! A switch-out of a thread is recorded with probability `min(1, mean / interval) × scale`,
//! where `mean` is the thread's mean time between switch-outs, an exponential moving average
//! ([`average`]) that the program updates at each of them: a thread that blocks rarely (a long
//! sleep, a slow read, a lock held by a slow peer) is recorded at every block, one that
//! switches many times an interval is recorded about once an interval, and each record's
//! weight is the inverse of its probability, so that sums of weights estimate switch counts
//! (and with the block durations, off-CPU time) without bias: the probability depends on the
//! thread's past only, never on the block it decides about.
//!
//! A smooth mean keeps the weights steady. A probability that grew with the time since the
//! thread's last capture did not: right after a short block was recorded, the next block, long
//! or short, got a tiny probability and a huge weight, and the estimates of threads that
//! alternate short and long waits (a GIL hand-off, a lock after a short sleep) swung by a
//! factor of two.
//!
//! The time between switch-outs is read from `jiffies` (a tick, 1 to 10 ms, per step): reading
//! the precise clock at every switch costs more than the rest of the decision. Ticks are
//! coarse, but their differences sum to the elapsed time, so the mean is right on average.

use crate::sample::WEIGHT_ONE;

/// `OFF_CPU_SCALE` value for a scale of 1.0 (no reduction).
pub const SCALE_ONE: u32 = 1 << 16;

/// Entries of `OFF_CPU_THREADS`.
pub const MAX_OFF_CPU_THREADS: u32 = 32_768;

/// `task_struct::flags` bit of kernel threads, which the program skips.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// `task_struct::__state` bit of a task that exited: it never runs again, so its last
/// switch-out is not recorded.
pub const TASK_DEAD: u32 = 0x80;

/// Value of `OFF_CPU_THREADS`, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuThread {
    /// Switch-out time (`bpf_ktime_get_boot_ns`, the records' clock) of a recorded block that
    /// has not ended yet; 0 when there is none.
    pub start_ns: u64,
    /// The thread's mean time between switch-outs, in nanoseconds ([`average`]).
    pub mean_ns: u64,
    /// Time of the thread's last switch-out, recorded or not, in nanoseconds of the coarse
    /// clock (`jiffies` times the tick).
    pub last_out_ns: u64,
    /// Process id, for the end record.
    pub tgid: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (checked below), every bit pattern is valid.
unsafe impl aya::Pod for OffCpuThread {}

const _: () = assert!(core::mem::size_of::<OffCpuThread>() == 32);

/// Steps of the moving average: each new interval moves the mean by 1/256 of the difference.
/// A slow average: `jiffies` advance in whole ticks, so a thread that switches every 20 us sees
/// intervals of 0 and then one of a whole tick; a fast average would swing with each tick
/// (and fall to nothing in between).
const AVERAGE_SHIFT: u32 = 8;

/// The smallest probability a switch gets, as a share of the interval (1/4096): a probability
/// of 0 would leave switches that no weight stands for.
pub const MIN_SHARE_SHIFT: u32 = 12;

/// Longest interval the mean takes in (a second), so that one long absence does not make the
/// thread look rare for many switches after it.
pub const MAX_INTERVAL_NS: u64 = 1_000_000_000;

/// The mean time between switch-outs after a new interval `elapsed_ns`.
#[inline(always)]
pub const fn average(mean_ns: u64, elapsed_ns: u64) -> u64 {
    let elapsed = if elapsed_ns > MAX_INTERVAL_NS { MAX_INTERVAL_NS } else { elapsed_ns };
    mean_ns - (mean_ns >> AVERAGE_SHIFT) + (elapsed >> AVERAGE_SHIFT)
}

/// The next draw of the capture decision's random generator (one per CPU) from its state
/// `state` (not 0), which is also the next state: xorshift32 (Marsaglia's 13, 17, 5), which
/// takes every value but 0 once in each period of `2^32 - 1` draws. The decision compares the
/// whole draw with a threshold, so the draws need to be uniform, not unpredictable, and they
/// depend on earlier switches only, never on the block being decided about. The kernel's
/// `bpf_get_prandom_u32` costs more than the rest of the decision; it only gives the [`seed`].
#[inline(always)]
pub const fn next_draw(state: u32) -> u32 {
    let mut x = state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

/// A generator state from a random `u32`: any value but 0, which xorshift never leaves.
#[inline(always)]
pub const fn seed(random: u32) -> u32 {
    if random == 0 { 1 } else { random }
}

/// Whether a switch-out is recorded, and with what weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The switch-out is recorded when a uniform random `u32` is below this (at most `1 << 32`,
    /// which every draw is below).
    pub threshold: u64,
    /// Weight of a recorded switch-out in units of 1/65536 (`1 << 32 / probability in
    /// 1/65536`); 0 when the probability is 0.
    pub weight: u64,
}

/// `2^48 / interval_ns`, rounded up: the program multiplies by it rather than divide by the
/// interval at every switch (a 64-bit division costs tens of cycles). 0 for an interval of 0.
#[inline(always)]
pub const fn reciprocal(interval_ns: u64) -> u64 {
    if interval_ns == 0 { 0 } else { (1u64 << 48).div_ceil(interval_ns) }
}

/// The capture probability, in 1/65536, of a switch-out of a thread whose mean time between
/// switch-outs is `since_ns`, with `interval_ns` the interval `T`, `reciprocal` its
/// [`reciprocal`], and `scale` the daemon's reduction ([`SCALE_ONE`] = none; larger values
/// count as one). Below `T / 4096` the mean counts as `T / 4096`, so that no switch has a
/// probability of 0 unless the scale is 0.
///
/// Multiplications and shifts only, without overflow for any input: the kernel program calls
/// this on every switch. `since_ns < interval_ns` keeps the product below `2^48 + interval_ns`.
#[inline(always)]
pub const fn probability(since_ns: u64, interval_ns: u64, reciprocal: u64, scale: u32) -> u64 {
    let one = WEIGHT_ONE;
    let floor = interval_ns >> MIN_SHARE_SHIFT;
    let since_ns = if since_ns < floor { floor } else { since_ns };
    let share = if interval_ns == 0 || since_ns >= interval_ns {
        one
    } else {
        let share = since_ns.wrapping_mul(reciprocal) >> 32;
        if share > one { one } else { share }
    };
    let scale = if scale as u64 > one { one } else { scale as u64 };
    // `one` is 2^16: the division is a shift.
    share * scale / one
}

impl Decision {
    /// The decision for a capture probability `probability` in 1/65536 (see [`probability`]):
    /// the program divides only for the switches it records.
    #[inline(always)]
    pub const fn of(probability: u64) -> Decision {
        if probability == 0 {
            return Decision { threshold: 0, weight: 0 };
        }
        Decision { threshold: probability << 16, weight: (WEIGHT_ONE << 16) / probability }
    }
}

/// The decision for a switch-out: [`probability`] and [`Decision::of`] together.
#[inline(always)]
pub const fn decide(since_ns: u64, interval_ns: u64, scale: u32) -> Decision {
    Decision::of(probability(since_ns, interval_ns, reciprocal(interval_ns), scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_mean_follows_the_intervals_and_caps_long_ones() {
        let mut mean = 10 * MS;
        for _ in 0..3000 {
            mean = average(mean, 20_000);
        }
        assert!((19_000..=21_000).contains(&mean), "{mean}");
        // Alternating 50 us and 5 ms: the mean sits between them.
        for i in 0..4000 {
            mean = average(mean, if i % 2 == 0 { 50_000 } else { 5 * MS });
        }
        assert!((2 * MS..3 * MS).contains(&mean), "{mean}");
        assert_eq!(average(0, u64::MAX), MAX_INTERVAL_NS >> AVERAGE_SHIFT);
        assert!(average(u64::MAX, u64::MAX) >= MAX_INTERVAL_NS);
    }

    #[test]
    fn a_thread_away_for_an_interval_or_more_is_always_recorded() {
        for since in [10 * MS, 50 * MS, u64::MAX] {
            let d = decide(since, 10 * MS, SCALE_ONE);
            assert_eq!(d, Decision { threshold: 1 << 32, weight: WEIGHT_ONE });
            assert!(u64::from(u32::MAX) < d.threshold);
        }
    }

    #[test]
    fn the_probability_grows_with_the_time_since_the_last_capture() {
        let tenth = decide(MS, 10 * MS, SCALE_ONE);
        // 6553/65536 of the draws, each standing for 65536/6553 switches.
        assert_eq!(tenth.threshold, 6553 << 16);
        assert_eq!(tenth.weight, (1 << 32) / 6553);
        let half = decide(5 * MS, 10 * MS, SCALE_ONE);
        assert_eq!((half.threshold, half.weight), (1 << 31, 2 * WEIGHT_ONE));
    }

    #[test]
    fn the_scale_multiplies_the_probability() {
        let d = decide(u64::MAX, 10 * MS, SCALE_ONE / 4);
        assert_eq!((d.threshold, d.weight), (1 << 30, 4 * WEIGHT_ONE));
        let d = decide(5 * MS, 10 * MS, SCALE_ONE / 2);
        assert_eq!((d.threshold, d.weight), (1 << 30, 4 * WEIGHT_ONE));
        // Above one counts as one.
        assert_eq!(decide(u64::MAX, 10 * MS, u32::MAX), decide(u64::MAX, 10 * MS, SCALE_ONE));
    }

    #[test]
    fn only_a_zero_scale_records_nothing() {
        assert_eq!(decide(u64::MAX, 10 * MS, 0), Decision { threshold: 0, weight: 0 });
        // No mean is too small to be recorded: below T / 4096 it counts as T / 4096.
        assert_eq!(decide(0, 10 * MS, SCALE_ONE), decide((10 * MS) >> 12, 10 * MS, SCALE_ONE));
        assert!(decide(100, 10 * MS, SCALE_ONE).threshold > 0);
    }

    #[test]
    fn the_generator_gives_uniform_draws_and_never_stops() {
        // From a seed of 0 (the worst case) and a random one: the share of draws below a
        // threshold is the threshold's share of 2^32, as the capture decision needs.
        for start in [seed(0), seed(0x9e37_79b9)] {
            let mut state = start;
            let n = 200_000u32;
            let mut below = [0u32; 3];
            let thresholds = [1u64 << 28, 1u64 << 31, 3u64 << 30];
            for _ in 0..n {
                state = next_draw(state);
                assert_ne!(state, 0);
                for (count, &t) in below.iter_mut().zip(&thresholds) {
                    *count += u32::from(u64::from(state) < t);
                }
            }
            for (&count, &t) in below.iter().zip(&thresholds) {
                let expected = f64::from(n) * t as f64 / (1u64 << 32) as f64;
                let off = (f64::from(count) - expected).abs() / expected;
                assert!(off < 0.02, "{count} draws below {t:#x}, expected {expected}");
            }
        }
    }

    #[test]
    fn the_reciprocal_gives_the_quotient_within_one_step() {
        // Against the division it replaces, for intervals from a microsecond to a second.
        for interval in [1_000, 999_983, 10 * MS, 16 * MS, 100 * MS, 1_000 * MS] {
            let r = reciprocal(interval);
            for i in 0..=1000u64 {
                let since = interval / 1000 * i;
                let exact =
                    if since >= interval { WEIGHT_ONE } else { since * WEIGHT_ONE / interval };
                let p = probability(since, interval, r, SCALE_ONE);
                let exact = exact.max((interval >> MIN_SHARE_SHIFT) * WEIGHT_ONE / interval);
                assert!(p.abs_diff(exact) <= 1, "{since} of {interval}: {p} for {exact}");
                assert!(p <= WEIGHT_ONE);
            }
        }
    }

    #[test]
    fn a_zero_interval_records_every_switch() {
        assert_eq!(decide(0, 0, SCALE_ONE).weight, WEIGHT_ONE);
    }
}
