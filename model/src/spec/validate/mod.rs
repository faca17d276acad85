//! Validation: from the raw TOML to the validated [`Spec`], collecting every
//! error with its line. The checks of each part live in a submodule, as
//! further `impl Validator` blocks.

use std::collections::HashSet;
use std::path::PathBuf;

use super::raw::{RawPipeline, RawSpec, S};
use super::{LatePolicy, Pipeline, Spec, SpecError};
use crate::duration::{Millis, parse_duration};

mod aggregate;
mod alert;
mod derived;
mod domain;
mod metric;

pub(super) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line of a byte offset.
    pub(super) fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

pub(super) struct Validator {
    pub(super) file: PathBuf,
    pub(super) lines: LineIndex,
    pub(super) errors: Vec<SpecError>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Validator {
    fn err<T>(&mut self, at: &S<T>, message: impl Into<String>) {
        let line = self.lines.line(at.span().start);
        self.errors.push(SpecError { file: self.file.clone(), line, message: message.into() });
    }

    fn duration(&mut self, at: &S<String>, what: &str) -> Option<Millis> {
        match parse_duration(at.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(at, format!("{what}: {e}"));
                None
            }
        }
    }

    fn opt_duration(&mut self, at: &Option<S<String>>, what: &str, default: Millis) -> Millis {
        at.as_ref().and_then(|d| self.duration(d, what)).unwrap_or(default)
    }

    pub(super) fn spec(&mut self, raw: RawSpec) -> Spec {
        let pipeline = self.pipeline(raw.pipeline.as_ref().map(|p| p.get_ref()));
        let mut domains = Vec::new();
        let mut names = HashSet::new();
        let mut topics = HashSet::new();
        for d in &raw.domain {
            let name = d.get_ref().name.get_ref().clone();
            if !names.insert(name.clone()) {
                self.err(&d.get_ref().name, format!("duplicate domain name `{name}`"));
            }
            let topic = d.get_ref().topic.get_ref().clone();
            if !topics.insert(topic.clone()) {
                self.err(&d.get_ref().topic, format!("domain `{name}`: topic `{topic}` is already used by another domain"));
            }
            if topic == pipeline.aggregated_topic || topic == pipeline.dead_letter_topic || topic == pipeline.alerts_topic {
                self.err(&d.get_ref().topic, format!("domain `{name}`: topic `{topic}` is reserved for Pulse's own output"));
            }
            if let Some(domain) = self.domain(d.get_ref()) {
                domains.push(domain);
            }
        }
        if raw.domain.is_empty() {
            self.errors.push(SpecError { file: self.file.clone(), line: 1, message: "the spec declares no [[domain]]".into() });
        }
        let mut metrics = Vec::new();
        let mut metric_names = HashSet::new();
        for m in &raw.metric {
            let name = m.get_ref().name.get_ref().clone();
            if !metric_names.insert(name.clone()) {
                self.err(&m.get_ref().name, format!("duplicate metric name `{name}`"));
            }
            if names.contains(&name) {
                self.err(&m.get_ref().name, format!("metric `{name}` has the name of a domain (both become ClickHouse tables)"));
            }
            if name == "alerts" {
                self.err(&m.get_ref().name, "metric name `alerts` is reserved (GET /v1/stream/alerts streams alert notifications)");
            }
            let metric = if m.get_ref().inputs.is_some() {
                self.derived(m.get_ref(), &domains, &metrics, &raw.metric)
            } else {
                self.metric(m.get_ref(), &domains, &raw.domain)
            };
            if let Some(metric) = metric {
                metrics.push(metric);
            }
        }
        let mut alerts = Vec::new();
        let mut alert_names = HashSet::new();
        for a in &raw.alert {
            let name = a.get_ref().name.get_ref().clone();
            if !alert_names.insert(name.clone()) {
                self.err(&a.get_ref().name, format!("duplicate alert name `{name}`"));
            }
            if let Some(rule) = self.alert(a.get_ref(), &domains, &metrics, &raw.metric) {
                alerts.push(rule);
            }
        }
        Spec { file: self.file.clone(), pipeline, domains, metrics, alerts }
    }

    fn pipeline(&mut self, raw: Option<&RawPipeline>) -> Pipeline {
        let mut p = Pipeline {
            idle_timeout: Millis(10_000),
            emit_interval: Millis(200),
            late_events: LatePolicy::Drop,
            aggregated_topic: "analytics-aggregated".into(),
            dead_letter_topic: "pulse-dead-letter".into(),
            alerts_topic: "pulse-alerts".into(),
        };
        let Some(raw) = raw else { return p };
        p.idle_timeout = self.opt_duration(&raw.idle_timeout, "idle_timeout", p.idle_timeout);
        p.emit_interval = self.opt_duration(&raw.emit_interval, "emit_interval", p.emit_interval);
        if let Some(e) = &raw.emit_interval
            && p.emit_interval.ms() == 0
        {
            self.err(e, "emit_interval must be greater than 0");
        }
        if let Some(l) = &raw.late_events {
            match l.get_ref().as_str() {
                "drop" => p.late_events = LatePolicy::Drop,
                "dead_letter" => p.late_events = LatePolicy::DeadLetter,
                other => self.err(l, format!("late_events: unknown policy `{other}` (use drop or dead_letter)")),
            }
        }
        for (slot, raw_topic) in
            [(&mut p.aggregated_topic, &raw.aggregated_topic), (&mut p.dead_letter_topic, &raw.dead_letter_topic), (&mut p.alerts_topic, &raw.alerts_topic)]
        {
            if let Some(t) = raw_topic {
                if is_topic_name(t.get_ref()) {
                    *slot = t.get_ref().clone();
                } else {
                    let msg = format!("`{}` is not a valid Kafka topic name", t.get_ref());
                    self.err(t, msg);
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::testing::{ALERT_METRIC, METRIC_HEAD, assert_error, errors};

    #[test]
    fn bad_duration() {
        assert_error(&format!("{METRIC_HEAD}window = \"5 minutes\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"), 19, "window: duration `5 minutes`");
    }

    #[test]
    fn duplicate_names() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\" }},\n{{ name = \"n\", fn = \"count\" }},\n]\n"),
            22,
            "duplicate aggregate `n`",
        );
        assert_error(
            &format!(
                "{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"
            ),
            23,
            "duplicate metric name `m`",
        );
        assert_error(
            "\n[[domain]]\nname = \"rides\"\ntopic = \"other\"\nkey = \"k\"\ntime_field = \"t\"\nfields = [{ name = \"k\", type = \"string\" }, { name = \"t\", type = \"timestamp\" }]\n",
            16,
            "duplicate domain name `rides`",
        );
    }

    #[test]
    fn every_error_is_reported() {
        let errs = errors(&format!(
            "{METRIC_HEAD}window = \"5m\"\nslide = \"2m\"\naggregates = [\n{{ name = \"n\", fn = \"nope\" }},\n{{ name = \"s\", fn = \"sum\", field = \"nope\" }},\n]\n"
        ));
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn the_alerts_stream_name_is_reserved() {
        assert_error(&ALERT_METRIC.replace("name = \"m\"", "name = \"alerts\""), 16, "`alerts` is reserved");
    }
}
