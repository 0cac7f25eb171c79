//! Errors of decoding and validation, and the numeric codes put on the wire.

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a message, header or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A length prefix or header claims more bytes than the caller allows.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The envelope carries a protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// The bytes end before the message does.
    #[error("truncated message: need {needed} more bytes")]
    Truncated { needed: usize },
    /// The body does not decode as the expected type, or has bytes left over.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A name or id breaks its syntax rules.
    #[error("invalid {kind}: {reason}")]
    InvalidName { kind: &'static str, reason: String },
    /// A frame header carries flag bits this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
}

impl Error {
    /// The wire code a peer sends when it refuses input for this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::TooLarge { .. } => ErrorCode::MessageTooLarge,
            Error::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Error::Truncated { .. }
            | Error::Malformed(_)
            | Error::InvalidName { .. }
            | Error::UnknownFlags(_) => ErrorCode::ProtocolViolation,
        }
    }
}

/// Application error codes used in QUIC `CONNECTION_CLOSE`, stream resets and
/// `*Error` messages. Values are stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// Clean close.
    NoError = 0,
    /// Garbage, truncated or out-of-order input.
    ProtocolViolation = 1,
    /// No common protocol version.
    UnsupportedVersion = 2,
    /// A message or frame above the receiver's limit.
    MessageTooLarge = 3,
    /// Missing or bad credentials.
    Unauthorized = 4,
    /// The stream or track does not exist here or upstream.
    NotFound = 5,
    /// Over a capacity limit; retry later or elsewhere.
    ServerBusy = 6,
    /// The peer is shutting down or draining; reconnect elsewhere.
    GoingAway = 7,
    /// A bug or an unexpected local failure.
    Internal = 8,
    /// The stream is already being published, on this edge or another; a second
    /// publisher needs a token with a takeover grant.
    StreamBusy = 9,
    /// The track ended (publisher left).
    TrackEnded = 10,
    /// A group stream reset because it fell outside the subscriber's latency budget.
    StaleGroup = 16,
    /// A stream reset because its subscription was cancelled.
    Cancelled = 17,
    /// The upstream edge could not be reached.
    UpstreamUnavailable = 18,
    /// Refused on purpose by a rollout's fault-injection drill.
    FaultInjected = 19,
    /// Another publisher took the stream over (its token granted a takeover).
    TakenOver = 20,
}

impl ErrorCode {
    /// Every code, for lookups and tests.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NoError,
        ErrorCode::ProtocolViolation,
        ErrorCode::UnsupportedVersion,
        ErrorCode::MessageTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::ServerBusy,
        ErrorCode::GoingAway,
        ErrorCode::Internal,
        ErrorCode::StreamBusy,
        ErrorCode::TrackEnded,
        ErrorCode::StaleGroup,
        ErrorCode::Cancelled,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::FaultInjected,
        ErrorCode::TakenOver,
    ];

    /// The numeric value on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire value, if it is one we know.
    pub fn from_u32(value: u32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_u32() == value)
    }

    /// A short snake_case name, for logs, metrics labels and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NoError => "no_error",
            ErrorCode::ProtocolViolation => "protocol_violation",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::Internal => "internal",
            ErrorCode::StreamBusy => "stream_busy",
            ErrorCode::TrackEnded => "track_ended",
            ErrorCode::StaleGroup => "stale_group",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::FaultInjected => "fault_injected",
            ErrorCode::TakenOver => "taken_over",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_through_u32() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(code.as_u32()), Some(code));
        }
        assert_eq!(ErrorCode::from_u32(9999), None);
    }
}
