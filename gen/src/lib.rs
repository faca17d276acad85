//! A deterministic generator of realistic events for the default spec's domains:
//! ride lifecycles (with cancellations and a configurable surge in one city),
//! driver locations, and app events (with updates and deletes). Used by
//! `pulse loadgen`, the benchmarks and the tests. It produces JSON text in
//! event-time order plus bounded disorder and an optional share of late events.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub const CITIES: [&str; 20] = [
    "Amsterdam",
    "Athens",
    "Barcelona",
    "Berlin",
    "Bogota",
    "Cairo",
    "Chicago",
    "Delhi",
    "Dublin",
    "Istanbul",
    "Jakarta",
    "Lagos",
    "Lima",
    "Lisbon",
    "London",
    "Madrid",
    "Nairobi",
    "Paris",
    "Seoul",
    "Toronto",
];

const EVENT_NAMES: [&str; 8] = ["login", "search", "view_item", "add_to_cart", "checkout", "payment", "logout", "chat"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Event time of the first event, ms since the epoch.
    pub start_ms: i64,
    /// Events per second of event time (all domains together).
    pub rate: f64,
    /// Share of each domain in the stream: rides, driver locations, app events.
    pub mix: [f64; 3],
    pub cities: usize,
    pub users: u64,
    pub drivers: u64,
    pub sessions: u64,
    /// Events are shuffled by up to this much event time (ms).
    pub disorder_ms: i64,
    /// Share of events sent far behind (older than any lateness), to exercise late-data handling.
    pub late_fraction: f64,
    pub late_by_ms: i64,
    /// From this event time on (ms after `start_ms`), `surge_city` cancels rides at `surge_cancel_rate`.
    pub surge_after_ms: Option<i64>,
    pub surge_city: usize,
    pub surge_cancel_rate: f64,
    /// Normal probability that a requested ride is cancelled.
    pub cancel_rate: f64,
    /// Share of app events that are later updated / deleted.
    pub update_fraction: f64,
    pub delete_fraction: f64,
    /// Updates and deletes pick among this many most recent app events: the
    /// larger, the further behind in event time a change can arrive (a change
    /// arriving after a window of its event closed is late for that window).
    pub change_pool: usize,
    /// Every ride event from an independent random user (production-shaped:
    /// nearly every event is a new distinct value in its pane), instead of one
    /// user per ride.
    pub independent_users: bool,
    /// Event times as RFC 3339 strings with milliseconds (`2026-12-02T06:12:47.123Z`)
    /// instead of epoch milliseconds.
    pub rfc3339: bool,
    /// App event latencies as unrounded floats (nearly every one unique), as
    /// measured latencies are, instead of whole milliseconds.
    pub float_latencies: bool,
}

/// The default first event time: the start of the previous hour (UTC), fixed
/// for the life of the process so that two generators with the same seed
/// produce the same stream. Recent, so that generated events are inside every
/// domain's retention (raw tables expire older rows by TTL).
pub fn recent_start_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        const HOUR_MS: i64 = 3_600_000;
        pulse_model::now_ms() / HOUR_MS * HOUR_MS - HOUR_MS
    })
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            start_ms: recent_start_ms(),
            rate: 1000.0,
            mix: [0.6, 0.25, 0.15],
            cities: 20,
            users: 100_000,
            drivers: 5_000,
            sessions: 20_000,
            disorder_ms: 2_000,
            late_fraction: 0.0,
            late_by_ms: 10 * 60_000,
            surge_after_ms: None,
            surge_city: 0,
            surge_cancel_rate: 0.45,
            cancel_rate: 0.12,
            update_fraction: 0.02,
            delete_fraction: 0.01,
            change_pool: 1000,
            independent_users: false,
            rfc3339: false,
            float_latencies: false,
        }
    }
}

/// The domain an event belongs to, by the default spec's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenDomain {
    Rides,
    DriverLocations,
    AppEvents,
}

impl GenDomain {
    pub fn name(self) -> &'static str {
        match self {
            GenDomain::Rides => "rides",
            GenDomain::DriverLocations => "driver_locations",
            GenDomain::AppEvents => "app_events",
        }
    }

    /// The field that keys the domain's Kafka records (as in `pulse.toml`).
    pub fn key_field(self) -> &'static str {
        match self {
            GenDomain::Rides => "ride_id",
            GenDomain::DriverLocations => "driver_id",
            GenDomain::AppEvents => "event_id",
        }
    }
}

/// One generated write.
#[derive(Debug, Clone, PartialEq)]
pub enum GenOp {
    /// A new event (JSON object).
    Insert { domain: GenDomain, json: String },
    /// Replace app event `id` with `json`.
    Update { domain: GenDomain, id: String, json: String },
    /// Delete app event `id`.
    Delete { domain: GenDomain, id: String },
}

impl GenOp {
    pub fn domain(&self) -> GenDomain {
        match self {
            GenOp::Insert { domain, .. } | GenOp::Update { domain, .. } | GenOp::Delete { domain, .. } => *domain,
        }
    }

    /// The Kafka record a producer writing straight to the domain's topic sends
    /// for this write: its key (the domain's key field) and JSON payload. App
    /// events are mutable, so their writes carry `_version` (as ingest adds it to
    /// PUT and DELETE), and a delete is `{"event_id":…,"_deleted":true,"_version":…}`.
    pub fn kafka_record(&self, version: u64) -> (String, String) {
        match self {
            GenOp::Insert { domain, json } | GenOp::Update { domain, json, .. } => {
                let key = serde_json::from_str::<serde_json::Value>(json)
                    .ok()
                    .and_then(|v| v.get(domain.key_field()).and_then(|k| k.as_str()).map(str::to_string))
                    .unwrap_or_default();
                let json = match (domain, json.strip_suffix('}')) {
                    (GenDomain::AppEvents, Some(open)) => format!("{open},\"_version\":{version}}}"),
                    _ => json.clone(),
                };
                (key, json)
            }
            GenOp::Delete { id, .. } => {
                (id.clone(), format!("{{\"event_id\":{},\"_deleted\":true,\"_version\":{version}}}", serde_json::Value::from(id.as_str())))
            }
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ride {
    /// Due time of the ride's next event; first so that the heap orders by it.
    next_ms: i64,
    id: u64,
    city: usize,
    user: u64,
    driver: u64,
    fare_cents: u32,
    stage: u8,
    cancel: bool,
}

/// Generates an endless, deterministic stream of events.
pub struct Generator {
    cfg: GenConfig,
    rng: SmallRng,
    clock_ms: f64,
    step_ms: f64,
    next_ride: u64,
    next_app: u64,
    /// In-flight rides, soonest due first.
    active: BinaryHeap<Reverse<Ride>>,
    /// App events that may still be updated or deleted: (id, json fields).
    recent_app: VecDeque<(u64, i64, usize, u64)>,
    pending: VecDeque<GenOp>,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        let step_ms = 1000.0 / cfg.rate.max(0.001);
        Generator {
            rng: SmallRng::seed_from_u64(cfg.seed),
            clock_ms: cfg.start_ms as f64,
            step_ms,
            next_ride: 0,
            next_app: 0,
            active: BinaryHeap::new(),
            recent_app: VecDeque::new(),
            pending: VecDeque::new(),
            cfg,
        }
    }

    /// Event time the generator has reached.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms as i64
    }

    fn event_time(&mut self) -> i64 {
        let now = self.clock_ms as i64;
        if self.cfg.late_fraction > 0.0 && self.rng.random_bool(self.cfg.late_fraction.min(1.0)) {
            return now - self.cfg.late_by_ms;
        }
        if self.cfg.disorder_ms > 0 { now - self.rng.random_range(0..=self.cfg.disorder_ms) } else { now }
    }

    /// An event time as the JSON value of a `timestamp` field.
    fn ts_json(&self, ts: i64) -> String {
        match chrono::DateTime::from_timestamp_millis(ts) {
            Some(t) if self.cfg.rfc3339 => format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            _ => ts.to_string(),
        }
    }

    fn cities(&self) -> usize {
        self.cfg.cities.clamp(1, CITIES.len())
    }

    fn surging(&self, city: usize) -> bool {
        match self.cfg.surge_after_ms {
            Some(after) => city == self.cfg.surge_city && self.clock_ms as i64 >= self.cfg.start_ms + after,
            None => false,
        }
    }

    fn ride_event(&mut self) -> GenOp {
        // Advance an in-flight ride when one is due, otherwise request a new one.
        let now = self.clock_ms as i64;
        let due = self.active.peek().is_some_and(|r| r.0.next_ms <= now) || self.active.len() > 20_000;
        let mut ride = match self.active.pop() {
            Some(Reverse(r)) if due => r,
            other => {
                if let Some(r) = other {
                    self.active.push(r);
                }
                let city = self.rng.random_range(0..self.cities());
                let cancel_p = if self.surging(city) { self.cfg.surge_cancel_rate } else { self.cfg.cancel_rate };
                self.next_ride += 1;
                Ride {
                    id: self.next_ride,
                    city,
                    // Riders mostly live in one city.
                    user: (self.rng.random_range(0..self.cfg.users.max(1)) / self.cities() as u64) * self.cities() as u64 + city as u64,
                    driver: self.rng.random_range(0..self.cfg.drivers.max(1)),
                    fare_cents: self.rng.random_range(500..6000),
                    stage: 0,
                    cancel: self.rng.random_bool(cancel_p.clamp(0.0, 1.0)),
                    next_ms: now,
                }
            }
        };
        let event_type = match (ride.stage, ride.cancel) {
            (0, _) => "requested",
            (1, true) => "cancelled",
            (1, false) => "accepted",
            (2, _) => "started",
            _ => "completed",
        };
        let t = self.event_time();
        let ts = self.ts_json(t);
        if self.cfg.independent_users {
            ride.user = self.rng.random_range(0..self.cfg.users.max(1));
        }
        let driver = if ride.stage >= 1 && event_type != "cancelled" { format!(",\"driver_id\":\"d-{}\"", ride.driver) } else { String::new() };
        let pickup = if ride.stage == 0 {
            let (lat, lng) = self.coords(ride.city);
            format!(",\"pickup\":{{\"lat\":{lat:.5},\"lng\":{lng:.5}}}")
        } else {
            String::new()
        };
        let json = format!(
            "{{\"event_type\":\"{event_type}\",\"ride_id\":\"r-{}\",\"city\":\"{}\",\"estimated_fare\":{:.2},\"user_id\":\"u-{}\"{driver}{pickup},\"timestamp\":{ts}}}",
            ride.id,
            CITIES[ride.city],
            f64::from(ride.fare_cents) / 100.0,
            ride.user
        );
        let finished = event_type == "cancelled" || event_type == "completed";
        if !finished {
            ride.stage += 1;
            ride.next_ms = now + self.rng.random_range(5_000..90_000);
            self.active.push(Reverse(ride));
        }
        GenOp::Insert { domain: GenDomain::Rides, json }
    }

    fn coords(&mut self, city: usize) -> (f64, f64) {
        let base_lat = -40.0 + (city as f64) * 4.0;
        let base_lng = -120.0 + (city as f64) * 12.0;
        (base_lat + self.rng.random_range(-0.2..0.2), base_lng + self.rng.random_range(-0.2..0.2))
    }

    fn driver_event(&mut self) -> GenOp {
        let driver = self.rng.random_range(0..self.cfg.drivers.max(1));
        let city = (driver % self.cities() as u64) as usize;
        let status = match self.rng.random_range(0..10) {
            0..=4 => "available",
            5..=8 => "on_trip",
            _ => "offline",
        };
        let (lat, lng) = self.coords(city);
        let t = self.event_time();
        let ts = self.ts_json(t);
        let json = format!(
            "{{\"driver_id\":\"d-{driver}\",\"city\":\"{}\",\"lat\":{lat:.5},\"lng\":{lng:.5},\"status\":\"{status}\",\"timestamp\":{ts}}}",
            CITIES[city]
        );
        GenOp::Insert { domain: GenDomain::DriverLocations, json }
    }

    fn app_json(&mut self, id: u64, ts: i64, name: usize, session: u64) -> String {
        let ts = self.ts_json(ts);
        let latency = self.rng.random_range(0.0f64..1.0).powi(3) * 900.0 + 5.0 + name as f64 * 3.0;
        let latency = if self.cfg.float_latencies { latency } else { latency.round() };
        let error = if self.rng.random_bool(0.03 + 0.02 * (name % 3) as f64) { ",\"error\":\"timeout\"" } else { "" };
        format!(
            "{{\"event_id\":\"app-{id}\",\"session_id\":\"s-{session}\",\"event_name\":\"{}\",\"input\":\"q{id}\",\"latency_ms\":{latency}{error},\"timestamp\":{ts}}}",
            EVENT_NAMES[name]
        )
    }

    fn app_event(&mut self) -> GenOp {
        let r: f64 = self.rng.random();
        if r < self.cfg.delete_fraction + self.cfg.update_fraction && !self.recent_app.is_empty() {
            let i = self.rng.random_range(0..self.recent_app.len());
            if r < self.cfg.delete_fraction {
                let (id, ..) = self.recent_app.remove(i).unwrap_or_default();
                return GenOp::Delete { domain: GenDomain::AppEvents, id: format!("app-{id}") };
            }
            let (id, ts, name, session) = self.recent_app[i];
            let json = self.app_json(id, ts, name, session);
            return GenOp::Update { domain: GenDomain::AppEvents, id: format!("app-{id}"), json };
        }
        self.next_app += 1;
        let id = self.next_app;
        let ts = self.event_time();
        let name = self.rng.random_range(0..EVENT_NAMES.len());
        let session = self.rng.random_range(0..self.cfg.sessions.max(1));
        self.recent_app.push_back((id, ts, name, session));
        if self.recent_app.len() > self.cfg.change_pool.max(1) {
            self.recent_app.pop_front();
        }
        let json = self.app_json(id, ts, name, session);
        GenOp::Insert { domain: GenDomain::AppEvents, json }
    }

    /// Generates a stream of only one domain.
    pub fn only(mut self, domain: GenDomain) -> Self {
        self.cfg.mix = match domain {
            GenDomain::Rides => [1.0, 0.0, 0.0],
            GenDomain::DriverLocations => [0.0, 1.0, 0.0],
            GenDomain::AppEvents => [0.0, 0.0, 1.0],
        };
        self
    }
}

impl Iterator for Generator {
    type Item = GenOp;

    fn next(&mut self) -> Option<GenOp> {
        if let Some(op) = self.pending.pop_front() {
            return Some(op);
        }
        self.clock_ms += self.step_ms;
        let total: f64 = self.cfg.mix.iter().sum();
        let pick = self.rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let op = if pick < self.cfg.mix[0] {
            self.ride_event()
        } else if pick < self.cfg.mix[0] + self.cfg.mix[1] {
            self.driver_event()
        } else {
            self.app_event()
        };
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_model::{Decoder, Spec};
    use std::path::Path;

    #[test]
    fn kafka_records_are_keyed_and_versioned_as_the_spec_says() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let cfg = GenConfig { rate: 100.0, update_fraction: 0.1, delete_fraction: 0.1, ..GenConfig::default() };
        let mut seen = [false; 3];
        for (i, op) in Generator::new(cfg).take(5_000).enumerate() {
            let domain = spec.domain(op.domain().name()).expect("domain");
            assert_eq!(domain.key_field().name, op.domain().key_field());
            let (key, json) = op.kafka_record(i as u64 + 7);
            let ev = Decoder::new(domain).decode(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
            let v: serde_json::Value = serde_json::from_str(&json).expect("json");
            assert!(!key.is_empty() && v[op.domain().key_field()].as_str() == Some(key.as_str()), "{key}: {json}");
            let versioned = op.domain() == GenDomain::AppEvents;
            assert_eq!(ev.version, versioned.then_some(i as u64 + 7), "{json}");
            let kind = match op {
                GenOp::Insert { .. } => 0,
                GenOp::Update { .. } => 1,
                GenOp::Delete { .. } => 2,
            };
            seen[kind] = true;
            assert_eq!(ev.op == pulse_model::Op::Delete, kind == 2, "{json}");
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn generated_events_are_valid_for_the_default_spec() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let decoders: Vec<_> = ["rides", "driver_locations", "app_events"].iter().map(|d| Decoder::new(spec.domain(d).expect("domain"))).collect();
        let cfg = GenConfig { rate: 100.0, late_fraction: 0.01, surge_after_ms: Some(0), ..GenConfig::default() };
        let mut kinds = [0usize; 3];
        let mut cancelled = 0;
        for op in Generator::new(cfg).take(20_000) {
            match op {
                GenOp::Insert { domain, json } | GenOp::Update { domain, json, .. } => {
                    let i = domain as usize;
                    kinds[i] += 1;
                    if let Err(e) = decoders[i].decode(json.as_bytes()) {
                        panic!("{json}: {e}");
                    }
                    cancelled += usize::from(json.contains("cancelled"));
                }
                GenOp::Delete { .. } => kinds[2] += 1,
            }
        }
        assert!(kinds.iter().all(|&k| k > 1000), "{kinds:?}");
        assert!(cancelled > 100);
    }

    #[test]
    fn is_deterministic() {
        let a: Vec<_> = Generator::new(GenConfig::default()).take(500).collect();
        let b: Vec<_> = Generator::new(GenConfig::default()).take(500).collect();
        assert_eq!(a, b);
    }
}
