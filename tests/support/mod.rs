//! The whole pipeline in one test process (the test kit's embedded pipeline):
//! librdkafka's mock cluster as Kafka, the local stack's ClickHouse, sink and
//! dataflow. Tests produce generated events and read the results.
#![allow(dead_code)]

pub mod procs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::GenOp;
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::Registry;
use pulse_sink::service::SinkConfig;
use pulse_testkit::{PipelineConfig, stack_clickhouse, unique_spec};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct Pipeline {
    pub rt: tokio::runtime::Runtime,
    pub kafka: KafkaConfig,
    pub ch: ClickHouseConfig,
    pub spec: Arc<Spec>,
    pub shutdown: Shutdown,
    services: Option<pulse_testkit::Pipeline>,
    version: u64,
}

impl Pipeline {
    /// Starts sink and dataflow over a fresh spec (unique topics) and database;
    /// `None` when the local stack is not part of this test run.
    pub fn start(prefix: &str) -> Option<Pipeline> {
        let ch = stack_clickhouse(prefix)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let spec = unique_spec();
        rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
        let shutdown = Shutdown::new();
        let dataflow = DataflowConfig {
            cluster: Cluster::Process { workers: 2 },
            emit_interval: Some(Duration::from_millis(100)),
            idle_timeout: Some(Duration::from_secs(1)),
            stats_interval: Duration::from_secs(1),
            ..DataflowConfig::default()
        };
        let cfg = PipelineConfig {
            sink: Some(SinkConfig { batch_delay: Duration::from_millis(200), stats_interval: Duration::from_secs(1), ..SinkConfig::default() }),
            dataflow: Some((dataflow, Registry::new())),
            ..PipelineConfig::default()
        };
        let services = pulse_testkit::Pipeline::start(rt.handle(), &spec, &ch, cfg, shutdown.clone()).expect("pipeline");
        let kafka = services.kafka.clone();
        Some(Pipeline { rt, kafka, ch, spec, shutdown, services: Some(services), version: 0 })
    }

    /// Produces generated writes straight to Kafka, as producers without ingest would
    /// (app-event writes carry a version, as ingest would add).
    pub fn produce(&mut self, ops: impl IntoIterator<Item = GenOp>) -> usize {
        let producer: FutureProducer = self.kafka.reliable_producer().create().expect("producer");
        let mut records = Vec::new();
        for op in ops {
            self.version += 1;
            let v = self.version;
            let (key, json) = op.kafka_record(v);
            let topic = self.spec.domain(op.domain().name()).expect("domain").topic.clone();
            records.push((topic, key, json));
        }
        let n = records.len();
        self.rt.block_on(async {
            for chunk in records.chunks(5_000) {
                let sends: Vec<_> =
                    chunk.iter().map(|(topic, key, json)| producer.send(FutureRecord::to(topic).key(key).payload(json), Duration::from_secs(10))).collect();
                for r in futures::future::join_all(sends).await {
                    r.map_err(|(e, _)| e).expect("acknowledged");
                }
            }
        });
        n
    }

    /// Runs a query returning one number.
    pub fn scalar(&self, sql: &str) -> f64 {
        self.rt.block_on(async { self.ch.client().query(sql).fetch_one::<f64>().await }).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Rows of a query as JSON objects.
    pub fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        self.rt.block_on(pulse_testkit::json_rows(&self.ch, sql, &[]))
    }

    /// Waits until `check` holds (panics with `what` after `timeout`).
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Pipeline) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn stop(mut self) {
        if let Some(services) = self.services.take() {
            services.stop().expect("the pipeline stops cleanly");
        }
        let db = self.ch.database.clone();
        let _ = self.rt.block_on(self.ch.server_client().query(&format!("DROP DATABASE IF EXISTS `{db}`")).execute());
    }
}

#[allow(unused_imports)]
pub use pulse_model::now_ms;
