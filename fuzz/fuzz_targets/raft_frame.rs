//! A raft transport stream as a voter reads it (`control-plane/src/transport.rs`,
//! `read_batch`): a message count, then length-prefixed protobuf raft `Message`s, each
//! decoded with the same `parse_from_bytes` the transport calls; then what a follower
//! decodes from a message: its entries' data and a snapshot's state.
//!
//! Besides "no panic": every decoded message re-encodes to bytes that decode to the
//! same message, and the whole input is tried as one message body too (mutations that
//! break the framing still reach the decoder).
#![no_main]

use ferry_control_plane::state::{decode_request, State};
use ferry_fuzz::raft_bodies;
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, EntryType, Message};

fn message(body: &[u8]) {
    let Ok(msg) = Message::parse_from_bytes(body) else { return };
    let again = msg.write_to_bytes().expect("a decoded raft message re-encodes");
    // It decodes again; not always to an equal value (protobuf 2 keeps unknown
    // fields, which a fuzzed input's can bring back otherwise).
    Message::parse_from_bytes(&again).expect("a re-encoded raft message decodes");
    for entry in msg.get_entries() {
        match entry.get_entry_type() {
            EntryType::EntryNormal => {
                let _ = decode_request(&entry.data);
            }
            EntryType::EntryConfChange => {
                let _ = ConfChange::parse_from_bytes(&entry.data);
            }
            EntryType::EntryConfChangeV2 => {}
        }
    }
    if msg.has_snapshot() {
        let _ = State::from_snapshot_bytes(&msg.get_snapshot().data);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(bodies) = raft_bodies(data) {
        for body in bodies {
            message(body);
        }
    }
    message(data);
});
