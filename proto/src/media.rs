//! The media model: a stream has tracks, a track has groups, a group has frames.
//!
//! A video group starts at a keyframe (one GOP). A frame is one media unit (an IVF
//! frame, or a whole frame reassembled from a WHIP publisher's RTP packets) with a
//! media timestamp and flags; edges forward frames without looking inside them.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, TrackName};

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrackKind {
    Video,
    Audio,
    Data,
}

/// The codec of a track's payloads. Edges never transcode; clients use this to
/// write containers (IVF) or negotiate WebRTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// Ferry's generated test payload: carries its send time and a sequence number.
    Synthetic,
    Vp8,
    Vp9,
    Av1,
    H264,
    Opus,
}

impl Codec {
    /// The IVF/AVI fourcc of a video codec that IVF can carry.
    pub fn ivf_fourcc(self) -> Option<[u8; 4]> {
        match self {
            Codec::Vp8 => Some(*b"VP80"),
            Codec::Vp9 => Some(*b"VP90"),
            Codec::Av1 => Some(*b"AV01"),
            Codec::H264 => Some(*b"H264"),
            Codec::Synthetic | Codec::Opus => None,
        }
    }

    /// The codec named by an IVF fourcc.
    pub fn from_ivf_fourcc(fourcc: [u8; 4]) -> Option<Codec> {
        match &fourcc {
            b"VP80" => Some(Codec::Vp8),
            b"VP90" => Some(Codec::Vp9),
            b"AV01" => Some(Codec::Av1),
            b"H264" => Some(Codec::H264),
            _ => None,
        }
    }
}

/// Media timestamps count ticks of `num / den` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timebase {
    pub num: u32,
    pub den: u32,
}

impl Timebase {
    /// Microsecond ticks.
    pub const MICROS: Timebase = Timebase { num: 1, den: 1_000_000 };

    /// Converts a tick count to microseconds, saturating; `None` for a zero denominator.
    pub fn ticks_to_micros(self, ticks: u64) -> Option<u64> {
        if self.den == 0 {
            return None;
        }
        let micros = u128::from(ticks) * u128::from(self.num) * 1_000_000 / u128::from(self.den);
        Some(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

/// Everything a subscriber needs to interpret a track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub name: TrackName,
    pub kind: TrackKind,
    pub codec: Codec,
    pub timebase: Timebase,
    /// Video width in pixels (0 when unknown or not video).
    pub width: u16,
    /// Video height in pixels (0 when unknown or not video).
    pub height: u16,
}

/// Per-frame flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// The frame is a keyframe (a decoder can start here).
    pub const KEYFRAME: FrameFlags = FrameFlags(0b0000_0001);
    /// Frames before this one were dropped (by a skip upstream).
    pub const DISCONTINUITY: FrameFlags = FrameFlags(0b0000_0010);
    const KNOWN: u8 = 0b0000_0011;

    /// No flags.
    pub const fn empty() -> Self {
        FrameFlags(0)
    }

    /// Flags from raw bits; unknown bits are an error so a newer peer's meaning is
    /// never silently dropped.
    pub fn from_bits(bits: u8) -> Result<Self> {
        if bits & !Self::KNOWN != 0 {
            return Err(Error::UnknownFlags(bits));
        }
        Ok(FrameFlags(bits))
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags plus `other`.
    pub const fn with(self, other: FrameFlags) -> Self {
        FrameFlags(self.0 | other.0)
    }
}

/// The fixed-size header before each frame payload on a group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Media timestamp in the track's timebase.
    pub pts: u64,
    pub flags: FrameFlags,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Whether a decoder can start at this frame.
    pub fn is_keyframe(&self) -> bool {
        self.flags.contains(FrameFlags::KEYFRAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timebase_converts_to_micros() {
        let tb = Timebase { num: 1, den: 30 };
        assert_eq!(tb.ticks_to_micros(30), Some(1_000_000));
        assert_eq!(Timebase { num: 1, den: 0 }.ticks_to_micros(1), None);
        assert_eq!(Timebase { num: u32::MAX, den: 1 }.ticks_to_micros(u64::MAX), Some(u64::MAX));
    }

    #[test]
    fn unknown_flags_are_refused() {
        assert!(FrameFlags::from_bits(0b11).is_ok());
        assert_eq!(FrameFlags::from_bits(0x80), Err(Error::UnknownFlags(0x80)));
    }

    #[test]
    fn fourcc_roundtrips() {
        for codec in [Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264] {
            let fourcc = codec.ivf_fourcc();
            assert_eq!(fourcc.and_then(Codec::from_ivf_fourcc), Some(codec));
        }
    }
}
