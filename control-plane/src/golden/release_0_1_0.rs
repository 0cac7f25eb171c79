//! Release 0.1.0: log entries (JSON `Request`s), snapshots v3 and v2 (a version byte,
//! then bincode), `members.json`, one `ferry-raft/1` batch holding every raft message
//! type that crosses the wire, and the raft store's sled keys.
//!
//! The values are written out field by field (not produced by `apply`), so a later
//! change to what commands do cannot change what these files must decode to.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_proto::api::{AuditEvent, Edge, Rollout, RolloutEvent, RolloutState, Stream};
use ferry_proto::cohort::Gates;
use ferry_proto::rollout::{Congestion, Fault, Guard, OnTrip, Override, RolloutSpec};
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
    SnapshotMetadata,
};
use raft::{GetEntriesContext, Storage as _};
use serde_json::json;

use super::Golden;
use crate::node::Members;
use crate::raft_codec;
use crate::state::{
    decode_request, encode_request, Command, Expiration, OperatorToken, Outcome, Request, State, TokenRole,
};
use crate::storage::{LogStore as _, SledStore};
use crate::transport::{decode_batch, encode_batch};

const RELEASE: &str = "0.1.0";

fn golden() -> Golden {
    Golden::of(RELEASE)
}

/// Decodes a raft protobuf message as a voter does.
fn decode<M: raft_codec::RaftMessage>(bytes: &[u8]) -> M {
    raft_codec::decode(bytes).unwrap()
}

pub(super) fn s(text: &str) -> String {
    text.to_owned()
}

// ---------------------------------------------------------------------------------------
// Log entries
// ---------------------------------------------------------------------------------------

/// A rollout spec with every field set.
fn full_spec() -> RolloutSpec {
    RolloutSpec {
        description: s("bbr for the eu edges"),
        overrides: Override {
            max_lag_ms: Some(1500),
            group_cache: Some(4),
            congestion: Some(Congestion::Bbr),
            pacing: None,
            webrtc_nack: Some(true),
            client_flag: Some(s("bbr-1")),
            fault: Fault { reject_sessions_bp: Some(25), cpu_burn_ms_per_s: Some(10) },
        },
        gates: Gates {
            session_ids: vec![s("viewer-1"), s("viewer-2")],
            client_tags: vec![s("ferry/0.1")],
            regions: vec![s("eu")],
            edges: vec![s("e1")],
            share_bp: 2500,
        },
        guard: Guard {
            cpu_max: Some(1.5),
            error_rate_max: Some(0.05),
            error_rate_max_ratio: Some(2.0),
            min_sessions: 30,
            window_ms: 15_000,
            consecutive: 2,
        },
        on_trip: OnTrip::Off,
        salt: s("salt-1"),
    }
}

fn relays() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([(s("eu"), vec![s("e1"), s("e3")]), (s("us"), vec![s("e2")])])
}

/// One command per action (`ReleaseStream` twice: released and expired).
pub(super) fn commands() -> Vec<Command> {
    vec![
        Command::RegisterEdge {
            id: s("e1"),
            region: s("eu"),
            quic_addr: s("10.0.0.1:4433"),
            http_addr: s("10.0.0.1:8080"),
            version: s("0.1.0"),
            capacity: 100,
        },
        Command::RemoveEdge { id: s("e9") },
        Command::EdgeFailed { id: s("e2") },
        Command::DrainEdge { id: s("e3") },
        Command::PutStream { name: s("live/a"), origin: s("e1"), relays: relays() },
        Command::DeleteStream { name: s("live/old") },
        Command::ClaimStream { name: s("live/b"), origin: s("e2"), takeover: true },
        Command::ReleaseStream { name: s("live/b"), origin: s("e2"), expired: None },
        Command::ReleaseStream {
            name: s("live/c"),
            origin: s("e1"),
            expired: Some(Expiration {
                updated_at_ms: 1_700_000_000_123,
                origin_lost: true,
                reason: s("no publisher and no viewer for 10m"),
            }),
        },
        Command::PlaceRelays { name: s("live/a"), origin: s("e1"), relays: relays() },
        Command::CreateRollout { id: s("ro1"), spec: full_spec() },
        Command::SetRolloutLevel { id: s("ro1"), level: 3 },
        Command::SetRolloutShare { id: s("ro1"), share_bp: 5000 },
        Command::PauseRollout { id: s("ro1") },
        Command::ResumeRollout { id: s("ro1") },
        Command::AbortRollout { id: s("ro2") },
        Command::TripRollout { id: s("ro1"), guard: s("cpu on edge e1") },
        Command::CreateToken {
            accessor: s("ci"),
            role: TokenRole::Operator,
            secret_sha256: s("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        },
        Command::RevokeToken { accessor: s("old-ci") },
        Command::Noop,
    ]
}

/// Whether a command is of a variant these files cover. The match lists every variant
/// without a wildcard: a new one does not compile until it is handled here, and its
/// entry belongs in the golden files of the release that adds it.
fn covered(command: &Command) -> bool {
    match command {
        Command::RegisterEdge { .. }
        | Command::RemoveEdge { .. }
        | Command::EdgeFailed { .. }
        | Command::DrainEdge { .. }
        | Command::PutStream { .. }
        | Command::DeleteStream { .. }
        | Command::ClaimStream { .. }
        | Command::ReleaseStream { .. }
        | Command::PlaceRelays { .. }
        | Command::CreateRollout { .. }
        | Command::SetRolloutLevel { .. }
        | Command::SetRolloutShare { .. }
        | Command::PauseRollout { .. }
        | Command::ResumeRollout { .. }
        | Command::AbortRollout { .. }
        | Command::TripRollout { .. }
        | Command::CreateToken { .. }
        | Command::RevokeToken { .. }
        | Command::Noop => true,
        // Added in 0.2.0 (command set 2): its entry is in that release's files.
        Command::RaiseCommandSet { .. } => false,
    }
}

/// The commands, each in a full envelope.
pub(super) fn requests() -> Vec<Request> {
    commands()
        .into_iter()
        .zip(1u64..)
        .map(|(command, n)| Request {
            request_id: format!("golden-{n}"),
            actor: s("token:ops"),
            role: s("operator"),
            source: s("10.0.0.9:50123"),
            at_ms: 1_700_000_000_000 + n,
            command,
        })
        .collect()
}

fn entry_file(request: &Request) -> String {
    format!("entry-{}.json", request.command.action())
}

#[test]
fn golden_entries_cover_every_command() {
    let requests = requests();
    assert!(requests.iter().all(|r| covered(&r.command)));
    let actions: BTreeSet<&str> = requests.iter().map(|r| r.command.action()).collect();
    assert_eq!(actions.len(), 20, "one entry per action: {actions:?}");
}

#[test]
fn golden_log_entries_decode_and_encode_the_same() {
    let golden = golden();
    for request in requests() {
        let now = encode_request(&request).unwrap();
        let file = golden.read(&entry_file(&request), &now);
        let decoded =
            decode_request(&file).unwrap_or_else(|e| panic!("{}/{}: {e}", RELEASE, entry_file(&request)));
        assert_eq!(decoded, request, "{}", entry_file(&request));
        super::assert_same_bytes(RELEASE, &entry_file(&request), &file, &now);
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

fn edge(id: &str, region: &str, draining: bool, at: u64) -> Edge {
    Edge {
        id: s(id),
        region: s(region),
        quic_addr: format!("{id}.edges.example:4433"),
        http_addr: format!("{id}.edges.example:8080"),
        version: s("0.1.0"),
        capacity: 250,
        draining,
        registered_at_ms: at,
        updated_at_ms: at + 500,
    }
}

fn audit_event(id: u64, action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        id,
        index: 30 + id,
        at_ms: 1_700_000_001_000 + id,
        actor: s("token:ops"),
        role: s("operator"),
        source: s("10.0.0.9:50123"),
        request_id: format!("golden-{id}"),
        action: s(action),
        target: s(target),
        detail: format!("detail of event {id}"),
    }
}

/// A state with every collection non-empty, as a voter holds it at index 40.
pub(super) fn state() -> State {
    let mut state = State::default();
    state.edges = BTreeMap::from([
        (s("e1"), edge("e1", "eu", false, 1_700_000_000_001)),
        (s("e2"), edge("e2", "us", true, 1_700_000_000_002)),
    ]);
    state.streams = BTreeMap::from([
        (
            s("live/a"),
            Stream {
                name: s("live/a"),
                origin: s("e1"),
                relays: relays(),
                origin_lost: false,
                created_at_ms: 1_700_000_000_010,
                updated_at_ms: 1_700_000_000_020,
            },
        ),
        (
            s("live/b"),
            Stream {
                name: s("live/b"),
                origin: s("e2"),
                relays: BTreeMap::new(),
                origin_lost: true,
                created_at_ms: 1_700_000_000_030,
                updated_at_ms: 1_700_000_000_040,
            },
        ),
    ]);
    let event = |at_ms: u64, what: &str, level: u8| RolloutEvent {
        at_ms,
        actor: s("token:ops"),
        what: s(what),
        level,
    };
    state.rollouts = BTreeMap::from([
        (
            s("ro1"),
            Rollout {
                id: s("ro1"),
                spec: full_spec(),
                level: 2,
                state: RolloutState::Tripped,
                history: vec![
                    event(1_700_000_000_100, "created", 0),
                    event(1_700_000_000_200, "level 2", 2),
                    event(1_700_000_000_300, "tripped: cpu on edge e1", 1),
                ],
                created_at_ms: 1_700_000_000_100,
            },
        ),
        (
            s("ro2"),
            Rollout {
                id: s("ro2"),
                spec: RolloutSpec {
                    overrides: Override { group_cache: Some(8), ..Override::default() },
                    ..RolloutSpec::default()
                },
                level: 0,
                state: RolloutState::Active,
                history: vec![event(1_700_000_000_400, "created", 0)],
                created_at_ms: 1_700_000_000_400,
            },
        ),
    ]);
    state.audit = VecDeque::from([
        audit_event(1, "edge.register", "e1"),
        audit_event(2, "stream.put", "live/a"),
        audit_event(3, "rollout.trip", "ro1"),
    ]);
    state.applied_requests = BTreeMap::from([
        (s("golden-1"), (31, Outcome::Ok { detail: json!({"edge": "e1", "new": true}) })),
        (
            s("golden-2"),
            (
                32,
                Outcome::Ok { detail: json!({"stream": {"name": "live/a", "relays": ["e1", "e3"]}, "n": 2}) },
            ),
        ),
        (s("golden-4"), (34, Outcome::Rejected { code: s("conflict"), message: s("live/b is held by e2") })),
    ]);
    state.applied_index = 40;
    state.next_audit_id = 4;
    state.tokens = BTreeMap::from([(
        s("ci"),
        OperatorToken {
            accessor: s("ci"),
            role: TokenRole::Operator,
            secret_sha256: s("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            created_at_ms: 1_700_000_000_500,
            created_by: s("bootstrap"),
        },
    )]);
    state
}

/// What a version 2 snapshot of [`state`] holds once read: no tokens, audit events
/// without role and source.
fn state_from_v2() -> State {
    let mut state = state();
    state.tokens.clear();
    for event in &mut state.audit {
        event.role.clear();
        event.source.clear();
    }
    state
}

#[test]
fn golden_state_has_every_collection_filled() {
    let state = state();
    assert!(!state.edges.is_empty() && !state.streams.is_empty() && !state.rollouts.is_empty());
    assert!(state.streams.values().any(|s| !s.relays.is_empty()));
    assert!(state.rollouts.values().any(|r| r.history.len() > 1));
    assert!(!state.tokens.is_empty() && !state.audit.is_empty() && !state.applied_requests.is_empty());
}

#[test]
fn golden_snapshot_v3_decodes_and_encodes_the_same() {
    let now = state().to_snapshot_bytes().unwrap();
    let file = golden().read("snapshot-v3.bin", &now);
    assert_eq!(file.first(), Some(&3));
    assert_eq!(State::from_snapshot_bytes(&file).unwrap(), state());
    super::assert_same_bytes(RELEASE, "snapshot-v3.bin", &file, &now);
}

#[test]
fn golden_snapshot_v2_decodes_and_encodes_the_same() {
    let now = state().to_v2_snapshot_bytes();
    let file = golden().read("snapshot-v2.bin", &now);
    assert_eq!(file.first(), Some(&2));
    assert_eq!(State::from_snapshot_bytes(&file).unwrap(), state_from_v2());
    super::assert_same_bytes(RELEASE, "snapshot-v2.bin", &file, &now);
}

// ---------------------------------------------------------------------------------------
// members.json
// ---------------------------------------------------------------------------------------

pub(super) fn members() -> BTreeMap<u64, String> {
    BTreeMap::from([
        (1, s("10.0.0.1:9001")),
        (2, s("voter-2.ferry.svc.cluster.local:9001")),
        (4, s("[2001:db8::4]:9001")),
    ])
}

#[test]
fn golden_members_file_loads_and_is_written_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let written = Members::load(dir.path(), &BTreeMap::new()).unwrap();
    for (id, addr) in members() {
        written.update(id, Some(addr), false).unwrap();
    }
    // A removed member leaves no trace.
    written.update(3, Some(s("10.0.0.3:9001")), false).unwrap();
    written.update(3, None, false).unwrap();
    let now = std::fs::read(dir.path().join("members.json")).unwrap();
    let file = golden().read_same("members.json", &now);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("members.json"), &file).unwrap();
    let loaded = Members::load(dir.path(), &BTreeMap::new()).unwrap();
    assert_eq!(loaded.snapshot(), members());
}

// ---------------------------------------------------------------------------------------
// Raft: entries, the transport batch, the store
// ---------------------------------------------------------------------------------------

/// A proposal's context as the driver makes it: voter id, boot id, counter.
fn ctx(n: u64) -> Vec<u8> {
    [2u64, 0x0123_4567_89ab_cdef, n].iter().flat_map(|n| n.to_be_bytes()).collect()
}

/// The membership change `ferry ctl cluster add-voter 4 10.0.0.4:9001` proposes.
fn conf_change() -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = 4;
    cc.context = b"10.0.0.4:9001".to_vec();
    cc
}

fn entry(index: u64, kind: EntryType, data: Vec<u8>, context: Vec<u8>) -> Entry {
    let mut entry = Entry { term: 3, index, data, context, ..Entry::default() };
    entry.set_entry_type(kind);
    entry
}

/// An entry as a proposal or read carries it, before the leader gives it a place.
fn unplaced(data: Vec<u8>, context: Vec<u8>) -> Entry {
    Entry { data, context, ..Entry::default() }
}

/// The log after the snapshot at 40: a write, a membership change, a new leader's
/// empty entry.
fn log_entries() -> Vec<Entry> {
    let request = requests().swap_remove(4);
    vec![
        entry(41, EntryType::EntryNormal, encode_request(&request).unwrap(), ctx(7)),
        entry(42, EntryType::EntryConfChange, raft_codec::encode(&conf_change()), ctx(8)),
        entry(43, EntryType::EntryNormal, vec![], vec![]),
    ]
}

fn conf_state(voters: &[u64]) -> ConfState {
    ConfState { voters: voters.to_vec(), ..ConfState::default() }
}

fn snapshot_metadata() -> SnapshotMetadata {
    let mut meta = SnapshotMetadata { index: 40, term: 3, ..SnapshotMetadata::default() };
    meta.set_conf_state(conf_state(&[1, 2, 3]));
    meta
}

fn snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.set_metadata(snapshot_metadata());
    snapshot.data = state().to_snapshot_bytes().unwrap();
    snapshot
}

fn hard_state() -> HardState {
    HardState { term: 3, vote: 1, commit: 42 }
}

/// The message types voters send each other (the others are local to raft-rs:
/// `MsgHup`, `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`).
const WIRE_TYPES: [MessageType; 14] = [
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

/// One message of `kind`, from 1 (the leader) unless it answers it.
fn message(kind: MessageType, from: u64, to: u64, fill: impl FnOnce(&mut Message)) -> Message {
    let mut msg = Message { from, to, term: 3, ..Message::default() };
    msg.set_msg_type(kind);
    fill(&mut msg);
    msg
}

/// One batch with every wire type, filled the way raft-rs 0.7 fills each.
fn batch() -> Vec<Message> {
    use MessageType::*;
    let proposal = requests().swap_remove(0);
    let read_ctx = ctx(9);
    vec![
        message(MsgPropose, 2, 1, |m| {
            m.term = 0;
            m.set_entries(vec![unplaced(encode_request(&proposal).unwrap(), ctx(6))]);
        }),
        message(MsgAppend, 1, 2, |m| {
            m.log_term = 3;
            m.index = 40;
            m.commit = 42;
            m.set_entries(log_entries());
        }),
        message(MsgAppendResponse, 2, 1, |m| m.index = 43),
        message(MsgAppendResponse, 3, 1, |m| {
            m.index = 43;
            m.reject = true;
            m.reject_hint = 38;
            m.log_term = 2;
        }),
        message(MsgRequestPreVote, 2, 3, |m| {
            m.term = 4;
            m.index = 43;
            m.log_term = 3;
            m.commit = 42;
            m.commit_term = 3;
        }),
        message(MsgRequestPreVoteResponse, 3, 2, |m| {
            m.term = 4;
            m.reject = false;
        }),
        message(MsgRequestVote, 2, 3, |m| {
            m.term = 4;
            m.index = 43;
            m.log_term = 3;
            m.commit = 42;
            m.commit_term = 3;
            m.priority = -1;
        }),
        message(MsgRequestVoteResponse, 3, 2, |m| {
            m.term = 4;
            m.reject = true;
        }),
        message(MsgSnapshot, 1, 4, |m| m.set_snapshot(snapshot())),
        message(MsgHeartbeat, 1, 3, |m| {
            m.commit = 42;
            m.context = read_ctx.clone();
        }),
        message(MsgHeartbeatResponse, 3, 1, |m| m.context = read_ctx.clone()),
        message(MsgReadIndex, 2, 1, |m| {
            m.set_entries(vec![unplaced(read_ctx.clone(), vec![])]);
        }),
        message(MsgReadIndexResp, 1, 2, |m| {
            m.index = 42;
            m.set_entries(vec![unplaced(read_ctx.clone(), vec![])]);
        }),
        message(MsgTransferLeader, 3, 1, |_| {}),
        message(MsgTimeoutNow, 1, 3, |_| {}),
    ]
}

#[test]
fn golden_raft_batch_decodes_and_encodes_the_same() {
    let batch = batch();
    let kinds: BTreeSet<i32> = batch.iter().map(|m| m.get_msg_type() as i32).collect();
    assert_eq!(kinds, WIRE_TYPES.iter().map(|k| *k as i32).collect(), "every wire type is in the batch");

    let now = encode_batch(&batch);
    let file = golden().read("raft-batch.bin", &now);
    let decoded = decode_batch(&file).unwrap();
    assert_eq!(decoded, batch);
    super::assert_same_bytes(RELEASE, "raft-batch.bin", &packed::batch(&file), &now);

    // What a voter then decodes inside: requests, the membership change, the state.
    let append = decoded.iter().find(|m| m.get_msg_type() == MessageType::MsgAppend).unwrap();
    let entries = append.get_entries();
    assert_eq!(decode_request(&entries[0].data).unwrap(), requests()[4]);
    assert_eq!(decode::<ConfChange>(&entries[1].data), conf_change());
    let snap = decoded.iter().find(|m| m.get_msg_type() == MessageType::MsgSnapshot).unwrap();
    assert_eq!(State::from_snapshot_bytes(&snap.get_snapshot().data).unwrap(), state());
}

/// This release's codec (protobuf 2) writes the ids of a conf state one tag each
/// (`08 01 08 02 ..`); proto3 encoders such as prost write them packed (`0a 04 01 02 ..`).
/// A parser must accept both, and a voter of every release must read what the others
/// write: the packed forms decode to the same values.
#[test]
fn golden_conf_states_decode_packed_too() {
    assert_eq!(decode::<ConfState>(&[0x0a, 0x04, 1, 2, 3, 4]), conf_state(&[1, 2, 3, 4]));
    // Conf state (field 1: voters 1, 2, 3 packed), index 40, term 3.
    let meta = [0x0a, 0x05, 0x0a, 0x03, 1, 2, 3, 0x10, 0x28, 0x18, 0x03];
    assert_eq!(decode::<SnapshotMetadata>(&meta), snapshot_metadata());
}

/// What `SledStore` writes, key by key, for the store of this module: a snapshot at 40
/// received from the leader, then entries 41..=43 and their hard state, the conf change
/// at 42 applied.
fn store_writes(dir: &std::path::Path) -> (BTreeMap<String, Vec<u8>>, BTreeMap<u64, Vec<u8>>) {
    let mut store = SledStore::open(dir).unwrap();
    store.apply_snapshot(snapshot()).unwrap();
    store.append(&log_entries()).unwrap();
    store.set_hard_state(&hard_state()).unwrap();
    store.set_conf_state(&conf_state(&[1, 2, 3, 4])).unwrap();
    store.set_applied(42).unwrap();
    store.flush().unwrap();
    drop(store);
    let db = sled::Config::new().path(dir).open().unwrap();
    let meta = db
        .open_tree("meta")
        .unwrap()
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec()))
        .collect();
    let entries = db
        .open_tree("entries")
        .unwrap()
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (u64::from_be_bytes(k.as_ref().try_into().unwrap()), v.to_vec()))
        .collect();
    (meta, entries)
}

/// sled's file lock outlives `drop` by a moment (its background threads).
fn open_store(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

#[test]
fn golden_raft_store_opens_and_is_written_the_same() {
    let golden = golden();
    let written = tempfile::tempdir().unwrap();
    let (meta, entries) = store_writes(&written.path().join("raft"));
    let keys: BTreeSet<&str> = meta.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["applied", "conf_state", "hard_state", "snapshot_data", "snapshot_meta"])
    );

    // The meta values: the snapshot's data is the v3 snapshot file.
    let mut files = BTreeMap::new();
    for (key, now) in &meta {
        let name = match key.as_str() {
            "snapshot_data" => s("snapshot-v3.bin"),
            other => format!("sled-meta/{other}.bin"),
        };
        let file = golden.read(&name, now);
        let released = match key.as_str() {
            "conf_state" => packed::message(&file, packed::Kind::ConfState),
            "snapshot_meta" => packed::message(&file, packed::Kind::SnapshotMetadata),
            _ => file.clone(),
        };
        super::assert_same_bytes(RELEASE, &name, &released, now);
        files.insert(key.clone(), file);
    }
    assert_eq!(decode::<HardState>(&files["hard_state"]), hard_state());
    assert_eq!(decode::<ConfState>(&files["conf_state"]), conf_state(&[1, 2, 3, 4]));
    assert_eq!(decode::<SnapshotMetadata>(&files["snapshot_meta"]), snapshot_metadata());
    assert_eq!(files["applied"], 42u64.to_be_bytes());
    let mut entry_files = BTreeMap::new();
    for (index, now) in &entries {
        entry_files.insert(*index, golden.read_same(&format!("sled-entries/{index}.bin"), now));
    }
    let decoded: Vec<Entry> = entry_files.values().map(|bytes| decode::<Entry>(bytes)).collect();
    assert_eq!(decoded, log_entries());

    // A fresh sled holding exactly the golden keys opens through the real store.
    let seeded = tempfile::tempdir().unwrap();
    let path = seeded.path().join("raft");
    {
        let db = sled::Config::new().path(&path).open().unwrap();
        let meta = db.open_tree("meta").unwrap();
        for (key, bytes) in &files {
            meta.insert(key.as_bytes(), bytes.as_slice()).unwrap();
        }
        let tree = db.open_tree("entries").unwrap();
        for (index, bytes) in &entry_files {
            tree.insert(index.to_be_bytes(), bytes.as_slice()).unwrap();
        }
        db.flush().unwrap();
    }
    let store = open_store(&path);
    let initial = store.initial_state().unwrap();
    assert_eq!(initial.hard_state, hard_state());
    assert_eq!(initial.conf_state, conf_state(&[1, 2, 3, 4]));
    assert_eq!(store.snapshot_metadata(), &snapshot_metadata());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (41, 43));
    assert_eq!((store.term(40).unwrap(), store.term(43).unwrap()), (3, 3));
    assert_eq!(store.entries(41, 44, None, GetEntriesContext::empty(false)).unwrap(), log_entries());
    assert_eq!(store.snapshot(40, 4).unwrap(), snapshot());
    assert_eq!(store.applied(), 42);
}

#[test]
fn golden_directory_holds_only_checked_files() {
    let mut expected: BTreeSet<String> = requests().iter().map(entry_file).collect();
    for name in ["snapshot-v3.bin", "snapshot-v2.bin", "members.json", "raft-batch.bin"] {
        expected.insert(s(name));
    }
    for key in ["applied", "conf_state", "hard_state", "snapshot_meta"] {
        expected.insert(format!("sled-meta/{key}.bin"));
    }
    for index in 41..=43 {
        expected.insert(format!("sled-entries/{index}.bin"));
    }
    let present = golden().files();
    let unexpected: Vec<&String> = present.difference(&expected).collect();
    assert!(unexpected.is_empty(), "golden files no test reads: {unexpected:?}");
}

/// This release was built with raft-rs's protobuf-2 codec, which writes the ids of a
/// conf state (`ConfState` fields 1 to 4, repeated `uint64`) one tag per id; later
/// builds use prost, which packs them, as proto3 says encoders should. Both decoders
/// read both forms (`golden_conf_states_decode_packed_too` passed with protobuf 2 at
/// this release). This rewrites a file of this release into the packed form and changes
/// nothing else, so the tests compare everything else byte for byte.
mod packed {
    /// The `eraftpb` messages on the way from a raft message to a conf state.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Kind {
        Message,
        Snapshot,
        SnapshotMetadata,
        ConfState,
    }

    /// The nested message a length-delimited field holds, where it leads to a conf state.
    fn child(kind: Kind, field: u64) -> Option<Kind> {
        match (kind, field) {
            (Kind::Message, 9) => Some(Kind::Snapshot),
            (Kind::Snapshot, 2) => Some(Kind::SnapshotMetadata),
            (Kind::SnapshotMetadata, 1) => Some(Kind::ConfState),
            _ => None,
        }
    }

    fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
        }
        panic!("a varint longer than 10 bytes");
    }

    fn write_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn flush(out: &mut Vec<u8>, run: &mut Option<(u64, Vec<u8>)>) {
        if let Some((field, ids)) = run.take() {
            write_varint(out, field << 3 | 2);
            write_varint(out, ids.len() as u64);
            out.extend_from_slice(&ids);
        }
    }

    /// `bytes`, a message of `kind`, with every conf state inside it packed.
    pub fn message(bytes: &[u8], kind: Kind) -> Vec<u8> {
        let mut out = Vec::new();
        let mut run: Option<(u64, Vec<u8>)> = None;
        let mut at = 0;
        while at < bytes.len() {
            let start = at;
            let tag = read_varint(bytes, &mut at);
            let (field, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    let value_at = at;
                    read_varint(bytes, &mut at);
                    if kind == Kind::ConfState && (1..=4).contains(&field) {
                        if run.as_ref().is_some_and(|(f, _)| *f != field) {
                            flush(&mut out, &mut run);
                        }
                        run.get_or_insert_with(|| (field, Vec::new()))
                            .1
                            .extend_from_slice(&bytes[value_at..at]);
                        continue;
                    }
                    flush(&mut out, &mut run);
                    out.extend_from_slice(&bytes[start..at]);
                }
                2 => {
                    flush(&mut out, &mut run);
                    let len = read_varint(bytes, &mut at) as usize;
                    let body = &bytes[at..at + len];
                    at += len;
                    match child(kind, field) {
                        Some(inner) => {
                            let body = message(body, inner);
                            write_varint(&mut out, tag);
                            write_varint(&mut out, body.len() as u64);
                            out.extend_from_slice(&body);
                        }
                        None => out.extend_from_slice(&bytes[start..at]),
                    }
                }
                other => panic!("wire type {other} does not occur in eraftpb"),
            }
        }
        flush(&mut out, &mut run);
        out
    }

    /// A `ferry-raft/1` batch with every message's conf states packed.
    pub fn batch(frame: &[u8]) -> Vec<u8> {
        let count = u32::from_be_bytes(frame[..4].try_into().unwrap());
        let mut out = count.to_be_bytes().to_vec();
        let mut at = 4;
        for _ in 0..count {
            let len = u32::from_be_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
            let body = message(&frame[at + 4..at + 4 + len], Kind::Message);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            at += 4 + len;
        }
        assert_eq!(at, frame.len(), "bytes after the batch");
        out
    }

    #[test]
    fn golden_repacking_touches_only_conf_states() {
        use super::{golden, hard_state, raft_codec};
        // Unpacked ids become one packed field; other fields stay as they are.
        let unpacked = [0x08, 1, 0x08, 2, 0x10, 5, 0x28, 1];
        assert_eq!(message(&unpacked, Kind::ConfState), [0x0a, 2, 1, 2, 0x12, 1, 5, 0x28, 1]);
        // A message without a conf state is left alone.
        let hs = raft_codec::encode(&hard_state());
        assert_eq!(message(&hs, Kind::Message), hs);
        // Nested lengths follow.
        let released = std::fs::read(golden().dir.join("sled-meta/snapshot_meta.bin")).unwrap();
        assert_eq!(
            message(&released, Kind::SnapshotMetadata),
            [0x0a, 0x05, 0x0a, 0x03, 1, 2, 3, 0x10, 0x28, 0x18, 0x03]
        );
    }
}
