//! Publishing over WHIP with the webrtc crate: `ferry publish --whip URL`.
//!
//! One sendonly VP8 video track, packetized like the edge's WHEP egress
//! ([`FramePacketizer`]): the synthetic stream labelled VP8 (`--synthetic
//! --synthetic-vp8`) or a VP8 IVF file. Keyframe requests (PLI/FIR) from the edge are
//! counted, and the synthetic source answers them with a keyframe at once (an IVF file
//! cannot: its next keyframe comes when it comes).
//!
//! Like the WHEP viewer ([`crate::whep`]), the publisher moves on by itself: when a
//! session ends early (it never connected, ICE failed, it stayed disconnected for
//! [`WhipFailover::disconnect_grace`], the edge closed it) it posts a new offer — to
//! the control plane's `/whip/{stream}` when failover URLs are given, else to the
//! first URL again (a voter's URL routes again). Every session is a [`WhipLeg`]. The
//! media goes on across legs: the synthetic stream's sequence numbers and timestamps
//! continue where the last leg stopped (none are skipped: viewers count loss by
//! them), and an IVF file goes on from the frame it had reached, skipping to its next
//! keyframe. Every leg starts with a keyframe.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_net::http::HttpClient;
use ferry_proto::{Codec, Timebase};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use crate::publish::{open_ivf, BoxedRead, Source};
use crate::routed::BUSY_PATIENCE;
use crate::watch::sleep_until_opt;
use crate::whep::{delete, other, peer, post_offer, Answered, RETRY_MAX, RETRY_MIN, SIGNALLING_TIMEOUT};
use crate::{Error, Result};
use ferry_media::ivf::{IvfFrame, IvfReader};
use ferry_media::keyframe::is_keyframe;
use ferry_media::peer as engine;
use ferry_media::rtp::{clock_rate, FramePacketizer};
use ferry_media::synthetic::{unix_micros_now, vp8_framed, SyntheticSource};

/// How to publish.
#[derive(Debug, Clone)]
pub struct WhipOptions {
    /// `http://HOST:PORT/whip/STREAM` (an edge, or a voter that redirects to one).
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// [`Source::SyntheticVp8`] or a VP8 [`Source::Ivf`].
    pub source: Source,
    /// Stop after this long (from the start, across legs).
    pub duration: Option<Duration>,
    /// Local address for the media socket.
    pub bind_ip: IpAddr,
    /// Give up on a session whose ICE/DTLS is not up by then.
    pub connect_timeout: Duration,
    pub failover: WhipFailover,
    /// Sent as `Ferry-Session`: the stable id rollouts place this publisher by.
    pub session_id: Option<String>,
    /// Largest IVF frame accepted.
    pub max_frame: usize,
    /// The client signalling goes through.
    pub http: HttpClient,
}

/// How a WHIP publisher starts again when a session fails.
#[derive(Debug, Clone)]
pub struct WhipFailover {
    /// WHIP URLs for the next sessions, tried in turn (the control plane's
    /// `/whip/{stream}`); empty: the first URL again.
    pub urls: Vec<String>,
    /// A connected session that stays disconnected this long counts as failed.
    pub disconnect_grace: Duration,
    /// Give up after this many sessions in a row end without sending a frame
    /// (None: never).
    pub max_failures: Option<u32>,
}

/// One session of a WHIP publisher.
#[derive(Debug, Clone, Serialize)]
pub struct WhipLeg {
    /// Where the session ran (the edge's WHIP URL, after redirects).
    pub url: String,
    pub frames: u64,
    pub ended: String,
    /// Wall-clock Unix milliseconds when the leg ended.
    pub ended_unix_ms: u64,
}

/// What a WHIP publisher did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WhipStats {
    /// The negotiated codec (`Vp8`), once a session was answered.
    pub codec: Option<String>,
    /// Frames sent.
    pub frames: u64,
    pub keyframes: u64,
    /// Payload bytes of the frames sent.
    pub bytes: u64,
    /// RTP packets sent.
    pub packets: u64,
    /// Keyframe requests (PLI/FIR) received from the edge.
    pub keyframe_requests: u64,
    /// Frames sent later than one frame interval after their schedule.
    pub late_frames: u64,
    /// Synthetic sequence numbers of the first and last frame sent (synthetic sources
    /// only); they continue across legs.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// From the start (building the first offer) to the first session connected.
    pub connect_ms: Option<f64>,
    pub duration_s: f64,
    /// Why publishing ended.
    pub ended: String,
    /// The edge's WHIP URL of the (last) session, after redirects.
    pub url: Option<String>,
    /// The edge's `Ferry-Variant` answer of the (last) session (empty without
    /// rollouts); `null` before any answer.
    pub variant: Option<String>,
    /// The treatment's `Ferry-Client-Flag`, if any.
    pub client_flag: Option<String>,
    /// New sessions started after the first.
    pub reconnects: u64,
    /// Every session.
    pub legs: Vec<WhipLeg>,
    /// When the session connected.
    #[serde(skip)]
    connected_at: Option<std::time::Instant>,
}

/// RTP packet budget: leaves room for SRTP, extensions and tunnels under 1500 (as
/// the edge's WHEP egress).
const MTU: usize = 1200;
/// How a leg that ended on its own terms ends the whole publisher.
const FINAL: [&str; 3] = ["stopped", "duration reached", "end of input"];

/// Publishes until the source ends, `duration` passes, `cancel` fires, or
/// `max_failures` sessions in a row fail without sending a frame.
pub async fn publish_whip(opts: WhipOptions, cancel: CancellationToken) -> Result<WhipStats> {
    let mut media = Media::open(&opts.source, opts.max_frame).await?;
    let started = std::time::Instant::now();
    let deadline = opts.duration.map(|d| Instant::now() + d);
    // One RTP timestamp offset for every leg: timestamps continue like the media does.
    let timestamp_offset = random_u32()?;
    let failover = &opts.failover;
    let mut total = WhipStats::default();
    let (mut failures, mut retry, mut busy_since) = (0u32, RETRY_MIN, None);
    for attempt in 0usize.. {
        if cancel.is_cancelled() || deadline.is_some_and(|d| d <= Instant::now()) {
            total.ended = if cancel.is_cancelled() { "stopped" } else { "duration reached" }.into();
            break;
        }
        let url = match (attempt.checked_sub(1), failover.urls.is_empty()) {
            (Some(i), false) => {
                failover.urls.get(i % failover.urls.len()).cloned().unwrap_or(opts.url.clone())
            }
            _ => opts.url.clone(),
        };
        let leg = Leg { opts: &opts, url: &url, deadline, timestamp_offset, cancel: &cancel };
        let (leg, ended) = match publish_once(leg, &mut media).await {
            Ok(stats) => {
                busy_since = None;
                if total.connect_ms.is_none() {
                    total.connect_ms = stats
                        .connected_at
                        .map(|at| at.saturating_duration_since(started).as_secs_f64() * 1e3);
                }
                let leg = WhipLeg {
                    url: stats.url.clone().unwrap_or(url),
                    frames: stats.frames,
                    ended: stats.ended.clone(),
                    ended_unix_ms: ferry_net::time::unix_ms(),
                };
                let ended = stats.ended.clone();
                absorb(&mut total, stats);
                (leg, ended)
            }
            Err(e) => {
                if is_final(&e, total.frames > 0, &mut busy_since) {
                    return Err(e);
                }
                let leg = WhipLeg {
                    url,
                    frames: 0,
                    ended: ferry_net::Chain(&e).to_string(),
                    ended_unix_ms: ferry_net::time::unix_ms(),
                };
                (leg, String::new())
            }
        };
        tracing::info!(url = %leg.url, frames = leg.frames, ended = %leg.ended, "WHIP session ended");
        if leg.frames > 0 {
            (failures, retry) = (0, RETRY_MIN);
        } else {
            failures += 1;
        }
        let last = leg.ended.clone();
        total.legs.push(leg);
        if FINAL.contains(&ended.as_str()) {
            total.ended = ended;
            break;
        }
        if failover.max_failures.is_some_and(|max| failures >= max) {
            return Err(other(format!(
                "gave up after {failures} sessions in a row without sending a frame (the last: {last})"
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
    total.reconnects = total.legs.len().saturating_sub(1) as u64;
    total.duration_s = started.elapsed().as_secs_f64();
    Ok(total)
}

/// Whether a failed session ends the publisher: its media failed, or the endpoint
/// refused in a way another offer cannot change (4xx: a bad token, a bad offer, ...).
/// A busy stream (409) is final before this publisher has sent a frame; after that
/// it may be its own previous session, still held by the edge or by gossip about a
/// dead edge, so it is tried again for [`BUSY_PATIENCE`].
fn is_final(e: &Error, published: bool, busy_since: &mut Option<std::time::Instant>) -> bool {
    match e {
        Error::Media(_) | Error::Io { .. } | Error::Config(_) => return true,
        _ => {}
    }
    match e.http_status() {
        Some(409) if published => {
            busy_since.get_or_insert_with(std::time::Instant::now).elapsed() >= BUSY_PATIENCE
        }
        Some(408 | 429) | None => false,
        Some(status) => (400..500).contains(&status),
    }
}

/// Adds one leg's numbers to the totals.
fn absorb(total: &mut WhipStats, leg: WhipStats) {
    total.codec = total.codec.take().or(leg.codec);
    total.frames += leg.frames;
    total.keyframes += leg.keyframes;
    total.bytes += leg.bytes;
    total.packets += leg.packets;
    total.keyframe_requests += leg.keyframe_requests;
    total.late_frames += leg.late_frames;
    total.first_seq = total.first_seq.or(leg.first_seq);
    total.last_seq = leg.last_seq.or(total.last_seq);
    total.url = leg.url.or(total.url.take());
    total.variant = leg.variant.or(total.variant.take());
    total.client_flag = leg.client_flag.or(total.client_flag.take());
}

/// What one session needs besides the media.
#[derive(Clone, Copy)]
struct Leg<'a> {
    opts: &'a WhipOptions,
    url: &'a str,
    deadline: Option<Instant>,
    timestamp_offset: u32,
    cancel: &'a CancellationToken,
}

/// One WHIP session at `leg.url`.
async fn publish_once(leg: Leg<'_>, media: &mut Media) -> Result<WhipStats> {
    let started = std::time::Instant::now();
    let (pc, mut events) = engine::build_client(leg.opts.bind_ip, &[Codec::Vp8])
        .await
        .map_err(peer("building the peer connection"))?;
    let result = session(leg, &pc, &mut events, media).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    let mut stats = result?;
    stats.duration_s = started.elapsed().as_secs_f64();
    Ok(stats)
}

fn random_u32() -> Result<u32> {
    ferry_net::random::u32().map_err(|e| other(format!("the system random generator failed: {e}")))
}

async fn session(
    leg: Leg<'_>,
    pc: &Arc<dyn PeerConnection>,
    events: &mut engine::Events,
    media: &mut Media,
) -> Result<WhipStats> {
    let Leg { opts, url, cancel, .. } = leg;
    let ssrc = random_u32()?;
    let codec = engine::rtp_codec(Codec::Vp8).ok_or_else(|| other("VP8 is not a WebRTC codec here"))?;
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
        codec,
        ..Default::default()
    };
    let track = MediaStreamTrack::new(
        "ferry".into(),
        "video".into(),
        "video".into(),
        RtpCodecKind::Video,
        vec![encoding],
    );
    let local = Arc::new(TrackLocalStaticRTP::new(track));
    let init =
        RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, ..Default::default() };
    let transceiver = pc
        .add_transceiver_from_track(Arc::clone(&local) as Arc<dyn TrackLocal>, Some(init))
        .await
        .map_err(peer("adding the video track"))?;
    let offer = pc.create_offer(None).await.map_err(peer("creating the offer"))?;
    pc.set_local_description(offer).await.map_err(peer("applying the offer"))?;
    engine::gathered(events, Duration::from_secs(2)).await;
    let offer = pc.local_description().await.ok_or_else(|| other("no local offer"))?.sdp;
    let session_id = opts.session_id.as_deref();
    let answered = tokio::select! {
        // The edge drops a session that never connects by itself.
        _ = cancel.cancelled() => return Ok(WhipStats { ended: "stopped".into(), ..WhipStats::default() }),
        answered = post_offer(&opts.http, url, opts.token.as_deref(), session_id, &offer, SIGNALLING_TIMEOUT) => answered?,
    };
    let Answered { url, location, sdp: answer, variant, client_flag } = answered;
    let mut stats = WhipStats {
        url: Some(url.clone()),
        // An edge without rollouts sends no Ferry-Variant: the same empty variant a
        // QUIC session reports.
        variant: Some(variant.unwrap_or_default()),
        client_flag,
        ..WhipStats::default()
    };
    let result = stream(leg, pc, events, media, &local, &transceiver, answer, ssrc, &mut stats).await;
    // Tell the edge at once instead of letting ICE time out (best effort, bounded):
    // until it lets go of this session the stream is busy there, also for this
    // publisher's next session. Even after ICE failed: the edge may be alive.
    let closed_by_edge = matches!(result, Ok("closed by the edge"));
    if let (Some(location), false) = (location, closed_by_edge) {
        let _ = tokio::time::timeout(Duration::from_secs(2), delete(&opts.http, &location)).await;
    }
    stats.ended = result?.to_owned();
    Ok(stats)
}

/// Applies the answer, waits for the connection and sends frames until the leg ends;
/// returns why it ended.
#[allow(clippy::too_many_arguments)] // One session's pieces, each used once.
async fn stream(
    leg: Leg<'_>,
    pc: &Arc<dyn PeerConnection>,
    events: &mut engine::Events,
    media: &mut Media,
    local: &TrackLocalStaticRTP,
    transceiver: &Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>,
    answer: String,
    ssrc: u32,
    stats: &mut WhipStats,
) -> Result<&'static str> {
    let Leg { opts, deadline, timestamp_offset, cancel, .. } = leg;
    let answer = RTCSessionDescription::answer(answer).map_err(peer("reading the edge's answer"))?;
    pc.set_remote_description(answer).await.map_err(peer("applying the edge's answer"))?;
    let payload_type = negotiated_payload_type(transceiver).await?;
    stats.codec = Some(format!("{:?}", Codec::Vp8));
    let rate = clock_rate(Codec::Vp8).ok_or_else(|| other("VP8 has no RTP clock rate"))?;
    let first_sequence = (random_u32()? & 0x7fff) as u16;
    let mut packetizer = FramePacketizer::new(
        Codec::Vp8,
        ssrc,
        payload_type,
        media.timebase(),
        rate,
        MTU,
        first_sequence,
        timestamp_offset,
    )
    .ok_or_else(|| other("VP8 cannot be packetized with these settings"))?;

    let connect_by = Instant::now() + opts.connect_timeout;
    let grace = opts.failover.disconnect_grace;
    let mut connected = false;
    let mut disconnected_at: Option<Instant> = None;
    let mut feedback = true;
    loop {
        // An IVF frame is read to completion before anything else may interrupt it
        // (the reader is not cancel safe); only ending the publisher may.
        if connected && !media.ready() {
            let more = tokio::select! {
                _ = cancel.cancelled() => return Ok("stopped"),
                _ = sleep_until_opt(deadline) => return Ok("duration reached"),
                more = media.fill() => more?,
            };
            if !more {
                return Ok("end of input");
            }
        }
        let due = connected.then(|| media.due());
        tokio::select! {
            _ = cancel.cancelled() => return Ok("stopped"),
            _ = sleep_until_opt(deadline) => return Ok("duration reached"),
            _ = tokio::time::sleep_until(connect_by), if !connected => return Ok("connect timeout"),
            _ = sleep_until_opt(disconnected_at.map(|at| at + grace)), if disconnected_at.is_some() => {
                return Ok("disconnected");
            }
            changed = events.state.changed() => {
                if changed.is_err() {
                    return Ok("closed");
                }
                match *events.state.borrow_and_update() {
                    RTCPeerConnectionState::Connected => {
                        disconnected_at = None;
                        if !connected {
                            connected = true;
                            stats.connected_at = Some(std::time::Instant::now());
                            media.start_leg();
                        }
                    }
                    RTCPeerConnectionState::Disconnected => {
                        disconnected_at.get_or_insert_with(Instant::now);
                    }
                    RTCPeerConnectionState::Failed => return Ok("ice failed"),
                    RTCPeerConnectionState::Closed => return Ok("closed by the edge"),
                    _ => {}
                }
            }
            event = local.poll(), if feedback => match event {
                Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                    if engine::loss_feedback(&packets) == Some(engine::LossFeedback::KeyframeRequest) {
                        stats.keyframe_requests += 1;
                        media.want_keyframe();
                    }
                }
                Some(_) => {}
                None => feedback = false,
            },
            _ = sleep_until_opt(due), if connected => {
                let Some(frame) = media.take() else { continue };
                if due.is_some_and(|due| Instant::now().saturating_duration_since(due) > media.late_after()) {
                    stats.late_frames += 1;
                }
                let packets = match packetizer.packetize(frame.pts, &frame.payload) {
                    Ok(packets) => packets,
                    Err(e) => {
                        tracing::debug!(error = %e, "frame not packetizable; skipped");
                        continue;
                    }
                };
                for packet in packets {
                    if local.write_rtp(packet).await.is_err() {
                        return Ok("write failed");
                    }
                    stats.packets += 1;
                }
                stats.frames += 1;
                stats.bytes += frame.payload.len() as u64;
                stats.keyframes += u64::from(frame.keyframe);
                if let Some(seq) = frame.seq {
                    stats.first_seq.get_or_insert(seq);
                    stats.last_seq = Some(seq);
                }
            }
        }
    }
}

/// The payload type the edge accepted VP8 under (the one offered, unless it says
/// otherwise).
async fn negotiated_payload_type(
    transceiver: &Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>,
) -> Result<u8> {
    let offered = engine::CODECS.iter().find(|(c, _)| *c == Codec::Vp8).map(|(_, pt)| *pt);
    let sender = transceiver.sender().await.map_err(peer("reading the RTP sender"))?;
    let negotiated = match sender {
        Some(sender) => {
            let params = sender.get_parameters().await.map_err(peer("reading the negotiated codec"))?;
            let mime = engine::mime_type(Codec::Vp8).unwrap_or_default();
            params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                .map(|c| c.payload_type)
        }
        None => None,
    };
    negotiated.or(offered).ok_or_else(|| other("the edge did not accept VP8"))
}

/// One frame to send.
#[derive(Debug)]
struct Frame {
    /// In the media's timebase.
    pts: u64,
    keyframe: bool,
    payload: Bytes,
    /// The synthetic sequence number.
    seq: Option<u64>,
}

/// Where frames come from, kept across legs.
enum Media {
    Synthetic {
        source: SyntheticSource,
        interval: Duration,
        /// When this leg's first frame was due, and frames sent since.
        leg_start: Instant,
        sent_in_leg: u32,
        keyframe_wanted: bool,
    },
    Ivf {
        reader: IvfReader<BoxedRead>,
        timebase: Timebase,
        /// Read, not yet sent.
        pending: Option<IvfFrame>,
        /// This leg's first frame: when it was sent and its time in microseconds.
        anchor: Option<(Instant, u64)>,
        /// Until this leg's first keyframe, delta frames are skipped.
        need_keyframe: bool,
    },
}

impl Media {
    async fn open(source: &Source, max_frame: usize) -> Result<Media> {
        match source {
            Source::SyntheticVp8(config) => {
                let source = SyntheticSource::new(config.clone());
                let interval = source.frame_interval();
                Ok(Media::Synthetic {
                    source,
                    interval,
                    leg_start: Instant::now(),
                    sent_in_leg: 0,
                    keyframe_wanted: true,
                })
            }
            Source::Synthetic(_) => Err(Error::Config(
                "WHIP carries VP8: publish the synthetic stream with --synthetic-vp8".into(),
            )),
            Source::Ivf(path) => {
                let (reader, info) = open_ivf(path, max_frame).await?;
                if info.codec != Codec::Vp8 {
                    return Err(Error::Config(format!(
                        "{}: the file is {:?}; WHIP publishes VP8 only (publish other codecs over QUIC with --edge)",
                        path.display(),
                        info.codec
                    )));
                }
                Ok(Media::Ivf {
                    reader,
                    timebase: info.timebase,
                    pending: None,
                    anchor: None,
                    need_keyframe: true,
                })
            }
        }
    }

    /// The timebase of frame timestamps.
    fn timebase(&self) -> Timebase {
        match self {
            Media::Synthetic { .. } => Timebase::MICROS,
            Media::Ivf { timebase, .. } => *timebase,
        }
    }

    /// A new leg is connected: pace from now, and start it with a keyframe.
    fn start_leg(&mut self) {
        match self {
            Media::Synthetic { leg_start, sent_in_leg, keyframe_wanted, .. } => {
                (*leg_start, *sent_in_leg, *keyframe_wanted) = (Instant::now(), 0, true);
            }
            Media::Ivf { anchor, need_keyframe, .. } => (*anchor, *need_keyframe) = (None, true),
        }
    }

    /// The edge asked for a keyframe.
    fn want_keyframe(&mut self) {
        if let Media::Synthetic { keyframe_wanted, .. } = self {
            *keyframe_wanted = true;
        }
    }

    /// Whether the next frame is at hand (synthetic frames always are).
    fn ready(&self) -> bool {
        match self {
            Media::Synthetic { .. } => true,
            Media::Ivf { pending, .. } => pending.is_some(),
        }
    }

    /// Reads the next IVF frame; false at the end of the input. Not cancel safe.
    async fn fill(&mut self) -> Result<bool> {
        match self {
            Media::Synthetic { .. } => Ok(true),
            Media::Ivf { reader, pending, .. } => {
                *pending = reader.next_frame().await?;
                Ok(pending.is_some())
            }
        }
    }

    /// When the next frame is due.
    fn due(&self) -> Instant {
        match self {
            Media::Synthetic { interval, leg_start, sent_in_leg, .. } => {
                *leg_start + *interval * *sent_in_leg
            }
            Media::Ivf { pending, anchor, timebase, .. } => match (pending, anchor) {
                (Some(frame), Some((at, first))) => {
                    let micros = timebase.ticks_to_micros(frame.pts).unwrap_or(0);
                    *at + Duration::from_micros(micros.saturating_sub(*first))
                }
                _ => Instant::now(),
            },
        }
    }

    /// How late a frame may go out before it counts as late.
    fn late_after(&self) -> Duration {
        match self {
            Media::Synthetic { interval, .. } => *interval,
            Media::Ivf { .. } => Duration::from_millis(100),
        }
    }

    /// The next frame, now that it is due; `None` for an IVF delta frame skipped
    /// while the leg waits for a keyframe.
    fn take(&mut self) -> Option<Frame> {
        match self {
            Media::Synthetic { source, sent_in_leg, keyframe_wanted, .. } => {
                if std::mem::take(keyframe_wanted) {
                    source.force_keyframe();
                }
                let frame = source.next_frame(unix_micros_now());
                *sent_in_leg = sent_in_leg.saturating_add(1);
                Some(Frame {
                    pts: frame.pts_micros,
                    keyframe: frame.keyframe,
                    payload: vp8_framed(&frame),
                    seq: Some(frame.seq),
                })
            }
            Media::Ivf { pending, anchor, timebase, need_keyframe, .. } => {
                let frame = pending.take()?;
                let keyframe = is_keyframe(Codec::Vp8, &frame.data);
                if *need_keyframe && !keyframe {
                    return None;
                }
                *need_keyframe = false;
                if anchor.is_none() {
                    *anchor = Some((Instant::now(), timebase.ticks_to_micros(frame.pts).unwrap_or(0)));
                }
                Some(Frame { pts: frame.pts, keyframe, payload: frame.data, seq: None })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_media::synthetic::{parse_vp8_framed, SyntheticConfig};

    fn synthetic() -> Source {
        Source::SyntheticVp8(SyntheticConfig { bitrate_bps: 100_000, fps: 10, gop: Duration::from_secs(1) })
    }

    #[tokio::test]
    async fn the_synthetic_stream_continues_across_legs_and_each_leg_starts_at_a_keyframe() {
        let mut media = Media::open(&synthetic(), 1 << 20).await.unwrap();
        media.start_leg();
        let first: Vec<Frame> = (0..3).filter_map(|_| media.take()).collect();
        assert!(first[0].keyframe && !first[1].keyframe && !first[2].keyframe);
        media.start_leg();
        let second = media.take().unwrap();
        assert!(second.keyframe, "a new leg starts with a keyframe");
        assert_eq!(second.seq, Some(3), "the sequence goes on, nothing skipped");
        assert_eq!(second.pts, 300_000, "so do the timestamps");
        let stamp = parse_vp8_framed(&second.payload).unwrap();
        assert_eq!((stamp.seq, stamp.keyframe), (3, true));
        media.want_keyframe();
        assert!(media.take().unwrap().keyframe, "a keyframe request is answered at once");
    }

    #[tokio::test]
    async fn only_vp8_can_be_published_over_whip() {
        let plain = Source::Synthetic(SyntheticConfig::default());
        let err = Media::open(&plain, 1 << 20).await.err().unwrap();
        assert!(err.to_string().contains("--synthetic-vp8"), "{err}");

        let path = std::env::temp_dir().join(format!("ferry-whip-{}.ivf", std::process::id()));
        let header = ferry_media::ivf::IvfHeader {
            fourcc: *b"VP90",
            width: 64,
            height: 64,
            timebase: Timebase { num: 1, den: 30 },
            frame_count: 0,
        };
        std::fs::write(&path, header.encode()).unwrap();
        let err = Media::open(&Source::Ivf(path.clone()), 1 << 20).await.err();
        let _ = std::fs::remove_file(&path);
        let err = err.unwrap().to_string();
        assert!(err.contains("Vp9") && err.contains("VP8 only"), "{err}");
    }

    #[test]
    fn refusals_end_the_publisher_and_failures_do_not() {
        let refused = |status| Error::Refused { url: "u".into(), status, body: String::new() };
        let mut busy = None;
        assert!(is_final(&refused(403), false, &mut busy));
        assert!(is_final(&refused(409), false, &mut busy), "busy before publishing anything");
        assert!(!is_final(&refused(409), true, &mut busy), "busy after: maybe our own old session");
        assert!(busy.is_some());
        assert!(!is_final(&refused(503), true, &mut busy));
        assert!(!is_final(&refused(429), false, &mut busy));
        assert!(!is_final(&other("connect"), false, &mut busy));
        assert!(is_final(&Error::Config("x".into()), true, &mut busy));
    }
}
