//! `pulse backfill`: recomputes a metric's windows over the raw tables (the
//! same definition and exact aggregates as the dataflow, every stored event
//! counted once) and writes them as finals whose revisions supersede earlier
//! ones, to the metric table and the aggregated topic. Only windows the job
//! has closed (its recorded progress) are written, so it is safe to run while
//! the job runs: a window still open gets its final from the job.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rdkafka::producer::FutureProducer;

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
        let writer = pulse_clickhouse::Writer::new(&ch, pulse_clickhouse::WriterMetrics::new(&pulse_ops::prometheus::Registry::new())?);
        let producer: Option<FutureProducer> =
            if args.no_topic { None } else { Some(args.kafka.config().reliable_producer().create().context("kafka producer")?) };
        // Above every revision written so far (and the wall clock in µs when that is ahead).
        let floor = pulse_dataflow::progress::revision_floor(&ch.client(), &ch.database, &spec).await.context("reading the metric tables' revisions")?;
        let revision = (floor + 1).max(u64::try_from(pulse_model::now_ms()).unwrap_or(0).saturating_mul(1000));
        let written = pulse_dataflow::backfill::backfill(&spec, m, &ch, &writer, producer.as_ref(), (args.from, to), revision).await?;
        println!("backfilled {written} windows of {} starting in [{}, {to})", metric.name, args.from);
        Ok(ExitCode::SUCCESS)
    })
}
