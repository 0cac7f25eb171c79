//! ferry-control-plane: the cluster's source of truth.
//!
//! # Layout
//! Modules from the bottom up; each uses only those above it.
//! - [`linearizable`]: a linearizability checker for histories of registers (pure; the
//!   node simulation and `ferry bench soak` check their clients' histories with it).
//! - [`raft_codec`]: raft-rs types to protobuf bytes and back (prost), in one place.
//! - [`state`]: the pure replicated state machine: `apply(&mut State, index, &Request) -> Outcome`.
//! - [`versions`]: the cluster version: what each voter announces, and when the leader
//!   raises the cluster's command set (sans-IO).
//! - [`backup`]: the backup file (`ferry ctl snapshot save`, `ferry control --restore`): pure encoding.
//! - [`storage`]: the raft log, hard state, conf state and snapshots on sled, behind [`storage::LogStore`].
//! - [`node`]: the raft node (raft-rs `RawNode` driven by one task) and its seam to the
//!   network, [`node::RaftNetwork`] (with an in-memory router for tests).
//! - `error`: why a voter could not start.
//! - [`transport`]: raft messages between voters over QUIC (mutual TLS).
//! - [`guard`]: the global error guard of rollouts (sans-IO).
//! - [`failover`]: the leader's reaction to edges gossip declares dead (sans-IO).
//! - [`expiry`]: the leader's removal of stream records nobody uses (sans-IO).
//! - [`relays`]: relay placement per region (sans-IO).
//! - [`api`]: the HTTP API (axum): reads, writes through raft, watch, routing.
//! - [`server`]: starting and stopping a voter, and the loops that feed the sans-IO
//!   cores from gossip.
//! - `golden` (tests only): the persisted formats and wire messages of each release,
//!   as files in `tests/golden/`, read by every later build.
//!
//! Depends on `ferry-proto` and `ferry-net` only: a voter never links the edge, the
//! clients or WebRTC.

pub mod api;
pub mod backup;
mod error;
pub mod expiry;
pub mod failover;
#[cfg(test)]
mod golden;
pub mod guard;
pub mod linearizable;
pub mod node;
pub use ferry_proto::placement;
pub mod raft_codec;
pub mod relays;
pub mod server;
pub mod state;
pub mod storage;
pub mod transport;
pub mod versions;

pub use error::{Error, Result};
