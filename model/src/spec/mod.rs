//! The pipeline spec (`pulse.toml`): domains (what producers send) and metrics
//! (what the dataflow job maintains). Parsing keeps source spans so that every
//! error names the file and line; validation collects every error at once.
//!
//! [`Spec::parse`] deserializes the text into the `raw` structs, whose values
//! are `toml::Spanned` (the byte range each one came from); the validator
//! turns them into the validated types, mapping a span to its line for
//! every [`SpecError`]. Where each part lives:
//!
//! - `error`: [`SpecError`], [`SpecErrors`];
//! - this file: [`Spec`] (loading, parsing, lookups) and its `[pipeline]` settings;
//! - `domain`: [`Domain`], [`Field`], [`FieldType`] and their defaults;
//! - `metric`: [`Metric`], [`Derived`] and their defaults;
//! - `aggregate`: [`Aggregate`], [`AggKind`], [`AggMethod`], [`Filter`], [`Literal`];
//! - `alert`: [`AlertRule`], [`AlertCondition`], [`CmpOp`], [`template_placeholders`];
//! - `raw`: the TOML as written (serde structs; their fields are the spec's keys);
//! - `validate`: the validator, split by what it checks (`domain`, `metric`,
//!   `aggregate`, `derived`, `alert`).

use std::path::{Path, PathBuf};

use crate::duration::Millis;

mod aggregate;
mod alert;
mod domain;
mod error;
mod metric;
mod raw;
#[cfg(test)]
pub(crate) mod testing;
mod validate;

pub use aggregate::{AggKind, AggMethod, Aggregate, DEFAULT_DDSKETCH_ACCURACY, DEFAULT_HLL_PRECISION, Filter, HLL_PRECISIONS, Literal};
pub use alert::{AlertCondition, AlertRule, CmpOp, template_placeholders};
pub use domain::{DEFAULT_ID_LENGTH, DEFAULT_MAX_FUTURE, DEFAULT_TEXT_LENGTH, Domain, EVENT_ID, Field, FieldType};
pub use error::{SpecError, SpecErrors};
pub use metric::{DEFAULT_MAX_GROUPS, DEFAULT_METRIC_RETENTION, Derived, Metric, OVERFLOW_GROUP};

use raw::RawSpec;
use validate::{LineIndex, Validator};

/// Columns every raw table and every metric table has besides the spec's fields.
pub const RESERVED_RAW_COLUMNS: &[&str] = &["ingested_at", "version", "is_deleted"];
pub const RESERVED_METRIC_COLUMNS: &[&str] = &["window_start", "window_end", "final", "revision", "emitted_at", "metric"];

/// A validated pipeline spec.
#[derive(Debug, Clone)]
pub struct Spec {
    pub file: PathBuf,
    pub pipeline: Pipeline,
    pub domains: Vec<Domain>,
    pub metrics: Vec<Metric>,
    /// `[[alert]]` rules, evaluated by the dataflow on the metrics' rows.
    pub alerts: Vec<AlertRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    Drop,
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub idle_timeout: Millis,
    pub emit_interval: Millis,
    pub late_events: LatePolicy,
    pub aggregated_topic: String,
    pub dead_letter_topic: String,
    /// Firing/resolved alert notifications (JSON, keyed `rule/group`).
    pub alerts_topic: String,
}

impl Spec {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }

    pub fn domain_index(&self, name: &str) -> Option<usize> {
        self.domains.iter().position(|d| d.name == name)
    }

    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn metric_domain(&self, metric: &Metric) -> &Domain {
        &self.domains[metric.domain]
    }

    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecErrors(vec![SpecError { file: path.to_path_buf(), line: 0, message: format!("cannot read spec: {e}") }]))?;
        Spec::parse(path, &text)
    }

    /// Parses and validates spec text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Spec, SpecErrors> {
        let lines = LineIndex::new(text);
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| lines.line(s.start));
            SpecErrors(vec![SpecError { file: file.to_path_buf(), line, message: e.message().trim().to_string() }])
        })?;
        let mut v = Validator { file: file.to_path_buf(), lines, errors: Vec::new() };
        let spec = v.spec(raw);
        if v.errors.is_empty() {
            Ok(spec)
        } else {
            v.errors.sort_by_key(|e| e.line);
            Err(SpecErrors(v.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{assert_error, default_spec};

    #[test]
    fn default_spec_is_valid_and_complete() {
        let spec = default_spec();
        let names: Vec<_> = spec.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["rides", "driver_locations", "app_events"]);
        let rides = spec.domain("rides").expect("rides");
        assert_eq!(rides.topic, "ride-events");
        assert_eq!(rides.partitions, 12);
        assert_eq!(rides.retention, Millis(7 * 86_400_000));
        assert_eq!(rides.key_field().name, "ride_id");
        assert!(!rides.mutable);
        let dl = spec.domain("driver_locations").expect("driver_locations");
        assert_eq!((dl.partitions, dl.cleanup_policy.as_str()), (24, "compact,delete"));
        assert!(spec.domain("app_events").expect("app_events").mutable);

        let city = spec.metric("city_metrics").expect("city_metrics");
        assert_eq!((city.window, city.slide, city.lateness), (Millis(300_000), Millis(60_000), Millis(30_000)));
        assert_eq!(city.windows_per_event(), 5);
        let rate = &city.aggregates[city.aggregate_index("cancellation_rate").expect("rate")];
        let cancels = city.aggregate_index("cancellations").expect("cancellations");
        let requests = city.aggregate_index("requests").expect("requests");
        assert_eq!(rate.kind, AggKind::Ratio(cancels, requests));
        let ev = spec.metric("event_metrics").expect("event_metrics");
        assert!(ev.aggregates.iter().any(|a| matches!(a.kind, AggKind::Quantile(_, q) if q == 0.95)));
        assert_eq!(spec.pipeline.emit_interval, Millis(200));
    }

    #[test]
    fn syntax_errors_have_lines() {
        assert_error("\n[[metric]\n", 15, "");
    }
}
