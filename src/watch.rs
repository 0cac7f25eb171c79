//! `ferry watch`: watch a stream over QUIC, or over WebRTC with `--whep`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_client::routed::watch_routed;
use ferry_client::watch::{watch, WatchOptions};
use ferry_client::whep::{watch_whep, WhepFailover, WhepOptions};
use ferry_net::tls::TransportTuning;
use ferry_proto::{StreamName, TrackName};

use crate::args::{label, media_bind_ip, stream_of_webrtc_url, RouteArgs, SessionArgs, TrustArgs};
use crate::units;

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Edge QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_EDGE", required_unless_present_any = ["whep", "control_plane"])]
    pub edge: Option<String>,
    #[command(flatten)]
    pub route: RouteArgs,
    /// Stream name, e.g. live/room1.
    #[arg(long, env = "FERRY_STREAM", required_unless_present = "whep")]
    pub stream: Option<String>,
    /// Watch over WebRTC instead: the WHEP endpoint, e.g. http://HOST:PORT/whep/live/room1.
    /// With --control-plane, a session that ends early (edge gone, closed, stalled for
    /// --failover-after) is followed by a new one routed by the control plane.
    #[arg(long, env = "FERRY_WHEP", conflicts_with_all = ["edge", "output", "throttle"])]
    pub whep: Option<String>,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Track to watch.
    #[arg(long, env = "FERRY_TRACK", default_value = "video")]
    pub track: String,
    /// Latency budget: fall further behind and the edge skips you to the newest keyframe.
    #[arg(long, env = "FERRY_MAX_LAG", default_value = "2s", value_parser = units::duration)]
    pub max_lag: Duration,
    /// Stop after watching this long. With --control-plane it counts from the first
    /// frame: until the stream plays, the viewer keeps being routed (up to
    /// --max-failures sessions in a row without a frame).
    #[arg(long, env = "FERRY_DURATION", value_parser = units::duration)]
    pub duration: Option<Duration>,
    /// Print the stats as one JSON object.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
    /// Write received frames as IVF (`-` for standard output).
    #[arg(long, env = "FERRY_OUTPUT", value_name = "FILE.ivf|-")]
    pub output: Option<PathBuf>,
    /// Read at most this bit rate (emulates a slow viewer).
    #[arg(long, env = "FERRY_THROTTLE", value_parser = units::bitrate)]
    pub throttle: Option<u64>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.whep {
        return run_watch_whep(&args, url).await;
    }
    // --edge wins over a control plane (which may come from the environment).
    let routed = match args.edge {
        Some(_) => None,
        None => args.route.options(args.trust.http()?),
    };
    let opts = WatchOptions {
        edge: match routed {
            Some(_) => String::new(),
            None => args.edge.clone().context("--edge is required")?,
        },
        stream: StreamName::new(args.stream.clone().context("--stream is required")?).context("--stream")?,
        track: TrackName::new(args.track.clone()).context("--track")?,
        max_lag: args.max_lag,
        duration: args.duration,
        output: args.output.clone(),
        throttle_bps: args.throttle,
        trust: args.trust.trust()?,
        tuning: match routed {
            Some(_) => TransportTuning::viewer().failing_over(args.route.failover_after),
            None => TransportTuning::viewer(),
        },
        label: label("viewer")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        stall_timeout: routed.as_ref().map(|_| args.route.failover_after),
        session: args.session.hello()?,
    };
    if let Some(route) = routed {
        let stats = watch_routed(opts, route, crate::process::shutdown_signal()).await?;
        if args.json {
            out!("{}", serde_json::to_string(&stats)?)?;
        } else {
            eprintln!(
                "watched {} frames on {} legs ({} reconnects), {} skipped groups ({})",
                stats.frames,
                stats.legs.len(),
                stats.reconnects,
                stats.skipped_groups,
                stats.ended
            );
        }
        if stats.frames == 0 {
            anyhow::bail!("no frame arrived ({})", stats.ended);
        }
        return Ok(());
    }
    let stats = watch(opts, crate::process::shutdown_signal()).await?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        let latency = stats
            .latency_ms
            .map(|l| format!(", latency p50 {:.1} ms p99 {:.1} ms", l.p50, l.p99))
            .unwrap_or_default();
        eprintln!(
            "watched {} frames, {} bytes, {} groups, {} skipped ({}){latency}",
            stats.frames, stats.bytes, stats.groups, stats.skipped_groups, stats.ended
        );
    }
    Ok(())
}

async fn run_watch_whep(args: &WatchArgs, url: &str) -> anyhow::Result<()> {
    args.session.hello()?;
    let failover = match args.route.control_plane.is_empty() {
        true => None,
        false => {
            let stream = match &args.stream {
                Some(stream) => stream.clone(),
                None => stream_of_webrtc_url(url, "whep")
                    .ok_or_else(|| anyhow::anyhow!("--whep {url}: no /whep/STREAM path; give --stream"))?,
            };
            let region = args.route.region.as_deref().map(|r| format!("?region={r}")).unwrap_or_default();
            let urls = args
                .route
                .control_plane
                .iter()
                .map(|cp| format!("{}/whep/{stream}{region}", cp.trim_end_matches('/')));
            Some(WhepFailover {
                urls: urls.collect(),
                stall_timeout: args.route.failover_after,
                max_failures: Some(args.route.max_failures),
            })
        }
    };
    let opts = WhepOptions {
        url: url.to_owned(),
        token: args.session.token()?,
        duration: args.duration,
        bind_ip: media_bind_ip(url),
        connect_timeout: Duration::from_secs(10),
        failover,
        session_id: args.session.session_id.clone(),
        http: args.trust.http()?,
    };
    let stats =
        watch_whep(opts, crate::process::shutdown_signal()).await.with_context(|| format!("WHEP {url}"))?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        eprintln!(
            "watched {} frames ({} keyframes, {} lost), {} bytes, {} audio packets over WHEP, {} reconnects ({})",
            stats.frames,
            stats.keyframes,
            stats.lost_frames,
            stats.bytes,
            stats.audio_packets,
            stats.reconnects,
            stats.ended
        );
    }
    if stats.frames == 0 && stats.audio_packets == 0 {
        anyhow::bail!("no media arrived ({})", stats.ended);
    }
    Ok(())
}
