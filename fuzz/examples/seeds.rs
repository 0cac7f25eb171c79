//! Writes the committed seed corpus, `seeds/TARGET/NAME`: a handful of small, real
//! inputs per fuzz target, made by Ferry's own encoders (relay messages, gossip
//! captured from two live gossip processes, raft messages, signed tokens, snapshots)
//! and, for SDP, text written the way browsers write it.
//!
//! Run from `fuzz/`: `cargo +nightly run --example seeds` (it replaces `seeds/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_control_plane::raft_codec::encode;
use ferry_control_plane::transport::hello_stream;
use ferry_control_plane::versions::Hello as RaftHello;
use ferry_control_plane::state::{encode_request, AuditEvent, Edge, Outcome, Rollout, State, Stream};
use ferry_edge::auth::{Action, Claims, StreamScope, TokenSecret};
use ferry_fuzz::{gossip_keyring, members_json, now, raft_batch, sample_requests, sample_state, CLUSTER};
use ferry_net::gossip::witness::{Probe, Prover};
use ferry_net::gossip::{Gossip, GossipConfig, GossipMetrics, SelfInfo};
use ferry_net::identity::{Identity, Role};
use ferry_net::keys::ReloadingCert;
use ferry_net::tls::{init_ca, issue_node_cert, DEFAULT_CERT_LIFETIME};
use ferry_proto::{
    encode_frame_header, encode_message, Codec, ErrorCode, FrameFlags, FrameHeader, GroupHeader, Hello,
    Message, NodeId, StreamName, Timebase, TrackInfo, TrackKind, TrackName, PROTOCOL_VERSION,
};
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, MessageType, Snapshot,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn write(root: &Path, target: &str, seeds: Seeds) {
    let dir = root.join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a seed directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("a seed is written");
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write(&root, "relay_message", relay_messages());
    write(&root, "gossip_datagram", gossip_datagrams());
    write(&root, "raft_frame", raft_frames());
    write(&root, "log_entry", log_entries());
    write(&root, "snapshot", snapshots());
    write(&root, "jwt", tokens());
    write(&root, "sdp", sdps());
    println!("seeds written to {}", root.display());
}

fn relay_messages() -> Seeds {
    let stream = StreamName::new("live/room1").expect("a stream name");
    let track = TrackInfo {
        name: TrackName::video(),
        kind: TrackKind::Video,
        codec: Codec::Vp8,
        timebase: Timebase { num: 1, den: 90_000 },
        width: 1280,
        height: 720,
    };
    let hello = Message::Hello(Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        node: NodeId::new("edge-a").expect("a node id"),
        role: ferry_proto::Role::Edge,
        token: Some("eyJhbGciOiJIUzI1NiJ9.e30.c2ln".into()),
    });
    let messages = [
        ("hello", hello),
        ("announce", Message::Announce { stream: stream.clone(), tracks: vec![track.clone()] }),
        (
            "subscribe",
            Message::Subscribe {
                id: 7,
                stream: stream.clone(),
                track: TrackName::video(),
                priority: 3,
                max_lag_ms: 1500,
            },
        ),
        ("subscribe_ok", Message::SubscribeOk { id: 7, track }),
        (
            "announce_error",
            Message::AnnounceError { stream, code: ErrorCode::StreamBusy, message: "taken".into() },
        ),
        ("session", Message::Session { id: "viewer-42".into(), tags: vec!["ferry/0.1".into()] }),
        (
            "session_ok",
            Message::SessionOk { variant: "bbr=treatment".into(), client_flag: Some("bbr-1".into()) },
        ),
        ("go_away", Message::GoAway { reason: "drain".into() }),
    ];
    let mut seeds: Seeds = messages
        .into_iter()
        .map(|(name, msg)| (name, encode_message(PROTOCOL_VERSION, &msg).expect("a message encodes")))
        .collect();
    let group = GroupHeader { track: 7, seq: 42 };
    seeds.push(("group_header", encode_message(PROTOCOL_VERSION, &group).expect("a group header encodes")));
    let frame = FrameHeader { pts: 90_000, flags: FrameFlags::KEYFRAME, len: 1200 };
    seeds.push(("frame_header", encode_frame_header(&frame).to_vec()));
    seeds
}

/// Datagrams of two live gossip processes (plaintext, `--insecure-gossip`), relayed by
/// a socket in the middle: a's SYN, b's SYN-ACK, a's ACK.
async fn capture_gossip() -> Vec<Vec<u8>> {
    let middle = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let start = |id: &'static str, seeds: Vec<String>| {
        let (tracker, cancel) = (&tracker, cancel.clone());
        async move {
            let listen =
                std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a port");
            let config = GossipConfig {
                node_id: id.to_owned(),
                listen,
                advertise: None,
                seeds,
                cluster_id: CLUSTER.to_owned(),
                interval: Duration::from_millis(50),
                keyring: None,
                identity: None,
            };
            let info = move || SelfInfo {
                role: "edge".into(),
                region: "eu".into(),
                version: "0.1.0".into(),
                quic_addr: "10.0.0.1:4433".into(),
                http_addr: "10.0.0.1:8080".into(),
                sessions: 12,
                cpu: 0.25,
                origins: ["live/room1".to_owned()].into(),
                ..SelfInfo::default()
            };
            Gossip::start(config, Arc::new(info), GossipMetrics::default(), tracker, cancel)
                .await
                .expect("gossip starts")
        }
    };
    let a = start("e1", vec![middle.local_addr().expect("bound").to_string()]).await;
    let b = start("e2", vec![]).await;
    let syn = receive(&middle, a.local_addr()).await;
    middle.send_to(&syn, b.local_addr()).await.expect("sent");
    let syn_ack = receive(&middle, b.local_addr()).await;
    middle.send_to(&syn_ack, a.local_addr()).await.expect("sent");
    let ack = loop {
        // a also keeps sending SYNs to the middle; its ACK is the one that is not.
        let datagram = receive(&middle, a.local_addr()).await;
        if datagram.get(3) == Some(&2) {
            break datagram;
        }
    };
    cancel.cancel();
    a.shutdown().await;
    b.shutdown().await;
    vec![syn, syn_ack, ack]
}

/// The next datagram `socket` receives from `from`.
async fn receive(socket: &tokio::net::UdpSocket, from: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, sender) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("gossip arrives")
            .expect("a datagram");
        if sender == from {
            return buf.get(..len).unwrap_or_default().to_vec();
        }
    }
}

fn gossip_datagrams() -> Seeds {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let [syn, syn_ack, ack]: [Vec<u8>; 3] =
        rt.block_on(capture_gossip()).try_into().expect("three datagrams");

    // A ping for the fuzz target's own member (e1, generation 1), and a pong signed
    // by a certificate of a CA made here.
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init_ca(&dir.join("ca")).expect("a CA");
    let identity = Identity::new(CLUSTER, Role::Edge, "e1").expect("an identity");
    let (cert, key) = issue_node_cert(&dir.join("ca"), "e1", &identity, &[], DEFAULT_CERT_LIFETIME, &dir)
        .expect("a certificate");
    let prover =
        Prover::new(ReloadingCert::load(&cert, &key).expect("the certificate loads"), CLUSTER, "e1", 1);
    let _ = std::fs::remove_dir_all(&dir);
    let ping = Probe::Ping { nonce: [9; 16], id: "e1".into(), generation: 1 };
    let pong = prover.answer(&ping).expect("the ping is answered").encode();
    let ping = ping.encode();

    let keyring = gossip_keyring();
    let seal = |plain: &[u8]| keyring.seal(plain, [3; 12]).expect("a datagram seals");
    vec![
        ("sealed_syn", seal(&syn)),
        ("sealed_syn_ack", seal(&syn_ack)),
        ("sealed_ping", seal(&ping)),
        ("syn", syn),
        ("syn_ack", syn_ack),
        ("ack", ack),
        ("bad_cluster", b"\x53\xb0\x00\x03".to_vec()),
        ("ping", ping),
        ("pong", pong),
    ]
}

fn entry(index: u64, kind: EntryType, data: Vec<u8>) -> Entry {
    let mut entry = Entry::default();
    entry.set_entry_type(kind);
    entry.term = 2;
    entry.index = index;
    entry.data = data;
    entry.context = format!("req-{index}").into_bytes();
    entry
}

fn conf_change() -> Vec<u8> {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = 3;
    cc.context = b"10.0.0.3:7000".to_vec();
    encode(&cc)
}

fn request_entries() -> Vec<Entry> {
    sample_requests()
        .iter()
        .zip(1..)
        .map(|(request, index)| {
            entry(index, EntryType::EntryNormal, encode_request(request).expect("a request encodes"))
        })
        .collect()
}

fn raft_frames() -> Seeds {
    let message = |kind: MessageType, entries: Vec<Entry>| {
        let mut msg = raft::eraftpb::Message::default();
        msg.set_msg_type(kind);
        msg.from = 1;
        msg.to = 2;
        msg.term = 2;
        msg.log_term = 2;
        msg.index = 4;
        msg.commit = 3;
        msg.set_entries(entries);
        msg
    };
    let mut entries = request_entries();
    entries.truncate(3);
    entries.push(entry(4, EntryType::EntryConfChange, conf_change()));
    let append = message(MessageType::MsgAppend, entries);
    let heartbeat = message(MessageType::MsgHeartbeat, vec![]);
    let vote = message(MessageType::MsgRequestVote, vec![]);
    let mut snapshot = message(MessageType::MsgSnapshot, vec![]);
    snapshot.set_snapshot(state_snapshot());
    vec![
        ("append", raft_batch(&[encode(&append)])),
        ("heartbeat_vote", raft_batch(&[encode(&heartbeat), encode(&vote)])),
        ("snapshot", raft_batch(&[encode(&snapshot)])),
        ("hello", hello_stream(&RaftHello { id: 2, command_set: 2, version: "0.2.0".to_owned() })),
    ]
}

fn state_snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.data = sample_state().to_snapshot_bytes().expect("a snapshot encodes");
    let meta = snapshot.mut_metadata();
    meta.index = 11;
    meta.term = 2;
    meta.set_conf_state(ConfState::from(([1, 2, 3], [])));
    snapshot
}

fn log_entries() -> Seeds {
    let entries = request_entries();
    let pick = |i: usize| entries.get(i).expect("a sample entry");
    let json = |i: usize| pick(i).data.to_vec();
    vec![
        ("register_edge", encode(pick(0))),
        ("put_stream", encode(pick(2))),
        ("create_rollout", encode(pick(4))),
        ("conf_change", encode(&entry(12, EntryType::EntryConfChange, conf_change()))),
        ("empty", encode(&entry(13, EntryType::EntryNormal, vec![]))),
        ("register_edge.json", json(0)),
        ("claim_stream.json", json(3)),
        ("set_rollout_level.json", json(5)),
        ("create_token.json", json(6)),
    ]
}

/// Version 2 of the snapshot (`control-plane/src/state/codec.rs`, `StateV2`), which a
/// voter still reads: no operator tokens, audit events without role and source.
#[derive(Serialize)]
struct StateV2 {
    edges: BTreeMap<String, Edge>,
    streams: BTreeMap<String, Stream>,
    rollouts: BTreeMap<String, Rollout>,
    audit: Vec<AuditEventV2>,
    applied_requests: BTreeMap<String, (u64, Outcome)>,
    applied_index: u64,
    next_audit_id: u64,
}

#[derive(Serialize)]
struct AuditEventV2 {
    id: u64,
    index: u64,
    at_ms: u64,
    actor: String,
    request_id: String,
    action: String,
    target: String,
    detail: String,
}

fn snapshot_v2(state: &State) -> Vec<u8> {
    let audit = state.audit.iter().map(|e: &AuditEvent| AuditEventV2 {
        id: e.id,
        index: e.index,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        request_id: e.request_id.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        detail: e.detail.clone(),
    });
    let old = StateV2 {
        edges: state.edges.clone(),
        streams: state.streams.clone(),
        rollouts: state.rollouts.clone(),
        audit: audit.collect(),
        applied_requests: state.applied_requests.clone(),
        applied_index: state.applied_index,
        next_audit_id: state.next_audit_id,
    };
    let mut bytes = vec![2];
    bytes.extend(
        bincode::serde::encode_to_vec(&old, bincode::config::standard()).expect("a v2 state encodes"),
    );
    bytes
}

fn snapshots() -> Seeds {
    let state = sample_state();
    let snapshot = state_snapshot();
    let mut hard_state = HardState::default();
    hard_state.term = 2;
    hard_state.vote = 1;
    hard_state.commit = 11;
    vec![
        ("state_v3", state.to_snapshot_bytes().expect("a snapshot encodes")),
        ("state_v2", snapshot_v2(&state)),
        ("empty_v3", State::default().to_snapshot_bytes().expect("a snapshot encodes")),
        ("snapshot_metadata", encode(snapshot.get_metadata())),
        ("hard_state", encode(&hard_state)),
        ("members.json", members_json()),
        ("backup", backup_file(&state)),
    ]
}

/// A backup file of `state`, as `GET /v1/snapshot` answers it.
fn backup_file(state: &State) -> Vec<u8> {
    let header = ferry_control_plane::backup::BackupHeader {
        cluster_uuid: None,
        index: 11,
        term: 2,
        voters: vec![1, 2, 3],
        state_format: 0,
        ferry_version: "0.1.0".to_owned(),
        created_ms: 1_700_000_000_000,
        body_len: 0,
    };
    let body = state.to_snapshot_bytes().expect("a snapshot encodes");
    ferry_control_plane::backup::encode(header, &body).expect("a backup encodes")
}

fn tokens() -> Seeds {
    let secret = TokenSecret::from_bytes(ferry_fuzz::TOKEN_SECRET).expect("the test secret");
    let issued = now() - Duration::from_secs(60);
    let claims = |scope: StreamScope, action: Action| {
        Claims::new(scope, action, CLUSTER, Duration::from_secs(3600), issued)
    };
    let publish = claims(StreamScope::Exact("live/a".into()), Action::Publish);
    let view = Claims {
        nbf: Some(ferry_fuzz::NOW_SECS - 30),
        sub: Some("viewer-7".into()),
        ..claims(StreamScope::Prefix("live/".into()), Action::View)
    };
    let takeover = Claims { takeover: true, ..publish.clone() };
    let expired = claims(StreamScope::Exact("live/a".into()), Action::View);
    let expired = Claims { exp: ferry_fuzz::NOW_SECS - 10, ..expired };
    let publish_token = secret.sign(&publish, Some(ferry_fuzz::TOKEN_KID));
    let json = |header: &str, claims: &Claims| {
        let mut text = header.as_bytes().to_vec();
        text.push(b'\n');
        text.extend(serde_json::to_vec(claims).expect("claims encode"));
        text
    };
    vec![
        ("publish", publish_token.clone().into_bytes()),
        ("view_prefix", secret.sign(&view, Some(ferry_fuzz::TOKEN_KID)).into_bytes()),
        ("takeover_no_kid", secret.sign(&takeover, None).into_bytes()),
        ("expired", secret.sign(&expired, Some(ferry_fuzz::TOKEN_KID)).into_bytes()),
        ("bearer", format!("Bearer {publish_token}").into_bytes()),
        ("claims.json", json(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#, &view)),
        ("alg_none.json", json(r#"{"alg":"none","typ":"JWT"}"#, &publish)),
        ("named_token", b"ferry.ci.s3cret".to_vec()),
        ("bootstrap_token", b"bootstrap-token-0123456789".to_vec()),
    ]
}

/// A publish offer as Chromium writes it (WHIP: sendonly audio and video, bundled).
const CHROMIUM_PUBLISH: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS stream\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:Vq3M\r
a=ice-pwd:3hJ0rMXl0zy5bgkFJmpbOsbB\r
a=ice-options:trickle\r
a=fingerprint:sha-256 4F:2C:9B:E1:05:7A:38:C0:11:9D:44:BC:72:AA:3E:6D:90:1F:28:5B:C4:77:E2:0A:99:63:D8:14:B5:7C:2E:F1\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendonly\r
a=msid:stream audio0\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:63 red/48000/2\r
a=fmtp:63 111/111\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:13 CN/8000\r
a=rtpmap:110 telephone-event/48000\r
a=rtpmap:126 telephone-event/8000\r
a=ssrc:1001 cname:k3nPq0yX\r
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102 103 45 46 127 123\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:Vq3M\r
a=ice-pwd:3hJ0rMXl0zy5bgkFJmpbOsbB\r
a=ice-options:trickle\r
a=fingerprint:sha-256 4F:2C:9B:E1:05:7A:38:C0:11:9D:44:BC:72:AA:3E:6D:90:1F:28:5B:C4:77:E2:0A:99:63:D8:14:B5:7C:2E:F1\r
a=setup:actpass\r
a=mid:1\r
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=sendonly\r
a=msid:stream video0\r
a=rtcp-mux\r
a=rtcp-rsize\r
a=rtpmap:96 VP8/90000\r
a=rtcp-fb:96 goog-remb\r
a=rtcp-fb:96 transport-cc\r
a=rtcp-fb:96 ccm fir\r
a=rtcp-fb:96 nack\r
a=rtcp-fb:96 nack pli\r
a=rtpmap:97 rtx/90000\r
a=fmtp:97 apt=96\r
a=rtpmap:98 VP9/90000\r
a=fmtp:98 profile-id=0\r
a=rtpmap:99 rtx/90000\r
a=fmtp:99 apt=98\r
a=rtpmap:102 H264/90000\r
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r
a=rtpmap:103 rtx/90000\r
a=fmtp:103 apt=102\r
a=rtpmap:45 AV1/90000\r
a=rtpmap:46 rtx/90000\r
a=fmtp:46 apt=45\r
a=rtpmap:127 red/90000\r
a=rtpmap:123 ulpfec/90000\r
a=ssrc-group:FID 2001 2002\r
a=ssrc:2001 cname:k3nPq0yX\r
a=ssrc:2002 cname:k3nPq0yX\r
";

/// A view offer as Firefox writes it (WHEP: recvonly, H264 first).
const FIREFOX_VIEW: &str = "v=0\r
o=mozilla...THIS_IS_SDPARTA-99.0 5124389712342 0 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
a=fingerprint:sha-256 A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F:90:A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F:90\r
a=group:BUNDLE 0 1\r
a=ice-options:trickle\r
a=msid-semantic:WMS *\r
m=video 9 UDP/TLS/RTP/SAVPF 126 97 120 124 121 125\r
c=IN IP4 0.0.0.0\r
a=recvonly\r
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r
a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1\r
a=fmtp:120 max-fs=12288;max-fr=60\r
a=ice-pwd:e0f2f5b0c2cbe0e9d3a4b7f7a4c3a9e1\r
a=ice-ufrag:8d1c2f3a\r
a=mid:0\r
a=rtcp-fb:126 nack\r
a=rtcp-fb:126 nack pli\r
a=rtcp-fb:126 ccm fir\r
a=rtcp-mux\r
a=rtpmap:126 H264/90000\r
a=rtpmap:97 H264/90000\r
a=rtpmap:120 VP8/90000\r
a=rtpmap:124 rtx/90000\r
a=rtpmap:121 VP9/90000\r
a=rtpmap:125 rtx/90000\r
a=setup:actpass\r
m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r
c=IN IP4 0.0.0.0\r
a=recvonly\r
a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r
a=fmtp:101 0-15\r
a=ice-pwd:e0f2f5b0c2cbe0e9d3a4b7f7a4c3a9e1\r
a=ice-ufrag:8d1c2f3a\r
a=mid:1\r
a=rtcp-mux\r
a=rtpmap:109 opus/48000/2\r
a=rtpmap:9 G722/8000/1\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000/1\r
a=setup:actpass\r
";

/// An answer as an edge's WebRTC stack writes it: opus accepted, video rejected.
const ANSWER: &str = "v=0\r
o=- 8093221774503417312 1 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
c=IN IP4 0.0.0.0\r
a=setup:active\r
a=mid:0\r
a=recvonly\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r
a=end-of-candidates\r
m=video 0 UDP/TLS/RTP/SAVPF 96\r
c=IN IP4 0.0.0.0\r
a=inactive\r
a=mid:1\r
a=rtpmap:96 VP8/90000\r
";

fn sdps() -> Seeds {
    vec![
        ("chromium_publish.sdp", CHROMIUM_PUBLISH.as_bytes().to_vec()),
        ("firefox_view.sdp", FIREFOX_VIEW.as_bytes().to_vec()),
        ("answer.sdp", ANSWER.as_bytes().to_vec()),
        ("data_only.sdp", b"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n".to_vec()),
        ("pcmu_only.sdp", b"v=0\nm=audio 9 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n".to_vec()),
    ]
}
