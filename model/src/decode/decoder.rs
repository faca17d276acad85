//! The decoder of one domain: each key's slot, each field's kind and limits,
//! and the checks of a decoded event as a whole.

use compact_str::CompactString;

use super::DecodeError;
use super::limits::Limits;
use super::reader::Reader;
use crate::spec::{Domain, EVENT_ID, FieldType};
use crate::value::{Event, Op, Value};

#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Field(usize),
    EventId,
    IngestedAt,
    Version,
    Deleted,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Str,
    Dim,
    Enum(Vec<String>),
    Int,
    Float,
    Bool,
    Time,
    Point,
}

/// Decodes JSON events of one domain.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub(super) names: Vec<(String, Slot)>,
    pub(super) kinds: Vec<Kind>,
    pub(super) limits: Vec<Limits>,
    pub(super) field_names: Vec<String>,
    optional: Vec<bool>,
    time_field: usize,
    key_field: usize,
    event_id_field: Option<usize>,
}

impl Decoder {
    pub fn new(domain: &Domain) -> Decoder {
        let mut names: Vec<(String, Slot)> = domain.fields.iter().enumerate().map(|(i, f)| (f.name.clone(), Slot::Field(i))).collect();
        if !domain.declares_event_id() {
            names.push((EVENT_ID.to_string(), Slot::EventId));
        }
        names.push(("ingested_at".into(), Slot::IngestedAt));
        names.push(("_version".into(), Slot::Version));
        names.push(("_deleted".into(), Slot::Deleted));
        let kinds = domain
            .fields
            .iter()
            .map(|f| match &f.ty {
                FieldType::String if f.dimension => Kind::Dim,
                FieldType::String => Kind::Str,
                FieldType::Enum(v) => Kind::Enum(v.clone()),
                FieldType::Int => Kind::Int,
                FieldType::Float => Kind::Float,
                FieldType::Bool => Kind::Bool,
                FieldType::Timestamp => Kind::Time,
                FieldType::Point => Kind::Point,
            })
            .collect();
        let limits = domain.fields.iter().enumerate().map(|(i, f)| Limits::of(f, i == domain.key || f.name == EVENT_ID)).collect();
        Decoder {
            names,
            kinds,
            limits,
            field_names: domain.fields.iter().map(|f| f.name.clone()).collect(),
            optional: domain.fields.iter().map(|f| f.optional).collect(),
            time_field: domain.time_field,
            key_field: domain.key,
            event_id_field: domain.field_index(EVENT_ID),
        }
    }

    /// The slot of an object key; `hint` is where the previous key matched.
    #[inline]
    pub(super) fn slot(&self, key: &str, hint: &mut usize) -> Option<Slot> {
        if let Some((n, s)) = self.names.get(*hint)
            && n.len() == key.len()
            && n.bytes().zip(key.bytes()).all(|(a, b)| a == b)
        {
            *hint += 1;
            return Some(*s);
        }
        let i = self.names.iter().position(|(n, _)| n == key)?;
        *hint = i + 1;
        Some(self.names[i].1)
    }

    /// Decodes one JSON object.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|e| *DecodeError::body(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        let mut reader = Reader { text, b: bytes, pos: 0, scratch: String::new(), hint: 0 };
        let partial = reader.object(self).map_err(|e| *e)?;
        self.finish(partial).map_err(|e| *e)
    }

    /// Decodes a `serde_json::Value` holding one object (used when a request was
    /// already parsed as a JSON array).
    pub fn decode_value(&self, value: &serde_json::Value) -> Result<Event, DecodeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| *DecodeError::body(e.to_string()))?;
        self.decode(&bytes)
    }

    fn finish(&self, p: Partial) -> Result<Event, Box<DecodeError>> {
        let op = if p.deleted { Op::Delete } else { Op::Upsert };
        let mut values = p.values;
        for (i, v) in values.iter().enumerate() {
            if v.is_null() && !self.optional[i] {
                // A delete only needs to say which event it removes.
                if op == Op::Delete && i != self.key_field && Some(i) != self.event_id_field {
                    continue;
                }
                if op == Op::Delete && i == self.time_field {
                    continue;
                }
                return Err(DecodeError::field(&self.field_names[i], "missing required field"));
            }
        }
        let time = match values[self.time_field] {
            Value::Time(t) => t,
            _ => p.ingested_at.unwrap_or(0),
        };
        let event_id = match self.event_id_field {
            Some(i) => match &values[i] {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            },
            None => p.event_id,
        };
        if let Some(id) = &event_id
            && id.is_empty()
        {
            return Err(DecodeError::field(EVENT_ID, "must not be empty"));
        }
        if let Value::Str(k) = &values[self.key_field]
            && k.is_empty()
        {
            return Err(DecodeError::field(&self.field_names[self.key_field], "the key must not be empty"));
        }
        values.shrink_to_fit();
        Ok(Event { values, time, event_id, ingested_at: p.ingested_at, version: p.version, op })
    }
}

pub(super) struct Partial {
    pub(super) values: Vec<Value>,
    pub(super) event_id: Option<CompactString>,
    pub(super) ingested_at: Option<i64>,
    pub(super) version: Option<u64>,
    pub(super) deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{RIDE, spec};

    #[test]
    fn decodes_a_ride() {
        let spec = spec();
        let rides = spec.domain("rides").expect("rides");
        let ev = Decoder::new(rides).decode(RIDE.as_bytes()).expect("valid ride");
        assert_eq!(ev.time, 1_795_515_300_250);
        assert_eq!(ev.values[0], Value::Enum(0));
        assert_eq!(ev.values[2], Value::Str("Berlin".into()));
        assert_eq!(ev.values[3], Value::Float(12.5));
        assert_eq!(ev.values[5], Value::Null);
        assert_eq!(ev.values[6], Value::Point { lat: 52.5, lng: 13.4 });
        assert_eq!(ev.op, Op::Upsert);
    }

    fn reject(domain: &str, json: &str) -> DecodeError {
        let spec = spec();
        let d = spec.domain(domain).expect("domain");
        match Decoder::new(d).decode(json.as_bytes()) {
            Ok(ev) => panic!("{json} should be rejected, decoded {ev:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = reject("rides", &RIDE.replace("\"requested\"", "\"teleported\""));
        assert_eq!(e.field.as_deref(), Some("event_type"));
        assert!(e.reason.contains("not one of requested"), "{e}");
        let e = reject("rides", &RIDE.replace("12.5", "\"cheap\""));
        assert_eq!((e.field.as_deref(), e.reason.as_str()), (Some("estimated_fare"), "expected a number, got a string"));
        let e = reject("rides", &RIDE.replace(r#""city":"Berlin","#, ""));
        assert_eq!((e.field.as_deref(), e.reason.as_str()), (Some("city"), "missing required field"));
        let e = reject("rides", &RIDE.replace("2026-11-24T10:15:00.250Z", "yesterday"));
        assert_eq!(e.field.as_deref(), Some("timestamp"));
        let e = reject("rides", &RIDE.replace(r#""user_id""#, r#""colour":1,"user_id""#));
        assert_eq!((e.field.as_deref(), e.reason.as_str()), (Some("colour"), "unknown field"));
        let e = reject("rides", &RIDE.replace(r#""lng":13.4"#, r#""lng":13.4,"alt":3"#));
        assert_eq!(e.field.as_deref(), Some("pickup"));
        let e = reject("rides", r#"{"ride_id": "#);
        assert!(e.field.is_none() && e.reason.starts_with("truncated JSON"), "{e}");
        let e = reject("rides", "[1,2]");
        assert!(e.field.is_none(), "{e}");
        let e = reject("rides", &format!("{RIDE} trailing"));
        assert!(e.field.is_none() && e.reason.contains("malformed"), "{e}");
        let e = reject("rides", &RIDE.replace(r#""ride_id":"r-1","#, r#""ride_id":"r-1","ride_id":"r-2","#));
        assert_eq!((e.field.as_deref(), e.reason.as_str()), (Some("ride_id"), "appears twice"));
        let e = reject("rides", &RIDE.replace("\"2026-11-24T10:15:00.250Z\"", "99999999999999999"));
        assert!(e.reason.contains("out of range"), "{e}");
    }

    #[test]
    fn deletes_need_only_the_id() {
        let spec = spec();
        let d = Decoder::new(spec.domain("app_events").expect("app_events"));
        let ev = d.decode(br#"{"event_id":"e1","_deleted":true,"_version":7}"#).expect("delete");
        assert_eq!((ev.op, ev.version, ev.event_id.as_deref()), (Op::Delete, Some(7), Some("e1")));
        assert!(d.decode(br#"{"_deleted":true,"_version":7}"#).is_err());
    }
}
