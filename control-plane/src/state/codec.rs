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

/// Snapshot version 2: no operator tokens, audit events without role and source. Read
/// so that a data dir written by the previous release upgrades in place.
#[derive(Serialize, Deserialize)]
pub(super) struct StateV2 {
    edges: BTreeMap<String, Edge>,
    streams: BTreeMap<String, Stream>,
    rollouts: BTreeMap<String, Rollout>,
    audit: VecDeque<AuditEventV2>,
    applied_requests: BTreeMap<String, (u64, Outcome)>,
    applied_index: u64,
    next_audit_id: u64,
}

#[derive(Serialize, Deserialize)]
struct AuditEventV2 {
    id: u64,
    index: u64,
    at_ms: u64,
    actor: String,
    request_id: String,
    action: String,
    target: String,
    detail: String,
}

impl StateV2 {
    pub(super) fn upgrade(self) -> State {
        let audit = self
            .audit
            .into_iter()
            .map(|e| AuditEvent {
                id: e.id,
                index: e.index,
                at_ms: e.at_ms,
                actor: e.actor,
                role: String::new(),
                source: String::new(),
                request_id: e.request_id,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect();
        State {
            edges: self.edges,
            streams: self.streams,
            rollouts: self.rollouts,
            audit,
            applied_requests: self.applied_requests,
            applied_index: self.applied_index,
            next_audit_id: self.next_audit_id,
            tokens: BTreeMap::new(),
            command_set_in_use: 0,
            request_order: BTreeSet::new(),
        }
    }

    /// The bytes the previous release wrote for `state` (tests of the upgrade path).
    #[cfg(test)]
    pub(super) fn downgrade(state: &State) -> Vec<u8> {
        let audit = state
            .audit
            .iter()
            .map(|e| AuditEventV2 {
                id: e.id,
                index: e.index,
                at_ms: e.at_ms,
                actor: e.actor.clone(),
                request_id: e.request_id.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                detail: e.detail.clone(),
            })
            .collect();
        let old = StateV2 {
            edges: state.edges.clone(),
            streams: state.streams.clone(),
            rollouts: state.rollouts.clone(),
            audit,
            applied_requests: state.applied_requests.clone(),
            applied_index: state.applied_index,
            next_audit_id: state.next_audit_id,
        };
        let mut bytes = vec![2];
        bytes.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap_or_default());
        bytes
    }
}
