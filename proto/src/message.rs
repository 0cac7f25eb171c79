//! Relay protocol messages (docs/protocol.md).
//!
//! One bidirectional control stream per connection carries [`Message`]s, each in the
//! versioned envelope of [`crate::codec`]. Each group travels on its own
//! unidirectional stream that starts with a [`GroupHeader`] followed by frames
//! (a [`crate::FrameHeader`] then the payload bytes).

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, NodeId, StreamName, TrackInfo, TrackName};

/// Who opened a connection. Edges treat downstream edges and viewers alike, but count
/// them apart (one upstream subscription per track and downstream edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Publisher,
    Viewer,
    Edge,
}

impl Role {
    /// Lowercase name for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Viewer => "viewer",
            Role::Edge => "edge",
        }
    }
}

/// The first message of a connection, from the client. Its shape never changes
/// between versions so any two builds can negotiate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// The client's node id (edges) or a client label (publishers, viewers).
    pub node: NodeId,
    pub role: Role,
    /// A bearer token, when the edge requires one.
    pub token: Option<String>,
}

/// Control stream messages, both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → edge, first message.
    Hello(Hello),
    /// Edge → client: the version both will speak from now on.
    HelloOk { version: u16, node: NodeId },
    /// Publisher → edge: a stream and its tracks. Group streams follow.
    Announce { stream: StreamName, tracks: Vec<TrackInfo> },
    /// Edge → publisher: the announce was accepted.
    AnnounceOk { stream: StreamName },
    /// Edge → publisher: the announce was refused.
    AnnounceError { stream: StreamName, code: ErrorCode, message: String },
    /// Subscriber → edge: deliver a track. `id` is chosen by the subscriber and names
    /// the subscription in the group headers that follow.
    Subscribe {
        id: u64,
        stream: StreamName,
        track: TrackName,
        /// Relative priority among this connection's subscriptions (higher first).
        priority: u8,
        /// Latency budget: frames older than this are skipped to the newest keyframe.
        max_lag_ms: u32,
    },
    /// Edge → subscriber: the subscription is live; groups follow.
    SubscribeOk { id: u64, track: TrackInfo },
    /// Edge → subscriber: the subscription was refused.
    SubscribeError { id: u64, code: ErrorCode, message: String },
    /// Edge → subscriber: the subscription ended (track ended, upstream lost, ...).
    SubscribeDone { id: u64, code: ErrorCode, message: String },
    /// Subscriber → edge: stop delivering.
    Unsubscribe { id: u64 },
    /// Subscriber → edge → publisher: start a new group as soon as possible.
    KeyframeRequest { stream: StreamName, track: TrackName },
    /// Either side: stop opening new work here and reconnect elsewhere.
    GoAway { reason: String },
    /// Publisher or viewer → edge, version 2 and later: the first message after
    /// `HelloOk`. The session's stable id and client tags, by which rollouts place it
    /// in a cohort (docs/rollouts.md).
    Session { id: String, tags: Vec<String> },
    /// Edge → publisher or viewer: where the rollouts placed the session, e.g.
    /// `bbr=treatment, lag=baseline` (empty: no rollouts), and the treatment's client
    /// flag. A refused session is closed with its code instead.
    SessionOk { variant: String, client_flag: Option<String> },
}

/// Longest session id in a [`Message::Session`].
pub const MAX_SESSION_ID: usize = 128;
/// Most client tags in a [`Message::Session`], and the longest tag.
pub const MAX_SESSION_TAGS: usize = 8;
pub const MAX_SESSION_TAG: usize = 256;

/// Checks a [`Message::Session`]: an id of 1..=128 visible ASCII characters, at most
/// 8 tags of at most 256 bytes.
pub fn check_session(id: &str, tags: &[String]) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("a session id is 1-{MAX_SESSION_ID} visible ASCII characters"));
    }
    if tags.len() > MAX_SESSION_TAGS || tags.iter().any(|t| t.len() > MAX_SESSION_TAG) {
        return Err(format!("at most {MAX_SESSION_TAGS} client tags of at most {MAX_SESSION_TAG} bytes"));
    }
    Ok(())
}

impl Message {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloOk { .. } => "hello_ok",
            Message::Announce { .. } => "announce",
            Message::AnnounceOk { .. } => "announce_ok",
            Message::AnnounceError { .. } => "announce_error",
            Message::Subscribe { .. } => "subscribe",
            Message::SubscribeOk { .. } => "subscribe_ok",
            Message::SubscribeError { .. } => "subscribe_error",
            Message::SubscribeDone { .. } => "subscribe_done",
            Message::Unsubscribe { .. } => "unsubscribe",
            Message::KeyframeRequest { .. } => "keyframe_request",
            Message::GoAway { .. } => "go_away",
            Message::Session { .. } => "session",
            Message::SessionOk { .. } => "session_ok",
        }
    }
}

/// The header that opens every group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeader {
    /// Publisher → edge: the index of the track in the `Announce`.
    /// Edge → subscriber: the subscription id.
    pub track: u64,
    /// Group sequence number, increasing by one per group within a track.
    pub seq: u64,
}
