//! The spec's metrics compiled into what the job computes per event: which
//! group an event belongs to, which additive accumulators it bumps, which
//! distinct-value sets and which order-statistics multisets it joins.

use std::sync::Arc;

use pulse_model::metric_row::GroupValue;
use pulse_model::spec::{AggKind, AggMethod, Domain, FieldType, Filter, Literal, Metric, Spec};
use pulse_model::{Event, Value, Windows};

use crate::derived::DerivedPlan;

/// An additive accumulator: a (filtered) count, or a (filtered) sum with its count.
#[derive(Debug, Clone)]
pub struct AddSlot {
    /// Field summed; `None` counts events.
    pub field: Option<usize>,
    pub filter: Option<CompiledFilter>,
}

/// A distinct-value set (count_distinct).
#[derive(Debug, Clone)]
pub struct DistinctSlot {
    pub field: usize,
    pub filter: Option<CompiledFilter>,
    /// `Some(precision)`: a HyperLogLog sketch per window (see `hll`) instead
    /// of exact presence (see `distinct`).
    pub hll: Option<u8>,
}

/// A multiset of numbers for order statistics (quantiles, min, max); aggregates
/// over the same field and filter share one multiset.
#[derive(Debug, Clone)]
pub struct MultisetSlot {
    pub field: usize,
    pub filter: Option<CompiledFilter>,
    /// (aggregate index, statistic) computed from this multiset.
    pub stats: Vec<(usize, Stat)>,
    /// `Some(relative accuracy)`: a DDSketch per pane (see `ddsketch`) instead
    /// of the exact numbers; only sketch quantiles of that accuracy share it.
    pub sketch: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// The element at index `floor(q * n)` (clamped) of the sorted values, as ClickHouse's `quantileExact`.
    Quantile(f64),
    Min,
    Max,
}

/// How each aggregate of the metric is read off the slots when a window is emitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readout {
    Count(usize),
    Sum(usize),
    Avg(usize),
    Distinct(usize),
    /// (multiset slot, position in its stats)
    Stat(usize, usize),
    Ratio(usize, usize),
    /// A derived metric's aggregate (its windows are joined, not kept in panes; see `derived`).
    Derived,
}

#[derive(Debug, Clone)]
pub struct MetricPlan {
    pub index: usize,
    pub name: String,
    pub domain: usize,
    pub windows: Windows,
    pub lateness: i64,
    pub group_by: Vec<usize>,
    pub add: Vec<AddSlot>,
    pub distinct: Vec<DistinctSlot>,
    pub multisets: Vec<MultisetSlot>,
    /// One per aggregate, in spec order.
    pub outputs: Vec<Readout>,
    enum_values: Vec<Option<Arc<[String]>>>,
}

/// A filter with its literal resolved against the field's representation.
#[derive(Debug, Clone)]
pub enum CompiledFilter {
    Eq(usize, Value),
    In(usize, Vec<Value>),
    NonEmpty(usize),
}

impl CompiledFilter {
    fn compile(f: &Filter) -> CompiledFilter {
        let lit = |l: &Literal| match l {
            Literal::Str(s) => Value::Str(s.as_str().into()),
            Literal::Enum(i) => Value::Enum(*i),
            Literal::Int(i) => Value::Int(*i),
            Literal::Float(x) => Value::Float(*x),
            Literal::Bool(b) => Value::Bool(*b),
        };
        match f {
            Filter::Eq(field, l) => CompiledFilter::Eq(*field, lit(l)),
            Filter::In(field, ls) => CompiledFilter::In(*field, ls.iter().map(lit).collect()),
            Filter::NonEmpty(field) => CompiledFilter::NonEmpty(*field),
        }
    }

    pub fn matches(&self, ev: &Event) -> bool {
        match self {
            CompiledFilter::Eq(f, lit) => value_eq(&ev.values[*f], lit),
            CompiledFilter::In(f, lits) => lits.iter().any(|l| value_eq(&ev.values[*f], l)),
            CompiledFilter::NonEmpty(f) => match &ev.values[*f] {
                Value::Null => false,
                Value::Str(s) => !s.is_empty(),
                _ => true,
            },
        }
    }
}

fn value_eq(v: &Value, lit: &Value) -> bool {
    match (v, lit) {
        (Value::Float(a), Value::Float(b)) => a == b,
        (Value::Int(a), Value::Float(b)) => (*a as f64) == *b,
        (a, b) => a == b,
    }
}

fn passes(filter: &Option<CompiledFilter>, ev: &Event) -> bool {
    filter.as_ref().is_none_or(|f| f.matches(ev))
}

impl MetricPlan {
    pub fn new(spec: &Spec, index: usize, metric: &Metric) -> MetricPlan {
        let domain: &Domain = spec.metric_domain(metric);
        let mut plan = MetricPlan {
            index,
            name: metric.name.clone(),
            domain: metric.domain,
            windows: Windows::new(metric.window.ms(), metric.slide.ms()),
            lateness: metric.lateness.ms(),
            group_by: metric.group_by.clone(),
            add: Vec::new(),
            distinct: Vec::new(),
            multisets: Vec::new(),
            outputs: Vec::new(),
            enum_values: domain
                .fields
                .iter()
                .map(|f| match &f.ty {
                    FieldType::Enum(v) => Some(Arc::from(v.clone().into_boxed_slice())),
                    _ => None,
                })
                .collect(),
        };
        for (ai, agg) in metric.aggregates.iter().enumerate() {
            let filter = agg.filter.as_ref().map(CompiledFilter::compile);
            let out = match agg.kind {
                AggKind::Count => Readout::Count(plan.add_slot(None, filter)),
                AggKind::Sum(f) => Readout::Sum(plan.add_slot(Some(f), filter)),
                AggKind::Avg(f) => Readout::Avg(plan.add_slot(Some(f), filter)),
                AggKind::CountDistinct(f) => {
                    let hll = match agg.method {
                        AggMethod::Hll { precision } => Some(precision),
                        _ => None,
                    };
                    plan.distinct.push(DistinctSlot { field: f, filter, hll });
                    Readout::Distinct(plan.distinct.len() - 1)
                }
                AggKind::Quantile(f, q) => {
                    let sketch = match agg.method {
                        AggMethod::DdSketch { relative_accuracy } => Some(relative_accuracy),
                        _ => None,
                    };
                    plan.stat_slot(f, filter, ai, Stat::Quantile(q), sketch)
                }
                AggKind::Min(f) => plan.stat_slot(f, filter, ai, Stat::Min, None),
                AggKind::Max(f) => plan.stat_slot(f, filter, ai, Stat::Max, None),
                // Resolved below, once every aggregate has its slot.
                AggKind::Ratio(..) => Readout::Ratio(usize::MAX, usize::MAX),
                AggKind::Expr(_) => Readout::Derived,
            };
            plan.outputs.push(out);
        }
        for (ai, agg) in metric.aggregates.iter().enumerate() {
            if let AggKind::Ratio(n, d) = agg.kind {
                plan.outputs[ai] = Readout::Ratio(n, d);
            }
        }
        plan
    }

    fn add_slot(&mut self, field: Option<usize>, filter: Option<CompiledFilter>) -> usize {
        self.add.push(AddSlot { field, filter });
        self.add.len() - 1
    }

    fn stat_slot(&mut self, field: usize, filter: Option<CompiledFilter>, agg: usize, stat: Stat, sketch: Option<f64>) -> Readout {
        // Exact statistics share the exact numbers; a sketch is shared only by
        // sketch quantiles of the same accuracy.
        let same = |m: &MultisetSlot| m.field == field && m.sketch == sketch && format!("{:?}", m.filter) == format!("{filter:?}");
        let slot = match self.multisets.iter().position(same) {
            Some(s) => s,
            None => {
                self.multisets.push(MultisetSlot { field, filter, stats: Vec::new(), sketch });
                self.multisets.len() - 1
            }
        };
        self.multisets[slot].stats.push((agg, stat));
        Readout::Stat(slot, self.multisets[slot].stats.len() - 1)
    }

    /// The event's group values, in `group_by` order.
    pub fn group_values(&self, ev: &Event) -> Vec<GroupValue> {
        self.group_by
            .iter()
            .map(|&g| match &ev.values[g] {
                Value::Str(s) => GroupValue::Str(Arc::from(s.as_str())),
                Value::Enum(i) => {
                    GroupValue::Str(self.enum_values[g].as_ref().and_then(|v| v.get(*i as usize)).map_or_else(|| Arc::from(""), |s| Arc::from(s.as_str())))
                }
                Value::Int(i) => GroupValue::Int(*i),
                Value::Bool(b) => GroupValue::Bool(*b),
                _ => GroupValue::Null,
            })
            .collect()
    }

    /// A stable 64-bit id of (metric, group values): the same in every process.
    pub fn group_id(&self, values: &[GroupValue]) -> u64 {
        hash_group(self.index as u64, values)
    }

    /// Additive contributions of one event: (count, sum) per add slot; `None` when it adds nothing.
    pub fn add_contrib(&self, ev: &Event, out: &mut Vec<(i64, f64)>) {
        out.clear();
        for slot in &self.add {
            let c = if !passes(&slot.filter, ev) {
                (0, 0.0)
            } else {
                match slot.field {
                    None => (1, 0.0),
                    Some(f) => match ev.values[f].as_f64() {
                        Some(x) => (1, x),
                        None => (0, 0.0),
                    },
                }
            };
            out.push(c);
        }
    }

    /// The value hash an event adds to a distinct slot, if any.
    pub fn distinct_value(&self, slot: usize, ev: &Event) -> Option<u128> {
        let s = &self.distinct[slot];
        if !passes(&s.filter, ev) {
            return None;
        }
        let v = &ev.values[s.field];
        if v.is_null() {
            return None;
        }
        Some(v.stable_hash(self.enum_values[s.field].as_deref()))
    }

    /// The number an event adds to a multiset slot, if any.
    pub fn multiset_value(&self, slot: usize, ev: &Event) -> Option<f64> {
        let m = &self.multisets[slot];
        if !passes(&m.filter, ev) {
            return None;
        }
        ev.values[m.field].as_f64().filter(|x| x.is_finite())
    }
}

/// A stable 64-bit hash of group values under `seed`: the same in every process.
pub fn hash_group(seed: u64, values: &[GroupValue]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    for v in values {
        match v {
            GroupValue::Str(s) => {
                h.update(&[1]);
                h.update(s.as_bytes());
                h.update(&[0xff]);
            }
            GroupValue::Int(i) => {
                h.update(&[2]);
                h.update(&i.to_le_bytes());
            }
            GroupValue::Bool(b) => h.update(&[3, u8::from(*b)]),
            GroupValue::Null => h.update(&[4]),
        }
    }
    h.digest()
}

/// Every metric of the spec, grouped by the domain it reads.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub metrics: Vec<MetricPlan>,
    /// Metric indexes per domain index (derived metrics read no domain).
    pub by_domain: Vec<Vec<usize>>,
    pub derived: Vec<DerivedPlan>,
    /// Per metric: the derived metrics it feeds, as (index in `derived`, input position).
    pub feeds: Vec<Vec<(usize, usize)>>,
}

impl JobPlan {
    pub fn new(spec: &Spec) -> JobPlan {
        let metrics: Vec<MetricPlan> = spec.metrics.iter().enumerate().map(|(i, m)| MetricPlan::new(spec, i, m)).collect();
        let mut by_domain = vec![Vec::new(); spec.domains.len()];
        for (m, metric) in metrics.iter().zip(&spec.metrics) {
            if !metric.is_derived() {
                by_domain[m.domain].push(m.index);
            }
        }
        let derived = DerivedPlan::all(spec);
        let mut feeds = vec![Vec::new(); metrics.len()];
        for (d, plan) in derived.iter().enumerate() {
            for (position, &input) in plan.inputs.iter().enumerate() {
                feeds[input].push((d, position));
            }
        }
        JobPlan { metrics, by_domain, derived, feeds }
    }

    /// Largest window + lateness over a domain's metrics: how long an event can matter.
    pub fn horizon(&self, domain: usize) -> i64 {
        self.by_domain[domain].iter().map(|&m| self.metrics[m].windows.size + self.metrics[m].lateness).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn compiles_the_default_spec() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let plan = JobPlan::new(&spec);
        let city = &plan.metrics[0];
        assert_eq!(city.add.len(), 5, "total, requests, completions, cancellations, fare");
        assert_eq!(city.distinct.len(), 1);
        assert_eq!(city.outputs[6], Readout::Ratio(3, 1));
        let ev = &plan.metrics[2];
        assert_eq!(ev.multisets.len(), 1, "p50/p95/p99 share one multiset");
        assert_eq!(ev.multisets[0].stats.len(), 3);
        assert_eq!(plan.by_domain, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn sketches_get_slots_of_their_own() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let text = std::fs::read_to_string(&path).expect("spec");
        let text = text
            .replace(
                r#"{ name = "p50_latency_ms", fn = "quantile", field = "latency_ms", q = 0.5 }"#,
                r#"{ name = "p50_latency_ms", fn = "quantile", field = "latency_ms", q = 0.5, method = "ddsketch" }"#,
            )
            .replace(
                r#"{ name = "p99_latency_ms", fn = "quantile", field = "latency_ms", q = 0.99 }"#,
                r#"{ name = "p99_latency_ms", fn = "quantile", field = "latency_ms", q = 0.99, method = "ddsketch" }"#,
            )
            .replace(
                r#"{ name = "unique_riders", fn = "count_distinct", field = "user_id" }"#,
                r#"{ name = "unique_riders", fn = "count_distinct", field = "user_id", method = "hll", precision = 12 }"#,
            );
        let spec = Spec::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let plan = JobPlan::new(&spec);
        assert_eq!(plan.metrics[0].distinct[0].hll, Some(12));
        let ev = &plan.metrics[2];
        assert_eq!(ev.multisets.len(), 2, "p95 exact alone; p50 and p99 share one sketch");
        let sketch = ev.multisets.iter().find(|m| m.sketch.is_some()).expect("a sketch slot");
        assert_eq!(sketch.sketch, Some(0.01));
        assert_eq!(sketch.stats.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [Stat::Quantile(0.5), Stat::Quantile(0.99)]);
        let exact = ev.multisets.iter().find(|m| m.sketch.is_none()).expect("an exact slot");
        assert_eq!(exact.stats.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [Stat::Quantile(0.95)]);
    }
}
