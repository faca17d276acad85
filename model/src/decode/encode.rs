//! The canonical JSON encoding Pulse writes to Kafka.

use std::io::Write as _;

use super::time::format_rfc3339_ms;
use crate::spec::{Domain, FieldType};
use crate::value::{Event, Op, Value};

/// Writes the canonical JSON form of an event: declared fields (nulls omitted),
/// then the envelope (`event_id`, `ingested_at`, `_version`, `_deleted`).
pub fn encode_json(domain: &Domain, ev: &Event, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    let write_str = |out: &mut Vec<u8>, s: &str| {
        // Serializing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    };
    for (f, v) in domain.fields.iter().zip(&ev.values) {
        if v.is_null() {
            continue;
        }
        sep(out);
        write_str(out, &f.name);
        out.push(b':');
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Str(s) => write_str(out, s),
            Value::Enum(i) => match &f.ty {
                FieldType::Enum(values) => write_str(out, values.get(*i as usize).map_or("", String::as_str)),
                _ => out.extend_from_slice(b"null"),
            },
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(x) => {
                let _ = serde_json::to_writer(&mut *out, x);
            }
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Time(t) => write_str(out, &format_rfc3339_ms(*t)),
            Value::Point { lat, lng } => {
                out.extend_from_slice(b"{\"lat\":");
                let _ = serde_json::to_writer(&mut *out, lat);
                out.extend_from_slice(b",\"lng\":");
                let _ = serde_json::to_writer(&mut *out, lng);
                out.push(b'}');
            }
        }
    }
    if !domain.declares_event_id()
        && let Some(id) = &ev.event_id
    {
        sep(out);
        out.extend_from_slice(b"\"event_id\":");
        write_str(out, id);
    }
    if let Some(t) = ev.ingested_at {
        sep(out);
        out.extend_from_slice(b"\"ingested_at\":");
        write_str(out, &format_rfc3339_ms(t));
    }
    if let Some(v) = ev.version {
        sep(out);
        let _ = write!(out, "\"_version\":{v}");
    }
    if ev.op == Op::Delete {
        sep(out);
        out.extend_from_slice(b"\"_deleted\":true");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::Decoder;
    use crate::decode::testing::spec;

    fn arb_ride() -> impl Strategy<Value = String> {
        (
            0usize..5,
            "[a-z0-9-]{1,20}",
            prop::sample::select(vec!["Berlin", "Paris", "São Paulo", "New \"York\""]),
            0.0f64..500.0,
            "[a-z0-9]{1,12}",
            proptest::option::of("[a-z0-9]{1,12}"),
            0i64..4_000_000_000_000,
        )
            .prop_map(|(t, ride, city, fare, user, driver, ts)| {
                let types = ["requested", "accepted", "started", "completed", "cancelled"];
                let driver = driver.map(|d| format!(",\"driver_id\":\"{d}\"")).unwrap_or_default();
                format!(
                    "{{\"event_type\":\"{}\",\"ride_id\":\"{ride}\",\"city\":{},\"estimated_fare\":{fare},\"user_id\":\"{user}\"{driver},\"timestamp\":{ts}}}",
                    types[t],
                    serde_json::to_string(city).unwrap_or_default()
                )
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(json in arb_ride()) {
            let spec = spec();
            let rides = spec.domain("rides").expect("rides");
            let d = Decoder::new(rides);
            let mut ev = d.decode(json.as_bytes()).expect("generated rides are valid");
            ev.event_id = Some("id-1".into());
            ev.ingested_at = Some(ev.time + 5);
            let mut out = Vec::new();
            encode_json(rides, &ev, &mut out);
            let again = d.decode(&out).expect("canonical JSON decodes");
            prop_assert_eq!(again, ev);
        }
    }
}
