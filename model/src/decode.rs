//! Schema-driven JSON decoding of one domain's events into compact typed rows,
//! and the canonical JSON encoding Pulse writes to Kafka.
//!
//! The decoder walks the JSON object once with a strict hand-written reader,
//! mapping each key to its field slot and checking the value against the
//! field's declared type as it is read; nothing is buffered into a generic
//! JSON value. The tests hold it to a serde_json-based reference decoder.

use std::fmt;
use std::io::Write as _;

use compact_str::CompactString;

use crate::spec::{DEFAULT_ID_LENGTH, Domain, EVENT_ID, Field, FieldType, OVERFLOW_GROUP};
use crate::value::{Event, Op, Value};

/// Why an event was rejected; `field` names the offending field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct DecodeError {
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl DecodeError {
    // Boxed: the reader's results stay small on the hot path.
    fn field(field: &str, reason: impl Into<String>) -> Box<Self> {
        Box::new(DecodeError { field: Some(field.to_string()), reason: reason.into() })
    }

    fn body(reason: impl Into<String>) -> Box<Self> {
        Box::new(DecodeError { field: None, reason: reason.into() })
    }
}

/// Earliest and latest timestamps ClickHouse's `DateTime64(3)` can hold.
pub const MIN_TIME_MS: i64 = -2_208_988_800_000; // 1900-01-01
pub const MAX_TIME_MS: i64 = 10_413_791_999_999; // 2299-12-31T23:59:59.999

#[derive(Debug, Clone, Copy)]
enum Slot {
    Field(usize),
    EventId,
    IngestedAt,
    Version,
    Deleted,
}

/// What a field's values must satisfy besides their type.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_len: usize,
    /// Identifiers and dimensions: no control or bidi characters.
    strict: bool,
    /// Dimensions: stored in Unicode NFC, so that one city has one spelling.
    nfc: bool,
    min: Option<f64>,
    max: Option<f64>,
}

impl Limits {
    const NONE: Limits = Limits { max_len: usize::MAX, strict: false, nfc: false, min: None, max: None };
    const ID: Limits = Limits { max_len: DEFAULT_ID_LENGTH, strict: true, nfc: false, min: None, max: None };

    fn of(f: &Field, identity: bool) -> Limits {
        Limits { max_len: f.max_length, strict: f.dimension || identity, nfc: f.dimension, min: f.min, max: f.max }
    }

    fn number(&self, name: &str, v: f64) -> Result<(), Box<DecodeError>> {
        if let Some(min) = self.min
            && v < min
        {
            return Err(DecodeError::field(name, format!("{v} is below the minimum {min}")));
        }
        if let Some(max) = self.max
            && v > max
        {
            return Err(DecodeError::field(name, format!("{v} is above the maximum {max}")));
        }
        Ok(())
    }
}

/// Characters refused in identifiers and dimensions: controls (C0, DEL, C1)
/// and the bidirectional formatting characters that make text display as
/// something else than it is.
pub fn is_forbidden_in_identifier(c: char) -> bool {
    c.is_control() || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks an identifier or a dimension value: at most `max_len` bytes, no
/// control or bidirectional character. Ingest applies it to ids in paths too.
pub fn check_identifier(name: &str, s: &str, max_len: usize) -> Result<(), DecodeError> {
    check_strict(name, s, max_len).map_err(|e| *e)
}

fn check_strict(name: &str, s: &str, max_len: usize) -> Result<(), Box<DecodeError>> {
    if s.len() > max_len {
        return Err(DecodeError::field(name, format!("is {} bytes long; at most {max_len} are accepted (`max_length`)", s.len())));
    }
    if let Some(c) = s.chars().find(|&c| is_forbidden_in_identifier(c)) {
        return Err(DecodeError::field(name, format!("contains the control or bidirectional character U+{:04X}", u32::from(c))));
    }
    Ok(())
}

/// Checks a string value against its field's limits; dimensions come back in NFC.
fn checked_string(s: &str, name: &str, limits: &Limits) -> Result<CompactString, Box<DecodeError>> {
    if s == OVERFLOW_GROUP {
        return Err(DecodeError::field(name, format!("`{OVERFLOW_GROUP}` is reserved for metrics' overflow groups")));
    }
    if limits.strict {
        check_strict(name, s, limits.max_len)?;
    } else if s.len() > limits.max_len {
        return Err(DecodeError::field(name, format!("is {} bytes long; at most {} are accepted (`max_length`)", s.len(), limits.max_len)));
    }
    if limits.nfc && !s.is_ascii() && unicode_normalization::is_nfc_quick(s.chars()) != unicode_normalization::IsNormalized::Yes {
        use unicode_normalization::UnicodeNormalization as _;
        let normalized: CompactString = s.nfc().collect();
        if normalized.len() > limits.max_len {
            return Err(DecodeError::field(name, format!("is {} bytes long in NFC; at most {} are accepted (`max_length`)", normalized.len(), limits.max_len)));
        }
        return Ok(normalized);
    }
    Ok(CompactString::new(s))
}

#[derive(Debug, Clone)]
enum Kind {
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
    names: Vec<(String, Slot)>,
    kinds: Vec<Kind>,
    limits: Vec<Limits>,
    field_names: Vec<String>,
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
    fn slot(&self, key: &str, hint: &mut usize) -> Option<Slot> {
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

struct Partial {
    values: Vec<Value>,
    event_id: Option<CompactString>,
    ingested_at: Option<i64>,
    version: Option<u64>,
    deleted: bool,
}

/// A strict, allocation-light reader of one flat JSON object (RFC 8259), typed
/// by the domain's schema as it goes. Strings without escapes are borrowed from
/// the input; only the strings an event keeps are copied.
struct Reader<'a> {
    /// The whole input, validated as UTF-8 once; string values are slices of it.
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    scratch: String,
    /// Producers send fields in a stable order: the slot after the last key is tried first.
    hint: usize,
}

/// What a JSON value starts with, for "expected X, got Y" messages.
fn kind_of(c: Option<u8>) -> &'static str {
    match c {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something that is not JSON",
    }
}

enum Num {
    Int(i64),
    Float(f64),
}

impl<'a> Reader<'a> {
    fn syntax(&self, what: &str) -> Box<DecodeError> {
        if self.pos >= self.b.len() {
            DecodeError::body(format!("truncated JSON: expected {what} at byte {}", self.pos))
        } else {
            DecodeError::body(format!("malformed JSON: expected {what} at byte {}", self.pos))
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &str) -> Result<(), Box<DecodeError>> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    /// Reads a string (the opening quote is next). Borrowed unless it has escapes.
    fn string(&mut self) -> Result<StrRef<'a>, Box<DecodeError>> {
        self.expect(b'"', "a string")?;
        let start = self.pos;
        let b = self.b;
        let mut i = start + special_byte_offset(&b[start..]);
        while i < b.len() {
            match b[i] {
                b'"' => {
                    self.pos = i + 1;
                    // Quotes are ASCII, so both ends are char boundaries of the validated text.
                    return self.text.get(start..i).map(StrRef::Borrowed).ok_or_else(|| DecodeError::body(format!("invalid UTF-8 in string at byte {start}")));
                }
                b'\\' => return self.escaped(start, i),
                0..=0x1f => {
                    self.pos = i;
                    return Err(self.syntax("no control characters inside a string"));
                }
                _ => i += 1,
            }
        }
        self.pos = b.len();
        Err(self.syntax("a closing quote"))
    }

    fn escaped(&mut self, start: usize, first_escape: usize) -> Result<StrRef<'a>, Box<DecodeError>> {
        let b = self.b;
        let text = self.text;
        let utf8 = |range: std::ops::Range<usize>| text.get(range).ok_or_else(|| DecodeError::body(format!("invalid UTF-8 in string at byte {start}")));
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.push_str(utf8(start..first_escape)?);
        let mut i = first_escape;
        let mut run = i;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    out.push_str(utf8(run..i)?);
                    self.pos = i + 1;
                    return Ok(StrRef::Owned(out));
                }
                b'\\' => {
                    out.push_str(utf8(run..i)?);
                    let Some(&e) = b.get(i + 1) else { break };
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            self.pos = i;
                            let hi = self.hex4()?;
                            i = self.pos;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return Err(DecodeError::body(format!("malformed JSON: lone surrogate at byte {i}")));
                                }
                                self.pos = i + 2;
                                let lo = self.hex4()?;
                                i = self.pos;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(DecodeError::body(format!("malformed JSON: bad surrogate pair at byte {i}")));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(hi)
                            };
                            match c {
                                Some(c) => out.push(c),
                                None => return Err(DecodeError::body(format!("malformed JSON: lone surrogate at byte {i}"))),
                            }
                        }
                        _ => {
                            self.pos = i - 1;
                            return Err(self.syntax("a valid escape"));
                        }
                    }
                    run = i;
                }
                0..=0x1f => {
                    self.pos = i;
                    return Err(self.syntax("no control characters inside a string"));
                }
                _ => i += 1,
            }
        }
        self.pos = b.len();
        Err(self.syntax("a closing quote"))
    }

    fn hex4(&mut self) -> Result<u32, Box<DecodeError>> {
        let digits = self.b.get(self.pos..self.pos + 4).ok_or_else(|| self.syntax("4 hex digits"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char).to_digit(16).ok_or_else(|| self.syntax("4 hex digits"))?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    fn number(&mut self) -> Result<Num, Box<DecodeError>> {
        self.ws();
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int_digits = i - int_start;
        if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
            self.pos = i;
            return Err(self.syntax("a number"));
        }
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            let frac = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == frac {
                self.pos = i;
                return Err(self.syntax("digits after the decimal point"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == exp {
                self.pos = i;
                return Err(self.syntax("exponent digits"));
            }
        }
        self.pos = i;
        let text = self.text.get(start..i).unwrap_or("0");
        let negative = int_start > start;
        if float && !matches!(b.get(i - 1), Some(b'e' | b'E')) && !text.contains(['e', 'E']) {
            // Clinger's fast path: with at most 15 significant digits the mantissa and
            // the power of ten are exact doubles, so one division rounds correctly.
            let digits = i - int_start - 1;
            if digits <= 15 {
                let (mut m, mut frac) = (0u64, 0usize);
                let mut after_point = false;
                for &d in &b[int_start..i] {
                    if d == b'.' {
                        after_point = true;
                    } else {
                        m = m * 10 + u64::from(d - b'0');
                        frac += usize::from(after_point);
                    }
                }
                const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
                let f = m as f64 / POW10[frac];
                return Ok(Num::Float(if negative { -f } else { f }));
            }
        }
        if !float {
            if int_digits <= 18 {
                let mut v: i64 = 0;
                for &d in &b[int_start..i] {
                    v = v * 10 + i64::from(d - b'0');
                }
                return Ok(Num::Int(if negative { -v } else { v }));
            }
            if let Ok(v) = text.parse::<i64>() {
                return Ok(Num::Int(v));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Num::Float(f)),
            _ => Err(DecodeError::body(format!("number out of range at byte {start}"))),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Box<DecodeError>> {
        self.ws();
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("a JSON value"))
        }
    }

    /// Skips any JSON value (used only to report a well-formed-but-wrong value).
    fn value_kind(&mut self) -> &'static str {
        kind_of(self.peek())
    }

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

    fn recycle(&mut self, s: StrRef<'a>) {
        if let StrRef::Owned(buf) = s {
            self.scratch = buf;
        }
    }

    fn object(&mut self, dec: &Decoder) -> Result<Partial, Box<DecodeError>> {
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

/// Offset of the first byte in `b` that ends a plain run inside a JSON string
/// (a quote, a backslash or a control character), or `b.len()`. Scans eight
/// bytes at a time (SWAR): the first flagged byte of each word is exact.
#[inline]
fn special_byte_offset(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let hits = (zero_in(quote) | zero_in(slash) | control) & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

enum StrRef<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl StrRef<'_> {
    fn as_str(&self) -> &str {
        match self {
            StrRef::Borrowed(s) => s,
            StrRef::Owned(s) => s,
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into epoch milliseconds.
/// A hand-written fast path for the common shape, chrono for the rest.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    fn digits(b: &[u8]) -> Option<i64> {
        let mut n = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    }
    let b = s.as_bytes();
    if b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b't' || b[10] == b' ') && b[13] == b':' && b[16] == b':' {
        let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
        let (hour, min, sec) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
        let offset_ms = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let off = digits(&[*h1, *h2])? * 3_600_000 + digits(&[*m1, *m2])? * 60_000;
                if *sign == b'+' { off } else { -off }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let sec = sec.min(59); // a leap second collapses onto :59, as ClickHouse does
        return Some(((days * 24 + hour) * 60 + min) * 60_000 + sec * 1000 + millis - offset_ms);
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

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
    use super::*;
    use crate::spec::Spec;
    use proptest::prelude::*;
    use std::path::Path;

    fn spec() -> Spec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        Spec::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const RIDE: &str = r#"{"event_type":"requested","ride_id":"r-1","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","pickup":{"lat":52.5,"lng":13.4},"timestamp":"2026-11-24T10:15:00.250Z"}"#;

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
    fn epoch_millis_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("2024-02-29T12:00:00.5Z"), Some(1_709_208_000_500));
        assert_eq!(parse_rfc3339_ms("2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-01-01T00:00:00.123456789Z"), Some(1_704_067_200_123));
        assert_eq!(parse_rfc3339_ms("2024-13-01T00:00:00Z"), None);
        let spec = spec();
        let d = Decoder::new(spec.domain("rides").expect("rides"));
        let ev = d.decode(RIDE.replace("\"2026-11-24T10:15:00.250Z\"", "1795515300250").as_bytes()).expect("epoch ms");
        assert_eq!(ev.time, 1_795_515_300_250);
    }

    #[test]
    fn deletes_need_only_the_id() {
        let spec = spec();
        let d = Decoder::new(spec.domain("app_events").expect("app_events"));
        let ev = d.decode(br#"{"event_id":"e1","_deleted":true,"_version":7}"#).expect("delete");
        assert_eq!((ev.op, ev.version, ev.event_id.as_deref()), (Op::Delete, Some(7), Some("e1")));
        assert!(d.decode(br#"{"_deleted":true,"_version":7}"#).is_err());
    }

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

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let spec = spec();
            for dom in &spec.domains {
                let _ = Decoder::new(dom).decode(&bytes);
            }
        }

        #[test]
        fn fast_timestamp_path_agrees_with_chrono(secs in -2_000_000_000i64..10_000_000_000, ms in 0i64..1000, off in -14i64*60..=14*60) {
            let t = chrono::DateTime::from_timestamp(secs, (ms * 1_000_000) as u32).expect("in range");
            let tz = chrono::FixedOffset::east_opt((off * 60) as i32).expect("offset");
            let text = t.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
            prop_assert_eq!(parse_rfc3339_ms(&text), Some(secs * 1000 + ms));
        }
    }
}
