//! Validated metrics: what the dataflow job maintains, window by window.

use super::Aggregate;
use crate::duration::Millis;

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    /// Index into `Spec::domains`.
    pub domain: usize,
    /// Indexes into the domain's fields.
    pub group_by: Vec<usize>,
    pub window: Millis,
    pub slide: Millis,
    pub lateness: Millis,
    pub aggregates: Vec<Aggregate>,
    /// Most groups with an open window at once; events of further groups are
    /// counted in the metric's overflow group (see `OVERFLOW_GROUP`).
    pub max_groups: usize,
    /// How long the metric table keeps a window, counted from its start (the
    /// table's TTL, on its ordering key's time column); default
    /// [`DEFAULT_METRIC_RETENTION`].
    pub retention: Millis,
    /// A derived metric reads other metrics' windows, not a domain's events.
    /// Its `domain` and `group_by` are then its first input's (the domain its
    /// group fields come from); its window and slide are its inputs'.
    pub derived: Option<Derived>,
}

/// Default `max_groups` of a metric.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;

/// The inputs of a derived metric: other metrics' windows, joined on the
/// derived metric's group fields and the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Indexes into `Spec::metrics` (never derived ones).
    pub inputs: Vec<usize>,
    /// Per input, per group field of the derived metric: its position in the input's `group_by`.
    pub key_positions: Vec<Vec<usize>>,
}

/// Default `retention` of a metric: 30 days, longer than any default raw
/// retention, so dashboards keep a month of windows after the raw events expire.
pub const DEFAULT_METRIC_RETENTION: Millis = Millis(30 * 86_400_000);

/// The value string group fields take in a metric's overflow group.
pub const OVERFLOW_GROUP: &str = "__overflow__";

impl Metric {
    /// Number of windows each event belongs to.
    pub fn windows_per_event(&self) -> i64 {
        self.window.ms() / self.slide.ms()
    }

    pub fn aggregate_index(&self, name: &str) -> Option<usize> {
        self.aggregates.iter().position(|a| a.name == name)
    }

    pub fn is_derived(&self) -> bool {
        self.derived.is_some()
    }
}
