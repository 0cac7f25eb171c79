//! How outcomes and opaque JSON values are serialized: readable JSON for the API,
//! compact forms for bincode snapshots.

use super::*;

/// Serde for [`Outcome`]: internally tagged in human-readable formats (the API's JSON),
/// externally tagged in bincode, which cannot decode internal tags.
#[derive(Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum TaggedOutcome {
    Ok { detail: Value },
    Rejected { code: String, message: String },
}

#[derive(Serialize, Deserialize)]
enum CompactOutcome {
    Ok {
        #[serde(with = "json_value")]
        detail: Value,
    },
    Rejected {
        code: String,
        message: String,
    },
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.clone(), serializer.is_human_readable()) {
            (Outcome::Ok { detail }, true) => TaggedOutcome::Ok { detail }.serialize(serializer),
            (Outcome::Rejected { code, message }, true) => {
                TaggedOutcome::Rejected { code, message }.serialize(serializer)
            }
            (Outcome::Ok { detail }, false) => CompactOutcome::Ok { detail }.serialize(serializer),
            (Outcome::Rejected { code, message }, false) => {
                CompactOutcome::Rejected { code, message }.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(if deserializer.is_human_readable() {
            match TaggedOutcome::deserialize(deserializer)? {
                TaggedOutcome::Ok { detail } => Outcome::Ok { detail },
                TaggedOutcome::Rejected { code, message } => Outcome::Rejected { code, message },
            }
        } else {
            match CompactOutcome::deserialize(deserializer)? {
                CompactOutcome::Ok { detail } => Outcome::Ok { detail },
                CompactOutcome::Rejected { code, message } => Outcome::Rejected { code, message },
            }
        })
    }
}

/// A `serde_json::Value` field: itself in human-readable formats, JSON text in binary ones
/// (bincode has no `deserialize_any`, which `Value` needs).
mod json_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(value: &Value, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            serializer.serialize_str(&value.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        if deserializer.is_human_readable() {
            Value::deserialize(deserializer)
        } else {
            let text = String::deserialize(deserializer)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}
