//! Read API keys ([`pulse_ops::auth`]): bearer tokens compared in constant
//! time, scoped by metric or domain, rate limited per key. The SSE endpoint
//! also takes a short-lived token signed with the caller's key
//! (`POST /v1/stream/{metric}/token`, then `GET /v1/stream/{metric}?token=`),
//! since EventSource cannot send headers and a long-lived key must not sit in
//! a URL. Key text is never logged or printed.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use pulse_ops::auth::{ApiKeys, AuthError, Caller, KeyError, RateLimiter};

use crate::Api;
use crate::error::ApiError;

/// What a `/v1` path reads, for scoped keys: a metric, a domain, or (`None`) several.
pub fn scope_of(path: &str) -> Option<(&'static str, &str)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "metrics", m, ..] | ["v1", "stream", m, ..] => Some(("metric", m)),
        ["v1", "events", d, ..] => Some(("domain", d)),
        ["v1", "analytics", "cities"] => Some(("domain", "rides")),
        ["v1", "analytics", ..] => Some(("domain", "app_events")),
        _ => None,
    }
}

/// The `token` query parameter, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    crate::params::parse_query(query?).ok()?.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v)
}

/// Middleware of the `/v1` routes: 401 without a valid key (or stream token),
/// 403 outside the key's scope, 429 beyond its rate. The caller goes into the
/// request's extensions.
pub async fn require_key(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    match check(&api, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn check(api: &Api, req: &Request) -> Result<Caller, ApiError> {
    let keys = &api.inner.cfg.keys;
    let path = req.uri().path();
    let scope = scope_of(path);
    let token = (req.method() == Method::GET && path.starts_with("/v1/stream/")).then(|| query_token(req.uri().query())).flatten();
    let caller = match (token, scope) {
        (Some(t), Some((_, metric))) => keys.verify_token(&t, metric, pulse_model::now_ms()),
        _ => keys.authenticate(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())),
    }
    .map_err(|e| match e {
        AuthError::Forbidden(what) => ApiError::Forbidden(what),
        e => ApiError::Unauthorized(e),
    })?;
    let allowed = match scope {
        Some((_, name)) => keys.allows(caller, name),
        None => keys.unrestricted(caller),
    };
    if !allowed {
        return Err(ApiError::Forbidden(scope.map_or("resource", |(what, _)| what)));
    }
    if let Some(limiter) = &api.inner.limiter
        && let Err(wait) = limiter.take(caller, 1)
    {
        return Err(ApiError::RateLimited { retry_after: wait.as_secs_f64().ceil() as u64 });
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_of_paths() {
        assert_eq!(scope_of("/v1/metrics/city_metrics/latest"), Some(("metric", "city_metrics")));
        assert_eq!(scope_of("/v1/stream/city_supply/token"), Some(("metric", "city_supply")));
        assert_eq!(scope_of("/v1/events/rides/r-1"), Some(("domain", "rides")));
        assert_eq!(scope_of("/v1/analytics/sessions/top-errors"), Some(("domain", "app_events")));
        assert_eq!(scope_of("/v1/analytics/cities"), Some(("domain", "rides")));
        assert_eq!(scope_of("/v1/other"), None);
    }

    #[test]
    fn query_tokens() {
        assert_eq!(query_token(Some("city=Lima&token=pt1%21x")).as_deref(), Some("pt1!x"));
        assert_eq!(query_token(Some("city=Lima")), None);
        assert_eq!(query_token(None), None);
    }
}
