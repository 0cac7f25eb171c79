//! `ferry publish`: publish a stream over QUIC, or over WebRTC with `--whip`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_client::publish::{publish, PublishOptions, Source};
use ferry_client::routed::publish_routed;
use ferry_client::whip::{publish_whip, WhipFailover, WhipOptions};
use ferry_media::synthetic::SyntheticConfig;
use ferry_net::tls::TransportTuning;
use ferry_proto::StreamName;

use crate::args::{label, media_bind_ip, stream_of_webrtc_url, RouteArgs, SessionArgs, TrustArgs};
use crate::units;

/// Silence after which an edge counts a publisher as gone (no `--control-plane`).
const PUBLISHER_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Edge QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_EDGE", required_unless_present_any = ["whip", "control_plane"])]
    pub edge: Option<String>,
    #[command(flatten)]
    pub route: RouteArgs,
    /// Stream name, e.g. live/room1 (with --whip: taken from the URL unless given).
    #[arg(long, env = "FERRY_STREAM", required_unless_present = "whip")]
    pub stream: Option<String>,
    /// Publish over WebRTC instead: the WHIP endpoint, e.g.
    /// http://HOST:PORT/whip/live/room1 (an edge's, or a voter's, which redirects to
    /// one). WHIP carries VP8: --synthetic --synthetic-vp8, or a VP8 --input. A session
    /// that fails (never connects, ICE fails, disconnected for --failover-after, the
    /// edge closes it) is followed by a new one: at the same URL, or routed by
    /// --control-plane when given; up to --max-failures in a row without a frame.
    #[arg(long, env = "FERRY_WHIP", conflicts_with = "edge")]
    pub whip: Option<String>,
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
    /// Label the synthetic stream VP8 (behind a VP8 frame tag) so WebRTC can carry it
    /// (WHEP viewers, --whip); for benchmarks — no decoder can show it.
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
    if let Some(url) = &args.whip {
        return run_publish_whip(&args, url, source).await;
    }
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
        stream: StreamName::new(args.stream.clone().context("--stream is required")?).context("--stream")?,
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

async fn run_publish_whip(args: &PublishArgs, url: &str, source: Source) -> anyhow::Result<()> {
    args.session.hello()?;
    // Later sessions go through the control plane when there is one, like
    // `ferry watch --whep`; else to the same URL (a voter's routes again).
    let urls = match args.route.control_plane.is_empty() {
        true => Vec::new(),
        false => {
            let stream = match &args.stream {
                Some(stream) => stream.clone(),
                None => stream_of_webrtc_url(url, "whip")
                    .ok_or_else(|| anyhow::anyhow!("--whip {url}: no /whip/STREAM path; give --stream"))?,
            };
            let region = args.route.region.as_deref().map(|r| format!("?region={r}")).unwrap_or_default();
            let urls = args.route.control_plane.iter();
            urls.map(|cp| format!("{}/whip/{stream}{region}", cp.trim_end_matches('/'))).collect()
        }
    };
    let opts = WhipOptions {
        url: url.to_owned(),
        token: args.session.token()?,
        source,
        duration: args.duration,
        bind_ip: media_bind_ip(url),
        connect_timeout: Duration::from_secs(10),
        failover: WhipFailover {
            urls,
            disconnect_grace: args.route.failover_after,
            max_failures: Some(args.route.max_failures),
        },
        session_id: args.session.session_id.clone(),
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        http: args.trust.http()?,
    };
    let stats =
        publish_whip(opts, crate::process::shutdown_signal()).await.with_context(|| format!("WHIP {url}"))?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        eprintln!(
            "published {} frames ({} keyframes), {} bytes over WHIP in {} sessions, {} keyframe requests ({})",
            stats.frames,
            stats.keyframes,
            stats.bytes,
            stats.legs.len(),
            stats.keyframe_requests,
            stats.ended
        );
    }
    if stats.frames == 0 {
        anyhow::bail!("no frame was published ({})", stats.ended);
    }
    Ok(())
}
