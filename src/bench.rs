//! `ferry bench`: measurements that print one JSON object. Numbers belong in
//! docs/benchmarks.md, never in test assertions.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_client::publish::{publish, PublishOptions, Source};
use ferry_client::stats::Samples;
use ferry_client::watch::{watch_detailed, WatchOptions};
use ferry_client::whep::{watch_whep, WhepOptions};
use ferry_media::synthetic::SyntheticConfig;
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_proto::{ErrorCode, NodeId, StreamName, TrackName};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::units;

mod canary;
mod control;
mod failover;
mod floor;
mod netns;
mod soak;
mod upgrade;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One publisher → H edges (separate processes) → N viewers.
    Fanout(FanoutArgs),
    /// Control-plane writes/s, latency and leader failover: Ferry or etcd, 3 members.
    Control(control::ControlArgs),
    /// Kill -9 an edge with viewers in a gossiping cluster: detection time at every
    /// peer, media gap per viewer, frames lost.
    Failover(failover::FailoverArgs),
    /// Rollout guards on a real cluster: how fast an erroring treatment falls back on
    /// every edge after the deciding window, and how fast an edge's CPU guard reacts.
    Canary(canary::CanaryArgs),
    /// Chaos on a real cluster (3 voters, 3 edges, publishers, QUIC and WHEP viewers,
    /// control-plane clients): seeded kills, stops and hostile clients, then checks
    /// that acknowledged writes survived and are linearizable, viewers recovered,
    /// resources stayed bounded and nothing panicked.
    Soak(soak::SoakArgs),
    /// A rolling upgrade under load: the soak's cluster on an earlier release (`--from
    /// REV`, built once), every voter then every edge restarted on this build, then
    /// the soak's checks and the cluster version's.
    Upgrade(upgrade::UpgradeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Viewers on the last edge.
    #[arg(long, env = "FERRY_BENCH_VIEWERS", default_value_t = 50)]
    pub viewers: usize,
    /// Stream bit rate.
    #[arg(long, env = "FERRY_BENCH_BITRATE", default_value = "2500k", value_parser = units::bitrate)]
    pub bitrate: u64,
    /// Measured time.
    #[arg(long, env = "FERRY_BENCH_DURATION", default_value = "10s", value_parser = units::duration)]
    pub duration: Duration,
    /// Edges in the chain (1 = publisher and viewers on the same edge).
    #[arg(long, env = "FERRY_BENCH_HOPS", default_value_t = 1)]
    pub hops: usize,
    /// Extra viewers that read at --slow-rate.
    #[arg(long, env = "FERRY_BENCH_SLOW_VIEWERS", default_value_t = 0)]
    pub slow_viewers: usize,
    /// Read rate of slow viewers.
    #[arg(long, env = "FERRY_BENCH_SLOW_RATE", default_value = "250k", value_parser = units::bitrate)]
    pub slow_rate: u64,
    /// Viewer latency budget.
    #[arg(long, env = "FERRY_BENCH_MAX_LAG", default_value = "2s", value_parser = units::duration)]
    pub max_lag: Duration,
    /// Skip the in-process plain-QUIC baseline.
    #[arg(long, env = "FERRY_BENCH_NO_BASELINE")]
    pub no_baseline: bool,
    /// The ferry binary to run edges with (default: this one).
    #[arg(long, env = "FERRY_BENCH_BINARY")]
    pub binary: Option<PathBuf>,
    /// How viewers watch: QUIC (`ferry watch`) or WebRTC (WHEP viewers built on the
    /// webrtc crate, receiving the synthetic stream labelled VP8).
    #[arg(long, env = "FERRY_BENCH_TRANSPORT", value_enum, default_value = "quic")]
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Quic,
    Webrtc,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fanout(args) => fanout(args).await,
        BenchCommand::Control(args) => control::run(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
        BenchCommand::Canary(args) => canary::run(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
        BenchCommand::Upgrade(args) => upgrade::run(args).await,
    }
}

/// An edge process, killed when dropped.
struct EdgeProcess {
    child: Child,
    pid: u32,
    quic: String,
    http: String,
}

async fn spawn_edge(
    binary: &std::path::Path,
    id: usize,
    upstream: Option<&str>,
    webrtc_sessions: usize,
) -> anyhow::Result<EdgeProcess> {
    let mut cmd = crate::process::ferry_child(binary);
    // A bench on loopback: its clients and relays need no credentials.
    cmd.args(["edge", "--node-id", &format!("bench-edge-{id}"), "--quic-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--log", "warn", "--allow-anonymous"])
        // Every bench client connects from 127.0.0.1: no per-address share.
        .args(["--http-max-connections-per-ip", "65536", "--max-connections-per-ip", "65536"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(up) = upstream {
        cmd.args(["--upstream", up]);
    }
    if webrtc_sessions > 0 {
        // A port range of its own per edge: sessions plus headroom for ports in use.
        let low = 52_000 + id * 2_000;
        let high = low + webrtc_sessions + 200;
        cmd.args(["--webrtc-bind", "127.0.0.1"])
            .args(["--webrtc-udp-ports", &format!("{low}-{high}")])
            .args(["--webrtc-max-sessions", &(webrtc_sessions + 10).to_string()])
            // Every bench viewer comes from 127.0.0.1.
            .args(["--webrtc-max-sessions-per-client", &(webrtc_sessions + 10).to_string()]);
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", binary.display()))?;
    let pid = child.id().context("edge exited at once")?;
    let stdout = child.stdout.take().context("edge stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("edge did not report ready")??
        .context("edge exited before ready")?;
    let ready: serde_json::Value = serde_json::from_str(&line).context("edge ready line")?;
    let field = |name: &str| -> anyhow::Result<String> {
        Ok(ready
            .get(name)
            .and_then(|q| q.as_str())
            .with_context(|| format!("ready line without {name}"))?
            .to_owned())
    };
    Ok(EdgeProcess { child, pid, quic: field("quic")?, http: field("http")? })
}

/// CPU seconds (user + system) a process used so far, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    ferry_edge::cluster::load::cpu_seconds(pid).with_context(|| format!("no CPU figures in /proc/{pid}/stat"))
}

/// Resident set size of a process in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn viewer_opts(
    edge: &str,
    stream: &StreamName,
    args: &FanoutArgs,
    i: usize,
    throttle: Option<u64>,
) -> anyhow::Result<WatchOptions> {
    Ok(WatchOptions {
        edge: edge.to_owned(),
        stream: stream.clone(),
        track: TrackName::video(),
        max_lag: args.max_lag,
        duration: Some(args.duration),
        output: None,
        throttle_bps: throttle,
        trust: ClientTrust::Insecure,
        tuning: TransportTuning::viewer(),
        label: NodeId::new(format!("bench-viewer-{i}"))?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        session: Default::default(),
        stall_timeout: None,
    })
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if args.hops == 0 || args.viewers == 0 {
        bail!("--hops and --viewers must be at least 1");
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let webrtc = args.transport == Transport::Webrtc;
    if webrtc && args.slow_viewers > 0 {
        bail!("--slow-viewers is QUIC only (a WebRTC viewer's pace is its network's)");
    }
    let mut edges: Vec<EdgeProcess> = Vec::new();
    for i in 0..args.hops {
        let upstream = edges.last().map(|e| e.quic.clone());
        let sessions = if webrtc && i + 1 == args.hops { args.viewers } else { 0 };
        edges.push(spawn_edge(&binary, i, upstream.as_deref(), sessions).await?);
    }
    let first = edges.first().context("no edge")?.quic.clone();
    let last = edges.last().context("no edge")?.quic.clone();
    let last_http = edges.last().context("no edge")?.http.clone();
    let stream = StreamName::new("bench/fanout")?;
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(publish(
        PublishOptions {
            edge: first,
            stream: stream.clone(),
            source: {
                let config = SyntheticConfig { bitrate_bps: args.bitrate, ..SyntheticConfig::default() };
                if webrtc {
                    Source::SyntheticVp8(config)
                } else {
                    Source::Synthetic(config)
                }
            },
            duration: None,
            trust: ClientTrust::Insecure,
            tuning: TransportTuning::default(),
            label: NodeId::new("bench-publisher")?,
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            session: Default::default(),
        },
        stop.clone(),
    ));
    wait_for_stream(&last, &stream, &args).await?;

    let cpu_before: Vec<f64> = edges.iter().map(|e| cpu_seconds(e.pid)).collect::<anyhow::Result<_>>()?;
    let started = std::time::Instant::now();
    let mut viewers = tokio::task::JoinSet::new();
    let mut whep_viewers = tokio::task::JoinSet::new();
    for i in 0..args.viewers + args.slow_viewers {
        let slow = i >= args.viewers;
        let token = stop.clone();
        if webrtc {
            let opts = WhepOptions {
                url: format!("http://{last_http}/whep/{stream}"),
                token: None,
                duration: Some(args.duration),
                bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                connect_timeout: Duration::from_secs(20),
                failover: None,
                session_id: None,
                http: ferry_net::http::HttpClient::plain(),
            };
            whep_viewers.spawn(watch_whep(opts, token));
        } else {
            let opts = viewer_opts(&last, &stream, &args, i, slow.then_some(args.slow_rate))?;
            viewers.spawn(async move { (slow, watch_detailed(opts, token).await) });
        }
    }
    let mut latency = Samples::default();
    let (mut bytes, mut skipped, mut lost, mut failed, mut frames) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut slow_bytes, mut slow_skipped) = (0u64, 0u64);
    let mut first_frame = Samples::default();
    while let Some(joined) = whep_viewers.join_next().await {
        match joined {
            Ok(Ok(stats)) if stats.frames > 0 => {
                bytes += stats.bytes;
                frames += stats.frames;
                lost += stats.lost_frames;
                latency.extend(&stats.latency);
                if let Some(ms) = stats.first_frame_ms {
                    first_frame.push((ms * 1e3) as u64);
                }
            }
            Ok(Ok(stats)) => {
                tracing::warn!(ended = %stats.ended, "WHEP viewer got no frames");
                failed += 1;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "WHEP viewer failed");
                failed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "viewer task failed");
                failed += 1;
            }
        }
    }
    while let Some(joined) = viewers.join_next().await {
        match joined {
            Ok((false, Ok((stats, samples)))) => {
                bytes += stats.bytes;
                frames += stats.frames;
                skipped += stats.skipped_groups;
                lost += stats.lost_frames;
                latency.extend(&samples);
            }
            Ok((true, Ok((stats, _)))) => {
                slow_bytes += stats.bytes;
                slow_skipped += stats.skipped_groups;
            }
            Ok((_, Err(e))) => {
                tracing::warn!(error = %e, "viewer failed");
                failed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "viewer task failed");
                failed += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after: Vec<f64> = edges.iter().map(|e| cpu_seconds(e.pid)).collect::<anyhow::Result<_>>()?;
    let edge_cpu: f64 = cpu_after.iter().zip(&cpu_before).map(|(a, b)| a - b).sum();
    let rss: Vec<f64> = edges.iter().filter_map(|e| rss_mib(e.pid)).collect();
    stop.cancel();
    let _ = publisher.await;
    for mut e in edges {
        let _ = e.child.kill().await;
    }
    let delivered = bytes + slow_bytes;
    let gb = delivered as f64 / 1e9;
    let cpu_per_gb = if gb > 0.0 { edge_cpu / gb } else { f64::NAN };
    let lat = latency.summary().unwrap_or_default();
    let baseline = if args.no_baseline {
        None
    } else {
        let floor_bytes = delivered.clamp(64 << 20, 1 << 30);
        let config = SyntheticConfig { bitrate_bps: args.bitrate, ..SyntheticConfig::default() };
        Some(floor::run(floor_bytes, config).await?)
    };
    let ratio = baseline.map(|floor| cpu_per_gb / floor);
    let delivered_mbps = delivered as f64 * 8.0 / elapsed / 1e6;
    let first_frame = first_frame.summary().unwrap_or_default();
    let report = json!({
        "scenario": "fanout",
        "transport": if webrtc { "webrtc" } else { "quic" },
        "viewers": args.viewers,
        "slow_viewers": args.slow_viewers,
        "hops": args.hops,
        "bitrate_bps": args.bitrate,
        "duration_s": elapsed,
        "delivered_mbps": delivered_mbps,
        "expected_mbps": (args.viewers as f64) * args.bitrate as f64 / 1e6,
        "edge_cpu_seconds": edge_cpu,
        "edge_cpu_seconds_per_gb": cpu_per_gb,
        "edge_rss_mib": rss,
        "latency_ms": { "p50": lat.p50, "p99": lat.p99, "max": lat.max },
        "first_frame_ms": if webrtc { json!({ "p50": first_frame.p50, "p99": first_frame.p99 }) } else { json!(null) },
        "frames": frames,
        "skipped_groups": skipped,
        "lost_frames": lost,
        "failed_viewers": failed,
        "slow_viewer_bytes": slow_bytes,
        "slow_viewer_skipped_groups": slow_skipped,
        "baseline_cpu_seconds_per_gb": baseline,
        "relay_cost_ratio": ratio,
    });
    out!("{report}")?;
    eprintln!(
        "fanout ({}): {} viewers x {} hops: {delivered_mbps:.1} Mbps delivered, {cpu_per_gb:.2} edge CPU-s/GB, \
         latency p50 {:.1} ms p99 {:.1} ms, {skipped} skipped groups, {lost} lost frames{}",
        if webrtc { "webrtc" } else { "quic" },
        args.viewers,
        args.hops,
        lat.p50,
        lat.p99,
        ratio.map(|r| format!(", relay costs {r:.2}x bare QUIC per byte")).unwrap_or_default()
    );
    Ok(())
}

/// Waits until the stream can be subscribed on `edge` (the publisher may still be
/// announcing). Bounded: 50 tries.
async fn wait_for_stream(edge: &str, stream: &StreamName, args: &FanoutArgs) -> anyhow::Result<()> {
    let mut probe_args = args.clone();
    probe_args.duration = Duration::from_millis(300);
    for _ in 0..50 {
        let opts = viewer_opts(edge, stream, &probe_args, usize::MAX, None)?;
        match watch_detailed(opts, CancellationToken::new()).await {
            Ok((stats, _)) if stats.frames > 0 => return Ok(()),
            Ok(_) => {}
            Err(ferry_client::Error::Net(ferry_net::Error::Refused {
                code: ErrorCode::NotFound, ..
            })) => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("stream {stream} never became available on {edge}")
}
