//! Freshness: how long from an event's acknowledgement by ingest to the first
//! revision on the aggregated topic that counts it. Probe rides, one every
//! 100 ms in a city of their own, are sent through ingest; a reader of the
//! aggregated topic maps each revision of the probe city's windows (its
//! `total_events`) back to the newest probe it includes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_kafka::KafkaConfig;
use pulse_ops::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub const PROBE_CITY: &str = "Probe";

pub struct Freshness {
    latencies: Arc<Mutex<Vec<f64>>>,
    probe: tokio::task::JoinHandle<anyhow::Result<()>>,
    reader: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// The figures of a run.
pub struct FreshnessReport {
    pub probes: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl fmt::Display for FreshnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "freshness (ingest acknowledgement -> revision on the aggregated topic): {} probes, p50 {:.3} s, p99 {:.3} s, max {:.3} s",
            self.probes, self.p50, self.p99, self.max
        )
    }
}

impl Freshness {
    /// Starts the probes (through the ingest at `ingest_url`) and the reader of `topic`; both stop with `shutdown`.
    pub fn start(rt: &tokio::runtime::Runtime, ingest_url: &str, kafka: &KafkaConfig, topic: &str, shutdown: &Shutdown) -> Freshness {
        let sent: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
        let probe = {
            let (url, shutdown, sent) = (ingest_url.to_string(), shutdown.clone(), Arc::clone(&sent));
            rt.spawn(async move {
                let client = pulse_client::Client::new(&url, None, None)?;
                client.wait_until_ready(Duration::from_secs(30)).await?;
                let mut n = 0u64;
                while !shutdown.is_triggered() {
                    n += 1;
                    let t = pulse_model::now_ms();
                    let json = format!(
                        "{{\"event_type\":\"requested\",\"ride_id\":\"probe-{n}\",\"city\":\"{PROBE_CITY}\",\"estimated_fare\":1,\"user_id\":\"probe\",\"timestamp\":{t}}}"
                    );
                    if client.track_json("rides", json).await.is_ok()
                        && let Ok(mut s) = sent.lock()
                    {
                        s.push((t, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(())
            })
        };
        let reader = {
            let (kafka, topic, shutdown, latencies) = (kafka.clone(), topic.to_string(), shutdown.clone(), Arc::clone(&latencies));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let consumer: BaseConsumer = kafka.consumer("pulse-freshness-reader").create()?;
                let mut tpl = TopicPartitionList::new();
                for p in 0..pulse_kafka::topics::AGGREGATED_PARTITIONS {
                    tpl.add_partition_offset(&topic, p, Offset::End)?;
                }
                consumer.assign(&tpl)?;
                let mut seen: HashMap<i64, u64> = HashMap::new();
                // Each probe is timed once, by the first revision of any window that counts it.
                let mut timed: HashSet<usize> = HashSet::new();
                while !shutdown.is_triggered() {
                    let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else { continue };
                    let received = Instant::now();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(msg.payload().unwrap_or_default()) else { continue };
                    if v["metric"] != "city_metrics" || v["city"] != PROBE_CITY {
                        continue;
                    }
                    let (ws, we, n) = (v["window_start"].as_i64().unwrap_or(0), v["window_end"].as_i64().unwrap_or(0), v["total_events"].as_u64().unwrap_or(0));
                    let old = seen.get(&ws).copied().unwrap_or(0);
                    if old >= n {
                        continue;
                    }
                    seen.insert(ws, n);
                    let (Ok(s), Ok(mut l)) = (sent.lock(), latencies.lock()) else { continue };
                    // The window's probes old+1..=n are newly counted (probes are sent, and
                    // kept, in time order); each is timed by its first counting revision.
                    let first = s.partition_point(|(t, _)| *t < ws);
                    for probe in first + old as usize..first + n as usize {
                        if let Some((t, acked)) = s.get(probe)
                            && *t < we
                            && timed.insert(probe)
                        {
                            l.push(received.duration_since(*acked).as_secs_f64());
                        }
                    }
                }
                Ok(())
            })
        };
        Freshness { latencies, probe, reader }
    }

    pub fn quantile(&self, q: f64) -> f64 {
        self.latencies.lock().map(|l| quantile(&l, q)).unwrap_or(f64::NAN)
    }

    /// Waits for the probe and the reader (after shutdown) and reports.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> FreshnessReport {
        let _ = rt.block_on(self.probe);
        let _ = self.reader.join();
        let l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        FreshnessReport { probes: l.len(), p50: quantile(&l, 0.5), p99: quantile(&l, 0.99), max: l.iter().copied().fold(0.0, f64::max) }
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64) as usize).min(v.len() - 1)]
}
