//! Raw events: one by id, and the timeline of one key.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use pulse_clickhouse::schema::ident;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::Api;
use crate::catalog::{DomainView, FilterType, render_row, select_list};
use crate::config::MAX_TIMELINE_LIMIT;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Params, decode_cursor, encode_cursor, text};
use crate::sql::{Param, Sql};

pub(crate) fn domain<'a>(api: &'a Api, name: &str) -> Result<&'a DomainView, ApiError> {
    api.inner.catalog.domain(name).ok_or_else(|| {
        let known: Vec<&str> = api.inner.catalog.domains.iter().map(|d| d.name.as_str()).collect();
        ApiError::not_found(Some("domain"), format!("unknown domain (known: {})", known.join(", ")))
    })
}

/// Binds a filter value of type `ty` (400 naming `param` when it does not parse).
pub(crate) fn bind_value(sql: &mut Sql, ty: FilterType, param: &str, v: &str) -> Result<String, ApiError> {
    Ok(match ty {
        FilterType::Str => sql.bind("String", Param::Str(text(param, v)?)),
        FilterType::Int => {
            let i: i64 = v.parse().map_err(|_| ApiError::bad(param, format!("`{param}` must be an integer")))?;
            sql.bind("Int64", Param::I64(i))
        }
        FilterType::Bool => {
            let b = match v {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::bad(param, format!("`{param}` must be true or false")));
                }
            };
            sql.bind("Bool", Param::Bool(b))
        }
    })
}

/// One event: the latest version (deleted events are not found).
#[utoipa::path(
    get,
    path = "/v1/events/{domain}/{id}",
    tag = "events",
    params(
        ("domain" = String, Path, description = "Domain name from the spec"),
        ("id" = String, Path, description = "The event's id (at most 1024 bytes)"),
    ),
    responses(
        (status = 200, description = "The event: every spec field by name (times RFC 3339 UTC, points {lat, lng}), event_id, ingested_at, and version for mutable domains", body = Object),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown domain, or no such event (or it was deleted)", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn by_id(
    State(api): State<Api>,
    Path((domain_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Map<String, Value>>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let d = domain(&api, &domain_name)?;
    let id = text("id", &id)?;
    let mut sql = Sql::new(format!("SELECT {} FROM {} WHERE `event_id` = ", select_list(&d.cols), d.from()));
    let p = sql.bind("String", Param::Str(id));
    sql.push(&p).push(" LIMIT 1");
    let rows = api.inner.db.rows("event_by_id", sql).await?;
    match rows.into_iter().next() {
        Some(r) => Ok(Json(render_row(&d.cols, r))),
        None => Err(ApiError::not_found(Some("id"), "no such event")),
    }
}

/// A page of a key's events in time order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub domain: String,
    /// The field the events were selected by (the domain's key unless `key_field` said otherwise).
    pub key_field: String,
    pub key: String,
    /// Events in (time, event_id) order, each shaped as `GET /v1/events/{domain}/{id}` answers.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Map<String, Value>>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The events of one key in time order (a ride's lifecycle, a session's events), with cursor pagination.
#[utoipa::path(
    get,
    path = "/v1/events/{domain}",
    tag = "events",
    params(
        ("domain" = String, Path, description = "Domain name from the spec"),
        ("key" = String, Query, description = "Value of the key field (required)"),
        ("key_field" = Option<String>, Query, description = "A string, enum, int or bool field of the domain to select by instead of its key (e.g. session_id)"),
        ("from" = Option<String>, Query, description = "Events at or after this time: RFC 3339 or epoch ms"),
        ("to" = Option<String>, Query, description = "Events before this time: RFC 3339 or epoch ms"),
        ("limit" = Option<u64>, Query, description = "Page size, default 100, capped at 1000"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Unknown domain", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable or too slow", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn timeline(State(api): State<Api>, Path(domain_name): Path<String>, RawQuery(query): RawQuery) -> Result<Json<EventPage>, ApiError> {
    let p = Params::parse(query.as_deref(), &["key", "key_field", "from", "to", "limit", "cursor"])?;
    let d = domain(&api, &domain_name)?;
    let key_field = match p.text("key_field")? {
        Some(f) => f,
        None => d.key.clone(),
    };
    let field = d.field(&key_field).ok_or_else(|| ApiError::bad("key_field", format!("domain {} has no field `{key_field}`", d.name)))?;
    let ty =
        field.filter.ok_or_else(|| ApiError::bad("key_field", format!("cannot select events by `{key_field}` (not a string, enum, int or bool field)")))?;
    let key = p.required_text("key")?;
    let from = p.time("from")?;
    let to = p.time("to")?;
    let limit = p.limit("limit", 100, MAX_TIMELINE_LIMIT)?;
    let cursor = p.get("cursor").map(decode_cursor).transpose()?;

    let time = ident(&d.time_col);
    let mut sql =
        Sql::new(format!("SELECT {}, toUnixTimestamp64Milli({time}), `event_id` FROM {} WHERE {} = ", select_list(&d.cols), d.from(), ident(&field.name)));
    let k = bind_value(&mut sql, ty, "key", &key)?;
    sql.push(&k);
    if let Some(f) = from {
        let ph = sql.bind("Int64", Param::I64(f));
        sql.push(&format!(" AND {time} >= fromUnixTimestamp64Milli({ph}, 'UTC')"));
    }
    if let Some(t) = to {
        let ph = sql.bind("Int64", Param::I64(t));
        sql.push(&format!(" AND {time} < fromUnixTimestamp64Milli({ph}, 'UTC')"));
    }
    if let Some((ct, cid)) = cursor {
        let a = sql.bind("Int64", Param::I64(ct));
        let b = sql.bind("String", Param::Str(cid));
        sql.push(&format!(" AND ({time}, `event_id`) > (fromUnixTimestamp64Milli({a}, 'UTC'), {b})"));
    }
    sql.push(&format!(" ORDER BY {time}, `event_id`"));
    if !d.mutable {
        // A replay after a crash may have stored an event twice until the table merges.
        sql.push(" LIMIT 1 BY `event_id`");
    }
    let lim = sql.bind("UInt64", Param::U64(limit + 1));
    sql.push(&format!(" LIMIT {lim}"));
    let mut rows = api.inner.db.rows("timeline", sql).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let mut next_cursor = None;
    let mut events = Vec::with_capacity(rows.len());
    let last = rows.len();
    for (i, mut r) in rows.into_iter().enumerate() {
        let id = r.pop().unwrap_or(Value::Null);
        let t = r.pop().unwrap_or(Value::Null);
        if more && i + 1 == last {
            next_cursor = Some(encode_cursor(t.as_i64().unwrap_or(0), id.as_str().unwrap_or("")));
        }
        events.push(render_row(&d.cols, r));
    }
    Ok(Json(EventPage { domain: d.name.clone(), key_field: field.name.clone(), key, events, next_cursor }))
}
