//! Alerts in the job: the rows the output stage receives (live revisions and
//! finals) go through the rules' evaluator ([`pulse_alert::Engine`]); its
//! transitions are handed to a delivery task through a bounded queue, so row
//! delivery never waits for a receiver. The delivery task queues firing and
//! resolved notifications for the webhooks first (Alertmanager format, its own
//! retrying task), then produces them to the alerts topic (keyed `rule/group`)
//! and records every transition in ClickHouse table `pulse_alerts`, which the
//! next start of the job reads back (the newest row per rule and group).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pulse_alert::engine::{Fold, GroupKey, Status};
use pulse_alert::{AlertMessage, Engine, Transition, WebhookConfig, WebhookSender};
use pulse_clickhouse::Writer;
use pulse_clickhouse::schema::{ALERTS_TABLE, AlertRow, alerts_table, encode_alert, ident};
use pulse_model::Spec;
use pulse_model::metric_row::MetricRow;
use pulse_ops::Shutdown;

use crate::output::Output;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

/// Environment variable: a webhook URL receiving every rule's notifications (overrides the spec's `webhook`).
pub const WEBHOOK_ENV: &str = "PULSE_ALERT_WEBHOOK_URL";

/// Transitions waiting for the delivery task at most (batches of one output delivery each).
const QUEUE: usize = 1024;

/// The evaluator shared by the output tasks of all workers, and its delivery queue.
pub struct AlertStage {
    engine: Mutex<Engine>,
    tx: mpsc::Sender<Vec<Transition>>,
    /// Batches of transitions refused because the queue was full (logged; should stay 0).
    pub dropped: AtomicU64,
    pub webhook: WebhookSender,
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Deserialize)]
struct Recovered {
    rule_name: String,
    group_key: String,
    labels: String,
    status_name: String,
    notified_since: i64,
    notified_fired_at: i64,
    decided_end: Option<i64>,
    ck_status_name: String,
    ck_since: i64,
    ck_fired_at: i64,
    ck_last_end: Option<i64>,
    ck_last_hold: Option<i64>,
    ck_changed_at: i64,
    ck_value: Option<f64>,
    ck_guard_value: Option<f64>,
}

/// Where a rule's notifications go: `PULSE_ALERT_WEBHOOK_URL`, else the rule's `webhook`.
pub fn webhook_url(spec: &Spec, rule: usize, env_override: Option<&str>) -> Option<String> {
    env_override.map(str::to_string).or_else(|| spec.alerts.get(rule).and_then(|r| r.webhook.clone()))
}

impl AlertStage {
    /// Reads the recorded state of the output's consumer group back and starts the
    /// delivery task (writing, producing and fencing like `output`).
    /// `one_process`: this process runs every worker of the job (not cluster mode);
    /// `workers`: the output tasks (workers) of this process feeding [`AlertStage::observe`].
    pub async fn start(output: &Output, one_process: bool, workers: usize) -> Result<Arc<AlertStage>, clickhouse::error::Error> {
        let Output { spec, writer, database, producer, group, fence, shutdown, .. } = output.clone();
        let mut engine = Engine::with_sources(&spec, workers);
        let restored = recover(&mut engine, &spec, &writer, &database, &group).await?;
        // One process sees every group: all are evaluated from now on. In cluster mode a
        // restored group waits for its first row (the process that owns it).
        if one_process {
            engine.install_restored();
        }
        let active = engine.active();
        tracing::info!(group = %group, restored, active = active.len(), "alert state recovered from {ALERTS_TABLE}");
        for (r, g, s) in &active {
            tracing::info!(rule = %spec.alerts[*r].name, group = %g.key, status = s.name(), "alert resumed");
        }
        let webhook_override = std::env::var(WEBHOOK_ENV).ok().filter(|u| !u.trim().is_empty());
        if let Some(url) = &webhook_override
            && !url.starts_with("http://")
        {
            tracing::error!("{WEBHOOK_ENV} `{url}` is not an http:// URL; webhook deliveries to it will fail");
        }
        let webhook = WebhookSender::spawn(WebhookConfig::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Delivery { spec, writer, database, producer, group, fence, shutdown, webhook: webhook.clone(), webhook_override };
        tokio::spawn(task.run(rx));
        Ok(Arc::new(AlertStage { engine: Mutex::new(engine), tx, dropped: AtomicU64::new(0), webhook }))
    }

    /// Evaluates the rules on rows output task `source` (a worker) delivers, in emission order. Never waits.
    pub fn observe(&self, source: usize, rows: &[MetricRow]) {
        // A fault in alerting must never stop the job's row delivery.
        let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self.engine.lock() {
            Ok(mut engine) => engine.observe_from(source, rows),
            Err(poisoned) => poisoned.into_inner().observe_from(source, rows),
        }));
        let transitions = match evaluated {
            Ok(t) => t,
            Err(_) => {
                tracing::error!("alert evaluation failed on a batch of rows (a bug): those rows are not evaluated");
                return;
            }
        };
        if transitions.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(transitions) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("alert transitions not delivered (delivery queue full or stopped): {e}");
        }
    }
}

async fn recover(engine: &mut Engine, spec: &Spec, writer: &Writer, database: &str, group: &str) -> Result<usize, clickhouse::error::Error> {
    if spec.alerts.is_empty() {
        return Ok(0);
    }
    // The newest row per rule and group (LowCardinality columns read as String).
    let sql = format!(
        "SELECT toString(rule) AS rule_name, group_key, labels, toString(status) AS status_name, notified_since, notified_fired_at, decided_end, \
         toString(ck_status) AS ck_status_name, ck_since, ck_fired_at, ck_last_end, ck_last_hold, ck_changed_at, ck_value, ck_guard_value \
         FROM {}.{} WHERE consumer_group = ? ORDER BY seq DESC LIMIT 1 BY rule, group_key",
        ident(database),
        ident(ALERTS_TABLE),
    );
    let rows: Vec<Recovered> = writer.client().query(&sql).bind(group).fetch_all().await?;
    let mut restored = 0;
    for row in rows {
        let Some(r) = spec.alerts.iter().position(|a| a.name == row.rule_name) else { continue };
        let metric = &spec.metrics[spec.alerts[r].metric];
        let domain = spec.metric_domain(metric);
        let labels: BTreeMap<String, String> = serde_json::from_str(&row.labels).unwrap_or_default();
        let group_labels: Vec<(String, String)> = metric
            .group_by
            .iter()
            .map(|&g| {
                let name = domain.fields[g].name.clone();
                let value = labels.get(&name).cloned().unwrap_or_default();
                (name, value)
            })
            .collect();
        let key = GroupKey { key: row.group_key.clone(), labels: group_labels };
        let checkpoint = Fold {
            status: Status::from_parts(&row.ck_status_name, row.ck_since, row.ck_fired_at),
            last_end: row.ck_last_end,
            last_hold: row.ck_last_hold,
            changed_at: row.ck_changed_at,
            value: row.ck_value,
            guard_value: row.ck_guard_value,
        };
        let notified = Status::from_parts(&row.status_name, row.notified_since, row.notified_fired_at);
        if notified == Status::Inactive && checkpoint.status == Status::Inactive {
            continue;
        }
        engine.restore(r, key, checkpoint, notified, row.decided_end);
        restored += 1;
    }
    Ok(restored)
}

struct Delivery {
    spec: Arc<Spec>,
    writer: Writer,
    database: String,
    producer: FutureProducer,
    group: String,
    fence: Arc<AtomicBool>,
    shutdown: Shutdown,
    webhook: WebhookSender,
    webhook_override: Option<String>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Vec<Transition>>) {
        let seq = AtomicU64::new((crate::graph::now_ms().max(0) as u64) * 1000);
        let table = alerts_table();
        let insert_sql = table.insert_sql(&self.database);
        while let Some(mut transitions) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                transitions.extend(more);
            }
            if self.fence.load(Ordering::Acquire) {
                tracing::warn!("another instance holds the consumer group: alert transitions not delivered");
                continue;
            }
            let decided_at = crate::graph::now_ms();
            let messages: Vec<(AlertMessage, &Transition)> = transitions.iter().map(|t| (AlertMessage::new(&self.spec, t, decided_at), t)).collect();
            // Webhooks first (their own task): the receiver hears of it within milliseconds.
            for (m, t) in &messages {
                if !m.notifies() {
                    continue;
                }
                tracing::info!(rule = %m.rule, group = %m.group, status = %m.status, value = ?m.value, starts_at = %m.starts_at, "alert {}", m.status);
                if let Some(url) = webhook_url(&self.spec, t.rule, self.webhook_override.as_deref())
                    && let Err(e) = self.webhook.try_send(&url, m.clone())
                {
                    tracing::error!(rule = %m.rule, group = %m.group, "alert not queued for its webhook: {e}");
                }
            }
            // The topic and the table, concurrently.
            let topic = &self.spec.pipeline.alerts_topic;
            let produce = async {
                let sends = messages.iter().filter(|(m, _)| m.notifies()).map(|(m, _)| self.produce(topic, m));
                futures::future::join_all(sends).await;
            };
            let mut body = BytesMut::new();
            for (m, t) in &messages {
                let row = alert_row(&self.group, m, t, seq.fetch_add(1, Ordering::Relaxed));
                encode_alert(&row, &mut body);
            }
            let insert = self.writer.insert(ALERTS_TABLE, &insert_sql, body.freeze(), messages.len(), &self.shutdown);
            let ((), inserted) = tokio::join!(produce, insert);
            if let Err(e) = inserted {
                tracing::warn!("alert transitions not recorded in {ALERTS_TABLE}: {e}");
            }
        }
    }

    async fn produce(&self, topic: &str, m: &AlertMessage) {
        let Ok(json) = serde_json::to_string(m) else { return };
        let key = m.key();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=20 {
            let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(key.as_str()).payload(json.as_str());
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    if self.shutdown.is_triggered() {
                        return;
                    }
                    tracing::warn!(topic, attempt, "alert not produced, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::error!(topic, rule = %m.rule, group = %m.group, "alert not produced, giving up");
    }
}

fn alert_row(group: &str, m: &AlertMessage, t: &Transition, seq: u64) -> AlertRow {
    let (notified_since, notified_fired_at) = match t.notified {
        Status::Inactive => (0, 0),
        Status::Pending { since } => (since, 0),
        Status::Firing { since, fired_at } => (since, fired_at),
    };
    let (ck_since, ck_fired_at) = match t.checkpoint.status {
        Status::Inactive => (0, 0),
        Status::Pending { since } => (since, 0),
        Status::Firing { since, fired_at } => (since, fired_at),
    };
    AlertRow {
        consumer_group: group.to_string(),
        rule: m.rule.clone(),
        metric: m.metric.clone(),
        group_key: m.group.clone(),
        event: m.status.clone(),
        status: t.notified.name().to_string(),
        severity: m.severity.clone(),
        fingerprint: m.fingerprint.clone(),
        labels: serde_json::to_string(&m.labels).unwrap_or_default(),
        annotations: serde_json::to_string(&m.annotations).unwrap_or_default(),
        since: t.since,
        starts_at: t.starts_at,
        ends_at: t.ends_at,
        value: t.value,
        guard_value: t.guard_value,
        notified_since,
        notified_fired_at,
        decided_end: t.decided_end,
        ck_status: t.checkpoint.status.name().to_string(),
        ck_since,
        ck_fired_at,
        ck_last_end: t.checkpoint.last_end,
        ck_last_hold: t.checkpoint.last_hold,
        ck_changed_at: t.checkpoint.changed_at,
        ck_value: t.checkpoint.value,
        ck_guard_value: t.checkpoint.guard_value,
        row_emitted_at: t.row_emitted_at,
        recorded_at: m.decided_at,
        seq,
    }
}
