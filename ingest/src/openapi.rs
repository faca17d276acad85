//! The write API's OpenAPI 3.1 document (`GET /openapi.json`), built from the
//! spec: one path per domain, each with its events' schema (fields, types,
//! bounds, lengths, enum values), so outside tools can hold the server to it.
//!
//! What JSON Schema cannot say: an event's time must lie within the domain's
//! `max_age`/`max_future` of the server's clock, string limits are in UTF-8
//! bytes (`maxLength` counts characters: ASCII values match exactly), and
//! dimension values are NFC-normalized.

use pulse_model::Spec;
use pulse_model::spec::{Field, FieldType};
use serde_json::{Map, Value, json};

use crate::config::IngestConfig;

/// Characters an identifier may not contain: controls and bidirectional marks.
pub const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u202A-\\u202E\\u2066-\\u2069]+$";

fn field_schema(f: &Field) -> Value {
    let mut s = match &f.ty {
        FieldType::String => json!({"type": "string", "maxLength": f.max_length}),
        FieldType::Enum(values) => json!({"type": "string", "enum": values}),
        FieldType::Int => json!({"type": "integer"}),
        FieldType::Float => json!({"type": "number"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Timestamp => json!({
            "oneOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339"},
                {"type": "integer", "minimum": 0, "description": "epoch milliseconds"}
            ],
            "description": "Event time; must lie within the domain's max_age / max_future of the server's clock"
        }),
        FieldType::Point => json!({
            "type": "object",
            "required": ["lat", "lng"],
            "additionalProperties": false,
            "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lng": {"type": "number", "minimum": -180, "maximum": 180}}
        }),
    };
    if let Some(o) = s.as_object_mut() {
        if let Some(min) = f.min {
            o.insert("minimum".into(), json!(min));
        }
        if let Some(max) = f.max {
            o.insert("maximum".into(), json!(max));
        }
        if f.dimension && matches!(f.ty, FieldType::String) {
            o.insert("pattern".into(), json!(ID_PATTERN));
        }
    }
    if f.optional && !matches!(f.ty, FieldType::Timestamp) { json!({"oneOf": [s, {"type": "null"}]}) } else { s }
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn errors(extra: &[(&str, &str)]) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("202".into(), json!({"description": "Accepted: Kafka acknowledged every event", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}));
    r.insert("400".into(), error("Malformed JSON or invalid events (`details` names each invalid event's index, field and reason); nothing was stored"));
    r.insert("401".into(), error("Missing or invalid API key"));
    r.insert("403".into(), error("The API key is scoped to other domains"));
    for (code, d) in extra {
        r.insert((*code).into(), error(d));
    }
    r.insert("429".into(), error("Rate limit of this key exceeded; see Retry-After"));
    r.insert("503".into(), error("Kafka unavailable; see Retry-After (nothing, or possibly part of the batch, was stored)"));
    r
}

/// The document for `spec` under `cfg`'s limits.
pub fn document(spec: &Spec, cfg: &IngestConfig) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for d in &spec.domains {
        let mut props = Map::new();
        let mut required = Vec::new();
        for f in &d.fields {
            props.insert(f.name.clone(), field_schema(f));
            if !f.optional {
                required.push(f.name.clone());
            }
        }
        if d.field_index("event_id").is_none() {
            props.insert(
                "event_id".into(),
                json!({"type": "string", "minLength": 1, "maxLength": pulse_model::spec::DEFAULT_ID_LENGTH, "pattern": ID_PATTERN, "description": "Assigned (UUID v7) when absent"}),
            );
        } else {
            required.retain(|n| n != "event_id");
        }
        let event = format!("{}Event", d.name);
        schemas.insert(event.clone(), json!({"type": "object", "additionalProperties": false, "required": required, "properties": props}));
        let one = json!({"$ref": format!("#/components/schemas/{event}")});
        let post = json!({
            "tags": ["events"],
            "summary": format!("Send {} events", d.name),
            "description": format!("One event (object), an array of events, or NDJSON; at most {} events and {} bytes per request.", cfg.max_batch, cfg.max_body),
            "operationId": format!("post_{}", d.name),
            "security": [{"bearer": []}],
            "requestBody": {"required": true, "content": {
                "application/json": {"schema": {"oneOf": [one, {"type": "array", "items": one, "description": format!("At most {} events (413 beyond)", cfg.max_batch)}]}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One event object per line"}}
            }},
            "responses": errors(&[("413", "Body or batch too large"), ("415", "Unsupported content type")])
        });
        paths.insert(format!("/v1/events/{}", d.name), json!({"post": post}));
        if d.mutable {
            let id = json!({"name": "id", "in": "path", "required": true, "description": "The event's id",
                "schema": {"type": "string", "minLength": 1, "maxLength": pulse_model::spec::DEFAULT_ID_LENGTH, "pattern": ID_PATTERN}});
            let put = json!({
                "tags": ["events"], "summary": format!("Replace a {} event", d.name), "operationId": format!("put_{}", d.name),
                "security": [{"bearer": []}], "parameters": [id],
                "requestBody": {"required": true, "content": {"application/json": {"schema": one}}},
                "responses": errors(&[("413", "Body too large"), ("415", "Unsupported content type")])
            });
            let delete = json!({
                "tags": ["events"], "summary": format!("Delete a {} event", d.name), "operationId": format!("delete_{}", d.name),
                "security": [{"bearer": []}], "parameters": [id], "responses": errors(&[])
            });
            paths.insert(format!("/v1/events/{}/{{id}}", d.name), json!({"put": put, "delete": delete}));
        }
    }
    let text = |d: &str, ct: &str| json!({"description": d, "content": {ct: {"schema": {"type": "string"}}}});
    let object = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    paths.insert(
        "/health".into(),
        json!({"get": {"tags": ["operations"], "operationId": "health", "responses": {"200": object("Alive"), "503": object("Stalled")}}}),
    );
    paths.insert(
        "/ready".into(),
        json!({"get": {"tags": ["operations"], "operationId": "ready", "responses": {"200": object("Kafka reachable, topics exist"), "503": object("Not ready")}}}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"tags": ["operations"], "operationId": "metrics", "responses": {"200": text("Prometheus text format", "text/plain")}}}),
    );
    paths.insert("/openapi.json".into(), json!({"get": {"tags": ["operations"], "operationId": "openapi", "responses": {"200": {"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}}}}));
    schemas.insert(
        "Accepted".into(),
        json!({"type": "object", "required": ["accepted", "ids"], "properties": {"accepted": {"type": "integer", "minimum": 0}, "ids": {"type": "array", "items": {"type": "string"}}}}),
    );
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "required": ["index", "reason"], "properties": {
                "index": {"type": "integer"}, "line": {"type": ["integer", "null"]}, "field": {"type": ["string", "null"]}, "reason": {"type": "string"}}}}
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Pulse write API", "version": env!("CARGO_PKG_VERSION"),
            "description": "Events in, validated against the spec and produced to Kafka. Writes need `Authorization: Bearer <key>` with a write key \
                (PULSE_INGEST_API_KEYS), optionally scoped to some domains (403 outside them). Errors are JSON `{\"error\", \"details\"}`; \
                429 and 503 carry Retry-After."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A write API key"}}},
        "tags": [{"name": "events"}, {"name": "operations"}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn one_path_per_domain_with_its_schema() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let doc = document(&spec, &IngestConfig::default());
        assert!(doc["paths"]["/v1/events/rides"]["post"].is_object());
        assert!(doc["paths"]["/v1/events/rides/{id}"].is_null(), "rides are immutable");
        assert!(doc["paths"]["/v1/events/app_events/{id}"]["delete"].is_object());
        let rides = &doc["components"]["schemas"]["ridesEvent"];
        assert_eq!(rides["additionalProperties"], false);
        assert!(rides["properties"]["event_type"]["enum"].as_array().is_some_and(|v| v.iter().any(|x| x == "cancelled")));
        assert!(rides["required"].as_array().is_some_and(|r| r.iter().any(|x| x == "ride_id")));
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
