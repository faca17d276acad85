//! The analytics of the Go event API Pulse replaces (over `app_events`) and the
//! per-city ride figures of the ride pipeline (over `rides`). They need those
//! domains and fields in the spec (the default spec has them); otherwise 404.

use axum::Json;
use axum::extract::{RawQuery, State};
use pulse_model::spec::{FieldType, Filter};
use pulse_model::{Domain, parse_duration};
use pulse_sink::schema::ident;
use pulse_sink::verify::filter_sql;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::Api;
use crate::catalog::{OutCol, Render, render_row};
use crate::config::{MAX_ANALYTICS_LIMIT, MAX_DAYS};
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, rfc3339};
use crate::sql::{Param, Sql};

const DAY_MS: i64 = 86_400_000;
/// Longest `since` of the city figures.
const MAX_SINCE_MS: i64 = 31 * DAY_MS;

use pulse_model::now_ms;

/// The named fields of a domain (404 when the spec lacks one).
fn fields<'a>(api: &'a Api, domain: &str, names: &[&str], what: &str) -> Result<(&'a Domain, Vec<usize>), ApiError> {
    let unavailable = || ApiError::not_found(None, format!("{what} needs domain `{domain}` with fields {} in the spec", names.join(", ")));
    let d = api.inner.spec.domain(domain).ok_or_else(unavailable)?;
    let idx: Option<Vec<usize>> = names.iter().map(|n| d.field_index(n)).collect();
    Ok((d, idx.ok_or_else(unavailable)?))
}

fn from_clause(api: &Api, d: &Domain) -> String {
    let table = format!("{}.{}", ident(&api.inner.catalog.database), ident(&d.name));
    if d.mutable { format!("{table} FINAL") } else { table }
}

fn plain(names: &[&str]) -> Vec<OutCol> {
    names.iter().map(|n| OutCol { name: (*n).to_string(), exprs: Vec::new(), render: Render::Plain }).collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorsPerDay {
    /// The event name filter, if any.
    pub event_name: Option<String>,
    pub days: u64,
    /// Start of the first day counted (UTC midnight, RFC 3339).
    pub from: String,
    /// Days with events, oldest first: day (YYYY-MM-DD, UTC), total, errors, error_rate.
    #[schema(value_type = Vec<Object>)]
    pub per_day: Vec<Map<String, Value>>,
}

/// Errors and totals per day over the last N days (today included), from app_events.
#[utoipa::path(
    get,
    path = "/v1/analytics/errors",
    tag = "analytics",
    params(
        ("event_name" = Option<String>, Query, description = "Only events of this name"),
        ("days" = Option<u64>, Query, description = "Days to cover, today (UTC) included: 1 to 366, default 7"),
    ),
    responses(
        (status = 200, description = "Per-day totals; an event counts as an error when its `error` field is non-empty", body = ErrorsPerDay),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "The spec has no app_events domain with the needed fields", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn errors(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Json<ErrorsPerDay>, ApiError> {
    let p = Params::parse(query.as_deref(), &["event_name", "days"])?;
    let (d, f) = fields(&api, "app_events", &["event_name", "error"], "errors per day")?;
    let event_name = p.text("event_name")?;
    let days = p.bounded("days", 7, MAX_DAYS)?;
    let from = (now_ms().div_euclid(DAY_MS) - (days as i64 - 1)) * DAY_MS;
    let time = ident(&d.time_field().name);
    let err = filter_sql(d, &Filter::NonEmpty(f[1]));
    let mut sql = Sql::new(format!(
        "SELECT toString(toDate({time})) AS day, count() AS total, countIf({err}) AS errors, errors / total AS error_rate FROM {} WHERE {time} >= fromUnixTimestamp64Milli(",
        from_clause(&api, d)
    ));
    let ph = sql.bind("Int64", Param::I64(from));
    sql.push(&format!("{ph}, 'UTC')"));
    if let Some(n) = &event_name {
        let ph = sql.bind("String", Param::Str(n.clone()));
        sql.push(&format!(" AND {} = {ph}", ident("event_name")));
    }
    sql.push(" GROUP BY day ORDER BY day");
    let rows = api.inner.db.rows("analytics_errors", sql).await?;
    let cols = plain(&["day", "total", "errors", "error_rate"]);
    Ok(Json(ErrorsPerDay { event_name, days, from: rfc3339(from).unwrap_or_default(), per_day: rows.into_iter().map(|r| render_row(&cols, r)).collect() }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyRows {
    /// (session_id, event_name) pairs with the highest p95 latency first: events, p95_latency_ms (exact quantile).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
}

/// The 95th percentile latency per event name per session (exact), slowest first.
#[utoipa::path(
    get,
    path = "/v1/analytics/latency",
    tag = "analytics",
    params(
        ("limit" = Option<u64>, Query, description = "Most rows, default 100, capped at 1000"),
        ("event_name" = Option<String>, Query, description = "Only events of this name"),
    ),
    responses(
        (status = 200, description = "Rows ordered by p95_latency_ms descending, then session_id, event_name", body = LatencyRows),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "The spec has no app_events domain with the needed fields", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn latency(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Json<LatencyRows>, ApiError> {
    let p = Params::parse(query.as_deref(), &["limit", "event_name"])?;
    let (d, _) = fields(&api, "app_events", &["session_id", "event_name", "latency_ms"], "latency per session")?;
    let limit = p.limit("limit", 100, MAX_ANALYTICS_LIMIT)?;
    let (s, n, l) = (ident("session_id"), ident("event_name"), ident("latency_ms"));
    let mut sql = Sql::new(format!("SELECT {s}, {n}, count() AS events, quantileExact(0.95)({l}) AS p95 FROM {} WHERE 1 = 1", from_clause(&api, d)));
    if let Some(name) = p.text("event_name")? {
        let ph = sql.bind("String", Param::Str(name));
        sql.push(&format!(" AND {n} = {ph}"));
    }
    let lim = sql.bind("UInt64", Param::U64(limit));
    sql.push(&format!(" GROUP BY {s}, {n} ORDER BY p95 DESC, {s}, {n} LIMIT {lim}"));
    let rows = api.inner.db.rows("analytics_latency", sql).await?;
    let cols = plain(&["session_id", "event_name", "events", "p95_latency_ms"]);
    Ok(Json(LatencyRows { rows: rows.into_iter().map(|r| render_row(&cols, r)).collect() }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopErrorSessions {
    /// Sessions with at least one error, highest error rate first: session_id, events, errors, error_rate.
    #[schema(value_type = Vec<Object>)]
    pub sessions: Vec<Map<String, Value>>,
}

/// Sessions ranked by error rate (errors / events).
#[utoipa::path(
    get,
    path = "/v1/analytics/sessions/top-errors",
    tag = "analytics",
    params(
        ("limit" = Option<u64>, Query, description = "Most sessions, default 10, capped at 1000"),
        ("min_events" = Option<u64>, Query, description = "Only sessions with at least this many events (default 1)"),
    ),
    responses(
        (status = 200, description = "Ordered by error_rate descending, then errors descending, then session_id", body = TopErrorSessions),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "The spec has no app_events domain with the needed fields", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn top_errors(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Json<TopErrorSessions>, ApiError> {
    let p = Params::parse(query.as_deref(), &["limit", "min_events"])?;
    let (d, f) = fields(&api, "app_events", &["session_id", "error"], "sessions by error rate")?;
    let limit = p.limit("limit", 10, MAX_ANALYTICS_LIMIT)?;
    let min_events = p.limit("min_events", 1, u64::MAX)?;
    let s = ident("session_id");
    let err = filter_sql(d, &Filter::NonEmpty(f[1]));
    let mut sql = Sql::new(format!(
        "SELECT {s}, count() AS events, countIf({err}) AS errors, errors / events AS error_rate FROM {} GROUP BY {s} HAVING errors > 0 AND events >= ",
        from_clause(&api, d)
    ));
    let ph = sql.bind("UInt64", Param::U64(min_events));
    let lim = sql.bind("UInt64", Param::U64(limit));
    sql.push(&format!("{ph} ORDER BY error_rate DESC, errors DESC, {s} LIMIT {lim}"));
    let rows = api.inner.db.rows("analytics_top_errors", sql).await?;
    let cols = plain(&["session_id", "events", "errors", "error_rate"]);
    Ok(Json(TopErrorSessions { sessions: rows.into_iter().map(|r| render_row(&cols, r)).collect() }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CityFigures {
    pub since: String,
    /// Start of the period (now minus `since`), RFC 3339.
    pub from: String,
    /// Per city, by name: requests, completions, cancellations, completion_rate
    /// (completions / requests, null without requests), avg_fare (over every ride event).
    #[schema(value_type = Vec<Object>)]
    pub cities: Vec<Map<String, Value>>,
}

/// Ride figures per city over the recent past, from the raw rides.
#[utoipa::path(
    get,
    path = "/v1/analytics/cities",
    tag = "analytics",
    params(
        ("since" = Option<String>, Query, description = "How far back from now: a duration such as 15m, 1h, 1d (at most 31d), default 1h"),
    ),
    responses(
        (status = 200, description = "One row per city with rides in the period, by city name", body = CityFigures),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "The spec has no rides domain with the needed fields", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cities(State(api): State<Api>, RawQuery(query): RawQuery) -> Result<Json<CityFigures>, ApiError> {
    let p = Params::parse(query.as_deref(), &["since"])?;
    let (d, f) = fields(&api, "rides", &["city", "event_type", "estimated_fare"], "city figures")?;
    if let FieldType::Enum(values) = &d.fields[f[1]].ty
        && !["requested", "completed", "cancelled"].iter().all(|v| values.iter().any(|x| x == v))
    {
        return Err(ApiError::not_found(None, "city figures need event_type values requested, completed and cancelled"));
    }
    let since = p.text("since")?.unwrap_or_else(|| "1h".into());
    let since_ms = parse_duration(&since).map_err(|e| ApiError::bad("since", format!("`since`: {e}")))?.ms();
    if !(1..=MAX_SINCE_MS).contains(&since_ms) {
        return Err(ApiError::bad("since", "`since` must be between 1ms and 31d"));
    }
    let from = now_ms() - since_ms;
    let (c, t, fare, time) = (ident("city"), ident("event_type"), ident("estimated_fare"), ident(&d.time_field().name));
    let mut sql = Sql::new(String::new());
    let req = sql.bind("String", Param::Str("requested".into()));
    let com = sql.bind("String", Param::Str("completed".into()));
    let can = sql.bind("String", Param::Str("cancelled".into()));
    let fr = sql.bind("Int64", Param::I64(from));
    sql.push(&format!(
        "SELECT {c}, countIf({t} = {req}) AS requests, countIf({t} = {com}) AS completions, countIf({t} = {can}) AS cancellations, \
         if(requests = 0, NULL, completions / requests) AS completion_rate, avg({fare}) AS avg_fare \
         FROM {} WHERE {time} >= fromUnixTimestamp64Milli({fr}, 'UTC') GROUP BY {c} ORDER BY {c}",
        from_clause(&api, d)
    ));
    let rows = api.inner.db.rows("analytics_cities", sql).await?;
    let cols = plain(&["city", "requests", "completions", "cancellations", "completion_rate", "avg_fare"]);
    Ok(Json(CityFigures { since, from: rfc3339(from).unwrap_or_default(), cities: rows.into_iter().map(|r| render_row(&cols, r)).collect() }))
}
