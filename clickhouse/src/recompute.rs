//! Batch recomputation of a metric over the raw tables, in SQL: the same
//! windows and aggregates the dataflow maintains incrementally, computed from
//! scratch by ClickHouse. `pulse backfill` writes it as finals; the tests
//! compare it with the dataflow's.
//!
//! Sketch aggregates (`method = "hll"` count_distinct, `method = "ddsketch"`
//! quantiles) are recomputed exactly here (`uniqExact`, `quantileExact`): the
//! exact value is what the sketch estimates, so a backfilled window is within
//! the sketch's stated error of what the dataflow would have written (better,
//! in fact), and the tests measure the sketches' error against it.

use pulse_model::spec::{AggKind, Domain, FieldType, Filter, Literal, Metric, Spec};

use crate::schema::{ident, string_literal};

fn literal(l: &Literal, ty: &FieldType) -> String {
    match (l, ty) {
        (Literal::Str(s), _) => string_literal(s),
        (Literal::Enum(i), FieldType::Enum(values)) => string_literal(values.get(*i as usize).map_or("", String::as_str)),
        (Literal::Enum(i), _) => i.to_string(),
        (Literal::Int(i), _) => i.to_string(),
        (Literal::Float(f), _) => format!("{f:?}"),
        (Literal::Bool(b), _) => b.to_string(),
    }
}

/// The SQL condition of a spec filter.
pub fn filter_sql(domain: &Domain, f: &Filter) -> String {
    let field = &domain.fields[f.field()];
    let col = ident(&field.name);
    match f {
        Filter::Eq(_, l) => format!("{col} = {}", literal(l, &field.ty)),
        Filter::In(_, ls) => format!("{col} IN ({})", ls.iter().map(|l| literal(l, &field.ty)).collect::<Vec<_>>().join(", ")),
        Filter::NonEmpty(_) => match field.ty {
            FieldType::String | FieldType::Enum(_) => format!("({col} IS NOT NULL AND {col} != '')"),
            _ => format!("{col} IS NOT NULL"),
        },
    }
}

/// One row per (group, window) of `metric` for windows starting in
/// `[{from:Int64}, {to:Int64})` (epoch ms, server-side parameters), with the
/// group columns, `window_start` (ms) and one column per aggregate, named as in
/// the spec. Late events are not excluded: compare windows fed only by
/// on-time events.
pub fn recompute_sql(spec: &Spec, metric: &Metric, database: &str) -> String {
    sql(spec, metric, database, spec.metric_domain(metric).mutable)
}

/// As [`recompute_sql`], reading every raw table with `FINAL`: each stored
/// event once, even before merges collapse a sink's replayed rows.
pub fn recompute_sql_exact(spec: &Spec, metric: &Metric, database: &str) -> String {
    sql(spec, metric, database, true)
}

fn sql(spec: &Spec, metric: &Metric, database: &str, read_final: bool) -> String {
    let domain = spec.metric_domain(metric);
    let time = ident(&domain.time_field().name);
    let (slide, k) = (metric.slide.ms(), metric.windows_per_event());
    let groups: Vec<String> = metric.group_by.iter().map(|&g| ident(&domain.fields[g].name)).collect();
    let cond = |a: &pulse_model::Aggregate| a.filter.as_ref().map(|f| filter_sql(domain, f));
    let mut exprs: Vec<String> = Vec::new();
    for a in &metric.aggregates {
        let c = cond(a);
        let field = |i: usize| ident(&domain.fields[i].name);
        let e = match (&a.kind, &c) {
            (AggKind::Count, None) => "toUInt64(count())".to_string(),
            (AggKind::Count, Some(c)) => format!("toUInt64(countIf({c}))"),
            (AggKind::Sum(f), None) => format!("toFloat64(sum({}))", field(*f)),
            (AggKind::Sum(f), Some(c)) => format!("toFloat64(sumIf({}, {c}))", field(*f)),
            (AggKind::Avg(f), None) => format!("if(count({0}) = 0, NULL, avg({0}))", field(*f)),
            (AggKind::Avg(f), Some(c)) => format!("if(countIf({0}, {c}) = 0, NULL, avgIf({0}, {c}))", field(*f)),
            (AggKind::Min(f), None) => format!("if(count({0}) = 0, NULL, toFloat64(min({0})))", field(*f)),
            (AggKind::Min(f), Some(c)) => format!("if(countIf({0}, {c}) = 0, NULL, toFloat64(minIf({0}, {c})))", field(*f)),
            (AggKind::Max(f), None) => format!("if(count({0}) = 0, NULL, toFloat64(max({0})))", field(*f)),
            (AggKind::Max(f), Some(c)) => format!("if(countIf({0}, {c}) = 0, NULL, toFloat64(maxIf({0}, {c})))", field(*f)),
            (AggKind::CountDistinct(f), None) => format!("toUInt64(uniqExact({}))", field(*f)),
            (AggKind::CountDistinct(f), Some(c)) => format!("toUInt64(uniqExactIf({}, {c}))", field(*f)),
            (AggKind::Quantile(f, q), None) => format!("if(count({0}) = 0, NULL, toFloat64(quantileExact({q})({0})))", field(*f)),
            (AggKind::Quantile(f, q), Some(c)) => format!("if(countIf({0}, {c}) = 0, NULL, toFloat64(quantileExactIf({q})({0}, {c})))", field(*f)),
            (AggKind::Ratio(..), _) => String::new(),
            // Derived metrics join their inputs' windows (the dataflow's `backfill::recompute`).
            (AggKind::Expr(_), _) => "CAST(NULL AS Nullable(Float64))".to_string(),
        };
        exprs.push(e);
    }
    // Ratios refer to the other aggregates' expressions.
    for (i, a) in metric.aggregates.iter().enumerate() {
        if let AggKind::Ratio(n, d) = a.kind {
            exprs[i] = format!("if(toFloat64({1}) = 0, NULL, toFloat64({0}) / toFloat64({1}))", exprs[n], exprs[d]);
        }
    }
    let selects: Vec<String> = metric.aggregates.iter().zip(&exprs).map(|(a, e)| format!("{e} AS {}", ident(&a.name))).collect();
    let table = format!("{}.{}", ident(database), ident(&domain.name));
    let final_kw = if read_final { " FINAL" } else { "" };
    let mut group_cols = groups.clone();
    group_cols.push("window_start".into());
    format!(
        "SELECT {gsel}{comma}window_start, {aggs}\nFROM {table}{final_kw}\n\
         ARRAY JOIN arrayMap(i -> intDiv(toUnixTimestamp64Milli({time}), {slide}) * {slide} - i * {slide}, range({k})) AS window_start\n\
         WHERE window_start >= {{from:Int64}} AND window_start < {{to:Int64}}\n\
         GROUP BY {group}\nORDER BY {group}",
        gsel = groups.join(", "),
        comma = if groups.is_empty() { "" } else { ", " },
        aggs = selects.join(", "),
        group = group_cols.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn city_metrics_sql() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let sql = recompute_sql(&spec, spec.metric("city_metrics").expect("metric"), "pulse");
        assert!(sql.contains("toUInt64(countIf(`event_type` = 'cancelled')) AS `cancellations`"), "{sql}");
        assert!(sql.contains("toUInt64(uniqExact(`user_id`)) AS `unique_riders`"), "{sql}");
        assert!(sql.contains("range(5)"), "{sql}");
        let sql = recompute_sql(&spec, spec.metric("event_metrics").expect("metric"), "pulse");
        assert!(sql.contains("FROM `pulse`.`app_events` FINAL") && sql.contains("quantileExact(0.95)"), "{sql}");
    }
}
