use proptest::prelude::*;

use super::*;
use crate::{
    Codec, ErrorCode, GroupHeader, Hello, Message, NodeId, Role, StreamName, Timebase, TrackInfo, TrackKind,
    TrackName,
};

fn hello() -> Message {
    Message::Hello(Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: MAX_PROTOCOL_VERSION,
        node: NodeId::new("edge-a").unwrap(),
        role: Role::Edge,
        token: Some("secret".into()),
    })
}

fn track() -> TrackInfo {
    TrackInfo {
        name: TrackName::video(),
        kind: TrackKind::Video,
        codec: Codec::Vp8,
        timebase: Timebase { num: 1, den: 30 },
        width: 640,
        height: 360,
    }
}

#[test]
fn every_message_roundtrips() {
    let stream = StreamName::new("live/room1").unwrap();
    let messages = vec![
        hello(),
        Message::HelloOk { version: 1, node: NodeId::new("b").unwrap() },
        Message::Announce { stream: stream.clone(), tracks: vec![track()] },
        Message::AnnounceOk { stream: stream.clone() },
        Message::AnnounceError {
            stream: stream.clone(),
            code: ErrorCode::StreamBusy,
            message: "taken".into(),
        },
        Message::Subscribe {
            id: 7,
            stream: stream.clone(),
            track: TrackName::video(),
            priority: 3,
            max_lag_ms: 1500,
        },
        Message::SubscribeOk { id: 7, track: track() },
        Message::SubscribeError { id: 7, code: ErrorCode::NotFound, message: "no".into() },
        Message::SubscribeDone { id: 7, code: ErrorCode::TrackEnded, message: "bye".into() },
        Message::Unsubscribe { id: 7 },
        Message::KeyframeRequest { stream, track: TrackName::video() },
        Message::GoAway { reason: "drain".into() },
        Message::Session { id: "viewer-42".into(), tags: vec!["ferry/0.1".into()] },
        Message::SessionOk { variant: "bbr=treatment".into(), client_flag: Some("bbr-1".into()) },
    ];
    for msg in messages {
        let bytes = encode_message(PROTOCOL_VERSION, &msg).unwrap();
        let (version, decoded, used) =
            decode_message::<Message>(&bytes, MAX_CONTROL_MESSAGE).unwrap().unwrap();
        assert_eq!((version, &decoded, used), (PROTOCOL_VERSION, &msg, bytes.len()));
    }
}

#[test]
fn oversized_length_is_refused_before_reading_the_body() {
    let prefix = u32::MAX.to_be_bytes();
    let err = decode_message::<Message>(&prefix, 1024).unwrap_err();
    assert_eq!(err.code(), ErrorCode::MessageTooLarge);
}

#[test]
fn unknown_version_is_refused() {
    let mut bytes = encode_message(PROTOCOL_VERSION, &hello()).unwrap();
    bytes[4..6].copy_from_slice(&99u16.to_be_bytes());
    let err = decode_message::<Message>(&bytes, MAX_CONTROL_MESSAGE).unwrap_err();
    assert_eq!(err, Error::UnsupportedVersion(99));
}

#[test]
fn garbage_body_is_malformed() {
    let mut bytes = vec![0, 0, 0, 6, 0, 1];
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let err = decode_message::<Message>(&bytes, MAX_CONTROL_MESSAGE).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProtocolViolation);
}

#[test]
fn invalid_names_inside_messages_are_refused() {
    #[derive(serde::Serialize)]
    enum Fake {
        #[allow(dead_code)]
        Hello(u8),
        #[allow(dead_code)]
        HelloOk(u8),
        Announce {
            stream: String,
            tracks: Vec<u8>,
        },
    }
    let bytes = encode_message(1, &Fake::Announce { stream: "../x".into(), tracks: vec![] });
    let err = decode_message::<Message>(&bytes.unwrap(), MAX_CONTROL_MESSAGE).unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
}

#[test]
fn frame_header_roundtrips_and_limits_payload() {
    let header = FrameHeader { pts: 123_456, flags: FrameFlags::KEYFRAME, len: 1000 };
    let bytes = encode_frame_header(&header);
    assert_eq!(decode_frame_header(bytes, 1000), Ok(header));
    assert_eq!(decode_frame_header(bytes, 999), Err(Error::TooLarge { len: 1000, limit: 999 }));
}

#[test]
fn group_header_roundtrips() {
    let header = GroupHeader { track: 3, seq: u64::MAX };
    let bytes = encode_message(PROTOCOL_VERSION, &header).unwrap();
    let (_, decoded, _) = decode_message::<GroupHeader>(&bytes, 64).unwrap().unwrap();
    assert_eq!(decoded, header);
}

proptest! {
    #[test]
    fn subscribe_roundtrips(id: u64, priority: u8, max_lag_ms: u32, name in "[a-z0-9]{1,20}(/[a-z0-9]{1,20}){0,3}") {
        let msg = Message::Subscribe {
            id,
            stream: StreamName::new(name).unwrap(),
            track: TrackName::video(),
            priority,
            max_lag_ms,
        };
        let bytes = encode_message(PROTOCOL_VERSION, &msg).unwrap();
        let (_, decoded, used) = decode_message::<Message>(&bytes, MAX_CONTROL_MESSAGE).unwrap().unwrap();
        prop_assert_eq!(decoded, msg);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn truncated_input_never_panics_and_asks_for_more(cut in 0usize..200) {
        let msg = Message::Announce { stream: StreamName::new("live/x").unwrap(), tracks: vec![track()] };
        let bytes = encode_message(PROTOCOL_VERSION, &msg).unwrap();
        let cut = cut.min(bytes.len().saturating_sub(1));
        prop_assert_eq!(decode_message::<Message>(&bytes[..cut], MAX_CONTROL_MESSAGE), Ok(None));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), limit in 0usize..100_000) {
        let _ = decode_message::<Message>(&bytes, limit);
        let _ = decode_message::<GroupHeader>(&bytes, limit);
        if let Some(chunk) = bytes.first_chunk::<FRAME_HEADER_LEN>() {
            let _ = decode_frame_header(*chunk, limit);
        }
    }

    #[test]
    fn frame_headers_roundtrip(pts: u64, key: bool, len: u32) {
        let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::empty() };
        let header = FrameHeader { pts, flags, len };
        prop_assert_eq!(decode_frame_header(encode_frame_header(&header), usize::MAX), Ok(header));
    }
}
