//! The replicated state machine: edges, streams, rollouts and the audit log.
//!
//! [`apply`] is a pure function of the state, the raft index and a [`Request`]: no IO, no
//! clock (time arrives in [`Request::at_ms`], stamped by the proposer), no randomness. Every
//! replica that applies the same log therefore holds the same [`State`], byte for byte.
//!
//! A rejected command changes nothing but [`State::applied_index`] and the exactly-once
//! memory, so a client retrying with the same `request_id` sees the same answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use ferry_proto::api::{AuditEvent, Edge, Rollout, RolloutEvent, RolloutState, Stream};
use ferry_proto::rollout::RolloutSpec;
use ferry_proto::{NodeId, StreamName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

#[cfg(test)]
mod tests;

/// Outcomes remembered for exactly-once retries. A client that retries a request older than
/// the newest this many may apply it twice; at hundreds of writes a second that is minutes.
pub const MAX_APPLIED_REQUESTS: usize = 100_000;
/// Audit events kept in the replicated state; older ones fall off the front. Snapshots carry
/// the whole state, so this bounds their size.
pub const MAX_AUDIT_EVENTS: usize = 10_000;
/// History entries kept per rollout; levels change a handful of times, so this only guards
/// against a runaway automation.
pub const MAX_ROLLOUT_HISTORY: usize = 1_000;
/// Largest encoded [`Request`] that may become raft entry data: entries travel inside
/// append messages and every replica holds them in memory until compaction.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Highest rollout level; level 0 is "nobody", 4 is "everybody".
pub const MAX_ROLLOUT_LEVEL: u8 = 4;

/// [`Outcome::Rejected`] code: the command names something that does not exist.
pub const REJECT_NOT_FOUND: &str = "not_found";
/// [`Outcome::Rejected`] code: the command clashes with the current state.
pub const REJECT_CONFLICT: &str = "conflict";
/// [`Outcome::Rejected`] code: the command is malformed (bad name, level out of range, ...).
pub const REJECT_INVALID: &str = "invalid";

/// Longest request id or actor; they are stored for every remembered request.
const MAX_ENVELOPE_TEXT: usize = 128;
/// Longest region, rollout id or version.
const MAX_LABEL: usize = 64;
/// Longest advertised address (`host:port`).
const MAX_ADDR: usize = 256;
/// First byte of every snapshot, bumped when the encoding of [`State`] changes.
const SNAPSHOT_VERSION: u8 = 2;

/// Why a request or snapshot could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An encoded request is bigger than [`MAX_REQUEST_BYTES`].
    #[error("request of {len} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge { len: usize, limit: usize },
    /// The bytes are not a JSON-encoded [`Request`].
    #[error("malformed request: {0}")]
    MalformedRequest(#[source] serde_json::Error),
    /// A request could not be encoded (should not happen for well-formed values).
    #[error("request encoding failed: {0}")]
    EncodeRequest(#[source] serde_json::Error),
    /// The state could not be encoded as a snapshot.
    #[error("snapshot encoding failed: {0}")]
    EncodeSnapshot(#[from] bincode::error::EncodeError),
    /// The bytes are not a snapshot of this version.
    #[error("malformed snapshot: {0}")]
    MalformedSnapshot(String),
    /// The snapshot was written by a build with another snapshot format.
    #[error("unsupported snapshot version {0}")]
    UnsupportedSnapshotVersion(u8),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Registered edges by id.
    pub edges: BTreeMap<String, Edge>,
    /// Streams by name.
    pub streams: BTreeMap<String, Stream>,
    /// Rollouts by id.
    pub rollouts: BTreeMap<String, Rollout>,
    /// The newest [`MAX_AUDIT_EVENTS`] successful changes, oldest first.
    pub audit: VecDeque<AuditEvent>,
    /// Outcome of each remembered request id, with the raft index it was applied at.
    pub applied_requests: BTreeMap<String, (u64, Outcome)>,
    /// Raft index of the last applied entry.
    pub applied_index: u64,
    /// Id the next audit event gets; ids start at 1 and never repeat.
    pub next_audit_id: u64,
    /// `applied_requests` ordered by index, so eviction does not scan. Derived data: rebuilt
    /// whenever it disagrees with `applied_requests` (after a snapshot or deserialization).
    #[serde(skip)]
    request_order: BTreeSet<(u64, String)>,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        // `request_order` is derived from `applied_requests`, so it is left out.
        self.edges == other.edges
            && self.streams == other.streams
            && self.rollouts == other.rollouts
            && self.audit == other.audit
            && self.applied_requests == other.applied_requests
            && self.applied_index == other.applied_index
            && self.next_audit_id == other.next_audit_id
    }
}

/// A change to the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Registers an edge, or updates its fields if the id is known.
    RegisterEdge {
        id: String,
        region: String,
        quic_addr: String,
        http_addr: String,
        version: String,
        capacity: u32,
    },
    /// Forgets an edge and takes it out of every relay list. Refused while it is an origin.
    RemoveEdge {
        id: String,
    },
    /// The leader's failover reaction to a dead edge: the streams it originated are
    /// marked "origin lost", and it leaves every relay list. The edge stays registered.
    EdgeFailed {
        id: String,
    },
    /// Asks an edge to drain: it stops taking sessions, moves its viewers, and exits.
    DrainEdge {
        id: String,
    },
    /// Creates or replaces a stream's placement.
    PutStream {
        name: String,
        origin: String,
        #[serde(default)]
        relays: BTreeMap<String, Vec<String>>,
    },
    DeleteStream {
        name: String,
    },
    /// The leader's relay placement: which edges in which regions pull `name` from its
    /// origin for the other edges of their region. Rejected (conflict) when the stream
    /// has moved to another origin or lost it since the leader looked.
    PlaceRelays {
        name: String,
        origin: String,
        relays: BTreeMap<String, Vec<String>>,
    },
    /// Creates a rollout at level 0, active.
    CreateRollout {
        id: String,
        spec: RolloutSpec,
    },
    SetRolloutLevel {
        id: String,
        level: u8,
    },
    /// Sets the sampled share (basis points) of level 3 on a live rollout. The hash
    /// buckets are sticky: raising it only adds sessions, lowering only removes them.
    SetRolloutShare {
        id: String,
        share_bp: u32,
    },
    PauseRollout {
        id: String,
    },
    /// Continues a paused or tripped rollout.
    ResumeRollout {
        id: String,
    },
    AbortRollout {
        id: String,
    },
    /// A guard tripped an active rollout: it falls back per its `on_trip` (the previous
    /// level, or 0) and is held (`tripped`) until an operator resumes it.
    TripRollout {
        id: String,
        /// Which guard, and where: e.g. `cpu on edge e1`.
        guard: String,
    },
    /// Changes nothing; a new leader may propose it to commit an entry of its term.
    Noop,
}

impl Command {
    /// Dotted name used in audit events and metrics.
    pub fn action(&self) -> &'static str {
        match self {
            Command::RegisterEdge { .. } => "edge.register",
            Command::RemoveEdge { .. } => "edge.remove",
            Command::EdgeFailed { .. } => "edge.failed",
            Command::DrainEdge { .. } => "edge.drain",
            Command::PutStream { .. } => "stream.put",
            Command::DeleteStream { .. } => "stream.delete",
            Command::PlaceRelays { .. } => "stream.place_relays",
            Command::CreateRollout { .. } => "rollout.create",
            Command::SetRolloutLevel { .. } => "rollout.set_level",
            Command::SetRolloutShare { .. } => "rollout.set_share",
            Command::PauseRollout { .. } => "rollout.pause",
            Command::ResumeRollout { .. } => "rollout.resume",
            Command::AbortRollout { .. } => "rollout.abort",
            Command::TripRollout { .. } => "rollout.trip",
            Command::Noop => "noop",
        }
    }
}

/// A command with its envelope: who, when, and the id that makes retries safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; a second request with the same id gets the first one's outcome
    /// and changes nothing. Empty means "no exactly-once".
    pub request_id: String,
    pub actor: String,
    /// Wall-clock time stamped by the proposer; the only clock the state machine sees.
    pub at_ms: u64,
    pub command: Command,
}

/// What applying a request did. Serialized as `{"result": "ok", "detail": ..}` or
/// `{"result": "rejected", "code": .., "message": ..}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok {
        detail: Value,
    },
    /// `code` is one of [`REJECT_NOT_FOUND`], [`REJECT_CONFLICT`], [`REJECT_INVALID`].
    Rejected {
        code: String,
        message: String,
    },
}

impl Outcome {
    /// Whether the command was carried out.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
}

/// Applies `request`, committed at raft `index`, to `state`.
pub fn apply(state: &mut State, index: u64, request: &Request) -> Outcome {
    state.applied_index = index;
    if !request.request_id.is_empty() {
        if let Some((_, outcome)) = state.applied_requests.get(&request.request_id) {
            return outcome.clone();
        }
    }
    let outcome = match check_envelope(request).and_then(|()| execute(state, request)) {
        Ok(None) => Outcome::Ok { detail: json!({}) },
        Ok(Some(change)) => {
            state.record_audit(index, request, change.target, change.summary);
            Outcome::Ok { detail: change.detail }
        }
        Err(rejection) => Outcome::Rejected { code: rejection.code.to_owned(), message: rejection.message },
    };
    state.remember(index, &request.request_id, &outcome);
    outcome
}

/// Encodes a request as raft entry data (JSON, so entries stay readable in a debugger).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, StateError> {
    let bytes = serde_json::to_vec(request).map_err(StateError::EncodeRequest)?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(StateError::RequestTooLarge { len: bytes.len(), limit: MAX_REQUEST_BYTES });
    }
    Ok(bytes)
}

/// Decodes raft entry data written by [`encode_request`].
pub fn decode_request(bytes: &[u8]) -> Result<Request, StateError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(StateError::RequestTooLarge { len: bytes.len(), limit: MAX_REQUEST_BYTES });
    }
    serde_json::from_slice(bytes).map_err(StateError::MalformedRequest)
}

impl State {
    /// Encodes the whole state for a raft snapshot: a version byte, then bincode (standard
    /// config). JSON values inside travel as JSON text, as bincode cannot carry them natively.
    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, StateError> {
        let mut bytes = vec![SNAPSHOT_VERSION];
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())?;
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Decodes bytes written by [`State::to_snapshot_bytes`].
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<State, StateError> {
        let (version, body) =
            bytes.split_first().ok_or_else(|| StateError::MalformedSnapshot("empty snapshot".to_owned()))?;
        if *version != SNAPSHOT_VERSION {
            return Err(StateError::UnsupportedSnapshotVersion(*version));
        }
        let (mut state, used): (State, usize) =
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map_err(|e| StateError::MalformedSnapshot(e.to_string()))?;
        if used != body.len() {
            return Err(StateError::MalformedSnapshot(format!("{} trailing bytes", body.len() - used)));
        }
        state.rebuild_request_order();
        Ok(state)
    }

    fn record_audit(&mut self, index: u64, request: &Request, target: String, detail: String) {
        let id = self.next_audit_id.max(1);
        self.next_audit_id = id.saturating_add(1);
        self.audit.push_back(AuditEvent {
            id,
            index,
            at_ms: request.at_ms,
            actor: request.actor.clone(),
            request_id: request.request_id.clone(),
            action: request.command.action().to_owned(),
            target,
            detail,
        });
        while self.audit.len() > MAX_AUDIT_EVENTS {
            self.audit.pop_front();
        }
    }

    fn remember(&mut self, index: u64, request_id: &str, outcome: &Outcome) {
        if request_id.is_empty() {
            return;
        }
        if self.request_order.len() != self.applied_requests.len() {
            self.rebuild_request_order();
        }
        self.applied_requests.insert(request_id.to_owned(), (index, outcome.clone()));
        self.request_order.insert((index, request_id.to_owned()));
        while self.applied_requests.len() > MAX_APPLIED_REQUESTS {
            let Some((_, oldest)) = self.request_order.pop_first() else { break };
            self.applied_requests.remove(&oldest);
        }
    }

    fn rebuild_request_order(&mut self) {
        self.request_order =
            self.applied_requests.iter().map(|(id, (index, _))| (*index, id.clone())).collect();
    }
}

/// A successful change: what the audit log and the client are told.
struct Change {
    target: String,
    summary: String,
    detail: Value,
}

struct Rejection {
    code: &'static str,
    message: String,
}

fn rejected(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { code, message: message.into() }
}

/// `Ok(None)`: accepted, nothing changed.
type Step = Result<Option<Change>, Rejection>;

fn check_envelope(request: &Request) -> Result<(), Rejection> {
    check_len("request id", &request.request_id, 0, MAX_ENVELOPE_TEXT)?;
    check_len("actor", &request.actor, 0, MAX_ENVELOPE_TEXT)
}

fn execute(state: &mut State, request: &Request) -> Step {
    let now = request.at_ms;
    let actor = &request.actor;
    match &request.command {
        Command::RegisterEdge { id, region, quic_addr, http_addr, version, capacity } => {
            let fields = (region.as_str(), quic_addr.as_str(), http_addr.as_str(), version.as_str());
            register_edge(state, now, id, fields, *capacity)
        }
        Command::RemoveEdge { id } => remove_edge(state, id),
        Command::EdgeFailed { id } => edge_failed(state, now, id),
        Command::DrainEdge { id } => drain_edge(state, now, id),
        Command::PutStream { name, origin, relays } => put_stream(state, now, name, origin, relays),
        Command::DeleteStream { name } => delete_stream(state, name),
        Command::PlaceRelays { name, origin, relays } => place_relays(state, now, name, origin, relays),
        Command::CreateRollout { id, spec } => create_rollout(state, now, actor, id, spec),
        Command::SetRolloutLevel { id, level } => set_rollout_level(state, now, actor, id, *level),
        Command::SetRolloutShare { id, share_bp } => set_rollout_share(state, now, actor, id, *share_bp),
        Command::PauseRollout { id } => move_rollout(state, now, actor, id, RolloutState::Paused),
        Command::ResumeRollout { id } => move_rollout(state, now, actor, id, RolloutState::Active),
        Command::AbortRollout { id } => move_rollout(state, now, actor, id, RolloutState::Aborted),
        Command::TripRollout { id, guard } => trip_rollout(state, now, actor, id, guard),
        Command::Noop => Ok(None),
    }
}

fn register_edge(
    state: &mut State,
    now: u64,
    id: &str,
    fields: (&str, &str, &str, &str),
    capacity: u32,
) -> Step {
    let (region, quic_addr, http_addr, version) = fields;
    check_node_id(id)?;
    check_label("region", region)?;
    check_addr("quic address", quic_addr)?;
    check_addr("http address", http_addr)?;
    check_len("version", version, 1, MAX_LABEL)?;
    let existing = state.edges.get(id);
    let created = existing.is_none();
    let registered_at_ms = existing.map_or(now, |e| e.registered_at_ms);
    let edge = Edge {
        id: id.to_owned(),
        region: region.to_owned(),
        quic_addr: quic_addr.to_owned(),
        http_addr: http_addr.to_owned(),
        version: version.to_owned(),
        capacity,
        draining: false,
        registered_at_ms,
        updated_at_ms: now,
    };
    state.edges.insert(id.to_owned(), edge);
    let verb = if created { "registered" } else { "updated" };
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!("{verb} in {region} at {quic_addr}, version {version}, capacity {capacity}"),
        detail: json!({ "edge": id, "created": created }),
    }))
}

/// Streams relayed by `id` lose it; returns their names.
fn drop_from_relays(state: &mut State, id: &str) -> Vec<String> {
    let mut relayed = Vec::new();
    for stream in state.streams.values_mut() {
        let before: usize = stream.relays.values().map(Vec::len).sum();
        for edges in stream.relays.values_mut() {
            edges.retain(|e| e != id);
        }
        stream.relays.retain(|_, edges| !edges.is_empty());
        if stream.relays.values().map(Vec::len).sum::<usize>() != before {
            relayed.push(stream.name.clone());
        }
    }
    relayed
}

fn drain_edge(state: &mut State, now: u64, id: &str) -> Step {
    let edge =
        state.edges.get_mut(id).ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")))?;
    edge.draining = true;
    edge.updated_at_ms = now;
    Ok(Some(Change {
        target: id.to_owned(),
        summary: "asked to drain".into(),
        detail: json!({ "edge": id, "draining": true }),
    }))
}

fn edge_failed(state: &mut State, now: u64, id: &str) -> Step {
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    let mut lost = Vec::new();
    for stream in state.streams.values_mut().filter(|s| s.origin == id && !s.origin_lost) {
        stream.origin_lost = true;
        stream.updated_at_ms = now;
        lost.push(stream.name.clone());
    }
    let relayed = drop_from_relays(state, id);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!(
            "failed: origin lost for {} stream(s), dropped from {} relay list(s)",
            lost.len(),
            relayed.len()
        ),
        detail: json!({ "edge": id, "origin_lost": lost, "dropped_from_relays": relayed }),
    }))
}

fn remove_edge(state: &mut State, id: &str) -> Step {
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    let origin_of: Vec<&str> =
        state.streams.values().filter(|s| s.origin == id).map(|s| s.name.as_str()).collect();
    if !origin_of.is_empty() {
        // Name a few, not all: the message is stored for exactly-once replies.
        let some: Vec<&str> = origin_of.iter().take(3).copied().collect();
        let count = origin_of.len();
        let message = format!("edge {id:?} is the origin of {count} stream(s), e.g. {}", some.join(", "));
        return Err(rejected(REJECT_CONFLICT, message));
    }
    state.edges.remove(id);
    let relayed = drop_from_relays(state, id);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!("removed; dropped from the relays of {} stream(s)", relayed.len()),
        detail: json!({ "edge": id, "dropped_from_relays": relayed }),
    }))
}

fn put_stream(
    state: &mut State,
    now: u64,
    name: &str,
    origin: &str,
    relays: &BTreeMap<String, Vec<String>>,
) -> Step {
    StreamName::new(name).map_err(|e| rejected(REJECT_INVALID, e.to_string()))?;
    check_known_edge(state, origin)?;
    let placed = checked_relays(state, relays)?;
    let created_at_ms = state.streams.get(name).map_or(now, |s| s.created_at_ms);
    let created = !state.streams.contains_key(name);
    let relay_count: usize = placed.values().map(Vec::len).sum();
    let stream = Stream {
        name: name.to_owned(),
        origin: origin.to_owned(),
        relays: placed,
        origin_lost: false,
        created_at_ms,
        updated_at_ms: now,
    };
    state.streams.insert(name.to_owned(), stream);
    Ok(Some(Change {
        target: name.to_owned(),
        summary: format!("origin {origin}, {relay_count} relay(s)"),
        detail: json!({ "stream": name, "created": created }),
    }))
}

/// Relay lists with known edges, valid regions, no edge twice in a region; empty
/// regions dropped.
fn checked_relays(
    state: &State,
    relays: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, Rejection> {
    let mut placed = BTreeMap::new();
    for (region, edges) in relays {
        check_label("region", region)?;
        let mut seen = BTreeSet::new();
        for edge in edges {
            check_known_edge(state, edge)?;
            if !seen.insert(edge.as_str()) {
                return Err(rejected(
                    REJECT_INVALID,
                    format!("edge {edge:?} listed twice in region {region:?}"),
                ));
            }
        }
        if !edges.is_empty() {
            placed.insert(region.clone(), edges.clone());
        }
    }
    Ok(placed)
}

fn place_relays(
    state: &mut State,
    now: u64,
    name: &str,
    origin: &str,
    relays: &BTreeMap<String, Vec<String>>,
) -> Step {
    let placed = checked_relays(state, relays)?;
    let stream = state
        .streams
        .get_mut(name)
        .ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no stream {name:?}")))?;
    if stream.origin != origin || stream.origin_lost {
        return Err(rejected(
            REJECT_CONFLICT,
            format!("stream {name:?} is no longer originated by {origin:?}"),
        ));
    }
    if stream.relays == placed {
        return Ok(None);
    }
    let summary = format!("relays {}", describe_relays(&placed));
    stream.relays = placed;
    stream.updated_at_ms = now;
    Ok(Some(Change { target: name.to_owned(), summary, detail: json!({ "stream": name }) }))
}

fn describe_relays(relays: &BTreeMap<String, Vec<String>>) -> String {
    if relays.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> =
        relays.iter().map(|(region, edges)| format!("{region}: {}", edges.join(","))).collect();
    parts.join("; ")
}

fn delete_stream(state: &mut State, name: &str) -> Step {
    if state.streams.remove(name).is_none() {
        return Err(rejected(REJECT_NOT_FOUND, format!("no stream {name:?}")));
    }
    Ok(Some(Change {
        target: name.to_owned(),
        summary: "deleted".to_owned(),
        detail: json!({ "stream": name }),
    }))
}

fn create_rollout(state: &mut State, now: u64, actor: &str, id: &str, spec: &RolloutSpec) -> Step {
    check_label("rollout id", id)?;
    if state.rollouts.contains_key(id) {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} already exists")));
    }
    // Only one rollout that is not aborted may change a given setting.
    let settings = spec.settings();
    for other in state.rollouts.values().filter(|r| r.state != RolloutState::Aborted) {
        let theirs = other.spec.settings();
        if let Some(shared) = settings.iter().find(|s| theirs.contains(s)) {
            return Err(rejected(
                REJECT_INVALID,
                format!("setting {shared} is already changed by rollout {:?}", other.id),
            ));
        }
    }
    let event = RolloutEvent { at_ms: now, actor: actor.to_owned(), what: "created".to_owned(), level: 0 };
    let rollout = Rollout {
        id: id.to_owned(),
        spec: spec.clone(),
        level: 0,
        state: RolloutState::Active,
        history: vec![event],
        created_at_ms: now,
    };
    state.rollouts.insert(id.to_owned(), rollout);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: "created at level 0".to_owned(),
        detail: json!({ "rollout": id, "level": 0, "state": RolloutState::Active }),
    }))
}

fn set_rollout_level(state: &mut State, now: u64, actor: &str, id: &str, level: u8) -> Step {
    if level > MAX_ROLLOUT_LEVEL {
        return Err(rejected(REJECT_INVALID, format!("level {level} is outside 0..={MAX_ROLLOUT_LEVEL}")));
    }
    let rollout = find_rollout(state, id)?;
    if rollout.state == RolloutState::Aborted {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is aborted")));
    }
    let what = format!("level {} -> {level}", rollout.level);
    rollout.level = level;
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": level, "state": rollout.state }),
    }))
}

fn set_rollout_share(state: &mut State, now: u64, actor: &str, id: &str, share_bp: u32) -> Step {
    let rollout = find_rollout(state, id)?;
    if rollout.state == RolloutState::Aborted {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is aborted")));
    }
    // Change the share, then check the result like a new spec.
    let mut spec = rollout.spec.clone();
    let before = spec.gates.share_bp;
    spec.gates.share_bp = share_bp;
    if let Err(reason) = spec.validate() {
        return Err(rejected(REJECT_INVALID, reason));
    }
    rollout.spec = spec;
    let level = rollout.level;
    let what = format!("share {before} -> {share_bp} bp");
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": level, "share_bp": share_bp, "state": rollout.state }),
    }))
}

/// Pause (from active), resume (from paused or tripped) or abort (from anything but aborted).
fn move_rollout(state: &mut State, now: u64, actor: &str, id: &str, to: RolloutState) -> Step {
    let rollout = find_rollout(state, id)?;
    let from = rollout.state;
    let (allowed, what) = match to {
        RolloutState::Paused => (from == RolloutState::Active, "paused"),
        RolloutState::Active => (matches!(from, RolloutState::Paused | RolloutState::Tripped), "resumed"),
        RolloutState::Aborted => (from != RolloutState::Aborted, "aborted"),
        RolloutState::Tripped => (from == RolloutState::Active, "tripped"),
    };
    if !allowed {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is {from:?}, cannot be {what}")));
    }
    rollout.state = to;
    let level = rollout.level;
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.to_owned(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what.to_owned(),
        detail: json!({ "rollout": id, "level": level, "state": to }),
    }))
}

fn trip_rollout(state: &mut State, now: u64, actor: &str, id: &str, guard: &str) -> Step {
    let rollout = find_rollout(state, id)?;
    match rollout.state {
        // Several guards (or edges) may report one trip: the first one counts.
        RolloutState::Tripped => return Ok(None),
        RolloutState::Active => {}
        other => {
            return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is {other:?}, not active")));
        }
    }
    let on_trip = rollout.spec.on_trip;
    let from = rollout.level;
    let to = match on_trip {
        ferry_proto::rollout::OnTrip::Off => 0,
        // The level before the current one: the newest earlier level in the history.
        ferry_proto::rollout::OnTrip::Previous => {
            rollout.history.iter().rev().map(|e| e.level).find(|l| *l != from).unwrap_or(0).min(from)
        }
    };
    rollout.level = to;
    rollout.state = RolloutState::Tripped;
    let what = format!("tripped by {guard}: level {from} -> {to}");
    push_history(
        rollout,
        RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level: to },
    );
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": to, "state": RolloutState::Tripped, "guard": guard }),
    }))
}

fn find_rollout<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Rollout, Rejection> {
    state.rollouts.get_mut(id).ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no rollout {id:?}")))
}

fn push_history(rollout: &mut Rollout, event: RolloutEvent) {
    rollout.history.push(event);
    let excess = rollout.history.len().saturating_sub(MAX_ROLLOUT_HISTORY);
    rollout.history.drain(..excess);
}

fn check_known_edge(state: &State, id: &str) -> Result<(), Rejection> {
    check_node_id(id)?;
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    Ok(())
}

fn check_node_id(id: &str) -> Result<(), Rejection> {
    NodeId::new(id).map(drop).map_err(|e| rejected(REJECT_INVALID, e.to_string()))
}

/// 1..=[`MAX_LABEL`] bytes of `[A-Za-z0-9._-]`.
fn check_label(kind: &str, value: &str) -> Result<(), Rejection> {
    check_len(kind, value, 1, MAX_LABEL)?;
    match value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(c) => Err(rejected(REJECT_INVALID, format!("{kind} {value:?}: character {c:?} not allowed"))),
        None => Ok(()),
    }
}

fn check_addr(kind: &str, value: &str) -> Result<(), Rejection> {
    check_len(kind, value, 1, MAX_ADDR)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(rejected(REJECT_INVALID, format!("{kind} {value:?} contains whitespace")));
    }
    Ok(())
}

fn check_len(kind: &str, value: &str, min: usize, max: usize) -> Result<(), Rejection> {
    if value.len() < min || value.len() > max {
        return Err(rejected(
            REJECT_INVALID,
            format!("{kind} must be {min}..={max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

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
