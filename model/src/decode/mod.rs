//! Schema-driven JSON decoding of one domain's events into compact typed rows,
//! and the canonical JSON encoding Pulse writes to Kafka.
//!
//! The decoder walks the JSON object once with a strict hand-written reader,
//! mapping each key to its field slot and checking the value against the
//! field's declared type as it is read; nothing is buffered into a generic
//! JSON value. The tests hold it to a serde_json-based reference decoder.
//!
//! Where each part lives:
//!
//! - `error`: [`DecodeError`];
//! - `decoder`: the [`Decoder`] of a domain (its fields' slots, kinds and
//!   limits) and the checks of a decoded event as a whole;
//! - `reader`: the JSON scanner (strings, numbers, literals, syntax errors);
//! - `typed`: the reader's schema-driven part, an event object field by field;
//! - `limits`: what values must satisfy besides their type ([`check_identifier`]);
//! - `time`: RFC 3339 timestamps to and from epoch milliseconds;
//! - `encode`: [`encode_json`], the canonical JSON of an event.

mod decoder;
mod encode;
mod error;
mod limits;
mod reader;
#[cfg(test)]
mod testing;
mod time;
mod typed;

pub use decoder::Decoder;
pub use encode::encode_json;
pub use error::DecodeError;
pub use limits::{check_identifier, is_forbidden_in_identifier};
pub use time::{MAX_TIME_MS, MIN_TIME_MS, format_rfc3339_ms, parse_rfc3339_ms};
