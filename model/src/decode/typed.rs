//! The reader's schema-driven part: an event object read field by field,
//! each value checked against its field's kind and limits as it is read.

use super::DecodeError;
use super::decoder::{Decoder, Kind, Partial, Slot};
use super::limits::{Limits, checked_string};
use super::reader::{Num, Reader};
use super::time::{MAX_TIME_MS, MIN_TIME_MS, parse_rfc3339_ms};
use crate::spec::EVENT_ID;
use crate::value::Value;

impl Reader<'_> {
    /// Reads the value of field `name` as `kind`, within `limits`.
    fn typed(&mut self, kind: &Kind, name: &str, limits: &Limits) -> Result<Value, Box<DecodeError>> {
        let c = self.peek();
        // Not the start of any JSON value (or the end of the input): a syntax error, not a type error.
        if !matches!(c, Some(b'"' | b'{' | b'[' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9')) {
            return Err(self.syntax("a JSON value"));
        }
        if c == Some(b'n') {
            self.literal(b"null")?;
            return Ok(Value::Null);
        }
        let mismatch = |this: &mut Self, want: &str| {
            let got = this.value_kind();
            Err(DecodeError::field(name, format!("expected {want}, got {got}")))
        };
        let time = |t: i64| {
            if (MIN_TIME_MS..=MAX_TIME_MS).contains(&t) {
                Ok(Value::Time(t))
            } else {
                Err(DecodeError::field(name, "timestamp out of range (years 1900 to 2299)"))
            }
        };
        match kind {
            Kind::Str | Kind::Dim | Kind::Enum(_) => {
                if c != Some(b'"') {
                    return mismatch(self, "a string");
                }
                let s = self.string()?;
                let v = match kind {
                    Kind::Str => Value::Str(checked_string(s.as_str(), name, limits)?),
                    Kind::Dim if s.as_str().is_empty() => return Err(DecodeError::field(name, "must not be empty")),
                    Kind::Dim => Value::Str(checked_string(s.as_str(), name, limits)?),
                    Kind::Enum(values) => match values.iter().position(|v| v == s.as_str()) {
                        Some(i) => Value::Enum(i as u8),
                        None => return Err(DecodeError::field(name, format!("`{}` is not one of {}", s.as_str(), values.join(", ")))),
                    },
                    _ => Value::Null,
                };
                self.recycle(s);
                Ok(v)
            }
            Kind::Int | Kind::Float => {
                if !matches!(c, Some(b'-' | b'0'..=b'9')) {
                    return mismatch(self, if matches!(kind, Kind::Int) { "an integer" } else { "a number" });
                }
                let v = match (kind, self.number()?) {
                    (Kind::Int, Num::Int(i)) => Value::Int(i),
                    (Kind::Int, Num::Float(_)) => return Err(DecodeError::field(name, "expected an integer, got a number with a fraction or exponent")),
                    (_, Num::Int(i)) => Value::Float(i as f64),
                    (_, Num::Float(f)) => Value::Float(f),
                };
                if let Some(x) = v.as_f64() {
                    limits.number(name, x)?;
                }
                Ok(v)
            }
            Kind::Bool => match c {
                Some(b't') => self.literal(b"true").map(|()| Value::Bool(true)),
                Some(b'f') => self.literal(b"false").map(|()| Value::Bool(false)),
                _ => mismatch(self, "true or false"),
            },
            Kind::Time => match c {
                Some(b'"') => {
                    let s = self.string()?;
                    let t = parse_rfc3339_ms(s.as_str()).ok_or_else(|| {
                        DecodeError::field(name, format!("`{}` is not an RFC 3339 timestamp (e.g. 2026-11-24T10:15:00Z) or epoch milliseconds", s.as_str()))
                    })?;
                    self.recycle(s);
                    time(t)
                }
                Some(b'-' | b'0'..=b'9') => match self.number()? {
                    Num::Int(t) => time(t),
                    Num::Float(_) => Err(DecodeError::field(name, "epoch milliseconds must be an integer")),
                },
                _ => mismatch(self, "a timestamp (RFC 3339 string or epoch milliseconds)"),
            },
            Kind::Point => {
                if c != Some(b'{') {
                    return mismatch(self, "an object {\"lat\": .., \"lng\": ..}");
                }
                self.pos += 1;
                let (mut lat, mut lng) = (None, None);
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        let key = self.string()?;
                        let is_lat = match key.as_str() {
                            "lat" => true,
                            "lng" => false,
                            other => return Err(DecodeError::field(name, format!("unexpected key `{other}` (a point is {{\"lat\": .., \"lng\": ..}})"))),
                        };
                        self.expect(b':', "':'")?;
                        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
                            let got = self.value_kind();
                            return Err(DecodeError::field(name, format!("`{}` must be a number, got {got}", if is_lat { "lat" } else { "lng" })));
                        }
                        let n = match self.number()? {
                            Num::Int(i) => i as f64,
                            Num::Float(f) => f,
                        };
                        let slot = if is_lat { &mut lat } else { &mut lng };
                        if slot.replace(n).is_some() {
                            return Err(DecodeError::field(name, "a point has `lat` or `lng` twice"));
                        }
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.syntax("',' or '}'")),
                        }
                    }
                }
                match (lat, lng) {
                    (Some(lat), Some(lng)) if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng) => Ok(Value::Point { lat, lng }),
                    (Some(_), Some(_)) => Err(DecodeError::field(name, "lat must be within ±90 and lng within ±180")),
                    _ => Err(DecodeError::field(name, "a point needs numeric `lat` and `lng`")),
                }
            }
        }
    }

    pub(super) fn object(&mut self, dec: &Decoder) -> Result<Partial, Box<DecodeError>> {
        let mut p = Partial { values: vec![Value::Null; dec.kinds.len()], event_id: None, ingested_at: None, version: None, deleted: false };
        if self.peek() != Some(b'{') {
            let got = self.value_kind();
            return Err(DecodeError::body(format!("expected a JSON object, got {got}")));
        }
        self.pos += 1;
        let mut seen_envelope = [false; 4];
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.syntax("a field name"));
                }
                let key = self.string()?;
                let Some(slot) = dec.slot(key.as_str(), &mut self.hint) else {
                    return Err(DecodeError::field(key.as_str(), "unknown field"));
                };
                self.recycle(key);
                self.expect(b':', "':'")?;
                match slot {
                    Slot::Field(i) => {
                        let name = &dec.field_names[i];
                        let v = self.typed(&dec.kinds[i], name, &dec.limits[i])?;
                        if !p.values[i].is_null() {
                            return Err(DecodeError::field(name, "appears twice"));
                        }
                        p.values[i] = v;
                    }
                    envelope => {
                        let (idx, name, kind, limits) = match envelope {
                            Slot::EventId => (0, EVENT_ID, &Kind::Str, &Limits::ID),
                            Slot::IngestedAt => (1, "ingested_at", &Kind::Time, &Limits::NONE),
                            Slot::Version => (2, "_version", &Kind::Int, &Limits::NONE),
                            _ => (3, "_deleted", &Kind::Bool, &Limits::NONE),
                        };
                        if std::mem::replace(&mut seen_envelope[idx], true) {
                            return Err(DecodeError::field(name, "appears twice"));
                        }
                        match self.typed(kind, name, limits)? {
                            Value::Str(s) => p.event_id = Some(s),
                            Value::Time(t) => p.ingested_at = Some(t),
                            Value::Int(v) => p.version = Some(u64::try_from(v).map_err(|_| DecodeError::field(name, "must not be negative"))?),
                            Value::Bool(b) => p.deleted = b,
                            _ => {}
                        }
                    }
                }
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.syntax("',' or '}'")),
                }
            }
        }
        if self.peek().is_some() {
            return Err(DecodeError::body(format!("malformed JSON: trailing characters at byte {}", self.pos)));
        }
        Ok(p)
    }
}
