//! Durable delivery of metric rows: every epoch's rows go to the metric's
//! ClickHouse table (batched RowBinary through the sink crate's writer) and as
//! JSON to the aggregated Kafka topic (keyed by metric/group/window), dead
//! letters to the dead-letter topic. An epoch is durable once all of that is
//! acknowledged; only then may the offsets it released be committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use pulse_clickhouse::schema::{MetricTable, StatRow, encode_stat, ident, metric_table, progress_table, stats_table, string_literal};
use pulse_clickhouse::{ClickHouseConfig, Writer};
use pulse_kafka::DeadLetter;
use pulse_model::Spec;
use pulse_model::metric_row::{GroupValue, MetricRow, RowShape};
use pulse_ops::Shutdown;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::job::RowSink;
use crate::metrics::JobMetrics;
use crate::progress::Progress;

/// One epoch's (or several coalesced epochs') output.
pub struct Batch {
    pub epoch: u64,
    pub rows: Vec<MetricRow>,
    pub dead: Vec<DeadLetter>,
}

/// The worker side: hands batches to the output task and reads back durability.
pub struct ChannelSink {
    tx: mpsc::UnboundedSender<Batch>,
    /// Last durable epoch + 1 (0: none yet).
    durable: Arc<AtomicU64>,
    output: Output,
    progress: Progress,
    rt: tokio::runtime::Handle,
}

impl RowSink for ChannelSink {
    fn send(&mut self, epoch: u64, rows: Vec<MetricRow>, dead: Vec<DeadLetter>) {
        if self.tx.send(Batch { epoch, rows, dead }).is_err() {
            tracing::error!("output task is gone; rows of epoch {epoch} are not delivered (offsets stay uncommitted)");
        }
    }

    fn durable_through(&mut self) -> Option<u64> {
        self.durable.load(Ordering::Acquire).checked_sub(1)
    }

    fn record_progress(&mut self, closed: &[i64]) -> bool {
        let Some(due) = self.progress.due(closed, crate::graph::now_ms()) else { return true };
        // Rare (a window-close frontier moved): the worker waits for this one insert.
        let output = &self.output;
        let table = progress_table();
        let written = self.rt.block_on(async {
            if output.fence.load(Ordering::Acquire) {
                return false;
            }
            let body = due.body.clone().freeze();
            output.writer.insert(&table.name, &table.insert_sql(&output.database), body, due.rows(), &output.shutdown).await.is_ok()
        });
        if written {
            self.progress.written(due);
        }
        written
    }
}

/// Everything the output needs, shared by the output tasks of all workers.
#[derive(Clone)]
pub struct Output {
    pub spec: Arc<Spec>,
    pub writer: Writer,
    pub database: String,
    pub producer: FutureProducer,
    pub metrics: JobMetrics,
    pub shutdown: Shutdown,
    pub group: String,
    /// Set when another instance took the consumer group over: deliver nothing more.
    pub fence: Arc<std::sync::atomic::AtomicBool>,
    /// The alert rules' evaluator (none when the spec has no `[[alert]]`).
    pub alerts: Option<Arc<crate::alerts::AlertStage>>,
    /// Output tasks started so far (each worker's gets the next number: its alert source).
    outputs: Arc<AtomicU64>,
    tables: Arc<Vec<MetricTable>>,
    shapes: Arc<Vec<RowShape>>,
}

impl Output {
    pub fn new(
        spec: Arc<Spec>,
        writer: Writer,
        clickhouse: &ClickHouseConfig,
        producer: FutureProducer,
        metrics: JobMetrics,
        shutdown: Shutdown,
        group: &str,
    ) -> Output {
        let tables = spec.metrics.iter().map(|m| metric_table(&spec, m)).collect();
        let shapes = RowShape::all(&spec);
        Output {
            writer,
            database: clickhouse.database.clone(),
            producer,
            metrics,
            shutdown,
            group: group.to_string(),
            fence: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            alerts: None,
            outputs: Arc::new(AtomicU64::new(0)),
            tables: Arc::new(tables),
            shapes: Arc::new(shapes),
            spec,
        }
    }

    /// Starts the output task of one worker on `rt` and returns the worker's sink.
    pub fn spawn(&self, rt: &tokio::runtime::Handle) -> ChannelSink {
        let (tx, rx) = mpsc::unbounded_channel();
        let durable = Arc::new(AtomicU64::new(0));
        let this = self.clone();
        let d = Arc::clone(&durable);
        let source = self.outputs.fetch_add(1, Ordering::Relaxed) as usize;
        rt.spawn(async move { this.run(rx, d, source).await });
        ChannelSink { tx, durable, progress: Progress::new(&self.spec, &self.group), output: self.clone(), rt: rt.clone() }
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Batch>, durable: Arc<AtomicU64>, source: usize) {
        while let Some(first) = rx.recv().await {
            // Coalesce whatever else is waiting into one write.
            let mut batch = first;
            while let Ok(more) = rx.try_recv() {
                batch.epoch = batch.epoch.max(more.epoch);
                batch.rows.extend(more.rows);
                batch.dead.extend(more.dead);
            }
            if self.fence.load(Ordering::Acquire) {
                tracing::warn!(epoch = batch.epoch, "another instance holds the consumer group: this epoch is not delivered");
                return;
            }
            // Alerts see every row as it leaves the job (before the writes, which
            // they do not wait for); their state survives restarts on its own.
            if let Some(alerts) = &self.alerts {
                alerts.observe(source, &batch.rows);
            }
            if self.deliver(&batch).await.is_err() {
                tracing::warn!(epoch = batch.epoch, "shutting down before the epoch was durable; its offsets stay uncommitted");
                return;
            }
            durable.store(batch.epoch + 1, Ordering::Release);
        }
    }

    async fn deliver(&self, batch: &Batch) -> Result<(), ()> {
        // Kafka: produce everything first, then wait for every acknowledgement.
        let topic = &self.spec.pipeline.aggregated_topic;
        let mut pending = Vec::with_capacity(batch.rows.len());
        for row in &batch.rows {
            let shape = &self.shapes[row.metric];
            pending.push((row.key(shape), row.to_json(shape)));
        }
        let produce_all = async {
            let futures: Vec<_> = pending.iter().map(|(key, json)| self.send_retrying(topic, Some(key.as_bytes()), Some(json.as_bytes()), None)).collect();
            futures::future::join_all(futures).await;
            let dlq = &self.spec.pipeline.dead_letter_topic;
            let dead: Vec<_> = batch.dead.iter().map(|d| self.send_retrying(dlq, d.key.as_deref(), d.payload.as_deref(), Some(d))).collect();
            futures::future::join_all(dead).await;
        };
        // ClickHouse: one insert per metric table.
        let mut bodies: Vec<(BytesMut, usize)> = self.tables.iter().map(|_| (BytesMut::new(), 0)).collect();
        let mut withdrawn: Vec<Vec<&MetricRow>> = self.tables.iter().map(|_| Vec::new()).collect();
        for row in &batch.rows {
            if row.deleted {
                withdrawn[row.metric].push(row);
                continue;
            }
            let (buf, n) = &mut bodies[row.metric];
            self.tables[row.metric].encode(row, buf);
            *n += 1;
        }
        let insert_all = async {
            for (i, (body, n)) in bodies.into_iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let table = &self.tables[i].table;
                self.writer.insert(&table.name, &table.insert_sql(&self.database), body.freeze(), n, &self.shutdown).await.map_err(|_| ())?;
            }
            // Windows that ended empty: their rows go (after this batch's own inserts).
            for (i, rows) in withdrawn.iter().enumerate() {
                if !rows.is_empty() {
                    self.withdraw(i, rows).await?;
                }
            }
            Ok::<(), ()>(())
        };
        let ((), inserted) = tokio::join!(produce_all, insert_all);
        inserted?;
        for row in &batch.rows {
            let kind = if row.is_final { "final" } else { "revision" };
            self.metrics.rows_written.with_label_values(&[&self.shapes[row.metric].metric, kind]).inc();
        }
        Ok(())
    }

    /// Deletes the rows of windows that ended empty, retrying like inserts.
    async fn withdraw(&self, metric: usize, rows: &[&MetricRow]) -> Result<(), ()> {
        let sql = withdraw_sql(&self.database, &self.shapes[metric], rows);
        self.writer.execute(&self.shapes[metric].metric, &sql, &self.shutdown).await.map_err(|e| {
            tracing::warn!(metric = %self.shapes[metric].metric, "emptied windows not withdrawn: {e}");
        })
    }

    /// Produces one record, retrying until the broker acknowledges it.
    async fn send_retrying(&self, topic: &str, key: Option<&[u8]>, payload: Option<&[u8]>, dead: Option<&DeadLetter>) {
        let mut attempt = 0u32;
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(d) = dead {
                record = record.headers(d.headers());
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    attempt += 1;
                    let delay = self.writer.backoff.delay(attempt);
                    tracing::warn!(topic, attempt, ?delay, "produce failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// `DELETE` of the given windows (group values and window start) from a metric table.
pub fn withdraw_sql(database: &str, shape: &RowShape, rows: &[&MetricRow]) -> String {
    let condition = |r: &MetricRow| -> String {
        let mut parts: Vec<String> = shape
            .group_names
            .iter()
            .zip(&r.group)
            .map(|(name, g)| match g {
                GroupValue::Str(s) => format!("{} = {}", ident(name), string_literal(s)),
                GroupValue::Int(i) => format!("{} = {i}", ident(name)),
                GroupValue::Bool(b) => format!("{} = {b}", ident(name)),
                // Stored as the column type's default (see the metric table's encoder).
                GroupValue::Null => format!("{0} = defaultValueOfArgumentType({0})", ident(name)),
            })
            .collect();
        // Compared as stored, so that the table's key (group, window_start) narrows the scan.
        parts.push(format!("window_start = fromUnixTimestamp64Milli({})", r.window_start));
        format!("({})", parts.join(" AND "))
    };
    let conditions: Vec<String> = rows.iter().map(|r| condition(r)).collect();
    format!("DELETE FROM {}.{} WHERE {}", ident(database), ident(&shape.metric), conditions.join(" OR "))
}

/// Periodically writes the job's figures (late events, dead letters, watermark
/// delay, events counted) into the pipeline-stats table for the health dashboard.
pub async fn report_stats(spec: Arc<Spec>, writer: Writer, database: String, metrics: JobMetrics, instance: String, every: Duration, shutdown: Shutdown) {
    let mut last: Vec<[f64; 3]> = vec![[0.0; 3]; spec.domains.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let ts = crate::graph::now_ms();
        let mut buf = BytesMut::new();
        for (d, domain) in spec.domains.iter().enumerate() {
            let name = domain.name.as_str();
            let now = [
                metrics.late.with_label_values(&[name]).get() as f64,
                metrics.events.with_label_values(&[name, "dead_lettered"]).get() as f64,
                metrics.events.with_label_values(&[name, "counted"]).get() as f64,
            ];
            for (i, stat) in ["late_events", "dead_lettered", "events_counted"].into_iter().enumerate() {
                let row = StatRow { ts, service: "dataflow", instance: instance.clone(), domain: name.to_string(), name: stat, value: now[i] - last[d][i] };
                encode_stat(&row, &mut buf);
            }
            last[d] = now;
            let delay = metrics.watermark_delay.with_label_values(&[name]).get();
            encode_stat(
                &StatRow { ts, service: "dataflow", instance: instance.clone(), domain: name.to_string(), name: "watermark_delay_seconds", value: delay },
                &mut buf,
            );
        }
        if let Err(e) = writer.insert_once(&stats_table().insert_sql(&database), buf.freeze()).await {
            tracing::debug!("pipeline stats not written: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_model::metric_row::AggValue;

    #[test]
    fn withdrawing_quotes_what_it_splices() {
        let shape = RowShape { metric: "m".into(), group_names: vec!["city".into(), "n".into()], agg_names: vec!["c".into()] };
        let row = |g: Vec<GroupValue>, ws: i64| MetricRow {
            metric: 0,
            group: g,
            window_start: ws,
            window_end: ws + 1,
            values: vec![AggValue::Float(None)],
            is_final: true,
            revision: 1,
            emitted_at: 0,
            deleted: true,
        };
        let a = row(vec![GroupValue::Str("O'Brien \\ x".into()), GroupValue::Int(-3)], 60_000);
        let b = row(vec![GroupValue::Str("Lima".into()), GroupValue::Null], 0);
        let sql = withdraw_sql("db", &shape, &[&a, &b]);
        assert_eq!(
            sql,
            "DELETE FROM `db`.`m` WHERE (`city` = 'O\\'Brien \\\\ x' AND `n` = -3 AND window_start = fromUnixTimestamp64Milli(60000)) \
             OR (`city` = 'Lima' AND `n` = defaultValueOfArgumentType(`n`) AND window_start = fromUnixTimestamp64Milli(0))"
        );
    }
}
