//! Validation of derived metrics (`inputs` instead of `domain`).

use std::collections::HashSet;

use super::{Validator, is_identifier};
use crate::duration::Millis;
use crate::expr::{Expr, RawRef};
use crate::spec::raw::{RawAggregate, RawMetric, S};
use crate::spec::{AggKind, AggMethod, Aggregate, DEFAULT_MAX_GROUPS, DEFAULT_METRIC_RETENTION, Derived, Domain, Metric};

/// The validated metrics a derived metric reads.
struct Inputs<'a> {
    /// The `inputs` key, where errors about the inputs point.
    at: &'a S<Vec<String>>,
    /// Indices into `metrics`, in the order of `inputs`; never empty.
    indices: Vec<usize>,
    metrics: &'a [Metric],
    domains: &'a [Domain],
}

impl<'a> Inputs<'a> {
    fn first(&self) -> &'a Metric {
        &self.metrics[self.indices[0]]
    }

    fn iter(&self) -> impl Iterator<Item = &'a Metric> + '_ {
        self.indices.iter().map(|&i| &self.metrics[i])
    }

    /// The names of an input's group fields, in its group_by order.
    fn group_names(&self, m: &Metric) -> Vec<String> {
        m.group_by.iter().map(|&g| self.domains[m.domain].fields[g].name.clone()).collect()
    }

    /// The index, among its domain's fields, of the group field of `m` called `name`.
    fn group_field(&self, m: &Metric, name: &str) -> Option<usize> {
        m.group_by.iter().copied().find(|&f| self.domains[m.domain].fields[f].name == name)
    }

    /// An expression's `input.aggregate` reference of derived metric `metric`, as (input position, aggregate index).
    fn resolve(&self, r: &RawRef, metric: &str) -> Result<(usize, usize), String> {
        let Some(k) = self.indices.iter().position(|&i| self.metrics[i].name == r.metric) else {
            return Err(format!("`{}` is not an input of `{metric}` (inputs: {})", r.metric, self.at.get_ref().join(", ")));
        };
        let m = &self.metrics[self.indices[k]];
        let Some(ai) = m.aggregate_index(&r.aggregate) else {
            return Err(format!("metric `{}` has no aggregate `{}`", m.name, r.aggregate));
        };
        Ok((k, ai))
    }
}

impl Validator {
    /// A metric derived from other metrics' windows (`inputs` instead of `domain`).
    pub(super) fn derived(&mut self, raw: &RawMetric, domains: &[Domain], metrics: &[Metric], raw_metrics: &[S<RawMetric>]) -> Option<Metric> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("metric name `{name}` must be a lowercase identifier"));
        }
        let raw_inputs = raw.inputs.as_ref()?;
        self.domain_only_keys(raw);
        let indices = self.input_metrics(raw, raw_inputs, metrics, raw_metrics);
        if self.errors.len() > before || indices.is_empty() {
            return None;
        }
        let inputs = Inputs { at: raw_inputs, indices, metrics, domains };
        let first = inputs.first();
        self.input_windows(raw, &inputs);
        let (group_names, group_by, key_positions) = self.join_fields(raw, &inputs);
        let aggregates = self.expr_aggregates(raw, &inputs, &group_names);
        let lateness = inputs.iter().map(|m| m.lateness).max().unwrap_or(Millis(0));
        let retention = self.derived_retention(raw, first.window, lateness);
        if self.errors.len() > before {
            return None;
        }
        Some(Metric {
            name,
            domain: first.domain,
            group_by,
            window: first.window,
            slide: first.slide,
            lateness,
            aggregates,
            max_groups: DEFAULT_MAX_GROUPS,
            retention,
            derived: Some(Derived { inputs: inputs.indices, key_positions }),
        })
    }

    /// `domain`, `lateness` and `max_groups` belong to metrics that read a domain.
    fn domain_only_keys(&mut self, raw: &RawMetric) {
        let name = raw.name.get_ref();
        if let Some(d) = &raw.domain {
            self.err(d, format!("metric `{name}`: a derived metric takes no `domain` (it reads its inputs' windows)"));
        }
        if let Some(at) = &raw.lateness {
            self.err(at, format!("metric `{name}`: a derived metric takes no `lateness` (its windows close when every input's have)"));
        }
        if let Some(g) = &raw.max_groups {
            self.err(g, format!("metric `{name}`: a derived metric takes no `max_groups` (its inputs' caps apply)"));
        }
    }

    /// The indices in `metrics` of 1 to 8 inputs, each once: metrics of domains, declared before.
    fn input_metrics(&mut self, raw: &RawMetric, raw_inputs: &S<Vec<String>>, metrics: &[Metric], raw_metrics: &[S<RawMetric>]) -> Vec<usize> {
        let name = raw.name.get_ref();
        let mut inputs: Vec<usize> = Vec::new();
        if raw_inputs.get_ref().is_empty() || raw_inputs.get_ref().len() > 8 {
            self.err(raw_inputs, format!("metric `{name}`: `inputs` lists 1 to 8 metrics"));
        }
        for input in raw_inputs.get_ref() {
            if input == name {
                self.err(raw_inputs, format!("metric `{name}`: a derived metric cannot read itself (a cycle)"));
                continue;
            }
            match metrics.iter().position(|m| &m.name == input) {
                Some(i) if metrics[i].is_derived() => self.err(
                    raw_inputs,
                    format!("metric `{name}`: input `{input}` is itself derived; derived metrics read metrics of domains only (no chains, so no cycles)"),
                ),
                Some(i) if inputs.contains(&i) => self.err(raw_inputs, format!("metric `{name}`: input `{input}` is listed twice")),
                Some(i) => inputs.push(i),
                None => match raw_metrics.iter().position(|m| m.get_ref().name.get_ref() == input) {
                    // An input that failed validation has been reported already.
                    Some(i) if raw_metrics[i].get_ref().inputs.is_some() => self.err(
                        raw_inputs,
                        format!("metric `{name}`: input `{input}` is itself derived; derived metrics read metrics of domains only (no chains, so no cycles)"),
                    ),
                    Some(i) if raw_metrics[i].span().start > raw.name.span().start => {
                        self.err(raw_inputs, format!("metric `{name}`: input `{input}` must be declared before the metrics derived from it"))
                    }
                    Some(_) => {}
                    None => self.err(raw_inputs, format!("metric `{name}`: unknown input metric `{input}`")),
                },
            }
        }
        inputs
    }

    /// Every input's windows must be the same; a `window` or `slide` given must say the same.
    fn input_windows(&mut self, raw: &RawMetric, inputs: &Inputs<'_>) {
        let name = raw.name.get_ref();
        let first = inputs.first();
        for m in inputs.iter().skip(1) {
            if (m.window, m.slide) != (first.window, first.slide) {
                self.err(
                    inputs.at,
                    format!(
                        "metric `{name}`: inputs have different windows (`{}`: {} sliding {}, `{}`: {} sliding {}); joined windows must be the same",
                        first.name, first.window, first.slide, m.name, m.window, m.slide
                    ),
                );
            }
        }
        for (key, at, want) in [("window", &raw.window, first.window), ("slide", &raw.slide, first.slide)] {
            if let Some(at) = at
                && let Some(given) = self.duration(at, &format!("metric `{name}`: {key}"))
                && given != want
            {
                self.err(at, format!("metric `{name}`: {key} {given} differs from its inputs' ({want}); a derived metric's windows are its inputs'"));
            }
        }
    }

    /// The group fields the inputs are joined on: by name, the same set in every input, with the
    /// same types. Returns their names, their indices among the first input's domain fields and,
    /// per input, their positions in its group_by.
    fn join_fields(&mut self, raw: &RawMetric, inputs: &Inputs<'_>) -> (Vec<String>, Vec<usize>, Vec<Vec<usize>>) {
        let first = inputs.first();
        let group_names: Vec<String> = match &raw.group_by {
            Some(g) => g.get_ref().clone(),
            None => inputs.group_names(first),
        };
        let at = S::new(raw.group_by.as_ref().map_or(inputs.at.span(), |g| g.span()), ());
        let key_positions = inputs.iter().map(|m| self.key_positions(raw, &at, &group_names, inputs, m)).collect();
        let group_by = group_names.iter().filter_map(|g| inputs.group_field(first, g)).collect();
        (group_names, group_by, key_positions)
    }

    /// The positions of the group fields `group_names` in input `m`'s group_by; none if `m` groups
    /// by other fields.
    fn key_positions(&mut self, raw: &RawMetric, at: &S<()>, group_names: &[String], inputs: &Inputs<'_>, m: &Metric) -> Vec<usize> {
        let name = raw.name.get_ref();
        let first = inputs.first();
        let names = inputs.group_names(m);
        let mut sorted_names = names.clone();
        sorted_names.sort();
        let mut wanted = group_names.to_vec();
        wanted.sort();
        if sorted_names != wanted {
            self.err(
                at,
                format!(
                    "metric `{name}`: input `{}` groups by [{}], not by [{}]; inputs are joined on all their group fields, which must be the derived metric's",
                    m.name,
                    names.join(", "),
                    group_names.join(", ")
                ),
            );
            return Vec::new();
        }
        let mut positions = Vec::new();
        for g in group_names {
            if let Some(p) = names.iter().position(|n| n == g) {
                let ty = &inputs.domains[m.domain].fields[m.group_by[p]].ty;
                let first_ty = inputs.group_field(first, g).map(|f| &inputs.domains[first.domain].fields[f].ty);
                if Some(ty) != first_ty {
                    self.err(at, format!("metric `{name}`: group field `{g}` is {} in `{}` but not in `{}`", ty.name(), m.name, first.name));
                }
                positions.push(p);
            }
        }
        positions
    }

    /// A derived metric's aggregates, at least one.
    fn expr_aggregates(&mut self, raw: &RawMetric, inputs: &Inputs<'_>, group_names: &[String]) -> Vec<Aggregate> {
        let name = raw.name.get_ref();
        let mut aggregates = Vec::new();
        let mut agg_names = HashSet::new();
        for a in &raw.aggregates {
            let a = a.get_ref();
            self.aggregate_name(name, &a.name, &mut agg_names, group_names.contains(a.name.get_ref()));
            if let Some(aggregate) = self.expr_aggregate(a, name, inputs) {
                aggregates.push(aggregate);
            }
        }
        if raw.aggregates.is_empty() {
            self.err(&raw.name, format!("metric `{name}` has no aggregates"));
        }
        aggregates
    }

    /// One aggregate of a derived metric: a `name` and an `expr` over the inputs' aggregates.
    fn expr_aggregate(&mut self, a: &RawAggregate, metric: &str, inputs: &Inputs<'_>) -> Option<Aggregate> {
        let aname = a.name.get_ref();
        if let Some(f) = &a.func
            && f.get_ref() != "expr"
        {
            self.err(f, format!("metric `{metric}`: a derived metric's aggregates are expressions (`expr = \"…\"`), not `fn = \"{}\"`", f.get_ref()));
        }
        let extra = [a.field.as_ref().map(|x| x.span()), a.filter.as_ref().map(|x| x.span()), a.q.as_ref().map(|x| x.span())];
        if let Some(span) = extra.into_iter().flatten().next() {
            self.err(&S::new(span, ()), format!("metric `{metric}`: aggregate `{aname}` of a derived metric takes only `name` and `expr`"));
        }
        let Some(text) = &a.expr else {
            let first = inputs.first();
            self.err(&a.name, format!("metric `{metric}`: aggregate `{aname}` needs `expr` (e.g. \"{}.{}\")", first.name, first.aggregates[0].name));
            return None;
        };
        match Expr::parse(text.get_ref(), &mut |r: &RawRef| inputs.resolve(r, metric)) {
            Ok(e) => Some(Aggregate { name: aname.clone(), kind: AggKind::Expr(e), filter: None, method: AggMethod::Exact }),
            Err(e) => {
                self.err(text, format!("metric `{metric}`: aggregate `{aname}`: {e}"));
                None
            }
        }
    }

    /// How long a derived metric's rows are kept: whole seconds, longer than window + lateness.
    fn derived_retention(&mut self, raw: &RawMetric, window: Millis, lateness: Millis) -> Millis {
        let name = raw.name.get_ref();
        let retention = self.opt_duration(&raw.retention, &format!("metric `{name}`: retention"), DEFAULT_METRIC_RETENTION);
        if let Some(r) = &raw.retention {
            let needed = window.ms().saturating_add(lateness.ms());
            if retention.ms() < 1000 || retention.ms() <= needed || retention.ms() % 1000 != 0 {
                self.err(
                    r,
                    format!("metric `{name}`: retention {retention} must be a whole number of seconds longer than window + lateness ({})", Millis(needed)),
                );
            }
        }
        retention
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::duration::Millis;
    use crate::spec::testing::{BASE, errors};
    use crate::spec::{AggKind, Spec};

    const INPUTS: &str = r#"
[[metric]]
name = "a"
domain = "rides"
group_by = ["city"]
window = "5m"
slide = "1m"
aggregates = [{ name = "n", fn = "count" }, { name = "fares", fn = "sum", field = "fare" }]

[[metric]]
name = "b"
domain = "rides"
group_by = ["city"]
window = "5m"
slide = "1m"
lateness = "10s"
aggregates = [{ name = "top", fn = "max", field = "fare" }]
"#;

    fn derived(body: &str) -> Vec<String> {
        errors(&format!("{INPUTS}\n[[metric]]\nname = \"d\"\n{body}"))
    }

    fn assert_derived_error(body: &str, needle: &str) {
        let errs = derived(body);
        assert!(errs.iter().any(|e| e.contains(needle)), "expected an error containing {needle:?}, got {errs:#?}");
    }

    #[test]
    fn derived_metrics() {
        let ok = "inputs = [\"a\", \"b\"]\naggregates = [{ name = \"r\", expr = \"a.n / b.top\" }, { name = \"s\", expr = \"(a.fares - 1) * -2\" }]\n";
        assert_eq!(derived(ok), Vec::<String>::new());
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{INPUTS}\n[[metric]]\nname = \"d\"\n{ok}")).expect("valid");
        let d = spec.metric("d").expect("d");
        let derived = d.derived.as_ref().expect("derived");
        assert_eq!(derived.inputs, vec![0, 1]);
        assert_eq!(derived.key_positions, vec![vec![0], vec![0]]);
        assert_eq!((d.window, d.slide, d.lateness), (Millis(300_000), Millis(60_000), Millis(10_000)), "its inputs' windows; their largest lateness");
        assert!(matches!(&d.aggregates[0].kind, AggKind::Expr(e) if e.to_string() == "(#0.0 / #1.0)"));

        assert_derived_error("inputs = [\"d\"]\naggregates = [{ name = \"r\", expr = \"1\" }]\n", "cannot read itself (a cycle)");
        assert_derived_error("inputs = [\"a\", \"zz\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "unknown input metric `zz`");
        assert_derived_error("inputs = [\"a\", \"a\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "listed twice");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.nope\" }]\n", "metric `a` has no aggregate `nope`");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"b.top\" }]\n", "`b` is not an input of `d`");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n +\" }]\n", "ends early");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n a.n\" }]\n", "column 5");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", fn = \"count\" }]\n", "aggregates are expressions");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n\", field = \"fare\" }]\n", "takes only `name` and `expr`");
        assert_derived_error("inputs = [\"a\"]\ndomain = \"rides\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "takes no `domain`");
        assert_derived_error("inputs = [\"a\"]\nlateness = \"1m\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "takes no `lateness`");
        assert_derived_error("inputs = [\"a\"]\nwindow = \"10m\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "differs from its inputs'");
        assert_derived_error("inputs = [\"a\"]\ngroup_by = [\"kind\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "groups by [city], not by [kind]");
        assert_derived_error("inputs = []\naggregates = [{ name = \"r\", expr = \"1\" }]\n", "1 to 8 metrics");
        // An expression nested beyond the parser's depth is refused, not a stack overflow.
        let deep = format!("inputs = [\"a\"]\naggregates = [{{ name = \"r\", expr = \"{}a.n{}\" }}]\n", "(".repeat(5000), ")".repeat(5000));
        assert_derived_error(&deep, "nested more than");
        // Mismatched windows between inputs, a derived input (no chains), and an input declared later.
        let more = r#"
[[metric]]
name = "c"
domain = "rides"
group_by = ["city"]
window = "10m"
slide = "1m"
aggregates = [{ name = "n", fn = "count" }]

[[metric]]
name = "e"
inputs = ["a", "c"]
aggregates = [{ name = "r", expr = "a.n / c.n" }]

[[metric]]
name = "f"
inputs = ["a"]
aggregates = [{ name = "r", expr = "a.n" }]

[[metric]]
name = "g"
inputs = ["f"]
aggregates = [{ name = "r", expr = "f.r" }]

[[metric]]
name = "h"
inputs = ["later"]
aggregates = [{ name = "r", expr = "later.n" }]

[[metric]]
name = "later"
domain = "rides"
window = "5m"
aggregates = [{ name = "n", fn = "count" }]

[[metric]]
name = "k"
inputs = ["a", "kinds"]
aggregates = [{ name = "r", expr = "a.n" }]
"#;
        let errs = errors(&format!("{INPUTS}{more}"));
        for needle in [
            "metric `e`: inputs have different windows",
            "metric `g`: input `f` is itself derived",
            "metric `h`: input `later` must be declared before",
            "metric `k`: unknown input metric `kinds`",
        ] {
            assert!(errs.iter().any(|e| e.contains(needle)), "expected {needle:?} in {errs:#?}");
        }
    }
}
