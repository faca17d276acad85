//! What receivers get: Pulse's own alert message (topic, table, API, SSE) and
//! the Prometheus Alertmanager webhook message (version 4) built from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{EventKind, Transition};
use pulse_model::Spec;

/// `endsAt` of an alert that has not ended (what Alertmanager sends).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One firing or resolved notification (and, in the table, the recorded
/// pending/cleared/checkpoint states).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertMessage {
    pub rule: String,
    pub metric: String,
    /// `firing`, `resolved` (notified), or `pending`, `cleared`, `checkpoint` (recorded).
    pub status: String,
    /// The group: `field=value` joined by `,`.
    pub group: String,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Alertmanager fingerprint of the labels (16 hex digits).
    pub fingerprint: String,
    /// Event time (RFC 3339): start of the run of windows satisfying the rule.
    pub since: String,
    /// Event time the alert fired (end of the window that completed `for`).
    pub starts_at: String,
    /// Event time it resolved (resolved only).
    pub ends_at: Option<String>,
    pub value: Option<f64>,
    pub guard_value: Option<f64>,
    /// Wall clock (ms) the row that led to the decision was emitted by the job.
    pub row_emitted_at: i64,
    /// Wall clock (ms) the decision was made.
    pub decided_at: i64,
}

pub fn rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ZERO_TIME.to_string(),
    }
}

/// A number as annotations show it: at most 3 decimals, no trailing zeros.
pub fn format_value(v: Option<f64>) -> String {
    match v {
        None => "null".to_string(),
        Some(v) => {
            let s = format!("{v:.3}");
            let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
            if s == "-0" { "0".to_string() } else { s }
        }
    }
}

/// Alertmanager's fingerprint: a hash of the sorted label set, 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Vec::new();
    for (k, v) in labels {
        h.extend_from_slice(k.as_bytes());
        h.push(0xff);
        h.extend_from_slice(v.as_bytes());
        h.push(0xff);
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&h))
}

/// Expands `{{name}}` placeholders (unknown ones are left as they are).
pub fn expand(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = after[..close].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

impl AlertMessage {
    pub fn new(spec: &Spec, t: &Transition, decided_at: i64) -> AlertMessage {
        let rule = &spec.alerts[t.rule];
        let metric = &spec.metrics[rule.metric];
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), rule.name.clone());
        labels.insert("metric".to_string(), metric.name.clone());
        labels.insert("severity".to_string(), rule.severity.clone());
        for (k, v) in &rule.labels {
            labels.insert(k.clone(), v.clone());
        }
        for (k, v) in &t.group.labels {
            labels.insert(k.clone(), v.clone());
        }
        let mut vars: BTreeMap<&str, String> = BTreeMap::new();
        vars.insert("value", format_value(t.value));
        vars.insert("threshold", format_value(Some(rule.condition.value)));
        vars.insert("guard_value", format_value(t.guard_value));
        vars.insert("rule", rule.name.clone());
        vars.insert("metric", metric.name.clone());
        vars.insert("severity", rule.severity.clone());
        vars.insert("for", rule.for_.to_string());
        for (k, v) in &t.group.labels {
            vars.insert(k.as_str(), v.clone());
        }
        let annotations = rule.annotations.iter().map(|(k, tpl)| (k.clone(), expand(tpl, &vars))).collect();
        AlertMessage {
            rule: rule.name.clone(),
            metric: metric.name.clone(),
            status: t.kind.name().to_string(),
            group: t.group.key.clone(),
            severity: rule.severity.clone(),
            fingerprint: fingerprint(&labels),
            labels,
            annotations,
            since: rfc3339_ms(t.since),
            starts_at: rfc3339_ms(t.starts_at),
            ends_at: t.ends_at.map(rfc3339_ms),
            value: t.value,
            guard_value: t.guard_value,
            row_emitted_at: t.row_emitted_at,
            decided_at,
        }
    }

    pub fn notifies(&self) -> bool {
        self.status == EventKind::Firing.name() || self.status == EventKind::Resolved.name()
    }

    /// Kafka key: `rule/group`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.rule, self.group)
    }
}

/// One alert of a webhook message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// The Prometheus Alertmanager webhook body (version 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: String,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

impl WebhookMessage {
    /// One message per notification (Pulse groups by rule and group itself).
    pub fn from_alert(m: &AlertMessage) -> WebhookMessage {
        let mut group_labels = BTreeMap::new();
        group_labels.insert("alertname".to_string(), m.rule.clone());
        let label_list = m.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ");
        WebhookMessage {
            version: "4".to_string(),
            group_key: format!("{{}}:{{{label_list}}}"),
            truncated_alerts: 0,
            status: m.status.clone(),
            receiver: "pulse".to_string(),
            group_labels,
            common_labels: m.labels.clone(),
            common_annotations: m.annotations.clone(),
            external_url: String::new(),
            alerts: vec![WebhookAlert {
                status: m.status.clone(),
                labels: m.labels.clone(),
                annotations: m.annotations.clone(),
                starts_at: m.starts_at.clone(),
                ends_at: m.ends_at.clone().unwrap_or_else(|| ZERO_TIME.to_string()),
                generator_url: String::new(),
                fingerprint: m.fingerprint.clone(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_values() {
        let mut vars = BTreeMap::new();
        vars.insert("city", "Paris".to_string());
        vars.insert("value", format_value(Some(0.4567)));
        assert_eq!(expand("{{city}} cancellation rate {{ value }} ({{x}})", &vars), "Paris cancellation rate 0.457 ({{x}})");
        assert_eq!(format_value(Some(20.0)), "20");
        assert_eq!(format_value(Some(0.3)), "0.3");
        assert_eq!(format_value(None), "null");
    }

    #[test]
    fn fingerprint_depends_on_labels_only() {
        let mut a = BTreeMap::new();
        a.insert("alertname".to_string(), "x".to_string());
        a.insert("city".to_string(), "Paris".to_string());
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.insert("city".to_string(), "Lima".to_string());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
    }
}
