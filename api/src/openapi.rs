//! The OpenAPI document, generated from the handlers' annotations (utoipa) and
//! completed at start-up from the spec: the domains and metrics the path
//! parameters accept, and the group-field filters of the metric endpoints.

use std::collections::BTreeMap;

use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::catalog::Catalog;
use crate::error::ErrorBody;
use crate::routes::analytics::{CityFigures, ErrorsPerDay, LatencyRows, TopErrorSessions};
use crate::routes::events::EventPage;
use crate::routes::ops::{Health, Ready};
use crate::routes::windows::MetricRows;
use crate::routes::{analytics, events, ops, stream, windows};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pulse read API",
        description = "Events, timelines, windowed metrics, analytics and live metric streams over ClickHouse. \
                       Times are RFC 3339 strings in UTC with milliseconds. Errors are JSON `{\"error\", \"parameter\"}`. \
                       When read API keys are configured, /v1 routes need `Authorization: Bearer <key>` \
                       (SSE also takes `?api_key=`)."
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
        stream::stream,
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
        ops::page,
    ),
    components(schemas(ErrorBody, EventPage, MetricRows, ErrorsPerDay, LatencyRows, TopErrorSessions, CityFigures, Health, Ready)),
    modifiers(&Security),
    tags(
        (name = "events", description = "Raw events from the domain tables"),
        (name = "metrics", description = "Windowed metric rows and live revisions"),
        (name = "analytics", description = "Aggregates over the raw events"),
        (name = "operations", description = "Health, readiness, metrics, this document, the live page"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("api_key"))));
    }
}

fn string_enum(values: &[String]) -> RefOr<utoipa::openapi::schema::Schema> {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().cloned())).into()
}

/// The document for this server's spec.
pub fn document(catalog: &Catalog) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let domains: Vec<String> = catalog.domains.iter().map(|d| d.name.clone()).collect();
    let metrics: Vec<String> = catalog.metrics.iter().map(|m| m.name.clone()).collect();
    // Group fields by name, with the metrics that have them.
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &catalog.metrics {
        for g in &m.groups {
            groups.entry(g.name.clone()).or_default().push(m.name.clone());
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let Some(op) = item.get.as_mut() else {
            continue;
        };
        let params = op.parameters.get_or_insert_with(Vec::new);
        for p in params.iter_mut() {
            if let RefOr::T(p) = p
                && p.parameter_in == ParameterIn::Path
            {
                match p.name.as_str() {
                    "domain" => p.schema = Some(string_enum(&domains)),
                    "metric" => p.schema = Some(string_enum(&metrics)),
                    _ => {}
                }
            }
        }
        if path.starts_with("/v1/metrics/") || path.starts_with("/v1/stream/") {
            for (name, ms) in &groups {
                let param: Parameter = ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(format!("Only rows whose group field `{name}` equals this (metrics {})", ms.join(", "))))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build();
                params.push(RefOr::T(param));
            }
        }
    }
    doc
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
        let mut documented = BTreeSet::new();
        for (path, item) in json["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| ((*m).to_string(), (*p).to_string())).collect();
        assert_eq!(documented, routed);
        let city = json["paths"]["/v1/metrics/{metric}"]["get"]["parameters"].as_array().expect("params");
        assert!(city.iter().any(|p| p["name"] == "city" && p["in"] == "query"), "{city:?}");
        let metric = city.iter().find(|p| p["name"] == "metric").expect("metric param");
        assert_eq!(metric["schema"]["enum"], serde_json::json!(["city_metrics", "city_supply", "event_metrics"]));
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }
}
