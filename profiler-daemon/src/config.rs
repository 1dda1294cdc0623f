//! profilerd's command line: every option with its default.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, ValueEnum};
use thiserror::Error;

use crate::calls::CallsMode;

/// Default gRPC endpoint.
pub const DEFAULT_SOCKET: &str = "/run/profiler/profiler.sock";

/// Where the gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path (created with mode 0660).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// A listen address that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid listen address {0:?}: expected unix:///PATH or tcp://ADDR:PORT")]
pub struct ListenAddrError(String);

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(ListenAddr::Unix(path.into()));
            }
        } else if let Some(Ok(addr)) = s.strip_prefix("tcp://").map(str::parse) {
            return Ok(ListenAddr::Tcp(addr));
        }
        Err(ListenAddrError(s.to_owned()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix://{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// profilerd: a system-wide, always-on CPU profiler.
#[derive(Clone, Debug, Parser)]
#[command(name = "profilerd", version, about)]
pub struct DaemonArgs {
    /// gRPC endpoint: unix:///PATH or tcp://ADDR:PORT.
    #[arg(long, default_value = concat!("unix://", "/run/profiler/profiler.sock"))]
    pub listen: ListenAddr,

    /// Samples per second on each CPU.
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,

    /// Length of an aggregation window (for example 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub window: Duration,

    /// Directory of the profile store.
    #[arg(long, default_value = "/var/lib/profiler")]
    pub data_dir: PathBuf,

    /// How long closed windows are kept in the store.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,

    /// Size bound of the store (for example 1GiB); the oldest windows go first.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub max_disk: u64,

    /// Move a store that cannot be opened aside (renamed with a `.corrupt-TIME` suffix) and
    /// start a new one, instead of refusing to start.
    #[arg(long)]
    pub repair: bool,

    /// Memory bound for recent closed windows kept in memory (for example 256MiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    pub max_memory: u64,

    /// Distinct (stack, labels) entries per window; beyond it samples fold into an overflow
    /// stack per process, and the overflow is counted.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(16..))]
    pub max_stacks_per_window: u64,

    /// Frames kept in the user-space symbol cache (the kernel cache has the same size).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub symbol_cache_size: u64,

    /// Processes tracked at once.
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_processes: u64,

    /// Size of the kernel's sample ring buffer (a power of two, for example 8MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Enable the kernel's BPF run-time statistics, so that `status` shows the kernel cost per
    /// sample (costs two clock reads per sample).
    #[arg(long)]
    pub bpf_stats: bool,

    /// Sample the idle task (pid 0) too.
    #[arg(long)]
    pub include_idle: bool,

    /// Do not label samples with thread ids and names (fewer distinct stacks).
    #[arg(long)]
    pub no_thread_labels: bool,

    /// Count Python calls (cProfile's ncalls) with a probe on the interpreter's entry point:
    /// `off` (enable per process with `profctl calls enable --pid N`) or `all`.
    #[arg(long, value_enum, default_value_t = CallsMode::Off)]
    pub python_calls: CallsMode,

    /// Calls per second above which a process's call probe is detached (each call costs about
    /// a microsecond in the kernel).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub python_calls_budget: u64,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DaemonArgs {
    /// Nanoseconds between two samples on one CPU.
    pub fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::try_from(self.frequency).unwrap_or(1).max(1)
    }
}

/// Parses `90s`, `10m`, `24h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 5m, 24h)"))
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("a window must be at least 1s".into());
    }
    Ok(d)
}

/// Parses `4096`, `64KiB`, `8MiB`, `1GiB` (also `KB`/`MB`/`GB`, and `K`/`M`/`G`, as powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("{s:?} is not a size (examples: 64MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s} is too large"))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    if !n.is_power_of_two() || !(4096..=(1 << 30)).contains(&n) {
        return Err(format!("{s} must be a power of two between 4KiB and 1GiB"));
    }
    u32::try_from(n).map_err(|_| format!("{s} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let args = DaemonArgs::try_parse_from(["profilerd"]).unwrap();
        assert_eq!(args.listen, ListenAddr::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(args.frequency, 99);
        assert_eq!(args.window, Duration::from_secs(10));
        assert_eq!(args.ring_buffer_size, 8 << 20);
        assert_eq!(args.period_ns(), 10_101_010);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "tcp://127.0.0.1:50051".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap()))
        );
        assert!("unix://relative.sock".parse::<ListenAddr>().is_err());
        assert!("http://x".parse::<ListenAddr>().is_err());
        let err =
            DaemonArgs::try_parse_from(["profilerd", "--listen", "x"]).unwrap_err().to_string();
        assert!(err.contains("expected unix:///PATH or tcp://ADDR:PORT"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        for (flag, value) in
            [("--frequency", "0"), ("--window", "10ms"), ("--ring-buffer-size", "3MiB")]
        {
            let err =
                DaemonArgs::try_parse_from(["profilerd", flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("12 parsecs").is_err());
    }
}
