//! ferry-net: how Ferry processes reach each other.
//!
//! # Layout
//! - [`tls`]: rustls and quinn configurations (server identities, client trust, mutual
//!   TLS inside the cluster), transport tuning, and certificate generation.
//! - [`identity`]: role-bound identities in certificates (`spiffe://CLUSTER/ROLE/NODE`)
//!   and the reasons a peer is refused.
//! - [`wire`]: the relay codec on quinn streams (messages and frames).
//! - [`dial`]: resolving `HOST:PORT` and opening a relay-protocol connection (QUIC
//!   handshake, `Hello`, `Session`).
//! - [`http`]: the one HTTP client (hyper, rustls for `https://`), with bounded bodies.
//! - [`http_server`]: the one HTTP server (hyper with a timer): header and body
//!   timeouts, global and per-IP connection caps.
//! - [`seal`]: the gossip keyring and sealed datagrams (ChaCha20-Poly1305).
//! - [`gossip`]: health gossip among all processes (chitchat over UDP, sealed).
//! - [`proof`]: a node's signed proof of its cluster certificate on HTTP requests.
//! - [`random`]: random ids from the operating system's generator.
//! - [`time`]: wall-clock stamps for what crosses process boundaries.
//!
//! Depends only on `ferry-proto`; the edge, the clients and the control plane build on
//! it, and none of them on each other.

pub mod certs;
pub mod dial;
mod error;
pub mod files;
pub mod gossip;
pub mod http;
pub mod http_server;
pub mod identity;
pub mod keys;
pub mod proof;
pub mod random;
pub mod seal;
pub mod shares;
pub mod time;
pub mod tls;
pub mod wire;

pub use error::{BoxError, Chain, Error, Result};
