//! A raft log entry as a voter reads it back from its sled log (`storage.rs`:
//! `raft_codec::decode::<Entry>`) and applies it once committed (`node/driver.rs`): a
//! membership change's protobuf, or a request's JSON (`decode_request`) applied to the
//! state machine. The input is tried both as an entry's protobuf and as entry data
//! alone (JSON mutates better on its own).
//!
//! Besides "no panic": entries, membership changes and requests re-encode to what they
//! decoded from, and the state after applying a request survives a snapshot round trip
//! (a follower that installs it holds the same state as one that applied the log).
#![no_main]

use std::sync::OnceLock;

use ferry_control_plane::raft_codec::{decode, encode, RaftMessage};
use ferry_control_plane::state::{apply, decode_request, encode_request, State};
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{ConfChange, Entry, EntryType};

fn roundtrip<M: RaftMessage + PartialEq>(msg: &M) {
    let back = decode::<M>(&encode(msg)).expect("a re-encoded message decodes");
    assert!(back == *msg, "a message changed through re-encoding");
}

fn request(data: &[u8]) {
    let Ok(request) = decode_request(data) else { return };
    if let Ok(again) = encode_request(&request) {
        let back = decode_request(&again).expect("a re-encoded request decodes");
        assert_eq!(back, request);
    }
    static STATE: OnceLock<State> = OnceLock::new();
    let mut state = STATE.get_or_init(ferry_fuzz::sample_state).clone();
    let index = state.applied_index + 1;
    let outcome = apply(&mut state, index, &request);
    let snapshot = state.to_snapshot_bytes().expect("the state encodes");
    let restored = State::from_snapshot_bytes(&snapshot).expect("the state's snapshot decodes");
    assert_eq!(restored, state, "the state after {outcome} changed through a snapshot");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode::<Entry>(data) {
        roundtrip(&entry);
        match entry.get_entry_type() {
            EntryType::EntryNormal if !entry.data.is_empty() => request(&entry.data),
            EntryType::EntryConfChange => {
                if let Ok(cc) = decode::<ConfChange>(&entry.data) {
                    roundtrip(&cc);
                    let _ = String::from_utf8_lossy(&cc.context);
                }
            }
            _ => {}
        }
    }
    request(data);
});
