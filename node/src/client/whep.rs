//! Watching over WHEP with the webrtc crate: `ferry watch --whep URL` and the WebRTC
//! viewers of `ferry bench fanout --transport webrtc`.
//!
//! The viewer behaves like a browser where it matters to the edge: it reassembles
//! frames, and asks for a keyframe (PLI, at most once per second) whenever it lost
//! part of a frame and cannot decode until the next keyframe.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::Codec;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::stats::{LatencySummary, Samples};
use crate::media::synthetic::{parse_vp8_framed, unix_micros_now};
use crate::track::KeyframeThrottle;
use crate::webrtc::engine;
use crate::webrtc::rtp::FrameAssembler;
use crate::{Error, Result};

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
}

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
    #[serde(skip)]
    pub latency: Samples,
}

/// Watches until the stream ends, `duration` passes or `cancel` fires.
pub async fn watch_whep(opts: WhepOptions, cancel: CancellationToken) -> Result<WhepStats> {
    let started = Instant::now();
    let codecs: Vec<Codec> = engine::CODECS.iter().map(|(c, _)| *c).collect();
    let (pc, mut events) = engine::build_client(opts.bind_ip, &codecs).await.map_err(other)?;
    let result = session(&opts, &pc, &mut events, &cancel, started).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    let mut stats = result?;
    stats.duration_s = started.elapsed().as_secs_f64();
    stats.latency_ms = stats.latency.summary();
    Ok(stats)
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::WebRtc(e.to_string())
}

async fn session(
    opts: &WhepOptions,
    pc: &Arc<dyn PeerConnection>,
    events: &mut engine::Events,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<WhepStats> {
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        let init =
            RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        pc.add_transceiver_from_kind(kind, Some(init)).await.map_err(other)?;
    }
    let offer = pc.create_offer(None).await.map_err(other)?;
    pc.set_local_description(offer).await.map_err(other)?;
    engine::gathered(events, Duration::from_secs(2)).await;
    let offer = pc.local_description().await.ok_or_else(|| other("no local offer"))?.sdp;
    let (location, answer) = post_offer(&opts.url, opts.token.as_deref(), &offer).await?;
    let answer = RTCSessionDescription::answer(answer).map_err(other)?;
    pc.set_remote_description(answer).await.map_err(other)?;

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let connect_by = tokio::time::Instant::now() + opts.connect_timeout;
    let mut connected = false;
    let mut tracks: JoinSet<WhepStats> = JoinSet::new();
    let stop = cancel.child_token();
    let mut stats = WhepStats::default();
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "stopped",
            _ = sleep_until_opt(deadline) => break "duration reached",
            _ = tokio::time::sleep_until(connect_by), if !connected => break "connect timeout",
            changed = events.state.changed() => {
                if changed.is_err() { break "closed"; }
                match *events.state.borrow_and_update() {
                    RTCPeerConnectionState::Connected => connected = true,
                    RTCPeerConnectionState::Failed => break "ice failed",
                    RTCPeerConnectionState::Closed => break "closed by the edge",
                    _ => {}
                }
            }
            Some(track) = events.tracks.recv() => {
                tracks.spawn(read_track(track, stop.child_token(), started));
            }
            Some(done) = tracks.join_next(), if !tracks.is_empty() => {
                if let Ok(track_stats) = done { merge(&mut stats, track_stats); }
                if tracks.is_empty() { break "stream ended"; }
            }
        }
    };
    stop.cancel();
    while let Some(done) = tracks.join_next().await {
        if let Ok(track_stats) = done {
            merge(&mut stats, track_stats);
        }
    }
    if let Some(location) = location {
        // Tell the edge at once instead of letting ICE time out; best effort.
        let _ = tokio::time::timeout(Duration::from_secs(2), delete(&opts.url, &location)).await;
    }
    stats.ended = ended.to_owned();
    Ok(stats)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
}

async fn read_track(track: Arc<dyn TrackRemote>, stop: CancellationToken, started: Instant) -> WhepStats {
    let mut stats = WhepStats::default();
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    if track.kind().await == RtpCodecKind::Audio {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = track.poll() => event,
            };
            match event {
                Some(TrackRemoteEvent::OnRtpPacket(_)) => stats.audio_packets += 1,
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

/// POSTs the offer; follows 307/308; returns (Location, answer SDP).
async fn post_offer(url: &str, token: Option<&str>, offer: &str) -> Result<(Option<String>, String)> {
    let mut url = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let response = http(&url, "POST", token, Some(offer)).await?;
        match response.status {
            201 => {
                let location = response.header("location").map(|l| absolute(&url, l));
                return Ok((location, response.body));
            }
            307 | 308 => {
                let next = response.header("location").ok_or_else(|| other("redirect without Location"))?;
                url = absolute(&url, next);
            }
            status => {
                return Err(Error::WebRtc(format!("{url}: HTTP {status}: {}", response.body.trim())));
            }
        }
    }
    Err(other(format!("{url}: too many redirects")))
}

async fn delete(base: &str, location: &str) -> Result<()> {
    http(&absolute(base, location), "DELETE", None, None).await.map(|_| ())
}

/// `location` resolved against `base` (`http://host:port/...`).
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    match split_url(base) {
        Ok((authority, _)) => format!("http://{authority}{location}"),
        Err(_) => location.to_owned(),
    }
}

fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| other(format!("{url}: only http:// URLs")))?;
    Ok(match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    })
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, bounded in size and time.
async fn http(url: &str, method: &str, token: Option<&str>, sdp: Option<&str>) -> Result<HttpResponse> {
    let (authority, path) = split_url(url)?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let mut stream = BufReader::new(stream);
        let body = sdp.unwrap_or("");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if sdp.is_some() {
            head.push_str("Content-Type: application/sdp\r\n");
        }
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.get_mut().write_all(head.as_bytes()).await?;
        stream.get_mut().write_all(body.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            if headers.len() > 100 {
                return Err(other("too many response headers"));
            }
        }
        let mut body = Vec::new();
        (&mut stream).take(MAX_ANSWER as u64).read_to_end(&mut body).await?;
        Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| other(format!("{url}: no answer within 15 s")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request_url() {
        assert_eq!(
            absolute("http://127.0.0.1:8080/whep/live/a", "/sessions/whep/x"),
            "http://127.0.0.1:8080/sessions/whep/x"
        );
        assert_eq!(absolute("http://a:1/whep/s", "http://b:2/whep/s"), "http://b:2/whep/s");
        assert!(split_url("https://a/b").is_err());
    }
}
