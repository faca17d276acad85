//! `GET /v1/stream/{metric}`: Server-Sent Events of live window revisions.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::IntGauge;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::Api;
use crate::catalog::FilterType;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, text};
use crate::routes::windows::metric;
use crate::stream::StreamRow;

/// Counts a subscriber while its stream lives.
struct Subscriber(IntGauge);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
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
        ("api_key" = Option<String>, Query, description = "API key, for clients that cannot send an Authorization header (EventSource)"),
    ),
    responses(
        (status = 200, description = "text/event-stream of metric rows", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 503, description = "Streaming is not configured (no Kafka)", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn stream(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let m = metric(&api, &name)?;
    let mut allowed = m.group_names();
    allowed.push("api_key");
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
    let gauge = api.inner.metrics.sse_subscribers.clone();
    gauge.inc();
    let state = State_ {
        rx: hub.subscribe(),
        metric: m.name.clone(),
        filters,
        shutdown: api.inner.shutdown.clone(),
        skipped: api.inner.metrics.sse_skipped.clone(),
        hello: true,
        _guard: Subscriber(gauge),
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
