//! The command line: every subcommand and its flags. Every flag also reads an
//! environment variable (`FERRY_*`) and a key of the `--config` TOML file. The
//! commands run in their own modules; `main` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Ferry: a self-hosted distributed edge relay for live media.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, args_override_self = true)]
pub struct Cli {
    /// A TOML file with flag values (keys are long flag names, optionally in a
    /// `[subcommand]` table). Command line and environment win over it.
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, global = true, env = "FERRY_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local cluster: one voter, two edges in two regions, a synthetic publisher on `live/demo`.
    Dev(crate::dev::DevArgs),
    /// Run an edge: QUIC relay for publishers, viewers and downstream edges.
    Edge(Box<crate::edge::EdgeArgs>),
    /// Publish a stream to an edge over QUIC (over WebRTC with --whip).
    Publish(crate::publish::PublishArgs),
    /// Watch a stream from an edge over QUIC and print what arrived.
    Watch(crate::watch::WatchArgs),
    /// Measure Ferry (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Generate a cluster CA and a certificate signed by it (PEM files).
    Cert(crate::ca::CertArgs),
    /// The cluster CA for mutual TLS: `ca init`, `ca issue --node ID`.
    #[command(subcommand)]
    Ca(crate::ca::CaCommand),
    /// Run a control-plane voter (raft + sled + HTTP API).
    Control(Box<crate::control::ControlArgs>),
    /// Operate the control plane: cluster, members, edges, streams, rollouts, audit.
    Ctl(crate::ctl::CtlArgs),
    /// Mint a signed access token (HS256 JWT) for WHIP/WHEP.
    Token(crate::token::TokenArgs),
    /// Generate documentation from the binary (docs/configuration.md).
    #[command(subcommand, hide = true)]
    Docs(crate::docs::DocsCommand),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every flag says what it is for (`--help`, docs/configuration.md).
    #[test]
    fn every_subcommand_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if !sub.is_hide_set() && sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "ferry", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
