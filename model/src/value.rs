//! Decoded events: compact typed rows. Strings (dimensions included) are
//! inline `CompactString`s: nothing is interned process-wide, so a flood of
//! distinct values costs memory only while an event holds them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use compact_str::CompactString;

/// A small, fast, non-cryptographic hasher for in-process maps (FxHash's mixing).
#[derive(Default, Clone, Copy)]
pub struct FxLikeHasher(u64);

impl Hasher for FxLikeHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuildHasher = BuildHasherDefault<FxLikeHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// One field value of a decoded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(CompactString),
    /// Index into the enum's declared values.
    Enum(u8),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Milliseconds since the Unix epoch, UTC.
    Time(i64),
    Point {
        lat: f64,
        lng: f64,
    },
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Numeric view used by sum/avg/min/max/quantile.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            Value::Time(t) => Some(t as f64),
            _ => None,
        }
    }

    /// A stable 128-bit hash of the value, identical in every process; used for
    /// exact distinct counts (as ClickHouse's `uniqExact` does for strings) and
    /// for routing by group key.
    pub fn stable_hash(&self, enum_values: Option<&[String]>) -> u128 {
        use xxhash_rust::xxh3::xxh3_128_with_seed;
        match self {
            Value::Null => 0,
            Value::Str(s) => xxh3_128_with_seed(s.as_bytes(), 1),
            Value::Enum(i) => match enum_values.and_then(|v| v.get(*i as usize)) {
                Some(s) => xxh3_128_with_seed(s.as_bytes(), 1),
                None => u128::from(*i),
            },
            Value::Int(i) => xxh3_128_with_seed(&i.to_le_bytes(), 2),
            Value::Float(f) => xxh3_128_with_seed(&f.to_bits().to_le_bytes(), 3),
            Value::Bool(b) => u128::from(*b) + 7,
            Value::Time(t) => xxh3_128_with_seed(&t.to_le_bytes(), 4),
            Value::Point { lat, lng } => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&lat.to_bits().to_le_bytes());
                b[8..].copy_from_slice(&lng.to_bits().to_le_bytes());
                xxh3_128_with_seed(&b, 5)
            }
        }
    }
}

// Decoded values never hold NaN (JSON cannot express it), so equality is total.
impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Str(s) => s.hash(state),
            Value::Enum(i) => i.hash(state),
            Value::Int(i) | Value::Time(i) => i.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Bool(b) => b.hash(state),
            Value::Point { lat, lng } => {
                lat.to_bits().hash(state);
                lng.to_bits().hash(state);
            }
        }
    }
}

/// What an event does to the state of its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Insert, or replace an earlier version (mutable domains).
    Upsert,
    /// Remove the event (mutable domains).
    Delete,
}

/// A decoded event: one value per declared field of its domain, plus envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub values: Vec<Value>,
    /// Event time (the domain's time field), ms since the epoch.
    pub time: i64,
    /// The event's identity; assigned by ingest when the producer did not send one.
    pub event_id: Option<CompactString>,
    /// When Pulse accepted the event, ms since the epoch.
    pub ingested_at: Option<i64>,
    /// Version for ordering updates and deletes (mutable domains); µs since the epoch by convention.
    pub version: Option<u64>,
    pub op: Op,
}

impl Event {
    pub fn key(&self, key_field: usize) -> Option<&Value> {
        self.values.get(key_field)
    }
}
