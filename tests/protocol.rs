//! The relay protocol against bad and churning clients: every bad input gets a
//! close code and a message, nobody else notices, and nothing leaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use ferry_client::watch::{watch, WatchOptions};
use ferry_net::dial::{connect, Link};
use ferry_net::tls::{self, ClientTrust, TransportTuning};
use ferry_net::wire::{read_message, write_message};
use ferry_proto::{
    encode_frame_header, encode_message, ErrorCode, FrameFlags, FrameHeader, GroupHeader, Hello, Message,
    NodeId, Role, StreamName, TrackName, MAX_CONTROL_MESSAGE,
};
use support::*;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn raw_connection(addr: &str) -> (quinn::Endpoint, quinn::Connection) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        tls::client_config(&ClientTrust::Insecure, &TransportTuning::default()).unwrap(),
    );
    let conn = endpoint.connect(addr.parse().unwrap(), "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

/// Waits for the edge to close `conn`; returns its code and reason.
async fn close_of(conn: &quinn::Connection) -> (ErrorCode, String) {
    let err = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await.expect("edge never closed");
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => (
            ErrorCode::from_u32(close.error_code.into_inner() as u32).expect("known code"),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// Sends raw bytes on a fresh control stream and returns how the edge closed us.
async fn send_raw(addr: &str, bytes: &[u8], finish: bool) -> (ErrorCode, String) {
    let (_endpoint, conn) = raw_connection(addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    close_of(&conn).await
}

fn hello(min: u16, max: u16, role: Role) -> Message {
    Message::Hello(Hello {
        min_version: min,
        max_version: max,
        node: NodeId::new("test").unwrap(),
        role,
        token: None,
    })
}

async fn client(edge: &Edge, role: Role) -> Link {
    connect(
        &edge.quic,
        &ClientTrust::Insecure,
        &TransportTuning::default(),
        NodeId::new("t").unwrap(),
        role,
        &Default::default(),
    )
    .await
    .unwrap()
}

async fn next_message(link: &mut Link) -> Message {
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        read_message::<Message>(&mut link.recv, MAX_CONTROL_MESSAGE),
    );
    read.await.expect("no answer").unwrap().expect("control stream ended").1
}

fn subscribe(id: u64, stream: &str) -> Message {
    Message::Subscribe {
        id,
        stream: StreamName::new(stream).unwrap(),
        track: TrackName::video(),
        priority: 0,
        max_lag_ms: 2000,
    }
}

async fn still_serves(edge: &Edge, stream: &str) {
    let opts = WatchOptions {
        edge: edge.quic.clone(),
        stream: StreamName::new(stream).unwrap(),
        track: TrackName::video(),
        max_lag: Duration::from_secs(2),
        duration: Some(Duration::from_millis(1500)),
        output: None,
        throttle_bps: None,
        trust: ClientTrust::Insecure,
        tuning: TransportTuning::viewer(),
        label: NodeId::new("checker").unwrap(),
        max_frame: 1 << 20,
        session: Default::default(),
        stall_timeout: None,
    };
    let stats = watch(opts, Default::default()).await.unwrap();
    assert!(stats.frames > 0, "the edge stopped serving others: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_close_code_and_a_message_while_the_edge_keeps_serving() {
    init();
    let edge = Edge::start("bad-input", &[]);
    let _publisher = publish_synthetic(&edge, "live/ok", "120s");
    wait_for_stream(&edge);

    // Garbage that frames as a small message but is no message.
    let (code, reason) =
        send_raw(&edge.quic, &[0, 0, 0, 8, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], false).await;
    assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
    assert!(reason.contains("malformed"), "{reason}");

    // Garbage whose first bytes read as a huge length (an HTTP request, say).
    let (code, reason) = send_raw(&edge.quic, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    assert_eq!(code, ErrorCode::MessageTooLarge, "{reason}");

    // A truncated message: the length says 100 bytes, 10 arrive, then the stream ends.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (code, reason) = send_raw(&edge.quic, &truncated, true).await;
    assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
    assert!(reason.contains("ended inside"), "{reason}");

    // An envelope version nobody speaks.
    let bytes = encode_message(99, &hello(1, 1, Role::Viewer)).unwrap();
    let (code, reason) = send_raw(&edge.quic, &bytes, false).await;
    assert_eq!(code, ErrorCode::UnsupportedVersion, "{reason}");

    // A hello offering only future versions.
    let bytes = encode_message(1, &hello(7, 9, Role::Viewer)).unwrap();
    let (code, reason) = send_raw(&edge.quic, &bytes, false).await;
    assert_eq!(code, ErrorCode::UnsupportedVersion, "{reason}");
    assert!(reason.contains("7..=9"), "{reason}");

    // Version 2 viewers say who they are first: anything else, or a bad id, is refused.
    for (first, why) in [
        (subscribe(1, "live/ok"), "expected session, got subscribe"),
        (Message::Session { id: "has space".into(), tags: vec![] }, "session id"),
        (Message::Session { id: "ok".into(), tags: vec!["t".into(); 9] }, "client tags"),
    ] {
        let (_endpoint, conn) = raw_connection(&edge.quic).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_message(&mut send, 2, &hello(1, 2, Role::Viewer)).await.unwrap();
        let answer = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await.unwrap().unwrap().1;
        assert!(matches!(answer, Message::HelloOk { version: 2, .. }), "{answer:?}");
        write_message(&mut send, 2, &first).await.unwrap();
        let (code, reason) = close_of(&conn).await;
        assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
        assert!(reason.contains(why), "{reason}");
    }
    // A version 1 viewer has no session message and is served as before.
    let (_endpoint, conn) = raw_connection(&edge.quic).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_message(&mut send, 1, &hello(1, 1, Role::Viewer)).await.unwrap();
    let answer = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await.unwrap().unwrap().1;
    assert!(matches!(answer, Message::HelloOk { version: 1, .. }), "{answer:?}");
    write_message(&mut send, 1, &subscribe(1, "live/ok")).await.unwrap();
    let answer = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await.unwrap().unwrap().1;
    assert!(matches!(answer, Message::SubscribeOk { id: 1, .. }), "{answer:?}");
    // Without rollouts a version 2 client hears an empty variant.
    let link = client(&edge, Role::Viewer).await;
    assert_eq!((link.version, link.variant.as_deref()), (2, Some("")));

    // A publisher whose frame header claims an oversized payload.
    let mut publisher = client(&edge, Role::Publisher).await;
    let track = ferry_proto::TrackInfo {
        name: TrackName::video(),
        kind: ferry_proto::TrackKind::Video,
        codec: ferry_proto::Codec::Vp8,
        timebase: ferry_proto::Timebase { num: 1, den: 30 },
        width: 2,
        height: 2,
    };
    let announce = Message::Announce { stream: StreamName::new("live/evil").unwrap(), tracks: vec![track] };
    write_message(&mut publisher.send, 1, &announce).await.unwrap();
    assert!(matches!(next_message(&mut publisher).await, Message::AnnounceOk { .. }));
    let mut group = publisher.conn.open_uni().await.unwrap();
    write_message(&mut group, 1, &GroupHeader { track: 0, seq: 0 }).await.unwrap();
    let header = FrameHeader { pts: 0, flags: FrameFlags::KEYFRAME, len: u32::MAX };
    group.write_all(&encode_frame_header(&header)).await.unwrap();
    let (code, reason) = close_of(&publisher.conn).await;
    assert_eq!(code, ErrorCode::MessageTooLarge, "{reason}");

    // A subscriber asking for a stream nobody publishes gets an error, not a close.
    let mut viewer = client(&edge, Role::Viewer).await;
    write_message(&mut viewer.send, 1, &subscribe(1, "live/nope")).await.unwrap();
    match next_message(&mut viewer).await {
        Message::SubscribeError { id: 1, code: ErrorCode::NotFound, message } => {
            assert!(message.contains("live/nope"), "{message}")
        }
        other => panic!("expected subscribe_error not_found, got {other:?}"),
    }
    write_message(&mut viewer.send, 1, &subscribe(2, "live/ok")).await.unwrap();
    assert!(matches!(next_message(&mut viewer).await, Message::SubscribeOk { id: 2, .. }));

    still_serves(&edge, "live/ok").await;
    let metrics = edge.metrics();
    assert!(metric_value(&metrics, r#"ferry_errors_total{code="protocol_violation"}"#).unwrap_or(0.0) >= 2.0);
    assert!(metric_value(&metrics, r#"ferry_errors_total{code="not_found"}"#).unwrap_or(0.0) >= 1.0);
}

fn gauges(edge: &Edge) -> (f64, f64, f64) {
    let m = edge.metrics();
    (
        metric_value(&m, "ferry_tasks").unwrap(),
        metric_sum(&m, "ferry_connections"),
        metric_sum(&m, "ferry_subscriptions"),
    )
}

async fn cycle(link: &mut Link, id: u64) {
    write_message(&mut link.send, 1, &subscribe(id, "live/churn")).await.unwrap();
    match next_message(link).await {
        Message::SubscribeOk { id: got, .. } => assert_eq!(got, id),
        other => panic!("expected subscribe_ok, got {other:?}"),
    }
    // Take delivery of the first group, then leave.
    let stream = tokio::time::timeout(Duration::from_secs(10), link.conn.accept_uni()).await;
    drop(stream.expect("no group delivered").unwrap());
    write_message(&mut link.send, 1, &Message::Unsubscribe { id }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribe_cycles_leave_tasks_and_connections_where_they_started() {
    init();
    let edge = Edge::start("leak", &[]);
    let _publisher = publish_synthetic(&edge, "live/churn", "300s");
    wait_for_stream(&edge);
    let before = gauges(&edge);

    let mut cycles = 0;
    // 900 cycles over 9 long-lived connections...
    for _ in 0..9 {
        let mut link = client(&edge, Role::Viewer).await;
        for id in 0..100 {
            cycle(&mut link, id).await;
            cycles += 1;
        }
        link.conn.close(0u32.into(), b"done");
        link.endpoint.wait_idle().await;
    }
    // ...and 100 on a connection each.
    for id in 0..100 {
        let mut link = client(&edge, Role::Viewer).await;
        cycle(&mut link, id).await;
        cycles += 1;
        link.conn.close(0u32.into(), b"done");
        link.endpoint.wait_idle().await;
    }
    assert_eq!(cycles, 1000);
    let accepted = metric_value(&edge.metrics(), "ferry_connections_accepted_total").unwrap();
    assert!(accepted >= 110.0);

    let after = wait_for("tasks and connections back to where they started", Duration::from_secs(20), || {
        let now = gauges(&edge);
        (now == before).then_some(now)
    });
    eprintln!("tasks/connections/subscriptions before {before:?} after {after:?}");
}
