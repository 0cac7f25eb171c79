//! ferry-control-plane: the cluster's source of truth.
//!
//! # Layout
//! - [`state`]: the pure replicated state machine: `apply(&mut State, index, &Request) -> Outcome`.
//! - [`storage`]: the raft log, hard state, conf state and snapshots on sled, behind [`storage::LogStore`].

pub mod api;
mod error;
pub mod failover;
pub mod guard;
pub mod node;
pub use ferry_proto::placement;
pub mod relays;
pub mod server;
pub mod state;
pub mod storage;
pub mod transport;

pub use error::{Error, Result};
