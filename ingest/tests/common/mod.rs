//! Shared helpers of the ingest integration tests: a spec with unique topic
//! names, an ingest server on a real socket, raw HTTP requests, and reading a
//! topic back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pulse_ingest::{Ingest, IngestConfig};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::{Readiness, ServiceContext, Shutdown};
use pulse_testkit::unique_name;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;

/// The default spec with every topic renamed to a name unique to this call.
pub fn unique_spec() -> Arc<Spec> {
    pulse_testkit::unique_spec()
}

pub struct Server {
    pub url: String,
    pub ingest: Ingest,
    pub shutdown: Shutdown,
    pub spec: Arc<Spec>,
    pub ready: Readiness,
    task: tokio::task::JoinHandle<Result<(), pulse_ingest::IngestError>>,
}

impl Server {
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
        Server { url, ingest, shutdown, spec, ready, task }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    pub fn topic(&self, domain: &str) -> String {
        self.spec.domain(domain).expect("domain").topic.clone()
    }
}

/// Test settings: the defaults with quick readiness checks.
pub fn test_config() -> IngestConfig {
    IngestConfig { ready_interval: Duration::from_millis(200), ..IngestConfig::default() }
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn ids(&self) -> Vec<String> {
        self.json()["ids"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }
}

/// Plain HTTP requests with any method, content type and body.
#[derive(Clone)]
pub struct Http {
    client: HyperClient<HttpConnector, Full<Bytes>>,
    pub base: String,
    pub key: Option<String>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http { client: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()), base: base.to_string(), key: None }
    }

    pub fn with_key(mut self, key: &str) -> Http {
        self.key = Some(key.to_string());
        self
    }

    pub async fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: impl Into<Bytes>) -> Answer {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(k) = &self.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let resp = self.client.request(req).await.expect("answer");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer { status, headers, body }
    }

    pub async fn post_json(&self, domain: &str, body: impl Into<Bytes>) -> Answer {
        self.send("POST", &format!("/v1/events/{domain}"), Some("application/json"), body).await
    }

    pub async fn post_ndjson(&self, domain: &str, body: impl Into<Bytes>) -> Answer {
        self.send("POST", &format!("/v1/events/{domain}"), Some("application/x-ndjson"), body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, Bytes::new()).await
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: serde_json::Value,
}

/// Reads every record of `topic` present now (up to the high watermarks).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Rec> {
    let cfg = KafkaConfig { brokers: brokers.to_string(), properties: Vec::new() };
    let consumer: BaseConsumer = cfg.consumer(&unique_name("verify")).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in 0..partitions {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo)).expect("offset");
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read up to the high watermarks, then on until nothing more arrives for a while
    // (a broker's watermark may trail what it acknowledged).
    let mut idle_since: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "reading {topic} timed out; partitions left: {ends:?}");
        let Some(msg) = consumer.poll(Duration::from_millis(50)) else {
            if ends.is_empty() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
            continue;
        };
        idle_since = None;
        let msg = msg.expect("message");
        let value = serde_json::from_slice(msg.payload().unwrap_or_default()).expect("JSON record");
        out.push(Rec { partition: msg.partition(), offset: msg.offset(), key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()), value });
        if ends.get(&msg.partition()).is_some_and(|&hi| msg.offset() + 1 >= hi) {
            ends.remove(&msg.partition());
        }
    }
    out
}

/// Number of records in `topic` (sum of high - low watermarks).
pub fn count_topic(brokers: &str, topic: &str) -> i64 {
    let cfg = KafkaConfig { brokers: brokers.to_string(), properties: Vec::new() };
    let consumer: BaseConsumer = cfg.consumer(&unique_name("count")).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    (0..partitions)
        .map(|p| {
            let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            hi - lo
        })
        .sum()
}

/// librdkafka's default partitioner (`consistent_random`): CRC32 of the key modulo the partitions.
pub fn expected_partition(key: &str, partitions: i32) -> i32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in key.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    ((!crc) % partitions as u32) as i32
}

/// Now, as producers write it: event times must be near ingest's clock.
pub fn now_rfc3339() -> String {
    pulse_model::decode::format_rfc3339_ms(pulse_model::now_ms())
}

pub fn ride(ride_id: &str, event_type: &str) -> String {
    format!(
        r#"{{"event_type":"{event_type}","ride_id":"{ride_id}","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","timestamp":"{ts}"}}"#,
        ts = now_rfc3339()
    )
}

pub fn driver(driver_id: &str) -> String {
    format!(r#"{{"driver_id":"{driver_id}","city":"Paris","lat":48.85,"lng":2.35,"status":"available","timestamp":{ts}}}"#, ts = pulse_model::now_ms())
}

pub fn app_event(id: Option<&str>, name: &str) -> String {
    let id = id.map(|i| format!(r#""event_id":"{i}","#)).unwrap_or_default();
    format!(r#"{{{id}"session_id":"s-1","event_name":"{name}","latency_ms":42.5,"timestamp":"{ts}"}}"#, ts = now_rfc3339())
}
