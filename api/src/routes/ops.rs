//! Open routes: health, readiness, Prometheus metrics, the OpenAPI document, the live page.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use pulse_ops::prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Api;
use crate::error::ErrorBody;

/// The live page: plain HTML and JavaScript, no build step.
pub const PAGE: &str = include_str!("../page/index.html");

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub service: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// The process is alive.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), service: "api".into() })
}

/// ClickHouse is reachable (checked every few seconds).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses((status = 200, description = "Ready", body = Ready), (status = 503, description = "ClickHouse unreachable", body = Ready))
)]
pub async fn ready(State(api): State<Api>) -> Response {
    if api.inner.ready.get() {
        Json(Ready { ready: true }).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(Ready { ready: false })).into_response()
    }
}

/// Prometheus metrics (text format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String), (status = 500, description = "Encoding failed", body = ErrorBody))
)]
pub async fn metrics(State(api): State<Api>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&api.inner.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => {
            tracing::error!("metrics encoding: {e}");
            crate::ApiError::Internal.into_response()
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document of this API", body = Object)))]
pub async fn openapi(State(api): State<Api>) -> Response {
    Json(crate::openapi::document(&api.inner.catalog)).into_response()
}

/// The live city page (HTML).
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
