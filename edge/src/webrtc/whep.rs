//! A WHEP viewer: reads the stream's track buffers through its own cursors (the same
//! per-viewer backpressure as QUIC viewers) and packetizes each frame for its own
//! peer connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ferry_proto::{Codec, StreamName, TrackKind, TrackName};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::catchup::{Admit, CatchUp, KEYFRAME_RETRY};
use super::engine::{self, Events};
use super::http::ApiError;
use super::whip::{flow, Answer};
use super::WebRtcEdge;
use super::{sdp, Client, Direction, LiveSession, SessionLease};
use crate::metrics::{EdgeMetrics, RoleLabels};
use crate::rollouts::Assignment;
use crate::track::LagBudget;
use crate::track::{Read, TrackProducer};
use ferry_media::rtp::{clock_rate, FramePacketizer};

/// Joining a group older than this asks the source for a fresh keyframe.
const KEYFRAME_ON_JOIN_AGE: Duration = Duration::from_millis(500);
/// RTP payload budget: leaves room for SRTP, extensions and tunnels under 1500.
const MTU: usize = 1200;

/// One outgoing track of a viewer.
struct Outgoing {
    producer: TrackProducer,
    local: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    /// Random starting points of the RTP sequence numbers and timestamps (RFC 3550).
    first_sequence: u16,
    first_timestamp: u32,
}

/// A random `u32` for RTP, or a 500 if the system generator fails.
fn random_u32() -> Result<u32, ApiError> {
    ferry_net::random::u32().map_err(|e| ApiError::internal(ferry_net::Chain(&e).to_string()))
}

/// Starts a viewer session for `stream` from an SDP offer.
/// The rollouts' `assignment` sets the viewer's latency budget (`max_lag_ms`, else the
/// edge's) and whether NACKs are answered (`webrtc_nack`, else not).
pub(crate) async fn start(
    state: &Arc<WebRtcEdge>,
    stream: StreamName,
    offer: String,
    assignment: Assignment,
    client: &Client,
) -> Result<Answer, ApiError> {
    let lag = LagBudget::new(
        state.webrtc.config.viewer_max_lag,
        assignment.overrides.max_lag_ms,
        state.config.max_lag_cap,
    );
    let nack = match assignment.overrides.webrtc_nack {
        Some(true) => engine::Nack::On,
        _ => engine::Nack::Off,
    };
    let producers = find_tracks(state, &stream).await?;
    let stream_codecs: Vec<(TrackKind, Codec)> =
        producers.iter().map(|p| (p.info().kind, p.info().codec)).collect();
    let sendable = sdp::check_view_offer(&offer, &stream_codecs).map_err(ApiError::sdp)?;
    let cancel = state.media_shutdown.child_token();
    let mut lease = state
        .webrtc
        .lease(Direction::Whep, stream.as_str(), client, cancel.clone())
        .map_err(ApiError::lease)?;
    let (pc, mut events) =
        engine::build(&state.webrtc, &mut lease, &sendable, nack).await.map_err(ApiError::build)?;
    match negotiate(state, &pc, &mut events, offer, producers, &sendable).await {
        Ok((answer, outgoing)) => {
            let id = lease.id.clone();
            let session = Session {
                state: Arc::clone(state),
                stream,
                pc,
                events,
                outgoing,
                lease,
                cancel,
                lag,
                assignment,
            };
            state.tracker.spawn(session.run());
            Ok(Answer { id, sdp: answer })
        }
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// The stream's WebRTC-capable tracks, pulled from upstream if this edge lacks them.
async fn find_tracks(state: &Arc<WebRtcEdge>, stream: &StreamName) -> Result<Vec<TrackProducer>, ApiError> {
    let mut found = Vec::new();
    let mut last_refusal = None;
    for name in ["video", "audio"] {
        let name = TrackName::new(name).map_err(|e| ApiError::internal(e.to_string()))?;
        match crate::relay::find_track(&state.edge, stream, &name, false).await {
            Ok(producer) => found.push(producer),
            Err(refusal) => last_refusal = Some(refusal),
        }
    }
    if found.is_empty() {
        let (code, message) = last_refusal.unwrap_or((ferry_proto::ErrorCode::NotFound, String::new()));
        let status = if code == ferry_proto::ErrorCode::NotFound {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Err(ApiError::new(status, code.name(), format!("{stream}: {message}")));
    }
    let webrtc: Vec<TrackProducer> =
        found.iter().filter(|p| engine::mime_type(p.info().codec).is_some()).cloned().collect();
    if webrtc.is_empty() {
        let codecs: Vec<String> = found.iter().map(|p| format!("{:?}", p.info().codec)).collect();
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "codec_not_webrtc",
            format!("{stream} carries {} which WebRTC cannot play (VP8, H264, opus can)", codecs.join(", ")),
        ));
    }
    Ok(webrtc)
}

async fn negotiate(
    state: &WebRtcEdge,
    pc: &Arc<dyn PeerConnection>,
    events: &mut Events,
    offer: String,
    producers: Vec<TrackProducer>,
    sendable: &[Codec],
) -> Result<(String, Vec<Outgoing>), ApiError> {
    let offer = RTCSessionDescription::offer(offer).map_err(ApiError::webrtc_offer)?;
    pc.set_remote_description(offer).await.map_err(ApiError::webrtc_offer)?;
    let mut pending = Vec::new();
    for producer in producers.into_iter().filter(|p| sendable.contains(&p.info().codec)) {
        let info = producer.info();
        let kind = match info.kind {
            TrackKind::Video => RtpCodecKind::Video,
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Data => continue,
        };
        let Some(codec) = engine::rtp_codec(info.codec) else { continue };
        let ssrc = random_u32()?;
        let encoding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        };
        let name = info.name.to_string();
        let track = MediaStreamTrack::new("ferry".into(), name.clone(), name, kind, vec![encoding]);
        let local = Arc::new(TrackLocalStaticRTP::new(track));
        let sender =
            pc.add_track(Arc::clone(&local) as Arc<dyn TrackLocal>).await.map_err(ApiError::webrtc_offer)?;
        pending.push((producer, local, ssrc, sender));
    }
    let answer = super::http::answer(state, pc, events).await?;
    let mut outgoing = Vec::new();
    for (producer, local, ssrc, sender) in pending {
        let Ok(params) = sender.get_parameters().await else { continue };
        let Some(mime) = engine::mime_type(producer.info().codec) else { continue };
        let pt =
            params.rtp_parameters.codecs.iter().find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime));
        if let Some(pt) = pt {
            outgoing.push(Outgoing {
                producer,
                local,
                ssrc,
                payload_type: pt.payload_type,
                first_sequence: (random_u32()? & 0x7fff) as u16,
                first_timestamp: random_u32()?,
            });
        }
    }
    if outgoing.is_empty() {
        return Err(ApiError::sdp(sdp::SdpError::CodecMismatch {
            wanted: format!("{sendable:?}"),
            offered: "nothing negotiated".into(),
        }));
    }
    Ok((answer, outgoing))
}

struct Session {
    state: Arc<WebRtcEdge>,
    stream: StreamName,
    pc: Arc<dyn PeerConnection>,
    events: Events,
    outgoing: Vec<Outgoing>,
    lease: SessionLease,
    cancel: CancellationToken,
    /// The viewer's latency budget; a treatment's falls back while the session lives.
    lag: LagBudget,
    assignment: Assignment,
}

impl Session {
    async fn run(mut self) {
        let metrics = self.state.metrics.clone();
        let live = LiveSession::start(&metrics, Direction::Whep, self.stream.as_str(), &self.lease);
        let (state, assignment, lag) = (Arc::clone(&self.state), self.assignment.clone(), self.lag.clone());
        let reason = state.with_fallback(&assignment, &lag, self.serve(&metrics)).await;
        live.ended(&self.state, &self.assignment, reason);
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
    }

    async fn serve(&mut self, metrics: &EdgeMetrics) -> &'static str {
        let connect = tokio::time::sleep(self.state.webrtc.config.connect_timeout);
        tokio::pin!(connect);
        // Media starts once ICE and DTLS are up: writes before that fail ("not binding yet").
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return "closed",
                _ = &mut connect => return "connect_timeout",
                changed = self.events.state.changed() => {
                    if changed.is_err() { return "closed"; }
                    match *self.events.state.borrow_and_update() {
                        RTCPeerConnectionState::Connected => break,
                        RTCPeerConnectionState::Failed => return "ice_failed",
                        RTCPeerConnectionState::Closed => return "peer_closed",
                        _ => {}
                    }
                }
            }
        }
        let mut tasks = JoinSet::new();
        let mut live_egress = self.outgoing.len();
        for out in self.outgoing.drain(..) {
            let wants_keyframe = Arc::new(Notify::new());
            tasks.spawn(feedback(Arc::clone(&out.local), Arc::clone(&wants_keyframe), metrics.clone()));
            let egress = Egress {
                out,
                wants_keyframe,
                metrics: metrics.clone(),
                lag: self.lag.clone(),
                cancel: self.cancel.child_token(),
            };
            tasks.spawn(egress.run());
        }
        let reason = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break "closed",
                changed = self.events.state.changed() => {
                    if changed.is_err() { break "closed"; }
                    match *self.events.state.borrow_and_update() {
                        RTCPeerConnectionState::Failed => break "ice_failed",
                        RTCPeerConnectionState::Closed => break "peer_closed",
                        _ => {}
                    }
                }
                done = tasks.join_next() => match done {
                    // Every media track ended: the publisher left.
                    Some(Ok(EgressEnd::TrackEnded | EgressEnd::Cancelled)) => {
                        live_egress = live_egress.saturating_sub(1);
                        if live_egress == 0 { break "track_ended"; }
                    }
                    Some(Ok(EgressEnd::WriteFailed)) => break "write_failed",
                    Some(Ok(EgressEnd::Feedback)) => {}
                    Some(Err(_)) => break "task_failed",
                    None => break "track_ended",
                },
            }
        };
        self.cancel.cancel();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        reason
    }
}

/// How a per-track task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EgressEnd {
    TrackEnded,
    WriteFailed,
    Cancelled,
    Feedback,
}

/// Viewer RTCP: PLI/FIR and NACK wake the egress, which catches the viewer up.
async fn feedback(
    local: Arc<TrackLocalStaticRTP>,
    wants_keyframe: Arc<Notify>,
    metrics: EdgeMetrics,
) -> EgressEnd {
    let plis = metrics.plis.get_or_create(&flow("received")).clone();
    let nacks = metrics.nacks.clone();
    while let Some(event) = local.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else { continue };
        match engine::loss_feedback(&packets) {
            Some(engine::LossFeedback::KeyframeRequest) => plis.inc(),
            Some(engine::LossFeedback::Nack) => nacks.inc(),
            None => continue,
        };
        wants_keyframe.notify_one();
    }
    EgressEnd::Feedback
}

struct Egress {
    out: Outgoing,
    wants_keyframe: Arc<Notify>,
    metrics: EdgeMetrics,
    lag: LagBudget,
    cancel: CancellationToken,
}

impl Egress {
    async fn run(self) -> EgressEnd {
        let Outgoing { producer, local, ssrc, payload_type, first_sequence, first_timestamp } = self.out;
        let info = producer.info().clone();
        let Some(rate) = clock_rate(info.codec) else { return EgressEnd::Cancelled };
        let Some(mut packetizer) = FramePacketizer::new(
            info.codec,
            ssrc,
            payload_type,
            info.timebase,
            rate,
            MTU,
            first_sequence,
            first_timestamp,
        ) else {
            return EgressEnd::Cancelled;
        };
        let mut consumer = producer.subscribe(self.lag.current());
        if producer.newest_group_age().is_some_and(|age| age > KEYFRAME_ON_JOIN_AGE)
            && producer.request_keyframe()
        {
            self.metrics.keyframe_requests.inc();
        }
        let packets_out = self.metrics.rtp_packets.get_or_create(&flow("out")).clone();
        let bytes_out = self.metrics.rtp_bytes.get_or_create(&flow("out")).clone();
        let skips = self.metrics.skipped_groups.get_or_create(&RoleLabels { role: "whep".into() }).clone();
        let mut catch_up = CatchUp::default();
        let mut retry = tokio::time::interval(KEYFRAME_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let request_keyframe = |consumer: &crate::track::TrackConsumer| {
            if consumer.request_keyframe() {
                self.metrics.keyframe_requests.inc();
            }
        };
        loop {
            consumer.follow(&self.lag);
            let read = tokio::select! {
                _ = self.cancel.cancelled() => return EgressEnd::Cancelled,
                _ = self.wants_keyframe.notified() => {
                    // The viewer lost something and cannot decode until a keyframe: drop
                    // the rest of this group; repeated losses get keyframes only until calm.
                    if consumer.mid_group() {
                        consumer.skip_current_group();
                        skips.inc();
                    }
                    catch_up.keyframe_requested(Instant::now());
                    request_keyframe(&consumer);
                    continue;
                }
                _ = retry.tick(), if catch_up.active() => {
                    request_keyframe(&consumer);
                    continue;
                }
                read = consumer.next() => read,
            };
            let frame = match read {
                Read::Frame { frame, .. } => frame,
                Read::Skipped { groups, .. } => {
                    skips.inc_by(groups);
                    continue;
                }
                Read::Closed => return EgressEnd::TrackEnded,
                Read::Pending => continue,
            };
            if catch_up.admit(frame.header.is_keyframe(), Instant::now()) == Admit::HoldBack {
                continue;
            }
            let packets = match packetizer.packetize(frame.header.pts, &frame.payload) {
                Ok(packets) => packets,
                Err(e) => {
                    tracing::debug!(error = %e, "frame not packetizable; skipped");
                    continue;
                }
            };
            self.metrics.frames_out.inc();
            self.metrics.bytes_out.inc_by(frame.payload.len() as u64);
            for packet in packets {
                let len = packet.payload.len() as u64;
                if local.write_rtp(packet).await.is_err() {
                    return EgressEnd::WriteFailed;
                }
                packets_out.inc();
                bytes_out.inc_by(len);
            }
        }
    }
}
