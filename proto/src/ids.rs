//! Validated names and ids. Every constructor checks syntax, so a value of these
//! types that came off the wire is as safe as one built locally.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn invalid(kind: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidName { kind, reason: reason.into() }
}

/// A stream name such as `live/room1`: 1–128 bytes of `[A-Za-z0-9._-]` in
/// `/`-separated segments, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(invalid("stream name", format!("length must be 1..={}", Self::MAX_LEN)));
        }
        for segment in name.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(invalid("stream name", format!("bad segment in {name:?}")));
            }
            if let Some(c) =
                segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(invalid("stream name", format!("character {c:?} not allowed")));
            }
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A track name such as `video` or `audio`: 1–32 bytes of `[a-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrackName(String);

impl TrackName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 32;

    /// Validates and wraps a track name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(invalid("track name", format!("length must be 1..={}", Self::MAX_LEN)));
        }
        if let Some(c) =
            name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(invalid("track name", format!("character {c:?} not allowed")));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The conventional video track.
    pub fn video() -> Self {
        Self("video".to_owned())
    }
}

/// A node id (edge or control-plane voter): 1–64 bytes of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(invalid("node id", format!("length must be 1..={}", Self::MAX_LEN)));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(invalid("node id", format!("character {c:?} not allowed")));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session (one publisher or viewer connection's subscription), unique per edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

macro_rules! string_id_impls {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0
            }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
string_id_impls!(StreamName, TrackName, NodeId);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_rules() {
        for ok in ["live/room1", "a", "x.y_z-1/B"] {
            assert!(StreamName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/live", "live/", "live//x", "../etc", "a b", "x/./y", &"a".repeat(129)] {
            assert!(StreamName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn track_and_node_names_follow_the_rules() {
        assert!(TrackName::new("video").is_ok());
        assert!(TrackName::new("Video").is_err());
        assert!(NodeId::new("edge-a.eu1").is_ok());
        assert!(NodeId::new("edge a").is_err());
    }
}
