//! Validation of a metric's aggregates: names, methods, filters.

use std::collections::HashSet;

use super::{Validator, is_identifier};
use crate::spec::raw::{RawAggregate, RawFilter, S};
use crate::spec::{
    AggMethod, DEFAULT_DDSKETCH_ACCURACY, DEFAULT_HLL_PRECISION, Domain, Field, FieldType, Filter, HLL_PRECISIONS, Literal, RESERVED_METRIC_COLUMNS,
};

impl Validator {
    /// An aggregate's `method` and its parameters (`precision`, `relative_accuracy`).
    pub(super) fn method(&mut self, a: &RawAggregate, metric: &str, aname: &str, domain: &Domain) -> AggMethod {
        let func = a.func.as_ref().map_or("", |f| f.get_ref().as_str());
        let method = match &a.method {
            None => AggMethod::Exact,
            Some(m) => match (m.get_ref().as_str(), func) {
                (_, f) if !matches!(f, "count_distinct" | "quantile") => {
                    self.err(m, format!("metric `{metric}`: aggregate `{aname}` ({func}) takes no `method` (only count_distinct and quantile do)"));
                    AggMethod::Exact
                }
                ("exact", _) => AggMethod::Exact,
                ("hll", "count_distinct") => {
                    if domain.mutable {
                        self.err(
                            m,
                            format!(
                                "metric `{metric}`: aggregate `{aname}`: method `hll` cannot forget a value, and domain `{}` is mutable (updates and deletes retract values); use the exact count_distinct",
                                domain.name
                            ),
                        );
                    }
                    AggMethod::Hll { precision: DEFAULT_HLL_PRECISION }
                }
                ("ddsketch", "quantile") => AggMethod::DdSketch { relative_accuracy: DEFAULT_DDSKETCH_ACCURACY },
                ("hll" | "ddsketch", _) => {
                    let wants = if m.get_ref() == "hll" { "count_distinct" } else { "quantile" };
                    self.err(m, format!("metric `{metric}`: aggregate `{aname}` ({func}): method `{}` is only for {wants}", m.get_ref()));
                    AggMethod::Exact
                }
                (other, _) => {
                    self.err(
                        m,
                        format!("metric `{metric}`: aggregate `{aname}`: unknown method `{other}` (exact; hll for count_distinct; ddsketch for quantile)"),
                    );
                    AggMethod::Exact
                }
            },
        };
        let method = match (method, &a.precision) {
            (AggMethod::Hll { .. }, Some(p)) => match u8::try_from(*p.get_ref()) {
                Ok(precision) if HLL_PRECISIONS.contains(&precision) => AggMethod::Hll { precision },
                _ => {
                    self.err(
                        p,
                        format!(
                            "metric `{metric}`: aggregate `{aname}`: precision must be an integer between {} and {}",
                            HLL_PRECISIONS.start(),
                            HLL_PRECISIONS.end()
                        ),
                    );
                    method
                }
            },
            (_, Some(p)) => {
                self.err(p, format!("metric `{metric}`: aggregate `{aname}`: only method = \"hll\" takes `precision`"));
                method
            }
            (m, None) => m,
        };
        match (method, &a.relative_accuracy) {
            (AggMethod::DdSketch { .. }, Some(r)) => {
                let a = *r.get_ref();
                if a > 0.0 && a < 1.0 {
                    AggMethod::DdSketch { relative_accuracy: a }
                } else {
                    self.err(r, format!("metric `{metric}`: aggregate `{aname}`: relative_accuracy must be between 0 and 1 (exclusive), e.g. 0.01"));
                    method
                }
            }
            (_, Some(r)) => {
                self.err(r, format!("metric `{metric}`: aggregate `{aname}`: only method = \"ddsketch\" takes `relative_accuracy`"));
                method
            }
            (m, None) => m,
        }
    }

    /// Checks an aggregate's name: an identifier, once per metric, not a column the metric table has already.
    pub(super) fn aggregate_name(&mut self, metric: &str, at: &S<String>, seen: &mut HashSet<String>, is_group_field: bool) {
        let aname = at.get_ref();
        if !is_identifier(aname) {
            self.err(at, format!("metric `{metric}`: aggregate name `{aname}` must be a lowercase identifier"));
        }
        if !seen.insert(aname.clone()) {
            self.err(at, format!("metric `{metric}`: duplicate aggregate `{aname}`"));
        }
        if is_group_field || RESERVED_METRIC_COLUMNS.contains(&aname.as_str()) {
            self.err(at, format!("metric `{metric}`: aggregate name `{aname}` clashes with a column of the metric table"));
        }
    }

    pub(super) fn filter(&mut self, raw: &S<RawFilter>, metric: &str, domain: &Domain) -> Option<Filter> {
        let r = raw.get_ref();
        let Some(fi) = domain.field_index(r.field.get_ref()) else {
            self.err(&r.field, format!("metric `{metric}`: filter on `{}`, which is not a field of domain `{}`", r.field.get_ref(), domain.name));
            return None;
        };
        let field = &domain.fields[fi];
        let given = usize::from(r.eq.is_some()) + usize::from(r.one_of.is_some()) + usize::from(r.non_empty.is_some());
        if given != 1 {
            self.err(raw, format!("metric `{metric}`: a filter takes exactly one of `eq`, `in`, `non_empty`"));
            return None;
        }
        if let Some(v) = &r.eq {
            return self.literal(raw, metric, field, v).map(|l| Filter::Eq(fi, l));
        }
        if let Some(vs) = &r.one_of {
            let lits: Vec<_> = vs.iter().filter_map(|v| self.literal(raw, metric, field, v)).collect();
            return (lits.len() == vs.len() && !lits.is_empty()).then_some(Filter::In(fi, lits));
        }
        if r.non_empty == Some(true) {
            if !matches!(field.ty, FieldType::String | FieldType::Enum(_)) && !field.optional {
                self.err(
                    raw,
                    format!("metric `{metric}`: non_empty needs a string field or an optional field, `{}` is a required {}", field.name, field.ty.name()),
                );
                return None;
            }
            return Some(Filter::NonEmpty(fi));
        }
        self.err(raw, format!("metric `{metric}`: `non_empty = false` filters nothing; remove the filter"));
        None
    }

    fn literal(&mut self, at: &S<RawFilter>, metric: &str, field: &Field, v: &toml::Value) -> Option<Literal> {
        let lit = match (&field.ty, v) {
            (FieldType::Enum(values), toml::Value::String(s)) => match values.iter().position(|x| x == s) {
                Some(i) => Some(Literal::Enum(i as u8)),
                None => {
                    self.err(at, format!("metric `{metric}`: `{s}` is not a value of enum field `{}` ({})", field.name, values.join(", ")));
                    return None;
                }
            },
            // Dimension values are stored in NFC; so is a filter on one.
            (FieldType::String, toml::Value::String(s)) if field.dimension => {
                use unicode_normalization::UnicodeNormalization as _;
                Some(Literal::Str(s.nfc().collect()))
            }
            (FieldType::String, toml::Value::String(s)) => Some(Literal::Str(s.clone())),
            (FieldType::Int, toml::Value::Integer(i)) => Some(Literal::Int(*i)),
            (FieldType::Float, toml::Value::Float(f)) => Some(Literal::Float(*f)),
            (FieldType::Float, toml::Value::Integer(i)) => Some(Literal::Float(*i as f64)),
            (FieldType::Bool, toml::Value::Boolean(b)) => Some(Literal::Bool(*b)),
            _ => None,
        };
        if lit.is_none() {
            self.err(at, format!("metric `{metric}`: filter value {} does not match field `{}` of type {}", toml_literal(v), field.name, field.ty.name()));
        }
        lit
    }
}

fn toml_literal(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => other.type_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::spec::testing::{BASE, METRIC_HEAD, assert_error};
    use crate::spec::{AggMethod, Spec};

    #[test]
    fn filter_on_missing_field() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\", filter = {{ field = \"colour\", eq = \"red\" }} }},\n]\n"),
            21,
            "filter on `colour`, which is not a field of domain `rides`",
        );
    }

    #[test]
    fn filter_value_not_in_enum() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\", filter = {{ field = \"kind\", eq = \"c\" }} }},\n]\n"),
            21,
            "`c` is not a value of enum field `kind`",
        );
    }

    /// `METRIC_HEAD` and one aggregate, which sits at line 21.
    fn one_aggregate(agg: &str) -> String {
        format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{agg},\n]\n")
    }

    #[test]
    fn sketch_methods_parse_with_their_defaults() {
        let aggs = [
            r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll" }"#,
            r#"{ name = "u2", fn = "count_distinct", field = "ride_id", method = "hll", precision = 10 }"#,
            r#"{ name = "p", fn = "quantile", field = "fare", q = 0.9, method = "ddsketch" }"#,
            r#"{ name = "p2", fn = "quantile", field = "fare", q = 0.9, method = "ddsketch", relative_accuracy = 0.02 }"#,
            r#"{ name = "p3", fn = "quantile", field = "fare", q = 0.9, method = "exact" }"#,
            r#"{ name = "p4", fn = "quantile", field = "fare", q = 0.9 }"#,
            r#"{ name = "lo", fn = "min", field = "fare" }"#,
        ];
        let text = format!("{BASE}{METRIC_HEAD}window = \"5m\"\naggregates = [\n{}\n]\n", aggs.join(",\n"));
        let spec = Spec::parse(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let methods: Vec<AggMethod> = spec.metrics[0].aggregates.iter().map(|a| a.method).collect();
        assert_eq!(
            methods,
            [
                AggMethod::Hll { precision: 14 },
                AggMethod::Hll { precision: 10 },
                AggMethod::DdSketch { relative_accuracy: 0.01 },
                AggMethod::DdSketch { relative_accuracy: 0.02 },
                AggMethod::Exact,
                AggMethod::Exact,
                AggMethod::Exact,
            ]
        );
    }

    #[test]
    fn sketch_method_errors_have_lines() {
        let cases = [
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "hll" }"#, "method `hll` is only for count_distinct"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "ddsketch" }"#, "method `ddsketch` is only for quantile"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "tdigest" }"#, "unknown method `tdigest`"),
            (r#"{ name = "lo", fn = "min", field = "fare", method = "exact" }"#, "(min) takes no `method`"),
            (r#"{ name = "n", fn = "count", method = "hll" }"#, "(count) takes no `method`"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll", precision = 3 }"#, "precision must be an integer between 4 and 18"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll", precision = 19 }"#, "precision must be an integer between 4 and 18"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", precision = 12 }"#, "only method = \"hll\" takes `precision`"),
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", precision = 12 }"#, "only method = \"hll\" takes `precision`"),
            (
                r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", relative_accuracy = 1.0 }"#,
                "relative_accuracy must be between 0 and 1",
            ),
            (
                r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", relative_accuracy = 0.0 }"#,
                "relative_accuracy must be between 0 and 1",
            ),
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, relative_accuracy = 0.01 }"#, "only method = \"ddsketch\" takes `relative_accuracy`"),
        ];
        for (agg, needle) in cases {
            assert_error(&one_aggregate(agg), 21, needle);
        }
    }

    #[test]
    fn hll_is_refused_on_a_mutable_domain_and_ddsketch_is_not() {
        let text = "[[domain]]\nname = \"apps\"\ntopic = \"apps\"\nkey = \"event_id\"\ntime_field = \"ts\"\nmutable = true\nfields = [\n  { name = \"event_id\", type = \"string\" },\n  { name = \"user\", type = \"string\" },\n  { name = \"ms\", type = \"float\" },\n  { name = \"ts\", type = \"timestamp\" },\n]\n\n[[metric]]\nname = \"m\"\ndomain = \"apps\"\nwindow = \"5m\"\naggregates = [\n  { name = \"p\", fn = \"quantile\", field = \"ms\", q = 0.5, method = \"ddsketch\" },\n  { name = \"u\", fn = \"count_distinct\", field = \"user\", method = \"hll\" },\n  { name = \"x\", fn = \"count_distinct\", field = \"user\" },\n]\n";
        let errs = match Spec::parse(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].starts_with("t.toml:20: ") && errs[0].contains("method `hll` cannot forget a value, and domain `apps` is mutable"), "{errs:#?}");
        let ok = text.replace(", method = \"hll\"", "");
        let spec = Spec::parse(Path::new("t.toml"), &ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.metrics[0].aggregates[0].method, AggMethod::DdSketch { relative_accuracy: 0.01 });
    }
}
