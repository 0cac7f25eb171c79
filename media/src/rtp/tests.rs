use super::*;
use proptest::prelude::*;
use rtc::shared::marshal::{Marshal, Unmarshal};

const MTU: usize = 1200;
const MILLIS: Timebase = Timebase { num: 1, den: 1000 };

fn packetizer(codec: Codec, first_sequence: u16, timestamp_offset: u32) -> FramePacketizer {
    let rate = clock_rate(codec).unwrap();
    FramePacketizer::new(codec, 0x1234_5678, 96, MILLIS, rate, MTU, first_sequence, timestamp_offset).unwrap()
}

/// A VP8 frame: bit 0 of the first byte clear for a keyframe; the body never repeats the tag.
fn vp8_frame(key: bool, len: usize, seed: u8) -> Bytes {
    let tag = if key { 0x50 } else { 0x51 };
    let body = (1..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed));
    std::iter::once(tag).chain(body).collect::<Vec<u8>>().into()
}

/// Pushes packets in order and collects the frames that come out.
fn assemble(assembler: &mut FrameAssembler, packets: &[Packet]) -> Vec<AssembledFrame> {
    packets.iter().filter_map(|packet| assembler.push(packet)).collect()
}

fn sequences(packets: &[Packet]) -> Vec<u16> {
    packets.iter().map(|packet| packet.header.sequence_number).collect()
}

#[test]
fn vp8_frames_larger_than_the_mtu_round_trip() {
    let mut tx = packetizer(Codec::Vp8, 100, 5000);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    let frames =
        [(0, vp8_frame(true, 3000, 1)), (33, vp8_frame(false, 2500, 2)), (66, vp8_frame(false, 700, 3))];
    for (pts, frame) in &frames {
        let packets = tx.packetize(*pts, frame).unwrap();
        assert!(packets.iter().all(|p| p.header.ssrc == 0x1234_5678 && p.header.payload_type == 96));
        assert!(packets.iter().all(|p| p.header.marker == std::ptr::eq(p, packets.last().unwrap())));
        assert!(packets.iter().all(|p| p.header.timestamp == 5000 + *pts as u32 * 90));
        // Through the wire format, as a browser would see them.
        let packets: Vec<Packet> =
            packets.iter().map(|p| Packet::unmarshal(&mut p.marshal().unwrap()).unwrap()).collect();
        let out = assemble(&mut rx, &packets);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, frame);
        assert_eq!(out[0].keyframe, *pts == 0);
        assert_eq!(out[0].timestamp, 5000 + pts * 90);
    }
    assert_eq!(rx.lost_frames(), 0);
    assert!(!rx.waiting_for_keyframe());
}

#[test]
fn a_skip_is_a_jump_in_time_with_contiguous_sequence_numbers() {
    let mut tx = packetizer(Codec::Vp8, 7, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    let mut packets = Vec::new();
    // Two frames, then the viewer skips ten seconds of groups to the next keyframe.
    for (pts, key) in [(0, true), (33, false), (10_000, true), (10_033, false)] {
        packets.extend(tx.packetize(pts, &vp8_frame(key, 2000, 0)).unwrap());
    }
    assert_eq!(sequences(&packets), (7..7 + packets.len() as u16).collect::<Vec<_>>());
    let out = assemble(&mut rx, &packets);
    let times: Vec<u64> = out.iter().map(|f| f.timestamp).collect();
    assert_eq!(times, [0, 2970, 900_000, 902_970]);
    assert_eq!(rx.lost_frames(), 0);
}

#[test]
fn sequence_and_timestamp_wrap_around() {
    let offset = u32::MAX - 3000;
    let mut tx = packetizer(Codec::Vp8, u16::MAX - 2, offset);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    let mut packets = Vec::new();
    for (pts, key) in [(0, true), (33, false), (66, false)] {
        packets.extend(tx.packetize(pts, &vp8_frame(key, 2000, 0)).unwrap());
    }
    assert_eq!(sequences(&packets)[..4], [65533, 65534, 65535, 0]);
    assert!(packets.last().unwrap().header.timestamp < 3000);
    let out = assemble(&mut rx, &packets);
    let times: Vec<u64> = out.iter().map(|f| f.timestamp).collect();
    let first = u64::from(offset);
    assert_eq!(times, [first, first + 2970, first + 5940]);
    assert!(times[2] > u64::from(u32::MAX));
    assert_eq!(rx.lost_frames(), 0);
}

#[test]
fn a_lost_packet_drops_its_frame_and_deltas_until_the_next_keyframe() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    let key = tx.packetize(0, &vp8_frame(true, 3000, 0)).unwrap();
    let mut damaged = tx.packetize(33, &vp8_frame(false, 3000, 1)).unwrap();
    let delta = tx.packetize(66, &vp8_frame(false, 3000, 2)).unwrap();
    let next_key = tx.packetize(99, &vp8_frame(true, 3000, 3)).unwrap();
    assert_eq!(assemble(&mut rx, &key).len(), 1);
    damaged.remove(1);
    assert!(assemble(&mut rx, &damaged).is_empty());
    assert_eq!(rx.lost_frames(), 1);
    assert!(rx.waiting_for_keyframe());
    assert!(assemble(&mut rx, &delta).is_empty());
    assert_eq!(rx.lost_frames(), 2);
    let out = assemble(&mut rx, &next_key);
    assert_eq!(out.len(), 1);
    assert!(out[0].keyframe);
    assert!(!rx.waiting_for_keyframe());
    assert_eq!(rx.lost_frames(), 2);
}

#[test]
fn a_keyframe_right_after_a_loss_is_delivered() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    assemble(&mut rx, &tx.packetize(0, &vp8_frame(true, 3000, 0)).unwrap());
    let mut delta = tx.packetize(33, &vp8_frame(false, 3000, 1)).unwrap();
    delta.pop(); // The marker packet.
    assert!(assemble(&mut rx, &delta).is_empty());
    let key = vp8_frame(true, 3000, 2);
    let out = assemble(&mut rx, &tx.packetize(66, &key).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, key);
    assert_eq!(rx.lost_frames(), 1);
}

#[test]
fn a_frame_whose_head_was_lost_is_not_delivered() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    assemble(&mut rx, &tx.packetize(0, &vp8_frame(true, 3000, 0)).unwrap());
    let mut key = tx.packetize(33, &vp8_frame(true, 3000, 1)).unwrap();
    key.remove(0);
    assert!(assemble(&mut rx, &key).is_empty());
    assert!(rx.waiting_for_keyframe());
}

#[test]
fn duplicate_and_reordered_old_packets_are_ignored() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    let first = tx.packetize(0, &vp8_frame(true, 3000, 0)).unwrap();
    let second = tx.packetize(33, &vp8_frame(false, 3000, 1)).unwrap();
    assert_eq!(assemble(&mut rx, &first).len(), 1);
    assert_eq!(rx.push(&first[0]), None);
    assert_eq!(rx.push(&second[0]), None);
    assert_eq!(rx.push(&second[0]), None);
    assert_eq!(rx.push(&first[2]), None);
    assert_eq!(assemble(&mut rx, &second[1..]).len(), 1);
    assert_eq!(rx.lost_frames(), 0);
}

#[test]
fn a_sender_that_restarts_its_sequence_numbers_is_followed_after_a_while() {
    let mut tx = packetizer(Codec::Opus, 40_000, 0);
    let mut rx = FrameAssembler::new(Codec::Opus).unwrap();
    assert!(rx.push(&tx.packetize(0, &Bytes::from_static(b"opus")).unwrap()[0]).is_some());
    let mut restarted = packetizer(Codec::Opus, 30_000, 0);
    let out: Vec<_> = (0..100)
        .filter_map(|i| rx.push(&restarted.packetize(20 * i, &Bytes::from_static(b"opus")).unwrap()[0]))
        .collect();
    assert_eq!(out.len(), 100 - STALE_PACKETS_BEFORE_RESYNC as usize + 1);
}

/// Annex-B with 4-byte start codes; bodies avoid zero bytes so no start code hides inside.
fn annex_b(nals: &[Vec<u8>]) -> Bytes {
    nals.iter().flat_map(|nal| [0, 0, 0, 1].iter().chain(nal).copied()).collect::<Vec<u8>>().into()
}

fn nal(header: u8, first_body_byte: u8, len: usize) -> Vec<u8> {
    let body = (2..len).map(|i| (i % 251) as u8 + 1);
    [header, first_body_byte].into_iter().chain(body).collect()
}

#[test]
fn h264_access_units_round_trip_as_annex_b() {
    let mut tx = packetizer(Codec::H264, 0, 0);
    let mut rx = FrameAssembler::new(Codec::H264).unwrap();
    let idr = annex_b(&[nal(0x67, 0x42, 12), nal(0x68, 0xCE, 4), nal(0x65, 0x88, 5000)]);
    let packets = tx.packetize(0, &idr).unwrap();
    assert_eq!(packets[0].payload[0] & NALU_TYPE_BITMASK, STAPA_NALU_TYPE);
    assert_eq!(packets[1].payload[0] & NALU_TYPE_BITMASK, FUA_NALU_TYPE);
    let out = assemble(&mut rx, &packets);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, idr);
    assert!(out[0].keyframe);

    let slice = annex_b(&[nal(0x41, 0x9A, 300)]);
    let packets = tx.packetize(33, &slice).unwrap();
    assert_eq!(packets.len(), 1);
    let out = assemble(&mut rx, &packets);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, slice);
    assert!(!out[0].keyframe);
    assert_eq!(out[0].timestamp, 2970);
}

#[test]
fn a_malformed_stap_a_is_dropped_not_a_panic() {
    let mut rx = FrameAssembler::new(Codec::H264).unwrap();
    // STAP-A: one 1-byte NAL, then a dangling length byte the depacketizer would index past.
    let payload = Bytes::from_static(&[0x78, 0x00, 0x01, 0x65, 0x00]);
    let header = Header { marker: true, ..Default::default() };
    assert_eq!(rx.push(&Packet { header, payload }), None);
    assert_eq!(rx.lost_frames(), 1);
}

#[test]
fn opus_packets_pass_through_one_per_frame() {
    let mut tx = packetizer(Codec::Opus, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Opus).unwrap();
    let frames = [Bytes::from_static(&[0xFC, 1, 2, 3]), Bytes::from_static(&[0xFC, 4, 5])];
    for (i, frame) in frames.iter().enumerate() {
        let packets = tx.packetize(20 * i as u64, frame).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.marker, i == 0, "marker only at the talkspurt start");
        let out = rx.push(&packets[0]).unwrap();
        assert_eq!(out.payload, frame);
        assert!(out.keyframe);
        assert_eq!(out.timestamp, 960 * i as u64);
    }
    assert!(!rx.waiting_for_keyframe());
}

#[test]
fn an_oversize_frame_is_dropped_and_counted() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    assert!(assemble(&mut rx, &tx.packetize(0, &vp8_frame(true, MAX_FRAME_BYTES + 1, 0)).unwrap()).is_empty());
    assert_eq!(rx.lost_frames(), 1);
    let out = assemble(&mut rx, &tx.packetize(33, &vp8_frame(true, 3000, 1)).unwrap());
    assert_eq!(out.len(), 1);
}

#[test]
fn video_waits_for_a_first_keyframe() {
    let mut tx = packetizer(Codec::Vp8, 0, 0);
    let mut rx = FrameAssembler::new(Codec::Vp8).unwrap();
    assert!(rx.waiting_for_keyframe());
    assert!(assemble(&mut rx, &tx.packetize(0, &vp8_frame(false, 100, 0)).unwrap()).is_empty());
    assert_eq!(rx.lost_frames(), 1);
    assert_eq!(assemble(&mut rx, &tx.packetize(33, &vp8_frame(true, 100, 0)).unwrap()).len(), 1);
}

#[test]
fn unsupported_codecs_and_settings_are_refused() {
    assert!(FrameAssembler::new(Codec::Vp9).is_none());
    assert!(FrameAssembler::new(Codec::Synthetic).is_none());
    assert!(FramePacketizer::new(Codec::Av1, 1, 96, MILLIS, 90_000, MTU, 0, 0).is_none());
    assert!(FramePacketizer::new(Codec::Vp8, 1, 96, MILLIS, 90_000, 40, 0, 0).is_none());
    assert!(FramePacketizer::new(Codec::Vp8, 1, 200, MILLIS, 90_000, MTU, 0, 0).is_none());
    let zero_den = Timebase { num: 1, den: 0 };
    assert!(FramePacketizer::new(Codec::Vp8, 1, 96, zero_den, 90_000, MTU, 0, 0).is_none());
    assert_eq!(clock_rate(Codec::H264), Some(90_000));
    assert_eq!(clock_rate(Codec::Opus), Some(48_000));
    assert_eq!(clock_rate(Codec::Synthetic), None);
}

proptest! {
    #[test]
    fn garbage_packets_never_panic(
        packets in proptest::collection::vec(
            (any::<u16>(), any::<u32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)),
            0..64,
        )
    ) {
        for codec in [Codec::Vp8, Codec::H264, Codec::Opus] {
            let mut rx = FrameAssembler::new(codec).unwrap();
            for (i, (jitter, timestamp, marker, payload)) in packets.iter().enumerate() {
                // Mostly in order, sometimes far off, so both paths get exercised.
                let sequence = if jitter % 4 == 0 { *jitter } else { i as u16 };
                let header = Header {
                    sequence_number: sequence,
                    timestamp: timestamp % 4,
                    marker: *marker,
                    ..Default::default()
                };
                let _ = rx.push(&Packet { header, payload: Bytes::from(payload.clone()) });
            }
        }
    }
}
