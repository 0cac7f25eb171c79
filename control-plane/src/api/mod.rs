//! The control plane's HTTP API (JSON under `/v1`, see docs/api/openapi.yaml).
//!
//! Writes on any voter are proposed to raft there; raft-rs forwards proposals from
//! followers to the leader, and the answer comes once the entry is committed,
//! applied and flushed on the voter that took the request. Reads are linearizable
//! (ReadIndex) unless `?stale=true`.

pub mod auth;
mod error;
mod routes;
pub mod routing;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use error::ApiError;

use ferry_net::gossip::{Gossip, GossipMetrics};

use crate::node::NodeHandle;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    /// The bootstrap admin token (`--token-file`).
    pub token: Arc<String>,
    pub metrics: Arc<ApiMetrics>,
    pub registry: Arc<Registry>,
    /// How long a write or linearizable read may wait for raft.
    pub timeout: Duration,
    pub next_request: Arc<AtomicU64>,
    /// Health gossip, when this voter takes part.
    pub gossip: Option<Arc<Gossip>>,
    /// The cluster CA: when set, an edge registers only with a proof signed by a
    /// certificate from it that names the edge (see `ferry_net::proof`).
    pub cluster_ca: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    /// The cluster id edges' certificates must name (`None`: no edge is recognised by
    /// certificate).
    pub cluster: Option<Arc<str>>,
    /// Signing edges' certificate requests (`None`: this voter does not sign).
    pub certs: Option<Arc<EdgeCertificates>>,
    /// The rollouts' error guard, for its windows.
    pub guard: Option<Arc<std::sync::Mutex<crate::guard::ErrorGuard>>>,
    /// Fires when the voter shuts down: watch long-polls answer at once instead of
    /// holding the HTTP server's shutdown for their whole wait.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What a voter needs to issue edges their certificates.
#[derive(Debug)]
pub struct EdgeCertificates {
    /// The cluster CA, with its key.
    pub signer: ferry_net::certs::Signer,
    /// Edges without a certificate yet present it to get their first one (empty: only
    /// renewals and admins).
    pub join_token: String,
    /// How long an issued certificate is valid.
    pub lifetime: Duration,
}

/// Raft and API metrics.
#[derive(Default)]
pub struct ApiMetrics {
    pub term: Gauge,
    pub leader: Gauge,
    pub commit: Gauge,
    pub applied: Gauge,
    pub proposals: Gauge,
    pub reproposals: Gauge,
    pub snapshots: Gauge,
    pub is_leader: Gauge,
    pub proposal_seconds: ProposalHistogram,
    /// Per rollout, from the replicated state at scrape time.
    pub rollout_level: Family<RolloutLabels, Gauge>,
    pub rollout_share: Family<RolloutLabels, Gauge>,
    pub rollout_state: Family<RolloutStateLabels, Gauge>,
    pub rollout_changed: Family<RolloutLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutStateLabels {
    pub rollout: String,
    pub state: String,
}

/// Proposal latency, 1 ms to ~8 s.
pub struct ProposalHistogram(pub Histogram);

impl Default for ProposalHistogram {
    fn default() -> Self {
        Self(Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14)))
    }
}

impl Api {
    pub fn new(node: NodeHandle, token: String, timeout: Duration) -> Self {
        let metrics = Arc::new(ApiMetrics::default());
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("ferry_raft");
        r.register("term", "Current raft term", metrics.term.clone());
        r.register("leader", "Leader id known to this voter (0: none)", metrics.leader.clone());
        r.register("commit_index", "Highest committed log index", metrics.commit.clone());
        r.register("applied_index", "Highest applied log index", metrics.applied.clone());
        r.register("proposals", "Proposals made through this voter", metrics.proposals.clone());
        r.register(
            "reproposals",
            "Writes proposed again through this voter after a leader change or a silent leader",
            metrics.reproposals.clone(),
        );
        r.register("snapshots", "Snapshots taken by this voter", metrics.snapshots.clone());
        r.register("is_leader", "1 on the leader", metrics.is_leader.clone());
        r.register("proposal_seconds", "Time from proposal to applied", metrics.proposal_seconds.0.clone());
        let r = registry.sub_registry_with_prefix("ferry");
        r.register("rollout_level", "Level of each rollout (0-4)", metrics.rollout_level.clone());
        r.register(
            "rollout_share_basis_points",
            "Share of level 3 of each rollout (0-10000)",
            metrics.rollout_share.clone(),
        );
        r.register(
            "rollout_state",
            "1 for each rollout's state (active, paused, tripped, aborted)",
            metrics.rollout_state.clone(),
        );
        r.register(
            "rollout_last_change_timestamp_seconds",
            "Unix time of each rollout's last change",
            metrics.rollout_changed.clone(),
        );
        Self {
            node,
            token: Arc::new(token),
            metrics,
            registry: Arc::new(registry),
            timeout,
            next_request: Arc::new(AtomicU64::new(1)),
            gossip: None,
            cluster_ca: None,
            cluster: None,
            certs: None,
            guard: None,
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ends watch long-polls when `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Signs edges' certificate requests (`POST /v1/certificates`).
    pub fn with_certificates(mut self, certs: Arc<EdgeCertificates>) -> Self {
        self.certs = Some(certs);
        self
    }

    /// Edges presenting a client certificate naming `cluster` are callers in their own
    /// right (role `edge`).
    pub fn with_cluster(mut self, cluster: Option<String>) -> Self {
        self.cluster = cluster.map(Arc::from);
        self
    }

    /// Requires edges to prove cluster membership when they register.
    pub fn with_cluster_ca(mut self, ca: Vec<rustls::pki_types::CertificateDer<'static>>) -> Self {
        self.cluster_ca = Some(Arc::new(ca));
        self
    }

    /// Registers `ferry_raft_peers_refused_total{reason}`.
    pub fn register_raft_refusals(&mut self, refusals: &ferry_net::tls::PeerRefusals) {
        if let Some(registry) = Arc::get_mut(&mut self.registry) {
            refusals.register(
                registry,
                "ferry_raft_peers_refused",
                "Raft peers and messages refused: certificates that are not a voter of this cluster, messages whose from is not the certificate's voter, peers of another cluster identity (cluster)",
            );
        }
    }

    /// Registers the API server's connection metrics.
    pub fn register_http_metrics(&mut self, metrics: &ferry_net::http_server::HttpServerMetrics) {
        if let Some(registry) = Arc::get_mut(&mut self.registry) {
            metrics.register(registry);
        }
    }

    /// Registers the gossip metrics; call before [`Api::with_gossip`].
    pub fn register_gossip_metrics(&mut self, metrics: &GossipMetrics) {
        if let Some(registry) = Arc::get_mut(&mut self.registry) {
            metrics.register(registry);
        }
    }

    /// `GET /v1/rollouts/{id}` shows the error guard's last windows.
    pub fn with_guard(mut self, guard: Arc<std::sync::Mutex<crate::guard::ErrorGuard>>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The error guard's last windows of `rollout` (none without gossip).
    pub(crate) fn guard_windows(&self, rollout: &str) -> Vec<crate::guard::WindowReport> {
        match &self.guard {
            Some(g) => g.lock().unwrap_or_else(std::sync::PoisonError::into_inner).windows(rollout),
            None => Vec::new(),
        }
    }

    /// Routing and `/v1/edges` use what gossip says about edges.
    pub fn with_gossip(mut self, gossip: Arc<Gossip>) -> Self {
        self.gossip = Some(gossip);
        self
    }

    /// The router: probes and metrics open, everything under `/v1` behind a principal
    /// allowed to call it (see [`auth`]).
    pub fn router(self) -> Router {
        let v1 = Router::new()
            .route("/v1/cluster", get(routes::cluster))
            .route("/v1/cluster/members/{id}", post(routes::add_member).delete(routes::remove_member))
            .route("/v1/edges", get(routes::list_edges))
            .route("/v1/edges/{id}", put(routes::put_edge).get(routes::get_edge).delete(routes::delete_edge))
            .route("/v1/edges/{id}/drain", post(routes::drain_edge))
            .route("/v1/streams", get(routes::list_streams))
            .route(
                "/v1/streams/{*name}",
                put(routes::put_stream).get(routes::get_stream).delete(routes::delete_stream),
            )
            .route("/v1/origins/{*name}", put(routes::claim_origin).delete(routes::release_origin))
            .route("/v1/rollouts", get(routes::list_rollouts).post(routes::create_rollout))
            .route("/v1/rollouts/{id}", get(routes::get_rollout))
            .route("/v1/rollouts/{id}/history", get(routes::rollout_history))
            .route("/v1/rollouts/{id}/level", post(routes::set_level))
            .route("/v1/rollouts/{id}/share", post(routes::set_share))
            .route("/v1/rollouts/{id}/pause", post(routes::pause_rollout))
            .route("/v1/rollouts/{id}/resume", post(routes::resume_rollout))
            .route("/v1/rollouts/{id}/abort", post(routes::abort_rollout))
            .route("/v1/audit", get(routes::audit))
            .route("/v1/snapshot", get(routes::snapshot))
            .route("/v1/watch", get(routes::watch))
            .route("/v1/members", get(routing::members))
            .route("/v1/tokens", get(routes::list_tokens).post(routes::create_token))
            .route("/v1/tokens/{accessor}", delete(routes::revoke_token))
            .route("/v1/whoami", get(routes::whoami))
            .route("/v1/certificates", post(routes::issue_certificate))
            .route_layer(middleware::from_fn_with_state(self.clone(), authorize));
        // Viewer- and publisher-facing: no operator token (the edge checks access tokens).
        // Browsers on other origins (the demo player re-routing) may call them: CORS.
        let public = Router::new()
            .route("/v1/route/{*stream}", get(routing::route).options(routing::preflight))
            .route("/whep/{*stream}", post(routing::redirect_whep).options(routing::preflight))
            .route("/whip/{*stream}", post(routing::redirect_whip).options(routing::preflight))
            .layer(routing::cors())
            .layer(middleware::map_response(ferry_net::http::preflight_no_content));
        Router::new()
            .merge(public)
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .merge(v1)
            .fallback(|| async { ApiError::not_found("no such route") })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

/// Every route under /v1 needs a caller ([`auth::authenticate`]) whose role allows the
/// route ([`auth::need`]): 401 without one, 403 when the role does not reach.
async fn authorize(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let source = request
        .extensions()
        .get::<ferry_net::http_server::PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cert = request.extensions().get::<ferry_net::http_server::PeerCert>();
    let edge = match (cert, &api.cluster) {
        (Some(cert), Some(cluster)) => match auth::edge_of_cert(&cert.0, cluster) {
            Ok(edge) => edge,
            Err(why) => return ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response(),
        },
        _ => None,
    };
    let caller = match (edge, given) {
        (Some(edge), _) => auth::Caller::edge(&edge, source),
        (None, Some(token)) => {
            let lookup = |accessor: &str| api.node.read(|s| s.tokens.get(accessor).cloned());
            let join = api.certs.as_ref().map(|c| c.join_token.as_str());
            match auth::authenticate(token, &api.token, join, lookup, source) {
                Ok(caller) => caller,
                Err(auth::Refused::Unknown) => {
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "unknown or revoked token",
                    )
                    .into_response()
                }
            }
        }
        (None, None) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer token",
            )
            .into_response()
        }
    };
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let need = auth::need(request.method(), &path);
    if !caller.may(need) {
        let message =
            format!("{} (role {}) may not {} {path}", caller.principal, caller.role, request.method());
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Alive: never depends on quorum.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready: this voter knows a leader.
async fn readyz(State(api): State<Api>) -> impl IntoResponse {
    let status = api.node.status();
    if let Some(fault) = status.fault {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "failed", "error": fault })))
    } else if status.leader != 0 {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ready", "leader": status.leader })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "no leader" })))
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let s = api.node.status();
    let m = &api.metrics;
    let set = |g: &Gauge, v: u64| {
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
    };
    set(&m.term, s.term);
    set(&m.leader, s.leader);
    set(&m.commit, s.commit);
    set(&m.applied, s.applied);
    set(&m.proposals, s.proposals);
    set(&m.reproposals, s.reproposals);
    set(&m.snapshots, s.snapshots_taken);
    set(&m.is_leader, u64::from(s.leader == s.id));
    m.rollout_level.clear();
    m.rollout_share.clear();
    m.rollout_state.clear();
    m.rollout_changed.clear();
    api.node.read(|state| {
        for r in state.rollouts.values() {
            let labels = RolloutLabels { rollout: r.id.clone() };
            m.rollout_level.get_or_create(&labels).set(i64::from(r.level));
            let share = i64::from(r.spec.gates.share_bp);
            m.rollout_share.get_or_create(&labels).set(share);
            let state = serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            let state = RolloutStateLabels { rollout: r.id.clone(), state: state.unwrap_or_default() };
            m.rollout_state.get_or_create(&state).set(1);
            let last = r.history.last().map_or(r.created_at_ms, |e| e.at_ms);
            m.rollout_changed.get_or_create(&labels).set(last as f64 / 1e3);
        }
    });
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &api.registry) {
        Ok(()) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                .into_response()
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod openapi_tests;
