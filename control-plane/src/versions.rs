//! The cluster version (sans-IO): which command set the cluster may use.
//!
//! Every voter announces the newest command set its build applies ([`Hello`], sent first
//! on every raft connection it opens). The leader raises the cluster's set
//! ([`crate::state::Command::RaiseCommandSet`]) to the lowest set every member announced,
//! never above its own, and only up: [`next_command_set`]. Until then the cluster keeps
//! writing what every member reads (bare JSON entries, snapshot version 3), so a rolling
//! upgrade can stop or roll back halfway. A member not heard from, or one whose build
//! announces nothing (earlier releases), counts as command set 1.
//!
//! As etcd's cluster version, the set never goes down: once raised, a voter of an
//! older build stops at the raising entry (and says so) instead of skipping it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::COMMAND_SET;

/// Marks a hello on a raft connection: it follows a batch header of zero messages, which
/// earlier releases read as an empty batch, ignoring the rest of the stream.
pub const HELLO_MAGIC: &[u8] = b"ferry-hello/1";
/// Largest hello body accepted.
pub const MAX_HELLO: usize = 1024;

/// What a voter announces about its build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The voter's raft id.
    pub id: u64,
    /// The newest command set its build applies.
    pub command_set: u16,
    /// Its release (`ferry --version`), for operators.
    pub version: String,
}

impl Hello {
    /// This build's hello as voter `id`.
    pub fn of_this_build(id: u64) -> Hello {
        let Announcement { command_set, version } = Announcement::of_this_build();
        Hello { id, command_set, version }
    }

    /// The bytes after [`HELLO_MAGIC`]: the body's length (u16, big-endian), then JSON.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut bytes = Vec::with_capacity(HELLO_MAGIC.len() + 2 + body.len());
        bytes.extend_from_slice(HELLO_MAGIC);
        bytes.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Decodes a hello body (the JSON after the magic and length).
    pub fn decode_body(body: &[u8]) -> Result<Hello, String> {
        if body.len() > MAX_HELLO {
            return Err(format!("hello of {} bytes", body.len()));
        }
        let hello: Hello = serde_json::from_slice(body).map_err(|e| format!("malformed hello: {e}"))?;
        if hello.command_set == 0 || hello.version.len() > 64 {
            return Err("malformed hello: command set 0 or an overlong version".to_owned());
        }
        Ok(hello)
    }
}

/// What this voter last heard a member announce, on its current connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    pub command_set: u16,
    pub version: String,
}

impl Announcement {
    /// What this build announces.
    pub fn of_this_build() -> Announcement {
        Announcement { command_set: COMMAND_SET, version: env!("CARGO_PKG_VERSION").to_owned() }
    }
}

/// The command set the leader should raise the cluster to, if any: the lowest set any
/// member (voter or learner) announced — 1 for one it has not heard from — capped at
/// this build's own, when that is above `in_use`. `me` is the leader itself.
pub fn next_command_set(
    in_use: u16,
    me: u64,
    members: &[u64],
    announced: &BTreeMap<u64, Announcement>,
) -> Option<u16> {
    let lowest = members
        .iter()
        .filter(|id| **id != me)
        .map(|id| announced.get(id).map_or(1, |a| a.command_set))
        .fold(COMMAND_SET, u16::min);
    (lowest > in_use).then_some(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(sets: &[(u64, u16)]) -> BTreeMap<u64, Announcement> {
        sets.iter().map(|(id, set)| (*id, Announcement { command_set: *set, version: "x".into() })).collect()
    }

    #[test]
    fn the_set_rises_only_once_every_member_announced_it() {
        // Nobody heard from: stay.
        assert_eq!(next_command_set(1, 1, &[1, 2, 3], &heard(&[])), None);
        // One member of an earlier build (or silent): stay.
        assert_eq!(next_command_set(1, 1, &[1, 2, 3], &heard(&[(2, COMMAND_SET)])), None);
        assert_eq!(next_command_set(1, 1, &[1, 2, 3], &heard(&[(2, COMMAND_SET), (3, 1)])), None);
        // Everyone: rise to this build's set.
        assert_eq!(
            next_command_set(1, 1, &[1, 2, 3], &heard(&[(2, COMMAND_SET), (3, COMMAND_SET)])),
            Some(COMMAND_SET)
        );
        // A member that announces more than this build applies: this build's set.
        assert_eq!(next_command_set(1, 1, &[1, 2], &heard(&[(2, COMMAND_SET + 5)])), Some(COMMAND_SET));
        // A single voter needs nobody.
        assert_eq!(next_command_set(1, 1, &[1], &heard(&[])), Some(COMMAND_SET));
        // Already there, or a member announcing less than the set in use: never down.
        assert_eq!(next_command_set(COMMAND_SET, 1, &[1, 2], &heard(&[(2, COMMAND_SET)])), None);
        assert_eq!(next_command_set(COMMAND_SET, 1, &[1, 2], &heard(&[(2, 1)])), None);
        // Announcements of non-members do not count, nor does their absence.
        assert_eq!(next_command_set(1, 1, &[1, 2], &heard(&[(2, COMMAND_SET), (9, 1)])), Some(COMMAND_SET));
    }

    #[test]
    fn hellos_round_trip_and_bad_ones_are_refused() {
        let hello = Hello::of_this_build(3);
        let bytes = hello.encode();
        assert!(bytes.starts_with(HELLO_MAGIC));
        let body = &bytes[HELLO_MAGIC.len() + 2..];
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[HELLO_MAGIC.len()], bytes[HELLO_MAGIC.len() + 1]])),
            body.len()
        );
        assert_eq!(Hello::decode_body(body).unwrap(), hello);
        assert!(Hello::decode_body(b"{").is_err());
        assert!(Hello::decode_body(br#"{"id":1,"command_set":0,"version":"v"}"#).is_err());
        assert!(Hello::decode_body(&vec![b' '; MAX_HELLO + 1]).is_err());
    }
}
