//! Windowed metric rows: the latest revision of each window (the metric tables are
//! ReplacingMergeTree(revision), read with FINAL), and the newest window per group.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::Api;
use crate::catalog::{MetricView, render_row, select_list};
use crate::config::MAX_METRIC_LIMIT;
use crate::error::{ApiError, ErrorBody};
use crate::params::Params;
use crate::routes::events::bind_value;
use crate::sql::{Param, Sql};

pub(crate) fn metric<'a>(api: &'a Api, name: &str) -> Result<&'a MetricView, ApiError> {
    api.inner.catalog.metric(name).ok_or_else(|| {
        let known: Vec<&str> = api.inner.catalog.metrics.iter().map(|m| m.name.as_str()).collect();
        ApiError::not_found(Some("metric"), format!("unknown metric (known: {})", known.join(", ")))
    })
}

/// Metric rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricRows {
    pub metric: String,
    /// One row per (group, window): group fields, window_start, window_end (RFC 3339),
    /// one value per aggregate (null when undefined), final, revision, emitted_at.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
    /// True when more rows matched than `limit`: the newest `limit` are returned.
    pub truncated: bool,
}

/// `AND group = ...` for every group field given in the query.
fn group_filters(m: &MetricView, p: &Params, sql: &mut Sql) -> Result<(), ApiError> {
    for g in &m.groups {
        if let Some(v) = p.get(&g.name) {
            let ph = bind_value(sql, g.filter, &g.name, v)?;
            sql.push(&format!(" AND {} = {ph}", pulse_clickhouse::schema::ident(&g.name)));
        }
    }
    Ok(())
}

fn final_filter(fin: Option<bool>, sql: &mut Sql) {
    if let Some(f) = fin {
        let ph = sql.bind("Bool", Param::Bool(f));
        sql.push(&format!(" AND `final` = {ph}"));
    }
}

fn allowed<'a>(m: &'a MetricView, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = m.group_names();
    a.extend_from_slice(extra);
    a
}

/// Windowed rows of a metric, latest revision per window, oldest first.
#[utoipa::path(
    get,
    path = "/v1/metrics/{metric}",
    tag = "metrics",
    params(
        ("metric" = String, Path, description = "Metric name from the spec"),
        ("from" = Option<String>, Query, description = "Windows starting at or after this time: RFC 3339 or epoch ms"),
        ("to" = Option<String>, Query, description = "Windows starting before this time: RFC 3339 or epoch ms"),
        ("final" = Option<bool>, Query, description = "true: closed windows only; false: open windows only; absent: both"),
        ("limit" = Option<u64>, Query, description = "Most rows, default 1000, capped at 10000; the newest windows are kept"),
    ),
    responses(
        (status = 200, description = "Rows ordered by window_start, then group", body = MetricRows),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rows(State(api): State<Api>, Path(name): Path<String>, RawQuery(query): RawQuery) -> Result<Json<MetricRows>, ApiError> {
    let m = metric(&api, &name)?;
    let p = Params::parse(query.as_deref(), &allowed(m, &["from", "to", "final", "limit"]))?;
    let from = p.time("from")?;
    let to = p.time("to")?;
    let fin = p.boolean("final")?;
    let limit = p.limit("limit", 1000, MAX_METRIC_LIMIT)?;
    let mut sql = Sql::new(format!("SELECT {} FROM {} FINAL WHERE 1 = 1", select_list(&m.cols), m.table));
    group_filters(m, &p, &mut sql)?;
    if let Some(f) = from {
        let ph = sql.bind("Int64", Param::I64(f));
        sql.push(&format!(" AND `window_start` >= fromUnixTimestamp64Milli({ph}, 'UTC')"));
    }
    if let Some(t) = to {
        let ph = sql.bind("Int64", Param::I64(t));
        sql.push(&format!(" AND `window_start` < fromUnixTimestamp64Milli({ph}, 'UTC')"));
    }
    final_filter(fin, &mut sql);
    let mut order = vec!["`window_start` DESC".to_string()];
    order.extend(m.groups.iter().map(|g| format!("{} DESC", pulse_clickhouse::schema::ident(&g.name))));
    let lim = sql.bind("UInt64", Param::U64(limit + 1));
    sql.push(&format!(" ORDER BY {} LIMIT {lim}", order.join(", ")));
    let mut rows = api.inner.db.rows("metric_rows", sql).await?;
    let truncated = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    rows.reverse();
    Ok(Json(MetricRows { metric: m.name.clone(), rows: rows.into_iter().map(|r| render_row(&m.cols, r)).collect(), truncated }))
}

/// The newest window (largest window_start) of each group, final or not.
#[utoipa::path(
    get,
    path = "/v1/metrics/{metric}/latest",
    tag = "metrics",
    params(
        ("metric" = String, Path, description = "Metric name from the spec"),
        ("final" = Option<bool>, Query, description = "true: the newest closed window per group; false: the newest open one; absent: the newest window"),
        ("limit" = Option<u64>, Query, description = "Most groups, default 1000, capped at 10000"),
    ),
    responses(
        (status = 200, description = "One row per group, ordered by group", body = MetricRows),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown metric", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn latest(State(api): State<Api>, Path(name): Path<String>, RawQuery(query): RawQuery) -> Result<Json<MetricRows>, ApiError> {
    let m = metric(&api, &name)?;
    let p = Params::parse(query.as_deref(), &allowed(m, &["final", "limit"]))?;
    let fin = p.boolean("final")?;
    let limit = p.limit("limit", 1000, MAX_METRIC_LIMIT)?;
    let groups: Vec<String> = m.groups.iter().map(|g| pulse_clickhouse::schema::ident(&g.name)).collect();
    let (lhs, inner_cols, group_by) = if groups.is_empty() {
        ("`window_start`".to_string(), "max(`window_start`)".to_string(), String::new())
    } else {
        (format!("({}, `window_start`)", groups.join(", ")), format!("{}, max(`window_start`)", groups.join(", ")), format!(" GROUP BY {}", groups.join(", ")))
    };
    // The newest window per group needs only the key columns; FINAL then reads just those windows.
    // A `final` filter needs FINAL inside too: an earlier revision of a now-closed window is not final.
    let inner_final = if fin.is_some() { " FINAL" } else { "" };
    let mut sql = Sql::new(format!(
        "SELECT {} FROM {} FINAL WHERE {lhs} IN (SELECT {inner_cols} FROM {}{inner_final} WHERE 1 = 1",
        select_list(&m.cols),
        m.table,
        m.table
    ));
    group_filters(m, &p, &mut sql)?;
    final_filter(fin, &mut sql);
    sql.push(&format!("{group_by})"));
    group_filters(m, &p, &mut sql)?;
    final_filter(fin, &mut sql);
    let order = if groups.is_empty() { "`window_start`".to_string() } else { groups.join(", ") };
    let lim = sql.bind("UInt64", Param::U64(limit + 1));
    sql.push(&format!(" ORDER BY {order} LIMIT {lim}"));
    let mut rows = api.inner.db.rows("metric_latest", sql).await?;
    let truncated = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(MetricRows { metric: m.name.clone(), rows: rows.into_iter().map(|r| render_row(&m.cols, r)).collect(), truncated }))
}
