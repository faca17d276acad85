//! `pulse sink`: consumes the domain topics and batch-inserts raw events into
//! their ClickHouse tables. A partition's offset is committed only after
//! ClickHouse acknowledged the batch holding its records, so a crash replays
//! (never skips) records; replays collapse on the raw tables' keys.
//!
//! A batch goes to ClickHouse in inserts of at most `MAX_PARTITIONS_PER_INSERT`
//! partitions (days). Rows ClickHouse refuses for good (bad data, violated
//! constraints) are isolated by splitting inserts in halves and go to the
//! dead-letter topic with ClickHouse's answer, like records that do not decode;
//! the offsets move on once the other rows are acknowledged and the refused ones
//! dead-lettered (see `batch`).

pub mod batch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batch::{Rows, SourceRecord};
use bytes::BytesMut;
use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use pulse_kafka::{DeadLetter, KafkaConfig};
use pulse_model::{Decoder, Spec, TimeBounds};
use pulse_ops::{MetricsError, Registrar, ServiceContext, Shutdown};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use pulse_clickhouse::config::ClickHouseConfig;
use pulse_clickhouse::schema::{Provenance, RawTable, STATS_TABLE, StatRow, encode_stat, raw_table, stats_table};
use pulse_clickhouse::writer::{WriteError, Writer, WriterMetrics};

use pulse_ops::prometheus;

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub group: String,
    /// A batch closes at this many rows...
    pub batch_rows: usize,
    /// ...or when its oldest row has waited this long, whichever comes first.
    pub batch_delay: Duration,
    pub instance: String,
    /// How often pipeline figures are written to the stats table.
    pub stats_interval: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            group: "pulse-sink".into(),
            batch_rows: 50_000,
            batch_delay: Duration::from_millis(1000),
            instance: "sink".into(),
            stats_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("dead-letter topic unreachable: {0}")]
    DeadLetter(rdkafka::error::KafkaError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Counts of one run (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    pub stored: u64,
    pub dead_lettered: u64,
}

#[derive(Clone)]
struct SinkMetrics {
    events: IntCounterVec,
    lag: IntGaugeVec,
}

impl SinkMetrics {
    fn new(registry: &Registry) -> Result<SinkMetrics, MetricsError> {
        let r = Registrar::new(registry);
        Ok(SinkMetrics {
            events: r.int_counter_vec(
                "pulse_sink_events_total",
                "Records the sink handled, by domain and outcome (stored, dead_lettered)",
                &["domain", "outcome"],
            )?,
            lag: r.consumer_lag()?,
        })
    }
}

/// Consumer context publishing librdkafka's per-partition lag as a gauge.
pub struct LagContext {
    service: &'static str,
    lag: IntGaugeVec,
}

impl LagContext {
    pub fn new(service: &'static str, lag: IntGaugeVec) -> LagContext {
        LagContext { service, lag }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.lag.with_label_values(&[self.service, topic, &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Rows of one domain waiting for ClickHouse, and the offsets they cover.
struct Batch {
    domain: usize,
    table: RawTable,
    sql: String,
    rows: Rows,
    opened: Option<Instant>,
    /// Next offset to commit per partition once this batch is acknowledged.
    offsets: HashMap<i32, i64>,
    stored_since_report: u64,
    dead_since_report: u64,
}

/// What handling and flushing records use during one run.
struct Stage<'a> {
    spec: &'a Spec,
    writer: &'a Writer,
    consumer: &'a StreamConsumer<LagContext>,
    dlq: &'a FutureProducer,
    metrics: &'a SinkMetrics,
    shutdown: &'a Shutdown,
}

/// Consumes until `ctx.shutdown` fires, then flushes the open batches and
/// commits. Serves the operations endpoints on `ctx.metrics_addr` (when set).
pub async fn run(spec: Arc<Spec>, kafka: &KafkaConfig, clickhouse: &ClickHouseConfig, cfg: SinkConfig, ctx: ServiceContext) -> Result<SinkSummary, SinkError> {
    let metrics = SinkMetrics::new(&ctx.registry)?;
    let writer = Writer::new(clickhouse, WriterMetrics::new(&ctx.registry)?);
    ctx.spawn_ops_server("sink");
    {
        let writer = writer.clone();
        ctx.spawn_readiness(Duration::from_secs(2), move || {
            let writer = writer.clone();
            async move { writer.ping().await }
        });
    }
    let shutdown = &ctx.shutdown;

    let mut consumer_cfg = kafka.consumer(&cfg.group);
    // While ClickHouse is down the sink stops polling (backpressure); stay in the group meanwhile.
    consumer_cfg.set("max.poll.interval.ms", "3600000");
    consumer_cfg.set("statistics.interval.ms", "5000");
    let consumer: StreamConsumer<LagContext> = consumer_cfg.create_with_context(LagContext::new("sink", metrics.lag.clone()))?;
    let topics: Vec<&str> = spec.domains.iter().map(|d| d.topic.as_str()).collect();
    consumer.subscribe(&topics)?;
    let dlq: FutureProducer = kafka.reliable_producer().create()?;
    let decoders: Vec<Decoder> = spec.domains.iter().map(Decoder::new).collect();
    let by_topic: HashMap<&str, usize> = spec.domains.iter().enumerate().map(|(i, d)| (d.topic.as_str(), i)).collect();
    let mut batches: Vec<Batch> = spec
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let table = raw_table(d);
            Batch {
                domain: i,
                sql: table.table.insert_sql(&clickhouse.database),
                table,
                rows: Rows::with_capacity(1 << 20),
                opened: None,
                offsets: HashMap::new(),
                stored_since_report: 0,
                dead_since_report: 0,
            }
        })
        .collect();
    tracing::info!(topics = ?topics, group = %cfg.group, batch_rows = cfg.batch_rows, batch_delay = ?cfg.batch_delay, "sink consuming");

    let stage = Stage { spec: &spec, writer: &writer, consumer: &consumer, dlq: &dlq, metrics: &metrics, shutdown };
    let mut summary = SinkSummary::default();
    let mut next_report = Instant::now() + cfg.stats_interval;
    loop {
        let deadline =
            batches.iter().filter_map(|b| b.opened.map(|t| t + cfg.batch_delay)).min().unwrap_or_else(|| Instant::now() + cfg.batch_delay).min(next_report);
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("kafka: {e}");
                        continue;
                    }
                };
                let Some(&d) = by_topic.get(msg.topic()) else { continue };
                let batch = &mut batches[d];
                handle(&msg, &stage, &decoders[d], batch, &mut summary).await?;
                if batch.rows.len() >= cfg.batch_rows {
                    flush(batch, &stage, &mut summary).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                for batch in batches.iter_mut() {
                    if batch.opened.is_some_and(|t| t + cfg.batch_delay <= now) {
                        flush(batch, &stage, &mut summary).await?;
                    }
                }
                if now >= next_report {
                    report_stats(&spec, &writer, &cfg, &clickhouse.database, &mut batches).await;
                    next_report = now + cfg.stats_interval;
                }
            }
        }
    }
    tracing::info!("sink: flushing open batches before exit");
    for batch in batches.iter_mut() {
        flush(batch, &stage, &mut summary).await?;
    }
    if let Ok(tpl) = consumer.assignment()
        && tpl.count() > 0
    {
        // Make sure the async commits of the last flushes are on the broker.
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    }
    Ok(summary)
}

async fn handle(msg: &BorrowedMessage<'_>, stage: &Stage<'_>, decoder: &Decoder, batch: &mut Batch, summary: &mut SinkSummary) -> Result<(), SinkError> {
    let Stage { spec, dlq, metrics, .. } = *stage;
    let domain = &spec.domains[batch.domain];
    let now_ms = pulse_model::now_ms();
    let record_time = msg.timestamp().to_millis().unwrap_or(now_ms);
    let decoded = match msg.payload() {
        None => Err("empty record (no payload)".to_string()),
        Some(bytes) => decoder.decode(bytes).map_err(|e| e.to_string()),
    };
    // The trust boundary: an event time far from its record's broker timestamp is
    // refused here as in the dataflow (a delete carries no event time of its own).
    let decoded = decoded.and_then(|ev| TimeBounds::of(domain).check_event(&ev, record_time, now_ms).map(|()| ev).map_err(|e| e.to_string()));
    match decoded {
        Ok(ev) => {
            let at = Provenance { topic: msg.topic(), partition: msg.partition(), offset: msg.offset(), timestamp_ms: record_time };
            let partition_key = batch.table.partition_key(&ev, &at);
            batch.table.encode(&ev, &at, batch.rows.buf());
            let source = SourceRecord {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
            };
            batch.rows.push(partition_key, source);
            // Counted as stored once ClickHouse acknowledged it (`flush`).
        }
        Err(reason) => {
            let dead = DeadLetter {
                source_topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                stage: "sink".into(),
                reason,
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
            };
            send_dead_letter(dlq, &spec.pipeline.dead_letter_topic, &dead).await.map_err(SinkError::DeadLetter)?;
            tracing::debug!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), reason = %dead.reason, "dead-lettered");
            batch.dead_since_report += 1;
            summary.dead_lettered += 1;
            metrics.events.with_label_values(&[&domain.name, "dead_lettered"]).inc();
        }
    }
    batch.offsets.insert(msg.partition(), msg.offset() + 1);
    if batch.opened.is_none() {
        batch.opened = Some(Instant::now());
    }
    Ok(())
}

/// Sends one dead-letter record and waits for the broker's acknowledgement.
pub async fn send_dead_letter(producer: &FutureProducer, topic: &str, dead: &DeadLetter) -> Result<(), rdkafka::error::KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(dead.headers());
    if let Some(k) = &dead.key {
        record = record.key(k.as_slice());
    }
    if let Some(p) = &dead.payload {
        record = record.payload(p.as_slice());
    }
    producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
}

/// Stores the batch's rows (dead-lettering those ClickHouse refuses for good),
/// then commits the offsets the batch covers.
async fn flush(batch: &mut Batch, stage: &Stage<'_>, summary: &mut SinkSummary) -> Result<(), SinkError> {
    let Stage { spec, writer, consumer, dlq, metrics, shutdown } = *stage;
    if batch.opened.is_none() {
        return Ok(());
    }
    let domain = &spec.domains[batch.domain];
    let rows = batch.rows.take();
    if !rows.rows().is_empty() {
        let stored = batch::store(writer, &domain.name, &batch.sql, &rows, shutdown).await?;
        for refused in &stored.refused {
            let Some(row) = rows.rows().get(refused.row) else { continue };
            let dead = DeadLetter {
                source_topic: domain.topic.clone(),
                partition: row.source.partition,
                offset: row.source.offset,
                stage: "sink".into(),
                reason: refused.reason.clone(),
                key: row.source.key.clone(),
                payload: row.source.payload.clone(),
            };
            send_dead_letter(dlq, &spec.pipeline.dead_letter_topic, &dead).await.map_err(SinkError::DeadLetter)?;
            tracing::warn!(topic = %domain.topic, partition = dead.partition, offset = dead.offset, reason = %dead.reason, "refused by clickhouse, dead-lettered");
        }
        let (ok, dead) = (stored.rows as u64, stored.refused.len() as u64);
        batch.stored_since_report += ok;
        batch.dead_since_report += dead;
        summary.stored += ok;
        summary.dead_lettered += dead;
        metrics.events.with_label_values(&[&domain.name, "stored"]).inc_by(ok);
        metrics.events.with_label_values(&[&domain.name, "dead_lettered"]).inc_by(dead);
        tracing::debug!(table = %domain.name, rows = stored.rows, refused = dead, inserts = stored.inserts, "batch acknowledged");
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &next) in &batch.offsets {
        tpl.add_partition_offset(&domain.topic, p, Offset::Offset(next))?;
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        // After a rebalance the partition may belong to another member, which replays
        // from the last commit; the table key collapses the replay.
        tracing::warn!(topic = %domain.topic, "offset commit failed: {e}");
    }
    tracing::debug!(table = %domain.name, "batch committed");
    batch.opened = None;
    batch.offsets.clear();
    Ok(())
}

async fn report_stats(spec: &Spec, writer: &Writer, cfg: &SinkConfig, database: &str, batches: &mut [Batch]) {
    let ts = pulse_model::now_ms();
    let mut buf = BytesMut::new();
    let mut rows = 0;
    for b in batches.iter_mut() {
        for (name, value) in [("events_stored", b.stored_since_report), ("dead_lettered", b.dead_since_report)] {
            encode_stat(
                &StatRow { ts, service: "sink", instance: cfg.instance.clone(), domain: spec.domains[b.domain].name.clone(), name, value: value as f64 },
                &mut buf,
            );
            rows += 1;
        }
        b.stored_since_report = 0;
        b.dead_since_report = 0;
    }
    // Figures are best effort: one attempt, never blocking the data path for long.
    if let Err(e) = writer.insert_once(&stats_table().insert_sql(database), buf.freeze()).await {
        tracing::debug!(table = STATS_TABLE, rows, "stats not written: {e}");
    }
}
