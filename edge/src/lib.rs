//! ferry-edge: the edge — publishers in, viewers and downstream edges out.
//!
//! # Layout
//! Modules are listed from the bottom up; each uses only those above it.
//! - [`track`]: track buffers (sans-IO core in `track::buffer`), their producer and
//!   consumer handles, and a viewer's latency budget: per-viewer backpressure.
//! - [`metrics`]: the edge's Prometheus metrics and their labels.
//! - [`auth`]: HS256 access tokens for WHIP/WHEP (sans-IO: minting and checking).
//! - [`config`]: everything an edge is configured with ([`EdgeConfig`]).
//! - [`access`]: who may publish and watch: token secrets (re-read while running),
//!   the token policy, the dev-only anonymous mode.
//! - [`rollouts`]: placing sessions in rollouts and the edge-local CPU guard
//!   (sans-IO), over the rollouts read from the control plane.
//! - [`cluster`]: the control link (registration and watch), load sampling, the
//!   gossip-and-control view of origins, and redirect decisions.
//! - [`relay`]: the QUIC relay: [`relay::EdgeState`], sessions, delivery, ingest,
//!   upstream links; [`relay::SessionPlane`] is its seam to the WebRTC side.
//! - [`webrtc`]: WHIP publishers and WHEP viewers on the same track buffers.
//! - [`http`]: health, readiness and metrics, with the WebRTC routes merged in.
//! - [`server`]: binding, serving and draining an edge ([`BoundEdge`]).
//!
//! Depends on `ferry-proto`, `ferry-net` and `ferry-media`; never on the clients or
//! the control plane.

pub mod access;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod config;
mod error;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod rollouts;
pub mod server;
pub mod track;
pub mod webrtc;

pub use config::{EdgeConfig, WebRtcConfig};
pub use error::{Error, Result};
pub use server::BoundEdge;
