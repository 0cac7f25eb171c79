//! Clients of the relay protocol: connecting, publishing, watching (QUIC), and
//! watching over WHEP.

pub mod conn;
pub mod publish;
pub mod routed;
pub mod stats;
pub mod watch;
pub mod whep;
