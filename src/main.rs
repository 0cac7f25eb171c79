//! `ferry`: the command line. Thin: parse flags (command line > environment >
//! `--config` TOML file > defaults), then hand over to the library crates.

/// `println!` that returns the write error instead of panicking (a closed pipe must
/// not bring a server down; a one-shot command reports it and exits non-zero).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

mod bench;
mod ca;
mod cli;
mod cluster_args;
mod config;
mod control;
mod ctl;
mod dev;
mod docs;
mod token;
mod units;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Both ring and aws-lc-rs can end up linked; pick one before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = cli::Cli::command();
    let args = match config::args_with_config_file(&command, std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match command.try_get_matches_from(args).and_then(|m| cli::Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line on stdout, flushed.
fn write_stdout(line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(line)?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

fn init_tracing(filter: &str) {
    // The WebRTC stack logs every state change at info and benign conditions at warn;
    // keep its errors only unless the filter names it.
    let filter = if filter.contains("rtc") {
        filter.to_owned()
    } else {
        format!("{filter},rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
