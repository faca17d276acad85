//! Live window revisions for the SSE endpoints: one Kafka consumer task reads
//! the aggregated topic from its end (assigned partitions, no consumer group
//! commits) and fans every row out over a broadcast channel. Subscribers filter
//! by metric and group values; a subscriber that falls behind skips rows rather
//! than slowing the consumer down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pulse_model::Spec;
use pulse_ops::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::catalog::{Catalog, MetricView};
use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::metrics::ApiMetrics;
use crate::params::rfc3339;

/// One metric row as it goes out on the SSE streams.
#[derive(Debug)]
pub struct StreamRow {
    pub metric: String,
    /// The row's group values by field name.
    pub group: Map<String, Value>,
    /// The row as JSON: the shape of `GET /v1/metrics/{metric}` rows plus `metric`.
    pub data: String,
}

impl StreamRow {
    /// Whether every (field, value) filter matches this row's group values.
    pub fn matches(&self, filters: &[(String, String)]) -> bool {
        filters.iter().all(|(name, want)| match self.group.get(name) {
            Some(Value::String(s)) => s == want,
            Some(Value::Number(n)) => n.to_string() == *want,
            Some(Value::Bool(b)) => (if *b { "true" } else { "false" }) == want,
            _ => false,
        })
    }
}

#[derive(Clone)]
pub struct StreamHub {
    tx: broadcast::Sender<Arc<StreamRow>>,
    assigned: Arc<AtomicBool>,
    pub keep_alive: Duration,
}

impl StreamHub {
    /// Starts the consumer task (it keeps retrying until the topic exists).
    pub fn start(spec: Arc<Spec>, catalog: &Catalog, cfg: &StreamConfig, metrics: ApiMetrics, shutdown: Shutdown) -> Result<StreamHub, ApiError> {
        let (tx, _) = broadcast::channel(cfg.buffer.max(16));
        let mut client = cfg.kafka.consumer(&format!("pulse-api-stream-{}", std::process::id()));
        client.set("enable.auto.commit", "false");
        client.set("auto.offset.reset", "latest");
        let consumer: StreamConsumer = client.create().map_err(|e| {
            tracing::error!("cannot create the stream consumer: {e}");
            ApiError::Unavailable { message: "Kafka consumer unavailable".into(), retry_after: 5 }
        })?;
        let hub = StreamHub { tx, assigned: Arc::new(AtomicBool::new(false)), keep_alive: cfg.keep_alive };
        let task = Task {
            consumer: Arc::new(consumer),
            topic: spec.pipeline.aggregated_topic.clone(),
            views: catalog.metrics.clone(),
            tx: hub.tx.clone(),
            assigned: Arc::clone(&hub.assigned),
            metrics,
            shutdown,
        };
        tokio::spawn(task.run());
        Ok(hub)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamRow>> {
        self.tx.subscribe()
    }

    /// Whether the consumer has its partitions (positioned at their ends).
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }
}

struct Task {
    consumer: Arc<StreamConsumer>,
    topic: String,
    views: Vec<MetricView>,
    tx: broadcast::Sender<Arc<StreamRow>>,
    assigned: Arc<AtomicBool>,
    metrics: ApiMetrics,
    shutdown: Shutdown,
}

impl Task {
    async fn run(self) {
        if !self.assign().await {
            return;
        }
        tracing::info!(topic = %self.topic, "stream: reading live metric rows");
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        self.metrics.sse_rows.inc();
                        if let Some(row) = m.payload().and_then(|p| convert(&self.views, p)) {
                            // No subscribers is fine: the row is simply not needed.
                            let _ = self.tx.send(Arc::new(row));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, "stream consumer: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = self.shutdown.wait() => break,
                        }
                    }
                }
            }
        }
    }

    /// Assigns every partition of the topic at its current end; retries until
    /// the topic exists. False when shutdown came first.
    async fn assign(&self) -> bool {
        let mut warned = false;
        while !self.shutdown.is_triggered() {
            let (consumer, topic) = (Arc::clone(&self.consumer), self.topic.clone());
            let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, String> {
                let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).map_err(|e| e.to_string())?;
                let t = md.topics().iter().find(|t| t.name() == topic).ok_or("topic not in metadata")?;
                if t.partitions().is_empty() {
                    return Err("topic has no partitions (not created yet?)".into());
                }
                let mut ends = Vec::new();
                for p in t.partitions() {
                    let (_, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(5)).map_err(|e| e.to_string())?;
                    ends.push((p.id(), high));
                }
                Ok(ends)
            })
            .await;
            match ends {
                Ok(Ok(ends)) => {
                    let mut tpl = TopicPartitionList::new();
                    let mut ok = true;
                    for (p, high) in &ends {
                        ok &= tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*high)).is_ok();
                    }
                    if ok && self.consumer.assign(&tpl).is_ok() {
                        self.assigned.store(true, Ordering::Relaxed);
                        return true;
                    }
                }
                Ok(Err(e)) if !warned => {
                    tracing::warn!(topic = %self.topic, "stream: waiting for the aggregated topic: {e}");
                    warned = true;
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shutdown.wait() => {}
            }
        }
        false
    }
}

/// A row of the aggregated topic (flat JSON with epoch-ms times) in the API's shape.
pub fn convert(views: &[MetricView], payload: &[u8]) -> Option<StreamRow> {
    let Value::Object(mut obj) = serde_json::from_slice::<Value>(payload).ok()? else {
        return None;
    };
    let metric = obj.get("metric")?.as_str()?.to_string();
    let view = views.iter().find(|v| v.name == metric)?;
    for t in view.time_cols {
        if let Some(v) = obj.get_mut(t)
            && let Some(ms) = v.as_i64()
        {
            *v = rfc3339(ms).map_or(Value::Null, Value::String);
        }
    }
    let group = view.groups.iter().map(|g| (g.name.clone(), obj.get(&g.name).cloned().unwrap_or(Value::Null))).collect();
    let data = serde_json::to_string(&obj).ok()?;
    Some(StreamRow { metric, group, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn converts_and_filters_rows() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let catalog = Catalog::new(&spec, "pulse");
        let payload = br#"{"metric":"city_metrics","city":"Lima","window_start":1795478400000,"window_end":1795478700000,"requests":3,"final":false,"revision":2,"emitted_at":1795478400123}"#;
        let row = convert(&catalog.metrics, payload).expect("row");
        assert_eq!(row.metric, "city_metrics");
        let v: Value = serde_json::from_str(&row.data).expect("json");
        assert_eq!(v["window_start"], "2026-11-24T00:00:00.000Z");
        assert_eq!(v["emitted_at"], "2026-11-24T00:00:00.123Z");
        assert_eq!(v["requests"], 3);
        assert!(row.matches(&[("city".into(), "Lima".into())]));
        assert!(!row.matches(&[("city".into(), "Paris".into())]));
        assert!(row.matches(&[]));
        assert!(convert(&catalog.metrics, br#"{"metric":"nope"}"#).is_none());
        assert!(convert(&catalog.metrics, b"not json").is_none());
    }
}
