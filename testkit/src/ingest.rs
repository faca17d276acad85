//! The write API in a test: an ingest server on a real socket in this
//! process, and the requests its tests send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_ingest::{Ingest, IngestConfig, IngestError};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::{Readiness, ServiceContext, Shutdown};
use tokio::net::TcpListener;

use crate::http::{Answer, Http};

/// Ingest on 127.0.0.1 (any free port), writing to `kafka`.
pub struct Server {
    /// `http://addr`
    pub url: String,
    pub ingest: Ingest,
    pub shutdown: Shutdown,
    pub spec: Arc<Spec>,
    pub kafka: KafkaConfig,
    pub ready: Readiness,
    task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

impl Server {
    /// Starts it on the current runtime and waits until it is ready.
    pub async fn start(brokers: &str, spec: Arc<Spec>, cfg: IngestConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let ready = Readiness::default();
        let kafka = KafkaConfig { brokers: brokers.to_string(), properties: Vec::new() };
        let shutdown = Shutdown::new();
        let ctx = ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone()).with_ready(ready.clone());
        let ingest = Ingest::new(spec.clone(), &kafka, cfg, ctx).expect("ingest");
        let task = tokio::spawn(pulse_ingest::serve(ingest.clone(), listener));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.get() {
            assert!(Instant::now() < deadline, "ingest did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server { url, ingest, shutdown, spec, kafka, ready, task }
    }

    /// Triggers the shutdown and waits (up to 30 s) for the server to drain.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    /// The topic of `domain`.
    pub fn topic(&self, domain: &str) -> String {
        self.spec.domain(domain).expect("domain").topic.clone()
    }
}

/// Test settings: the defaults with quick readiness checks.
pub fn test_config() -> IngestConfig {
    IngestConfig { ready_interval: Duration::from_millis(200), ..IngestConfig::default() }
}

impl Http {
    /// POSTs JSON (one event or an array) to `/v1/events/{domain}`.
    pub async fn post_json(&self, domain: &str, body: impl Into<Bytes>) -> Answer {
        self.send("POST", &format!("/v1/events/{domain}"), Some("application/json"), body).await
    }

    /// POSTs NDJSON (one event a line) to `/v1/events/{domain}`.
    pub async fn post_ndjson(&self, domain: &str, body: impl Into<Bytes>) -> Answer {
        self.send("POST", &format!("/v1/events/{domain}"), Some("application/x-ndjson"), body).await
    }
}

impl Answer {
    /// The event ids of an accepted write (its `ids`).
    pub fn ids(&self) -> Vec<String> {
        self.json["ids"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }
}
