//! Clients that ask the control plane where to go (`GET /v1/route/{stream}`) and go
//! there again whenever the edge fails them: `ferry watch --control-plane` and
//! `ferry publish --control-plane`.

use std::time::Duration;

use ferry_net::http::{join, HttpClient};
use ferry_proto::ErrorCode;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::publish::{publish, PublishOptions, PublishStats};
use crate::watch::{watch_detailed, WatchOptions, WatchStats};
use crate::{Error, Result};

const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a routed publisher keeps trying while the stream is busy: its edge died
/// and the stream is held until the failover frees it (gossip declares the edge
/// dead, the control plane commits the failover). Past this, another publisher
/// really holds the stream.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(20);

/// Where and how to ask for a route.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// Control-plane URLs, tried in turn.
    pub control_plane: Vec<String>,
    pub region: Option<String>,
    /// Give up after this many sessions in a row end without a frame (None: never).
    pub max_failures: Option<u32>,
    /// The client routing requests go through.
    pub http: HttpClient,
}

/// The control plane's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routed {
    pub edge: String,
    pub quic_addr: String,
}

/// Asks each control-plane URL in turn for the edge to use.
pub async fn route(opts: &RouteOptions, stream: &str, kind: &str) -> Result<Routed> {
    let mut last = String::from("no --control-plane URL given");
    let region = opts.region.as_deref().map(|r| format!("&region={r}")).unwrap_or_default();
    let path = format!("/v1/route/{stream}?kind={kind}{region}");
    for url in &opts.control_plane {
        match opts.http.get(&join(url, &path)).timeout(ROUTE_TIMEOUT).send().await {
            Ok(r) if r.status == 200 => {
                let body = r.json();
                let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                if let (Some(edge), Some(quic_addr)) = (field("edge"), field("quic_addr")) {
                    return Ok(Routed { edge, quic_addr });
                }
                last = format!("{url}: route without edge/quic_addr: {body}");
            }
            Ok(r) => last = format!("{url}: HTTP {}: {}", r.status, r.json()),
            Err(e) => last = format!("{}", ferry_net::Chain(&e)),
        }
    }
    Err(Error::NoRoute { stream: stream.to_owned(), reason: last })
}

/// One session of a routed watch.
#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    pub edge: String,
    pub frames: u64,
    pub ended: String,
    /// Time without frames before this leg's first frame (since the previous leg's last).
    pub gap_ms: Option<f64>,
    /// Synthetic frames missing between the previous leg and this one.
    pub frames_lost_between: Option<u64>,
    /// Wall-clock Unix milliseconds when the leg ended (for lining legs up with events).
    pub ended_unix_ms: u64,
    /// Where that edge's rollouts placed this leg's session, and the client flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_flag: Option<String>,
}

/// What a routed viewer saw: the totals, and every leg.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoutedWatchStats {
    pub frames: u64,
    pub bytes: u64,
    pub skipped_groups: u64,
    pub lost_frames: u64,
    pub reconnects: u64,
    pub legs: Vec<Leg>,
    pub duration_s: f64,
    pub ended: String,
}

/// Watches `opts.stream` wherever routing says, moving on whenever a session ends
/// early (edge died, went away, stalled, the track ended, or the stream is not
/// published yet) until `opts.duration` of watching passes or `cancel` fires.
///
/// The duration counts from the first frame: a viewer that arrives while the stream's
/// publisher is moving between edges (or before it started) keeps being routed until
/// the stream plays, and gives up only after `max_failures` sessions in a row without
/// a frame.
pub async fn watch_routed(
    mut opts: WatchOptions,
    route_opts: RouteOptions,
    cancel: CancellationToken,
) -> Result<RoutedWatchStats> {
    let started = Instant::now();
    let duration = opts.duration;
    // Set once the first frame arrived.
    let mut deadline: Option<Instant> = None;
    let mut stats = RoutedWatchStats::default();
    // (wall time of the last frame, its synthetic seq) of the previous leg.
    let mut previous: Option<(Option<Instant>, Option<u64>)> = None;
    let mut failures = 0u32;
    let mut retry = RETRY_MIN;
    loop {
        if cancel.is_cancelled() {
            stats.ended = "stopped".into();
            break;
        }
        let remaining = match deadline {
            Some(d) => Some(d.saturating_duration_since(Instant::now())),
            None => duration,
        };
        if remaining.is_some_and(|r| r.is_zero()) {
            stats.ended = "duration reached".into();
            break;
        }
        if route_opts.max_failures.is_some_and(|max| failures >= max) {
            stats.ended =
                format!("gave up after {failures} sessions in a row without a frame: {}", stats.ended);
            break;
        }
        let leg_result = match route(&route_opts, opts.stream.as_str(), "quic").await {
            Ok(routed) => {
                opts.edge = routed.quic_addr.clone();
                opts.duration = remaining;
                let leg_start = Instant::now();
                watch_detailed(opts.clone(), cancel.clone()).await.map(|(s, _)| (routed, leg_start, s))
            }
            Err(e) => Err(e),
        };
        let (routed, leg_start, leg) = match leg_result {
            Ok(ok) => ok,
            Err(e) => {
                failures += 1;
                tracing::debug!("routed watch: {e}");
                stats.ended = e.to_string();
                sleep_or_cancel(retry, &cancel).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        let at = |ms: Option<f64>| ms.map(|ms| leg_start + Duration::from_secs_f64(ms / 1000.0));
        let (first_at, last_at) = (at(leg.first_frame_ms), at(leg.last_frame_ms));
        if let (None, Some(first), Some(duration)) = (deadline, first_at, duration) {
            deadline = Some(first + duration);
        }
        let (gap_ms, frames_lost_between) = match (&previous, first_at) {
            (Some((prev_last, prev_seq)), Some(first)) => (
                prev_last.map(|p| first.saturating_duration_since(p).as_secs_f64() * 1000.0),
                prev_seq.zip(leg.first_seq).map(|(p, f)| f.saturating_sub(p).saturating_sub(1)),
            ),
            _ => (None, None),
        };
        merge(&mut stats, &leg, &routed, gap_ms, frames_lost_between);
        if leg.frames > 0 {
            failures = 0;
            retry = RETRY_MIN;
            previous = Some((last_at, leg.last_seq));
        } else {
            failures += 1;
        }
        // A leg that ran out its duration after frames arrived watched enough; one that
        // saw no frame at all was waiting for the stream, and another one starts.
        if leg.ended == "stopped" || (leg.ended == "duration reached" && deadline.is_some()) {
            stats.ended = leg.ended;
            break;
        }
        stats.reconnects += 1;
        stats.ended = leg.ended.clone();
        if leg.frames == 0 {
            sleep_or_cancel(retry, &cancel).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
    stats.duration_s = started.elapsed().as_secs_f64();
    Ok(stats)
}

fn merge(
    stats: &mut RoutedWatchStats,
    leg: &WatchStats,
    routed: &Routed,
    gap_ms: Option<f64>,
    lost: Option<u64>,
) {
    stats.frames += leg.frames;
    stats.bytes += leg.bytes;
    stats.skipped_groups += leg.skipped_groups;
    stats.lost_frames += leg.lost_frames;
    stats.legs.push(Leg {
        edge: routed.edge.clone(),
        frames: leg.frames,
        ended: leg.ended.clone(),
        gap_ms,
        frames_lost_between: lost,
        ended_unix_ms: ferry_net::time::unix_ms(),
        variant: leg.variant.clone(),
        client_flag: leg.client_flag.clone(),
    });
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Publishes wherever routing says; when the edge fails (dies, goes away), asks again
/// and publishes there, until `opts.duration` passes or `cancel` fires. Returns the
/// stats of every session.
pub async fn publish_routed(
    mut opts: PublishOptions,
    route_opts: RouteOptions,
    cancel: CancellationToken,
) -> Result<Vec<(String, PublishStats)>> {
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut sessions = Vec::new();
    let mut failures = 0u32;
    let mut retry = RETRY_MIN;
    let mut busy_since = None;
    while !cancel.is_cancelled() {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) || route_opts.max_failures.is_some_and(|m| failures >= m) {
            break;
        }
        let result = match route(&route_opts, opts.stream.as_str(), "publish").await {
            Ok(routed) => {
                opts.edge = routed.quic_addr.clone();
                opts.duration = remaining;
                publish(opts.clone(), cancel.clone()).await.map(|s| (routed.edge, s))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((edge, s)) => {
                busy_since = None;
                let clean = s.ended == "duration reached" || s.ended == "stopped";
                let sent = s.frames > 0;
                tracing::info!(%edge, frames = s.frames, ended = %s.ended, "publish session ended");
                sessions.push((edge, s));
                if clean {
                    break;
                }
                failures = if sent { 0 } else { failures + 1 };
            }
            // Busy: the stream may be held for a publisher that just died with its
            // edge; wait for the failover, no longer.
            Err(e) if e.refused_code() == Some(ErrorCode::StreamBusy) => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= BUSY_PATIENCE {
                    return Err(e);
                }
                tracing::warn!("publish: {}; trying again", ferry_net::Chain(&e));
                sleep_or_cancel(RETRY_MAX, &cancel).await;
                continue;
            }
            // Another publisher took the stream over, or the token is not good:
            // routing again cannot help.
            Err(e) if matches!(e.refused_code(), Some(ErrorCode::TakenOver | ErrorCode::Unauthorized)) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!("publish: {}; routing again", ferry_net::Chain(&e));
                failures += 1;
            }
        }
        sleep_or_cancel(retry, &cancel).await;
        retry = if failures == 0 { RETRY_MIN } else { (retry * 2).min(RETRY_MAX) };
    }
    Ok(sessions)
}
