//! Building `webrtc` peer connections, for the edge's WHIP/WHEP sessions and the WHEP
//! client alike: codecs, interceptors, sockets, and the event handler that turns the
//! crate's callbacks into channels a session task can `select!` on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::Codec;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState,
    Registry, SettingEngineBuilder,
};

/// The codecs Ferry passes through, with the payload types it offers them under.
pub const CODECS: [(Codec, u8); 3] = [(Codec::Vp8, 96), (Codec::H264, 102), (Codec::Opus, 111)];

/// The SDP mime type of a codec, for the codecs WebRTC sessions carry.
pub fn mime_type(codec: Codec) -> Option<&'static str> {
    match codec {
        Codec::Vp8 => Some("video/VP8"),
        Codec::H264 => Some("video/H264"),
        Codec::Opus => Some("audio/opus"),
        Codec::Vp9 | Codec::Av1 | Codec::Synthetic => None,
    }
}

/// The codec a negotiated mime type names.
pub fn codec_of_mime(mime: &str) -> Option<Codec> {
    CODECS.iter().map(|(c, _)| *c).find(|c| mime_type(*c).is_some_and(|m| m.eq_ignore_ascii_case(mime)))
}

/// Whether a peer connection answers NACKs with retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nack {
    /// Publishers and clients: negotiate NACK (the crate's generator and responder).
    On,
    /// WHEP viewers: no NACK. Retransmitting into a link that is already too slow for
    /// the stream only floods it (each lost packet is asked for again every round
    /// trip); viewers ask for a keyframe instead and the edge catches them up.
    Off,
}

fn codec_parameters(
    codec: Codec,
    payload_type: u8,
    nack: Nack,
) -> Option<(RTCRtpCodecParameters, RtpCodecKind)> {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.into(), parameter: parameter.into() };
    let mut video_feedback =
        vec![feedback("nack", "pli"), feedback("ccm", "fir"), feedback("transport-cc", "")];
    if nack == Nack::On {
        video_feedback.insert(0, feedback("nack", ""));
    }
    let (clock_rate, channels, fmtp, rtcp_feedback, kind) = match codec {
        Codec::Vp8 => (90_000, 0, "", video_feedback, RtpCodecKind::Video),
        Codec::H264 => (
            90_000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            video_feedback,
            RtpCodecKind::Video,
        ),
        Codec::Opus => {
            (48_000, 2, "minptime=10;useinbandfec=1", vec![feedback("transport-cc", "")], RtpCodecKind::Audio)
        }
        Codec::Vp9 | Codec::Av1 | Codec::Synthetic => return None,
    };
    let rtp_codec = RTCRtpCodec {
        mime_type: mime_type(codec)?.to_owned(),
        clock_rate,
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback,
    };
    Some((RTCRtpCodecParameters { rtp_codec, payload_type }, kind))
}

/// The `RTCRtpCodec` a local track of `codec` is created with.
pub fn rtp_codec(codec: Codec) -> Option<RTCRtpCodec> {
    let pt = CODECS.iter().find(|(c, _)| *c == codec)?.1;
    codec_parameters(codec, pt, Nack::Off).map(|(p, _)| p.rtp_codec)
}

/// Peer connection events a session waits on.
pub struct Events {
    /// Remote tracks as they start (WHIP).
    pub tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub gathering: watch::Receiver<RTCIceGatheringState>,
}

pub struct Handler {
    tracks: mpsc::Sender<Arc<dyn TrackRemote>>,
    state: watch::Sender<RTCPeerConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // A session has a handful of tracks; a full queue means the session is gone.
        if self.tracks.try_send(track).is_err() {
            tracing::debug!("remote track dropped: session not listening");
        }
    }
}

pub fn new_handler() -> (Arc<Handler>, Events) {
    let (tracks_tx, tracks) = mpsc::channel(8);
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let handler = Arc::new(Handler { tracks: tracks_tx, state: state_tx, gathering: gathering_tx });
    (handler, Events { tracks, state, gathering })
}

pub async fn peer_connection(
    addr: SocketAddr,
    codecs: &[Codec],
    nack: Nack,
    handler: Arc<Handler>,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let mut media = MediaEngine::default();
    for codec in codecs {
        let pt = CODECS.iter().find(|(c, _)| c == codec).map(|(_, pt)| *pt);
        if let Some((params, kind)) = pt.and_then(|pt| codec_parameters(*codec, pt, nack)) {
            media.register_codec(params, kind)?;
        }
    }
    // The crate's default set, without NACK where it is off.
    let registry = match nack {
        Nack::On => register_default_interceptors(Registry::new(), &mut media)?,
        Nack::Off => {
            configure_simulcast_extension_headers(&mut media)?;
            let registry = configure_twcc_receiver_only(Registry::new(), &mut media)?;
            configure_rtcp_reports(registry)
        }
    };
    let registry = registry.with(Slot::from(14_000), KeyframeRequests::default());
    let settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(addr.ip().is_loopback())
        .with_ice_timeouts(
            Some(Duration::from_secs(3)),
            Some(Duration::from_secs(6)),
            Some(Duration::from_secs(1)),
        );
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings.build())
        .with_interceptor_registry(registry)
        .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec![addr])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// A client peer connection on an ephemeral port of `ip` (WHEP viewers, benchmarks).
pub async fn build_client(
    ip: std::net::IpAddr,
    codecs: &[Codec],
) -> Result<(Arc<dyn PeerConnection>, Events), webrtc::error::Error> {
    let (handler, events) = new_handler();
    let pc = peer_connection(SocketAddr::new(ip, 0), codecs, Nack::On, handler).await?;
    Ok((pc, events))
}

/// Waits until ICE gathering completes or `timeout` passes (the answer then carries
/// the candidates gathered so far).
pub async fn gathered(events: &mut Events, timeout: Duration) {
    let done = events.gathering.wait_for(|s| *s == RTCIceGatheringState::Complete);
    let _ = tokio::time::timeout(timeout, done).await;
}

/// Hands viewers' PLI, FIR and NACK to the application (the crate keeps inbound RTCP to
/// its interceptors otherwise); everything passes on through the chain untouched.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Bound on queued packets per direction: the driver polls after every handle call,
/// so more than a few queued means something is wrong; drop the oldest.
const QUEUE_LIMIT: usize = 1024;

fn push_bounded(queue: &mut VecDeque<TaggedPacket>, packet: TaggedPacket) {
    if queue.len() >= QUEUE_LIMIT {
        queue.pop_front();
    }
    queue.push_back(packet);
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if loss_feedback(packets).is_some() {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        push_bounded(&mut self.read, msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        push_bounded(&mut self.write, msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// What a viewer's RTCP says about loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossFeedback {
    /// PLI or FIR: it wants a keyframe.
    KeyframeRequest,
    /// NACK: it lost packets. WHEP viewers get no retransmissions, so a lost video
    /// packet means it cannot decode until the next keyframe either.
    Nack,
}

/// The strongest loss signal in an RTCP batch, if any.
pub fn loss_feedback(packets: &[Box<dyn rtc::rtcp::Packet>]) -> Option<LossFeedback> {
    let is = |f: fn(&dyn std::any::Any) -> bool| packets.iter().any(|p| f(p.as_any()));
    if is(|a| a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>()) {
        Some(LossFeedback::KeyframeRequest)
    } else if is(|a| a.is::<TransportLayerNack>()) {
        Some(LossFeedback::Nack)
    } else {
        None
    }
}
