//! The protobuf codec of raft messages, entries and raft metadata: every place Ferry
//! turns raft-rs types into bytes or back goes through [`encode`] and [`decode`].
//!
//! raft-rs is built with its prost codec. Its types still implement protobuf 2's
//! `protobuf::Message` (raft-rs needs the trait), but only in part: the trait's
//! provided `parse_from_bytes`/`parse_from`/`write_to_vec` reach methods that are
//! `unimplemented!()` and would panic on the first message. So nothing here uses that
//! trait, and `clippy.toml` disallows its decoders.
//!
//! prost keeps an enum field as its bare number, and raft-rs's accessors
//! (`get_msg_type`, `get_entry_type`, `get_change_type`, ...) panic on a number their
//! enum does not define. [`decode`] therefore refuses such values, in the message and in
//! the membership changes its entries carry (which raft-rs decodes itself when a leader
//! takes a forwarded proposal), so no peer and no damaged store can reach that panic.
//!
//! The bytes are the same protobuf encoding as before (`eraftpb.proto`); prost writes
//! the ids of a conf state packed, as proto3 encoders do, where protobuf 2 wrote one tag
//! per id. Both decoders read both forms (the golden-file tests check it).

use prost::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};

/// Why bytes are not the raft message they should be.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the protobuf encoding of the type.
    #[error("not a protobuf {what}")]
    Malformed {
        /// The message type expected (`Entry`, `HardState`, ...).
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    /// An enum field holds a number its enum does not define (a newer peer, or damage).
    #[error("{what}: {field} {value} is not one this build knows")]
    UnknownEnum { what: &'static str, field: &'static str, value: i32 },
}

/// A raft-rs type [`decode`] accepts: it knows the type's enum fields.
pub trait RaftMessage: prost::Message + Default {
    /// The type's name in errors.
    const NAME: &'static str;

    /// The first enum field, here or in what the message carries, whose value its enum
    /// does not define: `(field, value)`.
    fn unknown_enum(&self) -> Option<(&'static str, i32)>;
}

/// The protobuf encoding of `msg`.
pub fn encode<M: prost::Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Decodes the protobuf encoding of an `M` (unknown fields are dropped), refusing enum
/// values raft-rs cannot handle.
pub fn decode<M: RaftMessage>(bytes: &[u8]) -> Result<M, DecodeError> {
    let msg = M::decode(bytes).map_err(|source| DecodeError::Malformed { what: M::NAME, source })?;
    match msg.unknown_enum() {
        Some((field, value)) => Err(DecodeError::UnknownEnum { what: M::NAME, field, value }),
        None => Ok(msg),
    }
}

fn check(field: &'static str, value: i32, known: bool) -> Option<(&'static str, i32)> {
    (!known).then_some((field, value))
}

impl RaftMessage for Message {
    const NAME: &'static str = "Message";

    fn unknown_enum(&self) -> Option<(&'static str, i32)> {
        check("msg_type", self.msg_type, MessageType::from_i32(self.msg_type).is_some())
            .or_else(|| self.entries.iter().find_map(Entry::unknown_enum))
    }
}

impl RaftMessage for Entry {
    const NAME: &'static str = "Entry";

    /// Besides the entry's type, a membership change's data must decode with known enums:
    /// raft-rs decodes it itself and reads its change types.
    fn unknown_enum(&self) -> Option<(&'static str, i32)> {
        match EntryType::from_i32(self.entry_type) {
            None => Some(("entry_type", self.entry_type)),
            Some(EntryType::EntryNormal) => None,
            Some(EntryType::EntryConfChange) => match ConfChange::decode(self.data.as_slice()) {
                Ok(cc) => cc.unknown_enum(),
                // raft-rs drops a proposal whose change does not decode; the driver stops
                // on a committed one.
                Err(_) => None,
            },
            Some(EntryType::EntryConfChangeV2) => match ConfChangeV2::decode(self.data.as_slice()) {
                Ok(cc) => cc.unknown_enum(),
                Err(_) => None,
            },
        }
    }
}

impl RaftMessage for ConfChange {
    const NAME: &'static str = "ConfChange";

    fn unknown_enum(&self) -> Option<(&'static str, i32)> {
        check("change_type", self.change_type, ConfChangeType::from_i32(self.change_type).is_some())
    }
}

impl RaftMessage for ConfChangeV2 {
    const NAME: &'static str = "ConfChangeV2";

    fn unknown_enum(&self) -> Option<(&'static str, i32)> {
        check("transition", self.transition, ConfChangeTransition::from_i32(self.transition).is_some())
            .or_else(|| self.changes.iter().find_map(ConfChangeSingle::unknown_enum))
    }
}

impl RaftMessage for ConfChangeSingle {
    const NAME: &'static str = "ConfChangeSingle";

    fn unknown_enum(&self) -> Option<(&'static str, i32)> {
        check("change_type", self.change_type, ConfChangeType::from_i32(self.change_type).is_some())
    }
}

/// Types without enum fields.
macro_rules! no_enums {
    ($($t:ident),*) => {$(
        impl RaftMessage for $t {
            const NAME: &'static str = stringify!($t);

            fn unknown_enum(&self) -> Option<(&'static str, i32)> {
                None
            }
        }
    )*};
}

no_enums!(HardState, ConfState, SnapshotMetadata, Snapshot);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut entry = Entry { term: 2, index: 7, data: b"{}".to_vec(), ..Entry::default() };
        entry.set_entry_type(EntryType::EntryNormal);
        assert_eq!(decode::<Entry>(&encode(&entry)).unwrap(), entry);
        let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        assert_eq!(decode::<ConfState>(&encode(&cs)).unwrap(), cs);
    }

    #[test]
    fn garbage_is_an_error_naming_the_type() {
        let e = decode::<HardState>(b"\xff\xfe not protobuf").unwrap_err();
        assert_eq!(e.to_string(), "not a protobuf HardState");
        assert!(std::error::Error::source(&e).is_some());
    }

    /// raft-rs's `get_msg_type` and friends panic on these: they never get past decode.
    #[test]
    fn unknown_enum_values_are_refused_where_raft_rs_would_panic() {
        let msg = Message { msg_type: 99, ..Message::default() };
        let e = decode::<Message>(&encode(&msg)).unwrap_err();
        assert_eq!(e.to_string(), "Message: msg_type 99 is not one this build knows");

        let odd_entry = Entry { entry_type: -1, ..Entry::default() };
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgAppend);
        msg.set_entries(vec![Entry::default(), odd_entry.clone()]);
        assert!(matches!(
            decode::<Message>(&encode(&msg)),
            Err(DecodeError::UnknownEnum { field: "entry_type", value: -1, .. })
        ));
        assert!(decode::<Entry>(&encode(&odd_entry)).is_err());

        // A forwarded proposal of a membership change with an unknown change type.
        let cc = ConfChange { change_type: 7, node_id: 4, ..ConfChange::default() };
        let mut entry = Entry { data: encode(&cc), ..Entry::default() };
        entry.set_entry_type(EntryType::EntryConfChange);
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.set_entries(vec![entry]);
        assert!(matches!(
            decode::<Message>(&encode(&msg)),
            Err(DecodeError::UnknownEnum { field: "change_type", value: 7, .. })
        ));
        let v2 = ConfChangeV2 { transition: 5, ..ConfChangeV2::default() };
        assert!(decode::<ConfChangeV2>(&encode(&v2)).is_err());
    }
}
