//! WHIP/WHEP over HTTP: `POST /whip/{stream}` and `POST /whep/{stream}` take an SDP
//! offer and answer `201 Created` with the SDP answer and a `Location` to `DELETE`.
//! Every refusal is a status with a JSON body `{"error": "...", "reason": "..."}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_proto::StreamName;

use super::engine::BuildError;
use super::sdp::SdpError;
use super::WebRtcEdge;
use super::{whep, whip, Client, Direction, LeaseError};
use crate::access::Credential;
use crate::auth::{self, Action};
use crate::cluster::redirect;
use crate::metrics::ReasonLabels;
use crate::rollouts::Assignment;
use ferry_net::http_server::PeerAddr;

/// A refusal: status, machine-readable reason, human message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into(), retry_after: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn sdp(e: SdpError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string())
    }

    pub fn webrtc_offer(e: webrtc::error::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "offer_rejected", format!("the offer could not be applied: {e}"))
    }

    pub fn webrtc_internal(e: webrtc::error::Error) -> Self {
        Self::internal(format!("webrtc: {e}"))
    }

    pub fn lease(e: LeaseError) -> Self {
        let (reason, message) = match e {
            LeaseError::TooManySessions => {
                ("too_many_sessions", "this edge serves its maximum of WebRTC sessions")
            }
            LeaseError::NoFreePort => ("no_free_port", "every WebRTC UDP port of this edge is in use"),
            LeaseError::ClientBusy => {
                return Self {
                    retry_after: Some(5),
                    ..Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "client_busy",
                        "this client (its address or its token's subject) holds its share of WebRTC sessions on this edge",
                    )
                };
            }
            LeaseError::NoRandom => return Self::internal("the system random generator failed"),
        };
        Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason, message) }
    }

    pub fn build(e: BuildError) -> Self {
        match e {
            BuildError::NoPort => Self::lease(LeaseError::NoFreePort),
            BuildError::WebRtc(e) => Self::internal(format!("peer connection: {e}")),
        }
    }

    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message, "reason": self.reason }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Creates and applies the answer, waits for ICE gathering (the answer carries every
/// candidate), and returns it as the peer must see it (`--webrtc-public-ip`).
pub(crate) async fn answer(
    state: &WebRtcEdge,
    pc: &Arc<dyn webrtc::peer_connection::PeerConnection>,
    events: &mut super::engine::Events,
) -> Result<String, ApiError> {
    let answer = pc.create_answer(None).await.map_err(ApiError::webrtc_offer)?;
    pc.set_local_description(answer).await.map_err(ApiError::webrtc_internal)?;
    super::engine::gathered(events, state.webrtc.config.ice_gather_timeout).await;
    let answer = pc
        .local_description()
        .await
        .ok_or_else(|| ApiError::internal("no local description after negotiation"))?
        .sdp;
    Ok(match state.webrtc.config.public_ip {
        Some(ip) => super::sdp::advertise_public_ip(&answer, ip),
        None => answer,
    })
}

/// The WHIP/WHEP and demo routes, with CORS for browsers on other origins.
pub fn routes(state: WebRtcEdge) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/whip/{*stream}", post(post_whip).options(preflight))
        .route("/whep/{*stream}", post(post_whep).options(preflight))
        .route("/sessions/whip/{id}", delete(delete_whip).patch(patch).options(preflight))
        .route("/sessions/whep/{id}", delete(delete_whep).patch(patch).options(preflight))
        .route("/demo", get(demo_index))
        .route("/demo/publish", get(demo_publish))
        .route("/demo/watch", get(demo_watch))
        .route("/demo/ferry.js", get(demo_script))
        .route("/demo/config.json", get(demo_config))
        .layer(cors())
        .layer(axum::middleware::map_response(ferry_net::http::preflight_no_content))
        .with_state(state)
}

/// Browsers on other origins (the demo pages, players) may use WHIP/WHEP: tokens travel
/// in `Authorization`, never in cookies, so any origin is allowed.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("ferry-session"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::RETRY_AFTER,
            HeaderName::from_static("ferry-variant"),
            HeaderName::from_static("ferry-client-flag"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// `OPTIONS` that is not a CORS preflight (the CORS layer answers those): what a
/// WHIP/WHEP endpoint accepts (RFC 9725).
async fn preflight() -> impl IntoResponse {
    (StatusCode::NO_CONTENT, [(header::HeaderName::from_static("accept-post"), "application/sdp")])
}

/// Trickle ICE is not needed (answers carry every candidate); RFC 9725 §4.3.1 says
/// to answer 405 then.
async fn patch() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle_not_supported",
        "trickle ICE is not supported: send every candidate in the offer",
    )
}

async fn post_whip(
    State(state): State<Arc<WebRtcEdge>>,
    peer: Option<Extension<PeerAddr>>,
    path: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_session(state, Direction::Whip, peer.map(|p| p.0 .0.ip()), path.0, headers, body).await
}

async fn post_whep(
    State(state): State<Arc<WebRtcEdge>>,
    peer: Option<Extension<PeerAddr>>,
    path: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_session(state, Direction::Whep, peer.map(|p| p.0 .0.ip()), path.0, headers, body).await
}

async fn post_session(
    state: Arc<WebRtcEdge>,
    direction: Direction,
    client_ip: Option<std::net::IpAddr>,
    stream: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = redirect(&state, direction, &stream) {
        return response;
    }
    let mut assigned = None;
    let result = offer(&state, direction, client_ip, stream, &headers, body, &mut assigned).await;
    match result {
        Ok((stream, answer, assignment)) => {
            let location = format!("/sessions/{}/{}", direction.name(), answer.id);
            tracing::debug!(%stream, %location, "webrtc session created");
            let mut response = (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_owned()),
                    (header::LOCATION, location),
                    (header::ETAG, format!("\"{}\"", answer.id)),
                ],
                answer.sdp,
            )
                .into_response();
            let variant = assignment.header().and_then(|v| HeaderValue::from_str(&v).ok());
            if let Some(value) = variant {
                response.headers_mut().insert(VARIANT, value);
            }
            let flag =
                assignment.overrides.client_flag.as_deref().and_then(|f| HeaderValue::from_str(f).ok());
            if let Some(value) = flag {
                response.headers_mut().insert(CLIENT_FLAG, value);
            }
            response
        }
        Err(e) => {
            state.metrics.webrtc_session_errors.get_or_create(&ReasonLabels::new(e.reason())).inc();
            if let Some(assignment) = &assigned {
                state.rollout_failed(assignment, e.reason());
            }
            e.into_response()
        }
    }
}

/// 307 to another edge when this one is draining, or (WHIP) when another edge already
/// originates the stream; see [`crate::cluster::redirect`].
fn redirect(state: &WebRtcEdge, direction: Direction, stream: &str) -> Option<Response> {
    state.gossip.get()?;
    let kind = match direction {
        Direction::Whip => redirect::Kind::Whip,
        Direction::Whep => redirect::Kind::Whep,
    };
    let draining = state.draining.load(Ordering::Relaxed);
    // Only registered edges, at their registered addresses: a process that only
    // gossips cannot attract sessions.
    let members = state.cluster().vouched_members();
    let me = state.config.node_id.as_str();
    let published_here = StreamName::new(stream).is_ok_and(|s| state.registry.has_live_publisher(&s));
    let addr = redirect::target(&members, me, &state.config.region, draining, kind, stream, published_here)?;
    let location = format!("http://{addr}/{}/{stream}", direction.name());
    tracing::debug!(%location, draining, "redirecting a new session");
    Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location.clone())],
            Json(serde_json::json!({ "location": location })),
        )
            .into_response(),
    )
}

/// The session's rollout variants, e.g. `bbr=treatment, lag=baseline`.
const VARIANT: header::HeaderName = header::HeaderName::from_static("ferry-variant");
/// The treatment's opaque client flag.
const CLIENT_FLAG: header::HeaderName = header::HeaderName::from_static("ferry-client-flag");
/// The client's stable id for rollout cohorts (a random one per session without it).
const SESSION: header::HeaderName = header::HeaderName::from_static("ferry-session");
/// Longest accepted `Ferry-Session`.
const MAX_SESSION_ID: usize = 128;

async fn offer(
    state: &Arc<WebRtcEdge>,
    direction: Direction,
    client_ip: Option<std::net::IpAddr>,
    stream: String,
    headers: &HeaderMap,
    body: Bytes,
    assigned: &mut Option<Assignment>,
) -> Result<(StreamName, whip::Answer, Assignment), ApiError> {
    let stream = StreamName::new(stream)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_stream_name", e.to_string()))?;
    let action = match direction {
        Direction::Whip => Action::Publish,
        Direction::Whep => Action::View,
    };
    let credential = authorize(state, headers, &stream, action)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim().to_ascii_lowercase().starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "the offer must be sent as Content-Type: application/sdp",
        ));
    }
    let limit = state.webrtc.config.max_sdp_bytes;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "sdp_too_large",
            format!("the offer is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    let sdp = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::sdp(SdpError::Malformed("it is not UTF-8 text")))?;
    // A token's session key (its `sub`) places the session; the client's own id
    // only without a token (dev).
    let session_id = match headers.get(&SESSION).map(|v| v.to_str()) {
        _ if credential.session_key().is_some() => credential.session_key().unwrap_or_default().to_owned(),
        Some(Ok(id)) if !id.is_empty() && id.len() <= MAX_SESSION_ID => id.to_owned(),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_session_id",
                format!("Ferry-Session must be 1-{MAX_SESSION_ID} visible ASCII characters"),
            ))
        }
        None => format!(
            "anonymous-{}",
            ferry_net::random::id().map_err(|e| ApiError::internal(ferry_net::Chain(&e).to_string()))?
        ),
    };
    let tags: Vec<String> = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .into_iter()
        .collect();
    let assignment = state.assign(&session_id, &tags);
    *assigned = Some(assignment.clone());
    if let Some(rollout) = assignment.rejected_by(&session_id) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fault_injected",
            format!("refused by rollout {rollout:?}'s fault injection (a drill)"),
        ));
    }
    let client = Client { ip: client_ip, subject: credential.subject().map(str::to_owned) };
    let answer = match direction {
        Direction::Whip => {
            whip::start(state, stream.clone(), sdp, assignment.clone(), credential.takeover(), &client)
                .await?
        }
        Direction::Whep => whep::start(state, stream.clone(), sdp, assignment.clone(), &client).await?,
    };
    Ok((stream, answer, assignment))
}

/// The request's credential: an `Authorization: Bearer` token good for `action`
/// on `stream`, or none on an edge that allows anonymous clients (dev only). A
/// refusal is 401 (no or bad token) or 403 (a token for something else), with the
/// token's reason.
fn authorize(
    state: &WebRtcEdge,
    headers: &HeaderMap,
    stream: &StreamName,
    action: Action,
) -> Result<Credential, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = match header {
        None => None,
        Some(value) => Some(auth::bearer(value).ok_or_else(|| {
            state.metrics.auth_refused("token_malformed");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_malformed",
                "Authorization must be 'Bearer <token>'",
            )
        })?),
    };
    let refuse = |e: auth::AuthError| {
        state.metrics.auth_refused(e.reason());
        let status = match e {
            auth::AuthError::WrongAction { .. } | auth::AuthError::StreamNotCovered { .. } => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.reason(), e.to_string())
    };
    let credential = state.access.check(token, SystemTime::now()).map_err(refuse)?;
    credential.permits(action, stream.as_str()).map_err(refuse)?;
    Ok(credential)
}

async fn delete_whip(State(state): State<Arc<WebRtcEdge>>, Path(id): Path<String>) -> Response {
    end_session(&state, Direction::Whip, &id)
}

async fn delete_whep(State(state): State<Arc<WebRtcEdge>>, Path(id): Path<String>) -> Response {
    end_session(&state, Direction::Whep, &id)
}

fn end_session(state: &WebRtcEdge, direction: Direction, id: &str) -> Response {
    if state.webrtc.end(direction, id) {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(StatusCode::NOT_FOUND, "no_session", format!("no {} session {id}", direction.name()))
            .into_response()
    }
}

const DEMO_PUBLISH: &str = include_str!("demo/publish.html");
const DEMO_WATCH: &str = include_str!("demo/watch.html");
const DEMO_SCRIPT: &str = include_str!("demo/ferry.js");

async fn demo_index() -> Html<&'static str> {
    Html(
        "<!doctype html><meta charset=utf-8><title>Ferry demo</title>\
         <h1>Ferry</h1><ul>\
         <li><a href=\"/demo/publish?stream=live/demo\">Publish live/demo (camera, WHIP)</a>\
         <li><a href=\"/demo/publish?stream=live/demo&source=canvas\">Publish live/demo (generated, WHIP)</a>\
         <li><a href=\"/demo/watch?stream=live/demo\">Watch live/demo (WHEP)</a></ul>",
    )
}

async fn demo_publish() -> Html<&'static str> {
    Html(DEMO_PUBLISH)
}

async fn demo_watch() -> Html<&'static str> {
    Html(DEMO_WATCH)
}

/// What the demo pages need to re-route by themselves: the control plane this edge
/// registers with (empty for a static edge) and its region.
async fn demo_config(State(state): State<Arc<WebRtcEdge>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "control_plane": state.config.control_plane,
        "region": state.config.region,
    }))
}

async fn demo_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], DEMO_SCRIPT)
}
