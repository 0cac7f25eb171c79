//! ferry-node: the edge, and the clients that talk to it.
//!
//! # Layout
//! - [`track`]: track buffers (sans-IO core in `track::buffer`) and their
//!   producer/consumer handles — per-viewer backpressure lives here.
//! - [`edge`]: the QUIC edge — sessions, delivery, ingest, upstream relay, HTTP.
//! - [`client`]: connecting, publishing (synthetic or IVF) and watching.
//! - [`media`]: IVF, keyframe detection, the synthetic test source.
//! - [`wire`]: the relay codec on quinn streams.
//! - [`tls`]: certificates, trust, transport tuning.
//! - [`metrics`]: Prometheus metrics of an edge.
//! - [`webrtc`]: WHIP publishers and WHEP viewers.
//! - [`auth`]: HS256 access tokens for WHIP/WHEP (sans-IO: minting and checking).
//! - [`cluster`]: joining a cluster: gossip (chitchat), registration and watch on the
//!   control plane, and the view of peers and stream origins both feed.
//! - [`http_client`]: a small HTTP/1.1 client for the control-plane API.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod edge;
mod error;
pub mod http_client;
pub mod media;
pub mod metrics;
pub mod rollouts;
pub mod tls;
pub mod track;
pub mod webrtc;
pub mod wire;

pub use error::{Error, Result};
