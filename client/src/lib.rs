//! ferry-client: the clients of a Ferry cluster.
//!
//! # Layout
//! - [`publish`]: `ferry publish` over QUIC (the synthetic stream or an IVF file).
//! - [`watch`]: `ferry watch` over QUIC (stats, IVF output, a throttled slow viewer).
//! - [`whep`]: `ferry watch --whep`, a WebRTC viewer (WHEP signalling, RTP to frames).
//! - [`whip`]: `ferry publish --whip`, a WebRTC publisher (WHIP signalling, frames to RTP).
//! - [`routed`]: asking the control plane where to go, and going again when an edge
//!   fails (`--control-plane`).
//! - [`stats`]: latency samples and summaries.
//!
//! Depends on `ferry-proto`, `ferry-net` and `ferry-media`; never on the edge or the
//! control plane.

mod error;
pub mod publish;
pub mod routed;
pub mod stats;
pub mod watch;
pub mod whep;
pub mod whip;

pub use error::{Error, Result};
