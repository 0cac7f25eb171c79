//! What the fuzz targets and the seed generator (`examples/seeds.rs`) share: fixed keys,
//! a fixed clock, a small replicated state and the raft batch framing, so the committed
//! seeds open, verify and apply in every run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_control_plane::state::{apply, Request, State};
use ferry_edge::auth::{KeyRing, Policy, TokenSecret};
use ferry_net::seal::Keyring;

/// The cluster id of every fixture.
pub const CLUSTER: &str = "fuzz";

/// The gossip key every seed datagram is sealed with (`k1`, the primary).
pub const GOSSIP_KEY: [u8; 32] = [0x42; 32];

/// The gossip keyring of [`GOSSIP_KEY`].
pub fn gossip_keyring() -> Keyring {
    Keyring::new(CLUSTER, &[("k1".to_owned(), GOSSIP_KEY.to_vec())], "k1").expect("a 32-byte key")
}

/// Writes the keyring directory `ferry` reads (`k1.key`, `primary`).
pub fn write_gossip_keyring(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("k1.key"), hex(&GOSSIP_KEY))?;
    std::fs::write(dir.join("primary"), "k1")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token secret seed JWTs are signed with, under key id [`TOKEN_KID`].
pub const TOKEN_SECRET: &[u8] = b"fuzz-token-secret-0123456789abcdef";
pub const TOKEN_KID: &str = "k1";

/// An edge's token keys: [`TOKEN_SECRET`] as `k1`.
pub fn token_keys() -> KeyRing {
    let secret = TokenSecret::from_bytes(TOKEN_SECRET).expect("a long enough secret");
    KeyRing::new(vec![(TOKEN_KID.to_owned(), secret)])
}

/// An edge's token policy: the cluster id [`CLUSTER`] as audience, a day at most.
pub fn token_policy() -> Policy {
    Policy { audience: CLUSTER.to_owned(), max_ttl: Duration::from_secs(24 * 3600) }
}

/// The fixed clock of token checks: seed tokens are issued a minute before it.
pub const NOW_SECS: u64 = 1_800_000_000;

pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// Raft entry data the seeds and the sample state are made of (what the API proposes).
pub const SAMPLE_REQUESTS: &[&str] = &[
    r#"{"request_id":"r1","actor":"bootstrap","role":"admin","source":"10.0.0.9:5000","at_ms":1000,"command":{"type":"register_edge","id":"e1","region":"eu","quic_addr":"10.0.0.1:4433","http_addr":"10.0.0.1:8080","version":"0.1.0","capacity":100}}"#,
    r#"{"request_id":"r2","actor":"edge:e2","role":"edge","source":"10.0.0.2:5000","at_ms":2000,"command":{"type":"register_edge","id":"e2","region":"us","quic_addr":"10.0.0.2:4433","http_addr":"10.0.0.2:8080","version":"0.1.0","capacity":50}}"#,
    r#"{"request_id":"r3","actor":"token:ops","role":"operator","source":"10.0.0.9:5001","at_ms":3000,"command":{"type":"put_stream","name":"live/a","origin":"e1","relays":{"us":["e2"]}}}"#,
    r#"{"request_id":"r4","actor":"edge:e2","role":"edge","source":"10.0.0.2:5001","at_ms":4000,"command":{"type":"claim_stream","name":"live/b","origin":"e2","takeover":false}}"#,
    r#"{"request_id":"r5","actor":"token:ops","role":"operator","source":"10.0.0.9:5002","at_ms":5000,"command":{"type":"create_rollout","id":"ro1","spec":{"description":"ferry:0.2"}}}"#,
    r#"{"request_id":"r6","actor":"token:ops","role":"operator","source":"10.0.0.9:5003","at_ms":6000,"command":{"type":"set_rollout_level","id":"ro1","level":2}}"#,
    r#"{"request_id":"r7","actor":"bootstrap","role":"admin","source":"10.0.0.9:5004","at_ms":7000,"command":{"type":"create_token","accessor":"ci","role":"operator","secret_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}"#,
    r#"{"request_id":"","actor":"placement","role":"","source":"","at_ms":8000,"command":{"type":"place_relays","name":"live/b","origin":"e2","relays":{"eu":["e1"]}}}"#,
    r#"{"request_id":"r9","actor":"failover","at_ms":9000,"command":{"type":"edge_failed","id":"e2"}}"#,
    r#"{"request_id":"r10","actor":"token:ops","role":"operator","source":"10.0.0.9:5005","at_ms":10000,"command":{"type":"trip_rollout","id":"ro1","guard":"cpu on edge e1"}}"#,
    r#"{"request_id":"r11","actor":"x","at_ms":11000,"command":{"type":"noop"}}"#,
];

/// [`SAMPLE_REQUESTS`], decoded.
pub fn sample_requests() -> Vec<Request> {
    SAMPLE_REQUESTS.iter().map(|json| serde_json::from_str(json).expect("a sample request decodes")).collect()
}

/// The state after applying [`SAMPLE_REQUESTS`] at indexes 1, 2, ...
pub fn sample_state() -> State {
    let mut state = State::default();
    for (index, request) in (1..).zip(sample_requests()) {
        apply(&mut state, index, &request);
    }
    state
}

/// Largest batch and message `control-plane/src/transport.rs` reads (`MAX_BATCH`,
/// `MAX_MESSAGE`).
pub const RAFT_MAX_BATCH: usize = 256;
pub const RAFT_MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A raft batch as the transport writes it on a stream: `count:u32be`, then
/// `len:u32be body` per message.
pub fn raft_batch(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = u32::try_from(bodies.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
    for body in bodies {
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The message bodies of a raft batch, cut the way the transport's `read_batch` cuts
/// a stream (`None` where it would fail: too many messages, a message too long, the
/// stream ending early). Bytes after the last message are never read.
pub fn raft_bodies(stream: &[u8]) -> Option<Vec<&[u8]>> {
    let (count, mut rest) = stream.split_first_chunk::<4>()?;
    let count = u32::from_be_bytes(*count) as usize;
    if count > RAFT_MAX_BATCH {
        return None;
    }
    let mut bodies = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > RAFT_MAX_MESSAGE {
            return None;
        }
        let (body, after) = after.split_at_checked(len)?;
        bodies.push(body);
        rest = after;
    }
    Some(bodies)
}

/// `members.json` as a voter writes it beside its log.
pub fn members_json() -> Vec<u8> {
    let members: BTreeMap<u64, String> =
        [(1, "10.0.0.1:7000".to_owned()), (2, "10.0.0.2:7000".to_owned())].into_iter().collect();
    serde_json::to_vec_pretty(&members).expect("a map of strings encodes")
}
