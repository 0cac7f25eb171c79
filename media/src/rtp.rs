//! RTP ⇄ whole frames, sans-IO: no clock, no sockets, no randomness (the caller passes in
//! the random parts).
//!
//! # Layout
//! - [`FrameAssembler`]: ingest. RTP packets of one remote track → whole codec frames, dropping
//!   what a decoder could not use after a loss.
//! - [`FramePacketizer`]: egress. Whole frames of one track → RTP packets for one viewer, with
//!   that viewer's own SSRC, payload type, sequence numbers and timestamp offset.
//! - [`clock_rate`]: the RTP clock of a codec.
//!
//! The per-codec payload formats come from `rtc::rtp` (RFC 7741 VP8, RFC 6184 H.264, RFC 7587
//! Opus). H.264 payloads are checked here before they reach its depacketizer, which indexes
//! STAP-A length fields without bounds checks.

use std::num::NonZeroU128;

use bytes::{Bytes, BytesMut};
use ferry_proto::{Codec, Timebase};
use rtc::rtp::codec::h264::{
    H264Packet, H264Payloader, FUA_NALU_TYPE, FU_END_BITMASK, FU_START_BITMASK, NALU_TYPE_BITMASK,
    STAPA_HEADER_SIZE, STAPA_NALU_TYPE,
};
use rtc::rtp::codec::opus::{OpusPacket, OpusPayloader};
use rtc::rtp::codec::vp8::{Vp8Packet, Vp8Payloader};
use rtc::rtp::header::Header;
use rtc::rtp::packetizer::{Depacketizer, Payloader};
use rtc::rtp::Packet;

use crate::keyframe::is_keyframe;

/// Largest frame the assembler buffers (payload bytes before depacketization). A 4K keyframe is
/// well under this; anything bigger is a broken or hostile sender, and memory per track stays bounded.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Consecutive packets that look old before the assembler decides the sender restarted its
/// sequence numbers. Reordering on real networks is a few packets deep, never this many.
const STALE_PACKETS_BEFORE_RESYNC: u32 = 64;

/// The fixed RTP header; the packetizer adds no CSRCs or extensions of its own.
const RTP_HEADER_BYTES: usize = 12;

/// Smallest payload room per packet the packetizer accepts: below this the VP8 payloader would
/// silently emit nothing and H.264 parameter sets could not travel.
const MIN_PAYLOAD_BYTES: usize = 64;

/// RTP clock of video codecs (RFC 3551 and every video payload format).
const VIDEO_CLOCK_RATE: u32 = 90_000;
/// RTP clock of Opus, whatever the actual sample rate (RFC 7587 §4.1).
const OPUS_CLOCK_RATE: u32 = 48_000;

/// RTP clock rate for a codec (90000 for video codecs, 48000 for Opus), `None` for others.
pub fn clock_rate(codec: Codec) -> Option<u32> {
    match codec {
        Codec::Vp8 | Codec::Vp9 | Codec::Av1 | Codec::H264 => Some(VIDEO_CLOCK_RATE),
        Codec::Opus => Some(OPUS_CLOCK_RATE),
        Codec::Synthetic => None,
    }
}

/// Whether [`FrameAssembler`] and [`FramePacketizer`] handle this codec.
fn supported(codec: Codec) -> bool {
    matches!(codec, Codec::Vp8 | Codec::H264 | Codec::Opus)
}

/// One whole frame out of a [`FrameAssembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledFrame {
    /// RTP timestamp unwrapped to 64 bits (first frame keeps its 32-bit value; wrap-around adds 2^32).
    pub timestamp: u64,
    /// The whole frame: VP8 frame bytes; H.264 as Annex-B (start codes 00 00 00 01 before each NAL);
    /// Opus packet as is.
    pub payload: Bytes,
    /// A decoder can start here (always true for Opus).
    pub keyframe: bool,
}

/// Ingest: RTP packets of one remote track (one SSRC) → whole codec frames.
///
/// There is no jitter buffer: a packet that arrives after a later one counts as lost, which is
/// right for a relay that would rather ask for a keyframe than add latency.
#[derive(Debug)]
pub struct FrameAssembler {
    codec: Codec,
    /// Video frames depend on earlier ones; Opus packets do not.
    video: bool,
    /// Highest sequence number accepted; the next packet is measured against it.
    last_sequence: Option<u16>,
    /// Consecutive packets that looked old (see [`STALE_PACKETS_BEFORE_RESYNC`]).
    stale_run: u32,
    /// The frame being collected.
    partial: Option<PartialFrame>,
    /// RTP timestamp of a damaged frame whose remaining packets are thrown away.
    discarding: Option<u32>,
    /// The furthest RTP timestamp seen and its unwrapped value.
    furthest_timestamp: Option<(u32, u64)>,
    lost_frames: u64,
    waiting_for_keyframe: bool,
}

#[derive(Debug)]
struct PartialFrame {
    rtp_timestamp: u32,
    timestamp: u64,
    payloads: Vec<Bytes>,
    bytes: usize,
}

/// Where a packet's sequence number falls relative to the last one accepted.
enum SequenceStep {
    First,
    Next,
    /// Packets are missing before this one (`missing` of them, or 1 after a resync).
    Gap {
        missing: u16,
    },
    Old,
}

impl FrameAssembler {
    /// `None` for codecs without a depacketizer here (VP8, H.264 and Opus are supported).
    ///
    /// Video starts out waiting for a keyframe: delta frames before the first keyframe are
    /// dropped and counted, so the caller's PLI logic also covers a stream that starts mid-GOP.
    pub fn new(codec: Codec) -> Option<Self> {
        if !supported(codec) {
            return None;
        }
        let video = codec != Codec::Opus;
        Some(FrameAssembler {
            codec,
            video,
            last_sequence: None,
            stale_run: 0,
            partial: None,
            discarding: None,
            furthest_timestamp: None,
            lost_frames: 0,
            waiting_for_keyframe: video,
        })
    }

    /// Feeds one packet; returns a frame when one completes (marker bit, or a new timestamp
    /// after contiguous packets; Opus: every packet).
    ///
    /// A sequence gap drops the frame in progress, and video frames are then dropped until the
    /// next keyframe. Duplicate and old packets are ignored. A frame over [`MAX_FRAME_BYTES`] is
    /// dropped and counted as lost. Padding-only packets only advance the sequence.
    pub fn push(&mut self, packet: &Packet) -> Option<AssembledFrame> {
        let needs_head = match self.step_sequence(packet.header.sequence_number) {
            SequenceStep::Old => return None,
            SequenceStep::First => true,
            SequenceStep::Next => false,
            SequenceStep::Gap { missing } => {
                // The missing packets belonged to the frame in progress, to whole frames in
                // between, or to the head of the next one: at least one frame is gone.
                self.partial = None;
                self.discarding = None;
                self.count_dropped(if self.video { 1 } else { u64::from(missing) });
                true
            }
        };
        if packet.payload.is_empty() {
            return None;
        }
        let rtp_timestamp = packet.header.timestamp;
        let mut finished = None;
        if self.partial.as_ref().is_some_and(|partial| partial.rtp_timestamp != rtp_timestamp) {
            // Contiguous packets and a new timestamp: the sender left the marker off, the frame is whole.
            finished = self.partial.take().and_then(|partial| self.finish(partial));
        }
        if self.partial.is_none() {
            if self.discarding == Some(rtp_timestamp) {
                return finished;
            }
            self.discarding = None;
            if needs_head && !is_frame_head(self.codec, &packet.payload) {
                self.discarding = Some(rtp_timestamp);
                return finished;
            }
            let timestamp = self.unwrap_timestamp(rtp_timestamp);
            self.partial = Some(PartialFrame { rtp_timestamp, timestamp, payloads: Vec::new(), bytes: 0 });
        }
        let partial = self.partial.as_mut()?;
        partial.bytes = partial.bytes.saturating_add(packet.payload.len());
        if partial.bytes > MAX_FRAME_BYTES {
            self.partial = None;
            self.discarding = Some(rtp_timestamp);
            self.count_dropped(1);
            return finished;
        }
        partial.payloads.push(packet.payload.clone());
        if !self.is_frame_tail(packet) {
            return finished;
        }
        if finished.is_some() {
            // Two frames completed by one packet (the earlier one lacked its marker); the API hands
            // out one, so the earlier is dropped and counted, and video waits for a keyframe.
            self.count_dropped(1);
        }
        self.partial.take().and_then(|partial| self.finish(partial))
    }

    /// Frames dropped so far: lost packets (video: one per gap, Opus: one per missing packet),
    /// oversize or undecodable frames, and video frames dropped while waiting for a keyframe.
    /// The caller sends a (throttled) PLI when this grows on a video track.
    pub fn lost_frames(&self) -> u64 {
        self.lost_frames
    }

    /// Whether video frames are being dropped until a keyframe arrives.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    fn step_sequence(&mut self, sequence: u16) -> SequenceStep {
        let Some(last) = self.last_sequence else {
            self.last_sequence = Some(sequence);
            return SequenceStep::First;
        };
        let ahead = sequence.wrapping_sub(last);
        if ahead == 0 || ahead >= 0x8000 {
            self.stale_run += 1;
            if self.stale_run < STALE_PACKETS_BEFORE_RESYNC {
                return SequenceStep::Old;
            }
            self.stale_run = 0;
            self.last_sequence = Some(sequence);
            return SequenceStep::Gap { missing: 1 };
        }
        self.stale_run = 0;
        self.last_sequence = Some(sequence);
        match ahead {
            1 => SequenceStep::Next,
            _ => SequenceStep::Gap { missing: ahead - 1 },
        }
    }

    /// Within ±2^31 ticks (6.6 hours at 90 kHz) the shorter way round the 32-bit circle is the
    /// true one; only forward steps move the reference, so a late frame cannot shift later ones.
    fn unwrap_timestamp(&mut self, rtp_timestamp: u32) -> u64 {
        let Some((furthest_rtp, furthest)) = self.furthest_timestamp else {
            self.furthest_timestamp = Some((rtp_timestamp, u64::from(rtp_timestamp)));
            return u64::from(rtp_timestamp);
        };
        // Reinterpreting the wrapped difference as signed is the point of the cast.
        let delta = rtp_timestamp.wrapping_sub(furthest_rtp) as i32;
        let unwrapped = furthest.saturating_add_signed(i64::from(delta));
        if delta > 0 {
            self.furthest_timestamp = Some((rtp_timestamp, unwrapped));
        }
        unwrapped
    }

    fn is_frame_tail(&self, packet: &Packet) -> bool {
        match self.codec {
            // The Opus marker means "talkspurt starts" (RFC 7587); every packet is a whole frame.
            Codec::Opus => true,
            _ => packet.header.marker,
        }
    }

    fn count_dropped(&mut self, frames: u64) {
        self.lost_frames = self.lost_frames.saturating_add(frames);
        if self.video {
            self.waiting_for_keyframe = true;
        }
    }

    fn finish(&mut self, partial: PartialFrame) -> Option<AssembledFrame> {
        let Some(payload) = depacketize(self.codec, &partial.payloads) else {
            self.count_dropped(1);
            return None;
        };
        let keyframe = is_keyframe(self.codec, &payload);
        if self.waiting_for_keyframe {
            if !keyframe {
                self.count_dropped(1);
                return None;
            }
            self.waiting_for_keyframe = false;
        }
        Some(AssembledFrame { timestamp: partial.timestamp, payload, keyframe })
    }
}

/// Whether this payload can be the first packet of a frame, so a frame seen after a loss is
/// known to be whole from its start.
fn is_frame_head(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        // S bit set and partition index 0 (RFC 7741 §4.2).
        Codec::Vp8 => payload.first().is_some_and(|descriptor| descriptor & 0x17 == 0x10),
        Codec::H264 => h264_is_access_unit_head(payload),
        _ => true,
    }
}

const H264_NON_IDR_SLICE: u8 = 1;
const H264_IDR_SLICE: u8 = 5;

fn h264_is_access_unit_head(payload: &[u8]) -> bool {
    let Some(&indicator) = payload.first() else { return false };
    match indicator & NALU_TYPE_BITMASK {
        STAPA_NALU_TYPE => true,
        FUA_NALU_TYPE => match (payload.get(1), payload.get(2)) {
            (Some(&fu_header), Some(&first_body_byte)) => {
                fu_header & FU_START_BITMASK != 0
                    && h264_nal_can_start(fu_header & NALU_TYPE_BITMASK, first_body_byte)
            }
            _ => false,
        },
        nal_type @ 1..=23 => payload.get(1).is_some_and(|&body| h264_nal_can_start(nal_type, body)),
        _ => false,
    }
}

/// A slice starts a picture when `first_mb_in_slice` is 0, whose ue(v) code is a single 1 bit.
/// Parameter sets, SEI and delimiters come before the first slice of an access unit.
fn h264_nal_can_start(nal_type: u8, first_body_byte: u8) -> bool {
    !matches!(nal_type, H264_NON_IDR_SLICE | H264_IDR_SLICE) || first_body_byte & 0x80 != 0
}

/// The frame's payloads through the codec's depacketizer; `None` when undecodable.
fn depacketize(codec: Codec, payloads: &[Bytes]) -> Option<Bytes> {
    match codec {
        // A fresh VP8 depacketizer per packet: `Vp8Packet` keeps the extension flags of the
        // previous packet when the next one has no extension byte.
        Codec::Vp8 => concat(payloads, |payload| Vp8Packet::default().depacketize(payload).ok()),
        Codec::H264 => {
            if !h264_well_formed(payloads) {
                return None;
            }
            // One per frame: its FU-A buffer must not carry a fragment into the next frame.
            let mut depacketizer = H264Packet::default();
            concat(payloads, |payload| depacketizer.depacketize(payload).ok())
        }
        Codec::Opus => concat(payloads, |payload| OpusPacket.depacketize(payload).ok()),
        Codec::Synthetic | Codec::Vp9 | Codec::Av1 => None,
    }
}

fn concat(payloads: &[Bytes], mut depacketize: impl FnMut(&Bytes) -> Option<Bytes>) -> Option<Bytes> {
    let whole = match payloads {
        [single] => depacketize(single)?,
        _ => {
            let mut out = BytesMut::new();
            for payload in payloads {
                out.extend_from_slice(&depacketize(payload)?);
            }
            out.freeze()
        }
    };
    (!whole.is_empty()).then_some(whole)
}

/// What `H264Packet::depacketize` assumes without checking: STAP-A length fields stay inside
/// the packet (it would panic), and FU-A fragments run start → end without a break (it would
/// splice halves of different NAL units).
fn h264_well_formed(payloads: &[Bytes]) -> bool {
    let mut inside_fragment = false;
    for payload in payloads {
        let Some(&indicator) = payload.first() else { return false };
        match indicator & NALU_TYPE_BITMASK {
            FUA_NALU_TYPE => {
                let Some(&fu_header) = payload.get(1) else { return false };
                if (fu_header & FU_START_BITMASK != 0) == inside_fragment {
                    return false;
                }
                inside_fragment = fu_header & FU_END_BITMASK == 0;
            }
            STAPA_NALU_TYPE if inside_fragment || !stap_a_well_formed(payload) => return false,
            _ if inside_fragment => return false,
            _ => {}
        }
    }
    !inside_fragment
}

fn stap_a_well_formed(payload: &[u8]) -> bool {
    let mut rest = payload.get(STAPA_HEADER_SIZE..).unwrap_or_default();
    if rest.is_empty() {
        return false;
    }
    // Each round consumes at least the 2-byte length, so this is bounded by the payload.
    while let [high, low, after @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        match after.get(len..) {
            Some(next) if len > 0 => rest = next,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Why a frame could not be packetized.
#[derive(Debug, thiserror::Error)]
pub enum PacketizeError {
    /// The codec's payloader refused the frame.
    #[error("{codec:?} payloader failed: {source}")]
    Payloader {
        codec: Codec,
        #[source]
        source: rtc::shared::error::Error,
    },
}

/// Egress: whole frames of one track → RTP packets for one viewer (its own SSRC, payload type,
/// contiguous sequence numbers, its own timestamp offset), so a skip of whole groups looks like a
/// clean jump in time, never like packet loss.
#[derive(Debug)]
pub struct FramePacketizer {
    codec: Codec,
    payloader: Box<dyn Payloader>,
    ssrc: u32,
    payload_type: u8,
    /// Frame timestamps are `pts * num / den` seconds.
    timebase_num: u128,
    timebase_den: NonZeroU128,
    clock_rate: u32,
    /// Payload room per packet: the MTU less the fixed RTP header.
    max_payload: usize,
    next_sequence: u16,
    timestamp_offset: u32,
    /// Opus marks the first packet of a talkspurt (RFC 7587 §4.1); we only know the first one.
    sent_any: bool,
}

impl FramePacketizer {
    /// `timebase`: the track's frame timestamps' timebase; `clock_rate`: the RTP clock (90000
    /// video, 48000 Opus); `mtu`: the largest RTP packet (header + payload) to produce, leaving
    /// room for the header extensions and SRTP tag the transport adds. `first_sequence` and
    /// `timestamp_offset` are chosen by the caller (random in production).
    ///
    /// `None` if the codec cannot be sent over RTP here, or for a zero timebase or clock rate, a
    /// payload type above 127, or an MTU under 12 + 64 bytes.
    #[allow(clippy::too_many_arguments)] // Every argument is an independent per-viewer choice.
    pub fn new(
        codec: Codec,
        ssrc: u32,
        payload_type: u8,
        timebase: Timebase,
        clock_rate: u32,
        mtu: usize,
        first_sequence: u16,
        timestamp_offset: u32,
    ) -> Option<Self> {
        let payloader: Box<dyn Payloader> = match codec {
            // The picture id lets receivers tell frames apart across loss; browsers expect it.
            Codec::Vp8 => {
                let mut payloader = Vp8Payloader::default();
                payloader.enable_picture_id = true;
                Box::new(payloader)
            }
            Codec::H264 => Box::new(H264Payloader::default()),
            Codec::Opus => Box::new(OpusPayloader),
            Codec::Synthetic | Codec::Vp9 | Codec::Av1 => return None,
        };
        let max_payload = mtu.checked_sub(RTP_HEADER_BYTES).filter(|room| *room >= MIN_PAYLOAD_BYTES)?;
        if payload_type > 127 || timebase.num == 0 || clock_rate == 0 {
            return None;
        }
        Some(FramePacketizer {
            codec,
            payloader,
            ssrc,
            payload_type,
            timebase_num: u128::from(timebase.num),
            timebase_den: NonZeroU128::new(u128::from(timebase.den))?,
            clock_rate,
            max_payload,
            next_sequence: first_sequence,
            timestamp_offset,
            sent_any: false,
        })
    }

    /// Packets for one frame with presentation timestamp `pts` (in `timebase` ticks); the marker
    /// is on the last (Opus: on the very first packet sent only, per RFC 7587).
    ///
    /// May return no packets: for an empty frame, or an H.264 frame of only parameter sets or
    /// delimiters (the payloader keeps SPS/PPS and sends them in front of the next slice).
    pub fn packetize(&mut self, pts: u64, payload: &Bytes) -> Result<Vec<Packet>, PacketizeError> {
        let payloads = self
            .payloader
            .payload(self.max_payload, payload)
            .map_err(|source| PacketizeError::Payloader { codec: self.codec, source })?;
        let timestamp = self.rtp_timestamp(pts);
        let last = payloads.len().saturating_sub(1);
        let mut packets = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.into_iter().enumerate() {
            let marker = match self.codec {
                Codec::Opus => !self.sent_any,
                _ => index == last,
            };
            let header = Header {
                version: 2,
                marker,
                payload_type: self.payload_type,
                sequence_number: self.next_sequence,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            };
            packets.push(Packet { header, payload });
            self.next_sequence = self.next_sequence.wrapping_add(1);
            self.sent_any = true;
        }
        Ok(packets)
    }

    /// The SSRC every packet of this viewer carries.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.next_sequence
    }

    /// `pts` on the RTP clock plus the offset. Cannot overflow: u64 × u32 × u32 < 2^128.
    fn rtp_timestamp(&self, pts: u64) -> u32 {
        let ticks = u128::from(pts) * self.timebase_num * u128::from(self.clock_rate) / self.timebase_den;
        // RTP timestamps live modulo 2^32: keeping the low bits is the wrap-around receivers expect.
        (ticks as u32).wrapping_add(self.timestamp_offset)
    }
}

#[cfg(test)]
mod tests;
