//! The OpenAPI document, generated from the handlers' annotations (utoipa) and
//! completed at start-up from the spec: the domains and metrics the path
//! parameters accept, and the group-field filters of the metric endpoints.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::catalog::{Catalog, FilterType};
use crate::error::ErrorBody;
use crate::routes::alerts::{AlertView, Alerts};
use crate::routes::analytics::{CityFigures, ErrorsPerDay, LatencyRows, TopErrorSessions};
use crate::routes::events::EventPage;
use crate::routes::ops::{Health, Ready};
use crate::routes::windows::MetricRows;
use crate::routes::{alerts, analytics, events, ops, stream, windows};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pulse read API",
        description = "Events, timelines, windowed metrics, analytics and live metric streams over ClickHouse. \
                       Times are RFC 3339 strings in UTC with milliseconds. Errors are JSON `{\"error\", \"parameter\"}`. \
                       /v1 routes need `Authorization: Bearer <key>` with a read API key (401 without; 403 when the key is \
                       scoped to other metrics or domains; 429 beyond its rate, with Retry-After). The SSE stream also takes \
                       `?token=` from `POST /v1/stream/{metric}/token` (short-lived, signed, one metric)."
    ),
    paths(
        events::by_id,
        events::timeline,
        windows::rows,
        windows::latest,
        analytics::errors,
        analytics::latency,
        analytics::top_errors,
        analytics::cities,
        alerts::alerts,
        alerts::stream,
        stream::stream,
        stream::token,
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
        ops::page,
    ),
    components(schemas(ErrorBody, EventPage, MetricRows, Alerts, AlertView, ErrorsPerDay, LatencyRows, TopErrorSessions, CityFigures, Health, Ready, stream::StreamToken)),
    modifiers(&Security),
    tags(
        (name = "events", description = "Raw events from the domain tables"),
        (name = "metrics", description = "Windowed metric rows and live revisions"),
        (name = "analytics", description = "Aggregates over the raw events"),
        (name = "alerts", description = "Alert rules evaluated by the dataflow job: active alerts and their history"),
        (name = "operations", description = "Health, readiness, metrics, this document, the live page"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("token", SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))));
    }
}

/// Characters a text parameter may not contain (`char::is_control`).
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

/// The schema of a query or path parameter, by name: exactly what `params` accepts.
fn param_schema(name: &str, path: &str) -> Option<serde_json::Value> {
    use serde_json::json;
    let text = json!({"type": "string", "minLength": 1, "maxLength": crate::params::MAX_TEXT_CHARS, "pattern": TEXT_PATTERN});
    Some(match name {
        "limit" | "min_events" => json!({"type": "integer", "minimum": 1, "description": "Larger values are lowered to the cap"}),
        "days" => json!({"type": "integer", "minimum": 1, "maximum": crate::config::MAX_DAYS}),
        "final" => json!({"type": "boolean"}),
        "from" | "to" => json!({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0}],
            "description": "RFC 3339 or epoch milliseconds; times outside 1970-01-01..9999-12-31 are clamped"}),
        "since" => json!({"type": "string", "pattern": "^([1-9][0-9]{0,2}(ms|s|m|h)|([1-9]|[12][0-9]|3[01])d)$"}),
        "cursor" => json!({"type": "string", "minLength": 2, "maxLength": 2 * (crate::params::MAX_TEXT_CHARS + 24), "pattern": "^([0-9a-f]{2})+$",
            "description": "next_cursor of the previous page (anything else is refused)"}),
        "token" if path.starts_with("/v1/stream/") => json!({"type": "string", "minLength": 1}),
        "domain" | "metric" => return None,
        _ => text,
    })
}

/// The document for this server's spec: `{domain}` and `{metric}` routes are
/// expanded to one path per domain (its own `key_field` values) and per metric
/// (its own group-field filters).
pub fn document(catalog: &Catalog) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let domains: Vec<String> = catalog.domains.iter().map(|d| d.name.clone()).collect();
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    if let Some(paths) = json.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let mut expanded = serde_json::Map::new();
        for (path, item) in std::mem::take(paths) {
            let mut item = item;
            for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                for p in op.get_mut("parameters").and_then(|p| p.as_array_mut()).into_iter().flatten() {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    if name == "domain" {
                        p["schema"] = serde_json::json!({"type": "string", "enum": domains});
                    } else if let Some(schema) = param_schema(&name, &path) {
                        p["schema"] = schema;
                    }
                }
            }
            if path.contains("{domain}") {
                // One path per domain: `key_field` names the domain's own fields.
                for d in &catalog.domains {
                    let mut item = item.clone();
                    for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                        if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                            params.retain(|p| p["name"] != "domain");
                            let fields: Vec<&str> = d.fields.iter().filter(|f| f.filter == Some(FilterType::Str)).map(|f| f.name.as_str()).collect();
                            for p in params.iter_mut().filter(|p| p["name"] == "key_field") {
                                p["schema"] = serde_json::json!({"type": "string", "enum": fields});
                            }
                        }
                        if let Some(id) = op.get("operationId").and_then(|v| v.as_str().map(String::from)) {
                            op["operationId"] = serde_json::Value::String(format!("{id}_{}", d.name));
                        }
                    }
                    expanded.insert(path.replace("{domain}", &d.name), item);
                }
                continue;
            }
            if !path.contains("{metric}") {
                expanded.insert(path, item);
                continue;
            }
            for m in &catalog.metrics {
                let mut item = item.clone();
                for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                    if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                        params.retain(|p| p["name"] != "metric");
                        if path != "/v1/stream/{metric}/token" {
                            for g in &m.groups {
                                let schema = match g.filter {
                                    FilterType::Str => param_schema(&g.name, "").unwrap_or_default(),
                                    FilterType::Int => serde_json::json!({"type": "integer"}),
                                    FilterType::Bool => serde_json::json!({"type": "boolean"}),
                                };
                                params.push(serde_json::json!({"name": g.name, "in": "query", "required": false, "schema": schema,
                                    "description": format!("Only rows whose group field `{}` equals this", g.name)}));
                            }
                        }
                    }
                    if let Some(id) = op.get("operationId").and_then(|v| v.as_str().map(String::from)) {
                        op["operationId"] = serde_json::Value::String(format!("{id}_{}", m.name));
                    }
                }
                expanded.insert(path.replace("{metric}", &m.name), item);
            }
        }
        *paths = expanded;
    }
    match serde_json::from_value(json) {
        Ok(d) => doc = d,
        Err(e) => tracing::error!("OpenAPI document: {e} (serving the unexpanded one)"),
    }
    doc
}

/// The route (as in `ROUTES`) a documented path stands for: per-domain and per-metric paths map back to `{domain}` and `{metric}`.
pub fn route_of(path: &str, catalog: &Catalog) -> String {
    for d in &catalog.domains {
        let concrete = format!("/v1/events/{}", d.name);
        if let Some(rest) = path.strip_prefix(&concrete)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("/v1/events/{{domain}}{rest}");
        }
    }
    for m in &catalog.metrics {
        for prefix in ["/v1/metrics/", "/v1/stream/"] {
            let concrete = format!("{prefix}{}", m.name);
            if let Some(rest) = path.strip_prefix(&concrete)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{prefix}{{metric}}{rest}");
            }
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn document_and_router_list_the_same_routes() {
        let spec = pulse_model::Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let doc = document(&Catalog::new(&spec, "pulse"));
        let json: serde_json::Value = serde_json::to_value(&doc).expect("serializes");
        let catalog = Catalog::new(&spec, "pulse");
        let mut documented = BTreeSet::new();
        for (path, item) in json["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                documented.insert((method.to_uppercase(), route_of(path, &catalog)));
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| ((*m).to_string(), (*p).to_string())).collect();
        assert_eq!(documented, routed);
        // One path per metric, each with only its own group fields.
        let names = |p: &str| -> Vec<String> {
            json["paths"][p]["get"]["parameters"].as_array().expect("params").iter().filter_map(|x| x["name"].as_str().map(String::from)).collect()
        };
        assert!(names("/v1/metrics/city_metrics").contains(&"city".to_string()));
        assert!(!names("/v1/metrics/city_metrics").contains(&"event_name".to_string()));
        assert!(names("/v1/metrics/event_metrics/latest").contains(&"event_name".to_string()));
        assert!(json["paths"]["/v1/metrics/{metric}"].is_null());
        let limit = json["paths"]["/v1/metrics/city_metrics"]["get"]["parameters"].as_array().expect("params").iter().find(|p| p["name"] == "limit").cloned();
        assert_eq!(limit.expect("limit")["schema"]["minimum"], 1);
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }
}
