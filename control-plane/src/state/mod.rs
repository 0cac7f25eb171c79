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

mod checks;
mod codec;
mod edges;
mod rollouts;
mod streams;
#[cfg(test)]
mod tests;
mod tokens;

use checks::check_len;
use edges::{drain_edge, edge_failed, register_edge, remove_edge};
use rollouts::{create_rollout, move_rollout, set_rollout_level, set_rollout_share, trip_rollout};
use streams::{claim_stream, delete_stream, place_relays, put_stream, release_stream};
use tokens::{create_token, revoke_token};
pub use tokens::{OperatorToken, TokenRole, BOOTSTRAP_ACCESSOR, MAX_TOKENS};

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
/// First byte of every snapshot, bumped when the encoding of [`State`] changes; earlier
/// versions are still read (see `codec::StateV2`). Version 4 is version 3 followed by the
/// cluster's command set; a state at command set 1 is still written as version 3, which
/// the previous release reads (a follower not yet upgraded may be sent one).
const SNAPSHOT_VERSION: u8 = 4;
/// The snapshot version of a state at command set 1.
const SNAPSHOT_V3: u8 = 3;

/// The newest command set this build applies. Command set 1 is every [`Command`] of
/// release 0.1.0; set 2 adds [`Command::RaiseCommandSet`]. A release that adds or changes
/// a replicated command bumps it. The cluster uses a set only once every voter announces
/// it (see [`crate::versions`]); [`State::command_set`] is the one in use.
pub const COMMAND_SET: u16 = 2;
/// First byte of a versioned log entry: `0x00 | format | command set (u16, big-endian)
/// | JSON request`. While the cluster is at command set 1, entries of command set 1 are
/// written as bare JSON (first byte `{`), which every earlier release reads; versioned
/// entries are written once every voter has announced it reads them.
const ENTRY_VERSIONED: u8 = 0;
/// The versioned entry layout this build reads.
const ENTRY_FORMAT: u8 = 2;

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
    /// A log entry in a layout this build does not know.
    #[error("log entry format {0} is unknown to this build")]
    UnknownEntryFormat(u8),
    /// A log entry needs a newer command set than this build applies.
    #[error("the entry needs command set {needs}; this build applies command sets up to {supports}")]
    NewerCommandSet { needs: u16, supports: u16 },
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
    /// Named operator tokens by accessor (hashes only).
    pub tokens: BTreeMap<String, OperatorToken>,
    /// The command set the cluster has moved to ([`Command::RaiseCommandSet`]); 0 means
    /// 1 (a state written before sets were recorded). Outside the bincode of `State`:
    /// snapshot version 4 appends it (see [`State::to_snapshot_bytes`]).
    #[serde(skip)]
    command_set_in_use: u16,
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
            && self.tokens == other.tokens
            && self.command_set() == other.command_set()
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
    /// An edge claims a stream's origin for the publisher that just started on it:
    /// granted when the stream has no origin, lost its origin, already names this
    /// edge, or the publisher's token grants a `takeover`; refused (conflict) while
    /// another edge holds it. One write per publisher start, never a loop.
    ClaimStream {
        name: String,
        origin: String,
        #[serde(default)]
        takeover: bool,
    },
    /// The edge's publisher left: the stream is forgotten if `origin` still holds it
    /// (so the next publisher, anywhere, claims it without a grant). With `expired`,
    /// the leader's collection of a record nobody uses (see [`crate::expiry`]): it
    /// applies only while the record is exactly as the leader saw it.
    ReleaseStream {
        name: String,
        origin: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expired: Option<Expiration>,
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
    /// Adds a named operator token (only the SHA-256 of its secret). Refused (conflict)
    /// when the accessor exists.
    CreateToken {
        accessor: String,
        role: TokenRole,
        secret_sha256: String,
    },
    /// Removes a token: every voter refuses it once this entry is applied there.
    RevokeToken {
        accessor: String,
    },
    /// Changes nothing; a new leader may propose it to commit an entry of its term.
    Noop,
    /// The leader's record that every member announced command set `to`: from this entry
    /// on, the cluster writes versioned entries and may use the commands of `to`
    /// (command set 2). Never lowers the set; a voter that cannot apply `to` stops at
    /// this entry instead of skipping it.
    RaiseCommandSet {
        to: u16,
    },
}

/// The record a leader's expiry removes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiration {
    /// The record's `updated_at_ms` when the leader decided.
    pub updated_at_ms: u64,
    /// Whether its origin was lost then.
    pub origin_lost: bool,
    /// For the audit log.
    pub reason: String,
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
            Command::ClaimStream { .. } => "stream.claim",
            Command::ReleaseStream { expired: None, .. } => "stream.release",
            Command::ReleaseStream { expired: Some(_), .. } => "stream.expire",
            Command::PlaceRelays { .. } => "stream.place_relays",
            Command::CreateRollout { .. } => "rollout.create",
            Command::SetRolloutLevel { .. } => "rollout.set_level",
            Command::SetRolloutShare { .. } => "rollout.set_share",
            Command::PauseRollout { .. } => "rollout.pause",
            Command::ResumeRollout { .. } => "rollout.resume",
            Command::AbortRollout { .. } => "rollout.abort",
            Command::TripRollout { .. } => "rollout.trip",
            Command::CreateToken { .. } => "token.create",
            Command::RevokeToken { .. } => "token.revoke",
            Command::Noop => "noop",
            Command::RaiseCommandSet { .. } => "cluster.command_set",
        }
    }

    /// The command set a voter must apply to apply this command.
    pub fn needs(&self) -> u16 {
        match self {
            Command::RaiseCommandSet { to } => (*to).max(2),
            _ => 1,
        }
    }
}

/// A command with its envelope: who, when, and the id that makes retries safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; a second request with the same id gets the first one's outcome
    /// and changes nothing. Empty means "no exactly-once".
    pub request_id: String,
    /// Who asked: `token:NAME`, `edge:ID`, `bootstrap`, or the cluster itself
    /// (`placement`, `failover`, ...).
    pub actor: String,
    /// The actor's role (`admin`, `operator`, `viewer`, `edge`; empty for the cluster).
    #[serde(default)]
    pub role: String,
    /// Where the request came from (the client's address; empty for the cluster).
    #[serde(default)]
    pub source: String,
    /// Wall-clock time stamped by the proposer; the only clock the state machine sees.
    pub at_ms: u64,
    pub command: Command,
}

impl Request {
    /// A request the cluster makes itself (`actor` names the loop that makes it).
    pub fn internal(request_id: String, actor: &str, at_ms: u64, command: Command) -> Request {
        Request {
            request_id,
            actor: actor.to_owned(),
            role: String::new(),
            source: String::new(),
            at_ms,
            command,
        }
    }
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

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok { detail } => write!(f, "ok {detail}"),
            Outcome::Rejected { code, message } => write!(f, "rejected ({code}): {message}"),
        }
    }
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

/// Encodes a request as raft entry data for a cluster at command set 1: bare JSON (so
/// entries stay readable in a debugger), which every release reads, unless the command
/// needs a newer set. See [`encode_entry`].
pub fn encode_request(request: &Request) -> Result<Vec<u8>, StateError> {
    encode_entry(request, 1)
}

/// Encodes a request as raft entry data for a cluster at command set `in_use`: a
/// versioned entry naming the command set it needs once the cluster is past set 1 (or
/// when the command itself needs more), bare JSON otherwise.
pub fn encode_entry(request: &Request, in_use: u16) -> Result<Vec<u8>, StateError> {
    let needs = request.command.needs();
    let mut bytes = if in_use > 1 || needs > 1 {
        let mut head = vec![ENTRY_VERSIONED, ENTRY_FORMAT];
        head.extend_from_slice(&needs.to_be_bytes());
        head
    } else {
        Vec::new()
    };
    serde_json::to_writer(&mut bytes, request).map_err(StateError::EncodeRequest)?;
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
    let json = match bytes {
        [ENTRY_VERSIONED, format, rest @ ..] => {
            if *format != ENTRY_FORMAT {
                return Err(StateError::UnknownEntryFormat(*format));
            }
            let [high, low, json @ ..] = rest else {
                return Err(StateError::UnknownEntryFormat(*format));
            };
            let needs = u16::from_be_bytes([*high, *low]);
            if needs > COMMAND_SET {
                return Err(StateError::NewerCommandSet { needs, supports: COMMAND_SET });
            }
            json
        }
        legacy => legacy,
    };
    serde_json::from_slice(json).map_err(StateError::MalformedRequest)
}

impl State {
    /// The command set the cluster uses: what its entries may need.
    pub fn command_set(&self) -> u16 {
        self.command_set_in_use.max(1)
    }

    /// Encodes the whole state for a raft snapshot: a version byte, then bincode (standard
    /// config); version 4 appends the command set (a u16, bincode). At command set 1 the
    /// snapshot is version 3, which the previous release reads. JSON values inside travel
    /// as JSON text, as bincode cannot carry them natively.
    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, StateError> {
        let config = bincode::config::standard();
        let mut bytes = if self.command_set() > 1 { vec![SNAPSHOT_VERSION] } else { vec![SNAPSHOT_V3] };
        bytes.extend_from_slice(&bincode::serde::encode_to_vec(self, config)?);
        if self.command_set() > 1 {
            bytes.extend_from_slice(&bincode::serde::encode_to_vec(self.command_set(), config)?);
        }
        Ok(bytes)
    }

    /// Decodes bytes written by [`State::to_snapshot_bytes`].
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<State, StateError> {
        let (version, body) =
            bytes.split_first().ok_or_else(|| StateError::MalformedSnapshot("empty snapshot".to_owned()))?;
        let mut state = match *version {
            SNAPSHOT_VERSION => {
                let (mut state, command_set) = decode_exact::<(State, u16)>(body)?;
                if command_set > COMMAND_SET {
                    return Err(StateError::NewerCommandSet { needs: command_set, supports: COMMAND_SET });
                }
                state.command_set_in_use = command_set;
                state
            }
            SNAPSHOT_V3 => decode_exact::<State>(body)?,
            2 => decode_exact::<codec::StateV2>(body)?.upgrade(),
            other => return Err(StateError::UnsupportedSnapshotVersion(other)),
        };
        state.rebuild_request_order();
        Ok(state)
    }

    /// The bytes the previous release wrote for this state (tests of the upgrade path).
    #[cfg(test)]
    pub(crate) fn to_v2_snapshot_bytes(&self) -> Vec<u8> {
        codec::StateV2::downgrade(self)
    }

    fn record_audit(&mut self, index: u64, request: &Request, target: String, detail: String) {
        let id = self.next_audit_id.max(1);
        self.next_audit_id = id.saturating_add(1);
        self.audit.push_back(AuditEvent {
            id,
            index,
            at_ms: request.at_ms,
            actor: request.actor.clone(),
            role: request.role.clone(),
            source: request.source.clone(),
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

/// Decodes one bincode value that must fill `body` exactly.
///
/// bincode allocates the length a string claims before reading it, unless the bytes
/// claimed so far pass the config's limit. No value claims more than 16 bytes for each
/// byte it reads (a one-byte varint of a u128), so a limit of 16 times the body, in
/// tiers, refuses only lengths the body cannot hold.
fn decode_exact<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, StateError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    let len = body.len();
    let decoded = if len <= 1 << 16 {
        decode_from_slice(body, standard().with_limit::<{ 16 << 16 }>())
    } else if len <= 1 << 24 {
        decode_from_slice(body, standard().with_limit::<{ 16 << 24 }>())
    } else if len <= 1 << 27 {
        decode_from_slice(body, standard().with_limit::<{ 16 << 27 }>())
    } else {
        decode_from_slice(body, standard())
    };
    let (value, used): (T, usize) = decoded.map_err(|e| StateError::MalformedSnapshot(e.to_string()))?;
    if used != body.len() {
        return Err(StateError::MalformedSnapshot(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
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
    check_len("actor", &request.actor, 0, MAX_ENVELOPE_TEXT)?;
    check_len("role", &request.role, 0, MAX_LABEL)?;
    check_len("source", &request.source, 0, MAX_ADDR)
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
        Command::ClaimStream { name, origin, takeover } => claim_stream(state, now, name, origin, *takeover),
        Command::ReleaseStream { name, origin, expired } => {
            release_stream(state, name, origin, expired.as_ref())
        }
        Command::DeleteStream { name } => delete_stream(state, name),
        Command::PlaceRelays { name, origin, relays } => place_relays(state, now, name, origin, relays),
        Command::CreateRollout { id, spec } => create_rollout(state, now, actor, id, spec),
        Command::SetRolloutLevel { id, level } => set_rollout_level(state, now, actor, id, *level),
        Command::SetRolloutShare { id, share_bp } => set_rollout_share(state, now, actor, id, *share_bp),
        Command::PauseRollout { id } => move_rollout(state, now, actor, id, RolloutState::Paused),
        Command::ResumeRollout { id } => move_rollout(state, now, actor, id, RolloutState::Active),
        Command::AbortRollout { id } => move_rollout(state, now, actor, id, RolloutState::Aborted),
        Command::TripRollout { id, guard } => trip_rollout(state, now, actor, id, guard),
        Command::CreateToken { accessor, role, secret_sha256 } => {
            create_token(state, now, actor, accessor, *role, secret_sha256)
        }
        Command::RevokeToken { accessor } => revoke_token(state, accessor),
        Command::Noop => Ok(None),
        Command::RaiseCommandSet { to } => raise_command_set(state, *to),
    }
}

/// [`Command::RaiseCommandSet`]: the set only goes up, and only to one this build applies
/// (a voter that could not apply it stopped at decoding the entry, which names it).
fn raise_command_set(state: &mut State, to: u16) -> Step {
    let from = state.command_set();
    if to <= from {
        return Err(rejected(REJECT_CONFLICT, format!("the cluster is already at command set {from}")));
    }
    if to > COMMAND_SET {
        return Err(rejected(
            REJECT_INVALID,
            format!("command set {to} is newer than this build's {COMMAND_SET}"),
        ));
    }
    state.command_set_in_use = to;
    Ok(Some(Change {
        target: "cluster".to_owned(),
        summary: format!("command set {from} -> {to}"),
        detail: json!({ "command_set": to }),
    }))
}
