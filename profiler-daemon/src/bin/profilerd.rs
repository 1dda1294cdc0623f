//! profilerd: the system-wide profiler daemon.
use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

use profiler_daemon::config::{Config, ConfigError, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("profilerd: {e}");
            std::process::exit(2);
        }
    };
    if config.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let args = config.args;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => {
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
    if let Some(file) = &config.file {
        tracing::info!(config = %file.display(), "read the config file");
    }
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        notify_systemd("STOPPING=1");
        on_signal.cancel();
    });
    if let Err(e) = profiler_daemon::daemon::run(args, shutdown, || notify_systemd("READY=1")).await
    {
        tracing::error!("{e}");
        eprintln!("profilerd: {e}");
        std::process::exit(1);
    }
    Ok(())
}

/// Tells systemd about a state change (`Type=notify` units); does nothing outside systemd.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&socket, state) {
        tracing::warn!(error = %e, socket = ?socket, state, "could not notify systemd");
    }
}

/// Sends one sd_notify datagram to `socket`: a path, or an abstract socket name after `@`.
fn send_notify(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    if sent == state.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short sd_notify datagram"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_socket() {
        let path =
            std::env::temp_dir().join(format!("profilerd-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send_notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("profilerd-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_notify(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
