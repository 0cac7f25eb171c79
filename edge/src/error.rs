//! The one error type of this crate. Variants say what failed; a lower error that
//! caused it is kept as the source.

use std::net::SocketAddr;

use ferry_proto::ErrorCode;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the edge or one of its sessions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reaching or talking to a peer failed (QUIC, TLS, HTTP, gossip), or the peer
    /// broke the relay protocol.
    #[error(transparent)]
    Net(#[from] ferry_net::Error),
    /// A socket could not be bound: names the address and the flag that sets it.
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work (says what to change).
    #[error("{0}")]
    Config(String),
    /// The token secrets could not be read.
    #[error("token secrets")]
    Secrets(#[from] crate::auth::SecretError),
    /// The control plane answered a request with an error.
    #[error("control plane {path}: HTTP {status}: {body}")]
    ControlPlane { path: String, status: u16, body: String },
}

impl Error {
    /// The code to close a connection with when this error ends it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Net(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }

    /// A peer did something out of order.
    pub fn protocol(message: impl Into<String>) -> Self {
        Error::Net(ferry_net::Error::Protocol(message.into()))
    }

    /// Refuses the peer with `code`.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Net(ferry_net::Error::Refused { code, message: message.into() })
    }

    /// The peer did not do `what` in time.
    pub fn timeout(what: &'static str) -> Self {
        Error::Net(ferry_net::Error::Timeout(what))
    }

    /// Binding `addr` for `what` (`QUIC (--quic-listen)`) failed.
    pub fn bind(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Bind { what, addr, source }
    }
}

macro_rules! via_net {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Net(e.into())
            }
        }
    )*};
}

via_net!(
    ferry_proto::Error,
    quinn::ConnectError,
    quinn::ConnectionError,
    quinn::ReadError,
    quinn::WriteError,
    quinn::ClosedStream,
    quinn::ReadExactError
);
