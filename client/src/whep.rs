//! Watching over WHEP with the webrtc crate: `ferry watch --whep URL` and the WebRTC
//! viewers of `ferry bench fanout --transport webrtc`.
//!
//! The viewer behaves like a browser where it matters to the edge: it reassembles
//! frames, and asks for a keyframe (PLI, at most once per second) whenever it lost
//! part of a frame and cannot decode until the next keyframe.
//!
//! With [`WhepFailover`] it also moves on by itself, like the demo player: when a
//! session ends early (ICE failed, the edge closed it, the stream ended, or no frame
//! for `stall_timeout`) it posts a new offer through the control plane, which answers
//! 307 to a live edge. Every session is a [`WhepLeg`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_net::http::{resolve_location, HttpClient, Method};
use ferry_proto::Codec;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use crate::stats::{LatencySummary, Samples};
use crate::watch::sleep_until_opt;
use crate::{Error, Result};
use ferry_media::peer as engine;
use ferry_media::rtp::FrameAssembler;
use ferry_media::synthetic::{parse_vp8_framed, unix_micros_now};
use ferry_media::throttle::KeyframeThrottle;

/// How to watch.
#[derive(Debug, Clone)]
pub struct WhepOptions {
    /// `http://HOST:PORT/whep/STREAM`.
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Stop after this long (from the answer).
    pub duration: Option<Duration>,
    /// Local address for the media socket.
    pub bind_ip: IpAddr,
    /// Give up if ICE/DTLS is not up by then.
    pub connect_timeout: Duration,
    /// Start a new session elsewhere when one ends early (None: one session).
    pub failover: Option<WhepFailover>,
    /// Sent as `Ferry-Session`: the stable id rollouts place this viewer by.
    pub session_id: Option<String>,
    /// The client signalling goes through.
    pub http: HttpClient,
}

/// How a WHEP viewer re-routes.
#[derive(Debug, Clone)]
pub struct WhepFailover {
    /// WHEP URLs for the next session, tried in turn: the control plane's
    /// `/whep/{stream}?region=R`, which redirects to a live edge.
    pub urls: Vec<String>,
    /// A session that delivered frames and then none for this long counts as dead.
    pub stall_timeout: Duration,
    /// Give up after this many sessions in a row end without a frame (None: never).
    pub max_failures: Option<u32>,
}

/// One session of a re-routing WHEP viewer.
#[derive(Debug, Clone, Serialize)]
pub struct WhepLeg {
    /// Where the session ran (the edge's WHEP URL, after redirects).
    pub url: String,
    pub frames: u64,
    pub ended: String,
    /// Time without frames before this leg's first frame (since the previous leg's last).
    pub gap_ms: Option<f64>,
    /// Wall-clock Unix milliseconds when the leg ended.
    pub ended_unix_ms: u64,
}

/// First and longest pause between WebRTC sessions that failed (WHEP and WHIP).
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);
/// The least time a routed viewer gives a new session to connect.
const FAILOVER_CONNECT_MIN: Duration = Duration::from_secs(3);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(1);

/// What a WHEP viewer saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WhepStats {
    pub codec: Option<String>,
    /// Whole video frames reassembled.
    pub frames: u64,
    pub keyframes: u64,
    /// Video payload bytes in whole frames.
    pub bytes: u64,
    pub video_packets: u64,
    pub audio_packets: u64,
    /// Video frames dropped because part of them (or their reference) was lost.
    pub lost_frames: u64,
    /// Keyframe requests (PLI) sent to the edge.
    pub keyframe_requests: u64,
    /// From sending the offer to the first whole frame.
    pub first_frame_ms: Option<f64>,
    /// Publisher-to-viewer latency of synthetic frames, from the second keyframe on
    /// (the first group is the backlog a joining viewer starts with).
    pub latency_ms: Option<LatencySummary>,
    pub duration_s: f64,
    /// Why the session ended.
    pub ended: String,
    /// The edge's WHEP URL of the (last) session, after redirects.
    pub url: Option<String>,
    /// The edge's `Ferry-Variant` answer (rollout cohorts, `bbr=treatment, …`) of the
    /// (last) session: empty without rollouts, as over QUIC; `null` before any answer.
    pub variant: Option<String>,
    /// The treatment's `Ferry-Client-Flag`, if any.
    pub client_flag: Option<String>,
    /// New sessions started after the first (with failover).
    pub reconnects: u64,
    /// Every session, with failover.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<WhepLeg>,
    #[serde(skip)]
    pub latency: Samples,
    #[serde(skip)]
    first_frame_at: Option<Instant>,
    #[serde(skip)]
    last_frame_at: Option<Instant>,
}

/// Watches until the stream ends (without failover), `duration` passes or `cancel`
/// fires.
pub async fn watch_whep(opts: WhepOptions, cancel: CancellationToken) -> Result<WhepStats> {
    let Some(failover) = opts.failover.clone() else {
        return watch_once(&opts, &opts.url, None, &cancel).await;
    };
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut total = WhepStats::default();
    let (mut failures, mut retry) = (0u32, RETRY_MIN);
    for attempt in 0usize.. {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if cancel.is_cancelled() || remaining.is_some_and(|r| r.is_zero()) {
            total.ended = if cancel.is_cancelled() { "stopped" } else { "duration reached" }.into();
            break;
        }
        let url = match attempt.checked_sub(1) {
            None => opts.url.clone(),
            Some(i) => failover.urls.get(i % failover.urls.len().max(1)).cloned().unwrap_or(opts.url.clone()),
        };
        // A routed viewer does not wait long for an edge that answered but never
        // connects (it died after answering): twice the stall timeout, at least 3 s.
        let connect_timeout =
            opts.connect_timeout.min((failover.stall_timeout * 2).max(FAILOVER_CONNECT_MIN));
        let leg_opts = WhepOptions { duration: remaining, connect_timeout, ..opts.clone() };
        let (leg, ended) = match watch_once(&leg_opts, &url, Some(failover.stall_timeout), &cancel).await {
            Ok(stats) => {
                let gap_ms = match (total.last_frame_at, stats.first_frame_at) {
                    (Some(last), Some(first)) => {
                        Some(first.saturating_duration_since(last).as_secs_f64() * 1e3)
                    }
                    _ => None,
                };
                let leg = WhepLeg {
                    url: stats.url.clone().unwrap_or(url),
                    frames: stats.frames,
                    ended: stats.ended.clone(),
                    gap_ms,
                    ended_unix_ms: ferry_net::time::unix_ms(),
                };
                let ended = stats.ended.clone();
                absorb(&mut total, stats);
                (leg, ended)
            }
            Err(e) => {
                let leg = WhepLeg {
                    url,
                    frames: 0,
                    ended: e.to_string(),
                    gap_ms: None,
                    ended_unix_ms: ferry_net::time::unix_ms(),
                };
                (leg, String::new())
            }
        };
        tracing::info!(url = %leg.url, frames = leg.frames, ended = %leg.ended, "WHEP session ended");
        if leg.frames > 0 {
            (failures, retry) = (0, RETRY_MIN);
        } else {
            failures += 1;
        }
        total.legs.push(leg);
        if ended == "stopped" || ended == "duration reached" {
            total.ended = ended;
            break;
        }
        if failover.max_failures.is_some_and(|max| failures >= max) {
            return Err(other(format!("gave up after {failures} sessions in a row without a frame")));
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
    total.reconnects = total.legs.len().saturating_sub(1) as u64;
    total.duration_s = started.elapsed().as_secs_f64();
    total.latency_ms = total.latency.summary();
    Ok(total)
}

/// Adds one leg's numbers to the totals.
fn absorb(total: &mut WhepStats, leg: WhepStats) {
    total.codec = total.codec.take().or(leg.codec);
    total.frames += leg.frames;
    total.keyframes += leg.keyframes;
    total.bytes += leg.bytes;
    total.video_packets += leg.video_packets;
    total.audio_packets += leg.audio_packets;
    total.lost_frames += leg.lost_frames;
    total.keyframe_requests += leg.keyframe_requests;
    total.first_frame_ms = total.first_frame_ms.or(leg.first_frame_ms);
    total.latency.extend(&leg.latency);
    total.first_frame_at = total.first_frame_at.or(leg.first_frame_at);
    total.last_frame_at = leg.last_frame_at.or(total.last_frame_at);
    total.url = leg.url.or(total.url.take());
    total.variant = leg.variant.or(total.variant.take());
    total.client_flag = leg.client_flag.or(total.client_flag.take());
}

/// One WHEP session at `url`; `stall`: end it once frames stop for that long.
async fn watch_once(
    opts: &WhepOptions,
    url: &str,
    stall: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<WhepStats> {
    let started = Instant::now();
    let codecs: Vec<Codec> = engine::CODECS.iter().map(|(c, _)| *c).collect();
    let (pc, mut events) =
        engine::build_client(opts.bind_ip, &codecs).await.map_err(peer("building the peer connection"))?;
    let result = session(opts, url, stall, &pc, &mut events, cancel, started).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    let mut stats = result?;
    stats.duration_s = started.elapsed().as_secs_f64();
    stats.latency_ms = stats.latency.summary();
    Ok(stats)
}

/// A `webrtc` crate failure while `what`, with the crate's error as the source.
pub(crate) fn peer(what: &'static str) -> impl FnOnce(webrtc::error::Error) -> Error {
    move |source| Error::Peer { what, source }
}

pub(crate) fn other(e: impl std::fmt::Display) -> Error {
    Error::WebRtc(e.to_string())
}

/// How often a session checks for a stall.
const STALL_CHECK: Duration = Duration::from_millis(100);

async fn session(
    opts: &WhepOptions,
    url: &str,
    stall: Option<Duration>,
    pc: &Arc<dyn PeerConnection>,
    events: &mut engine::Events,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<WhepStats> {
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        let init =
            RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        pc.add_transceiver_from_kind(kind, Some(init))
            .await
            .map_err(peer("adding a receiving transceiver"))?;
    }
    let offer = pc.create_offer(None).await.map_err(peer("creating the offer"))?;
    pc.set_local_description(offer).await.map_err(peer("applying the offer"))?;
    engine::gathered(events, Duration::from_secs(2)).await;
    let offer = pc.local_description().await.ok_or_else(|| other("no local offer"))?.sdp;
    // A viewer failing over waits for the answer no longer than for the connection
    // (the edge may be stuck pulling the stream from a dead upstream).
    let signalling = match stall {
        Some(_) => opts.connect_timeout.min(SIGNALLING_TIMEOUT),
        None => SIGNALLING_TIMEOUT,
    };
    let answered =
        post_offer(&opts.http, url, opts.token.as_deref(), opts.session_id.as_deref(), &offer, signalling)
            .await?;
    let Answered { url, location, sdp: answer, variant, client_flag } = answered;
    let answer = RTCSessionDescription::answer(answer).map_err(peer("reading the edge's answer"))?;
    pc.set_remote_description(answer).await.map_err(peer("applying the edge's answer"))?;

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let connect_by = tokio::time::Instant::now() + opts.connect_timeout;
    let mut connected = false;
    let mut tracks: JoinSet<WhepStats> = JoinSet::new();
    let stop = cancel.child_token();
    let mut stats = WhepStats::default();
    // Frames seen by all tracks, and when that count last moved.
    let progress = Arc::new(AtomicU64::new(0));
    let (mut seen, mut moved_at) = (0u64, Instant::now());
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "stopped",
            _ = sleep_until_opt(deadline) => break "duration reached",
            _ = tokio::time::sleep_until(connect_by), if !connected => break "connect timeout",
            _ = stall_check.tick(), if stall.is_some() => {
                let now_seen = progress.load(Ordering::Relaxed);
                if now_seen != seen {
                    (seen, moved_at) = (now_seen, Instant::now());
                }
                // Until the session connects the connect timeout applies; once it
                // has, the first frame (the edge starts at a keyframe) gets twice the
                // stall timeout, later frames the stall timeout.
                let limit = match (seen, connected, stall) {
                    (_, false, _) | (_, _, None) => opts.connect_timeout,
                    (0, true, Some(stall)) => stall * 2,
                    (_, true, Some(stall)) => stall,
                };
                if moved_at.elapsed() > limit {
                    break "stalled";
                }
            }
            changed = events.state.changed() => {
                if changed.is_err() { break "closed"; }
                match *events.state.borrow_and_update() {
                    RTCPeerConnectionState::Connected => {
                        if !connected && seen == 0 {
                            moved_at = Instant::now();
                        }
                        connected = true;
                    }
                    RTCPeerConnectionState::Failed => break "ice failed",
                    RTCPeerConnectionState::Closed => break "closed by the edge",
                    _ => {}
                }
            }
            Some(track) = events.tracks.recv() => {
                tracks.spawn(read_track(track, stop.child_token(), started, Arc::clone(&progress)));
            }
            Some(done) = tracks.join_next(), if !tracks.is_empty() => {
                if let Ok(track_stats) = done { merge(&mut stats, track_stats); }
                if tracks.is_empty() {
                    break if cancel.is_cancelled() { "stopped" } else { "stream ended" };
                }
            }
        }
    };
    stop.cancel();
    while let Some(done) = tracks.join_next().await {
        if let Ok(track_stats) = done {
            merge(&mut stats, track_stats);
        }
    }
    // Tell the edge at once instead of letting ICE time out; best effort, and not
    // to an edge that is gone or already closed the session.
    let edge_gone = matches!(ended, "stalled" | "ice failed" | "closed by the edge");
    if let (Some(location), false) = (location, edge_gone) {
        let _ = tokio::time::timeout(Duration::from_secs(2), delete(&opts.http, &location)).await;
    }
    stats.ended = ended.to_owned();
    stats.url = Some(url);
    // An edge without rollouts sends no Ferry-Variant: the same empty variant a QUIC
    // session reports.
    stats.variant = Some(variant.unwrap_or_default());
    stats.client_flag = client_flag;
    Ok(stats)
}

fn merge(into: &mut WhepStats, from: WhepStats) {
    into.codec = into.codec.take().or(from.codec);
    into.frames += from.frames;
    into.keyframes += from.keyframes;
    into.bytes += from.bytes;
    into.video_packets += from.video_packets;
    into.audio_packets += from.audio_packets;
    into.lost_frames += from.lost_frames;
    into.keyframe_requests += from.keyframe_requests;
    into.first_frame_ms = match (into.first_frame_ms, from.first_frame_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.latency.extend(&from.latency);
    into.first_frame_at = match (into.first_frame_at, from.first_frame_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.last_frame_at = into.last_frame_at.max(from.last_frame_at);
}

async fn read_track(
    track: Arc<dyn TrackRemote>,
    stop: CancellationToken,
    started: Instant,
    progress: Arc<AtomicU64>,
) -> WhepStats {
    let mut stats = WhepStats::default();
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    if track.kind().await == RtpCodecKind::Audio {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = track.poll() => event,
            };
            match event {
                Some(TrackRemoteEvent::OnRtpPacket(_)) => {
                    stats.audio_packets += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Some(TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError) | None => break,
                Some(_) => {}
            }
        }
        return stats;
    }
    let codec = match track.codec(ssrc).await {
        Some(c) => engine::codec_of_mime(&c.mime_type),
        None => None,
    };
    stats.codec = codec.map(|c| format!("{c:?}"));
    let Some(mut assembler) = codec.and_then(FrameAssembler::new) else { return stats };
    let mut throttle = KeyframeThrottle::default();
    let mut lost = 0;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = track.poll() => event,
        };
        let packet = match event {
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => packet,
            Some(TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError) | None => break,
            Some(_) => continue,
        };
        stats.video_packets += 1;
        let frame = assembler.push(&packet);
        if assembler.lost_frames() != lost {
            lost = assembler.lost_frames();
            // Cannot decode until a keyframe: ask, like a browser would (1/s at most).
            if throttle.request(Instant::now()) {
                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                if track.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                    stats.keyframe_requests += 1;
                }
            }
        }
        let Some(frame) = frame else { continue };
        stats.frames += 1;
        progress.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        stats.first_frame_at = stats.first_frame_at.or(Some(now));
        stats.last_frame_at = Some(now);
        stats.bytes += frame.payload.len() as u64;
        if frame.keyframe {
            stats.keyframes += 1;
        }
        if stats.first_frame_ms.is_none() {
            stats.first_frame_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
        if stats.keyframes >= 2 {
            if let Some(stamp) = parse_vp8_framed(&frame.payload) {
                stats.latency.push(unix_micros_now().saturating_sub(stamp.sent_at_unix_micros));
            }
        }
    }
    stats.lost_frames = assembler.lost_frames();
    stats
}

/// Largest answer accepted.
const MAX_ANSWER: usize = 256 * 1024;
/// Redirects followed (routing answers 307).
const MAX_REDIRECTS: usize = 4;
/// How long one signalling exchange may take.
pub(crate) const SIGNALLING_TIMEOUT: Duration = Duration::from_secs(15);

/// An edge's 201 to an offer.
pub(crate) struct Answered {
    /// The URL that answered (after redirects).
    pub url: String,
    /// The session resource to `DELETE`.
    pub location: Option<String>,
    pub sdp: String,
    pub variant: Option<String>,
    pub client_flag: Option<String>,
}

/// POSTs the offer (WHEP or WHIP); follows 307/308.
pub(crate) async fn post_offer(
    http: &HttpClient,
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    offer: &str,
    timeout: Duration,
) -> Result<Answered> {
    let http = http.clone().with_max_response(MAX_ANSWER);
    let mut url = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = http
            .post(&url)
            .bearer(token.unwrap_or_default())
            .body("application/sdp", offer.to_owned())
            .timeout(timeout);
        if let Some(session) = session {
            request = request.header("ferry-session", session);
        }
        let response = request.send().await?;
        match response.status {
            201 => {
                let location = response.header("location").map(|l| resolve_location(&url, l));
                let header = |name: &str| response.header(name).map(str::to_owned);
                let (variant, client_flag) = (header("ferry-variant"), header("ferry-client-flag"));
                return Ok(Answered { url, location, sdp: response.text(), variant, client_flag });
            }
            307 | 308 => {
                let next = response.header("location").ok_or_else(|| other("redirect without Location"))?;
                url = resolve_location(&url, next);
            }
            status => {
                return Err(Error::Refused { url, status, body: response.text().trim().to_owned() });
            }
        }
    }
    Err(other(format!("{url}: too many redirects")))
}

pub(crate) async fn delete(http: &HttpClient, location: &str) -> Result<()> {
    http.request(Method::DELETE, location).timeout(Duration::from_secs(2)).send().await?;
    Ok(())
}
