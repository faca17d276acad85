//! The routes. `ROUTES` is the one list the router is built from; the OpenAPI
//! document must describe exactly these (a test checks both directions).

pub mod alerts;
pub mod analytics;
pub mod events;
pub mod ops;
pub mod stream;
pub mod windows;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::middleware;
use axum::routing::{MethodRouter, get};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Api;
use crate::error::ApiError;

/// Whether a route needs an API key (when keys are configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Key,
}

/// Every route: (method, path pattern, access). Path patterns use `{param}`,
/// the same syntax as OpenAPI.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/v1/events/{domain}/{id}", Access::Key),
    ("GET", "/v1/events/{domain}", Access::Key),
    ("GET", "/v1/metrics/{metric}", Access::Key),
    ("GET", "/v1/metrics/{metric}/latest", Access::Key),
    ("GET", "/v1/analytics/errors", Access::Key),
    ("GET", "/v1/analytics/latency", Access::Key),
    ("GET", "/v1/analytics/sessions/top-errors", Access::Key),
    ("GET", "/v1/analytics/cities", Access::Key),
    ("GET", "/v1/alerts", Access::Key),
    ("GET", "/v1/stream/alerts", Access::Key),
    ("GET", "/v1/stream/{metric}", Access::Key),
    ("POST", "/v1/stream/{metric}/token", Access::Key),
    ("GET", "/health", Access::Open),
    ("GET", "/ready", Access::Open),
    ("GET", "/metrics", Access::Open),
    ("GET", "/openapi.json", Access::Open),
    ("GET", "/", Access::Open),
];

fn handler(path: &str) -> Option<MethodRouter<Api>> {
    Some(match path {
        "/v1/events/{domain}/{id}" => get(events::by_id),
        "/v1/events/{domain}" => get(events::timeline),
        "/v1/metrics/{metric}" => get(windows::rows),
        "/v1/metrics/{metric}/latest" => get(windows::latest),
        "/v1/analytics/errors" => get(analytics::errors),
        "/v1/analytics/latency" => get(analytics::latency),
        "/v1/analytics/sessions/top-errors" => get(analytics::top_errors),
        "/v1/analytics/cities" => get(analytics::cities),
        "/v1/alerts" => get(alerts::alerts),
        "/v1/stream/alerts" => get(alerts::stream),
        "/v1/stream/{metric}" => get(stream::stream),
        "/v1/stream/{metric}/token" => axum::routing::post(stream::token),
        "/health" => get(ops::health),
        "/ready" => get(ops::ready),
        "/metrics" => get(ops::metrics),
        "/openapi.json" => get(ops::openapi),
        "/" => get(ops::page),
        _ => return None,
    })
}

pub fn router(api: Api) -> Router {
    let mut open: Router<Api> = Router::new();
    let mut keyed: Router<Api> = Router::new();
    for &(_, path, access) in ROUTES {
        let Some(h) = handler(path) else {
            tracing::error!(path, "route without a handler (programming error)");
            continue;
        };
        match access {
            Access::Open => open = open.route(path, h),
            Access::Key => keyed = keyed.route(path, h),
        }
    }
    let keyed = keyed.route_layer(middleware::from_fn_with_state(api.clone(), crate::auth::require_key));
    let mut app = open
        .merge(keyed)
        .route_layer(middleware::from_fn_with_state(api.clone(), crate::metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    if let Some(cors) = cors_layer(&api.inner.cfg.cors_origins) {
        app = app.layer(cors);
    }
    app.with_state(api)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring an invalid CORS origin");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::CACHE_CONTROL,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found(None, "no such route (see /openapi.json)")
}

async fn method_not_allowed() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(crate::error::ErrorBody { error: "method not allowed: the read API answers GET (and POST for stream tokens)".into(), parameter: None }),
    )
        .into_response()
}
