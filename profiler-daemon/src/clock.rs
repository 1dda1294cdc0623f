//! Clocks: wall-clock nanoseconds, and the kernel's boot-time clock that sample records carry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns()`.
pub fn boot_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_BOOTTIME exists on every supported kernel.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

/// Converts a `bpf_ktime_get_boot_ns()` reading into wall-clock nanoseconds, by the current
/// distance between the two clocks (which moves only when the wall clock is set).
pub fn boot_to_wall_ns(boot: u64) -> i64 {
    let offset = now_ns() - boot_ns();
    i64::try_from(boot).unwrap_or(i64::MAX).saturating_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_time_reading_maps_to_the_wall_clock() {
        let boot = u64::try_from(boot_ns()).unwrap();
        let wall = now_ns();
        let mapped = boot_to_wall_ns(boot);
        // Both clocks were read within the same few microseconds.
        assert!((mapped - wall).abs() < 50_000_000, "{mapped} vs {wall}");
        assert!(boot_to_wall_ns(boot - 1_000_000_000) < mapped - 900_000_000);
    }
}
