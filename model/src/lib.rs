//! Pulse's shared model: the pipeline spec, decoded events, window math, and
//! the deterministic event generator used by the load generator and benchmarks.

pub mod bounds;
pub mod decode;
pub mod duration;
pub mod expr;
pub mod metric_row;
pub mod process;
pub mod spec;
pub mod value;
pub mod window;

pub use bounds::{Clock, TimeBounds, TimeViolation};
pub use decode::{DecodeError, Decoder, encode_json};
pub use duration::{Millis, parse_duration};
pub use spec::{
    AggKind, Aggregate, AlertCondition, AlertRule, CmpOp, Domain, Field, FieldType, Filter, LatePolicy, Literal, Metric, Spec, SpecError, SpecErrors,
};
pub use value::{Event, Op, Value};
pub use window::Windows;

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
