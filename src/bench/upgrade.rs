//! `ferry bench upgrade`: a rolling upgrade under load. The soak's cluster (3 voters,
//! 3 edges, routed QUIC and WHIP publishers, QUIC and WHEP viewers, control-plane
//! clients) starts on the release to roll from; then every voter, highest id first,
//! and every edge is stopped with SIGTERM and started on this build, one step every
//! `--step-every`. The soak's checks follow (no acknowledged write lost, the history
//! linearizable, viewers recovered and playing, bounds, no panics), plus the cluster
//! version's: the command set stayed at the old one until the last voter ran this
//! build, and every voter reached this build's set afterwards.
//!
//! `--from REV` builds that git revision of this repository once, in
//! `target/bench-upgrade/REV/` (a worktree and its own target directory: the first run
//! takes a full release build); `--from-binary` takes one already built.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use super::soak::{run_plan, Plan, SoakArgs};

#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The git revision to roll from (a commit, tag or branch of this repository).
    #[arg(long, required_unless_present = "from_binary")]
    pub from: Option<String>,
    /// A ferry binary of the release to roll from, instead of building `--from`.
    #[arg(long, conflicts_with = "from")]
    pub from_binary: Option<PathBuf>,
    /// The binary to roll to (default: this one).
    #[arg(long)]
    pub to_binary: Option<PathBuf>,
    /// Time between the start of one step of the roll and the next.
    #[arg(long, default_value = "6s", value_parser = crate::units::duration)]
    pub step_every: Duration,
    /// Quiet time after the roll before the final checks.
    #[arg(long, default_value = "15s", value_parser = crate::units::duration)]
    pub calm: Duration,
    /// Keep the processes' logs and data here (default: a temporary directory, removed).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Log filter of every process the bench starts.
    #[arg(long, default_value = "warn")]
    pub node_log: String,
}

pub async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let from = match (&args.from_binary, &args.from) {
        (Some(binary), _) => binary.clone(),
        (None, Some(rev)) => build(rev).await?,
        (None, None) => bail!("give --from REV or --from-binary PATH"),
    };
    let to = match &args.to_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    for (what, binary) in [("--from", &from), ("--to-binary", &to)] {
        if !binary.is_file() {
            bail!("{what}: {} is not a file", binary.display());
        }
    }
    let soak = SoakArgs {
        duration: Duration::ZERO,
        seed: 1,
        fault_every: args.step_every,
        calm: args.calm,
        keep: args.keep,
        binary: Some(from),
        partitions: false,
        node_log: args.node_log,
    };
    run_plan(soak, Plan::Roll { to, step_every: args.step_every }).await
}

/// Builds `rev` of the repository around the current directory (release, `ferry` only)
/// into `target/bench-upgrade/<commit>/`, once; the binary's path.
async fn build(rev: &str) -> anyhow::Result<PathBuf> {
    let top = git(Path::new("."), &["rev-parse", "--show-toplevel"]).await.context(
        "--from needs the current directory inside a git checkout of Ferry (or give --from-binary)",
    )?;
    let top = PathBuf::from(top);
    let commit = git(&top, &["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .await
        .with_context(|| format!("--from {rev}: no such revision"))?;
    let dir = top.join("target").join("bench-upgrade").join(&commit);
    let (src, target) = (dir.join("src"), dir.join("target"));
    let binary = target.join("release").join("ferry");
    if !src.join("Cargo.toml").is_file() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = src.to_string_lossy().into_owned();
        git(&top, &["worktree", "add", "--detach", &path, &commit]).await?;
    }
    let mut cargo = tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--release", "--locked", "--bin", "ferry"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .kill_on_drop(true);
    eprintln!("building ferry at {commit} in {} (cargo's output follows)", dir.display());
    let status = cargo.status().await.context("cannot run cargo")?;
    if !status.success() || !binary.is_file() {
        bail!("building {rev} ({commit}) failed: cargo {status}");
    }
    Ok(binary)
}

/// Runs git in `dir`; its trimmed stdout.
async fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
