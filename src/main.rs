//! `ferry`: the command line. Thin: parse flags (command line > environment >
//! `--config` TOML file > defaults), then hand over to the library crates.
//!
//! # Layout
//! Bottom up: `process` (stdout, logging, signals), `units` and `config` (flag
//! values and the TOML file), `args` and `cluster_args` (flags several commands share),
//! one module per command (`edge`, `publish`, `watch`, `dev`, `control`, `ctl`, `ca`,
//! `token`, `bench`, `docs`), `cli` (the command line that names them all), and `main`,
//! which dispatches.

/// `println!` that returns the write error instead of panicking (a closed pipe must
/// not bring a server down; a one-shot command reports it and exits non-zero).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::process::write_stdout(format_args!($($arg)*))
    };
}

mod args;
mod bench;
mod ca;
mod cli;
mod cluster_args;
mod config;
mod control;
mod ctl;
mod dev;
mod docs;
mod edge;
mod process;
mod publish;
mod token;
mod units;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Both ring and aws-lc-rs can end up linked; pick one before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = Cli::command();
    let args = match config::args_with_config_file(&command, std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match command.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    process::init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A backup `ferry control --restore` cannot use: 2, as for bad arguments.
            match e.downcast_ref::<control::Unrestorable>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => dev::run(args).await,
        Command::Edge(args) => edge::run(*args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Control(args) => control::run(*args).await,
        Command::Ctl(args) => ctl::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Docs(cmd) => docs::run(cmd, Cli::command()),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Cert(args) => ca::run_cert(args),
    }
}
