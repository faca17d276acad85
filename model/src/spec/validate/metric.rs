//! Validation of `[[metric]]` tables that read a domain's events.

use std::collections::HashSet;

use super::{Validator, is_identifier};
use crate::duration::Millis;
use crate::spec::raw::{RawAggregate, RawDomain, RawMetric, S};
use crate::spec::{AggKind, Aggregate, DEFAULT_MAX_GROUPS, DEFAULT_METRIC_RETENTION, Domain, FieldType, Metric};

impl Validator {
    /// A metric that reads a domain's events.
    pub(super) fn metric(&mut self, raw: &RawMetric, domains: &[Domain], raw_domains: &[S<RawDomain>]) -> Option<Metric> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("metric name `{name}` must be a lowercase identifier"));
        }
        let (raw_domain, raw_window) = self.metric_keys(raw)?;
        let domain_index = self.metric_domain(&name, raw_domain, domains, raw_domains)?;
        let domain = &domains[domain_index];
        let (group_by, group_names) = self.group_fields(raw, domain);
        let (window, slide, lateness) = self.windows(raw, raw_window);
        let aggregates = self.domain_aggregates(raw, domain, &group_names);
        let max_groups = self.max_groups(raw);
        let retention = self.retention(raw, window, lateness);
        if self.errors.len() > before {
            return None;
        }
        Some(Metric { name, domain: domain_index, group_by, window: window?, slide: slide?, lateness, aggregates, max_groups, retention, derived: None })
    }

    /// The `domain` and `window` that a metric reading a domain cannot do without.
    fn metric_keys<'r>(&mut self, raw: &'r RawMetric) -> Option<(&'r S<String>, &'r S<String>)> {
        let name = raw.name.get_ref();
        let Some(domain) = &raw.domain else {
            self.err(&raw.name, format!("metric `{name}` needs `domain` (or `inputs`, for a metric derived from other metrics)"));
            return None;
        };
        let Some(window) = &raw.window else {
            self.err(&raw.name, format!("metric `{name}` needs `window`"));
            return None;
        };
        Some((domain, window))
    }

    /// The index of the domain a metric reads.
    fn metric_domain(&mut self, metric: &str, at: &S<String>, domains: &[Domain], raw_domains: &[S<RawDomain>]) -> Option<usize> {
        let Some(index) = domains.iter().position(|d| &d.name == at.get_ref()) else {
            // A domain that failed validation has already been reported; do not pile on.
            if !raw_domains.iter().any(|d| d.get_ref().name.get_ref() == at.get_ref()) {
                self.err(at, format!("metric `{metric}`: unknown domain `{}`", at.get_ref()));
            }
            return None;
        };
        Some(index)
    }

    /// The index of a field of the metric's domain; `role` names the key that refers to it.
    fn domain_field(&mut self, metric: &str, domain: &Domain, at: &S<String>, role: &str) -> Option<usize> {
        let index = domain.field_index(at.get_ref());
        if index.is_none() {
            self.err(at, format!("metric `{metric}`: {role} `{}` is not a field of domain `{}`", at.get_ref(), domain.name));
        }
        index
    }

    /// The fields a metric groups by, with their names: each once, of type string, enum, int or bool.
    fn group_fields(&mut self, raw: &RawMetric, domain: &Domain) -> (Vec<usize>, HashSet<String>) {
        let name = raw.name.get_ref();
        let mut group_by = Vec::new();
        let mut group_names = HashSet::new();
        let Some(raw_group_by) = &raw.group_by else {
            return (group_by, group_names);
        };
        for g in raw_group_by.get_ref() {
            let at = S::new(raw_group_by.span(), g.clone());
            if let Some(i) = self.domain_field(name, domain, &at, "group_by field") {
                let f = &domain.fields[i];
                if !matches!(f.ty, FieldType::String | FieldType::Enum(_) | FieldType::Int | FieldType::Bool) {
                    self.err(raw_group_by, format!("metric `{name}`: cannot group by `{g}` of type {}", f.ty.name()));
                }
                if !group_names.insert(g.clone()) {
                    self.err(raw_group_by, format!("metric `{name}`: `{g}` appears twice in group_by"));
                }
                group_by.push(i);
            }
        }
        (group_by, group_names)
    }

    /// A metric's window, slide (the window unless given) and lateness (0 unless given).
    /// The window must be a whole number of slides, at most 1440.
    fn windows(&mut self, raw: &RawMetric, raw_window: &S<String>) -> (Option<Millis>, Option<Millis>, Millis) {
        let name = raw.name.get_ref();
        let window = self.duration(raw_window, &format!("metric `{name}`: window"));
        let slide = match &raw.slide {
            Some(s) => self.duration(s, &format!("metric `{name}`: slide")),
            None => window,
        };
        let lateness = self.opt_duration(&raw.lateness, &format!("metric `{name}`: lateness"), Millis(0));
        if let (Some(w), Some(s)) = (window, slide) {
            let at = raw.slide.as_ref().unwrap_or(raw_window);
            if w.ms() <= 0 || s.ms() <= 0 {
                self.err(at, format!("metric `{name}`: window and slide must be greater than 0"));
            } else if w.ms() % s.ms() != 0 {
                self.err(at, format!("metric `{name}`: window {w} is not a multiple of slide {s}"));
            } else if w.ms() / s.ms() > 1440 {
                self.err(at, format!("metric `{name}`: window {w} / slide {s} gives more than 1440 windows per event"));
            }
        }
        (window, slide, lateness)
    }

    /// A metric's aggregates, at least one. Ratios refer to other aggregates by name, so they are
    /// resolved once every aggregate has been read.
    fn domain_aggregates(&mut self, raw: &RawMetric, domain: &Domain, group_names: &HashSet<String>) -> Vec<Aggregate> {
        let name = raw.name.get_ref();
        let mut aggregates = Vec::new();
        let mut agg_names = HashSet::new();
        let mut ratios = Vec::new();
        for a in &raw.aggregates {
            let a = a.get_ref();
            self.aggregate_name(name, &a.name, &mut agg_names, group_names.contains(a.name.get_ref()));
            let Some(aggregate) = self.domain_aggregate(a, name, domain) else {
                continue;
            };
            if let (AggKind::Ratio(..), Some(n), Some(d)) = (&aggregate.kind, &a.numerator, &a.denominator) {
                ratios.push((aggregates.len(), n, d));
            }
            aggregates.push(aggregate);
        }
        self.resolve_ratios(raw, &mut aggregates, ratios);
        if raw.aggregates.is_empty() {
            self.err(&raw.name, format!("metric `{name}` has no aggregates"));
        }
        aggregates
    }

    /// One aggregate of a metric that reads a domain: a function (`fn`) of the domain's events.
    fn domain_aggregate(&mut self, a: &RawAggregate, metric: &str, domain: &Domain) -> Option<Aggregate> {
        let aname = a.name.get_ref();
        if let Some(e) = &a.expr {
            self.err(e, format!("metric `{metric}`: only derived metrics (with `inputs`) have `expr` aggregates; `{aname}` needs `fn`"));
            return None;
        }
        let Some(func_at) = &a.func else {
            self.err(&a.name, format!("metric `{metric}`: aggregate `{aname}` needs `fn`"));
            return None;
        };
        let field = self.aggregate_field(a, metric, func_at, domain);
        self.stray_params(a, metric, func_at.get_ref());
        let kind = self.aggregate_kind(a, metric, func_at, field);
        let filter = a.filter.as_ref().and_then(|f| self.filter(f, metric, domain));
        let method = self.method(a, metric, aname, domain);
        Some(Aggregate { name: aname.clone(), kind: kind?, filter, method })
    }

    /// The field an aggregate reads, for the functions that read one. sum, avg, min, max and
    /// quantile need a numeric field (min and max also take a timestamp); count_distinct any but a point.
    fn aggregate_field(&mut self, a: &RawAggregate, metric: &str, func_at: &S<String>, domain: &Domain) -> Option<usize> {
        let aname = a.name.get_ref();
        let func = func_at.get_ref().as_str();
        let needs_field = matches!(func, "sum" | "avg" | "min" | "max" | "count_distinct" | "quantile");
        let at = match (&a.field, needs_field) {
            (Some(at), true) => at,
            (None, true) => {
                self.err(func_at, format!("metric `{metric}`: aggregate `{aname}` ({func}) needs `field`"));
                return None;
            }
            (Some(at), false) => {
                self.err(at, format!("metric `{metric}`: aggregate `{aname}` ({func}) takes no `field`"));
                return None;
            }
            (None, false) => return None,
        };
        let index = self.domain_field(metric, domain, at, "field")?;
        let field = &domain.fields[index];
        let numeric_only = matches!(func, "sum" | "avg" | "min" | "max" | "quantile");
        if numeric_only && !field.ty.is_numeric() && !(matches!(func, "min" | "max") && field.ty == FieldType::Timestamp) {
            self.err(at, format!("metric `{metric}`: aggregate `{aname}` ({func}) needs a numeric field, `{}` is {}", field.name, field.ty.name()));
        }
        if func == "count_distinct" && field.ty == FieldType::Point {
            self.err(at, format!("metric `{metric}`: cannot count distinct points"));
        }
        Some(index)
    }

    /// `q` belongs to quantile aggregates only, `numerator` and `denominator` to ratios only.
    fn stray_params(&mut self, a: &RawAggregate, metric: &str, func: &str) {
        if func != "quantile"
            && let Some(q) = &a.q
        {
            self.err(q, format!("metric `{metric}`: aggregate `{}` ({func}) takes no `q`", a.name.get_ref()));
        }
        if func != "ratio" {
            for r in [&a.numerator, &a.denominator].into_iter().flatten() {
                self.err(r, format!("metric `{metric}`: only ratio aggregates take numerator/denominator"));
            }
        }
    }

    /// What an aggregate computes, from its `fn` and the field it reads. A ratio's parts are
    /// placeholders here, set by [`Self::resolve_ratios`].
    fn aggregate_kind(&mut self, a: &RawAggregate, metric: &str, func_at: &S<String>, field: Option<usize>) -> Option<AggKind> {
        let aname = a.name.get_ref();
        match func_at.get_ref().as_str() {
            "count" => Some(AggKind::Count),
            "sum" => field.map(AggKind::Sum),
            "avg" => field.map(AggKind::Avg),
            "min" => field.map(AggKind::Min),
            "max" => field.map(AggKind::Max),
            "count_distinct" => field.map(AggKind::CountDistinct),
            "quantile" => match &a.q {
                Some(q) if (0.0..=1.0).contains(q.get_ref()) => field.map(|f| AggKind::Quantile(f, *q.get_ref())),
                Some(q) => {
                    self.err(q, format!("metric `{metric}`: quantile q must be between 0 and 1"));
                    None
                }
                None => {
                    self.err(func_at, format!("metric `{metric}`: quantile `{aname}` needs `q` (e.g. q = 0.95)"));
                    None
                }
            },
            "ratio" => {
                if a.numerator.is_none() || a.denominator.is_none() {
                    self.err(func_at, format!("metric `{metric}`: ratio `{aname}` needs numerator and denominator (names of other aggregates)"));
                }
                if a.filter.is_some() {
                    self.err(func_at, format!("metric `{metric}`: a ratio takes its filters from its numerator and denominator"));
                }
                Some(AggKind::Ratio(usize::MAX, usize::MAX))
            }
            other => {
                self.err(
                    func_at,
                    format!("metric `{metric}`: unknown aggregate function `{other}` (count, sum, avg, min, max, count_distinct, quantile, ratio)"),
                );
                None
            }
        }
    }

    /// Points each ratio, given as (its index, numerator, denominator), at its parts.
    fn resolve_ratios(&mut self, raw: &RawMetric, aggregates: &mut [Aggregate], ratios: Vec<(usize, &S<String>, &S<String>)>) {
        for (slot, n, d) in ratios {
            let num = self.ratio_part(raw, aggregates, n);
            let den = self.ratio_part(raw, aggregates, d);
            if let (Some(num), Some(den)) = (num, den)
                && let Some(a) = aggregates.get_mut(slot)
            {
                a.kind = AggKind::Ratio(num, den);
            }
        }
    }

    /// The index of a ratio's numerator or denominator: a count, sum or count_distinct aggregate.
    fn ratio_part(&mut self, raw: &RawMetric, aggregates: &[Aggregate], at: &S<String>) -> Option<usize> {
        let name = raw.name.get_ref();
        let part = at.get_ref();
        if !raw.aggregates.iter().any(|a| a.get_ref().name.get_ref() == part) {
            self.err(at, format!("metric `{name}`: ratio refers to unknown aggregate `{part}`"));
            return None;
        }
        // An aggregate that failed validation has been reported already.
        let target = aggregates.iter().position(|a| &a.name == part)?;
        match &aggregates[target].kind {
            AggKind::Ratio(..) => {
                self.err(at, format!("metric `{name}`: a ratio cannot refer to another ratio (`{part}`)"));
                None
            }
            AggKind::Count | AggKind::Sum(_) | AggKind::CountDistinct(_) => Some(target),
            _ => {
                self.err(at, format!("metric `{name}`: a ratio's parts must be count, sum or count_distinct aggregates (`{part}` is not)"));
                None
            }
        }
    }

    /// The cap on a metric's groups: 1 to 10000000, [`DEFAULT_MAX_GROUPS`] unless given.
    fn max_groups(&mut self, raw: &RawMetric) -> usize {
        match &raw.max_groups {
            None => DEFAULT_MAX_GROUPS,
            Some(g) if (1..=10_000_000).contains(g.get_ref()) => *g.get_ref() as usize,
            Some(g) => {
                self.err(g, format!("metric `{}`: max_groups must be between 1 and 10000000", raw.name.get_ref()));
                DEFAULT_MAX_GROUPS
            }
        }
    }

    /// How long a metric's rows are kept: whole seconds, longer than window + lateness.
    fn retention(&mut self, raw: &RawMetric, window: Option<Millis>, lateness: Millis) -> Millis {
        let name = raw.name.get_ref();
        let retention = self.opt_duration(&raw.retention, &format!("metric `{name}`: retention"), DEFAULT_METRIC_RETENTION);
        if let (Some(r), Some(w)) = (&raw.retention, window) {
            // A window must close (window + lateness after its start) before the TTL may drop it.
            let needed = w.ms().saturating_add(lateness.ms());
            if retention.ms() < 1000 || retention.ms() <= needed {
                self.err(r, format!("metric `{name}`: retention {retention} must be longer than window + lateness ({})", Millis(needed)));
            } else if retention.ms() % 1000 != 0 {
                self.err(r, format!("metric `{name}`: retention {retention} must be a whole number of seconds"));
            }
        }
        retention
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::duration::Millis;
    use crate::spec::testing::{BASE, METRIC_HEAD, assert_error, errors};
    use crate::spec::{DEFAULT_METRIC_RETENTION, Spec};

    #[test]
    fn valid_metric_passes() {
        assert_eq!(errors(&format!("{METRIC_HEAD}window = \"5m\"\nslide = \"1m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n")), Vec::<String>::new());
    }

    #[test]
    fn metric_retention() {
        let spec = Spec::parse(
            Path::new("t.toml"),
            &format!("{BASE}{METRIC_HEAD}window = \"5m\"\nretention = \"90d\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
        )
        .expect("valid");
        assert_eq!(spec.metrics[0].retention, Millis(90 * 86_400_000));
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"))
            .expect("valid");
        assert_eq!(spec.metrics[0].retention, DEFAULT_METRIC_RETENTION);
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nlateness = \"30s\"\nretention = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            21,
            "longer than window + lateness (330s)",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nretention = \"soon\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "metric `m`: retention",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nretention = \"3601500ms\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "whole number of seconds",
        );
    }

    #[test]
    fn unknown_aggregate() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n  {{ name = \"n\", fn = \"median\" }},\n]\n"),
            21,
            "unknown aggregate function `median`",
        );
    }

    #[test]
    fn window_not_multiple_of_slide() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nslide = \"2m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "window 5m is not a multiple of slide 2m",
        );
    }

    #[test]
    fn unknown_group_field_and_domain() {
        let text =
            "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"country\"]\nwindow = \"5m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
        assert_error(text, 18, "group_by field `country` is not a field");
        let text = "\n[[metric]]\nname = \"m\"\ndomain = \"trips\"\nwindow = \"5m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
        assert_error(text, 17, "unknown domain `trips`");
    }

    #[test]
    fn numeric_aggregate_on_string_and_bad_ratio() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"s\", fn = \"sum\", field = \"city\" }},\n]\n"),
            21,
            "needs a numeric field",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"r\", fn = \"ratio\", numerator = \"x\", denominator = \"r\" }},\n]\n"),
            21,
            "unknown aggregate `x`",
        );
    }
}
