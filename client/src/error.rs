//! The one error type of this crate.

use ferry_proto::ErrorCode;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong publishing or watching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reaching or talking to the edge or the control plane failed.
    #[error(transparent)]
    Net(#[from] ferry_net::Error),
    /// Reading or writing media (an IVF file, standard input or output).
    #[error("reading or writing media")]
    Media(#[from] ferry_media::MediaError),
    /// A file could not be opened or created.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The options or the input cannot work (names what to change).
    #[error("{0}")]
    Config(String),
    /// No edge could be found for the stream.
    #[error("no route for {stream}: {reason}")]
    NoRoute { stream: String, reason: String },
    /// WHIP/WHEP signalling failed (redirected too often, no answer, ...).
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The WHIP/WHEP endpoint answered the offer with an error status; `body` carries
    /// the edge's JSON `{"error", "reason"}`.
    #[error("webrtc: {url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    /// The `webrtc` crate failed while `what`.
    #[error("webrtc: {what}")]
    Peer {
        what: &'static str,
        #[source]
        source: webrtc::error::Error,
    },
}

impl Error {
    /// The refusal code when the edge refused us.
    pub fn refused_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Net(ferry_net::Error::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status a WHIP/WHEP endpoint refused the offer with.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A protocol violation by the edge.
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::Net(ferry_net::Error::Protocol(message.into()))
    }

    /// The edge refused with `code` and `message`.
    pub(crate) fn refused(code: ErrorCode, message: String) -> Self {
        Error::Net(ferry_net::Error::Refused { code, message })
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
