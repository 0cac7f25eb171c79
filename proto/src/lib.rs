//! ferry-proto: the vocabulary every Ferry process shares.
//!
//! # Layout
//! - [`api`]: records of the control-plane API and health gossip (edges, streams,
//!   rollouts, audit events, gossip members), shared by every process.
//! - [`ids`]: validated names and ids (streams, tracks, nodes, sessions).
//! - [`media`]: the media model — track descriptions, frame headers, flags.
//! - [`message`]: relay protocol messages (control stream and group-stream headers).
//! - [`codec`]: the versioned, length-prefixed bincode codec with size limits.
//! - [`error`]: [`Error`], [`ErrorCode`] (QUIC close / reset codes).
//! - [`placement`]: routing a new session to an edge (bounded-load rendezvous hashing),
//!   shared by the control plane's `/v1/route` and edges that redirect.
//! - [`cohort`]: which sessions get a rollout's treatment at each level (sticky buckets).
//! - [`rollout`]: a rollout's typed spec (override, gates, guard, on-trip) and its checks.
//!
//! This crate is pure: no tokio, no sockets, no clock. Every decoder takes a size
//! limit and returns an error on garbage; none of them panics.

pub mod api;
pub mod codec;
pub mod cohort;
pub mod error;
pub mod ids;
pub mod media;
pub mod message;
pub mod placement;
pub mod rollout;

pub use codec::{
    decode_body, decode_frame_header, decode_length, decode_message, encode_frame_header, encode_message,
    FRAME_HEADER_LEN, LENGTH_PREFIX_LEN, MAX_CONTROL_MESSAGE, MAX_FRAME_PAYLOAD, MAX_PROTOCOL_VERSION,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use error::{Error, ErrorCode, Result};
pub use ids::{NodeId, SessionId, StreamName, TrackName};
pub use media::{Codec, FrameFlags, FrameHeader, Timebase, TrackInfo, TrackKind};
pub use message::{check_session, GroupHeader, Hello, Message, Role};

/// ALPN protocol id of the relay protocol.
pub const ALPN: &[u8] = b"ferry/1";
