//! The spec's TOML as written: the serde structs it is deserialized into,
//! every value with its span. Their fields are the spec's keys.

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub(super) pipeline: Option<S<RawPipeline>>,
    #[serde(default)]
    pub(super) domain: Vec<S<RawDomain>>,
    #[serde(default)]
    pub(super) metric: Vec<S<RawMetric>>,
    #[serde(default)]
    pub(super) alert: Vec<S<RawAlert>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    pub(super) name: S<String>,
    pub(super) metric: S<String>,
    pub(super) condition: S<RawCondition>,
    #[serde(rename = "for")]
    pub(super) for_: Option<S<String>>,
    pub(super) guard: Option<S<RawCondition>>,
    pub(super) severity: Option<S<String>>,
    #[serde(default)]
    pub(super) labels: std::collections::BTreeMap<String, S<String>>,
    #[serde(default)]
    pub(super) annotations: std::collections::BTreeMap<String, S<String>>,
    pub(super) resolve_after: Option<S<String>>,
    pub(super) webhook: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    pub(super) aggregate: S<String>,
    pub(super) op: S<String>,
    pub(super) value: S<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) emit_interval: Option<S<String>>,
    pub(super) late_events: Option<S<String>>,
    pub(super) aggregated_topic: Option<S<String>>,
    pub(super) dead_letter_topic: Option<S<String>>,
    pub(super) alerts_topic: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub(super) name: S<String>,
    pub(super) topic: S<String>,
    #[serde(default)]
    pub(super) partitions: Option<S<i64>>,
    #[serde(default)]
    pub(super) replication: Option<S<i64>>,
    pub(super) retention: Option<S<String>>,
    pub(super) cleanup_policy: Option<S<String>>,
    pub(super) compression: Option<S<String>>,
    pub(super) key: S<String>,
    pub(super) time_field: S<String>,
    #[serde(default)]
    pub(super) mutable: bool,
    pub(super) fields: Vec<S<RawField>>,
    pub(super) max_future: Option<S<String>>,
    pub(super) max_age: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) name: S<String>,
    #[serde(rename = "type")]
    pub(super) ty: S<String>,
    #[serde(default)]
    pub(super) optional: bool,
    #[serde(default)]
    pub(super) dimension: bool,
    pub(super) values: Option<S<Vec<String>>>,
    pub(super) min: Option<S<f64>>,
    pub(super) max: Option<S<f64>>,
    pub(super) max_length: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetric {
    pub(super) name: S<String>,
    pub(super) domain: Option<S<String>>,
    /// A derived metric's input metrics (instead of `domain`).
    pub(super) inputs: Option<S<Vec<String>>>,
    pub(super) group_by: Option<S<Vec<String>>>,
    pub(super) window: Option<S<String>>,
    pub(super) slide: Option<S<String>>,
    pub(super) lateness: Option<S<String>>,
    pub(super) aggregates: Vec<S<RawAggregate>>,
    pub(super) max_groups: Option<S<i64>>,
    pub(super) retention: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    pub(super) name: S<String>,
    #[serde(rename = "fn")]
    pub(super) func: Option<S<String>>,
    /// A derived metric's aggregate: an expression over its inputs' aggregates.
    pub(super) expr: Option<S<String>>,
    pub(super) field: Option<S<String>>,
    pub(super) filter: Option<S<RawFilter>>,
    pub(super) q: Option<S<f64>>,
    pub(super) numerator: Option<S<String>>,
    pub(super) denominator: Option<S<String>>,
    pub(super) method: Option<S<String>>,
    pub(super) precision: Option<S<i64>>,
    pub(super) relative_accuracy: Option<S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    pub(super) field: S<String>,
    pub(super) eq: Option<toml::Value>,
    #[serde(rename = "in")]
    pub(super) one_of: Option<Vec<toml::Value>>,
    pub(super) non_empty: Option<bool>,
}

#[cfg(test)]
mod tests {
    use crate::spec::testing::{METRIC_HEAD, assert_error};

    #[test]
    fn unknown_field_in_metric() {
        assert_error(&format!("{METRIC_HEAD}window = \"5m\"\ncolour = 3\naggregates = []\n"), 20, "unknown field `colour`");
    }
}
