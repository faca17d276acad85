//! `pulse backfill`: recomputes a metric's windows over the raw tables (the
//! same definition and exact aggregates as the dataflow, every stored event
//! counted once) and writes them as finals whose revisions supersede earlier
//! ones, to the metric table and the aggregated topic. Only windows the job
//! has closed (its recorded progress) are written, so it is safe to run while
//! the job runs: a window still open gets its final from the job.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use clap::Args;
use pulse_dataflow::emit::FINAL_BIT;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow, RowShape};
use pulse_model::{FieldType, Spec};
use pulse_ops::Shutdown;
use pulse_sink::schema::{is_count, metric_table};
use pulse_sink::verify::recompute_sql_exact;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cli::{ClickHouseArgs, Global, KafkaArgs};

#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// The metric to recompute.
    #[arg(long)]
    pub metric: String,
    /// First window start to recompute (RFC 3339 or epoch ms).
    #[arg(long, value_parser = parse_time)]
    pub from: i64,
    /// Recompute windows starting before this (default: every window the job has closed).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// The dataflow's consumer group, whose recorded progress says which windows are closed.
    #[arg(long, env = "PULSE_DATAFLOW_GROUP", default_value = "pulse-dataflow")]
    pub group: String,
    /// Write to ClickHouse only, not to the aggregated topic.
    #[arg(long)]
    pub no_topic: bool,
}

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>().ok().or_else(|| pulse_model::decode::parse_rfc3339_ms(s)).ok_or_else(|| format!("`{s}` is neither RFC 3339 nor epoch milliseconds"))
}

pub fn backfill(global: &Global, args: &BackfillArgs) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let metric = spec.metric(&args.metric).with_context(|| format!("the spec has no metric `{}`", args.metric))?;
    let m = spec.metrics.iter().position(|x| x.name == metric.name).unwrap_or(0);
    let ch = args.clickhouse.config();
    crate::services::runtime()?.block_on(async {
        let progress = pulse_dataflow::progress::load(&ch.client(), &ch.database, &args.group, &spec).await.context("reading the job's progress")?;
        let closed = progress.get(metric.domain).copied().flatten();
        // Windows [s, s + size) are closed once s + size + lateness <= the closed watermark.
        let closed_before = closed.map(|c| c - metric.lateness.ms() - metric.window.ms() + 1);
        let to = match (args.to, closed_before) {
            (Some(t), Some(c)) => t.min(c),
            (Some(t), None) => {
                tracing::warn!(group = %args.group, "no recorded progress: the job may still be computing some of these windows");
                t
            }
            (None, Some(c)) => c,
            (None, None) => anyhow::bail!("consumer group `{}` has no recorded progress: pass --to to say which windows to recompute", args.group),
        };
        anyhow::ensure!(to > args.from, "nothing to do: no closed window starts in [{}, {to})", args.from);
        let rows = recompute(&spec, m, &ch, args.from, to).await?;
        let table = metric_table(&spec, metric);
        let mut body = BytesMut::new();
        for r in &rows {
            table.encode(r, &mut body);
        }
        if !rows.is_empty() {
            let writer = pulse_sink::Writer::new(&ch, pulse_sink::WriterMetrics::new(&pulse_ops::prometheus::Registry::new()));
            writer.insert(&table.table.name, &table.table.insert_sql(&ch.database), body.freeze(), rows.len(), &Shutdown::new()).await?;
        }
        if !args.no_topic && !rows.is_empty() {
            let producer: FutureProducer = args.kafka.config().reliable_producer().create().context("kafka producer")?;
            let shape = RowShape::new(&spec, metric);
            for r in &rows {
                let (key, json) = (r.key(&shape), r.to_json(&shape));
                producer
                    .send(FutureRecord::to(&spec.pipeline.aggregated_topic).key(&key).payload(&json), Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .context("producing to the aggregated topic")?;
            }
        }
        println!("backfilled {} windows of {} starting in [{}, {})", rows.len(), metric.name, args.from, to);
        Ok(ExitCode::SUCCESS)
    })
}

/// The metric's windows starting in `[from, to)` recomputed by ClickHouse, as final rows.
async fn recompute(spec: &Spec, m: usize, ch: &pulse_sink::ClickHouseConfig, from: i64, to: i64) -> anyhow::Result<Vec<MetricRow>> {
    let metric = &spec.metrics[m];
    let domain = spec.metric_domain(metric);
    let sql = format!("SELECT * FROM ({}) FORMAT JSONEachRow", recompute_sql_exact(spec, metric, &ch.database));
    let mut cursor = ch
        .client()
        .query_raw(&sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .param("from", from)
        .param("to", to)
        .fetch_bytes("JSONEachRow")
        .context("recomputing")?;
    let bytes = cursor.collect().await.context("recomputing")?;
    let now_ms = pulse_model::now_ms();
    // Later than any revision the job gave these windows so far.
    let revision = FINAL_BIT | u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).context("a recomputed row")?;
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
        let window_start = v["window_start"].as_i64().context("window_start")?;
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
            revision,
            emitted_at: now_ms,
            deleted: false,
        });
    }
    Ok(rows)
}
