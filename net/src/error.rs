//! The one error type of this crate. Each variant says what failed; where a lower
//! error caused it, that error is kept as the source (printed after it, never inside).

use ferry_proto::ErrorCode;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed lower error kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong reaching or talking to another process.
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
    #[error("cannot open a QUIC connection")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC connection lost")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading a QUIC stream")]
    Read(#[from] quinn::ReadError),
    #[error("writing a QUIC stream")]
    Write(#[from] quinn::WriteError),
    #[error("QUIC stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A stream ended in the middle of a message or frame.
    #[error("stream ended inside a message")]
    Truncated,
    /// Building a TLS configuration or certificate failed.
    #[error("{context}")]
    Tls {
        context: String,
        #[source]
        source: BoxError,
    },
    /// A file or socket operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A setting or address is unusable.
    #[error("{0}")]
    Config(String),
    /// An HTTP request got no response.
    #[error("{method} {url}")]
    Http {
        method: String,
        url: String,
        #[source]
        source: BoxError,
    },
    /// An HTTP request got no response in time.
    #[error("{method} {url}: no answer within {timeout:?}")]
    HttpTimeout { method: String, url: String, timeout: std::time::Duration },
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random(#[source] getrandom::Error),
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

    /// An I/O error with what was being done (`context` names the file or address).
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// A TLS or certificate error with what was being done.
    pub fn tls<E: Into<BoxError>>(context: impl Into<String>) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |source| Error::Tls { context, source: source.into() }
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

/// Displays an error with its chain of sources: `what failed: why: the root cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
