//! The write API over real sockets against librdkafka's mock cluster: accepted
//! events are on the right topic and partition with their key and version;
//! invalid batches produce nothing; auth and the 4xx answers behave.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{app_event, driver, expected_partition, ride};
use pulse_ingest::{ApiKeys, IngestConfig};
use pulse_testkit::ingest::{Server, test_config};
use pulse_testkit::{Http, count_topic, read_topic, unique_spec};
use rdkafka::mocking::MockCluster;

fn mock_with_topics(spec: &pulse_model::Spec) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(spec)).expect("topics");
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_land_on_their_topic_partition_with_key_and_version() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let server = Server::start(&brokers, spec.clone(), test_config()).await;
    let http = Http::new(&server.url);

    // One object, an array, NDJSON; three domains.
    let a = http.post_json("rides", ride("r-1", "requested")).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(a.json["accepted"], 1);
    let rides: Vec<String> = (0..50).map(|i| ride(&format!("r-{}", i % 17), if i % 5 == 4 { "cancelled" } else { "accepted" })).collect();
    let b = http.post_json("rides", format!("[{}]", rides.join(",\n "))).await;
    assert_eq!((b.status, b.json["accepted"].as_u64()), (202, Some(50)), "{:?}", b.body);
    let drivers: Vec<String> = (0..40).map(|i| driver(&format!("d-{i}"))).collect();
    let c = http.post_ndjson("driver_locations", drivers.join("\n") + "\n").await;
    assert_eq!((c.status, c.json["accepted"].as_u64()), (202, Some(40)), "{:?}", c.body);
    let d = http.post_ndjson("app_events", format!("{}\n{}\n", app_event(Some("app-1"), "login"), app_event(None, "search"))).await;
    assert_eq!(d.status, 202, "{:?}", d.body);
    let app_ids = d.ids();
    assert_eq!(app_ids[0], "app-1");
    assert_eq!(app_ids[1].len(), 36, "assigned UUID v7");
    // Replace and delete app-1.
    let put = http.send("PUT", "/v1/events/app_events/app-1", Some("application/json"), app_event(None, "logout")).await;
    assert_eq!((put.status, put.ids()), (202, vec!["app-1".to_string()]), "{:?}", put.body);
    let del = http.send("DELETE", "/v1/events/app_events/app-1", None, "").await;
    assert_eq!((del.status, del.ids()), (202, vec!["app-1".to_string()]), "{:?}", del.body);

    let mut accepted: HashSet<String> = HashSet::new();
    for answer in [&a, &b, &c] {
        accepted.extend(answer.ids());
    }
    assert_eq!(accepted.len(), 91, "every event got its own id");

    // Every accepted id is on its domain's topic exactly once, on the partition of its key.
    for (domain, key_field, want) in [("rides", "ride_id", 51), ("driver_locations", "driver_id", 40)] {
        let topic = server.topic(domain);
        let partitions = spec.domain(domain).expect("domain").partitions;
        let recs = read_topic(&server.kafka, &topic);
        assert_eq!(recs.len(), want, "{domain}");
        for r in &recs {
            let id = r.value["event_id"].as_str().expect("event_id");
            assert!(accepted.remove(id), "{id} on {topic} was not answered 202, or is there twice");
            let key = r.value[key_field].as_str().expect("key field");
            assert_eq!(r.key.as_deref(), Some(key), "record keyed by {key_field}");
            assert_eq!(r.partition, expected_partition(key, partitions), "partition of key {key}");
            assert!(r.value["_version"].as_u64().is_some_and(|v| v > 1_700_000_000_000_000), "version in µs: {}", r.value);
            assert!(r.value["ingested_at"].is_string());
        }
    }
    assert!(accepted.is_empty(), "not found on Kafka: {accepted:?}");

    // app_events: insert, replace, delete of app-1 in version order on one partition.
    let recs = read_topic(&server.kafka, &server.topic("app_events"));
    assert_eq!(recs.len(), 4);
    let mut app1: Vec<_> = recs.iter().filter(|r| r.key.as_deref() == Some("app-1")).collect();
    app1.sort_by_key(|r| r.offset);
    assert_eq!(app1.len(), 3);
    let versions: Vec<u64> = app1.iter().map(|r| r.value["_version"].as_u64().expect("version")).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions grow in write order: {versions:?}");
    assert_eq!(app1[1].value["event_name"], "logout");
    assert_eq!(app1[2].value["_deleted"], true);
    assert_eq!(app1[2].value.as_object().map(|o| o.len()), Some(4), "a delete carries only id, time, version, flag: {}", app1[2].value);
    let partitions = spec.domain("app_events").expect("app_events").partitions;
    assert!(app1.iter().all(|r| r.partition == expected_partition("app-1", partitions)));
    let other = recs.iter().find(|r| r.key.as_deref() != Some("app-1")).expect("second app event");
    assert_eq!(other.key.as_deref(), Some(app_ids[1].as_str()), "app events are keyed by their (assigned) id");

    // Metrics count what happened.
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    assert!(metrics.contains(r#"pulse_ingest_events_total{domain="rides",outcome="accepted"} 51"#), "{metrics}");
    assert!(metrics.contains("pulse_ingest_request_duration_seconds_bucket"));
    assert!(metrics.contains("pulse_ingest_producer_queue_depth"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_batch_produces_nothing_and_lists_every_bad_event() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let server = Server::start(&brokers, spec.clone(), test_config()).await;
    let http = Http::new(&server.url);

    let good = ride("r-1", "requested");
    let body = format!(
        "[{good},{},{good},{},{}]",
        good.replace("12.5", "\"cheap\""),
        good.replace(r#""city":"Berlin","#, ""),
        good.replace("requested", "teleported")
    );
    let a = http.post_json("rides", body).await;
    assert_eq!(a.status, 400);
    let j = a.json;
    assert!(j["error"].as_str().is_some_and(|e| e.contains("3 of 5")), "{j}");
    let details: Vec<(u64, String)> = j["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| (d["index"].as_u64().expect("index"), d["field"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(details, vec![(1, "estimated_fare".into()), (3, "city".into()), (4, "event_type".into())]);
    assert!(j["details"][2]["reason"].as_str().is_some_and(|r| r.contains("teleported")), "{j}");

    // NDJSON: details carry the line.
    let a = http.post_ndjson("rides", format!("{good}\n\n{{\"ride_id\": 5}}\n")).await;
    assert_eq!(a.status, 400);
    assert_eq!((a.json["details"][0]["index"].as_u64(), a.json["details"][0]["line"].as_u64()), (Some(1), Some(3)));

    // Malformed JSON.
    for bad in ["{\"ride_id\": ", "[{}", "[1,2", "hello", ""] {
        let a = http.post_json("rides", bad).await;
        assert_eq!(a.status, 400, "{bad:?}: {:?}", a.body);
        assert!(a.json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // A POST may not smuggle a delete.
    let a = http.post_json("app_events", app_event(Some("x"), "login").replace("{", "{\"_deleted\":true,")).await;
    assert_eq!((a.status, a.json["details"][0]["field"].as_str()), (400, Some("_deleted")));
    // PUT with another id in the body.
    let a = http.send("PUT", "/v1/events/app_events/a-1", Some("application/json"), app_event(Some("a-2"), "login")).await;
    assert_eq!((a.status, a.json["details"][0]["field"].as_str()), (400, Some("event_id")));

    // Nothing of any of these reached Kafka.
    for domain in ["rides", "app_events"] {
        assert_eq!(count_topic(&server.kafka, &server.topic(domain)), 0, "{domain}");
    }
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    assert!(metrics.contains(r#"pulse_ingest_events_total{domain="rides",outcome="invalid"} 8"#), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_write_keys_and_the_openapi_document() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let keys = ApiKeys::parse("rides-only-0123456789:rides, apps-and-rides-0123456789:app_events|rides").expect("keys");
    let server = Server::start(&brokers, spec.clone(), IngestConfig { keys, ..test_config() }).await;
    let rides_only = Http::new(&server.url).with_key("rides-only-0123456789");
    let both = Http::new(&server.url).with_key("apps-and-rides-0123456789");
    assert_eq!(rides_only.post_json("rides", ride("r-1", "requested")).await.status, 202);
    // A key outside its scope: 403, whether the domain exists or not, for every method.
    let a = rides_only.post_json("app_events", app_event(Some("e-1"), "checkout")).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("domain")));
    assert_eq!(rides_only.post_json("trucks", "{}").await.status, 403);
    assert_eq!(rides_only.send("DELETE", "/v1/events/app_events/e-1", None, "").await.status, 403);
    assert_eq!(rides_only.send("PUT", "/v1/events/app_events/e-1", Some("application/json"), app_event(Some("e-1"), "checkout")).await.status, 403);
    assert_eq!(both.post_json("app_events", app_event(Some("e-1"), "checkout")).await.status, 202);
    assert_eq!(both.send("DELETE", "/v1/events/app_events/e-1", None, "").await.status, 202);
    assert_eq!(both.post_json("driver_locations", driver("d-1")).await.status, 403);
    // The OpenAPI document is open, and lists one path per domain.
    let doc = Http::new(&server.url).get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json;
    for d in ["rides", "driver_locations", "app_events"] {
        assert!(doc["paths"][format!("/v1/events/{d}")]["post"].is_object(), "{d}");
    }
    assert!(doc["paths"]["/v1/events/app_events/{id}"]["put"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_error_statuses() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let cfg = IngestConfig { keys: ApiKeys::new(["key-one", "key-two"]), max_body: 64 * 1024, max_batch: 100, ..test_config() };
    let server = Server::start(&brokers, spec.clone(), cfg).await;
    let anon = Http::new(&server.url);
    let http = Http::new(&server.url).with_key("key-two");

    // Auth: 401 without or with a wrong key; the operations endpoints stay open.
    let a = anon.post_json("rides", ride("r-1", "requested")).await;
    assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(Http::new(&server.url).with_key("key-three").post_json("rides", ride("r-1", "requested")).await.status, 401);
    assert_eq!(anon.send("DELETE", "/v1/events/app_events/x", None, "").await.status, 401);
    assert_eq!(anon.post_json("nope", "{}").await.status, 401, "no probing of domains without a key");
    assert_eq!(anon.get("/health").await.status, 200);
    assert_eq!(anon.get("/ready").await.status, 200);
    assert_eq!(http.post_json("rides", ride("r-1", "requested")).await.status, 202);
    assert_eq!(Http::new(&server.url).with_key("key-one").post_json("rides", ride("r-2", "requested")).await.status, 202);

    // 404: unknown domain, unknown path.
    let a = http.post_json("trucks", ride("r-1", "requested")).await;
    assert_eq!(a.status, 404);
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("trucks") && e.contains("rides")));
    assert_eq!(http.get("/v2/whatever").await.status, 404);

    // 405: replacing or deleting facts; wrong method on a route.
    let a = http.send("PUT", "/v1/events/rides/r-1", Some("application/json"), ride("r-1", "accepted")).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("immutable") && e.contains("app_events")), "{:?}", a.body);
    assert_eq!(http.send("DELETE", "/v1/events/driver_locations/d-1", None, "").await.status, 405);
    assert_eq!(http.get("/v1/events/rides").await.status, 405);

    // 413: body over the limit, with or without Content-Length; batch over the limit.
    let big = format!("[{}]", vec![ride("r-1", "requested"); 500].join(","));
    assert!(big.len() > 64 * 1024);
    let a = http.post_json("rides", big).await;
    assert_eq!(a.status, 413);
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("65536")));
    let many = vec![driver("d-1"); 101].join("\n");
    assert!(many.len() < 64 * 1024);
    let a = http.post_ndjson("driver_locations", many).await;
    assert_eq!(a.status, 413);
    assert!(a.json["error"].as_str().is_some_and(|e| e.contains("100 events")), "{:?}", a.body);

    // 415: wrong or missing content type.
    assert_eq!(http.send("POST", "/v1/events/rides", Some("text/plain"), ride("r-1", "requested")).await.status, 415);
    assert_eq!(http.send("POST", "/v1/events/rides", None, ride("r-1", "requested")).await.status, 415);
    assert_eq!(http.send("POST", "/v1/events/rides", Some("application/json; charset=latin1"), ride("r-1", "requested")).await.status, 415);
    assert_eq!(http.send("PUT", "/v1/events/app_events/a", Some("application/x-ndjson"), app_event(None, "x")).await.status, 415);

    // Odd input never takes the process down.
    for body in [&b"\xff\xfe\x00"[..], b"[[[[[[[[[[", b"{\"a\":\"\\ud800\"}", b"[\"\\", b"\n\n\n"] {
        let a = http.post_json("rides", body.to_vec()).await;
        assert_eq!(a.status, 400, "{body:?}");
        let a = http.post_ndjson("rides", body.to_vec()).await;
        assert!(a.status == 400 || a.status == 202, "{body:?}: {}", a.status);
    }
    assert_eq!(anon.get("/health").await.status, 200);
    assert_eq!(count_topic(&server.kafka, &server.topic("rides")), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_rate_limits_answer_429_with_retry_after() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let cfg = IngestConfig { keys: ApiKeys::new(["a", "b"]), rate_limit: Some(20.0), ..test_config() };
    let server = Server::start(&brokers, spec.clone(), cfg).await;
    let a = Http::new(&server.url).with_key("a");
    let b = Http::new(&server.url).with_key("b");
    let batch = |n: usize| (0..n).map(|i| driver(&format!("d-{i}"))).collect::<Vec<_>>().join("\n");
    assert_eq!(a.post_ndjson("driver_locations", batch(15)).await.status, 202);
    let limited = a.post_ndjson("driver_locations", batch(15)).await;
    assert_eq!(limited.status, 429);
    let wait: u64 = limited.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=2).contains(&wait), "{wait}");
    // The other key has its own bucket.
    assert_eq!(b.post_ndjson("driver_locations", batch(15)).await.status, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.post_ndjson("driver_locations", batch(15)).await.status, 202);
    assert_eq!(count_topic(&server.kafka, &server.topic("driver_locations")), 45);
    let metrics = String::from_utf8_lossy(&a.get("/metrics").await.body).into_owned();
    assert!(metrics.contains(r#"pulse_ingest_events_total{domain="driver_locations",outcome="rate_limited"} 15"#), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_distinct_ids_and_increasing_versions() {
    let spec = unique_spec();
    let mock = mock_with_topics(&spec);
    let brokers = mock.bootstrap_servers();
    let server = Server::start(&brokers, spec.clone(), test_config()).await;
    let http = Http::new(&server.url);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let http = http.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let a = http.post_json("rides", ride(&format!("r-{t}-{i}"), "requested")).await;
                    assert_eq!(a.status, 202);
                    ids.extend(a.ids());
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.extend(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 200);
    let recs = read_topic(&server.kafka, &server.topic("rides"));
    assert_eq!(recs.len(), 200);
    let versions: HashSet<u64> = recs.iter().map(|r| r.value["_version"].as_u64().expect("version")).collect();
    assert_eq!(versions.len(), 200, "versions are unique");
    server.stop().await;
}
