//! The error of starting a voter. Narrow errors stay where callers match on them
//! ([`NodeError`] for raft operations, [`crate::state::StateError`] for encoding,
//! [`crate::storage::StoreError`] for the log store, `ApiError` for HTTP answers);
//! this one names what failed at startup and keeps the cause as its source.

use std::net::SocketAddr;

use crate::node::NodeError;

/// Result of this crate's startup paths.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a voter could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening storage or starting raft failed.
    #[error("raft node")]
    Node(#[from] NodeError),
    /// A socket could not be bound: names the address and the flag that sets it.
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The raft node's thread could not be started.
    #[error("cannot start the raft node's thread")]
    Thread(#[source] std::io::Error),
    /// TLS, gossip or another network setup failed.
    #[error(transparent)]
    Net(#[from] ferry_net::Error),
    /// The running raft node stopped (a storage failure): the reason.
    #[error("the raft node stopped: {0}")]
    Stopped(String),
}

impl Error {
    /// Binding `addr` for `what` (`HTTP (--http-listen)`) failed.
    pub fn bind(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Bind { what, addr, source }
    }
}
