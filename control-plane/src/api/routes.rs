//! Handlers. Each write becomes one [`Command`] in a [`Request`] with a request id
//! (the client's `Idempotency-Key` header, or a fresh one), so a retried write is
//! applied once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::versions::Announcement;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_proto::rollout::RolloutSpec;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, Caller};
use super::routing::gossip_fields;
use super::{Api, ApiError};
use crate::backup::{self, BackupHeader};
use crate::state::{Command, Outcome, Request, State as MachineState, TokenRole};

type Body<T> = Result<Json<T>, JsonRejection>;
type ApiResult = Result<Response, ApiError>;

fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(ApiError::from)
}

/// Longest accepted `Idempotency-Key`.
const MAX_REQUEST_ID: usize = 128;

impl Api {
    fn request_id(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        match headers.get("idempotency-key") {
            Some(v) => {
                let id = v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
                if id.is_empty() || id.len() > MAX_REQUEST_ID {
                    return Err(ApiError::bad_request(format!(
                        "Idempotency-Key must be 1..={MAX_REQUEST_ID} bytes"
                    )));
                }
                Ok(id.to_owned())
            }
            None => {
                let n = self.next_request.fetch_add(1, Ordering::Relaxed);
                let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                Ok(format!("auto-{}-{nanos:x}-{n}", self.node.status().id))
            }
        }
    }

    /// Proposes `command` and maps the outcome to a response.
    async fn write(&self, caller: &Caller, headers: &HeaderMap, command: Command) -> ApiResult {
        let (index, detail) = self.commit(caller, headers, command).await?;
        Ok(Json(json!({ "index": index, "result": detail })).into_response())
    }

    /// Proposes `command`: its raft index and detail, or the rejection as an error.
    async fn commit(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        command: Command,
    ) -> Result<(u64, Value), ApiError> {
        let request = Request {
            request_id: self.request_id(headers)?,
            actor: caller.principal.clone(),
            role: caller.role.to_owned(),
            source: caller.source.clone(),
            at_ms: ferry_net::time::unix_ms(),
            command,
        };
        let started = Instant::now();
        let (index, outcome) = self.node.write(request, self.timeout).await?;
        self.metrics.proposal_seconds.0.observe(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Ok { detail } => Ok((index, detail)),
            Outcome::Rejected { code, message } => {
                let (status, code) = match code.as_str() {
                    "not_found" => (StatusCode::NOT_FOUND, "not_found"),
                    "conflict" => (StatusCode::CONFLICT, "conflict"),
                    _ => (StatusCode::BAD_REQUEST, "invalid"),
                };
                Err(ApiError::new(status, code, message))
            }
        }
    }

    /// Answers `{ key: [...] }` from the state, after the read fence.
    async fn list(
        &self,
        p: Result<Query<ReadParams>, QueryRejection>,
        key: &str,
        f: impl FnOnce(&MachineState) -> serde_json::Result<Value>,
    ) -> ApiResult {
        self.read_fence(params(p)?.stale).await?;
        let items = self.node.read(f).unwrap_or(Value::Null);
        Ok(Json(json!({ key: items })).into_response())
    }

    /// Answers one object from the state, or 404 with `missing`.
    async fn one(
        &self,
        p: Result<Query<ReadParams>, QueryRejection>,
        f: impl FnOnce(&MachineState) -> Option<serde_json::Result<Value>>,
        missing: impl FnOnce() -> String,
    ) -> ApiResult {
        self.read_fence(params(p)?.stale).await?;
        match self.node.read(f) {
            Some(Ok(v)) => Ok(Json(v).into_response()),
            _ => Err(ApiError::not_found(missing())),
        }
    }

    /// Makes the next local read linearizable unless the caller asked for stale.
    async fn read_fence(&self, stale: bool) -> Result<(), ApiError> {
        if !stale {
            self.node.linearize(self.timeout).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    stale: bool,
}

fn params(p: Result<Query<ReadParams>, QueryRejection>) -> Result<ReadParams, ApiError> {
    p.map(|Query(p)| p).map_err(ApiError::from)
}

pub async fn cluster(State(api): State<Api>) -> ApiResult {
    let status = api.node.status();
    let announced = api.node.announcements();
    let members: Vec<Value> = api
        .node
        .members()
        .into_iter()
        .map(|(id, addr)| {
            let announced = if id == status.id {
                Some(Announcement::of_this_build())
            } else {
                announced.get(&id).cloned()
            };
            json!({
                "id": id, "raft_addr": addr, "voter": status.voters.contains(&id),
                // What it announced on its raft connection to this voter (null: nothing
                // yet, or a release before announcements: command set 1).
                "announced": announced,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": status.id, "leader": status.leader, "term": status.term, "role": status.role,
        "commit_index": status.commit, "applied_index": status.applied, "voters": status.voters,
        "snapshot_index": status.snapshot_index, "members": members,
        "cluster_uuid": api.node.cluster_uuid(),
        "command_set": api.node.read(|s| s.command_set()),
        "build_command_set": crate::state::COMMAND_SET,
    }))
    .into_response())
}

/// `GET /v1/snapshot` (admin, on the leader): a backup file of the state, consistent:
/// the leader confirms its leadership and applies everything committed before the call
/// (ReadIndex), then the state is copied at its applied index. A follower answers 421
/// `not_leader` naming the leader.
pub async fn snapshot(State(api): State<Api>) -> ApiResult {
    let status = api.node.status();
    if status.leader == 0 {
        return Err(crate::node::NodeError::NoLeader.into());
    }
    if status.leader != status.id {
        return Err(not_leader(&status));
    }
    api.node.linearize(api.timeout).await?;
    let image = api.node.image(api.timeout).await?;
    let header = BackupHeader {
        cluster_uuid: api.node.cluster_uuid().map(str::to_owned),
        index: image.index,
        term: image.term,
        voters: image.voters,
        state_format: 0,
        ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_ms: ferry_net::time::unix_ms(),
        body_len: 0,
    };
    let index = header.index;
    // Encoding the whole state takes a while: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let body = image.state.to_snapshot_bytes().map_err(|e| ferry_net::Chain(&e).to_string())?;
        backup::encode(header, &body).map_err(|e| ferry_net::Chain(&e).to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("encoding the backup: {e}"))
    })?;
    let disposition = format!("attachment; filename=\"ferry-{index}.backup\"");
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        encoded,
    )
        .into_response())
}

/// 421 `not_leader`: work only the leader does, asked of a follower.
fn not_leader(status: &crate::node::Status) -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not_leader",
        format!("voter {} is not the leader; voter {} is (ask it)", status.id, status.leader),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    raft_addr: String,
}

pub async fn add_member(State(api): State<Api>, Path(id): Path<u64>, b: Body<AddMember>) -> ApiResult {
    let AddMember { raft_addr } = body(b)?;
    if id == 0 {
        return Err(ApiError::bad_request("member ids start at 1"));
    }
    if !raft_addr.contains(':') {
        return Err(ApiError::bad_request("raft_addr must be HOST:PORT"));
    }
    let index = api.node.add_voter(id, raft_addr, api.timeout).await?;
    Ok(Json(json!({ "index": index, "added": id })).into_response())
}

pub async fn remove_member(State(api): State<Api>, Path(id): Path<u64>) -> ApiResult {
    let index = api.node.remove_voter(id, api.timeout).await?;
    Ok(Json(json!({ "index": index, "removed": id })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutEdge {
    region: String,
    quic_addr: String,
    http_addr: String,
    /// Software version the edge runs ("unknown" when not given).
    version: Option<String>,
    #[serde(default)]
    capacity: u32,
}

pub async fn put_edge(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    // Raw bytes (the membership proof signs them), with the checks `Json` would do.
    let raw = raw?;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "Expected request with `Content-Type: application/json`",
        ));
    }
    if !caller.speaks_for_edge(&id) {
        return Err(forbidden(&caller, format!("register edge {id}")));
    }
    // An edge that connected with its certificate (mutual TLS) is already authenticated;
    // anyone else registering needs a proof signed with the edge's certificate.
    if let (Some(ca), None) = (&api.cluster_ca, &caller.edge) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = format!("/v1/edges/{id}");
        ferry_net::proof::verify(ca, header, &id, "PUT", &path, &raw, ferry_net::time::unix_ms()).map_err(
            |e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "node_certificate_required",
                    format!("edge {id}: {e}"),
                )
            },
        )?;
    }
    let e: PutEdge =
        serde_json::from_slice(&raw).map_err(|e| ApiError::bad_request(format!("bad edge: {e}")))?;
    let command = Command::RegisterEdge {
        id,
        region: e.region,
        quic_addr: e.quic_addr,
        http_addr: e.http_addr,
        version: e.version.unwrap_or_else(|| "unknown".to_owned()),
        capacity: e.capacity,
    };
    api.write(&caller, &headers, command).await
}

pub async fn drain_edge(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    if !caller.speaks_for_edge(&id) {
        return Err(forbidden(&caller, format!("drain edge {id}")));
    }
    api.write(&caller, &headers, Command::DrainEdge { id }).await
}

pub async fn delete_edge(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::RemoveEdge { id }).await
}

/// Registered edges, each with what gossip says about it (`gossip`: null when gossip
/// has not seen it).
pub async fn list_edges(State(api): State<Api>, p: Result<Query<ReadParams>, QueryRejection>) -> ApiResult {
    let members = api.gossip.as_ref().map(|g| g.members()).unwrap_or_default();
    api.list(p, "edges", |s| {
        let edges = s.edges.values().map(|e| {
            let mut v = serde_json::to_value(e)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("gossip".into(), gossip_fields(members.iter().find(|m| m.id == e.id)));
            }
            Ok(v)
        });
        edges.collect::<serde_json::Result<Vec<Value>>>().map(Value::Array)
    })
    .await
}

pub async fn get_edge(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.one(p, |s| s.edges.get(&id).map(serde_json::to_value), || format!("edge {id} is not registered"))
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutStream {
    origin: String,
    #[serde(default)]
    relays: BTreeMap<String, Vec<String>>,
}

pub async fn put_stream(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Body<PutStream>,
) -> ApiResult {
    let s = body(b)?;
    api.write(&caller, &headers, Command::PutStream { name, origin: s.origin, relays: s.relays }).await
}

pub async fn delete_stream(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::DeleteStream { name }).await
}

/// `PUT /v1/origins/{stream}`: an edge claims a stream's origin for the publisher
/// that started on it (see [`Command::ClaimStream`]); 409 while another edge holds it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimOrigin {
    origin: String,
    #[serde(default)]
    takeover: bool,
}

pub async fn claim_origin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Body<ClaimOrigin>,
) -> ApiResult {
    let c = body(b)?;
    if !caller.speaks_for_edge(&c.origin) {
        return Err(forbidden(&caller, format!("claim {name} for edge {}", c.origin)));
    }
    api.write(&caller, &headers, Command::ClaimStream { name, origin: c.origin, takeover: c.takeover }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    origin: String,
}

/// `DELETE /v1/origins/{stream}?origin=EDGE`: the edge's publisher left.
pub async fn release_origin(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    p: Result<Query<ReleaseParams>, QueryRejection>,
) -> ApiResult {
    let Query(p) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !caller.speaks_for_edge(&p.origin) {
        return Err(forbidden(&caller, format!("release {name} for edge {}", p.origin)));
    }
    api.write(&caller, &headers, Command::ReleaseStream { name, origin: p.origin, expired: None }).await
}

pub async fn list_streams(State(api): State<Api>, p: Result<Query<ReadParams>, QueryRejection>) -> ApiResult {
    api.list(p, "streams", |s| serde_json::to_value(s.streams.values().collect::<Vec<_>>())).await
}

pub async fn get_stream(
    State(api): State<Api>,
    Path(name): Path<String>,
    p: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.one(p, |s| s.streams.get(&name).map(serde_json::to_value), || format!("stream {name} does not exist"))
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    id: String,
    #[serde(default)]
    spec: Value,
}

/// `POST /v1/rollouts`: the spec must be a valid [`RolloutSpec`] (unknown keys, bad
/// ranges: 400 with the field); it is stored with its defaults filled in.
pub async fn create_rollout(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    b: Body<CreateRollout>,
) -> ApiResult {
    let r = body(b)?;
    let spec: RolloutSpec =
        serde_json::from_value(r.spec).map_err(|e| ApiError::bad_request(format!("spec: {e}")))?;
    spec.validate().map_err(|e| ApiError::bad_request(format!("spec: {e}")))?;
    api.write(&caller, &headers, Command::CreateRollout { id: r.id, spec }).await
}

/// `GET /v1/rollouts/{id}/history`: every change of the rollout, oldest first.
pub async fn rollout_history(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.one(
        p,
        |s| s.rollouts.get(&id).map(|r| Ok(json!({ "id": r.id, "history": r.history }))),
        || format!("rollout {id} does not exist"),
    )
    .await
}

pub async fn list_rollouts(
    State(api): State<Api>,
    p: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.list(p, "rollouts", |s| serde_json::to_value(s.rollouts.values().collect::<Vec<_>>())).await
}

pub async fn get_rollout(
    State(api): State<Api>,
    Path(id): Path<String>,
    p: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    // The guard's windows are read with the state (after the read fence), so a
    // rollout shown tripped also shows the windows that tripped it.
    let with_windows = |s: &MachineState| {
        s.rollouts.get(&id).map(|r| {
            let mut value = serde_json::to_value(r)?;
            if let Some(object) = value.as_object_mut() {
                let windows = serde_json::to_value(api.guard_windows(&id)).unwrap_or_default();
                object.insert("windows".into(), windows);
            }
            Ok(value)
        })
    };
    api.one(p, with_windows, || format!("rollout {id} does not exist")).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLevel {
    level: u8,
}

pub async fn set_level(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body<SetLevel>,
) -> ApiResult {
    let SetLevel { level } = body(b)?;
    api.write(&caller, &headers, Command::SetRolloutLevel { id, level }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetShare {
    share_bp: u32,
}

/// `POST /v1/rollouts/{id}/share`: the level-3 sampled share of a live rollout.
pub async fn set_share(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body<SetShare>,
) -> ApiResult {
    let SetShare { share_bp } = body(b)?;
    // The new share is checked with the spec's rules here, before it is proposed; the
    // state machine checks only its range (see `set_rollout_share`). A rollout's spec
    // changes only through this command, so the check cannot go stale in between.
    let checked = api.node.read(|s| {
        s.rollouts.get(&id).map(|r| {
            let mut spec = r.spec.clone();
            spec.gates.share_bp = share_bp;
            spec.validate()
        })
    });
    if let Some(Err(e)) = checked {
        return Err(ApiError::bad_request(format!("spec: {e}")));
    }
    api.write(&caller, &headers, Command::SetRolloutShare { id, share_bp }).await
}

pub async fn pause_rollout(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::PauseRollout { id }).await
}

pub async fn resume_rollout(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::ResumeRollout { id }).await
}

pub async fn abort_rollout(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::AbortRollout { id }).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    stale: bool,
    /// Newest events to return (default 100, at most 10,000).
    limit: Option<usize>,
}

pub async fn audit(State(api): State<Api>, p: Result<Query<AuditParams>, QueryRejection>) -> ApiResult {
    let Query(p) = p?;
    api.read_fence(p.stale).await?;
    let limit = p.limit.unwrap_or(100).min(10_000);
    let events = api.node.read(|s| {
        let skip = s.audit.len().saturating_sub(limit);
        serde_json::to_value(s.audit.iter().skip(skip).collect::<Vec<_>>())
    });
    Ok(Json(json!({ "events": events.unwrap_or(Value::Null) })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    /// Return changes applied after this index (0: from the start).
    #[serde(default)]
    since: u64,
    /// Longest wait in milliseconds (default 30 s, at most 60 s).
    timeout_ms: Option<u64>,
}

/// Long-poll: waits until something is applied after `since`, then returns the
/// audit events after it and the new index to resume from. When the events after
/// `since` are no longer retained, answers `resync: true` with the whole state.
pub async fn watch(State(api): State<Api>, p: Result<Query<WatchParams>, QueryRejection>) -> ApiResult {
    let Query(p) = p?;
    let wait = Duration::from_millis(p.timeout_ms.unwrap_or(30_000).min(60_000));
    let deadline = tokio::time::Instant::now() + wait;
    // Entries without a change (a new leader's empty entry) advance the index but
    // carry no event: keep waiting until there is one, or the deadline.
    let mut seen = p.since;
    let body = loop {
        tokio::select! {
            _ = api.node.wait_applied(seen.saturating_add(1), deadline) => {}
            // Shutting down: an empty answer now, so the client resumes elsewhere.
            _ = api.shutdown.cancelled() => {
                let index = api.node.status().applied.max(p.since);
                break json!({ "index": index, "resync": false, "events": [] });
            }
        }
        let status_applied = api.node.status().applied;
        let body = api.node.read(|s| {
            // The state's own index: never behind the events it holds.
            let index = s.applied_index.max(status_applied);
            let oldest = s.audit.front().map_or(u64::MAX, |e| e.index);
            let lost = p.since.saturating_add(1) < oldest && s.audit.len() >= crate::state::MAX_AUDIT_EVENTS;
            if lost {
                Some(json!({ "index": index, "resync": true, "state": serde_json::to_value(s).unwrap_or(Value::Null) }))
            } else {
                let events: Vec<_> = s.audit.iter().filter(|e| e.index > p.since).collect();
                (!events.is_empty()).then(|| json!({ "index": index, "resync": false, "events": events }))
            }
        });
        match body {
            Some(body) => break body,
            None if tokio::time::Instant::now() >= deadline => {
                break json!({ "index": status_applied.max(p.since), "resync": false, "events": [] });
            }
            None => seen = status_applied.max(seen.saturating_add(1)),
        }
    };
    Ok(Json(body).into_response())
}

/// 403 for a caller acting beyond itself.
fn forbidden(caller: &Caller, what: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{} (role {}) may not {what}", caller.principal, caller.role),
    )
}

/// `GET /v1/whoami`: the caller as the API sees it.
pub async fn whoami(Extension(caller): Extension<Caller>) -> ApiResult {
    Ok(Json(json!({ "principal": caller.principal, "role": caller.role, "source": caller.source }))
        .into_response())
}

/// `GET /v1/tokens`: accessors, roles and who created them (never secrets or hashes).
pub async fn list_tokens(State(api): State<Api>, p: Result<Query<ReadParams>, QueryRejection>) -> ApiResult {
    api.list(p, "tokens", |s| {
        let tokens: Vec<Value> = s
            .tokens
            .values()
            .map(|t| json!({ "accessor": t.accessor, "role": t.role, "created_at_ms": t.created_at_ms, "created_by": t.created_by }))
            .collect();
        Ok(Value::Array(tokens))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    accessor: String,
    role: String,
}

/// `POST /v1/tokens`: a new named token. The secret is made here, returned once in
/// `token`, and only its SHA-256 is proposed to raft.
pub async fn create_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    b: Body<CreateToken>,
) -> ApiResult {
    let CreateToken { accessor, role } = body(b)?;
    let role = TokenRole::parse(&role)
        .ok_or_else(|| ApiError::bad_request(format!("role {role:?}: expected admin, operator or viewer")))?;
    let secret = auth::new_secret().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("no randomness for a secret: {e}"),
        )
    })?;
    let digest = auth::secret_digest(&secret);
    let command = Command::CreateToken { accessor: accessor.clone(), role, secret_sha256: digest.clone() };
    let (index, _) = api.commit(&caller, &headers, command).await?;
    // A retried request (same Idempotency-Key) answers the first one's outcome, whose
    // secret was shown then and cannot be shown again.
    let stored = api.node.read(|s| s.tokens.get(&accessor).map(|t| t.secret_sha256.clone()));
    if stored.as_deref() != Some(digest.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("token {accessor:?} was created by an earlier request; its secret was shown then (revoke it and create another to get a new one)"),
        ));
    }
    let token = format!("{}{accessor}.{secret}", auth::TOKEN_PREFIX);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "index": index, "accessor": accessor, "role": role, "token": token })),
    )
        .into_response())
}

/// `DELETE /v1/tokens/{accessor}`: every voter refuses the token once this is applied there.
pub async fn revoke_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(accessor): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    api.write(&caller, &headers, Command::RevokeToken { accessor }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// PEM `CERTIFICATE REQUEST` naming one edge identity.
    csr: String,
}

/// `POST /v1/certificates`: signs an edge's certificate request with the cluster CA. A
/// join-token holder (an edge starting for the first time) or an admin may ask for
/// any edge of this cluster; an edge renews its own only.
pub async fn issue_certificate(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    b: Body<CertificateRequest>,
) -> ApiResult {
    let CertificateRequest { csr } = body(b)?;
    let Some(certs) = &api.certs else {
        return Err(ApiError::not_found("this voter does not sign certificates (start it with --ca-key)"));
    };
    let cluster = api.cluster.as_deref().unwrap_or_default();
    let now = SystemTime::now();
    let (identity, signed) = certs
        .signer
        .sign_edge(&csr, cluster, caller.edge.as_deref(), certs.lifetime, now)
        .map_err(|e| match caller.edge {
            Some(_) if e.contains("its own") => forbidden(&caller, e),
            _ => ApiError::bad_request(e),
        })?;
    let not_after_ms = signed.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    tracing::info!(principal = %caller.principal, source = %caller.source, %identity, not_after_ms, "issued an edge certificate");
    Ok((StatusCode::CREATED, Json(json!({ "certificate": signed.pem, "not_after_ms": not_after_ms })))
        .into_response())
}
