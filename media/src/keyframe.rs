//! Keyframe detection on whole frames (an IVF frame, an H.264 access unit, an AV1
//! temporal unit), so publishers can start a new group at each keyframe.
//!
//! Input may come from untrusted files: every parser here is bounds-checked,
//! bounded in work by the input length, and answers `false` on anything it does
//! not understand rather than failing.

use ferry_proto::Codec;

use crate::synthetic;

/// Whether a decoder can start at this frame.
pub fn is_keyframe(codec: Codec, data: &[u8]) -> bool {
    match codec {
        Codec::Synthetic => synthetic::parse(data).is_some_and(|stamp| stamp.keyframe),
        Codec::Vp8 => vp8(data),
        Codec::Vp9 => vp9(data),
        Codec::Av1 => av1(data),
        Codec::H264 => h264_annex_b(data),
        // Every Opus packet decodes on its own.
        Codec::Opus => true,
    }
}

/// VP8 frame tag (RFC 6386 §9.1): bit 0 is `frame_type`, 0 for a key frame.
fn vp8(data: &[u8]) -> bool {
    data.first().is_some_and(|tag| tag & 1 == 0)
}

/// VP9 uncompressed header: frame_marker(2) profile_low(1) profile_high(1)
/// [reserved_zero(1) if profile 3] show_existing_frame(1) frame_type(1).
///
/// In a superframe the key frame, if any, is the first frame, which is where
/// this reads.
fn vp9(data: &[u8]) -> bool {
    vp9_header_says_key(data).unwrap_or(false)
}

/// `None` when the header is cut short or is not VP9.
fn vp9_header_says_key(data: &[u8]) -> Option<bool> {
    let mut bits = BitReader::new(data);
    if bits.read(2)? != 0b10 {
        return None;
    }
    let low = bits.read(1)?;
    let high = bits.read(1)?;
    if (high << 1) | low == 3 {
        bits.read(1)?;
    }
    if bits.read(1)? == 1 {
        // show_existing_frame re-displays an old frame; nothing new to decode from.
        return Some(false);
    }
    Some(bits.read(1)? == 0)
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;

/// AV1 temporal unit: a sequence of OBUs. Key when it carries a sequence header
/// (encoders emit one in front of every key frame) or a frame header with
/// `show_existing_frame = 0` and `frame_type = KEY_FRAME`.
///
/// Without the sequence header we cannot know about `reduced_still_picture_header`;
/// such streams always carry the sequence header, so the first rule covers them.
fn av1(data: &[u8]) -> bool {
    let mut rest = data;
    // Each OBU consumes at least one byte, so this loop is bounded by the input length.
    while let Some((&header, after_header)) = rest.split_first() {
        if header & 0x80 != 0 {
            // obu_forbidden_bit set: not AV1.
            return false;
        }
        let obu_type = (header >> 3) & 0x0F;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut body = after_header;
        if has_extension {
            body = match body.get(1..) {
                Some(body) => body,
                None => return false,
            };
        }
        let payload = if has_size {
            let Some((size, used)) = leb128(body) else {
                return false;
            };
            let Some(after_size) = body.get(used..) else {
                return false;
            };
            let Some(len) = usize::try_from(size).ok() else {
                return false;
            };
            let Some(payload) = after_size.get(..len) else {
                return false;
            };
            rest = after_size.get(len..).unwrap_or_default();
            payload
        } else {
            // Without a size field the OBU runs to the end of the unit.
            rest = &[];
            body
        };
        match obu_type {
            OBU_SEQUENCE_HEADER => return true,
            OBU_FRAME | OBU_FRAME_HEADER => {
                let mut bits = BitReader::new(payload);
                let show_existing = bits.read(1);
                let frame_type = bits.read(2);
                return show_existing == Some(0) && frame_type == Some(0);
            }
            _ => {}
        }
    }
    false
}

/// AV1 leb128: at most 8 bytes, 7 bits each, little-endian groups.
/// Returns the value and the number of bytes used.
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in data.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;

/// H.264 Annex-B access unit: key when it contains an IDR slice, or an SPS (which
/// encoders place in front of IDRs; some streams use recovery points instead).
fn h264_annex_b(data: &[u8]) -> bool {
    // A 4-byte start code ends with the same 3 bytes, so matching 00 00 01 finds both.
    data.windows(4).any(|window| match window {
        [0, 0, 1, nal_header] => matches!(nal_header & 0x1F, NAL_IDR | NAL_SPS),
        _ => false,
    })
}

/// MSB-first bit reader over a byte slice; `None` past the end.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    /// Reads `n <= 8` bits.
    fn read(&mut self, n: u32) -> Option<u8> {
        let mut value = 0u8;
        for _ in 0..n.min(8) {
            let byte = self.data.get(self.bit / 8)?;
            let shift = 7 - (self.bit % 8);
            value = (value << 1) | ((byte >> shift) & 1);
            self.bit += 1;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vp8_key_and_inter_frames() {
        // Key frame tag followed by the 9d 01 2a start code.
        assert!(is_keyframe(Codec::Vp8, &[0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a]));
        assert!(!is_keyframe(Codec::Vp8, &[0x51, 0x42, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn vp9_key_inter_and_show_existing() {
        // 10 0 0 | show_existing 0 | frame_type 0 -> key (profile 0).
        assert!(is_keyframe(Codec::Vp9, &[0b1000_0000, 0x49, 0x83, 0x42]));
        // frame_type 1 -> inter.
        assert!(!is_keyframe(Codec::Vp9, &[0b1000_0100]));
        // show_existing_frame -> not key.
        assert!(!is_keyframe(Codec::Vp9, &[0b1000_1000]));
        // Profile 3 has a reserved bit before show_existing_frame: 10 1 1 0 | 0 | 0 -> key.
        assert!(is_keyframe(Codec::Vp9, &[0b1011_0000]));
        assert!(!is_keyframe(Codec::Vp9, &[0b1011_0010]));
        // Bad frame marker.
        assert!(!is_keyframe(Codec::Vp9, &[0b0000_0000]));
        assert!(!is_keyframe(Codec::Vp9, &[]));
    }

    /// An OBU header byte with the size field present.
    fn obu(obu_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(obu_type << 3) | 0x02, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn av1_temporal_units() {
        let delimiter = obu(2, &[]);
        let key_frame = [delimiter.clone(), obu(OBU_FRAME, &[0b0001_0000, 0xAA])].concat();
        let inter_frame = [delimiter.clone(), obu(OBU_FRAME, &[0b0010_0000, 0xAA])].concat();
        let shown_existing = [delimiter.clone(), obu(OBU_FRAME_HEADER, &[0b1000_0000])].concat();
        let with_sequence =
            [delimiter.clone(), obu(OBU_SEQUENCE_HEADER, &[0, 0, 0]), obu(OBU_FRAME, &[0x20])].concat();
        assert!(is_keyframe(Codec::Av1, &key_frame));
        assert!(!is_keyframe(Codec::Av1, &inter_frame));
        assert!(!is_keyframe(Codec::Av1, &shown_existing));
        assert!(is_keyframe(Codec::Av1, &with_sequence));
        // Extension byte is skipped; last OBU without a size runs to the end.
        let extended = [vec![(OBU_FRAME << 3) | 0x04 | 0x02, 0xFF, 1, 0x10]].concat();
        assert!(is_keyframe(Codec::Av1, &extended));
        assert!(is_keyframe(Codec::Av1, &[OBU_FRAME << 3, 0x10]));
        // A size running past the end is garbage, not a keyframe.
        assert!(!is_keyframe(Codec::Av1, &[(OBU_FRAME << 3) | 0x02, 9, 0x10]));
        assert!(!is_keyframe(Codec::Av1, &delimiter));
    }

    #[test]
    fn leb128_multi_byte_values() {
        assert_eq!(leb128(&[0x05]), Some((5, 1)));
        assert_eq!(leb128(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(leb128(&[0xFF; 9]), None);
    }

    #[test]
    fn h264_idr_and_sps_are_key_slices_are_not() {
        let sps_pps_idr = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xCE, 0, 0, 1, 0x65, 0x88];
        let idr_only = [0, 0, 1, 0x65, 0x88];
        let non_idr = [0, 0, 0, 1, 0x41, 0x9A, 0, 0, 1, 0x41];
        assert!(is_keyframe(Codec::H264, &sps_pps_idr));
        assert!(is_keyframe(Codec::H264, &idr_only));
        assert!(!is_keyframe(Codec::H264, &non_idr));
        assert!(!is_keyframe(Codec::H264, &[0, 0, 1]));
    }

    #[test]
    fn synthetic_follows_its_flag_and_opus_is_always_key() {
        let mut source = synthetic::SyntheticSource::new(synthetic::SyntheticConfig::default());
        let key = source.next_frame(0);
        let delta = source.next_frame(0);
        assert!(is_keyframe(Codec::Synthetic, &key.payload));
        assert!(!is_keyframe(Codec::Synthetic, &delta.payload));
        assert!(!is_keyframe(Codec::Synthetic, b"not synthetic"));
        assert!(is_keyframe(Codec::Opus, &[]));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            for codec in [Codec::Synthetic, Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264, Codec::Opus] {
                let _ = is_keyframe(codec, &data);
            }
        }
    }
}
