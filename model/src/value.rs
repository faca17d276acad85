//! Decoded events: compact typed rows, interned dimension strings.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use compact_str::CompactString;

/// An interned low-cardinality string (a dimension such as a city). Symbols are
/// process-local: they never leave the process (hash the string for that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(pub u32);

impl Sym {
    pub fn intern(s: &str) -> Sym {
        interner().intern(s)
    }

    pub fn as_str(self) -> Arc<str> {
        interner().resolve(self)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// Process-wide string interner for dimension values (cities, event names, ...).
struct Interner {
    inner: RwLock<InternerInner>,
}

#[derive(Default)]
struct InternerInner {
    ids: HashMap<Arc<str>, u32, BuildHasherDefault<FxLikeHasher>>,
    strings: Vec<Arc<str>>,
}

fn interner() -> &'static Interner {
    static INTERNER: OnceLock<Interner> = OnceLock::new();
    INTERNER.get_or_init(|| Interner {
        inner: RwLock::new(InternerInner::default()),
    })
}

impl Interner {
    fn intern(&self, s: &str) -> Sym {
        {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some(&id) = inner.ids.get(s) {
                return Sym(id);
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = inner.ids.get(s) {
            return Sym(id);
        }
        let id = u32::try_from(inner.strings.len()).unwrap_or(u32::MAX);
        let arc: Arc<str> = Arc::from(s);
        inner.strings.push(arc.clone());
        inner.ids.insert(arc, id);
        Sym(id)
    }

    fn resolve(&self, sym: Sym) -> Arc<str> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .strings
            .get(sym.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

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
    /// An interned dimension string.
    Sym(Sym),
    /// Index into the enum's declared values.
    Enum(u8),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Milliseconds since the Unix epoch, UTC.
    Time(i64),
    Point { lat: f64, lng: f64 },
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
            Value::Sym(s) => xxh3_128_with_seed(s.as_str().as_bytes(), 1),
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
            Value::Sym(s) => s.hash(state),
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
