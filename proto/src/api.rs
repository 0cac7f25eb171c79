//! Records of the control-plane API and of health gossip, declared once: the control
//! plane stores and serves them, the edge's control link and `ferry ctl` read them,
//! and gossip carries [`SelfInfo`].
//!
//! Readers tolerate fields they do not know (a newer control plane may add some);
//! the request bodies that write them refuse unknown fields.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::rollout::{CohortCounts, RolloutSpec};

/// An edge as registered with the control plane (`GET /v1/edges/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub id: String,
    pub region: String,
    /// Where peers and publishers reach the edge over QUIC.
    pub quic_addr: String,
    /// Where the edge serves HTTP (health, metrics, WHIP/WHEP).
    pub http_addr: String,
    /// Software version the edge reported.
    #[serde(default)]
    pub version: String,
    /// Relative capacity used by placement.
    #[serde(default)]
    pub capacity: u32,
    /// An operator asked it to drain (`ferry ctl edges drain`): it leaves routing, moves
    /// its sessions and exits. Cleared when the edge (a new process) registers again.
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub registered_at_ms: u64,
    #[serde(default)]
    pub updated_at_ms: u64,
}

/// What an edge registers (`PUT /v1/edges/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRegistration {
    pub region: String,
    pub quic_addr: String,
    pub http_addr: String,
    /// Software version the edge runs ("unknown" when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub capacity: u32,
}

/// A stream: the edge its publisher is on, and the edges relaying it per viewer region
/// (`GET /v1/streams/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    /// Id of the edge the publisher is connected to.
    pub origin: String,
    /// Relay edge ids by region. Regions with no relays are not stored.
    #[serde(default)]
    pub relays: BTreeMap<String, Vec<String>>,
    /// The origin edge died (committed by the leader's failover) and no publisher has
    /// come back yet. Cleared when a new origin is put.
    #[serde(default)]
    pub origin_lost: bool,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub updated_at_ms: u64,
}

/// A staged rollout (`GET /v1/rollouts/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    /// Parsed once, when the record is read; stored in snapshots as JSON text.
    #[serde(with = "json_text")]
    pub spec: RolloutSpec,
    /// 0 (nobody) ..= 4 (everybody).
    pub level: u8,
    pub state: RolloutState,
    /// The newest events, oldest first.
    #[serde(default)]
    pub history: Vec<RolloutEvent>,
    #[serde(default)]
    pub created_at_ms: u64,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Levels may move.
    Active,
    /// Held by an operator; resume to continue.
    Paused,
    /// Ended by an operator; final.
    Aborted,
    /// Stopped by a failing guard; resume to continue.
    Tripped,
}

impl RolloutState {
    /// The name the API uses (`active`, `paused`, `aborted`, `tripped`).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Tripped => "tripped",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step in a rollout's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub at_ms: u64,
    pub actor: String,
    /// What happened, e.g. `created`, `level 1 -> 2`, `paused`.
    pub what: String,
    /// Level after the event.
    pub level: u8,
}

/// A successful change, for operators (`GET /v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: u64,
    /// Raft index of the entry that made the change.
    pub index: u64,
    pub at_ms: u64,
    /// The principal: `token:NAME`, `edge:ID`, `bootstrap`, or a loop of the cluster
    /// itself (`placement`, `failover`, `expiry`, `guard`).
    pub actor: String,
    /// The principal's role (`admin`, `operator`, `viewer`, `edge`; empty for the cluster).
    #[serde(default)]
    pub role: String,
    /// The client's address (empty for the cluster).
    #[serde(default)]
    pub source: String,
    pub request_id: String,
    /// Dotted action name (`edge.register`, `rollout.level`, ...).
    pub action: String,
    /// Id or name of the edge, stream or rollout changed.
    pub target: String,
    /// Human-readable summary.
    pub detail: String,
}

/// The keys a process publishes about itself in health gossip; refreshed every round.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SelfInfo {
    /// `edge` or `voter`.
    pub role: String,
    pub region: String,
    pub version: String,
    pub quic_addr: String,
    pub http_addr: String,
    pub draining: bool,
    pub sessions: u64,
    pub cpu: f64,
    pub bytes_per_s: u64,
    /// Streams published here: all of them, or the ones with viewers and the longest
    /// running first when there are more than gossip lists (`origins_unlisted` says how
    /// many are left out).
    pub origins: BTreeSet<String>,
    /// Streams published here that `origins` leaves out.
    pub origins_unlisted: u64,
    pub carries: BTreeSet<String>,
    /// Rollouts this edge's CPU guard tripped (the control plane records them).
    pub trips: BTreeSet<String>,
    /// Sessions and errors per rollout and cohort since this edge started.
    pub rollout_counts: BTreeMap<String, CohortCounts>,
}

/// One process as gossip sees it: its identity in the gossip, the failure detector's
/// verdict, and the keys it publishes (`GET /v1/members`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    pub gossip_addr: String,
    /// Bumped every time the process restarts.
    pub generation: u64,
    pub alive: bool,
    #[serde(flatten)]
    pub info: SelfInfo,
}

/// A field that is itself in human-readable formats (the API's JSON) and JSON text in
/// binary ones (bincode snapshots), so a snapshot's bytes do not depend on how the
/// field's type is laid out in bincode.
mod json_text {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
            serializer.serialize_str(&text)
        }
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        if deserializer.is_human_readable() {
            T::deserialize(deserializer)
        } else {
            let text = String::deserialize(deserializer)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn readers_tolerate_fields_they_do_not_know() {
        let edge: Edge = serde_json::from_value(serde_json::json!({
            "id": "a", "region": "eu", "quic_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2",
            "gossip": {"alive": true}
        }))
        .unwrap();
        assert_eq!((edge.id.as_str(), edge.capacity, edge.draining), ("a", 0, false));
    }

    #[test]
    fn a_rollout_keeps_its_typed_spec_in_json_and_in_bincode() {
        let spec: RolloutSpec =
            serde_json::from_value(serde_json::json!({"override": {"max_lag_ms": 500}})).unwrap();
        let rollout = Rollout {
            id: "lag".into(),
            spec,
            level: 2,
            state: RolloutState::Paused,
            history: Vec::new(),
            created_at_ms: 7,
        };
        let json = serde_json::to_value(&rollout).unwrap();
        assert_eq!(json["state"], "paused");
        assert_eq!(json["spec"]["override"]["max_lag_ms"], 500);
        assert_eq!(serde_json::from_value::<Rollout>(json).unwrap(), rollout);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&rollout, config).unwrap();
        let (back, _): (Rollout, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, rollout);
    }
}
