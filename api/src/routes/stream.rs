//! `GET /v1/stream/{metric}`: Server-Sent Events of live window revisions.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::IntGauge;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::Api;
use crate::auth::Caller;
use crate::catalog::FilterType;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, rfc3339, text};
use crate::routes::windows::metric;
use crate::stream::StreamRow;

/// Counts a subscriber while its stream lives.
pub(crate) struct Subscriber(pub(crate) IntGauge, pub(crate) Arc<AtomicUsize>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream token.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamToken {
    /// Pass as `?token=` to `GET /v1/stream/{metric}`; null when the server has no keys (no token needed).
    pub token: Option<String>,
    /// When the token stops being accepted for new connections (RFC 3339); open streams go on.
    pub expires_at: String,
    /// Seconds until then.
    pub expires_in: u64,
}

/// A short-lived token for one metric's stream, signed with the caller's key:
/// browsers' EventSource cannot send an Authorization header, and a long-lived
/// key must not appear in a URL (proxy logs, history).
#[utoipa::path(
    post,
    path = "/v1/stream/{metric}/token",
    tag = "metrics",
    params(("metric" = String, Path, description = "Metric name from the spec")),
    responses(
        (status = 200, description = "A token for GET /v1/stream/{metric}?token=", body = StreamToken),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key is scoped to other metrics", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 429, description = "Rate limit of this key exceeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn token(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    caller: Option<Extension<Caller>>,
) -> Result<Json<StreamToken>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    // `alerts`: the token of `GET /v1/stream/alerts`.
    let scope = if name == "alerts" && api.spec().metric("alerts").is_none() { name } else { metric(&api, &name)?.name.clone() };
    let ttl = api.inner.cfg.token_ttl;
    let expires = pulse_model::now_ms() + ttl.as_millis() as i64;
    let caller = caller.map_or(Caller::Anonymous, |Extension(c)| c);
    let token = api.inner.cfg.keys.sign_token(caller, &scope, expires);
    Ok(Json(StreamToken { token, expires_at: rfc3339(expires).unwrap_or_default(), expires_in: ttl.as_secs() }))
}

struct State_ {
    rx: broadcast::Receiver<Arc<StreamRow>>,
    metric: String,
    filters: Vec<(String, String)>,
    shutdown: Shutdown,
    skipped: pulse_ops::prometheus::IntCounter,
    hello: bool,
    _guard: Subscriber,
}

/// Live revisions of a metric's windows as Server-Sent Events.
///
/// Each event's data is one row shaped as `GET /v1/metrics/{metric}` rows plus
/// `metric`; a comment line `: subscribed` comes first, keep-alive comments
/// follow while idle. Rows start with the connection (no history: read
/// `/v1/metrics/{metric}/latest` first). A client too slow to keep up skips rows.
#[utoipa::path(
    get,
    path = "/v1/stream/{metric}",
    tag = "metrics",
    params(
        ("metric" = String, Path, description = "Metric name from the spec"),
        ("token" = Option<String>, Query, description = "A token from POST /v1/stream/{metric}/token, for clients that cannot send an Authorization header (EventSource)"),
    ),
    responses(
        (status = 200, description = "text/event-stream of metric rows", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key or token", body = ErrorBody),
        (status = 403, description = "The key is scoped to other metrics", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 429, description = "Rate limit of this key exceeded", body = ErrorBody),
        (status = 503, description = "Streaming is not configured (no Kafka), or the server's stream cap is reached (Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = []))
)]
pub async fn stream(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let m = metric(&api, &name)?;
    let mut allowed = m.group_names();
    allowed.push("token");
    let p = Params::parse(query.as_deref(), &allowed)?;
    let mut filters = Vec::new();
    for g in &m.groups {
        if let Some(v) = p.get(&g.name) {
            let v = text(&g.name, v)?;
            let ok = match g.filter {
                FilterType::Str => true,
                FilterType::Int => v.parse::<i64>().is_ok(),
                FilterType::Bool => v == "true" || v == "false",
            };
            if !ok {
                return Err(ApiError::bad(g.name.clone(), format!("`{}` does not fit the field's type", g.name)));
            }
            filters.push((g.name.clone(), v));
        }
    }
    let hub = api
        .inner
        .hub
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable { message: "live streams are not configured on this server (no Kafka)".into(), retry_after: 30 })?;
    let open = Arc::clone(&api.inner.streams);
    let max = api.inner.cfg.max_streams;
    if open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
        return Err(ApiError::Unavailable { message: format!("this server has {max} open streams, its maximum; retry later"), retry_after: 5 });
    }
    let gauge = api.inner.metrics.sse_subscribers.clone();
    gauge.inc();
    let state = State_ {
        rx: hub.subscribe(),
        metric: m.name.clone(),
        filters,
        shutdown: api.inner.shutdown.clone(),
        skipped: api.inner.metrics.sse_skipped.clone(),
        hello: true,
        _guard: Subscriber(gauge, open),
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.hello {
            st.hello = false;
            return Some((Ok(Event::default().comment("subscribed")), st));
        }
        loop {
            tokio::select! {
                _ = st.shutdown.wait() => return None,
                r = st.rx.recv() => match r {
                    Ok(row) if row.metric == st.metric && row.matches(&st.filters) => {
                        return Some((Ok(Event::default().data(row.data.as_str())), st));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => st.skipped.inc_by(n),
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(hub.keep_alive)))
}
