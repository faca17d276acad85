//! Validated aggregates of a metric: their functions, methods and filters.

use std::fmt;

use crate::expr::Expr;

/// One aggregate of a metric. Its `Debug` form is part of the metric's
/// definition fingerprint (see the dataflow's `progress`): a new field must
/// appear there too (and leave the form of existing definitions unchanged).
#[derive(Clone)]
pub struct Aggregate {
    pub name: String,
    pub kind: AggKind,
    pub filter: Option<Filter>,
    /// How it is computed: exactly (the default) or by a sketch.
    pub method: AggMethod,
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Aggregate");
        s.field("name", &self.name).field("kind", &self.kind).field("filter", &self.filter);
        // Only a sketch shows: an exact aggregate keeps the form (and the
        // fingerprint) it had before methods existed.
        if self.method != AggMethod::Exact {
            s.field("method", &self.method);
        }
        s.finish()
    }
}

/// How an aggregate is computed (`method` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum AggMethod {
    /// Every value of every open window is kept (the default).
    #[default]
    Exact,
    /// `count_distinct` by a HyperLogLog sketch of 2^precision registers
    /// (relative standard error about 1.04 / sqrt(2^precision)). Insert-only:
    /// refused on mutable domains.
    Hll { precision: u8 },
    /// `quantile` by a DDSketch: within `relative_accuracy` of the exact
    /// element of the same rank. Supports retractions.
    DdSketch { relative_accuracy: f64 },
}

/// Default `precision` of an `hll` count_distinct.
pub const DEFAULT_HLL_PRECISION: u8 = 14;
/// Accepted `precision` of an `hll` count_distinct.
pub const HLL_PRECISIONS: std::ops::RangeInclusive<u8> = 4..=18;
/// Default `relative_accuracy` of a `ddsketch` quantile.
pub const DEFAULT_DDSKETCH_ACCURACY: f64 = 0.01;

impl AggMethod {
    pub fn name(&self) -> &'static str {
        match self {
            AggMethod::Exact => "exact",
            AggMethod::Hll { .. } => "hll",
            AggMethod::DdSketch { .. } => "ddsketch",
        }
    }
}

/// Aggregate functions. Field arguments are indexes into the domain's fields;
/// ratio arguments are indexes into the metric's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub enum AggKind {
    Count,
    Sum(usize),
    Avg(usize),
    Min(usize),
    Max(usize),
    CountDistinct(usize),
    /// Exact quantile: the element at index `floor(q * n)` (clamped) of the sorted values,
    /// the definition of ClickHouse's `quantileExact`.
    Quantile(usize, f64),
    Ratio(usize, usize),
    /// An aggregate of a derived metric: arithmetic over its inputs' aggregates.
    Expr(Expr),
}

impl AggKind {
    pub fn fn_name(&self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum(_) => "sum",
            AggKind::Avg(_) => "avg",
            AggKind::Min(_) => "min",
            AggKind::Max(_) => "max",
            AggKind::CountDistinct(_) => "count_distinct",
            AggKind::Quantile(..) => "quantile",
            AggKind::Ratio(..) => "ratio",
            AggKind::Expr(_) => "expr",
        }
    }

    /// The domain field this aggregate reads, if any.
    pub fn field(&self) -> Option<usize> {
        match *self {
            AggKind::Sum(f) | AggKind::Avg(f) | AggKind::Min(f) | AggKind::Max(f) | AggKind::CountDistinct(f) | AggKind::Quantile(f, _) => Some(f),
            AggKind::Count | AggKind::Ratio(..) | AggKind::Expr(_) => None,
        }
    }
}

/// A filter on one field of the event. Literals are checked against the field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(usize, Literal),
    In(usize, Vec<Literal>),
    NonEmpty(usize),
}

impl Filter {
    pub fn field(&self) -> usize {
        match self {
            Filter::Eq(f, _) | Filter::In(f, _) | Filter::NonEmpty(f) => *f,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    /// Index into the enum's values.
    Enum(u8),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::default_spec;

    /// The derived `Debug` form of an aggregate before `method` existed.
    mod before_methods {
        // Its fields are read by the derived `Debug` only.
        #[allow(dead_code)]
        #[derive(Debug)]
        pub struct Aggregate<'a> {
            pub name: &'a String,
            pub kind: &'a super::AggKind,
            pub filter: &'a Option<super::Filter>,
        }
    }

    #[test]
    fn an_exact_aggregate_keeps_its_debug_form_and_a_sketch_changes_it() {
        let spec = default_spec();
        for m in &spec.metrics {
            for a in &m.aggregates {
                assert_eq!(a.method, AggMethod::Exact);
                let old = before_methods::Aggregate { name: &a.name, kind: &a.kind, filter: &a.filter };
                assert_eq!(format!("{a:?}"), format!("{old:?}"));
            }
        }
        let mut a = spec.metrics[0].aggregates[0].clone();
        let exact = format!("{a:?}");
        a.method = AggMethod::Hll { precision: 14 };
        let hll14 = format!("{a:?}");
        a.method = AggMethod::Hll { precision: 12 };
        assert!(exact != hll14 && hll14 != format!("{a:?}") && hll14.contains("Hll"), "{hll14}");
    }
}
