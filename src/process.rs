//! Process-wide plumbing of the binary: stdout lines that never panic, logging, and
//! the shutdown signal.

use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;

/// A `ferry` child process for the benches: the caller's `FERRY_*` settings (a config
/// file, a control plane, tokens) are not inherited, so each process runs exactly as
/// the bench configures it.
pub fn ferry_child(binary: &std::path::Path) -> tokio::process::Command {
    ferry_child_in(None, binary)
}

/// [`ferry_child`], run in the network namespace `netns` when given (`ip netns exec`,
/// which execs: the child's pid is ferry's).
pub fn ferry_child_in(netns: Option<&str>, binary: &std::path::Path) -> tokio::process::Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = tokio::process::Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(binary);
            cmd
        }
        None => tokio::process::Command::new(binary),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FERRY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// One line on stdout, flushed.
pub fn write_stdout(line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(line)?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

pub fn init_tracing(filter: &str) {
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
    // Colours only for a person at a terminal; plain text in files and pipes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
