//! Validated domains: what producers send, field by field.

use crate::duration::Millis;

/// The envelope field carrying an event's identity. Ingest assigns one when missing.
pub const EVENT_ID: &str = "event_id";

#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub topic: String,
    pub partitions: i32,
    pub replication: i32,
    pub retention: Millis,
    pub cleanup_policy: String,
    pub compression: String,
    /// Index into `fields` of the Kafka key (and, for mutable domains, the event identity).
    pub key: usize,
    /// Index into `fields` of the event-time field (a `timestamp`).
    pub time_field: usize,
    pub mutable: bool,
    pub fields: Vec<Field>,
    /// How far ahead of its reference clock (ingest's clock, or the record's
    /// broker timestamp on the topics) an event's time may be.
    pub max_future: Millis,
    /// How far behind its reference clock an event's time may be (default: the retention).
    pub max_age: Millis,
}

impl Domain {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn key_field(&self) -> &Field {
        &self.fields[self.key]
    }

    pub fn time_field(&self) -> &Field {
        &self.fields[self.time_field]
    }

    /// Whether the domain declares `event_id` itself (otherwise it is envelope-only).
    pub fn declares_event_id(&self) -> bool {
        self.field_index(EVENT_ID).is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub optional: bool,
    /// A low-cardinality grouping dimension: NFC-normalized, `LowCardinality` in ClickHouse.
    pub dimension: bool,
    /// Smallest and largest accepted value of a numeric field.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Longest accepted string value, in UTF-8 bytes.
    pub max_length: usize,
}

/// Default longest value of a dimension or an identifier (the key, `event_id`).
pub const DEFAULT_ID_LENGTH: usize = 256;
/// Default longest value of any other string field.
pub const DEFAULT_TEXT_LENGTH: usize = 65_536;
/// Default `max_future` of a domain.
pub const DEFAULT_MAX_FUTURE: Millis = Millis(5 * 60_000);

#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    String,
    Enum(Vec<String>),
    Int,
    Float,
    Bool,
    Timestamp,
    /// `{ "lat": f64, "lng": f64 }`
    Point,
}

impl FieldType {
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Enum(_) => "enum",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Point => "point",
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, FieldType::Int | FieldType::Float)
    }
}
