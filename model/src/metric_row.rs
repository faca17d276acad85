//! The rows the dataflow emits for a window: one per (metric, group, window)
//! and revision. Kafka carries them as flat JSON, ClickHouse as table rows.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::spec::{Metric, Spec};

#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum GroupValue {
    Str(Arc<str>),
    Int(i64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggValue {
    Count(u64),
    /// NULL when undefined (average of nothing, ratio over zero, ...).
    Float(Option<f64>),
}

impl AggValue {
    pub fn as_f64(self) -> Option<f64> {
        match self {
            AggValue::Count(n) => Some(n as f64),
            AggValue::Float(f) => f,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    /// Index of the metric in the spec.
    pub metric: usize,
    pub group: Vec<GroupValue>,
    pub window_start: i64,
    pub window_end: i64,
    /// One value per aggregate of the metric, in spec order.
    pub values: Vec<AggValue>,
    pub is_final: bool,
    /// Grows with every emission of the window (also across restarts); the final is the largest.
    pub revision: u64,
    /// When the row was emitted, ms since the epoch.
    pub emitted_at: i64,
    /// The window ended empty (every event of the group in it was deleted or
    /// moved away by an update): it has no final, and the rows emitted for it
    /// while it was open are withdrawn (deleted from the metric table; on the
    /// topic a final row with `"deleted": true` and null aggregates).
    pub deleted: bool,
}

/// Names needed to render a metric's rows.
#[derive(Debug, Clone)]
pub struct RowShape {
    pub metric: String,
    pub group_names: Vec<String>,
    pub agg_names: Vec<String>,
}

impl RowShape {
    pub fn new(spec: &Spec, metric: &Metric) -> RowShape {
        let domain = spec.metric_domain(metric);
        RowShape {
            metric: metric.name.clone(),
            group_names: metric.group_by.iter().map(|&g| domain.fields[g].name.clone()).collect(),
            agg_names: metric.aggregates.iter().map(|a| a.name.clone()).collect(),
        }
    }

    pub fn all(spec: &Spec) -> Vec<RowShape> {
        spec.metrics.iter().map(|m| RowShape::new(spec, m)).collect()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

fn push_f64(out: &mut String, f: f64) {
    if f.is_finite() {
        // Shortest representation that reads back to the same f64.
        let _ = write!(out, "{f:?}");
    } else {
        out.push_str("null");
    }
}

impl MetricRow {
    /// Kafka key: metric, group values and window start; equal for every revision of a window.
    pub fn key(&self, shape: &RowShape) -> String {
        let mut k = shape.metric.clone();
        for g in &self.group {
            k.push('/');
            match g {
                GroupValue::Str(s) => k.push_str(s),
                GroupValue::Int(i) => k.push_str(&i.to_string()),
                GroupValue::Bool(b) => k.push_str(if *b { "true" } else { "false" }),
                GroupValue::Null => {}
            }
        }
        let _ = write!(k, "/{}", self.window_start);
        k
    }

    /// Flat JSON: metric, group fields by name, window bounds and emitted_at as
    /// epoch ms, aggregates by name, final, revision.
    pub fn to_json(&self, shape: &RowShape) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"metric\":");
        push_json_str(&mut out, &shape.metric);
        for (name, g) in shape.group_names.iter().zip(&self.group) {
            out.push(',');
            push_json_str(&mut out, name);
            out.push(':');
            match g {
                GroupValue::Str(s) => push_json_str(&mut out, s),
                GroupValue::Int(i) => {
                    let _ = write!(out, "{i}");
                }
                GroupValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                GroupValue::Null => out.push_str("null"),
            }
        }
        let _ = write!(out, ",\"window_start\":{},\"window_end\":{}", self.window_start, self.window_end);
        for (name, v) in shape.agg_names.iter().zip(&self.values) {
            out.push(',');
            push_json_str(&mut out, name);
            out.push(':');
            match v {
                AggValue::Count(n) => {
                    let _ = write!(out, "{n}");
                }
                AggValue::Float(Some(f)) => push_f64(&mut out, *f),
                AggValue::Float(None) => out.push_str("null"),
            }
        }
        if self.deleted {
            out.push_str(",\"deleted\":true");
        }
        let _ = write!(out, ",\"final\":{},\"revision\":{},\"emitted_at\":{}}}", self.is_final, self.revision, self.emitted_at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flat_json_and_key() {
        let shape =
            RowShape { metric: "city_metrics".into(), group_names: vec!["city".into()], agg_names: vec!["requests".into(), "avg_fare".into(), "rate".into()] };
        let row = MetricRow {
            metric: 0,
            group: vec![GroupValue::Str("São \"Paulo\"".into())],
            window_start: 60_000,
            window_end: 360_000,
            values: vec![AggValue::Count(3), AggValue::Float(Some(12.5)), AggValue::Float(None)],
            is_final: true,
            revision: 7,
            emitted_at: 400_000,
            deleted: false,
        };
        assert_eq!(row.key(&shape), "city_metrics/São \"Paulo\"/60000");
        let json: serde_json::Value = serde_json::from_str(&row.to_json(&shape)).expect("valid JSON");
        assert_eq!(json["city"], "São \"Paulo\"");
        assert_eq!(json["requests"], 3);
        assert_eq!(json["avg_fare"], 12.5);
        assert!(json["rate"].is_null());
        assert_eq!(json["final"], true);
        assert_eq!(json["window_end"], 360_000);
    }
}
