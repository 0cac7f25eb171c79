//! The one error type of this crate.

use ferry_proto::ErrorCode;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the edge, a relay link or a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes from a peer broke the protocol (see the inner reason).
    #[error(transparent)]
    Proto(#[from] ferry_proto::Error),
    /// The peer refused us, with its code and message.
    #[error("refused by peer: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The peer did something out of order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A stream ended in the middle of a message or frame.
    #[error("stream ended inside a message")]
    Truncated,
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("media: {0}")]
    Media(#[from] crate::media::MediaError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// WebRTC signalling or the webrtc crate failed.
    #[error("webrtc: {0}")]
    WebRtc(String),
}

impl Error {
    /// The code to close a connection with when this error ends it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Proto(e) => e.code(),
            Error::Refused { code, .. } => *code,
            Error::Protocol(_) | Error::Truncated => ErrorCode::ProtocolViolation,
            Error::Timeout(_) => ErrorCode::ProtocolViolation,
            _ => ErrorCode::Internal,
        }
    }
}

impl From<quinn::ReadExactError> for Error {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => Error::Truncated,
            quinn::ReadExactError::ReadError(e) => Error::Read(e),
        }
    }
}
