//! profctl: the command-line client of profilerd.
use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = profiler_daemon::ctl::Cli::parse();
    if let Err(e) = profiler_daemon::ctl::main(cli).await {
        eprintln!("profctl: {e:#}");
        std::process::exit(1);
    }
}
