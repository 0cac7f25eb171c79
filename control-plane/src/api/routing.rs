//! Viewer- and publisher-facing routing: `GET /v1/route/{stream}` and the WHIP/WHEP
//! redirects. These need no operator token: they only say where to go, and the edge
//! checks the client's own access token.
//!
//! Candidates are the registered edges merged with what gossip says about them
//! (alive, draining, load, which streams they carry); [`crate::placement::route`]
//! decides.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_net::gossip::Member;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::placement::{self, Candidate, Route};

/// What the client will do at the edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A WebRTC viewer (default).
    #[default]
    Whep,
    /// A WebRTC publisher.
    Whip,
    /// `ferry watch` over QUIC.
    Quic,
    /// `ferry publish` over QUIC.
    Publish,
}

impl Kind {
    fn publishes(self) -> bool {
        matches!(self, Kind::Whip | Kind::Publish)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteParams {
    /// The client's region; edges there are preferred.
    region: Option<String>,
    #[serde(default)]
    kind: Kind,
}

/// An edge as routing knows it: registration, then gossip.
#[derive(Debug, Clone)]
struct EdgeInfo {
    id: String,
    region: String,
    quic_addr: String,
    http_addr: String,
    capacity: u32,
    /// An operator asked it to drain.
    draining: bool,
}

impl Api {
    /// Candidates for `stream`: every registered edge, with gossip's view of it.
    fn candidates(&self, stream: &str) -> (Vec<Candidate>, BTreeMap<String, EdgeInfo>) {
        let registered: Vec<EdgeInfo> = self.node.read(|s| {
            s.edges
                .values()
                .map(|e| EdgeInfo {
                    id: e.id.clone(),
                    region: e.region.clone(),
                    quic_addr: e.quic_addr.clone(),
                    http_addr: e.http_addr.clone(),
                    capacity: e.capacity,
                    draining: e.draining,
                })
                .collect::<Vec<_>>()
        });
        let members: BTreeMap<String, Member> = match &self.gossip {
            Some(g) => {
                g.members().into_iter().filter(|m| m.info.role == "edge").map(|m| (m.id.clone(), m)).collect()
            }
            None => BTreeMap::new(),
        };
        // Only registered edges (registration needs the operator token): a process
        // that merely joins the gossip is never routed to.
        let infos: BTreeMap<String, EdgeInfo> = registered.into_iter().map(|e| (e.id.clone(), e)).collect();
        let candidates = infos
            .values()
            .map(|e| {
                let m = members.get(&e.id);
                Candidate {
                    id: e.id.clone(),
                    region: e.region.clone(),
                    // Without gossip the control plane cannot tell: trust registration.
                    alive: m.map_or(self.gossip.is_none(), |m| m.alive),
                    draining: e.draining || m.is_some_and(|m| m.info.draining),
                    sessions: m.map_or(0, |m| m.info.sessions),
                    capacity: e.capacity,
                    carries: m
                        .is_some_and(|m| m.info.origins.contains(stream) || m.info.carries.contains(stream)),
                }
            })
            .collect();
        (candidates, infos)
    }

    /// The edge for a new session of `stream`.
    fn route(&self, stream: &str, params: &RouteParams) -> Result<(Route, EdgeInfo), ApiError> {
        let (mut candidates, infos) = self.candidates(stream);
        if params.kind.publishes() {
            // Where a stream is published has nothing to do with who carries it.
            candidates.iter_mut().for_each(|c| c.carries = false);
        }
        let route =
            placement::route(stream, params.region.as_deref(), &candidates, placement::DEFAULT_EPSILON)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_edge",
                        "no live edge can take the session",
                    )
                })?;
        let info = infos.get(&route.edge).cloned().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "routed to an unknown edge")
        })?;
        Ok((route, info))
    }
}

fn stream_name(raw: &str) -> Result<String, ApiError> {
    ferry_proto::StreamName::new(raw.to_owned())
        .map(|s| s.to_string())
        .map_err(|e| ApiError::bad_request(format!("bad stream name: {e}")))
}

fn route_params(p: Result<Query<RouteParams>, QueryRejection>) -> Result<RouteParams, ApiError> {
    p.map(|Query(p)| p).map_err(ApiError::from)
}

/// `GET /v1/route/{stream}?region=R&kind=whep|whip|quic|publish`.
pub async fn route(
    State(api): State<Api>,
    Path(stream): Path<String>,
    p: Result<Query<RouteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(&stream)?;
    let params = route_params(p)?;
    let (route, edge) = api.route(&stream, &params)?;
    let path = if params.kind == Kind::Whip { "whip" } else { "whep" };
    Ok(Json(json!({
        "stream": stream,
        "edge": route.edge,
        "reason": route.reason,
        "region": edge.region,
        "quic_addr": edge.quic_addr,
        "http_addr": edge.http_addr,
        "url": format!("http://{}/{path}/{stream}", edge.http_addr),
    }))
    .into_response())
}

/// `POST /whep/{stream}` and `POST /whip/{stream}` on the control plane: 307 to the
/// chosen edge, which WHIP/WHEP clients follow with the same method and body.
pub async fn redirect(
    api: Api,
    kind: Kind,
    stream: String,
    p: Result<Query<RouteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_name(&stream)?;
    let mut params = route_params(p)?;
    params.kind = kind;
    let (_, edge) = api.route(&stream, &params)?;
    let path = if kind == Kind::Whip { "whip" } else { "whep" };
    let location = format!("http://{}/{path}/{stream}", edge.http_addr);
    let value = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "bad edge address"))?;
    Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, value)], Json(json!({ "location": location })))
        .into_response())
}

/// Routing answers are readable from any origin (they carry no secrets), errors too.
pub fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION])
        .max_age(std::time::Duration::from_secs(600))
}

/// `OPTIONS` that is not a CORS preflight (the CORS layer answers those).
pub async fn preflight() -> impl IntoResponse {
    StatusCode::NO_CONTENT
}

pub async fn redirect_whep(
    State(api): State<Api>,
    Path(stream): Path<String>,
    p: Result<Query<RouteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    redirect(api, Kind::Whep, stream, p).await
}

pub async fn redirect_whip(
    State(api): State<Api>,
    Path(stream): Path<String>,
    p: Result<Query<RouteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    redirect(api, Kind::Whip, stream, p).await
}

/// Gossip's view of every member, for `/v1/edges` and `/v1/members`.
pub fn gossip_fields(member: Option<&Member>) -> Value {
    match member {
        Some(m) => json!({
            "alive": m.alive, "draining": m.info.draining, "sessions": m.info.sessions, "cpu": m.info.cpu,
            "bytes_per_s": m.info.bytes_per_s, "origins": m.info.origins, "carries": m.info.carries,
            "gossip_addr": m.gossip_addr, "generation": m.generation,
        }),
        None => Value::Null,
    }
}

/// `GET /v1/members`: every process gossip knows (edges and voters), alive or dead.
pub async fn members(State(api): State<Api>) -> Result<Response, ApiError> {
    let members = api.gossip.as_ref().map(|g| g.members()).unwrap_or_default();
    Ok(Json(json!({ "gossip": api.gossip.is_some(), "members": members })).into_response())
}
