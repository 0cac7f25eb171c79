//! The edge's HTTP port: liveness, readiness and Prometheus metrics, beside the
//! routes of higher modules (WHIP/WHEP and the demo pages).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ferry_net::http_server::HttpServerMetrics;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio_util::sync::CancellationToken;

use crate::relay::EdgeState;

#[derive(Clone)]
struct Http {
    state: Arc<EdgeState>,
    metrics: Arc<MetricsRegistry>,
}

/// Serves until `shutdown`, with `routes` merged in, within the configured limits
/// ([`ferry_net::http_server`]). Errors are logged; the data plane does not depend on it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<EdgeState>,
    metrics: Arc<MetricsRegistry>,
    http_metrics: HttpServerMetrics,
    routes: Router,
    shutdown: CancellationToken,
) {
    let limits = state.config.http_limits;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Http { state, metrics })
        .merge(routes);
    ferry_net::http_server::serve(listener, None, app, limits, http_metrics, shutdown).await;
}

/// Alive: the process answers. Never depends on peers or the control plane.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready: serving QUIC and not draining.
async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    if http.state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ready" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "draining" })))
    }
}

async fn metrics_text(State(http): State<Http>) -> impl IntoResponse {
    let m = &http.state.metrics;
    m.tasks.set(i64::try_from(http.state.tracker.len()).unwrap_or(i64::MAX));
    m.buffered_bytes.set(i64::try_from(http.state.registry.buffered_bytes()).unwrap_or(i64::MAX));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &http.metrics) {
        Ok(()) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
