//! What a voter reads back from disk at start, and what it installs from a leader's
//! snapshot: the state machine's snapshot (`State::from_snapshot_bytes`, versions 2
//! and 3), the raft metadata beside it in sled (hard state, conf state, snapshot
//! metadata, protobuf, as `storage.rs` decodes them with `raft_codec::decode`) and
//! `members.json` (`Members::load`), and a backup file (`backup::decode`, as `ferry
//! control --restore` and `ferry ctl snapshot status` read it). Every decoder gets the
//! whole input.
//!
//! Besides "no panic": a decoded state re-encodes to a snapshot that decodes to the
//! same state and stays usable (the sample requests apply to it), decoded raft
//! metadata re-encodes to bytes that decode to the same value, and a verified backup
//! re-encodes to one that verifies with the same header and body. Run with `-malloc_limit_mb`: a length
//! claimed inside a snapshot must not become an allocation.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ferry_control_plane::backup;
use ferry_control_plane::node::Members;
use ferry_control_plane::raft_codec::{decode, encode, RaftMessage};
use ferry_control_plane::state::{apply, Request, State};
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

/// A decoded message re-encodes to bytes that decode to the same value (prost drops
/// unknown fields, so none come back).
fn roundtrip<M: RaftMessage + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(msg) = decode::<M>(data) else { return };
    let back = decode::<M>(&encode(&msg)).expect("a re-encoded message decodes");
    assert_eq!(back, msg, "a message changed through re-encoding");
}

fn requests() -> &'static [Request] {
    static REQUESTS: OnceLock<Vec<Request>> = OnceLock::new();
    REQUESTS.get_or_init(ferry_fuzz::sample_requests)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = State::from_snapshot_bytes(data) {
        let again = state.to_snapshot_bytes().expect("a decoded state encodes");
        let back = State::from_snapshot_bytes(&again).expect("a re-encoded state decodes");
        assert_eq!(back, state);
        let mut state = state;
        for request in requests() {
            let index = state.applied_index.saturating_add(1);
            apply(&mut state, index, request);
        }
    }
    if let Ok(verified) = backup::decode(data) {
        let again = backup::encode(verified.header.clone(), verified.body).expect("a decoded backup encodes");
        let back = backup::decode(&again).expect("a re-encoded backup verifies");
        assert_eq!((&back.header, back.body), (&verified.header, verified.body));
        let _ = State::from_snapshot_bytes(verified.body);
    }
    roundtrip::<HardState>(data);
    roundtrip::<ConfState>(data);
    roundtrip::<SnapshotMetadata>(data);

    // members.json, through the file it lives in (only for inputs that may be JSON
    // objects: the others cost a file write for nothing).
    if data.first() == Some(&b'{') {
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("members.json"), data).expect("members.json is written");
        let initial = BTreeMap::from([(1, "10.0.0.1:7000".to_owned())]);
        if let Ok(members) = Members::load(&dir, &initial) {
            assert!(members.get(1).is_some(), "a member of the command line went missing");
        }
        std::fs::remove_dir_all(&dir).expect("the temporary directory is removed");
    }
});
