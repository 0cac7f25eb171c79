//! `ferry publish`: publish a stream over QUIC.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_client::publish::{publish, PublishOptions, Source};
use ferry_client::routed::publish_routed;
use ferry_media::synthetic::SyntheticConfig;
use ferry_net::tls::TransportTuning;
use ferry_proto::StreamName;

use crate::args::{label, RouteArgs, SessionArgs, TrustArgs};
use crate::units;

/// Silence after which an edge counts a publisher as gone (no `--control-plane`).
const PUBLISHER_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Edge QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_EDGE", required_unless_present = "control_plane")]
    pub edge: Option<String>,
    #[command(flatten)]
    pub route: RouteArgs,
    /// Stream name, e.g. live/room1.
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: String,
    /// Publish Ferry's synthetic test stream (frames carry their send time).
    #[arg(long, env = "FERRY_SYNTHETIC", conflicts_with = "input", required_unless_present = "input")]
    pub synthetic: bool,
    /// Publish an IVF file (VP8/VP9/AV1), `-` for standard input; paced by its timestamps.
    #[arg(long, env = "FERRY_INPUT", value_name = "FILE.ivf|-")]
    pub input: Option<PathBuf>,
    /// Synthetic bit rate.
    #[arg(long, env = "FERRY_BITRATE", default_value = "2500k", value_parser = units::bitrate)]
    pub bitrate: u64,
    /// Synthetic frame rate.
    #[arg(long, env = "FERRY_FPS", default_value_t = 30)]
    pub fps: u32,
    /// Synthetic keyframe interval.
    #[arg(long, env = "FERRY_GOP", default_value = "2s", value_parser = units::duration)]
    pub gop: Duration,
    /// Label the synthetic stream VP8 (behind a VP8 frame tag) so WHEP viewers can
    /// receive it; for benchmarks — no decoder can show it.
    #[arg(long, env = "FERRY_SYNTHETIC_VP8", requires = "synthetic")]
    pub synthetic_vp8: bool,
    /// Stop after this long.
    #[arg(long, env = "FERRY_DURATION", value_parser = units::duration)]
    pub duration: Option<Duration>,
    /// Print the final stats as one JSON object.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let source = match &args.input {
        Some(path) => Source::Ivf(path.clone()),
        None => {
            let config = SyntheticConfig { bitrate_bps: args.bitrate, fps: args.fps, gop: args.gop };
            if args.synthetic_vp8 {
                Source::SyntheticVp8(config)
            } else {
                Source::Synthetic(config)
            }
        }
    };
    // --edge wins over a control plane (which may come from the environment).
    let routed = match args.edge {
        Some(_) => None,
        None => args.route.options(args.trust.http()?),
    };
    let tuning = match routed {
        Some(_) => TransportTuning::default().failing_over(args.route.failover_after),
        // The edge notices a vanished publisher within seconds (QUIC's idle timeout
        // is the smaller of the two ends'), so its stream is free again soon.
        None => TransportTuning::default().failing_over(PUBLISHER_IDLE),
    };
    let opts = PublishOptions {
        edge: args.edge.clone().unwrap_or_default(),
        stream: StreamName::new(args.stream.clone()).context("--stream")?,
        source,
        duration: args.duration,
        trust: args.trust.trust()?,
        tuning,
        label: label("publisher")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        session: args.session.hello()?,
    };
    if let Some(route) = routed {
        let sessions = publish_routed(opts, route, crate::process::shutdown_signal()).await?;
        let frames: u64 = sessions.iter().map(|(_, s)| s.frames).sum();
        if args.json {
            let list: Vec<_> =
                sessions.iter().map(|(edge, s)| serde_json::json!({ "edge": edge, "stats": s })).collect();
            out!("{}", serde_json::json!({ "frames": frames, "sessions": list }))?;
        } else {
            eprintln!("published {frames} frames in {} sessions", sessions.len());
        }
        if frames == 0 {
            anyhow::bail!("no frame was published");
        }
        return Ok(());
    }
    let stats = publish(opts, crate::process::shutdown_signal()).await?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        eprintln!(
            "published {} frames, {} bytes, {} groups ({}); max write {:.1} ms, {} late frames",
            stats.frames, stats.bytes, stats.groups, stats.ended, stats.max_write_ms, stats.late_frames
        );
    }
    Ok(())
}
