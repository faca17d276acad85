//! Validation of `[[metric]]` tables that read a domain's events.

use std::collections::HashSet;

use super::{Validator, is_identifier};
use crate::duration::Millis;
use crate::spec::raw::{RawDomain, RawMetric, S};
use crate::spec::{AggKind, Aggregate, DEFAULT_MAX_GROUPS, DEFAULT_METRIC_RETENTION, Domain, FieldType, Metric};

impl Validator {
    pub(super) fn metric(&mut self, raw: &RawMetric, domains: &[Domain], raw_domains: &[S<RawDomain>]) -> Option<Metric> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("metric name `{name}` must be a lowercase identifier"));
        }
        let Some(raw_domain) = &raw.domain else {
            self.err(&raw.name, format!("metric `{name}` needs `domain` (or `inputs`, for a metric derived from other metrics)"));
            return None;
        };
        let Some(raw_window) = &raw.window else {
            self.err(&raw.name, format!("metric `{name}` needs `window`"));
            return None;
        };
        let Some(domain_index) = domains.iter().position(|d| &d.name == raw_domain.get_ref()) else {
            // A domain that failed validation has already been reported; do not pile on.
            if !raw_domains.iter().any(|d| d.get_ref().name.get_ref() == raw_domain.get_ref()) {
                self.err(raw_domain, format!("metric `{name}`: unknown domain `{}`", raw_domain.get_ref()));
            }
            return None;
        };
        let domain = &domains[domain_index];
        let field = |this: &mut Self, at: &S<String>, role: &str| -> Option<usize> {
            let idx = domain.field_index(at.get_ref());
            if idx.is_none() {
                this.err(at, format!("metric `{name}`: {role} `{}` is not a field of domain `{}`", at.get_ref(), domain.name));
            }
            idx
        };

        let mut group_by = Vec::new();
        let mut group_names = HashSet::new();
        let no_groups = S::new(raw.name.span(), Vec::new());
        let raw_group_by = raw.group_by.as_ref().unwrap_or(&no_groups);
        for g in raw_group_by.get_ref() {
            let at = S::new(raw_group_by.span(), g.clone());
            if let Some(i) = field(self, &at, "group_by field") {
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

        let mut aggregates: Vec<Aggregate> = Vec::new();
        let mut agg_names = HashSet::new();
        // Ratios refer to other aggregates by name; resolve them after the first pass.
        let mut ratios = Vec::new();
        for a in &raw.aggregates {
            let a = a.get_ref();
            let aname = a.name.get_ref().clone();
            self.aggregate_name(&name, &a.name, &mut agg_names, group_names.contains(&aname));
            if let Some(e) = &a.expr {
                self.err(e, format!("metric `{name}`: only derived metrics (with `inputs`) have `expr` aggregates; `{aname}` needs `fn`"));
                continue;
            }
            let Some(func_at) = &a.func else {
                self.err(&a.name, format!("metric `{name}`: aggregate `{aname}` needs `fn`"));
                continue;
            };
            let func = func_at.get_ref().as_str();
            let needs_field = matches!(func, "sum" | "avg" | "min" | "max" | "count_distinct" | "quantile");
            let f = match (&a.field, needs_field) {
                (Some(fld), true) => field(self, fld, "field"),
                (None, true) => {
                    self.err(func_at, format!("metric `{name}`: aggregate `{aname}` ({func}) needs `field`"));
                    None
                }
                (Some(fld), false) => {
                    self.err(fld, format!("metric `{name}`: aggregate `{aname}` ({func}) takes no `field`"));
                    None
                }
                (None, false) => None,
            };
            if let Some(fi) = f {
                let fty = &domain.fields[fi].ty;
                let numeric_only = matches!(func, "sum" | "avg" | "min" | "max" | "quantile");
                if numeric_only
                    && !fty.is_numeric()
                    && !(matches!(func, "min" | "max") && *fty == FieldType::Timestamp)
                    && let Some(fld) = &a.field
                {
                    self.err(
                        fld,
                        format!("metric `{name}`: aggregate `{aname}` ({func}) needs a numeric field, `{}` is {}", domain.fields[fi].name, fty.name()),
                    );
                }
                if func == "count_distinct"
                    && *fty == FieldType::Point
                    && let Some(fld) = &a.field
                {
                    self.err(fld, format!("metric `{name}`: cannot count distinct points"));
                }
            }
            if func != "quantile"
                && let Some(q) = &a.q
            {
                self.err(q, format!("metric `{name}`: aggregate `{aname}` ({func}) takes no `q`"));
            }
            if func != "ratio" {
                for r in [&a.numerator, &a.denominator].into_iter().flatten() {
                    self.err(r, format!("metric `{name}`: only ratio aggregates take numerator/denominator"));
                }
            }
            let kind = match func {
                "count" => Some(AggKind::Count),
                "sum" => f.map(AggKind::Sum),
                "avg" => f.map(AggKind::Avg),
                "min" => f.map(AggKind::Min),
                "max" => f.map(AggKind::Max),
                "count_distinct" => f.map(AggKind::CountDistinct),
                "quantile" => match &a.q {
                    Some(q) if (0.0..=1.0).contains(q.get_ref()) => f.map(|f| AggKind::Quantile(f, *q.get_ref())),
                    Some(q) => {
                        self.err(q, format!("metric `{name}`: quantile q must be between 0 and 1"));
                        None
                    }
                    None => {
                        self.err(func_at, format!("metric `{name}`: quantile `{aname}` needs `q` (e.g. q = 0.95)"));
                        None
                    }
                },
                "ratio" => {
                    match (&a.numerator, &a.denominator) {
                        (Some(n), Some(d)) => ratios.push((aggregates.len(), n, d)),
                        _ => self.err(func_at, format!("metric `{name}`: ratio `{aname}` needs numerator and denominator (names of other aggregates)")),
                    }
                    if a.filter.is_some() {
                        self.err(func_at, format!("metric `{name}`: a ratio takes its filters from its numerator and denominator"));
                    }
                    Some(AggKind::Ratio(usize::MAX, usize::MAX))
                }
                other => {
                    self.err(
                        func_at,
                        format!("metric `{name}`: unknown aggregate function `{other}` (count, sum, avg, min, max, count_distinct, quantile, ratio)"),
                    );
                    None
                }
            };
            let filter = a.filter.as_ref().and_then(|flt| self.filter(flt, &name, domain));
            let method = self.method(a, &name, &aname, domain);
            if let Some(kind) = kind {
                aggregates.push(Aggregate { name: aname, kind, filter, method });
            }
        }
        for (slot, n, d) in ratios {
            let resolve = |this: &mut Self, at: &S<String>| -> Option<usize> {
                match raw.aggregates.iter().position(|a| a.get_ref().name.get_ref() == at.get_ref()) {
                    None => {
                        this.err(at, format!("metric `{name}`: ratio refers to unknown aggregate `{}`", at.get_ref()));
                        None
                    }
                    Some(i) => {
                        let target = aggregates.iter().position(|a| &a.name == at.get_ref());
                        match target.map(|t| &aggregates[t].kind) {
                            Some(AggKind::Ratio(..)) => {
                                this.err(at, format!("metric `{name}`: a ratio cannot refer to another ratio (`{}`)", at.get_ref()));
                                None
                            }
                            Some(AggKind::Count | AggKind::Sum(_) | AggKind::CountDistinct(_)) => target,
                            Some(_) => {
                                this.err(
                                    at,
                                    format!("metric `{name}`: a ratio's parts must be count, sum or count_distinct aggregates (`{}` is not)", at.get_ref()),
                                );
                                None
                            }
                            None => {
                                let _ = i;
                                None
                            }
                        }
                    }
                }
            };
            let num = resolve(self, n);
            let den = resolve(self, d);
            if let (Some(num), Some(den)) = (num, den)
                && let Some(a) = aggregates.get_mut(slot)
            {
                a.kind = AggKind::Ratio(num, den);
            }
        }
        if raw.aggregates.is_empty() {
            self.err(&raw.name, format!("metric `{name}` has no aggregates"));
        }
        let max_groups = match &raw.max_groups {
            None => DEFAULT_MAX_GROUPS,
            Some(g) if (1..=10_000_000).contains(g.get_ref()) => *g.get_ref() as usize,
            Some(g) => {
                self.err(g, format!("metric `{name}`: max_groups must be between 1 and 10000000"));
                DEFAULT_MAX_GROUPS
            }
        };
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
        if self.errors.len() > before {
            return None;
        }
        Some(Metric { name, domain: domain_index, group_by, window: window?, slide: slide?, lateness, aggregates, max_groups, retention, derived: None })
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
