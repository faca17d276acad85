//! The sink against rows ClickHouse refuses, with Kafka from librdkafka's mock
//! cluster and the local ClickHouse: a batch spanning 150 days (more partitions
//! than ClickHouse takes in one insert) is stored whole, in several inserts; a row
//! violating a table constraint is dead-lettered with ClickHouse's answer while
//! every other row is stored and the sink moves on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_clickhouse::schema::{MAX_PARTITIONS_PER_INSERT, Provenance, raw_table};
use pulse_clickhouse::{Writer, WriterMetrics};
use pulse_kafka::dead_letter::{H_REASON, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, H_STAGE};
use pulse_kafka::{DeadLetter, KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::{Decoder, Spec};
use pulse_ops::ServiceContext;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::Registry;
use pulse_sink::service::batch::{Rows, SourceRecord, store};
use pulse_sink::service::{SinkConfig, SinkSummary, run};
use pulse_testkit::stack_clickhouse;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const DAY_MS: i64 = 86_400_000;

/// Midnight UTC 160 days ago: 150 days from there lie in the past, within the
/// test spec's rides retention (400 days, so `max_age` and the table's TTL keep them).
fn first_day() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    (now / DAY_MS - 160) * DAY_MS
}

/// The shipped spec (unique topics) with a rides retention of 400 days.
fn long_retention_spec() -> Arc<Spec> {
    let text = pulse_testkit::unique_spec_text().replacen("retention = \"7d\"", "retention = \"400d\"", 1);
    Arc::new(Spec::parse(std::path::Path::new("pulse.toml"), &text).unwrap_or_else(|e| panic!("{e}")))
}

fn ride(id: &str, ts: i64) -> String {
    format!(r#"{{"event_type":"requested","ride_id":"{id}","city":"Lima","estimated_fare":12.5,"user_id":"u-{id}","timestamp":{ts}}}"#)
}

fn ride_record(id: String, ts: i64) -> (String, String, i64) {
    let payload = ride(&id, ts);
    (id, payload, ts)
}

fn count(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, sql: &str) -> u64 {
    rt.block_on(ch.client().query(sql).fetch_one::<u64>()).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn wait_for_count(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, sql: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = count(rt, ch, sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got}, expected {want}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sum of a counter's values whose labels include `label`.
fn counter(registry: &Registry, name: &str, label: (&str, &str)) -> f64 {
    let mut sum = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            if m.get_label().iter().any(|l| l.name() == label.0 && l.value() == label.1) {
                sum += m.get_counter().get_value();
            }
        }
    }
    sum
}

/// Produces (key, payload, event time) records; each record's timestamp is its
/// event's time, so that the event is never too old or too far in the future for it.
fn produce(kafka: &KafkaConfig, topic: &str, records: &[(String, String, i64)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    for (key, payload, ts) in records {
        pulse_testkit::send(&producer, BaseRecord::to(topic).key(key).payload(payload).timestamp(*ts));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

struct Setup {
    rt: tokio::runtime::Runtime,
    ch: ClickHouseConfig,
    spec: Arc<Spec>,
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl Setup {
    fn new(prefix: &str) -> Option<Setup> {
        let ch = stack_clickhouse(prefix)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mock = MockCluster::new(1).expect("mock");
        let spec = long_retention_spec();
        create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
        rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
        Some(Setup { rt, ch, spec, mock })
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.mock.bootstrap_servers(), properties: Vec::new() }
    }

    fn rides_topic(&self) -> String {
        self.spec.domain("rides").expect("rides").topic.clone()
    }

    fn start_sink(&self, registry: &Registry, shutdown: &Shutdown) -> tokio::task::JoinHandle<Result<SinkSummary, pulse_sink::service::SinkError>> {
        let cfg = SinkConfig { batch_rows: 2_000, batch_delay: Duration::from_millis(300), ..SinkConfig::default() };
        let (spec, kafka, ch, registry, shutdown) = (Arc::clone(&self.spec), self.kafka(), self.ch.clone(), registry.clone(), shutdown.clone());
        self.rt
            .spawn(async move { run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown).with_registry(registry)).await })
    }

    /// Records the sink committed on the rides topic (sum of next offsets over its partitions).
    fn committed_rides(&self) -> i64 {
        let consumer: BaseConsumer = self.kafka().consumer(&SinkConfig::default().group).create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let rides = self.spec.domain("rides").expect("rides");
        for p in 0..rides.partitions {
            tpl.add_partition(&rides.topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.ch.server_client().query(&format!("DROP DATABASE IF EXISTS `{}`", self.ch.database)).execute());
    }
}

#[test]
fn rows_spanning_150_days_are_stored_in_several_inserts() {
    let Some(s) = Setup::new("pulse_sink_days") else { return };
    let day0 = first_day();

    // The flush path itself: a batch of 150 days x 3 rows, through `store`.
    let domain = s.spec.domain("rides").expect("rides");
    let table = raw_table(domain);
    let decoder = Decoder::new(domain);
    let mut rows = Rows::default();
    for i in 0..450i64 {
        let payload = ride(&format!("r-direct-{i}"), day0 + (i % 150) * DAY_MS + i);
        let ev = decoder.decode(payload.as_bytes()).expect("decodes");
        let at = Provenance { topic: &domain.topic, partition: 0, offset: i, timestamp_ms: day0 };
        let key = table.partition_key(&ev, &at);
        table.encode(&ev, &at, rows.buf());
        rows.push(key, SourceRecord { partition: 0, offset: i, key: None, payload: Some(payload.into_bytes()) });
    }
    let batch = rows.take();
    let mut days: Vec<_> = batch.rows().iter().map(|r| r.partition_key).collect();
    days.sort_unstable();
    days.dedup();
    assert_eq!(days.len(), 150);
    let writer = Writer::new(&s.ch, WriterMetrics::new(&Registry::new()).expect("metrics"));
    let sql = table.table.insert_sql(&s.ch.database);
    let stored = s.rt.block_on(store(&writer, "rides", &sql, &batch, &Shutdown::new())).expect("stored");
    assert_eq!((stored.rows, stored.refused.len()), (450, 0));
    assert_eq!(stored.inserts, 150usize.div_ceil(MAX_PARTITIONS_PER_INSERT), "grouped by partition, no insert refused");
    assert_eq!(count(&s.rt, &s.ch, "SELECT count() FROM rides"), 450);
    assert_eq!(count(&s.rt, &s.ch, "SELECT uniqExact(toYYYYMMDD(timestamp)) FROM rides"), 150);

    // The service: 3,000 rides over 150 days, batches of up to 2,000 rows.
    let records: Vec<_> = (0..3_000i64).map(|i| ride_record(format!("r-{i}"), day0 + (i * 7 % 150) * DAY_MS + i)).collect();
    produce(&s.kafka(), &s.rides_topic(), &records);
    let registry = Registry::new();
    let shutdown = Shutdown::new();
    let sink = s.start_sink(&registry, &shutdown);
    wait_for_count(&s.rt, &s.ch, "SELECT count() FROM rides FINAL WHERE ride_id NOT LIKE 'r-direct-%'", 3_000, Duration::from_secs(90));
    shutdown.trigger();
    let summary = s.rt.block_on(sink).expect("join").expect("sink");
    assert_eq!(summary, SinkSummary { stored: 3_000, dead_lettered: 0 });
    let inserts = counter(&registry, "pulse_clickhouse_batches_total", ("table", "rides"));
    assert!(inserts >= 2.0, "several inserts ({inserts})");
    assert_eq!(counter(&registry, "pulse_clickhouse_insert_retries_total", ("table", "rides")), 0.0, "nothing refused or retried");
    assert_eq!(s.committed_rides(), 3_000);
}

#[test]
fn a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_stored() {
    let Some(s) = Setup::new("pulse_sink_refused") else { return };
    // A row ClickHouse will refuse whatever happens: it violates a constraint.
    s.rt.block_on(s.ch.client().query("ALTER TABLE rides ADD CONSTRAINT no_poison CHECK ride_id != 'r-poison'").execute()).expect("constraint");
    let day0 = first_day();
    let mut records: Vec<_> = (0..1_500i64).map(|i| ride_record(format!("r-{i}"), day0 + (i % 30) * DAY_MS + i)).collect();
    let poison = ride_record("r-poison".into(), day0 + 5 * DAY_MS);
    records.insert(700, poison.clone());
    produce(&s.kafka(), &s.rides_topic(), &records);

    let registry = Registry::new();
    let shutdown = Shutdown::new();
    let sink = s.start_sink(&registry, &shutdown);
    wait_for_count(&s.rt, &s.ch, "SELECT count() FROM rides FINAL", 1_500, Duration::from_secs(90));

    // The refused row is on the dead-letter topic, with where it came from and ClickHouse's answer.
    let consumer: BaseConsumer = s.kafka().consumer("dlq-reader").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..pulse_kafka::topics::DEAD_LETTER_PARTITIONS {
        tpl.add_partition_offset(&s.spec.pipeline.dead_letter_topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_until: Option<Instant> = None;
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("headers");
            let h = |k| DeadLetter::header(headers, k);
            dead.push((
                h(H_SOURCE_TOPIC),
                h(H_SOURCE_PARTITION),
                h(H_SOURCE_OFFSET),
                h(H_STAGE),
                h(H_REASON),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ));
            // Read on for a while: there must be no other dead letter.
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
            continue;
        }
        match quiet_until {
            Some(t) if Instant::now() >= t => break,
            None => assert!(Instant::now() < deadline, "no dead letter"),
            _ => {}
        }
    }
    assert_eq!(dead.len(), 1, "exactly the refused row: {dead:?}");
    let (topic, partition, offset, stage, reason, key, payload) = dead.remove(0);
    assert_eq!(topic.as_deref(), Some(s.rides_topic().as_str()));
    assert!(partition.is_some() && offset.is_some());
    assert_eq!(stage.as_deref(), Some("sink"));
    let reason = reason.expect("reason");
    assert!(reason.contains("469") && reason.contains("VIOLATED_CONSTRAINT") && reason.contains("no_poison"), "reason: {reason}");
    assert_eq!(key.as_deref(), Some(&b"r-poison"[..]));
    assert_eq!(payload.as_deref(), Some(poison.1.as_bytes()));
    assert_eq!(count(&s.rt, &s.ch, "SELECT count() FROM rides WHERE ride_id = 'r-poison'"), 0);

    // The sink moved on: later records are stored, every offset is committed.
    let later: Vec<_> = (0..500i64).map(|i| ride_record(format!("r-later-{i}"), day0 + i)).collect();
    produce(&s.kafka(), &s.rides_topic(), &later);
    wait_for_count(&s.rt, &s.ch, "SELECT count() FROM rides FINAL", 2_000, Duration::from_secs(60));
    assert!(!sink.is_finished(), "the sink keeps running");
    shutdown.trigger();
    let summary = s.rt.block_on(sink).expect("join").expect("sink");
    assert_eq!(summary, SinkSummary { stored: 2_000, dead_lettered: 1 });
    assert_eq!(counter(&registry, "pulse_sink_events_total", ("outcome", "dead_lettered")), 1.0);
    assert_eq!(counter(&registry, "pulse_sink_events_total", ("outcome", "stored")), 2_000.0);
    assert_eq!(s.committed_rides(), 2_001);
}
