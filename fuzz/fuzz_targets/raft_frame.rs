//! A raft transport stream as a voter reads it (`control-plane/src/transport.rs`,
//! `read_stream`): a hello, or a message count, then length-prefixed protobuf raft `Message`s, each
//! decoded with the same `raft_codec::decode` (prost) the transport calls; then what a
//! follower decodes from a message: its entries' data and a snapshot's state.
//!
//! Besides "no panic": every decoded message re-encodes to bytes that decode to the
//! same message (prost drops unknown fields, so nothing comes back otherwise: a voter
//! re-encodes the entries it stores), a whole batch that decodes re-encodes to one that
//! decodes the same, and the whole input is tried as one message body too (mutations
//! that break the framing still reach the decoder).
#![no_main]

use ferry_control_plane::raft_codec::{decode, encode};
use ferry_control_plane::state::{decode_request, State};
use ferry_control_plane::transport::{decode_batch, decode_stream, encode_batch, hello_stream, Received};
use ferry_fuzz::raft_bodies;
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{ConfChange, EntryType, Message};

fn message(body: &[u8]) {
    let Ok(msg) = decode::<Message>(body) else { return };
    let back = decode::<Message>(&encode(&msg)).expect("a re-encoded raft message decodes");
    assert_eq!(back, msg, "a raft message changed through re-encoding");
    for entry in msg.get_entries() {
        match entry.get_entry_type() {
            EntryType::EntryNormal => {
                let _ = decode_request(&entry.data);
            }
            EntryType::EntryConfChange => {
                let _ = decode::<ConfChange>(&entry.data);
            }
            EntryType::EntryConfChangeV2 => {}
        }
    }
    if msg.has_snapshot() {
        let _ = State::from_snapshot_bytes(&msg.get_snapshot().data);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Received::Hello(hello)) = decode_stream(data) {
        let back = decode_stream(&hello_stream(&hello)).expect("a re-encoded hello decodes");
        assert!(matches!(back, Received::Hello(h) if h == hello), "a hello changed through re-encoding");
    }
    if let Ok(batch) = decode_batch(data) {
        let back = decode_batch(&encode_batch(&batch)).expect("a re-encoded batch decodes");
        assert_eq!(back, batch, "a raft batch changed through re-encoding");
    }
    if let Some(bodies) = raft_bodies(data) {
        for body in bodies {
            message(body);
        }
    }
    message(data);
});
