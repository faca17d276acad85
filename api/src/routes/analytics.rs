//! The analytics of the Go event API Pulse replaces (over `app_events`) and the
//! per-city ride figures of the ride pipeline (over `rides`). They need those
//! domains and fields in the spec (the default spec has them); otherwise 404.
//!
//! Every query reads its raw table with `FINAL`: raw tables are
//! ReplacingMergeTrees keyed by event id (see `pulse_clickhouse::schema::raw_table`),
//! and a sink replay inserts the same rows again, which only merges (or
//! `FINAL`) collapse; without it counts double until ClickHouse merges. Every
//! query is bounded in event time: `days` (errors), `since` (cities), or
//! `from`/`to` (latency and sessions; the last 24 hours by default, at most 31 days).
//!
//! The p95 latency ranking is pruned (see `latency_sql`): only the groups of
//! the sessions that hold one of the slowest stored rows of the period get
//! their exact p95 computed, and the answer is used only when it
//! proves that no other group can rank among the rows returned (otherwise a
//! larger candidate set, then the full query, answers). Answers stay exact.

use axum::Json;
use axum::extract::{RawQuery, State};
use pulse_clickhouse::recompute::filter_sql;
use pulse_clickhouse::schema::ident;
use pulse_model::spec::{FieldType, Filter};
use pulse_model::{Domain, parse_duration};
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
/// Period of the session analytics when `from` and `to` are absent.
pub const DEFAULT_RANGE_MS: i64 = DAY_MS;
/// Longest `from`..`to` of the session analytics.
pub const MAX_RANGE_MS: i64 = 31 * DAY_MS;

use pulse_model::now_ms;

/// The named fields of a domain (404 when the spec lacks one).
fn fields<'a>(api: &'a Api, domain: &str, names: &[&str], what: &str) -> Result<(&'a Domain, Vec<usize>), ApiError> {
    let unavailable = || ApiError::not_found(None, format!("{what} needs domain `{domain}` with fields {} in the spec", names.join(", ")));
    let d = api.inner.spec.domain(domain).ok_or_else(unavailable)?;
    let idx: Option<Vec<usize>> = names.iter().map(|n| d.field_index(n)).collect();
    Ok((d, idx.ok_or_else(unavailable)?))
}

/// The raw table read exactly: `FINAL` collapses replayed rows (every raw table
/// is a ReplacingMergeTree keyed by event id) and, for mutable domains, keeps
/// each event's latest version and hides deleted ones.
fn from_clause(api: &Api, d: &Domain) -> String {
    format!("{}.{} FINAL", ident(&api.inner.catalog.database), ident(&d.name))
}

/// Lets a `FINAL` read skip the replacing merge of a partition that is one
/// merged part (the usual state of older data): ClickHouse then only drops the
/// `is_deleted` rows of that part. Exact for Pulse's raw tables because rows
/// that replace one another always share a partition: mutable tables are not
/// partitioned, immutable ones by the day of their time column, which is part
/// of the ordering key. Parts of one partition are still merged as usual.
fn final_without_cross_partition_merge(sql: &mut Sql) {
    sql.setting("do_not_merge_across_partitions_select_final", "1");
}

/// The `[from, to)` period of a query: `to` defaults to now, `from` to `to`
/// minus [`DEFAULT_RANGE_MS`]; `from` must be before `to`, at most
/// [`MAX_RANGE_MS`] apart (a 400 naming the parameter otherwise).
pub fn time_range(p: &Params, now: i64) -> Result<(i64, i64), ApiError> {
    let to = p.time("to")?.unwrap_or(now);
    let from = match p.time("from")? {
        Some(f) => f,
        None => to.saturating_sub(DEFAULT_RANGE_MS).max(0),
    };
    if from >= to {
        return Err(ApiError::bad("from", "`from` must be before `to`"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::bad("from", format!("`from` to `to` spans more than {} days (the most one query may cover)", MAX_RANGE_MS / DAY_MS)));
    }
    Ok((from, to))
}

/// Binds `[from, to)` and returns the condition on the domain's time field.
fn period(sql: &mut Sql, d: &Domain, (from, to): (i64, i64)) -> String {
    let time = ident(&d.time_field().name);
    let f = sql.bind("Int64", Param::I64(from));
    let t = sql.bind("Int64", Param::I64(to));
    format!("{time} >= fromUnixTimestamp64Milli({f}, 'UTC') AND {time} < fromUnixTimestamp64Milli({t}, 'UTC')")
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
    /// The period covered (RFC 3339): events with `from` <= time < `to`.
    pub from: String,
    pub to: String,
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
        ("from" = Option<String>, Query, description = "Start of the period (RFC 3339 or epoch ms), default `to` minus 24 hours"),
        ("to" = Option<String>, Query, description = "End of the period, exclusive (RFC 3339 or epoch ms), default now; at most 31 days after `from`"),
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
    let p = Params::parse(query.as_deref(), &["limit", "event_name", "from", "to"])?;
    let (d, _) = fields(&api, "app_events", &["session_id", "event_name", "latency_ms"], "latency per session")?;
    let limit = p.limit("limit", 100, MAX_ANALYTICS_LIMIT)?;
    let range = time_range(&p, now_ms())?;
    let event_name = p.text("event_name")?;
    let mut rows = None;
    for candidates in latency_candidates(limit) {
        let sql = latency_sql(&api, d, range, event_name.as_deref(), limit, Some(candidates));
        let found = api.inner.db.rows("analytics_latency", sql).await?;
        if latency_certified(&found, limit, candidates) {
            rows = Some(found);
            break;
        }
    }
    let rows = match rows {
        Some(r) => r,
        None => api.inner.db.rows("analytics_latency", latency_sql(&api, d, range, event_name.as_deref(), limit, None)).await?,
    };
    let cols = plain(&["session_id", "event_name", "events", "p95_latency_ms"]);
    Ok(Json(LatencyRows {
        from: rfc3339(range.0).unwrap_or_default(),
        to: rfc3339(range.1).unwrap_or_default(),
        rows: rows
            .into_iter()
            .map(|mut r| {
                r.truncate(4);
                render_row(&cols, r)
            })
            .collect(),
    }))
}

/// How many of the slowest stored rows the pruned latency query starts from,
/// for `limit` answer rows: a first try, a larger second; then the full query.
fn latency_candidates(limit: u64) -> [u64; 2] {
    [limit * 4 + 64, limit * 64 + 1024]
}

/// The p95 latency query. With `candidates` = N it is pruned, and its answer is
/// the exact one whenever [`latency_certified`] accepts it:
///
/// * one scan takes the N slowest *stored* rows of the period (every version,
///   replays included: no `FINAL`, so ClickHouse reads three columns and can
///   use `PREWHERE`); θ is the lowest latency among them, and their session ids
///   are the candidate sessions;
/// * every stored row of the period slower than θ is among those N, and each
///   current row is a stored row; so a session that is not a candidate has no
///   current event slower than θ in the period, and the p95 of each of its
///   groups (one of its latencies) is at most θ. Stale versions only add
///   candidates;
/// * the exact p95 of every (session_id, event_name) group of the candidate
///   sessions is computed over the current rows (`FINAL`) of the period;
/// * if the last of the `limit` rows has p95 > θ, no group left out can rank
///   among them (a tie at θ is not enough: a group left out may share it and
///   sort first by session id). If the period holds fewer than N stored rows,
///   every session was a candidate and the answer is complete anyway.
///
/// Columns: session_id, event_name, events, p95, then θ and the number of rows
/// θ was taken from (NULL in the full query).
fn latency_sql(api: &Api, d: &Domain, range: (i64, i64), event_name: Option<&str>, limit: u64, candidates: Option<u64>) -> Sql {
    let (s, n, l) = (ident("session_id"), ident("event_name"), ident("latency_ms"));
    let table = format!("{}.{}", ident(&api.inner.catalog.database), ident(&d.name));
    let final_rows = from_clause(api, d);
    let mut sql = Sql::new(String::new());
    // The `WHERE` of every scan: the period and the optional event name, bound once.
    let mut filter = period(&mut sql, d, range);
    if let Some(name) = event_name {
        let ph = sql.bind("String", Param::Str(name.to_string()));
        filter.push_str(&format!(" AND {n} = {ph}"));
    }
    let lim = sql.bind("UInt64", Param::U64(limit));
    match candidates {
        Some(c) => {
            let top = sql.bind("UInt64", Param::U64(c));
            sql.push(&format!(
                "WITH (SELECT (min(v), count(), groupUniqArray(k)) FROM (SELECT {l} AS v, {s} AS k FROM {table} WHERE {filter} ORDER BY v DESC LIMIT {top})) AS pulse_top \
                 SELECT {s}, {n}, count() AS events, quantileExact(0.95)({l}) AS p95, pulse_top.1 AS theta, pulse_top.2 AS seen \
                 FROM {final_rows} WHERE {filter} AND has(pulse_top.3, {s}) \
                 GROUP BY {s}, {n} ORDER BY p95 DESC, {s}, {n} LIMIT {lim}"
            ));
        }
        None => {
            sql.push(&format!(
                "SELECT {s}, {n}, count() AS events, quantileExact(0.95)({l}) AS p95, NULL AS theta, NULL AS seen FROM {final_rows} WHERE {filter} \
                 GROUP BY {s}, {n} ORDER BY p95 DESC, {s}, {n} LIMIT {lim}"
            ));
        }
    }
    final_without_cross_partition_merge(&mut sql);
    sql
}

/// Whether a pruned latency answer (see [`latency_sql`]) is the exact one:
/// θ was taken from every stored row of the period (fewer than `candidates`),
/// or the answer has `limit` rows and the last one's p95 is above θ. Otherwise
/// a larger candidate set, or the full query, answers.
fn latency_certified(rows: &[Vec<Value>], limit: u64, candidates: u64) -> bool {
    let Some(last) = rows.last() else {
        // No candidate group with current rows: the period may still hold
        // groups below θ (their slow rows were stale versions); the full query decides.
        return false;
    };
    let (p95, theta, seen) = (last.get(3).and_then(Value::as_f64), last.get(4).and_then(Value::as_f64), last.get(5).and_then(Value::as_u64));
    match (p95, theta, seen) {
        (_, _, Some(seen)) if seen < candidates => true,
        (Some(p95), Some(theta), _) => rows.len() as u64 >= limit && p95 > theta,
        _ => false,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopErrorSessions {
    /// The period covered (RFC 3339): events with `from` <= time < `to`.
    pub from: String,
    pub to: String,
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
        ("from" = Option<String>, Query, description = "Start of the period (RFC 3339 or epoch ms), default `to` minus 24 hours"),
        ("to" = Option<String>, Query, description = "End of the period, exclusive (RFC 3339 or epoch ms), default now; at most 31 days after `from`"),
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
    let p = Params::parse(query.as_deref(), &["limit", "min_events", "from", "to"])?;
    let (d, f) = fields(&api, "app_events", &["session_id", "error"], "sessions by error rate")?;
    let limit = p.limit("limit", 10, MAX_ANALYTICS_LIMIT)?;
    let min_events = p.limit("min_events", 1, u64::MAX)?;
    let range = time_range(&p, now_ms())?;
    let s = ident("session_id");
    let err = filter_sql(d, &Filter::NonEmpty(f[1]));
    let table = format!("{}.{}", ident(&api.inner.catalog.database), ident(&d.name));
    // Only sessions with an error count, and a session with a current error in
    // the period has a *stored* error row there (every current row is a stored
    // row): the sessions of the period's stored error rows (no `FINAL`, so
    // ClickHouse reads the error column first and the rest of the few error
    // rows only) are a superset of the answer's. Stale versions only add
    // sessions, which `errors > 0` over the current rows drops again. With
    // every event a session of its own, this keeps the grouping to the
    // sessions with errors instead of every session of the period.
    let mut sql =
        Sql::new(format!("SELECT {s}, count() AS events, countIf({err}) AS errors, errors / events AS error_rate FROM {} WHERE 1 = 1", from_clause(&api, d)));
    let period = period(&mut sql, d, range);
    sql.push(&format!(" AND {period} AND {s} IN (SELECT {s} FROM {table} WHERE {period} AND {err})"));
    sql.push(&format!(" GROUP BY {s} HAVING errors > 0 AND events >= "));
    let ph = sql.bind("UInt64", Param::U64(min_events));
    let lim = sql.bind("UInt64", Param::U64(limit));
    sql.push(&format!("{ph} ORDER BY error_rate DESC, errors DESC, {s} LIMIT {lim}"));
    final_without_cross_partition_merge(&mut sql);
    let rows = api.inner.db.rows("analytics_top_errors", sql).await?;
    let cols = plain(&["session_id", "events", "errors", "error_rate"]);
    Ok(Json(TopErrorSessions {
        from: rfc3339(range.0).unwrap_or_default(),
        to: rfc3339(range.1).unwrap_or_default(),
        sessions: rows.into_iter().map(|r| render_row(&cols, r)).collect(),
    }))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use pulse_clickhouse::schema::{Provenance, raw_table};
    use pulse_clickhouse::{Writer, WriterMetrics};
    use pulse_model::{Decoder, Spec};
    use pulse_ops::prometheus::Registry;
    use pulse_ops::{ServiceContext, Shutdown};
    use serde_json::Value;

    use super::*;
    use crate::params::Params;

    fn params(q: &str) -> Params {
        Params::parse(Some(q), &["from", "to"]).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn time_ranges_default_to_a_day_and_are_capped() {
        let now = 100 * DAY_MS;
        assert_eq!(time_range(&params(""), now).ok(), Some((now - DAY_MS, now)));
        assert_eq!(time_range(&params("to=1000000"), now).ok(), Some((0, 1_000_000)));
        assert_eq!(time_range(&params(&format!("from={}", now - 3 * DAY_MS)), now).ok(), Some((now - 3 * DAY_MS, now)));
        let bad = |q: &str| match time_range(&params(q), now) {
            Err(ApiError::BadRequest { parameter, message }) => format!("{parameter}: {message}"),
            other => panic!("{q}: {other:?}"),
        };
        assert!(bad(&format!("from={now}&to={now}")).starts_with("from: `from` must be before `to`"));
        assert!(bad(&format!("from=0&to={now}")).contains("spans more than 31 days"));
        assert!(bad("from=yesterday").starts_with("from:"));
        assert!(time_range(&params(&format!("from={}&to={now}", now - MAX_RANGE_MS)), now).is_ok());
    }

    #[test]
    fn pruned_latency_answers_are_used_only_when_proven_exact() {
        use serde_json::json;
        let row = |p95: f64, theta: f64, seen: u64| vec![json!("s"), json!("n"), json!(3), json!(p95), json!(theta), json!(seen)];
        // θ taken from every row of the period: all groups were candidates.
        assert!(latency_certified(&[row(5.0, 9.0, 7)], 10, 104));
        // `limit` rows, the last above θ: no other group can rank.
        assert!(latency_certified(&[row(12.0, 9.5, 104), row(10.0, 9.5, 104)], 2, 104));
        // The last row at θ: a group left out may tie with it and sort first.
        assert!(!latency_certified(&[row(12.0, 9.0, 104), row(9.0, 9.0, 104)], 2, 104));
        // The last row below θ: a group left out could rank above it.
        assert!(!latency_certified(&[row(12.0, 9.0, 104), row(8.5, 9.0, 104)], 2, 104));
        // Fewer rows than asked for while θ did not cover the period.
        assert!(!latency_certified(&[row(12.0, 9.0, 104)], 2, 104));
        // No candidate: the full query answers.
        assert!(!latency_certified(&[], 2, 104));
        // The full query's shape (NULL bound) is never taken for a pruned answer.
        assert!(!latency_certified(&[vec![json!("s"), json!("n"), json!(3), json!(1.0), Value::Null, Value::Null]], 1, 104));
        assert_eq!(latency_candidates(10), [104, 1664]);
    }

    fn spec() -> Arc<Spec> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        Arc::new(Spec::load(&path).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The rows of `events` (JSON) of one domain as the sink writes them, in RowBinary.
    fn encode(spec: &Spec, domain: &str, events: &[String]) -> Bytes {
        let d = spec.domain(domain).expect("domain");
        let (table, decoder) = (raw_table(d), Decoder::new(d));
        let mut buf = BytesMut::new();
        for (i, json) in events.iter().enumerate() {
            let ev = decoder.decode(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
            let at = Provenance { topic: &d.topic, partition: 0, offset: i as i64, timestamp_ms: now_ms() };
            table.encode(&ev, &at, &mut buf);
        }
        buf.freeze()
    }

    /// A sink replay (a crash after the insert, before the offset commit) inserts
    /// the same rows again; until ClickHouse merges the parts, both copies are in
    /// the table. The analytics count each event once.
    #[test]
    fn analytics_count_replayed_rows_once() {
        let Some(ch) = pulse_testkit::stack_clickhouse("pulse_api_replay") else { return };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let spec = spec();
        let db = ident(&ch.database);
        let now = now_ms();
        let time = |ago_s: i64| rfc3339(now - ago_s * 1000).expect("time");
        let rides: Vec<String> = (0..30)
            .map(|i| {
                let kind = ["requested", "completed", "cancelled"][i % 3];
                format!(
                    r#"{{"event_type":"{kind}","ride_id":"r{i}","city":"{}","estimated_fare":{}.5,"user_id":"u{i}","timestamp":"{}"}}"#,
                    ["Lima", "Oslo"][i % 2],
                    10 + i,
                    time(60 + i as i64)
                )
            })
            .collect();
        let apps: Vec<String> = (0..20)
            .map(|i| {
                let error = if i % 4 == 0 { r#","error":"timeout""# } else { "" };
                format!(
                    r#"{{"event_id":"e{i}","session_id":"s{}","event_name":"checkout","latency_ms":{},"timestamp":"{}"{error}}}"#,
                    i % 3,
                    100 + i,
                    time(120 + i as i64)
                )
            })
            .collect();
        rt.block_on(async {
            pulse_clickhouse::migrate(&ch, &spec).await.expect("migrate");
            let client = ch.client();
            for t in ["rides", "app_events"] {
                // Keep both copies apart, as they are until a merge happens.
                client.query(&format!("SYSTEM STOP MERGES {db}.{}", ident(t))).execute().await.expect("stop merges");
            }
            let writer = Writer::new(&ch, WriterMetrics::new(&Registry::new()).expect("metrics"));
            for (domain, events) in [("rides", &rides), ("app_events", &apps)] {
                let body = encode(&spec, domain, events);
                let sql = raw_table(spec.domain(domain).expect("domain")).table.insert_sql(&ch.database);
                // Once by the sink, once more by its replay (another insert: no dedup token matches).
                writer.insert_once(&sql, body.clone()).await.expect("insert");
                writer.insert_once(&sql, body).await.expect("replayed insert");
            }
            let stored: u64 = client.query(&format!("SELECT count() FROM {db}.rides")).fetch_one().await.expect("count");
            assert_eq!(stored, 60, "both copies are stored (unmerged)");

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let shutdown = Shutdown::new();
            let api = Api::new(Arc::clone(&spec), &ch, crate::ApiConfig::default(), ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone()))
                .expect("api");
            let server = tokio::spawn(crate::serve(api, listener));
            let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let get = |path: &str| {
                let (http, url) = (http.clone(), format!("{base}{path}"));
                async move {
                    let resp = tokio::time::timeout(Duration::from_secs(30), http.get(url.parse().expect("url"))).await.expect("in time").expect("response");
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.expect("body").to_bytes();
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    assert_eq!(status, 200, "{url}: {json}");
                    json
                }
            };
            let cities = get("/v1/analytics/cities?since=1h").await;
            let total: i64 = cities["cities"].as_array().expect("cities").iter().map(|c| c["requests"].as_i64().unwrap_or(0)).sum();
            assert_eq!(total, 10, "{cities}");
            let errors = get("/v1/analytics/errors?days=2").await;
            let day = &errors["per_day"]
                .as_array()
                .expect("days")
                .iter()
                .map(|d| (d["total"].as_i64(), d["errors"].as_i64()))
                .fold((0, 0), |a, b| (a.0 + b.0.unwrap_or(0), a.1 + b.1.unwrap_or(0)));
            assert_eq!(*day, (20, 5), "{errors}");
            let latency = get("/v1/analytics/latency?limit=10").await;
            let events: i64 = latency["rows"].as_array().expect("rows").iter().map(|r| r["events"].as_i64().unwrap_or(0)).sum();
            assert_eq!(events, 20, "{latency}");
            let sessions = get("/v1/analytics/sessions/top-errors?limit=10").await;
            let (events, errors): (i64, i64) = sessions["sessions"]
                .as_array()
                .expect("sessions")
                .iter()
                .map(|s| (s["events"].as_i64().unwrap_or(0), s["errors"].as_i64().unwrap_or(0)))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            // e0, e4, e8, e12, e16 have errors: sessions s0, s1, s2 each have one or two.
            assert_eq!(errors, 5, "{sessions}");
            assert_eq!(events, 20, "{sessions}");
            // A period that holds none of the events.
            let old = get(&format!("/v1/analytics/latency?to={}", now - 3_600_000)).await;
            assert_eq!(old["rows"], serde_json::json!([]), "{old}");
            shutdown.trigger();
            let _ = server.await;
            client.query(&format!("DROP DATABASE IF EXISTS {db}")).execute().await.expect("drop");
        });
    }
}
