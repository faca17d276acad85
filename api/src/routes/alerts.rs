//! Alerts: the rules' current firing alerts and their notification history,
//! from ClickHouse table `pulse_alerts` (written by the dataflow job).

use std::collections::BTreeMap;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::Api;
use crate::config::MAX_METRIC_LIMIT;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, rfc3339};
use crate::sql::{Param, Sql};

const DAY_MS: i64 = 86_400_000;

/// One alert: a rule's state for one group of its metric.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    pub rule: String,
    pub metric: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The group's fields and values.
    #[schema(value_type = Object)]
    pub group: BTreeMap<String, String>,
    pub severity: String,
    /// Every label (alertname, metric, severity, the group fields, the rule's labels).
    #[schema(value_type = Object)]
    pub labels: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub annotations: BTreeMap<String, String>,
    /// Alertmanager fingerprint of the labels.
    pub fingerprint: String,
    /// Event time the run of windows satisfying the rule began.
    pub since: String,
    /// Event time it fired (the end of the window that completed `for`).
    pub starts_at: String,
    /// Event time it resolved (resolved only).
    pub ends_at: Option<String>,
    pub value: Option<f64>,
    pub guard_value: Option<f64>,
    /// Wall-clock time the job decided it.
    pub recorded_at: String,
}

/// Active alerts and the history of notifications.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alerts {
    /// Alerts firing now, oldest first.
    pub active: Vec<AlertView>,
    /// Firing and resolved notifications recorded in [`from`, `to`), newest first.
    pub history: Vec<AlertView>,
    pub from: String,
    pub to: String,
    /// True when the history has more than `limit` notifications (the newest are returned).
    pub truncated: bool,
}

/// `{state}`: the `status` column (active) or the `event` column (history).
const COLUMNS: &str = "toString(rule), toString(metric), toString({state}), group_key, toString(severity), labels, annotations, fingerprint, \
     toUnixTimestamp64Milli(since), toUnixTimestamp64Milli(starts_at), toUnixTimestamp64Milli(ends_at), value, guard_value, toUnixTimestamp64Milli(recorded_at)";

fn view(api: &Api, row: Vec<Value>) -> Option<AlertView> {
    let s = |i: usize| row.get(i).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let ms = |i: usize| row.get(i).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
    let f = |i: usize| row.get(i).and_then(Value::as_f64);
    let labels: BTreeMap<String, String> = serde_json::from_str(&s(5)).unwrap_or_default();
    let annotations: BTreeMap<String, String> = serde_json::from_str(&s(6)).unwrap_or_default();
    let rule = s(0);
    let spec = api.spec();
    let group = spec
        .alerts
        .iter()
        .find(|a| a.name == rule)
        .map(|a| {
            let m = &spec.metrics[a.metric];
            let d = spec.metric_domain(m);
            m.group_by.iter().filter_map(|&g| labels.get(&d.fields[g].name).map(|v| (d.fields[g].name.clone(), v.clone()))).collect()
        })
        .unwrap_or_default();
    Some(AlertView {
        rule,
        metric: s(1),
        status: s(2),
        group,
        severity: s(4),
        labels,
        annotations,
        fingerprint: s(7),
        since: rfc3339(ms(8)?)?,
        starts_at: rfc3339(ms(9)?)?,
        ends_at: ms(10).and_then(rfc3339),
        value: f(11),
        guard_value: f(12),
        recorded_at: rfc3339(ms(13)?)?,
    })
}

/// Alerts evaluated by the dataflow job: active now, and the history over a period.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "alerts",
    params(
        ("rule" = Option<String>, Query, description = "Only this rule's alerts"),
        ("from" = Option<String>, Query, description = "History from this time (when the job decided): RFC 3339 or epoch ms; default `to` minus 24 h"),
        ("to" = Option<String>, Query, description = "History before this time; default now (an empty range has an empty history)"),
        ("limit" = Option<u64>, Query, description = "Most history entries, default 1000, capped at 10000; the newest are kept"),
    ),
    responses(
        (status = 200, description = "Active alerts and notification history", body = Alerts),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key is scoped (alerts span every metric: unscoped keys only)", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn alerts(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Json<Alerts>, ApiError> {
    let p = Params::parse(query.as_deref(), &["rule", "from", "to", "limit"])?;
    // Any `from`..`to` is accepted (the table keeps 90 days; `limit` bounds the answer);
    // an empty or inverted range has an empty history.
    let to = p.time("to")?.unwrap_or_else(pulse_model::now_ms);
    let from = p.time("from")?.unwrap_or(to.saturating_sub(DAY_MS));
    let limit = p.limit("limit", 1000, MAX_METRIC_LIMIT)?;
    let rule = p.text("rule")?;
    let table =
        format!("{}.{}", pulse_clickhouse::schema::ident(&api.inner.catalog.database), pulse_clickhouse::schema::ident(pulse_clickhouse::schema::ALERTS_TABLE));

    // Active: the newest recorded state of each (job, rule, group) says firing.
    let mut sql = Sql::new(format!("SELECT {} FROM (SELECT * FROM {table} WHERE 1 = 1", COLUMNS.replace("{state}", "status")));
    if let Some(r) = &rule {
        let ph = sql.bind("String", Param::Str(r.clone()));
        sql.push(&format!(" AND rule = {ph}"));
    }
    sql.push(" ORDER BY seq DESC LIMIT 1 BY consumer_group, rule, group_key) WHERE status = 'firing' ORDER BY starts_at, rule, group_key LIMIT 10000");
    let active = api.inner.db.rows("alerts_active", sql).await?;

    let mut sql = Sql::new(format!("SELECT {} FROM {table} WHERE event IN ('firing', 'resolved')", COLUMNS.replace("{state}", "event")));
    if let Some(r) = &rule {
        let ph = sql.bind("String", Param::Str(r.clone()));
        sql.push(&format!(" AND rule = {ph}"));
    }
    let f = sql.bind("Int64", Param::I64(from));
    let t = sql.bind("Int64", Param::I64(to));
    sql.push(&format!(" AND recorded_at >= fromUnixTimestamp64Milli({f}, 'UTC') AND recorded_at < fromUnixTimestamp64Milli({t}, 'UTC')"));
    let lim = sql.bind("UInt64", Param::U64(limit + 1));
    sql.push(&format!(" ORDER BY seq DESC LIMIT {lim}"));
    let mut history = if from < to { api.inner.db.rows("alerts_history", sql).await? } else { Vec::new() };
    let truncated = history.len() as u64 > limit;
    history.truncate(limit as usize);
    Ok(Json(Alerts {
        active: active.into_iter().filter_map(|r| view(&api, r)).collect(),
        history: history.into_iter().filter_map(|r| view(&api, r)).collect(),
        from: rfc3339(from).unwrap_or_default(),
        to: rfc3339(to).unwrap_or_default(),
        truncated,
    }))
}

/// How often a stream looks for new notifications in `pulse_alerts`.
const STREAM_POLL: Duration = Duration::from_secs(1);

struct AlertStream {
    api: Api,
    rule: Option<String>,
    last_seq: u64,
    hello: bool,
    queued: VecDeque<String>,
    _guard: crate::routes::stream::Subscriber,
}

/// New firing/resolved notifications after `last_seq`, as (seq, JSON).
async fn newer(api: &Api, rule: Option<&str>, last_seq: u64) -> Result<Vec<(u64, String)>, ApiError> {
    let table =
        format!("{}.{}", pulse_clickhouse::schema::ident(&api.inner.catalog.database), pulse_clickhouse::schema::ident(pulse_clickhouse::schema::ALERTS_TABLE));
    let mut sql = Sql::new(format!("SELECT {}, seq FROM {table} WHERE event IN ('firing', 'resolved')", COLUMNS.replace("{state}", "event")));
    let ph = sql.bind("UInt64", Param::U64(last_seq));
    sql.push(&format!(" AND seq > {ph}"));
    if let Some(r) = rule {
        let ph = sql.bind("String", Param::Str(r.to_string()));
        sql.push(&format!(" AND rule = {ph}"));
    }
    sql.push(" ORDER BY seq LIMIT 1000");
    let rows = api.inner.db.rows("alerts_stream", sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| {
            let seq = r.pop().and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))?;
            let json = serde_json::to_string(&view(api, r)?).ok()?;
            Some((seq, json))
        })
        .collect())
}

/// Firing and resolved notifications as Server-Sent Events, as the job records them.
///
/// Each event's data is one alert shaped as the `history` entries of
/// `GET /v1/alerts`; `: subscribed` comes first, keep-alive comments follow
/// while idle. Notifications start with the connection (read `GET /v1/alerts`
/// for the active ones first); they arrive within about a second of being
/// recorded. Authentication as for `/v1/stream/{metric}`: the Authorization
/// header, or `?token=` from `POST /v1/stream/alerts/token`; unscoped keys only.
#[utoipa::path(
    get,
    path = "/v1/stream/alerts",
    tag = "alerts",
    params(
        ("rule" = Option<String>, Query, description = "Only this rule's notifications"),
        ("token" = Option<String>, Query, description = "A token from POST /v1/stream/alerts/token, for clients that cannot send an Authorization header (EventSource)"),
    ),
    responses(
        (status = 200, description = "text/event-stream of alert notifications", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key or token", body = ErrorBody),
        (status = 403, description = "The key is scoped (alerts span every metric: unscoped keys only)", body = ErrorBody),
        (status = 429, description = "Rate limit of this key exceeded", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable, or the server's stream cap is reached (Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = []))
)]
pub async fn stream(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = Params::parse(query.as_deref(), &["rule", "token"])?;
    let rule = p.text("rule")?;
    // Start after the newest notification recorded so far.
    let table =
        format!("{}.{}", pulse_clickhouse::schema::ident(&api.inner.catalog.database), pulse_clickhouse::schema::ident(pulse_clickhouse::schema::ALERTS_TABLE));
    let last_seq = api
        .inner
        .db
        .rows("alerts_stream_start", Sql::new(format!("SELECT max(seq) FROM {table}")))
        .await?
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
        .unwrap_or(0);
    let open = Arc::clone(&api.inner.streams);
    let max = api.inner.cfg.max_streams;
    if open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
        return Err(ApiError::Unavailable { message: format!("this server has {max} open streams, its maximum; retry later"), retry_after: 5 });
    }
    let gauge = api.inner.metrics.sse_subscribers.clone();
    gauge.inc();
    let guard = crate::routes::stream::Subscriber(gauge, open);
    let state = AlertStream { api, rule, last_seq, hello: true, queued: VecDeque::new(), _guard: guard };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.hello {
            st.hello = false;
            return Some((Ok(Event::default().comment("subscribed")), st));
        }
        loop {
            if let Some(data) = st.queued.pop_front() {
                return Some((Ok(Event::default().data(data)), st));
            }
            let shutdown = st.api.inner.shutdown.clone();
            tokio::select! {
                _ = shutdown.wait() => return None,
                _ = tokio::time::sleep(STREAM_POLL) => {}
            }
            match newer(&st.api, st.rule.as_deref(), st.last_seq).await {
                Ok(rows) => {
                    for (seq, json) in rows {
                        st.last_seq = st.last_seq.max(seq);
                        st.queued.push_back(json);
                    }
                }
                Err(_) => tracing::debug!("alert stream: ClickHouse not answering; retrying"),
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
