//! Round trips through the `clickhouse` crate against the local ClickHouse:
//! modern types and engines, the spec-derived raw tables, and migrations.

use std::path::Path;

use bytes::BytesMut;
use pulse_clickhouse::schema::{Provenance, raw_table};
use pulse_clickhouse::{MigrateError, Writer, WriterMetrics, migrate};
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
use pulse_model::{Decoder, Spec};
use pulse_ops::Shutdown;
use pulse_testkit::stack_clickhouse;
use serde::Deserialize;

fn spec() -> Spec {
    Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Debug, Deserialize, clickhouse::Row, PartialEq)]
struct Typed {
    id: String,
    city: String,
    ts: i64,
    fare: Option<f64>,
    version: u64,
    is_deleted: u8,
}

#[tokio::test]
async fn modern_types_and_engines() {
    let Some(cfg) = stack_clickhouse("pulse_types") else { return };
    let server = cfg.server_client();
    server.query(&format!("CREATE DATABASE {}", cfg.database)).execute().await.expect("create database");
    let client = cfg.client();
    client
        .query(
            "CREATE TABLE t (id String, city LowCardinality(String), ts DateTime64(3, 'UTC'), fare Nullable(Float64), \
             version UInt64, is_deleted UInt8) ENGINE = ReplacingMergeTree(version, is_deleted) \
             PARTITION BY toYYYYMMDD(ts) ORDER BY id TTL toDateTime(ts) + INTERVAL 3650 DAY",
        )
        .execute()
        .await
        .expect("create table");
    let rows = [
        ("a", "Berlin", 1_795_478_400_123i64, Some(12.5), 1u64, 0u8),
        ("a", "Berlin", 1_795_478_400_123, Some(14.0), 2, 0), // a newer version of a
        ("b", "Paris", 1_795_478_460_000, None, 1, 0),
        ("c", "Lima", 1_795_478_470_000, Some(3.0), 1, 0),
        ("c", "Lima", 1_795_478_470_000, Some(3.0), 2, 1), // c deleted
    ];
    let mut body = BytesMut::new();
    for (id, city, ts, fare, version, deleted) in rows {
        for s in [id, city] {
            body.extend_from_slice(&[s.len() as u8]);
            body.extend_from_slice(s.as_bytes());
        }
        body.extend_from_slice(&ts.to_le_bytes());
        match fare {
            Some(f) => {
                body.extend_from_slice(&[0]);
                body.extend_from_slice(&f64::to_le_bytes(f));
            }
            None => body.extend_from_slice(&[1]),
        }
        body.extend_from_slice(&version.to_le_bytes());
        body.extend_from_slice(&[deleted]);
    }
    let writer = Writer::new(&cfg, WriterMetrics::new(&prometheus_registry()).expect("metrics"));
    writer.insert("t", &format!("INSERT INTO {}.t FORMAT RowBinary", cfg.database), body.freeze(), rows.len(), &Shutdown::new()).await.expect("insert");

    // (ClickHouse may already collapse versions inside one inserted block: optimize_on_insert.)
    let latest: Vec<Typed> = client
        .query("SELECT id, city, toUnixTimestamp64Milli(ts) AS ts, fare, version, is_deleted FROM t FINAL ORDER BY id")
        .fetch_all()
        .await
        .expect("select final");
    assert_eq!(
        latest,
        [
            Typed { id: "a".into(), city: "Berlin".into(), ts: 1_795_478_400_123, fare: Some(14.0), version: 2, is_deleted: 0 },
            Typed { id: "b".into(), city: "Paris".into(), ts: 1_795_478_460_000, fare: None, version: 1, is_deleted: 0 },
        ]
    );
    let buckets: Vec<(i64, u64)> = client
        .query("SELECT toInt64(toUnixTimestamp(toStartOfInterval(ts, INTERVAL 1 MINUTE))) * 1000 AS b, count() FROM t FINAL GROUP BY b ORDER BY b")
        .fetch_all()
        .await
        .expect("toStartOfInterval");
    assert_eq!(buckets, [(1_795_478_400_000, 1), (1_795_478_460_000, 1)]);
    let city: String = client.query_raw("SELECT city FROM t WHERE id = {id:String} LIMIT 1").param("id", "b").fetch_one().await.expect("server-side parameter");
    assert_eq!(city, "Paris");
    server.query(&format!("DROP DATABASE {}", cfg.database)).execute().await.expect("drop");
}

fn prometheus_registry() -> pulse_ops::prometheus::Registry {
    pulse_ops::prometheus::Registry::new()
}

#[tokio::test]
async fn raw_tables_round_trip_every_domain() {
    let Some(cfg) = stack_clickhouse("pulse_raw") else { return };
    let spec = spec();
    let report = migrate(&cfg, &spec).await.expect("migrate");
    assert!(report.applied.len() >= 8, "{report:?}");
    let writer = Writer::new(&cfg, WriterMetrics::new(&prometheus_registry()).expect("metrics"));
    let mut expected_rows = std::collections::HashMap::new();
    for (gd, name) in [(GenDomain::Rides, "rides"), (GenDomain::DriverLocations, "driver_locations"), (GenDomain::AppEvents, "app_events")] {
        let domain = spec.domain(name).expect("domain");
        let decoder = Decoder::new(domain);
        let table = raw_table(domain);
        let mut body = BytesMut::new();
        let mut n = 0;
        for (offset, op) in Generator::new(GenConfig { update_fraction: 0.0, delete_fraction: 0.0, ..GenConfig::default() }).only(gd).take(3000).enumerate() {
            let GenOp::Insert { json, .. } = op else { continue };
            let ev = decoder.decode(json.as_bytes()).expect("valid");
            let at = Provenance { topic: &domain.topic, partition: 0, offset: offset as i64, timestamp_ms: ev.time };
            table.encode(&ev, &at, &mut body);
            n += 1;
        }
        // Insert the batch twice, as a replay after a crash would: FINAL collapses it.
        for _ in 0..2 {
            writer.insert(name, &table.table.insert_sql(&cfg.database), body.clone().freeze(), n, &Shutdown::new()).await.expect("insert");
        }
        expected_rows.insert(name, n as u64);
    }
    let client = cfg.client();
    for (name, n) in expected_rows {
        let raw: u64 = client.query(&format!("SELECT count() FROM `{name}`")).fetch_one().await.expect("count");
        let distinct: u64 = client.query(&format!("SELECT count() FROM `{name}` FINAL")).fetch_one().await.expect("count final");
        assert_eq!((raw, distinct), (2 * n, n), "{name}");
    }
    // Typed values survive: a ride's fields read back as sent.
    let ride: (String, String, String, f64, i64) = client
        .query("SELECT event_type, ride_id, city, estimated_fare, toUnixTimestamp64Milli(timestamp) FROM rides FINAL ORDER BY kafka_offset LIMIT 1")
        .fetch_one()
        .await
        .expect("first ride");
    let first = Generator::new(GenConfig::default()).only(GenDomain::Rides).next().expect("a ride");
    let GenOp::Insert { json, .. } = first else { panic!("insert expected") };
    let sent: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(ride.0, sent["event_type"].as_str().expect("type"));
    assert_eq!(ride.1, sent["ride_id"].as_str().expect("ride_id"));
    assert_eq!(ride.2, sent["city"].as_str().expect("city"));
    assert_eq!(ride.3, sent["estimated_fare"].as_f64().expect("fare"));
    assert_eq!(ride.4, sent["timestamp"].as_i64().expect("timestamp"));
    cfg.server_client().query(&format!("DROP DATABASE {}", cfg.database)).execute().await.expect("drop");
}

#[tokio::test]
async fn migrations_are_idempotent_additive_and_refuse_destruction() {
    let Some(cfg) = stack_clickhouse("pulse_migrate") else { return };
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).expect("spec");
    let spec = spec();
    let first = migrate(&cfg, &spec).await.expect("first migrate");
    assert!(!first.applied.is_empty());
    let second = migrate(&cfg, &spec).await.expect("second migrate");
    assert!(second.applied.is_empty(), "nothing to do the second time: {second:?}");

    // Additive: a new optional field and a new metric.
    let grown = base.replace(
        "{ name = \"driver_id\", type = \"string\", optional = true },",
        "{ name = \"driver_id\", type = \"string\", optional = true },\n  { name = \"promo\", type = \"string\", optional = true },",
    ) + "\n[[metric]]\nname = \"promo_usage\"\ndomain = \"rides\"\ngroup_by = [\"city\"]\nwindow = \"1h\"\naggregates = [{ name = \"n\", fn = \"count\", filter = { field = \"promo\", non_empty = true } }]\n";
    let grown = Spec::parse(Path::new("grown.toml"), &grown).expect("grown spec");
    let third = migrate(&cfg, &grown).await.expect("additive migrate");
    assert!(third.applied.iter().any(|s| s.contains("ADD COLUMN IF NOT EXISTS `promo` Nullable(String) AFTER `driver_id`")), "{third:?}");
    assert!(third.applied.iter().any(|s| s.contains("CREATE TABLE IF NOT EXISTS") && s.contains("`promo_usage`")), "{third:?}");
    let recorded: u64 = cfg.client().query("SELECT count() FROM pulse_migrations").fetch_one().await.expect("recorded");
    assert_eq!(recorded as usize, first.applied.len() + third.applied.len());

    // An index the spec's tables have and an existing table lacks is added and built.
    cfg.client().query("ALTER TABLE app_events DROP INDEX idx_timestamp").execute().await.expect("drop the index");
    let indexed = migrate(&cfg, &grown).await.expect("index migrate");
    assert!(indexed.applied.iter().any(|s| s.contains("ADD INDEX IF NOT EXISTS `idx_timestamp`")), "{indexed:?}");
    assert!(migrate(&cfg, &grown).await.expect("again").applied.is_empty());

    // A changed retention changes the metric table's TTL in place; then nothing to do.
    let mut kept_longer = grown.clone();
    kept_longer.metrics[0].retention = pulse_model::Millis(90 * 86_400_000);
    let retained = migrate(&cfg, &kept_longer).await.expect("retention migrate");
    let name = &kept_longer.metrics[0].name;
    assert!(retained.applied.iter().any(|s| s.contains("MODIFY TTL") && s.contains(&format!("`{name}`")) && s.contains("90 DAY")), "{retained:?}");
    assert_eq!(retained.applied.len(), 1, "{retained:?}");
    let engine: String = cfg
        .client()
        .query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = ?")
        .bind(name.as_str())
        .fetch_one()
        .await
        .expect("engine");
    assert!(engine.contains("toIntervalDay(90)"), "{engine}");
    assert!(migrate(&cfg, &kept_longer).await.expect("again").applied.is_empty());

    // Destructive: the base spec no longer has `promo`; refused, nothing applied.
    let shrunk = base.replace("{ name = \"estimated_fare\", type = \"float\", min = 0, max = 1000000 },", "{ name = \"estimated_fare\", type = \"int\" },");
    let shrunk = Spec::parse(Path::new("shrunk.toml"), &shrunk).expect("shrunk spec");
    match migrate(&cfg, &shrunk).await {
        Err(MigrateError::Destructive(reasons)) => {
            let all = reasons.join("\n");
            assert!(all.contains("`promo` is no longer in the spec"), "{all}");
            assert!(all.contains("`estimated_fare` is Float64 in ClickHouse but Int64"), "{all}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    cfg.server_client().query(&format!("DROP DATABASE {}", cfg.database)).execute().await.expect("drop");
}
