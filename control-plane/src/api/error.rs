//! API errors: always `{"error": {"code", "message"}}` with the right status.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::node::NodeError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NoLeader => Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string()),
            NodeError::Timeout(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_committed", e.to_string())
            }
            NodeError::Busy => Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            NodeError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string()),
            NodeError::Rejected(m) => Self::new(StatusCode::CONFLICT, "rejected", m),
            NodeError::RestoreRefused(m) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", m),
            NodeError::Storage { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", ferry_net::Chain(&e).to_string())
            }
            NodeError::Incompatible { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "incompatible", e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = match &e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "bad_request" };
        Self::new(status, code, e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        // Reading a raw body fails when it is over the limit (or the connection broke).
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request(e.body_text())
    }
}
