//! A WHIP publisher: its remote tracks become track buffers of a locally published
//! stream, exactly like a QUIC publisher's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use ferry_proto::{Codec, FrameFlags, FrameHeader, StreamName, Timebase, TrackInfo, TrackKind, TrackName};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::task::JoinSet;

use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::engine::{self, Events};
use super::http::ApiError;
use super::sdp;
use super::WebRtcEdge;
use super::{Client, Direction, LiveSession, SessionLease};
use crate::metrics::EdgeMetrics;
use crate::relay::Revocation;
use crate::rollouts::Assignment;
use crate::track::{BufferConfig, Frame, TrackProducer};
use ferry_media::rtp::{clock_rate, FrameAssembler};

/// What a session answers: its id and the SDP answer.
pub(crate) struct Answer {
    pub id: String,
    pub sdp: String,
}

/// Starts a publisher session for `stream` from an SDP offer.
pub(crate) async fn start(
    state: &Arc<WebRtcEdge>,
    stream: StreamName,
    offer: String,
    assignment: Assignment,
    takeover: bool,
    client: &Client,
) -> Result<Answer, ApiError> {
    let buffer = assignment.buffer(state.config.buffer);
    sdp::check_publish_offer(&offer).map_err(ApiError::sdp)?;
    // Checked before any session state exists, like a QUIC announce: a live
    // publisher here or, by gossip, on another edge keeps the stream busy.
    let me = state.config.node_id.as_str();
    if !takeover
        && (state.registry.has_live_publisher(&stream)
            || state.cluster().live_origin_elsewhere(stream.as_str(), me).is_some())
    {
        return Err(busy(&stream));
    }
    let cancel = state.shutdown.child_token();
    let mut lease = state
        .webrtc
        .lease(Direction::Whip, stream.as_str(), client, cancel.clone())
        .map_err(ApiError::lease)?;
    let codecs: Vec<Codec> = engine::CODECS.iter().map(|(c, _)| *c).collect();
    let (pc, mut events) =
        engine::build(&state.webrtc, &mut lease, &codecs, engine::Nack::On).await.map_err(ApiError::build)?;
    match negotiate(state, &pc, &mut events, offer, buffer).await {
        Ok((answer, tracks)) => {
            let session = state.next_session.fetch_add(1, Ordering::Relaxed);
            if state
                .registry
                .publish(&stream, session, tracks.clone(), Revocation::new(cancel.clone()), takeover)
                .is_err()
            {
                let _ = pc.close().await;
                return Err(busy(&stream));
            }
            state.streams_changed();
            let id = lease.id.clone();
            let session_state = Arc::clone(state);
            let task = Session {
                state: session_state,
                stream,
                session,
                pc,
                events,
                tracks,
                lease,
                cancel,
                assignment,
            };
            state.tracker.spawn(task.run());
            Ok(Answer { id, sdp: answer })
        }
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// The stream has a live publisher here: 409, and what would let a second one in.
fn busy(stream: &StreamName) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "stream_busy",
        format!(
            "{stream} is already published; a second publisher needs a token with a takeover grant \
             (ferry token --takeover)"
        ),
    )
}

async fn negotiate(
    state: &WebRtcEdge,
    pc: &Arc<dyn PeerConnection>,
    events: &mut Events,
    offer: String,
    buffer: BufferConfig,
) -> Result<(String, Vec<TrackProducer>), ApiError> {
    let offer = RTCSessionDescription::offer(offer).map_err(ApiError::webrtc_offer)?;
    pc.set_remote_description(offer).await.map_err(ApiError::webrtc_offer)?;
    let answer = super::http::answer(state, pc, events).await?;
    let mut tracks = Vec::new();
    for (kind, codec) in sdp::negotiated(&answer) {
        let (name, kind) = match kind {
            TrackKind::Video => ("video", TrackKind::Video),
            TrackKind::Audio => ("audio", TrackKind::Audio),
            TrackKind::Data => continue,
        };
        let Some(rate) = clock_rate(codec) else { continue };
        let name = TrackName::new(name).map_err(|e| ApiError::internal(e.to_string()))?;
        let info =
            TrackInfo { name, kind, codec, timebase: Timebase { num: 1, den: rate }, width: 0, height: 0 };
        tracks.push(TrackProducer::new(info, buffer));
    }
    if tracks.is_empty() {
        return Err(ApiError::sdp(sdp::SdpError::NoSupportedCodec { offered: "nothing negotiable".into() }));
    }
    Ok((answer, tracks))
}

struct Session {
    state: Arc<WebRtcEdge>,
    stream: StreamName,
    session: u64,
    pc: Arc<dyn PeerConnection>,
    events: Events,
    tracks: Vec<TrackProducer>,
    lease: SessionLease,
    cancel: CancellationToken,
    assignment: Assignment,
}

impl Session {
    async fn run(mut self) {
        let metrics = self.state.metrics.clone();
        let live = LiveSession::start(&metrics, Direction::Whip, self.stream.as_str(), &self.lease);
        let connect_deadline = tokio::time::Instant::now() + self.state.webrtc.config.connect_timeout;
        let mut connected = false;
        let mut ingest = JoinSet::new();
        let reason = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break "closed",
                _ = tokio::time::sleep_until(connect_deadline), if !connected => break "connect_timeout",
                changed = self.events.state.changed() => {
                    if changed.is_err() { break "closed"; }
                    let now = *self.events.state.borrow_and_update();
                    match now {
                        RTCPeerConnectionState::Connected => connected = true,
                        RTCPeerConnectionState::Failed => break "ice_failed",
                        RTCPeerConnectionState::Closed => break "peer_closed",
                        _ => {}
                    }
                }
                Some(remote) = self.events.tracks.recv() => {
                    let kind = match remote.kind().await {
                        RtpCodecKind::Video => TrackKind::Video,
                        RtpCodecKind::Audio => TrackKind::Audio,
                        _ => continue,
                    };
                    if let Some(producer) = self.tracks.iter().find(|t| t.info().kind == kind) {
                        let ingest_task = Ingest {
                            remote,
                            producer: producer.clone(),
                            metrics: metrics.clone(),
                            cancel: self.cancel.child_token(),
                        };
                        ingest.spawn(ingest_task.run());
                    }
                }
            }
        };
        live.ended(&self.state, &self.assignment, reason);
        self.cancel.cancel();
        self.state.registry.unpublish(&self.stream, self.session);
        self.state.streams_changed();
        while ingest.join_next().await.is_some() {}
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.pc.close()).await;
        drop(live);
        drop(self.lease);
    }
}

/// Audio groups span this much media time (docs/architecture.md, media model: audio-only streams).
const AUDIO_GROUP_MS: u64 = 500;

/// Where an assembled frame goes in the track: which group, and whether it opens one.
#[derive(Debug, Default)]
pub(crate) struct Grouper {
    /// The open group and the media time it started at.
    open: Option<(u64, u64)>,
    next_seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Close `close` (if any) and start group `seq` with this frame.
    Start { close: Option<u64>, seq: u64 },
    /// Append to the open group.
    Append(u64),
    /// No group to put it in yet (a delta frame before the first keyframe).
    Drop,
}

impl Grouper {
    /// Video: a group per keyframe. Audio (every frame decodable): a group per
    /// `AUDIO_GROUP_MS` of media time.
    pub fn place(&mut self, kind: TrackKind, timestamp: u64, keyframe: bool, rate: u32) -> Placement {
        let starts = match (kind, self.open) {
            (TrackKind::Video, _) => keyframe,
            (_, None) => true,
            (_, Some((_, started))) => {
                let span = u64::from(rate) * AUDIO_GROUP_MS / 1000;
                timestamp.saturating_sub(started) >= span || timestamp < started
            }
        };
        match (starts, self.open) {
            (true, open) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.open = Some((seq, timestamp));
                Placement::Start { close: open.map(|(s, _)| s), seq }
            }
            (false, Some((seq, _))) => Placement::Append(seq),
            (false, None) => Placement::Drop,
        }
    }

    /// The open group, to be closed when the track ends.
    pub fn open_group(&self) -> Option<u64> {
        self.open.map(|(seq, _)| seq)
    }
}

struct Ingest {
    remote: Arc<dyn TrackRemote>,
    producer: TrackProducer,
    metrics: EdgeMetrics,
    cancel: CancellationToken,
}

impl Ingest {
    async fn run(self) {
        let info = self.producer.info().clone();
        let Some(media_ssrc) = self.remote.ssrcs().await.first().copied() else { return };
        let (Some(mut assembler), Some(rate)) = (FrameAssembler::new(info.codec), clock_rate(info.codec))
        else {
            return;
        };
        let mut grouper = Grouper::default();
        let mut lost = 0;
        let packets_in = self.metrics.rtp_packets.get_or_create(&flow("in")).clone();
        let bytes_in = self.metrics.rtp_bytes.get_or_create(&flow("in")).clone();
        let plis_sent = self.metrics.plis.get_or_create(&flow("sent")).clone();
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = self.producer.keyframe_requested() => {
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
                    if self.remote.write_rtcp(vec![Box::new(pli)]).await.is_err() {
                        break;
                    }
                    plis_sent.inc();
                    continue;
                }
                event = self.remote.poll() => event,
            };
            let packet = match event {
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => packet,
                Some(TrackRemoteEvent::OnEnded) | Some(TrackRemoteEvent::OnError) | None => break,
                Some(_) => continue,
            };
            packets_in.inc();
            bytes_in.inc_by(packet.payload.len() as u64);
            let frame = assembler.push(&packet);
            if assembler.lost_frames() != lost {
                lost = assembler.lost_frames();
                // Video cannot be decoded past a loss until the next keyframe; audio can.
                if info.kind == TrackKind::Video {
                    self.producer.request_keyframe();
                }
            }
            let Some(frame) = frame else { continue };
            let keyframe = frame.keyframe || info.kind == TrackKind::Audio;
            let seq = match grouper.place(info.kind, frame.timestamp, keyframe, rate) {
                Placement::Start { close, seq } => {
                    if let Some(prev) = close {
                        self.producer.end_group(prev);
                    }
                    self.producer.begin_group(seq);
                    seq
                }
                Placement::Append(seq) => seq,
                Placement::Drop => {
                    self.producer.request_keyframe();
                    continue;
                }
            };
            let flags = if keyframe { FrameFlags::KEYFRAME } else { FrameFlags::empty() };
            let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
            self.metrics.frames_in.inc();
            self.metrics.bytes_in.inc_by(u64::from(len));
            let header = FrameHeader { pts: frame.timestamp, flags, len };
            let frame = Frame { header, payload: frame.payload, received_at: Instant::now() };
            if !self.producer.push_frame(seq, frame) {
                self.metrics.frames_dropped.inc();
            }
        }
        if let Some(seq) = grouper.open_group() {
            self.producer.end_group(seq);
        }
    }
}

pub(crate) fn flow(direction: &str) -> crate::metrics::DirectionLabels {
    crate::metrics::DirectionLabels { direction: direction.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_groups_start_at_keyframes_and_drop_leading_deltas() {
        let mut g = Grouper::default();
        assert_eq!(g.place(TrackKind::Video, 0, false, 90_000), Placement::Drop);
        assert_eq!(g.place(TrackKind::Video, 3000, true, 90_000), Placement::Start { close: None, seq: 0 });
        assert_eq!(g.place(TrackKind::Video, 6000, false, 90_000), Placement::Append(0));
        assert_eq!(
            g.place(TrackKind::Video, 9000, true, 90_000),
            Placement::Start { close: Some(0), seq: 1 }
        );
        assert_eq!(g.open_group(), Some(1));
    }

    #[test]
    fn audio_groups_span_half_a_second() {
        let mut g = Grouper::default();
        assert_eq!(g.place(TrackKind::Audio, 1000, true, 48_000), Placement::Start { close: None, seq: 0 });
        assert_eq!(g.place(TrackKind::Audio, 1000 + 23_999, true, 48_000), Placement::Append(0));
        assert_eq!(
            g.place(TrackKind::Audio, 1000 + 24_000, true, 48_000),
            Placement::Start { close: Some(0), seq: 1 }
        );
    }
}
