//! Recomputing a metric's closed windows over the raw tables (the same
//! definition, ClickHouse's exact aggregates) and writing them as finals:
//! `pulse backfill`, and the job itself when it starts with a metric that is
//! new or whose definition changed (see `progress::metric_starts`).

use std::time::Duration;

use bytes::BytesMut;
use pulse_clickhouse::recompute::recompute_sql_exact;
use pulse_clickhouse::schema::{ident, is_count, metric_table};
use pulse_clickhouse::{ClickHouseConfig, Writer};
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow, RowShape};
use pulse_model::{FieldType, Spec};
use pulse_ops::Shutdown;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::derived::{DerivedPlan, join_batch};
use crate::emit::FINAL_BIT;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("recomputing in ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("writing the recomputed windows: {0}")]
    Write(#[from] pulse_clickhouse::WriteError),
    #[error("producing to the aggregated topic: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("a recomputed row: {0}")]
    Row(String),
}

/// The windows of metric `m` starting in `[from, to)`, recomputed by ClickHouse
/// as final rows with `revision` (final bit added). A derived metric's are the
/// join of its inputs' recomputations.
pub async fn recompute(spec: &Spec, m: usize, ch: &ClickHouseConfig, from: i64, to: i64, revision: u64) -> Result<Vec<MetricRow>, BackfillError> {
    let metric = &spec.metrics[m];
    if let Some(d) = &metric.derived {
        let mut inputs = Vec::with_capacity(d.inputs.len());
        for &i in &d.inputs {
            inputs.push(Box::pin(recompute(spec, i, ch, from, to, revision)).await?);
        }
        return Ok(join(spec, m, &inputs, revision));
    }
    let sql = format!("SELECT * FROM ({}) FORMAT JSONEachRow", recompute_sql_exact(spec, metric, &ch.database));
    rows_of(spec, m, ch, &sql, from, to, revision).await
}

/// The final rows metric `m`'s table holds for windows starting in `[from, to)`
/// (what the job emitted). A derived metric rebuilt from its inputs reads these.
pub async fn stored_finals(spec: &Spec, m: usize, ch: &ClickHouseConfig, from: i64, to: i64) -> Result<Vec<MetricRow>, BackfillError> {
    let metric = &spec.metrics[m];
    let domain = spec.metric_domain(metric);
    let mut cols: Vec<String> = metric.group_by.iter().map(|&g| ident(&domain.fields[g].name)).collect();
    cols.push("toUnixTimestamp64Milli(window_start) AS window_start".into());
    cols.extend(metric.aggregates.iter().map(|a| ident(&a.name)));
    // The period is filtered in a subquery: in the outer one the alias
    // `window_start` (ms) would replace the column in `WHERE`, and match nothing.
    let sql = format!(
        "SELECT {} FROM (SELECT * FROM {}.{} FINAL WHERE window_start >= fromUnixTimestamp64Milli({{from:Int64}}, 'UTC') AND window_start < fromUnixTimestamp64Milli({{to:Int64}}, 'UTC') AND final) FORMAT JSONEachRow",
        cols.join(", "),
        ident(&ch.database),
        ident(&metric.name)
    );
    rows_of(spec, m, ch, &sql, from, to, 0).await
}

/// The derived metric `m`'s finals: its inputs' rows (one list per input, in its inputs' order) joined.
pub fn join(spec: &Spec, m: usize, inputs: &[Vec<MetricRow>], revision: u64) -> Vec<MetricRow> {
    let plans = DerivedPlan::all(spec);
    let Some((d, plan)) = plans.iter().enumerate().find(|(_, p)| p.metric == m) else { return Vec::new() };
    join_batch(plan, d, inputs, revision, pulse_model::now_ms())
}

async fn rows_of(spec: &Spec, m: usize, ch: &ClickHouseConfig, sql: &str, from: i64, to: i64, revision: u64) -> Result<Vec<MetricRow>, BackfillError> {
    let metric = &spec.metrics[m];
    let domain = spec.metric_domain(metric);
    let mut cursor = ch
        .client()
        .query_raw(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .param("from", from)
        .param("to", to)
        .fetch_bytes("JSONEachRow")?;
    let bytes = cursor.collect().await?;
    let now_ms = pulse_model::now_ms();
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| BackfillError::Row(e.to_string()))?;
        let group = metric
            .group_by
            .iter()
            .map(|&g| {
                let f = &domain.fields[g];
                let x = &v[&f.name];
                match f.ty {
                    FieldType::Int => x.as_i64().map_or(GroupValue::Null, GroupValue::Int),
                    FieldType::Bool => x.as_bool().map_or(GroupValue::Null, GroupValue::Bool),
                    _ => x.as_str().map_or(GroupValue::Null, |s| GroupValue::Str(s.into())),
                }
            })
            .collect();
        let window_start = v["window_start"].as_i64().ok_or_else(|| BackfillError::Row(format!("no window_start in {v}")))?;
        let values = metric
            .aggregates
            .iter()
            .map(|a| {
                let x = &v[&a.name];
                if is_count(&a.kind) { AggValue::Count(x.as_u64().unwrap_or(0)) } else { AggValue::Float(x.as_f64()) }
            })
            .collect();
        rows.push(MetricRow {
            metric: m,
            group,
            window_start,
            window_end: window_start + metric.window.ms(),
            values,
            is_final: true,
            revision: FINAL_BIT | revision,
            emitted_at: now_ms,
            deleted: false,
        });
    }
    Ok(rows)
}

/// Recomputes the windows of metric `m` starting in `[from, to)` and writes
/// them to its table and, with a producer, to the aggregated topic. Returns
/// how many windows were written.
pub async fn backfill(
    spec: &Spec,
    m: usize,
    ch: &ClickHouseConfig,
    writer: &Writer,
    producer: Option<&FutureProducer>,
    (from, to): (i64, i64),
    revision: u64,
) -> Result<usize, BackfillError> {
    let metric = &spec.metrics[m];
    let rows = match &metric.derived {
        // A derived metric is rebuilt from what its inputs emitted (their tables keep longer than raw events).
        Some(d) => {
            let mut inputs = Vec::with_capacity(d.inputs.len());
            for &i in &d.inputs {
                inputs.push(stored_finals(spec, i, ch, from, to).await?);
            }
            join(spec, m, &inputs, revision)
        }
        None => recompute(spec, m, ch, from, to, revision).await?,
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let table = metric_table(spec, metric);
    let mut body = BytesMut::new();
    for r in &rows {
        table.encode(r, &mut body);
    }
    writer.insert(&table.table.name, &table.table.insert_sql(&ch.database), body.freeze(), rows.len(), &Shutdown::new()).await?;
    if let Some(producer) = producer {
        let shape = RowShape::new(spec, metric);
        for r in &rows {
            let (key, json) = (r.key(&shape), r.to_json(&shape));
            producer.send(FutureRecord::to(&spec.pipeline.aggregated_topic).key(&key).payload(&json), Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
        }
    }
    Ok(rows.len())
}
