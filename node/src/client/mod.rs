//! Clients of the relay protocol: connecting, publishing, watching.

pub mod conn;
pub mod publish;
pub mod stats;
pub mod watch;
