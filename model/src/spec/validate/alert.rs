//! Validation of `[[alert]]` rules.

use super::Validator;
use crate::duration::Millis;
use crate::spec::raw::{RawAlert, RawCondition, RawMetric, S};
use crate::spec::{AlertCondition, AlertRule, CmpOp, Domain, Metric, template_placeholders};

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && s.len() <= 128
}

impl Validator {
    pub(super) fn alert(&mut self, raw: &RawAlert, domains: &[Domain], metrics: &[Metric], raw_metrics: &[S<RawMetric>]) -> Option<AlertRule> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            self.err(&raw.name, format!("alert name `{name}` must be 1-128 characters of A-Za-z0-9_-."));
        }
        let Some(metric_index) = metrics.iter().position(|m| &m.name == raw.metric.get_ref()) else {
            if !raw_metrics.iter().any(|m| m.get_ref().name.get_ref() == raw.metric.get_ref()) {
                self.err(&raw.metric, format!("alert `{name}`: unknown metric `{}`", raw.metric.get_ref()));
            }
            return None;
        };
        let metric = &metrics[metric_index];
        let condition = self.alert_condition(&raw.condition, &name, "condition", metric);
        let guard = raw.guard.as_ref().map(|g| self.alert_condition(g, &name, "guard", metric));
        let for_ = self.opt_duration(&raw.for_, &format!("alert `{name}`: for"), Millis(0));
        if for_.ms() < 0
            && let Some(f) = &raw.for_
        {
            self.err(f, format!("alert `{name}`: for must not be negative"));
        }
        let default_resolve = Millis(for_.ms().saturating_add(metric.window.ms()));
        let resolve_after = self.opt_duration(&raw.resolve_after, &format!("alert `{name}`: resolve_after"), default_resolve);
        if let Some(r) = &raw.resolve_after
            && resolve_after.ms() < metric.slide.ms()
        {
            self.err(r, format!("alert `{name}`: resolve_after {resolve_after} must be at least the metric's slide ({})", metric.slide));
        }
        let severity = match &raw.severity {
            None => "warning".to_string(),
            Some(s) => {
                let v = s.get_ref();
                if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
                    self.err(s, format!("alert `{name}`: severity `{v}` must be 1-64 characters of A-Za-z0-9_-"));
                }
                v.clone()
            }
        };
        let domain = &domains[metric.domain];
        let group_names: Vec<&str> = metric.group_by.iter().map(|&g| domain.fields[g].name.as_str()).collect();
        let reserved = ["alertname", "rule", "metric", "severity"];
        let mut labels = Vec::new();
        for (k, v) in &raw.labels {
            if !is_label_name(k) {
                self.err(v, format!("alert `{name}`: label name `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"));
            } else if reserved.contains(&k.as_str()) || group_names.contains(&k.as_str()) {
                self.err(v, format!("alert `{name}`: label `{k}` is set by Pulse (alertname, rule, metric, severity and the group fields)"));
            }
            labels.push((k.clone(), v.get_ref().clone()));
        }
        let mut annotations = Vec::new();
        for (k, v) in &raw.annotations {
            if !is_label_name(k) {
                self.err(v, format!("alert `{name}`: annotation name `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"));
            }
            for placeholder in template_placeholders(v.get_ref()) {
                let known = ["value", "threshold", "guard_value", "rule", "metric", "severity", "for"].contains(&placeholder.as_str())
                    || group_names.contains(&placeholder.as_str());
                if !known {
                    self.err(
                        v,
                        format!(
                            "alert `{name}`: annotation `{k}`: unknown placeholder `{{{{{placeholder}}}}}` (use value, threshold, guard_value, rule, metric, severity, for or a group field: {})",
                            group_names.join(", ")
                        ),
                    );
                }
            }
            annotations.push((k.clone(), v.get_ref().clone()));
        }
        let webhook = raw.webhook.as_ref().map(|w| {
            let url = w.get_ref();
            if !url.starts_with("http://") {
                self.err(w, format!("alert `{name}`: webhook `{url}` must be an http:// URL (no TLS client in Pulse: put a TLS proxy in front)"));
            }
            url.clone()
        });
        if self.errors.len() > before {
            return None;
        }
        Some(AlertRule {
            name,
            metric: metric_index,
            condition: condition?,
            for_,
            guard: match guard {
                Some(g) => Some(g?),
                None => None,
            },
            severity,
            labels,
            annotations,
            resolve_after,
            webhook,
        })
    }

    fn alert_condition(&mut self, raw: &S<RawCondition>, name: &str, what: &str, metric: &Metric) -> Option<AlertCondition> {
        let c = raw.get_ref();
        let aggregate = metric.aggregate_index(c.aggregate.get_ref());
        if aggregate.is_none() {
            self.err(&c.aggregate, format!("alert `{name}`: {what}: `{}` is not an aggregate of metric `{}`", c.aggregate.get_ref(), metric.name));
        }
        let op = CmpOp::parse(c.op.get_ref());
        if op.is_none() {
            self.err(&c.op, format!("alert `{name}`: {what}: unknown op `{}` (use gt, ge, lt or le)", c.op.get_ref()));
        }
        let value = *c.value.get_ref();
        if !value.is_finite() {
            self.err(&c.value, format!("alert `{name}`: {what}: value must be a finite number"));
        }
        Some(AlertCondition { aggregate: aggregate?, op: op?, value })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::duration::Millis;
    use crate::spec::testing::{ALERT_METRIC, BASE, assert_error, default_spec, errors};
    use crate::spec::{CmpOp, Spec};

    #[test]
    fn default_spec_ships_the_cancellation_alert() {
        let spec = default_spec();
        assert_eq!(spec.alerts.len(), 1);
        let a = &spec.alerts[0];
        let city = &spec.metrics[a.metric];
        assert_eq!(city.name, "city_metrics");
        assert_eq!(city.aggregates[a.condition.aggregate].name, "cancellation_rate");
        assert_eq!((a.condition.op, a.condition.value), (CmpOp::Gt, 0.30));
        let guard = a.guard.as_ref().expect("guard");
        assert_eq!((city.aggregates[guard.aggregate].name.as_str(), guard.op, guard.value), ("requests", CmpOp::Ge, 20.0));
        assert_eq!(a.for_, Millis(300_000));
        assert_eq!(a.resolve_after, Millis(600_000));
        assert_eq!(spec.pipeline.alerts_topic, "pulse-alerts");
    }

    #[test]
    fn valid_alert_passes() {
        let text = format!(
            "{ALERT_METRIC}[[alert]]\nname = \"a\"\nmetric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"ge\", value = 3 }}\nfor = \"2m\"\nlabels = {{ team = \"x\" }}\nannotations = {{ summary = \"{{{{city}}}} at {{{{value}}}}\" }}\n"
        );
        assert_eq!(errors(&text), Vec::<String>::new());
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{text}")).expect("valid");
        assert_eq!(spec.alerts[0].resolve_after, Millis(420_000));
        assert_eq!(spec.alerts[0].severity, "warning");
    }

    #[test]
    fn alert_errors_have_lines() {
        let head = format!("{ALERT_METRIC}[[alert]]\nname = \"a\"\n");
        assert_error(&format!("{head}metric = \"nope\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\n"), 24, "unknown metric `nope`");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"x\", op = \"gt\", value = 1 }}\n"), 25, "`x` is not an aggregate");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"above\", value = 1 }}\n"), 25, "unknown op `above`");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nfor = \"soon\"\n"), 26, "for: duration");
        assert_error(
            &format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nannotations = {{ s = \"{{{{town}}}}\" }}\n"),
            26,
            "unknown placeholder `{{town}}`",
        );
        assert_error(
            &format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nlabels = {{ city = \"x\" }}\n"),
            26,
            "label `city` is set by Pulse",
        );
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nwebhook = \"ftp://x\"\n"), 26, "webhook");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nthreshold = 3\n"), 26, "unknown field");
    }
}
