//! profilerd's options: each one a flag and a key of the config file, with a default.
//!
//! A config file key is the flag's name in snake_case and takes the same value (`--max-disk
//! 2GiB` is `max_disk = "2GiB"`); a flag given on the command line wins over the file. The keys
//! are read off the clap definitions of [`DaemonArgs`], so a new flag is a new key with no more
//! code, and a file value goes through the flag's own parser.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, Parser, ValueEnum, error::ContextKind,
    parser::ValueSource,
};
use thiserror::Error;
use toml::de::{DeTable, DeValue};

use crate::{calls::CallsMode, pods::KubernetesMode};

/// The config file read when `--config` is not given (only if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/profiler/profilerd.toml";

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

/// Where the HTTP endpoint for metrics and health checks listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// No HTTP endpoint.
    Off,
    /// A TCP address.
    Tcp(SocketAddr),
}

/// A metrics address that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid metrics address {0:?}: expected ADDR:PORT (for example 127.0.0.1:9464) or off")]
pub struct MetricsListenError(String);

impl FromStr for MetricsListen {
    type Err = MetricsListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(MetricsListen::Off);
        }
        s.parse().map(MetricsListen::Tcp).map_err(|_| MetricsListenError(s.to_owned()))
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Off => f.write_str("off"),
            MetricsListen::Tcp(addr) => write!(f, "{addr}"),
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
///
/// The daemon's options. Build them with [`Config::load`] (flags, config file, defaults);
/// `DaemonArgs::try_parse_from` reads flags only, which suits tests.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(name = "profilerd", version, about)]
pub struct DaemonArgs {
    /// gRPC endpoint: unix:///PATH or tcp://ADDR:PORT.
    #[arg(long, default_value = concat!("unix://", "/run/profiler/profiler.sock"))]
    pub listen: ListenAddr,

    /// HTTP endpoint for Prometheus metrics (/metrics) and health checks (/healthz): ADDR:PORT,
    /// or off.
    #[arg(long, value_name = "ADDR:PORT|off", default_value = "127.0.0.1:9464")]
    pub metrics_listen: MetricsListen,

    /// TLS certificate chain (PEM) for a tcp:// gRPC endpoint; needs --tls-key.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that clients must present a certificate from (mutual TLS); needs
    /// --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve a tcp:// gRPC endpoint without TLS. Profiles (with command lines and paths) then
    /// cross the network in clear text, and anyone who reaches the port can read them.
    #[arg(long)]
    pub insecure: bool,

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

    /// Memory bound for everything the daemon holds (for example 256MiB): the sample ring
    /// buffer and queues, its caches and tables, the store's dictionary and page cache, and
    /// the recent windows kept in memory, which get what the rest leaves.
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

    /// Record CPU time only: do not follow threads off the CPU from the scheduler's context
    /// switches (the wall and off-cpu query modes then show CPU time only).
    #[arg(long)]
    pub no_off_cpu: bool,

    /// The off-CPU sampler's interval: a thread's switch off the CPU is recorded with
    /// probability (time since its last recorded switch) / interval, so a thread that blocks
    /// rarely is recorded at every block and a busy one about once an interval.
    #[arg(long, default_value = "10ms", value_parser = parse_off_cpu_interval)]
    pub off_cpu_interval: Duration,

    /// Recorded context switches per second, host-wide, above which the off-CPU sampler
    /// records a smaller share of every thread's switches (a record costs a few microseconds
    /// in the kernel). The weights keep time estimates unbiased.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub off_cpu_budget: u64,

    /// Record CPU and off-CPU time only: do not sample page faults (the memory query mode
    /// then has no samples).
    #[arg(long)]
    pub no_memory: bool,

    /// One page fault in this many is recorded, with the stacks of the thread that touched the
    /// new memory, and weighted with the bytes of all of them (64 faults of 4 KiB pages: one
    /// sample per 256 KiB of growth).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub memory_fault_period: u64,

    /// How often each profiled process's resident memory is read, for `profctl memory`
    /// timelines (between 100ms and 1h); the finest point of a timeline is one window.
    #[arg(long, default_value = "1s", value_parser = parse_resident_interval)]
    pub resident_interval: Duration,

    /// Do not read resident memory (`profctl memory` then has no timelines).
    #[arg(long)]
    pub no_resident: bool,

    /// Count Python calls (cProfile's ncalls) with a probe on the interpreter's entry point:
    /// `off` (enable per process with `profctl calls enable --pid N`) or `all`.
    #[arg(long, value_enum, default_value_t = CallsMode::Off)]
    pub python_calls: CallsMode,

    /// Calls per second above which a process's call probe is detached (each call costs about
    /// a microsecond in the kernel).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub python_calls_budget: u64,

    /// Name pods, namespaces and containers through the Kubernetes API (the daemon lists the
    /// pods on its own node): `auto` (when running in a cluster), `on` or `off`.
    #[arg(long, value_enum, default_value_t = KubernetesMode::Auto)]
    pub kubernetes: KubernetesMode,

    /// This node's name, whose pods are listed (default: the NODE_NAME environment variable).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Push every window to these OTLP profiles receivers (an OpenTelemetry Collector or any
    /// OTLP receiver): http://HOST:PORT or https://HOST:PORT, comma-separated (default:
    /// OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, if set).
    #[arg(long, value_name = "URLS")]
    pub export_otlp: Option<ExportTargets>,

    /// The protocol of --export-otlp: grpc, or http/protobuf (POST /v1development/profiles)
    /// (default: OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL if set,
    /// else grpc).
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub export_otlp_protocol: Option<OtlpProtocol>,

    /// Push every window to these Grafana Pyroscope servers (or Grafana Alloy's
    /// pyroscope.receive_http), through Pyroscope's push API: http://HOST:PORT or
    /// https://HOST:PORT, comma-separated.
    #[arg(long, value_name = "URLS")]
    pub export_pyroscope: Option<ExportTargets>,

    /// CA certificates (PEM) that the certificates of https:// export receivers must come
    /// from, instead of the system's CA certificates.
    #[arg(long, value_name = "PATH")]
    pub export_ca_file: Option<PathBuf>,

    /// A client certificate chain (PEM) for https:// export receivers that require mutual TLS;
    /// needs --export-client-key and --export-ca-file.
    #[arg(long, value_name = "PATH")]
    pub export_client_cert: Option<PathBuf>,

    /// The private key (PEM) of --export-client-cert.
    #[arg(long, value_name = "PATH")]
    pub export_client_key: Option<PathBuf>,

    /// A file of headers to send with each export, one KEY=VALUE per line (for example
    /// `authorization=Bearer TOKEN`, or `x-scope-orgid=TENANT` for a multi-tenant Pyroscope),
    /// so that secrets stay out of the command line and the config file (default:
    /// OTEL_EXPORTER_OTLP_HEADERS, comma-separated, if set).
    #[arg(long, value_name = "PATH")]
    pub export_headers_file: Option<PathBuf>,

    /// Directories of separate debug files (Debian's -dbgsym packages, Fedora's -debuginfo),
    /// each laid out as DIR/.build-id/NN/REST.debug, comma-separated: the functions of a
    /// stripped binary are named from its debug file when one is there (by build-id, or
    /// through .gnu_debuglink under DIR at the binary's path), in the root of its process
    /// (a container's) and in the host's. An empty value turns them off.
    #[arg(long, value_name = "DIRS", default_value = crate::debuginfo::DEFAULT_DIR)]
    pub debug_dirs: Dirs,

    /// Download the debug files of stripped binaries that have none in --debug-dirs from these
    /// debuginfod servers: http://HOST:PORT or https://HOST:PORT, comma-separated (default:
    /// DEBUGINFOD_URLS, space-separated, if set). The build-ids of the host's stripped
    /// binaries are sent to them.
    #[arg(long, value_name = "URLS")]
    pub debuginfod_urls: Option<DebuginfodUrls>,

    /// Bytes of downloaded debug files kept (under the data directory's debuginfo/); the
    /// oldest go first.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub debuginfod_cache_size: u64,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The protocol of the OTLP exporters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// gRPC (`ProfilesService/Export`).
    Grpc,
    /// HTTP with a binary protobuf body (`POST /v1development/profiles`).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Receivers to export to: `http://` or `https://` URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTargets(pub Vec<String>);

/// An export target list that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid export endpoint {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
pub struct ExportTargetsError(String);

impl FromStr for ExportTargets {
    type Err = ExportTargetsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_urls(s).map(ExportTargets).map_err(ExportTargetsError)
    }
}

/// Comma-separated `http://` or `https://` URLs, at least one; the first bad one otherwise.
fn parse_urls(s: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> =
        s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
    for url in &urls {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
            return Err(url.clone());
        }
    }
    if urls.is_empty() {
        return Err(s.to_owned());
    }
    Ok(urls)
}

/// debuginfod servers: `http://` or `https://` URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebuginfodUrls(pub Vec<String>);

/// A debuginfod server list that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid debuginfod server {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
pub struct DebuginfodUrlsError(String);

impl FromStr for DebuginfodUrls {
    type Err = DebuginfodUrlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_urls(s).map(DebuginfodUrls).map_err(DebuginfodUrlsError)
    }
}

impl std::fmt::Display for DebuginfodUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Directories, comma-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs(pub Vec<PathBuf>);

impl FromStr for Dirs {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Dirs(s.split(',').map(str::trim).filter(|d| !d.is_empty()).map(PathBuf::from).collect()))
    }
}

impl std::fmt::Display for Dirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dirs: Vec<_> = self.0.iter().map(|d| d.to_string_lossy()).collect();
        f.write_str(&dirs.join(","))
    }
}

impl std::fmt::Display for ExportTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl DaemonArgs {
    /// Nanoseconds between two samples on one CPU.
    pub fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::try_from(self.frequency).unwrap_or(1).max(1)
    }
}

/// profilerd's command line: [`DaemonArgs`] plus where they may come from.
fn command() -> Command {
    let front = Command::new("profilerd")
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .default_value(DEFAULT_CONFIG)
                .help(
                    "Config file (TOML). The default one is read only if it exists; one named \
                     here must exist.",
                ),
        )
        .arg(Arg::new("print_config").long("print-config").action(ArgAction::SetTrue).help(
            "Print the effective configuration (defaults, config file and flags \
                     merged) as TOML, and exit.",
        ));
    // After the options, whose doc comment would set these.
    <DaemonArgs as clap::Args>::augment_args(front)
        .about("profilerd: a system-wide, always-on CPU profiler.")
        .long_about(
            "profilerd: a system-wide, always-on CPU profiler.\n\n\
             Every option is also a key of the config file, named like the flag in snake_case \
             and taking the same value (--max-disk 2GiB is max_disk = \"2GiB\"). A flag wins \
             over the file, the file over the default; --print-config shows the result.",
        )
}

/// Why the options could not be read.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A bad flag, or `--help`/`--version`: [`clap::Error::exit`] prints it as clap does.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column (in characters), from 1.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A key that names no option.
    #[error("{}:{line}:{column}: unknown key `{key}`{hint}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// Line of the key, from 1.
        line: usize,
        /// Column of the key, from 1.
        column: usize,
        /// The key.
        key: String,
        /// A likely meant key, and where to find them all.
        hint: String,
    },
    /// A value the option does not take.
    #[error("{}:{line}:{column}: bad value for `{key}`: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// Line of the value, from 1.
        line: usize,
        /// Column of the value, from 1.
        column: usize,
        /// The key.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// Options that need each other.
    #[error("{0}")]
    Conflict(&'static str),
}

/// The options in effect, and where each one came from.
#[derive(Debug)]
pub struct Config {
    /// The merged options.
    pub args: DaemonArgs,
    /// `--print-config` was given: print [`Config::to_toml`] and exit instead of running.
    pub print_config: bool,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    settings: Vec<Setting>,
}

/// One option's effective value, with what `--print-config` says about it.
#[derive(Debug)]
struct Setting {
    key: String,
    help: String,
    default: Option<Value>,
    /// `None`: an optional option that is not set.
    value: Option<Value>,
    origin: Origin,
}

/// An option's value as the flag takes it.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Flag(bool),
    Text(OsString),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Origin {
    Default,
    File { line: usize },
    CommandLine,
}

impl Config {
    /// Reads this process's command line and the config file it names.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Reads `argv` (program name first) and the config file: the one named by `--config`,
    /// which must exist, or else [`DEFAULT_CONFIG`] if it exists.
    pub fn load_from<I, T>(argv: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command().try_get_matches_from(argv)?;
        let explicit = matches.value_source("config") == Some(ValueSource::CommandLine);
        let path =
            matches.get_one::<PathBuf>("config").cloned().unwrap_or_else(|| DEFAULT_CONFIG.into());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::merge(&matches, text.as_deref().map(|text| (path.as_path(), text)))
    }

    /// The options of a config file's `text` alone, as if read from `path`, with no flags.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let matches = command().try_get_matches_from(["profilerd"])?;
        Self::merge(&matches, Some((path, text)))
    }

    /// Flags over the file (its path and text) over the defaults. Every file value is checked
    /// by the flag's parser first, so that an error names the key and line rather than a flag.
    fn merge(matches: &ArgMatches, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
        let options = DaemonArgs::command();
        let mut from_file = match file {
            Some((path, text)) => read_file(&options, path, text)?,
            None => BTreeMap::new(),
        };
        let mut argv = vec![OsString::from("profilerd")];
        let mut settings = Vec::new();
        for arg in keys(&options) {
            let on_command_line =
                matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
            let (value, origin) = match from_file.remove(&key_of(arg)) {
                Some((value, line)) if !on_command_line => (Some(value), Origin::File { line }),
                _ if on_command_line => (given(matches, arg), Origin::CommandLine),
                _ => (given(matches, arg), Origin::Default),
            };
            argv.extend(as_flag(arg, value.as_ref()));
            settings.push(Setting {
                key: key_of(arg),
                help: help_of(arg),
                default: default_of(arg),
                value,
                origin,
            });
        }
        let args = DaemonArgs::try_parse_from(argv)?;
        check_tls(&args)?;
        Ok(Config {
            args,
            print_config: matches.get_flag("print_config"),
            file: file.map(|(path, _)| path.to_owned()),
            settings,
        })
    }

    /// The effective options as a config file: each key with its help, where it was set if not
    /// by default, and its value. Reading it back gives the same options.
    pub fn to_toml(&self) -> String {
        let from = match &self.file {
            Some(path) => path.display().to_string(),
            None => "no config file".to_owned(),
        };
        let mut out = format!(
            "# profilerd's effective configuration: command line over {from} over defaults.\n"
        );
        for setting in &self.settings {
            out.push('\n');
            comment(&mut out, &setting.help);
            let default = setting.default.as_ref().map_or_else(String::new, |default| {
                format!(" (the default is {})", toml_value(default))
            });
            match setting.origin {
                Origin::Default => {}
                Origin::File { line } => {
                    out.push_str(&format!("# Set in the config file, line {line}{default}.\n"));
                }
                Origin::CommandLine => {
                    out.push_str(&format!("# Set on the command line{default}.\n"));
                }
            }
            match &setting.value {
                Some(value) => out.push_str(&format!("{} = {}\n", setting.key, toml_value(value))),
                None => out.push_str(&format!("# {} is not set\n", setting.key)),
            }
        }
        out
    }

    /// The example config file shipped as `deploy/profilerd.toml`: every key with its help,
    /// commented out with its default. A test keeps the file current.
    #[cfg(test)]
    fn example() -> String {
        let defaults = Self::merge(&command().get_matches_from(["profilerd"]), None)
            .expect("the defaults are valid");
        let mut out = format!(
            "# profilerd's config file. profilerd reads {DEFAULT_CONFIG} if it exists,\n\
             # or the file named by --config (which must exist).\n\
             #\n\
             # Each key is a profilerd flag in snake_case and takes the same value as the flag\n\
             # (`profilerd --help`); a flag given on the command line wins over the key. A key\n\
             # left out keeps the default shown here. An unknown key or a bad value stops\n\
             # profilerd with the file, line and key named. `profilerd --print-config` prints\n\
             # the configuration in effect.\n"
        );
        for setting in &defaults.settings {
            out.push('\n');
            comment(&mut out, &setting.help);
            match &setting.value {
                Some(value) => {
                    out.push_str(&format!("# {} = {}\n", setting.key, toml_value(value)));
                }
                None => {
                    let options = DaemonArgs::command();
                    let arg = keys(&options).find(|arg| key_of(arg) == setting.key);
                    let name = arg.and_then(Arg::get_value_names).and_then(<[_]>::first);
                    out.push_str(&format!(
                        "# {} = \"{}\"\n",
                        setting.key,
                        name.map_or("VALUE", |n| n.as_str())
                    ));
                }
            }
        }
        out
    }
}

/// The options that are keys: every flag of [`DaemonArgs`] that takes a value or is a switch.
fn keys(options: &Command) -> impl Iterator<Item = &Arg> {
    options.get_arguments().filter(|arg| {
        arg.get_long().is_some() && matches!(arg.get_action(), ArgAction::Set | ArgAction::SetTrue)
    })
}

fn key_of(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

fn help_of(arg: &Arg) -> String {
    arg.get_long_help().or_else(|| arg.get_help()).map(ToString::to_string).unwrap_or_default()
}

fn default_of(arg: &Arg) -> Option<Value> {
    if is_switch(arg) {
        return Some(Value::Flag(false));
    }
    arg.get_default_values().first().map(|value| Value::Text(value.to_owned().into()))
}

/// The value of `arg` in `matches`: given on the command line, or its default.
fn given(matches: &ArgMatches, arg: &Arg) -> Option<Value> {
    let id = arg.get_id().as_str();
    if is_switch(arg) {
        return Some(Value::Flag(matches.get_flag(id)));
    }
    let mut raw = matches.get_raw(id)?;
    raw.next().map(|value| Value::Text(value.to_owned()))
}

/// `value` as a command-line argument of `arg`; a switch that is off is left out.
fn as_flag(arg: &Arg, value: Option<&Value>) -> Option<OsString> {
    let long = arg.get_long()?;
    match value? {
        Value::Flag(true) => Some(format!("--{long}").into()),
        Value::Flag(false) => None,
        Value::Text(text) => {
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(text);
            Some(flag)
        }
    }
}

/// Parses the file into key -> (value, line), checking each key and value.
fn read_file(
    options: &Command,
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, (Value, usize)>, ConfigError> {
    let table = DeTable::parse(text).map_err(|e| {
        let (line, column) = line_column(text, e.span().map_or(0, |span| span.start));
        let message = e.message().trim().to_owned();
        ConfigError::Syntax { path: path.to_owned(), line, column, message }
    })?;
    let mut entries = BTreeMap::new();
    for (key, value) in table.get_ref() {
        let name: &str = key.get_ref();
        let (key_line, key_column) = line_column(text, key.span().start);
        let Some(arg) = keys(options).find(|arg| key_of(arg) == name) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                line: key_line,
                column: key_column,
                key: name.to_owned(),
                hint: hint(options, name),
            });
        };
        let (line, column) = line_column(text, value.span().start);
        let bad = |message: String| ConfigError::Value {
            path: path.to_owned(),
            line,
            column,
            key: name.to_owned(),
            message,
        };
        let value = file_value(arg, value.get_ref()).map_err(bad)?;
        if let Some(flag) = as_flag(arg, Some(&value)) {
            options
                .clone()
                .try_get_matches_from([OsString::from("profilerd"), flag])
                .map_err(|e| bad(reason(&e)))?;
        }
        entries.insert(name.to_owned(), (value, key_line));
    }
    Ok(entries)
}

/// A TOML value as the flag's text: switches take booleans, other options strings or numbers.
fn file_value(arg: &Arg, value: &DeValue<'_>) -> Result<Value, String> {
    match (value, is_switch(arg)) {
        (DeValue::Boolean(on), true) => Ok(Value::Flag(*on)),
        (_, true) => Err("expected true or false".to_owned()),
        (DeValue::String(text), false) => Ok(Value::Text(text.as_ref().into())),
        (DeValue::Integer(n), false) => {
            i128::from_str_radix(&n.as_str().replace('_', ""), n.radix())
                .map(|n| Value::Text(n.to_string().into()))
                .map_err(|e| e.to_string())
        }
        (DeValue::Float(x), false) => Ok(Value::Text(x.as_str().into())),
        (_, false) => Err("expected a string or a number".to_owned()),
    }
}

/// What a flag's parser said, without clap's "error:" and usage lines.
fn reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    match (e.get(ContextKind::InvalidValue), e.get(ContextKind::ValidValue)) {
        (Some(value), Some(valid)) => {
            format!("invalid value \"{value}\"; possible values: {valid}")
        }
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

/// Suggests the closest key, if one is close.
fn hint(options: &Command, unknown: &str) -> String {
    let closest = keys(options)
        .map(key_of)
        .map(|key| (edit_distance(&key, unknown), key))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    let all = "`profilerd --print-config` lists every key";
    match closest {
        Some((_, key)) => format!(" (did you mean `{key}`? {all})"),
        None => format!(" ({all})"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Line and column (in characters), both from 1, of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

fn check_tls(args: &DaemonArgs) -> Result<(), ConfigError> {
    let problem = match (&args.tls_cert, &args.tls_key, &args.tls_client_ca) {
        (Some(_), None, _) => "tls_cert (--tls-cert) needs tls_key (--tls-key)",
        (None, Some(_), _) => "tls_key (--tls-key) needs tls_cert (--tls-cert)",
        (None, _, Some(_)) => "tls_client_ca (--tls-client-ca) needs tls_cert and tls_key",
        _ => return Ok(()),
    };
    Err(ConfigError::Conflict(problem))
}

/// A value in TOML: a plain decimal as an integer, any other text as a string.
fn toml_value(value: &Value) -> String {
    match value {
        Value::Flag(on) => on.to_string(),
        Value::Text(text) => {
            let text = text.to_string_lossy();
            match text.parse::<i64>() {
                Ok(n) if n.to_string() == text => text.into_owned(),
                _ => toml::Value::String(text.into_owned()).to_string(),
            }
        }
    }
}

/// Appends `text` as `#` comment lines, wrapped to 98 columns, paragraphs kept.
fn comment(out: &mut String, text: &str) {
    // clap drops the full stop of a one-sentence help; a comment keeps it.
    let text = match text.trim_end() {
        text if text.ends_with(|c: char| c.is_alphanumeric() || c == ')' || c == '`') => {
            format!("{text}.")
        }
        text => text.to_owned(),
    };
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("#\n");
        }
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > 96 {
                out.push_str(&format!("# {line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            out.push_str(&format!("# {line}\n"));
        }
    }
}

/// Parses `90s`, `10m`, `24h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 5m, 24h)"))
}

fn parse_off_cpu_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_micros(100) || d > Duration::from_secs(10) {
        return Err("the off-CPU interval must be between 100us and 10s".into());
    }
    Ok(d)
}

fn parse_resident_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("the resident memory interval must be between 100ms and 1h".into());
    }
    Ok(d)
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
    fn export_targets_are_comma_separated_http_urls() {
        let targets: ExportTargets = "http://a:4317, https://b.example:443".parse().unwrap();
        assert_eq!(targets.0, ["http://a:4317", "https://b.example:443"]);
        assert_eq!(targets.to_string(), "http://a:4317,https://b.example:443");
        for bad in ["a:4317", "http://", "grpc://a:4317", "", "http:///path"] {
            assert!(bad.parse::<ExportTargets>().is_err(), "{bad:?}");
        }
    }

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

    const FILE: &str = "/etc/profiler/profilerd.toml";

    /// Flags `argv` over the config file `text`.
    fn merged(argv: &[&str], text: &str) -> Result<Config, ConfigError> {
        let matches = command().try_get_matches_from(["profilerd"].iter().chain(argv))?;
        Config::merge(&matches, Some((Path::new(FILE), text)))
    }

    fn error(text: &str) -> String {
        merged(&[], text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        assert_eq!(
            error("frequency = 99\n\n  frequncy = 199\n"),
            format!(
                "{FILE}:3:3: unknown key `frequncy` (did you mean `frequency`? \
                 `profilerd --print-config` lists every key)"
            )
        );
        // A table is a key too.
        assert!(
            error("[daemon]\nfrequency = 9\n")
                .starts_with(&format!("{FILE}:1:2: unknown key `daemon`"))
        );
    }

    #[test]
    fn bad_values_are_named_with_key_and_line() {
        for (text, want) in [
            ("window = \"10ms\"", "1:10: bad value for `window`: a window must be at least 1s"),
            ("# rate\nfrequency = 0", "2:13: bad value for `frequency`: 0 is not in 1..=10000"),
            (
                "max_disk = \"1 parsec\"",
                "1:12: bad value for `max_disk`: unknown size unit \"parsec\"",
            ),
            (
                "python_calls = \"some\"",
                "1:16: bad value for `python_calls`: invalid value \"some\"; possible values: \
                 off, all",
            ),
            ("repair = \"yes\"", "1:10: bad value for `repair`: expected true or false"),
            (
                "listen = [\"unix:///a\"]",
                "1:10: bad value for `listen`: expected a string or a number",
            ),
            (
                "metrics_listen = \"9464\"",
                "1:18: bad value for `metrics_listen`: invalid metrics address",
            ),
        ] {
            let err = error(text);
            assert!(err.starts_with(&format!("{FILE}:{want}")), "{text}: {err}");
        }
        assert!(
            error("frequency = 99\nwindow = ").starts_with(&format!("{FILE}:2:10: invalid TOML"))
        );
        assert!(
            error("a = 1\na = 2").starts_with(&format!("{FILE}:2:1: invalid TOML: duplicate key"))
        );
    }

    #[test]
    fn flags_win_over_keys_and_keys_over_defaults() {
        let text = "frequency = 49\nwindow = \"1m\"\nrepair = true\nmax_disk = 4_096\n";
        let config = merged(&["--frequency", "999", "--include-idle"], text).unwrap();
        assert_eq!(config.args.frequency, 999);
        assert_eq!(config.args.window, Duration::from_secs(60));
        assert!(config.args.repair && config.args.include_idle);
        assert_eq!(config.args.max_disk, 4096);
        assert_eq!(config.args.retention, Duration::from_secs(24 * 3600));
        assert_eq!(
            config.args.metrics_listen,
            MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            merged(&[], "metrics_listen = \"off\"").unwrap().args.metrics_listen,
            MetricsListen::Off
        );
    }

    #[test]
    fn print_config_round_trips() {
        let text = "listen = \"tcp://127.0.0.1:50051\"\nmax_memory = \"64MiB\"\n\
                    tls_cert = \"/etc/profiler/tls/cert.pem\"\n\
                    tls_key = \"/etc/profiler/tls/key.pem\"\n\
                    python_calls = \"all\"\nlog_format = \"json\"\nno_thread_labels = true\n";
        let config =
            merged(&["--retention=90m", "--bpf-stats", "--data-dir", "/srv/p\"q"], text).unwrap();
        let printed = config.to_toml();
        assert!(
            printed.contains(
                "# Set on the command line (the default is \"24h\").\nretention = \"90m\"\n"
            ),
            "{printed}"
        );
        assert!(
            printed.contains("# Set in the config file, line 2 (the default is \"256MiB\").\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\nfrequency = 99\n")
                && printed.contains("# tls_client_ca is not set\n"),
            "{printed}"
        );
        let again = merged(&[], &printed).unwrap();
        assert_eq!(again.args, config.args);
        assert_eq!(again.args.data_dir, Path::new("/srv/p\"q"));
    }

    #[test]
    fn tls_needs_cert_and_key() {
        assert!(error("tls_cert = \"/c.pem\"").contains("needs tls_key"));
        assert!(error("tls_client_ca = \"/ca.pem\"").contains("needs tls_cert"));
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let err = Config::load_from(["profilerd", "--config", "/nonexistent/profilerd.toml"])
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(
            err.to_string().starts_with("cannot read config file /nonexistent/profilerd.toml"),
            "{err}"
        );
    }

    /// deploy/profilerd.toml is generated; `UPDATE_EXAMPLE_CONFIG=1` rewrites it.
    #[test]
    fn the_example_config_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profilerd.toml");
        let want = Config::example();
        if std::env::var_os("UPDATE_EXAMPLE_CONFIG").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale; rerun this test with UPDATE_EXAMPLE_CONFIG=1",
            path.display()
        );
        // Every key is there, and uncommented the file gives the defaults.
        let uncommented: String = want
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            // Options without a default show their value name ("PATH", "NAME") instead.
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(_, v)| {
                    let v = v.trim_matches('"');
                    !(v.len() > 1 && v.bytes().all(|b| b.is_ascii_uppercase()))
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let defaults = merged(&[], &uncommented).unwrap();
        assert_eq!(defaults.args, DaemonArgs::try_parse_from(["profilerd"]).unwrap());
        assert!(defaults.settings.iter().all(|s| s.origin != Origin::Default || s.value.is_none()));
    }
}
