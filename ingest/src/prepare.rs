//! Turning request bodies into Kafka records: decode and validate every event
//! against its domain, complete the envelope (event id, `ingested_at`,
//! `_version`), encode the canonical JSON and the record key. A request is
//! prepared completely before anything is produced, so an invalid event means
//! nothing of its request reaches Kafka.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use pulse_model::decode::check_identifier;
use pulse_model::spec::{DEFAULT_ID_LENGTH, EVENT_ID};
use pulse_model::{Clock, DecodeError, Decoder, Domain, Event, FieldType, Op, TimeBounds, Value, encode_json};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::body::Item;

/// The decoder's reason for an absent required field.
const MISSING: &str = "missing required field";

/// One rejected event of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Detail {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub field: Option<String>,
    pub reason: String,
}

impl Detail {
    fn new(index: usize, line: Option<usize>, e: DecodeError) -> Detail {
        Detail { index, line, field: e.field, reason: e.reason }
    }

    fn field(index: usize, line: Option<usize>, field: &str, reason: impl Into<String>) -> Detail {
        Detail { index, line, field: Some(field.to_string()), reason: reason.into() }
    }
}

/// Event versions: ingest time in µs, strictly increasing within the process
/// (`max(last + 1, now)`), so that later writes of an event always win.
#[derive(Debug, Default)]
pub struct VersionClock(AtomicU64);

impl VersionClock {
    /// Reserves `n` consecutive versions; returns the first.
    pub fn reserve(&self, n: usize) -> u64 {
        let n = n.max(1) as u64;
        let now = now_us();
        let mut first = 0;
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            first = (last + 1).max(now);
            Some(first + n - 1)
        });
        first
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub use pulse_model::now_ms;

/// What ingest stamps on every event of one request.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub ingested_at: i64,
    pub first_version: u64,
}

impl Stamp {
    pub fn new(clock: &VersionClock, events: usize) -> Stamp {
        Stamp { ingested_at: now_ms(), first_version: clock.reserve(events) }
    }
}

/// A new UUID v7 (time-ordered) in its hyphenated form.
pub fn new_event_id(ms: i64) -> CompactString {
    thread_local! {
        // Seeded once per thread from the OS (through uuid's own v7 generator).
        static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64({
            let seed = uuid::Uuid::now_v7().as_u128();
            (seed as u64) ^ ((seed >> 64) as u64)
        }));
    }
    let mut random = [0u8; 10];
    RNG.with(|r| r.borrow_mut().fill(&mut random));
    let id = uuid::Builder::from_unix_timestamp_millis(ms.max(0) as u64, &random).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    CompactString::from(&*id.hyphenated().encode_lower(&mut buf))
}

/// Encoded records of one request, plus the JSON list of their ids.
#[derive(Debug, Default)]
pub struct Batch {
    payloads: Vec<u8>,
    keys: Vec<u8>,
    /// End offsets of each record's payload and key, and whether it has a key.
    ends: Vec<(usize, usize, bool)>,
    /// `"id1","id2",...`
    ids: Vec<u8>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.payloads.clear();
        self.keys.clear();
        self.ends.clear();
        self.ids.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key and payload of record `i`.
    pub fn record(&self, i: usize) -> (Option<&[u8]>, &[u8]) {
        let (p0, k0) = if i == 0 { (0, 0) } else { (self.ends[i - 1].0, self.ends[i - 1].1) };
        let (p1, k1, has_key) = self.ends[i];
        (has_key.then(|| &self.keys[k0..k1]), &self.payloads[p0..p1])
    }

    /// Every record in order: (key, payload).
    pub fn records(&self) -> impl Iterator<Item = (Option<&[u8]>, &[u8])> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }

    /// Bytes of all payloads (for metrics and sizing).
    pub fn payload_bytes(&self) -> usize {
        self.payloads.len()
    }

    /// The 202 answer: `{"accepted":n,"ids":[...]}`.
    pub fn accepted_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ids.len() + 40);
        let _ = write!(out, "{{\"accepted\":{},\"ids\":[", self.len());
        out.extend_from_slice(&self.ids);
        out.extend_from_slice(b"]}");
        out
    }

    fn push(&mut self, domain: &Domain, key_field: usize, ev: &Event, max_event_bytes: usize) -> Result<(), String> {
        let start = self.payloads.len();
        encode_json(domain, ev, &mut self.payloads);
        let size = self.payloads.len() - start;
        if size > max_event_bytes {
            self.payloads.truncate(start);
            return Err(format!("the event is {size} bytes encoded; at most {max_event_bytes} fit in one Kafka record"));
        }
        let has_key = match ev.values.get(key_field) {
            None | Some(Value::Null) => false,
            Some(v) => {
                write_key(v, &domain.fields[key_field].ty, &mut self.keys);
                true
            }
        };
        self.ends.push((self.payloads.len(), self.keys.len(), has_key));
        if !self.ids.is_empty() {
            self.ids.push(b',');
        }
        let id = ev.event_id.as_deref().unwrap_or_default();
        let _ = serde_json::to_writer(&mut self.ids, id);
        Ok(())
    }
}

/// The Kafka key of an event: the key field's value as text.
fn write_key(v: &Value, ty: &FieldType, out: &mut Vec<u8>) {
    match v {
        Value::Null => {}
        Value::Str(s) => out.extend_from_slice(s.as_bytes()),
        Value::Enum(i) => {
            if let FieldType::Enum(values) = ty
                && let Some(name) = values.get(*i as usize)
            {
                out.extend_from_slice(name.as_bytes());
            }
        }
        Value::Int(i) | Value::Time(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(x) => {
            let _ = write!(out, "{x}");
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Point { lat, lng } => {
            let _ = write!(out, "{lat},{lng}");
        }
    }
}

/// How one domain's events are validated and turned into records.
#[derive(Debug, Clone)]
pub struct DomainWriter {
    pub domain: Domain,
    decoder: Decoder,
    bounds: TimeBounds,
    event_id_field: Option<usize>,
}

impl DomainWriter {
    pub fn new(domain: &Domain) -> DomainWriter {
        DomainWriter { decoder: Decoder::new(domain), bounds: TimeBounds::of(domain), event_id_field: domain.field_index(EVENT_ID), domain: domain.clone() }
    }

    pub fn name(&self) -> &str {
        &self.domain.name
    }

    pub fn topic(&self) -> &str {
        &self.domain.topic
    }

    pub fn mutable(&self) -> bool {
        self.domain.mutable
    }

    /// Decodes one event; when the domain declares `event_id` and the event has
    /// none, the id (`id`, or a new UUID v7) is filled in first.
    fn decode(&self, raw: &[u8], id: Option<&str>, ms: i64) -> Result<Event, DecodeError> {
        match self.decoder.decode(raw) {
            Err(e) if self.event_id_field.is_some() && e.field.as_deref() == Some(EVENT_ID) && e.reason == MISSING => {
                let id: Cow<'_, str> = match id {
                    Some(id) => Cow::Borrowed(id),
                    None => Cow::Owned(new_event_id(ms).into()),
                };
                match with_event_id(raw, &id) {
                    Some(spliced) => self.decoder.decode(&spliced),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// The trust boundary's clock rule, against ingest's clock.
    fn check_time(&self, ev: &Event, stamp: Stamp) -> Result<(), String> {
        self.bounds.check(ev.time, stamp.ingested_at, Clock::Ingest).map_err(|e| e.to_string())
    }

    /// Completes the envelope of a decoded event.
    fn stamp(&self, ev: &mut Event, stamp: Stamp, i: usize) {
        if ev.event_id.is_none() {
            let id = new_event_id(stamp.ingested_at);
            if let Some(f) = self.event_id_field {
                ev.values[f] = Value::Str(id.clone());
            }
            ev.event_id = Some(id);
        }
        ev.ingested_at = Some(stamp.ingested_at);
        ev.version = Some(stamp.first_version + i as u64);
    }

    /// Prepares the events of a POST (`items` index `body`). On any invalid
    /// event, returns every invalid event's detail and leaves `out` empty.
    pub fn prepare_inserts(&self, body: &[u8], items: &[Item], stamp: Stamp, max_event_bytes: usize, out: &mut Batch) -> Result<(), Vec<Detail>> {
        out.clear();
        let mut bad = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let raw = &body[item.range.clone()];
            let mut ev = match self.decode(raw, None, stamp.ingested_at) {
                Ok(ev) => ev,
                Err(e) => {
                    bad.push(Detail::new(i, item.line, e));
                    continue;
                }
            };
            if ev.op == Op::Delete {
                bad.push(Detail::field(i, item.line, "_deleted", format!("deletes are sent as DELETE /v1/events/{}/{{id}}", self.domain.name)));
                continue;
            }
            if let Err(reason) = self.check_time(&ev, stamp) {
                bad.push(Detail::field(i, item.line, &self.domain.time_field().name, reason));
                continue;
            }
            if !bad.is_empty() {
                // Already rejected: only validate the rest.
                continue;
            }
            self.stamp(&mut ev, stamp, i);
            if let Err(reason) = out.push(&self.domain, self.domain.key, &ev, max_event_bytes) {
                bad.push(Detail { index: i, line: item.line, field: None, reason });
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            out.clear();
            Err(bad)
        }
    }

    /// Prepares the replacement of event `id` (PUT). The body's `event_id`, if
    /// any, must be `id`.
    pub fn prepare_replace(&self, body: &[u8], id: &str, stamp: Stamp, max_event_bytes: usize, out: &mut Batch) -> Result<(), Vec<Detail>> {
        out.clear();
        let raw = body.trim_ascii();
        let reject = |field: Option<&str>, reason: String| Err(vec![Detail { index: 0, line: None, field: field.map(str::to_string), reason }]);
        if id.is_empty() {
            return reject(Some(EVENT_ID), "must not be empty".into());
        }
        let mut ev = match self.decode(raw, Some(id), stamp.ingested_at) {
            Ok(ev) => ev,
            Err(e) => return Err(vec![Detail::new(0, None, e)]),
        };
        if ev.op == Op::Delete {
            return reject(Some("_deleted"), format!("deletes are sent as DELETE /v1/events/{}/{{id}}", self.domain.name));
        }
        match ev.event_id.as_deref() {
            Some(have) if have != id => return reject(Some(EVENT_ID), format!("is `{have}` but the path says `{id}`; leave it out or make them equal")),
            _ => {}
        }
        if let Err(reason) = self.check_time(&ev, stamp) {
            return reject(Some(&self.domain.time_field().name), reason);
        }
        let id = CompactString::from(id);
        if let Some(f) = self.event_id_field {
            ev.values[f] = Value::Str(id.clone());
        }
        ev.event_id = Some(id);
        self.stamp(&mut ev, stamp, 0);
        out.push(&self.domain, self.domain.key, &ev, max_event_bytes).or_else(|reason| reject(None, reason))
    }

    /// Prepares the deletion of event `id` (DELETE): a record with only the id,
    /// the version and `_deleted: true`.
    pub fn prepare_delete(&self, id: &str, stamp: Stamp, out: &mut Batch) -> Result<(), Vec<Detail>> {
        out.clear();
        if id.is_empty() {
            return Err(vec![Detail::field(0, None, EVENT_ID, "must not be empty")]);
        }
        if let Err(e) = check_identifier(EVENT_ID, id, DEFAULT_ID_LENGTH) {
            return Err(vec![Detail::new(0, None, e)]);
        }
        let id = CompactString::from(id);
        let mut values = vec![Value::Null; self.domain.fields.len()];
        if let Some(f) = self.event_id_field {
            values[f] = Value::Str(id.clone());
        }
        if matches!(self.domain.fields[self.domain.key].ty, FieldType::String) {
            values[self.domain.key] = Value::Str(id.clone());
        }
        let ev = Event {
            values,
            time: stamp.ingested_at,
            event_id: Some(id),
            ingested_at: Some(stamp.ingested_at),
            version: Some(stamp.first_version),
            op: Op::Delete,
        };
        out.push(&self.domain, self.domain.key, &ev, usize::MAX).map_err(|reason| vec![Detail { index: 0, line: None, field: None, reason }])
    }
}

/// `raw` (a JSON object) with `"event_id":"<id>"` inserted as its first member.
fn with_event_id(raw: &[u8], id: &str) -> Option<Vec<u8>> {
    let raw = raw.trim_ascii_start();
    let rest = raw.strip_prefix(b"{")?;
    let mut out = Vec::with_capacity(raw.len() + id.len() + 16);
    out.extend_from_slice(b"{\"event_id\":");
    serde_json::to_writer(&mut out, id).ok()?;
    if rest.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Format, split};
    use pulse_model::Spec;
    use std::path::Path;

    fn spec() -> Spec {
        Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    const RIDE: &str =
        r#"{"event_type":"cancelled","ride_id":"r-1","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","timestamp":"2026-11-24T10:15:00.250Z"}"#;
    const APP: &str = r#"{"session_id":"s-1","event_name":"login","latency_ms":12,"timestamp":1795515300250}"#;

    /// The test events' own time (2026-11-24T10:15:00.250Z) as ingest's clock.
    const AT: i64 = 1_795_515_300_250;

    fn stamp_at(clock: &VersionClock, events: usize) -> Stamp {
        Stamp { ingested_at: AT, first_version: clock.reserve(events) }
    }

    fn prepare(domain: &str, body: &str) -> Result<(Batch, Vec<serde_json::Value>), Vec<Detail>> {
        let spec = spec();
        let w = DomainWriter::new(spec.domain(domain).expect("domain"));
        let format = if body.trim_start().starts_with(['{', '[']) && !body.contains("}\n{") { Format::Json } else { Format::Ndjson };
        let mut items = Vec::new();
        split(format, body.as_bytes(), 100, &mut items).expect("split");
        let mut batch = Batch::default();
        let clock = VersionClock::default();
        w.prepare_inserts(body.as_bytes(), &items, stamp_at(&clock, items.len()), 1_000_000, &mut batch)?;
        let values = batch.records().map(|(_, p)| serde_json::from_slice(p).expect("canonical JSON")).collect();
        Ok((batch, values))
    }

    #[test]
    fn stamps_the_envelope() {
        let (batch, v) = prepare("rides", &format!("[{RIDE},{RIDE}]")).expect("valid");
        assert_eq!(batch.len(), 2);
        let id0 = v[0]["event_id"].as_str().expect("assigned id");
        assert_eq!(id0.len(), 36);
        assert_eq!(&id0[14..15], "7", "UUID v7: {id0}");
        assert_ne!(v[0]["event_id"], v[1]["event_id"]);
        let (v0, v1) = (v[0]["_version"].as_u64().expect("version"), v[1]["_version"].as_u64().expect("version"));
        assert_eq!(v1, v0 + 1);
        assert!(v0 > 1_700_000_000_000_000, "µs: {v0}");
        assert!(v[0]["ingested_at"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert_eq!(v[0]["event_type"], "cancelled");
        assert_eq!(batch.record(1).0, Some(&b"r-1"[..]));
        let answer: serde_json::Value = serde_json::from_slice(&batch.accepted_json()).expect("answer");
        assert_eq!(answer["accepted"], 2);
        assert_eq!(answer["ids"][0].as_str(), Some(id0));
    }

    #[test]
    fn keeps_a_given_id_and_fills_a_missing_declared_one() {
        let (_, v) = prepare("rides", &RIDE.replace("{", r#"{"event_id":"mine","#)).expect("valid");
        assert_eq!(v[0]["event_id"], "mine");
        let (batch, v) = prepare("app_events", APP).expect("app event without id");
        let id = v[0]["event_id"].as_str().expect("id");
        assert_eq!(id.len(), 36);
        // app_events are keyed by event_id.
        assert_eq!(batch.record(0).0, Some(id.as_bytes()));
        let d = prepare("app_events", "{ }").map(|_| ()).expect_err("empty object");
        assert_eq!(d[0].field.as_deref(), Some("session_id"), "the next missing field is reported");
    }

    #[test]
    fn lists_every_bad_event_and_produces_nothing() {
        let bad = RIDE.replace("\"Berlin\"", "7");
        let body = format!("{RIDE}\n{bad}\n\n{RIDE}\n{{\"nope\n{}", RIDE.replace("cancelled", "teleported"));
        let details = prepare("rides", &body).map(|_| ()).expect_err("invalid");
        let got: Vec<_> = details.iter().map(|d| (d.index, d.line, d.field.clone())).collect();
        assert_eq!(got, vec![(1, Some(2), Some("city".into())), (3, Some(5), None), (4, Some(6), Some("event_type".into()))]);
        let details = prepare("rides", &RIDE.replace("{", r#"{"_deleted":true,"#)).map(|_| ()).expect_err("delete in POST");
        assert_eq!(details[0].field.as_deref(), Some("_deleted"));
    }

    #[test]
    fn replaces_and_deletes_by_id() {
        let spec = spec();
        let w = DomainWriter::new(spec.domain("app_events").expect("app_events"));
        let clock = VersionClock::default();
        let mut batch = Batch::default();
        w.prepare_replace(APP.as_bytes(), "e-1", stamp_at(&clock, 1), 1_000_000, &mut batch).expect("replace");
        let v: serde_json::Value = serde_json::from_slice(batch.record(0).1).expect("json");
        assert_eq!((v["event_id"].as_str(), batch.record(0).0), (Some("e-1"), Some(&b"e-1"[..])));
        let same = APP.replace("{", r#"{"event_id":"e-1","#);
        assert!(w.prepare_replace(same.as_bytes(), "e-1", stamp_at(&clock, 1), 1_000_000, &mut batch).is_ok());
        let other = APP.replace("{", r#"{"event_id":"e-2","#);
        let d = w.prepare_replace(other.as_bytes(), "e-1", stamp_at(&clock, 1), 1_000_000, &mut batch).expect_err("id mismatch");
        assert_eq!(d[0].field.as_deref(), Some("event_id"));
        w.prepare_delete("e-1", stamp_at(&clock, 1), &mut batch).expect("delete");
        let v: serde_json::Value = serde_json::from_slice(batch.record(0).1).expect("json");
        assert_eq!(v["_deleted"], true);
        assert_eq!(v["event_id"], "e-1");
        assert!(v["_version"].as_u64().is_some() && v["ingested_at"].is_string());
        assert_eq!(v.as_object().map(|o| o.len()), Some(4), "{v}");
        // The canonical delete decodes as a delete.
        let ev = Decoder::new(&w.domain).decode(batch.record(0).1).expect("decodes");
        assert_eq!(ev.op, Op::Delete);
    }

    #[test]
    fn refuses_what_crosses_the_trust_boundary() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("\"2026-11-24T10:15:00.250Z\"", "\"2099-01-01T00:00:00Z\"", "timestamp", "max_future"),
            ("\"2026-11-24T10:15:00.250Z\"", "\"2026-11-24T10:20:00.251Z\"", "timestamp", "max_future"),
            ("\"2026-11-24T10:15:00.250Z\"", "\"1900-01-01T00:00:00Z\"", "timestamp", "max_age"),
            ("\"2026-11-24T10:15:00.250Z\"", "\"2026-11-17T10:15:00.249Z\"", "timestamp", "max_age"),
            ("12.5", "-5", "estimated_fare", "minimum"),
            ("12.5", "1e308", "estimated_fare", "maximum"),
            ("\"Berlin\"", "\"Ber\\nlin\"", "city", "U+000A"),
            ("\"Berlin\"", "\"Ber\\u202elin\"", "city", "U+202E"),
            ("\"Berlin\"", "\"Ber\\u0085lin\"", "city", "U+0085"),
            ("\"r-1\"", "\"r\\u0000-1\"", "ride_id", "U+0000"),
            ("\"Berlin\"", "\"__overflow__\"", "city", "reserved"),
        ];
        for (from, to, field, needle) in cases {
            let body = RIDE.replace(from, to);
            let d = prepare("rides", &body).map(|_| ()).expect_err(&body);
            assert_eq!(d[0].field.as_deref(), Some(*field), "{body}: {d:?}");
            assert!(d[0].reason.contains(needle), "{body}: {}", d[0].reason);
        }
        // Exactly at the bounds is accepted.
        for (from, to) in [("\"2026-11-24T10:15:00.250Z\"", "\"2026-11-24T10:20:00.250Z\""), ("12.5", "0"), ("12.5", "1000000")] {
            prepare("rides", &RIDE.replace(from, to)).expect("at the bound");
        }
        let long = "x".repeat(257);
        let d = prepare("rides", &RIDE.replace("Berlin", &long)).map(|_| ()).expect_err("long city");
        assert!(d[0].reason.contains("at most 256"), "{:?}", d[0]);
        // An event id with a newline is refused (it would be stored but unreadable).
        let d = prepare("rides", &RIDE.replace("{", "{\"event_id\":\"a\\nb\",")).map(|_| ()).expect_err("newline id");
        assert_eq!(d[0].field.as_deref(), Some("event_id"));
        // NFD and NFC spellings of a city are one city.
        let (_, nfd) = prepare("rides", &RIDE.replace("Berlin", "Zu\u{308}rich")).expect("NFD");
        let (_, nfc) = prepare("rides", &RIDE.replace("Berlin", "Z\u{fc}rich")).expect("NFC");
        assert_eq!(nfd[0]["city"], nfc[0]["city"]);
        assert_eq!(nfc[0]["city"], "Z\u{fc}rich");
        // DELETE ids are checked too.
        let spec = spec();
        let w = DomainWriter::new(spec.domain("app_events").expect("app_events"));
        let mut batch = Batch::default();
        let d = w.prepare_delete("e\u{202e}1", stamp_at(&VersionClock::default(), 1), &mut batch).expect_err("bidi id");
        assert!(d[0].reason.contains("U+202E"), "{d:?}");
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;
        use pulse_model::spec::OVERFLOW_GROUP;
        use unicode_normalization::UnicodeNormalization as _;

        /// Event times across centuries, around the bounds, and exactly on them.
        fn time() -> impl Strategy<Value = i64> {
            prop_oneof![
                (-300 * 31_557_600_000i64..300 * 31_557_600_000i64).prop_map(|d| AT + d),
                (-8 * 86_400_000i64..10 * 60_000i64).prop_map(|d| AT + d),
                Just(AT + 5 * 60_000),
                Just(AT + 5 * 60_000 + 1),
                Just(AT - 7 * 86_400_000),
                Just(AT - 7 * 86_400_000 - 1),
            ]
        }

        /// Numbers JSON can carry: extremes, negatives, tiny and huge.
        fn number() -> impl Strategy<Value = f64> {
            prop_oneof![Just(0.0), Just(-5.0), Just(1e308), Just(-1e308), Just(5e-324), Just(1_000_000.0), Just(1_000_000.5), -1e7f64..1e7f64]
        }

        /// Odd strings: controls, bidi, combining marks, NFD, emoji, the reserved group, long.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z ]{1,12}",
                proptest::collection::vec(
                    prop_oneof![
                        Just('a'),
                        Just('\u{0}'),
                        Just('\n'),
                        Just('\u{85}'),
                        Just('\u{202e}'),
                        Just('\u{2067}'),
                        Just('u'),
                        Just('\u{308}'),
                        Just('\u{fc}'),
                        Just('😀'),
                        Just('\u{fffd}')
                    ],
                    1..20
                )
                .prop_map(|v| v.into_iter().collect()),
                (250usize..300).prop_map(|n| "é".repeat(n / 2)),
                Just(OVERFLOW_GROUP.to_string()),
            ]
        }

        #[derive(Debug, Clone)]
        struct Hostile {
            id: String,
            city: String,
            fare: f64,
            time: i64,
        }

        fn event() -> impl Strategy<Value = Hostile> {
            (prop_oneof![Just("dup".to_string()), "[a-z0-9-]{1,8}", text()], text(), number(), time()).prop_map(|(id, city, fare, time)| Hostile {
                id,
                city,
                fare,
                time,
            })
        }

        fn json(h: &Hostile) -> String {
            serde_json::json!({"event_id": h.id, "event_type": "requested", "ride_id": "r", "city": h.city, "estimated_fare": h.fare, "user_id": "u", "timestamp": h.time}).to_string()
        }

        /// What the trust boundary promises about one event, judged independently of the decoder.
        fn acceptable(h: &Hostile) -> bool {
            let clean = |s: &str| !s.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c));
            let city: String = h.city.nfc().collect();
            (AT - 7 * 86_400_000..=AT + 5 * 60_000).contains(&h.time)
                && (0.0..=1_000_000.0).contains(&h.fare)
                && clean(&h.city)
                && clean(&h.id)
                && !h.id.is_empty()
                && h.id.len() <= 256
                && city.len() <= 256
                && city != OVERFLOW_GROUP
                && h.id != OVERFLOW_GROUP
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn a_hostile_batch_is_refused_whole_or_stored_within_bounds(batch in proptest::collection::vec(event(), 1..12)) {
                let body: String = batch.iter().map(|h| json(h) + "\n").collect();
                let want_bad: Vec<usize> = batch.iter().enumerate().filter(|(_, h)| !acceptable(h)).map(|(i, _)| i).collect();
                match prepare("rides", &body) {
                    Ok((stored, values)) => {
                        prop_assert!(want_bad.is_empty(), "accepted although {want_bad:?} cross the boundary: {body}");
                        prop_assert_eq!(stored.len(), batch.len());
                        for (h, v) in batch.iter().zip(&values) {
                            let city = v["city"].as_str().unwrap_or_default();
                            let nfc: String = h.city.nfc().collect();
                            prop_assert_eq!(city, nfc.as_str(), "dimensions are stored in NFC");
                            prop_assert!(v["estimated_fare"].as_f64().is_some_and(f64::is_finite));
                        }
                    }
                    Err(details) => {
                        let got: Vec<usize> = details.iter().map(|d| d.index).collect();
                        prop_assert_eq!(got, want_bad, "{:?}", details);
                        prop_assert!(details.iter().all(|d| d.field.is_some() && !d.reason.is_empty()));
                    }
                }
            }
        }
    }

    #[test]
    fn versions_are_strictly_increasing() {
        let clock = VersionClock::default();
        let a = clock.reserve(5);
        let b = clock.reserve(1);
        assert_eq!(b, a + 5);
        assert!(clock.reserve(3) > b);
    }

    #[test]
    fn rejects_oversized_events() {
        let spec = spec();
        let w = DomainWriter::new(spec.domain("rides").expect("rides"));
        let mut batch = Batch::default();
        let items = [Item { range: 0..RIDE.len(), line: None }];
        let d = w.prepare_inserts(RIDE.as_bytes(), &items, stamp_at(&VersionClock::default(), 1), 100, &mut batch).expect_err("too big");
        assert!(d[0].reason.contains("at most 100"), "{:?}", d[0]);
        assert!(batch.is_empty());
    }

    #[test]
    fn keys_are_text() {
        let mut out = Vec::new();
        write_key(&Value::Enum(1), &FieldType::Enum(vec!["a".into(), "b".into()]), &mut out);
        write_key(&Value::Int(-42), &FieldType::Int, &mut out);
        assert_eq!(out, b"b-42");
    }
}
