//! The read API over real HTTP. With the local stack (`PULSE_TEST_STACK=1`), data
//! is written by the real sink and dataflow (see `common::fixture`) and every
//! endpoint's answer is checked against SQL written here, independently of the
//! API's own queries (argMax by version/revision instead of FINAL). Without the
//! stack, the tests that need no data still run (503s, auth, OpenAPI, CORS).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{Server, fixture, rfc, same};
use pulse_api::ApiConfig;
use pulse_api::auth::ApiKeys;
use pulse_clickhouse::ClickHouseConfig;
use pulse_client::encode_segment as enc;
use serde_json::{Value, json};

fn num(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn fin(v: &Value) -> bool {
    v.as_bool().unwrap_or_else(|| num(v) == 1)
}

/// An API whose ClickHouse is a closed port.
fn unreachable_clickhouse() -> ClickHouseConfig {
    let port = pulse_testkit::free_port();
    ClickHouseConfig { url: format!("http://127.0.0.1:{port}"), timeout: Duration::from_secs(2), ..ClickHouseConfig::default() }
}

fn spec() -> Arc<pulse_model::Spec> {
    pulse_testkit::unique_spec()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

// ------------------------------------------------------------------ events

#[test]
fn event_by_id_matches_sql() {
    let Some(f) = fixture() else { return };
    // Rides: every spec field, compared with the raw row.
    let rides = f.sql(
        "SELECT event_id, event_type, ride_id, city, estimated_fare, user_id, driver_id, pickup_lat, pickup_lng, dropoff_lat, \
         toUnixTimestamp64Milli(timestamp) AS ts, toUnixTimestamp64Milli(ingested_at) AS ing FROM {db}.rides ORDER BY cityHash64(event_id) LIMIT 25",
        &[],
    );
    assert_eq!(rides.len(), 25);
    for r in &rides {
        let id = r["event_id"].as_str().expect("id");
        let resp = f.get(&format!("/v1/events/rides/{}", enc(id)));
        assert_eq!(resp.status, 200, "{id}: {}", resp.text);
        let e = &resp.json;
        for k in ["event_id", "event_type", "ride_id", "city", "user_id", "driver_id"] {
            assert_eq!(e[k], r[k], "{id}.{k}");
        }
        assert!(same(&e["estimated_fare"], &r["estimated_fare"]), "{id}: fare");
        assert_eq!(e["timestamp"], rfc(num(&r["ts"])), "{id}: timestamp");
        assert_eq!(e["ingested_at"], rfc(num(&r["ing"])), "{id}: ingested_at");
        match r["pickup_lat"].as_f64() {
            Some(lat) => {
                assert!(same(&e["pickup"]["lat"], &json!(lat)) && same(&e["pickup"]["lng"], &r["pickup_lng"]), "{id}: pickup {}", e["pickup"]);
            }
            None => assert!(e["pickup"].is_null()),
        }
        assert!(e["dropoff"].is_null() && r["dropoff_lat"].is_null());
        assert!(e.get("version").is_none(), "immutable domains carry no version");
    }

    // App events: the latest version, computed here with argMax instead of FINAL.
    let latest = f.sql(
        "SELECT event_id, argMax(session_id, version) AS session_id, argMax(event_name, version) AS event_name, argMax(latency_ms, version) AS latency_ms, \
         argMax(error, version) AS error, argMax(is_deleted, version) AS deleted, max(version) AS last_version, count() AS writes \
         FROM {db}.app_events GROUP BY event_id",
        &[],
    );
    // Updated events, from what was produced: several writes, the last one not a delete.
    let mut writes: HashMap<&str, Vec<&str>> = HashMap::new();
    for (d, key, json) in &f.records {
        if *d == pulse_gen::GenDomain::AppEvents {
            writes.entry(key.as_str()).or_default().push(json.as_str());
        }
    }
    let mut updated: Vec<(&str, Value)> = writes
        .iter()
        .filter(|(_, w)| w.len() > 1 && !w.last().is_some_and(|j| j.contains("\"_deleted\":true")))
        .map(|(id, w)| (*id, serde_json::from_str(w.last().expect("a write")).expect("json")))
        .collect();
    updated.sort_by(|a, b| a.0.cmp(b.0));
    updated.truncate(15);
    let deleted: Vec<&Value> = latest.iter().filter(|r| num(&r["deleted"]) == 1).take(15).collect();
    assert!(updated.len() >= 5 && deleted.len() >= 5, "{} updated, {} deleted", updated.len(), deleted.len());
    let by_id: HashMap<&str, &Value> = latest.iter().map(|r| (r["event_id"].as_str().expect("id"), r)).collect();
    for (id, last) in updated {
        let r = by_id[id];
        let resp = f.get(&format!("/v1/events/app_events/{}", enc(id)));
        assert_eq!(resp.status, 200, "{id}: {}", resp.text);
        for k in ["session_id", "event_name", "error"] {
            assert_eq!(resp.json[k], r[k], "{id}.{k} (SQL)");
            assert_eq!(resp.json[k], last[k], "{id}.{k} (last write)");
        }
        assert!(same(&resp.json["latency_ms"], &r["latency_ms"]) && same(&resp.json["latency_ms"], &last["latency_ms"]));
        assert_eq!(num(&resp.json["version"]), num(&last["_version"]), "{id}: latest version");
        assert_eq!(num(&resp.json["version"]), num(&r["last_version"]));
    }
    for r in deleted {
        let id = r["event_id"].as_str().expect("id");
        let resp = f.get(&format!("/v1/events/app_events/{}", enc(id)));
        assert_eq!(resp.status, 404, "deleted {id}: {}", resp.text);
        assert_eq!(resp.json["parameter"], "id");
    }
    let resp = f.get("/v1/events/rides/no-such-event");
    assert_eq!((resp.status, resp.json["parameter"].as_str()), (404, Some("id")));
    let resp = f.get("/v1/events/nope/x");
    assert_eq!((resp.status, resp.json["parameter"].as_str()), (404, Some("domain")));
}

/// Follows `next_cursor` to the end; returns every event and the page count.
fn all_pages(f: &common::Fixture, first: &str) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut url = first.to_string();
    let mut pages = 0;
    loop {
        let resp = f.get(&url);
        assert_eq!(resp.status, 200, "{url}: {}", resp.text);
        pages += 1;
        events.extend(resp.json["events"].as_array().expect("events").iter().cloned());
        match resp.json["next_cursor"].as_str() {
            Some(c) => url = format!("{first}&cursor={c}"),
            None => break,
        }
        assert!(pages < 1000, "pagination does not end");
    }
    (events, pages)
}

#[test]
fn timelines_page_in_time_order() {
    let Some(f) = fixture() else { return };
    // A ride with a full lifecycle (requested ... completed).
    let ride = f.sql("SELECT ride_id FROM {db}.rides GROUP BY ride_id HAVING count() >= 4 ORDER BY ride_id LIMIT 1", &[]);
    let ride = ride[0]["ride_id"].as_str().expect("ride");
    let want: Vec<String> = f
        .sql("SELECT DISTINCT event_id, timestamp FROM {db}.rides WHERE ride_id = {r:String} ORDER BY timestamp, event_id", &[("r", ride)])
        .iter()
        .map(|r| r["event_id"].as_str().expect("id").to_string())
        .collect();
    let (events, pages) = all_pages(f, &format!("/v1/events/rides?key={}&limit=1", enc(ride)));
    let got: Vec<String> = events.iter().map(|e| e["event_id"].as_str().expect("id").to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(pages, want.len(), "one event per page");
    assert_eq!(events[0]["event_type"], "requested");
    let types: Vec<&str> = events.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert!(types.last().is_some_and(|t| *t == "completed" || *t == "cancelled"), "{types:?}");

    // from/to narrow the timeline to [from, to).
    let ts: Vec<&str> = events.iter().filter_map(|e| e["timestamp"].as_str()).collect();
    let resp = f.get(&format!("/v1/events/rides?key={}&from={}&to={}", enc(ride), enc(ts[1]), enc(ts[ts.len() - 1])));
    let n = ts.iter().filter(|t| **t >= ts[1] && **t < ts[ts.len() - 1]).count();
    assert_eq!(resp.json["events"].as_array().map(Vec::len), Some(n), "{}", resp.text);

    // A session's events (key_field=session_id): latest versions, deleted ones left out.
    let session = f.sql("SELECT session_id FROM {db}.app_events FINAL GROUP BY session_id ORDER BY count() DESC, session_id LIMIT 1", &[]);
    let session = session[0]["session_id"].as_str().expect("session");
    let want: Vec<String> = f
        .sql(
            "SELECT event_id FROM (SELECT event_id, argMax(session_id, version) AS s, argMax(is_deleted, version) AS d, argMax(timestamp, version) AS t \
             FROM {db}.app_events GROUP BY event_id) WHERE s = {s:String} AND d = 0 ORDER BY t, event_id",
            &[("s", session)],
        )
        .iter()
        .map(|r| r["event_id"].as_str().expect("id").to_string())
        .collect();
    assert!(want.len() >= 10, "session {session} has {} events", want.len());
    let (events, pages) = all_pages(f, &format!("/v1/events/app_events?key_field=session_id&key={}&limit=7", enc(session)));
    let got: Vec<String> = events.iter().map(|e| e["event_id"].as_str().expect("id").to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(pages, want.len().div_ceil(7));
    assert!(events.iter().all(|e| e["session_id"] == session));

    // Limits are capped; bad ones are 400s naming the parameter.
    let resp = f.get("/v1/events/rides?key=r-1&limit=100000000");
    assert_eq!(resp.status, 200, "{}", resp.text);
    for (q, param) in [
        ("key=r-1&limit=-1", "limit"),
        ("key=r-1&limit=0", "limit"),
        ("key=r-1&limit=abc", "limit"),
        ("limit=5", "key"),
        ("key=r-1&key_field=pickup", "key_field"),
        ("key=r-1&key_field=nope", "key_field"),
        ("key=r-1&cursor=zz", "cursor"),
        ("key=r-1&from=yesterday", "from"),
        ("key=r-1&sort=asc", "sort"),
    ] {
        let resp = f.get(&format!("/v1/events/rides?{q}"));
        assert_eq!((resp.status, resp.json["parameter"].as_str()), (400, Some(param)), "{q}: {}", resp.text);
    }
}

// ------------------------------------------------------------------ metrics

/// The latest revision of every window of `metric` for `city`, by window start (ms), via argMax.
fn latest_revisions(f: &common::Fixture, metric: &str, aggs: &[&str], city: &str) -> BTreeMap<i64, Value> {
    let cols: Vec<String> = aggs.iter().map(|a| format!("argMax({a}, revision) AS {a}")).collect();
    let sql = format!(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(any(window_end)) AS we, {}, argMax(final, revision) AS fin, max(revision) AS rev \
         FROM {{db}}.{metric} WHERE city = {{c:String}} GROUP BY window_start",
        cols.join(", ")
    );
    f.sql(&sql, &[("c", city)]).into_iter().map(|r| (num(&r["ws"]), r)).collect()
}

const CITY_AGGS: [&str; 7] = ["total_events", "requests", "completions", "cancellations", "avg_fare", "unique_riders", "cancellation_rate"];

fn check_row(got: &Value, want: &Value, aggs: &[&str]) {
    assert_eq!(got["window_start"], rfc(num(&want["ws"])));
    assert_eq!(got["window_end"], rfc(num(&want["we"])));
    assert_eq!(got["final"], json!(fin(&want["fin"])), "final of {got}");
    assert_eq!(num(&got["revision"]), num(&want["rev"]), "revision of {got}");
    for a in aggs {
        assert!(same(&got[*a], &want[*a]), "{a}: API {} != SQL {} in {got}", got[*a], want[*a]);
    }
}

#[test]
fn metric_rows_are_the_latest_revision_per_window() {
    let Some(f) = fixture() else { return };
    for city in ["Lima", "Berlin"] {
        let want = latest_revisions(f, "city_metrics", &CITY_AGGS, city);
        assert!(want.len() >= 5, "{city}: {} windows", want.len());
        assert!(want.values().any(|r| fin(&r["fin"])) && want.values().any(|r| !fin(&r["fin"])), "both closed and open windows");
        let resp = f.get(&format!("/v1/metrics/city_metrics?city={city}"));
        assert_eq!(resp.status, 200, "{}", resp.text);
        assert_eq!(resp.json["truncated"], false);
        let rows = resp.json["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), want.len(), "{city}: one row per window");
        for (got, want) in rows.iter().zip(want.values()) {
            assert_eq!(got["city"], city);
            check_row(got, want, &CITY_AGGS);
        }
        // final=true / false split the windows.
        let finals = f.get(&format!("/v1/metrics/city_metrics?city={city}&final=true")).json["rows"].as_array().map(Vec::len);
        let open = f.get(&format!("/v1/metrics/city_metrics?city={city}&final=false")).json["rows"].as_array().map(Vec::len);
        assert_eq!(finals, Some(want.values().filter(|r| fin(&r["fin"])).count()));
        assert_eq!(open, Some(want.values().filter(|r| !fin(&r["fin"])).count()));
        // from/to select window starts in [from, to); limit keeps the newest windows.
        let starts: Vec<i64> = want.keys().copied().collect();
        let resp = f.get(&format!("/v1/metrics/city_metrics?city={city}&from={}&to={}", enc(&rfc(starts[1])), starts[3]));
        let got: Vec<&str> = resp.json["rows"].as_array().expect("rows").iter().filter_map(|r| r["window_start"].as_str()).collect();
        assert_eq!(got, [rfc(starts[1]), rfc(starts[2])]);
        let resp = f.get(&format!("/v1/metrics/city_metrics?city={city}&limit=2"));
        let got: Vec<&str> = resp.json["rows"].as_array().expect("rows").iter().filter_map(|r| r["window_start"].as_str()).collect();
        assert_eq!(got, [rfc(starts[starts.len() - 2]), rfc(starts[starts.len() - 1])]);
        assert_eq!(resp.json["truncated"], true);
    }
    // All cities: every row of the table's latest revisions.
    let total = f.sql("SELECT count() AS n FROM (SELECT city, window_start FROM {db}.city_metrics GROUP BY city, window_start)", &[]);
    let resp = f.get("/v1/metrics/city_metrics?limit=10000");
    assert_eq!(resp.json["rows"].as_array().map(Vec::len), Some(num(&total[0]["n"]) as usize));
    for (q, param) in [("final=maybe", "final"), ("city=Lima&city=Paris", "city"), ("town=Lima", "town"), ("from=2026-13-45", "from"), ("limit=-5", "limit")] {
        let resp = f.get(&format!("/v1/metrics/city_metrics?{q}"));
        assert_eq!((resp.status, resp.json["parameter"].as_str()), (400, Some(param)), "{q}: {}", resp.text);
    }
    let resp = f.get("/v1/metrics/no_such_metric");
    assert_eq!((resp.status, resp.json["parameter"].as_str()), (404, Some("metric")));
}

#[test]
fn latest_is_the_newest_window_per_group() {
    let Some(f) = fixture() else { return };
    for (metric, aggs) in [("city_metrics", &CITY_AGGS[..]), ("city_supply", &["active_drivers", "location_updates"][..])] {
        let cities: Vec<String> = f
            .sql(&format!("SELECT DISTINCT city FROM {{db}}.{metric} ORDER BY city"), &[])
            .iter()
            .map(|r| r["city"].as_str().expect("city").to_string())
            .collect();
        assert!(cities.len() >= 15, "{metric}: {} cities", cities.len());
        let resp = f.get(&format!("/v1/metrics/{metric}/latest"));
        assert_eq!(resp.status, 200, "{}", resp.text);
        let rows = resp.json["rows"].as_array().expect("rows");
        let got: Vec<&str> = rows.iter().filter_map(|r| r["city"].as_str()).collect();
        assert_eq!(got, cities, "{metric}: one row per city, by city");
        for row in rows {
            let city = row["city"].as_str().expect("city");
            let want = latest_revisions(f, metric, aggs, city);
            let (_, newest) = want.iter().next_back().expect("a window");
            check_row(row, newest, aggs);
        }
        // The newest closed window per city.
        let resp = f.get(&format!("/v1/metrics/{metric}/latest?final=true&city=Lima"));
        let rows = resp.json["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{}", resp.text);
        let want = latest_revisions(f, metric, aggs, "Lima");
        let newest_final = want.values().rev().find(|r| fin(&r["fin"])).expect("a closed window");
        check_row(&rows[0], newest_final, aggs);
    }
}

// ------------------------------------------------------------------ analytics

/// App events as of their latest version, deletes removed (argMax, not FINAL).
/// `error` is Nullable and argMax skips NULLs: wrapped in a tuple, an update
/// that clears the error is the latest value.
const APP_LATEST: &str = "(SELECT event_id, argMax(session_id, version) AS session_id, argMax(event_name, version) AS event_name, \
    argMax(latency_ms, version) AS latency_ms, argMax(tuple(error), version).1 AS error, argMax(timestamp, version) AS timestamp \
    FROM {db}.app_events GROUP BY event_id HAVING argMax(is_deleted, version) = 0)";

#[test]
fn analytics_match_sql() {
    let Some(f) = fixture() else { return };
    // Errors and totals per day.
    for (q, filter) in [("days=2", ""), ("days=2&event_name=search", " AND event_name = 'search'")] {
        let resp = f.get(&format!("/v1/analytics/errors?{q}"));
        assert_eq!(resp.status, 200, "{}", resp.text);
        let from = resp.json["from"].as_str().expect("from");
        assert!(from.ends_with("T00:00:00.000Z"));
        let want = f.sql(
            &format!(
                "SELECT toString(toDate(timestamp)) AS day, count() AS total, sum(error IS NOT NULL AND error != '') AS errors FROM {APP_LATEST} \
                 WHERE timestamp >= parseDateTime64BestEffort({{f:String}}, 3, 'UTC'){filter} GROUP BY day ORDER BY day"
            ),
            &[("f", from)],
        );
        let got = resp.json["per_day"].as_array().expect("per_day");
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{}", resp.text);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["day"], w["day"]);
            assert_eq!(num(&g["total"]), num(&w["total"]));
            assert_eq!(num(&g["errors"]), num(&w["errors"]));
            assert!(same(&g["error_rate"], &json!(num(&w["errors"]) as f64 / num(&w["total"]) as f64)));
        }
        assert!(got.iter().map(|d| num(&d["errors"])).sum::<i64>() > 0, "some errors");
    }

    // p95 latency per event name per session.
    let resp = f.get("/v1/analytics/latency?limit=40");
    assert_eq!(resp.status, 200, "{}", resp.text);
    let want = f.sql(
        &format!("SELECT session_id, event_name, count() AS events, quantileExact(0.95)(latency_ms) AS p95 FROM {APP_LATEST} GROUP BY session_id, event_name ORDER BY p95 DESC, session_id, event_name LIMIT 40"),
        &[],
    );
    let got = resp.json["rows"].as_array().expect("rows");
    assert_eq!(got.len(), 40);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g["session_id"], &g["event_name"]), (&w["session_id"], &w["event_name"]));
        assert_eq!(num(&g["events"]), num(&w["events"]));
        assert!(same(&g["p95_latency_ms"], &w["p95"]));
    }
    let resp = f.get("/v1/analytics/latency?limit=5&event_name=login");
    assert!(resp.json["rows"].as_array().expect("rows").iter().all(|r| r["event_name"] == "login"));

    // Sessions by error rate.
    let resp = f.get("/v1/analytics/sessions/top-errors?limit=15&min_events=5");
    assert_eq!(resp.status, 200, "{}", resp.text);
    let want = f.sql(
        &format!(
            "SELECT session_id, count() AS events, sum(error IS NOT NULL AND error != '') AS errors, errors / events AS rate FROM {APP_LATEST} \
             GROUP BY session_id HAVING errors > 0 AND events >= 5 ORDER BY rate DESC, errors DESC, session_id LIMIT 15"
        ),
        &[],
    );
    let got = resp.json["sessions"].as_array().expect("sessions");
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["session_id"], w["session_id"]);
        assert_eq!((num(&g["events"]), num(&g["errors"])), (num(&w["events"]), num(&w["errors"])));
        assert!(same(&g["error_rate"], &w["rate"]));
    }

    // Per-city ride figures over the last hour.
    let resp = f.get("/v1/analytics/cities?since=1h");
    assert_eq!(resp.status, 200, "{}", resp.text);
    let from = resp.json["from"].as_str().expect("from");
    let want = f.sql(
        "SELECT city, countIf(event_type = 'requested') AS req, countIf(event_type = 'completed') AS com, countIf(event_type = 'cancelled') AS can, avg(estimated_fare) AS fare \
         FROM {db}.rides WHERE timestamp >= parseDateTime64BestEffort({f:String}, 3, 'UTC') GROUP BY city ORDER BY city",
        &[("f", from)],
    );
    let got = resp.json["cities"].as_array().expect("cities");
    assert_eq!(got.len(), 20);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["city"], w["city"]);
        let (req, com, can) = (num(&w["req"]), num(&w["com"]), num(&w["can"]));
        assert_eq!((num(&g["requests"]), num(&g["completions"]), num(&g["cancellations"])), (req, com, can));
        assert!(same(&g["completion_rate"], &json!(com as f64 / req as f64)));
        assert!(same(&g["avg_fare"], &w["fare"]));
    }
    // A minute ago nothing happened (the events end three minutes before the fixture settled).
    let resp = f.get("/v1/analytics/cities?since=10s");
    assert_eq!(resp.json["cities"], json!([]), "{}", resp.text);
    for (path, param) in [
        ("/v1/analytics/errors?days=0", "days"),
        ("/v1/analytics/errors?days=1000", "days"),
        ("/v1/analytics/latency?limit=x", "limit"),
        ("/v1/analytics/sessions/top-errors?min_events=-1", "min_events"),
        ("/v1/analytics/cities?since=1y", "since"),
        ("/v1/analytics/cities?since=400d", "since"),
        ("/v1/analytics/cities?since=", "since"),
    ] {
        let resp = f.get(path);
        assert_eq!((resp.status, resp.json["parameter"].as_str()), (400, Some(param)), "{path}: {}", resp.text);
    }
}

/// Hostile data for the session analytics, in a database of its own: every row
/// inserted twice (a sink replay, merges stopped so both copies stay), updates
/// that move an event's latency, session, time or error, deletes (tombstones
/// with no session), a session id with quotes, backslashes, emoji and 200 more
/// bytes, a group big enough for p95 to differ from its max, events outside the
/// period, and an empty period. Every answer equals the same computation done
/// here over the de-duplicated current rows (argMax by version, not FINAL).
#[test]
fn session_analytics_are_exact_under_replays_updates_and_deletes() {
    let Some(ch) = pulse_testkit::stack_clickhouse("pulse_api_exact") else { return };
    let spec = spec();
    rt().block_on(async {
        pulse_clickhouse::migrate(&ch, &spec).await.expect("migrate");
        let db = format!("`{}`", ch.database);
        let exec = |sql: String| {
            let ch = ch.clone();
            async move { ch.client().query(&sql).execute().await.unwrap_or_else(|e| panic!("{sql}: {e}")) }
        };
        exec(format!("SYSTEM STOP MERGES {db}.app_events")).await;
        let now = common::now_ms();
        let lit = pulse_clickhouse::schema::string_literal;
        let weird = format!("s'\"`\\ Zürich 🚕 東京 {{p0:String}} {}", "x".repeat(200));
        // (event_id, session_id, event_name, latency_ms, error, time ms, version, is_deleted)
        type Row = (String, String, &'static str, f64, Option<&'static str>, i64, u64, u8);
        let row = |id: &str, s: &str, n: &'static str, l: f64, e: Option<&'static str>, t: i64, v: u64, del: u8| -> Row {
            (id.to_string(), s.to_string(), n, l, e, t, v, del)
        };
        let mut first: Vec<Row> = Vec::new();
        for i in 0..600i64 {
            let name = ["search", "login", "chat"][(i % 3) as usize];
            let error = (i % 7 == 0).then_some("timeout");
            first.push(row(&format!("b{i}"), &format!("s{}", i % 25), name, ((i * 7919) % 1000) as f64 + 0.5, error, now - 3_600_000 - i * 1000, 1, 0));
        }
        // 80 events in one group: its p95 is not its slowest event.
        for i in 0..80i64 {
            first.push(row(&format!("big{i}"), "big", "search", (i * 10) as f64 + 900.0, (i % 2 == 0).then_some("boom"), now - 7_200_000 - i * 1000, 1, 0));
        }
        for (i, l) in [5000.0, 6000.0].into_iter().enumerate() {
            first.push(row(&format!("w{i}"), &weird, "chat", l, Some("weird"), now - 600_000, 1, 0));
        }
        // Outside the period (30 hours ago), very slow and all errors.
        for i in 0..5i64 {
            first.push(row(&format!("old{i}"), "old", "search", 88_888.0, Some("old"), now - 30 * 3_600_000, 1, 0));
        }
        // Ties at the top, every event a session of its own: 1,500 events of 2,000 ms
        // 32 to 36 hours ago (every third an error), and three slower events in
        // three of those sessions. Ranking them by p95 takes the full query.
        for i in 0..1500i64 {
            first.push(row(&format!("tie{i}"), &format!("t{i:04}"), "chat", 2000.0, (i % 3 == 0).then_some("e"), now - 32 * 3_600_000 - i * 9_000, 1, 0));
        }
        for i in 0..3i64 {
            first.push(row(&format!("tie-slow{i}"), &format!("t{:04}", i * 500 + 7), "chat", 3000.0, None, now - 33 * 3_600_000, 1, 0));
        }
        let tombstone = |id: &str, v: u64| row(id, "", "", 0.0, None, now, v, 1);
        let updates: Vec<Row> = vec![
            // Latency moved up: this group becomes the slowest.
            row("b0", "s0", "search", 99_999.0, Some("timeout"), now - 3_600_000, 2, 0),
            // The weird session's slowest event becomes fast.
            row("w1", &weird, "chat", 1.0, Some("weird"), now - 600_000, 2, 0),
            // Moved to another session, to outside the period, error cleared.
            row("b1", "moved", "login", 777.0, None, now - 3_601_000, 2, 0),
            row("b2", "s2", "chat", 50_000.0, None, now - 26 * 3_600_000, 2, 0),
            row("b7", "s7", "login", 10.5, None, now - 3_607_000, 2, 0),
            // An update older than the stored version loses.
            row("b5", "s5", "search", 123_456.0, None, now - 3_605_000, 0, 0),
        ];
        let mut deletes: Vec<Row> = vec![tombstone("b14", 3), tombstone("b21", 3), tombstone("w0", 3)];
        // The big group's three slowest events are deleted: its p95 moves.
        deletes.extend((77..80).map(|i| tombstone(&format!("big{i}"), 3)));
        let insert = |rows: Vec<Row>| {
            let values: Vec<String> = rows
                .iter()
                .map(|(id, s, n, l, e, t, v, del)| {
                    format!(
                        "({}, {}, {}, NULL, NULL, {l}, {}, fromUnixTimestamp64Milli({t}, 'UTC'), fromUnixTimestamp64Milli({now}, 'UTC'), {v}, {del}, 0, 0)",
                        lit(id),
                        lit(s),
                        lit(n),
                        e.map_or("NULL".to_string(), lit)
                    )
                })
                .collect();
            exec(format!(
                "INSERT INTO {db}.app_events (event_id, session_id, event_name, input, output, latency_ms, error, timestamp, ingested_at, version, is_deleted, kafka_partition, kafka_offset) VALUES {}",
                values.join(", ")
            ))
        };
        // Each batch stored, then stored again by a replay.
        for batch in [first.clone(), updates.clone(), deletes.clone()] {
            insert(batch.clone()).await;
            insert(batch).await;
        }
        let stored = common::sql_scalar(&ch, &format!("SELECT count() FROM {db}.app_events")).await as usize;
        assert_eq!(stored, 2 * (first.len() + updates.len() + deletes.len()), "both copies are stored, unmerged");

        let server = Server::start(Arc::clone(&spec), &ch, ApiConfig::default()).await;
        let c = server.http();
        let latest = format!(
            "(SELECT event_id, argMax(session_id, version) AS session_id, argMax(event_name, version) AS event_name, argMax(latency_ms, version) AS latency_ms, \
             argMax(tuple(error), version).1 AS error, argMax(timestamp, version) AS timestamp FROM {db}.app_events GROUP BY event_id HAVING argMax(is_deleted, version) = 0)"
        );
        let period = "timestamp >= fromUnixTimestamp64Milli({f:Int64}, 'UTC') AND timestamp < fromUnixTimestamp64Milli({t:Int64}, 'UTC')";
        let (day_ago, soon) = ((now - 86_400_000).to_string(), (now + 60_000).to_string());

        // p95 latency per (session, event name).
        let mut cases: Vec<(String, String, String, &str)> = Vec::new();
        for limit in [1, 2, 5, 30, 1000] {
            cases.push((format!("limit={limit}"), day_ago.clone(), soon.clone(), ""));
            cases.push((format!("limit={limit}&event_name=search"), day_ago.clone(), soon.clone(), "search"));
        }
        // The last hour and a half only (half of the bulk events and the weird session's).
        cases.push(("limit=4".into(), (now - 5_400_000).to_string(), soon.clone(), ""));
        // The ties (see above).
        let (tie_from, tie_to) = ((now - 36 * 3_600_000).to_string(), (now - 32 * 3_600_000 + 1).to_string());
        for limit in [1, 3, 5, 30] {
            cases.push((format!("limit={limit}"), tie_from.clone(), tie_to.clone(), ""));
        }
        for (q, from, to, name) in &cases {
            let resp = c.get(&format!("/v1/analytics/latency?{q}&from={from}&to={to}")).await;
            assert_eq!(resp.status, 200, "{q}: {}", resp.text);
            let limit: usize = q.trim_start_matches("limit=").split('&').next().and_then(|l| l.parse().ok()).expect("limit");
            let filter = if name.is_empty() { String::new() } else { format!(" AND event_name = {}", lit(name)) };
            let want = pulse_testkit::json_rows(
                &ch,
                &format!(
                    "SELECT session_id, event_name, count() AS events, quantileExact(0.95)(latency_ms) AS p95 FROM {latest} WHERE {period}{filter} \
                     GROUP BY session_id, event_name ORDER BY p95 DESC, session_id, event_name LIMIT {limit}"
                ),
                &[("f", from), ("t", to)],
            )
            .await;
            let got = resp.json["rows"].as_array().expect("rows");
            assert_eq!(got.len(), want.len(), "{q}: {}", resp.text);
            assert!(!got.is_empty(), "{q}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((&g["session_id"], &g["event_name"]), (&w["session_id"], &w["event_name"]), "{q}: {}", resp.text);
                assert_eq!(num(&g["events"]), num(&w["events"]), "{q}");
                assert!(same(&g["p95_latency_ms"], &w["p95"]), "{q}: {} != {}", g["p95_latency_ms"], w["p95"]);
            }
        }
        // How the tied period was answered. limit=5: both pruned tries could not
        // prove their answer (θ = 2,000 ms, the last row's p95 too), so the full
        // query answered. limit=3: the three slower groups rank above θ, the first try did.
        let queries = || {
            let c = c.clone();
            async move {
                let text = c.get("/metrics").await.text;
                text.lines()
                    .find(|l| l.starts_with("pulse_api_clickhouse_query_seconds_count{query=\"analytics_latency\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            }
        };
        for (q, from, to, tries) in [("limit=5", &tie_from, &tie_to, 3), ("limit=3", &tie_from, &tie_to, 1)] {
            let before = queries().await;
            let resp = c.get(&format!("/v1/analytics/latency?{q}&from={from}&to={to}")).await;
            assert_eq!(resp.status, 200, "{q}: {}", resp.text);
            assert_eq!(queries().await - before, tries, "{q} from {from}: ClickHouse queries");
        }
        // What the hostile rows did, spelled out (the reference could be wrong too).
        let resp = c.get(&format!("/v1/analytics/latency?limit=1000&from={day_ago}&to={soon}")).await;
        let rows = resp.json["rows"].as_array().expect("rows");
        assert_eq!((rows[0]["session_id"].as_str(), rows[0]["p95_latency_ms"].as_f64()), (Some("s0"), Some(99_999.0)), "the update moved b0's latency");
        let group = |s: &str, n: &str| rows.iter().find(|r| r["session_id"] == s && r["event_name"] == n).cloned();
        let w = group(&weird, "chat").expect("the weird session, byte for byte");
        assert_eq!((num(&w["events"]), w["p95_latency_ms"].as_f64()), (1, Some(1.0)), "w0 deleted, w1 made fast");
        let big = group("big", "search").expect("big");
        // 77 events left, latencies 900..=1660 by 10: the p95 is the 74th smallest (index 73), not the max.
        assert_eq!((num(&big["events"]), big["p95_latency_ms"].as_f64()), (77, Some(1630.0)), "{big}");
        assert!(group("moved", "login").is_some() && group("old", "search").is_none(), "moves and the period hold");
        assert!(rows.iter().all(|r| r["p95_latency_ms"].as_f64() != Some(50_000.0) && r["p95_latency_ms"].as_f64() != Some(123_456.0)));
        let events: i64 = rows.iter().map(|r| num(&r["events"])).sum();
        // 600 bulk - b2 (moved out) - b14 - b21 (deleted) + 77 big + w1.
        assert_eq!(events, 600 - 3 + 77 + 1, "each current event once");

        // Sessions by error rate.
        for (limit, min_events) in [(1, 1), (3, 1), (10, 1), (1000, 1), (1000, 20), (5, 30)] {
            let q = format!("limit={limit}&min_events={min_events}&from={day_ago}&to={soon}");
            let resp = c.get(&format!("/v1/analytics/sessions/top-errors?{q}")).await;
            assert_eq!(resp.status, 200, "{q}: {}", resp.text);
            let want = pulse_testkit::json_rows(
                &ch,
                &format!(
                    "SELECT session_id, count() AS events, sum(error IS NOT NULL AND error != '') AS errors, errors / events AS rate FROM {latest} WHERE {period} \
                     GROUP BY session_id HAVING errors > 0 AND events >= {min_events} ORDER BY rate DESC, errors DESC, session_id LIMIT {limit}"
                ),
                &[("f", &day_ago), ("t", &soon)],
            )
            .await;
            let got = resp.json["sessions"].as_array().expect("sessions");
            assert_eq!(got.len(), want.len(), "{q}: {}", resp.text);
            assert!(!got.is_empty(), "{q}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g["session_id"], w["session_id"], "{q}: {}", resp.text);
                assert_eq!((num(&g["events"]), num(&g["errors"])), (num(&w["events"]), num(&w["errors"])), "{q}");
                assert!(same(&g["error_rate"], &w["rate"]), "{q}");
            }
        }
        let resp = c.get(&format!("/v1/analytics/sessions/top-errors?limit=3&from={day_ago}&to={soon}")).await;
        let top = &resp.json["sessions"][0];
        assert_eq!((top["session_id"].as_str(), num(&top["events"]), num(&top["errors"])), (Some(weird.as_str()), 1, 1), "{}", resp.text);
        let resp = c.get(&format!("/v1/analytics/sessions/top-errors?limit=1000&from={day_ago}&to={soon}")).await;
        let sessions = resp.json["sessions"].as_array().expect("sessions");
        let s7 = sessions.iter().find(|s| s["session_id"] == "s7").expect("s7");
        // s7: 24 bulk events (i = 7, 32, ..., 582), errors where i % 7 == 0 (7, 182, 357, 532), b7's cleared.
        assert_eq!((num(&s7["events"]), num(&s7["errors"])), (24, 3), "{s7}");
        assert!(sessions.iter().all(|s| s["session_id"] != "old" && s["session_id"] != ""), "no period leak, no tombstone session");

        // An empty period: nothing, from both.
        let (from, to) = (now - 29 * 3_600_000, now - 27 * 3_600_000);
        for path in ["latency?limit=5", "sessions/top-errors?limit=5"] {
            let resp = c.get(&format!("/v1/analytics/{path}&from={from}&to={to}")).await;
            assert_eq!(resp.status, 200, "{path}: {}", resp.text);
            let key = if path.starts_with("latency") { "rows" } else { "sessions" };
            assert_eq!(resp.json[key], json!([]), "{path}: {}", resp.text);
        }
        server.shutdown.trigger();
        exec(format!("DROP DATABASE IF EXISTS {db}")).await;
    });
}

// ------------------------------------------------------------------ live stream

#[test]
fn stream_delivered_the_live_revisions() {
    let Some(f) = fixture() else { return };
    assert!(f.sse_all.len() >= 100, "{} SSE rows", f.sse_all.len());
    assert!(!f.sse_lima.is_empty());
    assert!(f.sse_lima.iter().all(|r| r["city"] == "Lima" && r["metric"] == "city_metrics"), "the city filter holds");
    assert!(f.sse_all.iter().all(|r| r["metric"] == "city_metrics"));
    let lima_in_all = f.sse_all.iter().filter(|r| r["city"] == "Lima").count();
    assert_eq!(lima_in_all, f.sse_lima.len(), "the filtered stream saw every Lima row");
    // Revisions arrive live: some windows were seen open before final.
    let mut newest: HashMap<(String, String), &Value> = HashMap::new();
    let mut revisions: HashMap<(String, String), BTreeSet<i64>> = HashMap::new();
    for r in &f.sse_all {
        let key = (r["city"].as_str().unwrap_or_default().to_string(), r["window_start"].as_str().unwrap_or_default().to_string());
        revisions.entry(key.clone()).or_default().insert(num(&r["revision"]));
        let e = newest.entry(key).or_insert(r);
        if num(&r["revision"]) > num(&e["revision"]) {
            *e = r;
        }
    }
    assert!(revisions.values().any(|r| r.len() > 1), "windows are revised live");
    // The newest revision each client saw equals ClickHouse's row of that revision.
    let stored: HashMap<(String, String), Value> = f
        .sql(&format!("SELECT city, toUnixTimestamp64Milli(window_start) AS ws, {}, final, revision FROM {{db}}.city_metrics FINAL", CITY_AGGS.join(", ")), &[])
        .into_iter()
        .map(|r| ((r["city"].as_str().unwrap_or_default().to_string(), rfc(num(&r["ws"]))), r))
        .collect();
    let mut equal = 0;
    for (key, row) in &newest {
        let s = stored.get(key).unwrap_or_else(|| panic!("{key:?} not in ClickHouse"));
        assert!(num(&row["revision"]) <= num(&s["revision"]), "{key:?}: stream revision beyond ClickHouse's");
        if num(&row["revision"]) == num(&s["revision"]) {
            for a in CITY_AGGS {
                assert!(same(&row[a], &s[a]), "{key:?}.{a}: stream {} != ClickHouse {}", row[a], s[a]);
            }
            assert_eq!(row["final"], s["final"]);
            equal += 1;
        }
    }
    assert!(equal * 10 >= newest.len() * 9, "{equal} of {} windows' last stream revision is ClickHouse's", newest.len());
    let resp = f.get("/v1/stream/no_such_metric");
    assert_eq!(resp.status, 404);
    let resp = f.get("/v1/stream/city_metrics?town=Lima");
    assert_eq!((resp.status, resp.json["parameter"].as_str()), (400, Some("town")));
}

// ------------------------------------------------------------------ hostile input

#[test]
fn injection_attempts_are_rejected_or_harmless() {
    let Some(f) = fixture() else { return };
    let count = |t: &str| f.sql(&format!("SELECT count() AS n FROM {{db}}.{t}"), &[])[0]["n"].clone();
    let before: Vec<Value> = ["rides", "app_events", "city_metrics"].iter().map(|t| count(t)).collect();
    let long = "x".repeat(5000);
    let nasty: Vec<&str> = vec![
        "'",
        "\"",
        "`",
        "\\",
        "' OR 1=1 --",
        "') OR ('1'='1",
        "1; DROP TABLE rides; --",
        "{p0:String}",
        "Zürich 🚕 東京",
        "%00",
        "\u{0}",
        "\n",
        "-1",
        "1e309",
        "99999999999999999999999999",
        "2026-02-30T00:00:00Z",
        &long,
    ];
    let templates = [
        "/v1/events/rides/{}",
        "/v1/events/{}/x",
        "/v1/events/rides?key={}",
        "/v1/events/rides?key=r-1&key_field={}",
        "/v1/events/rides?key=r-1&from={}",
        "/v1/events/rides?key=r-1&to={}",
        "/v1/events/rides?key=r-1&limit={}",
        "/v1/events/rides?key=r-1&cursor={}",
        "/v1/events/app_events?key_field=session_id&key={}",
        "/v1/metrics/city_metrics?city={}",
        "/v1/metrics/{}",
        "/v1/metrics/city_metrics?from={}",
        "/v1/metrics/city_metrics?to={}",
        "/v1/metrics/city_metrics?final={}",
        "/v1/metrics/city_metrics?limit={}",
        "/v1/metrics/city_metrics/latest?city={}",
        "/v1/metrics/city_metrics/latest?final={}",
        "/v1/analytics/errors?event_name={}",
        "/v1/analytics/errors?days={}",
        "/v1/analytics/latency?limit={}",
        "/v1/analytics/latency?event_name={}",
        "/v1/analytics/sessions/top-errors?limit={}",
        "/v1/analytics/sessions/top-errors?min_events={}",
        "/v1/analytics/cities?since={}",
        "/v1/metrics/city_metrics?{}=1",
    ];
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for t in templates {
        for v in &nasty {
            let path = t.replace("{}", &enc(v));
            let resp = f.get(&path);
            *statuses.entry(resp.status).or_default() += 1;
            match resp.status {
                400 => assert!(resp.json["parameter"].is_string() && resp.json["error"].is_string(), "{path}: {}", resp.text),
                404 => assert!(resp.json["error"].is_string(), "{path}: {}", resp.text),
                200 => {
                    // Harmless: nothing matches such values.
                    let j = &resp.json;
                    let empty =
                        ["events", "rows", "per_day", "sessions", "cities"].iter().all(|k| j.get(*k).is_none_or(|v| v.as_array().is_some_and(Vec::is_empty)));
                    // Numbers are bounded or capped; times outside 1970..9999 are clamped ("to the end").
                    let numeric_ok = t.contains("limit=") || t.contains("days=") || t.contains("min_events=") || t.contains("since=") || t.contains("to=");
                    assert!(empty || numeric_ok, "{path} answered rows: {}", resp.text);
                }
                s => panic!("{path}: unexpected status {s}: {}", resp.text),
            }
        }
    }
    eprintln!("injection attempts by status: {statuses:?}");
    let after: Vec<Value> = ["rides", "app_events", "city_metrics"].iter().map(|t| count(t)).collect();
    assert_eq!(before, after, "the tables are untouched");
}

// ------------------------------------------------------------------ operations, auth, OpenAPI

#[test]
fn metrics_endpoint_counts_requests() {
    let Some(f) = fixture() else { return };
    f.get("/v1/metrics/city_metrics/latest");
    let resp = f.get("/metrics");
    assert_eq!(resp.status, 200);
    for needle in [
        "pulse_api_requests_total{route=\"/v1/metrics/{metric}/latest\",status=\"200\"}",
        "pulse_api_request_seconds_bucket",
        "pulse_api_clickhouse_query_seconds_bucket{query=\"metric_latest\"",
        "pulse_api_clickhouse_elapsed_seconds",
        "pulse_api_sse_subscribers",
        "pulse_api_sse_rows_total",
    ] {
        assert!(resp.text.contains(needle), "/metrics lacks {needle}");
    }
    assert_eq!(f.get("/ready").status, 200);
}

#[test]
fn clickhouse_unreachable_is_503() {
    let rt = rt();
    rt.block_on(async {
        let server = Server::start(spec(), &unreachable_clickhouse(), ApiConfig::default()).await;
        let c = server.http();
        for path in [
            "/v1/events/rides/abc",
            "/v1/events/rides?key=r-1",
            "/v1/metrics/city_metrics",
            "/v1/metrics/city_metrics/latest",
            "/v1/analytics/errors",
            "/v1/analytics/latency",
            "/v1/analytics/sessions/top-errors",
            "/v1/analytics/cities",
        ] {
            let resp = c.get(path).await;
            assert_eq!(resp.status, 503, "{path}: {}", resp.text);
            assert!(resp.headers.get("retry-after").is_some(), "{path}: Retry-After");
            assert!(resp.json["error"].as_str().is_some_and(|e| e.contains("ClickHouse")), "{path}: {}", resp.text);
        }
        // Validation still comes first.
        let resp = c.get("/v1/events/rides?key=r-1&limit=-1").await;
        assert_eq!(resp.status, 400);
        // Streams are not configured on this server.
        assert_eq!(c.get("/v1/stream/city_metrics").await.status, 503);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.get("/ready").await.status, 503);
        assert_eq!(c.get("/health").await.status, 200);
        server.shutdown.trigger();
    });
}

const READ_ALL: &str = "s3cret-two-0123456789";
const READ_CITY: &str = "s3cret-one-0123456789";

#[test]
fn keys_are_required_and_scoped() {
    let rt = rt();
    rt.block_on(async {
        let keys = ApiKeys::parse(&format!("{READ_CITY}:city_metrics|rides, {READ_ALL}")).expect("keys");
        let cfg = ApiConfig { keys, ..ApiConfig::default() };
        let server = Server::start(spec(), &unreachable_clickhouse(), cfg).await;
        let c = server.http();
        let all = format!("Bearer {READ_ALL}");
        let city = format!("Bearer {READ_CITY}");
        for path in ["/v1/events/rides/abc", "/v1/metrics/city_metrics", "/v1/analytics/cities", "/v1/stream/city_metrics", "/v1/metrics/nope"] {
            let resp = c.get(path).await;
            assert_eq!(resp.status, 401, "{path}");
            assert!(resp.json["error"].as_str().is_some_and(|e| e.contains("API key")));
            assert_eq!(resp.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
            let resp = c.get_with(path, &[("authorization", "Bearer s3cret-two-012345678")]).await;
            assert_eq!(resp.status, 401, "{path} with a wrong key");
            // With a key the request gets past authentication (ClickHouse is down: 503; unknown metric: 404).
            let resp = c.get_with(path, &[("authorization", &all)]).await;
            assert!(resp.status == 503 || resp.status == 404, "{path}: {}", resp.status);
        }
        // A scoped key: its metric and domain pass, others are 403.
        for path in ["/v1/metrics/city_metrics/latest", "/v1/events/rides/abc", "/v1/analytics/cities"] {
            assert_eq!(c.get_with(path, &[("authorization", &city)]).await.status, 503, "{path}");
        }
        for path in ["/v1/metrics/city_supply", "/v1/events/app_events/abc", "/v1/analytics/errors", "/v1/stream/event_metrics", "/v1/metrics/nope"] {
            let resp = c.get_with(path, &[("authorization", &city)]).await;
            assert_eq!(resp.status, 403, "{path}: {}", resp.text);
            assert!(resp.json["error"].is_string());
        }
        // Keys never go in URLs: the stream takes a short-lived token signed with the caller's key.
        assert_eq!(c.get(&format!("/v1/stream/city_metrics?api_key={READ_ALL}")).await.status, 401);
        assert_eq!(c.get(&format!("/v1/stream/city_metrics?token={READ_ALL}")).await.status, 401);
        assert_eq!(c.request("POST", "/v1/stream/city_metrics/token", &[], "").await.status, 401);
        assert_eq!(c.request("POST", "/v1/stream/city_supply/token", &[("authorization", &city)], "").await.status, 403);
        let t = c.request("POST", "/v1/stream/city_metrics/token", &[("authorization", &city)], "").await;
        assert_eq!(t.status, 200, "{}", t.text);
        let token = t.json["token"].as_str().expect("token").to_string();
        assert!(!token.contains(READ_CITY));
        assert_eq!(t.json["expires_in"], 60);
        // Streams are not configured here (503), which means the token got past authentication.
        assert_eq!(c.get(&format!("/v1/stream/city_metrics?city=Lima&token={}", enc(&token))).await.status, 503);
        assert_eq!(c.get(&format!("/v1/stream/city_supply?token={}", enc(&token))).await.status, 401, "a token is for one metric");
        assert_eq!(c.get(&format!("/v1/metrics/city_metrics?token={}", enc(&token))).await.status, 401, "only streams take tokens");
        for path in ["/health", "/metrics", "/openapi.json", "/"] {
            assert_eq!(c.get(path).await.status, 200, "{path} stays open");
        }
        assert_ne!(c.get("/ready").await.status, 401, "/ready stays open");
        server.shutdown.trigger();
    });
}

#[test]
fn per_key_rate_limits() {
    let rt = rt();
    rt.block_on(async {
        let keys = ApiKeys::parse(&format!("{READ_CITY}, {READ_ALL}")).expect("keys");
        let cfg = ApiConfig { keys, rate_limit: Some(2.0), rate_burst: Some(3.0), ..ApiConfig::default() };
        let server = Server::start(spec(), &unreachable_clickhouse(), cfg).await;
        let c = server.http();
        let one = format!("Bearer {READ_CITY}");
        for _ in 0..3 {
            assert_eq!(c.get_with("/v1/metrics/nope", &[("authorization", &one)]).await.status, 404);
        }
        let resp = c.get_with("/v1/metrics/nope", &[("authorization", &one)]).await;
        assert_eq!(resp.status, 429, "{}", resp.text);
        assert!(resp.headers.get("retry-after").is_some());
        // Another key has its own bucket.
        assert_eq!(c.get_with("/v1/metrics/nope", &[("authorization", &format!("Bearer {READ_ALL}"))]).await.status, 404);
        server.shutdown.trigger();
    });
}

#[test]
fn stream_subscribers_are_capped() {
    use rdkafka::mocking::MockCluster;
    let rt = rt();
    let mock = MockCluster::new(1).expect("mock cluster");
    let spec = spec();
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(&spec)).expect("topics");
    let kafka = pulse_kafka::KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(async {
        let cfg = ApiConfig { stream: Some(pulse_api::config::StreamConfig::new(kafka)), max_streams: 2, ..ApiConfig::default() };
        let server = Server::start(spec, &unreachable_clickhouse(), cfg).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !server.api.stream_ready() {
            assert!(std::time::Instant::now() < deadline, "stream consumer not assigned");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let subscribed: Vec<Arc<std::sync::atomic::AtomicBool>> = (0..2).map(|_| Arc::default()).collect();
        let readers: Vec<_> =
            subscribed.iter().map(|s| common::spawn_sse(format!("{}/v1/stream/city_metrics", server.url), Vec::new(), Arc::default(), Arc::clone(s))).collect();
        while !subscribed.iter().all(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            assert!(std::time::Instant::now() < deadline, "SSE clients did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = server.http();
        let resp = c.get("/v1/stream/city_supply").await;
        assert_eq!(resp.status, 503, "{}", resp.text);
        assert!(resp.headers.get("retry-after").is_some());
        assert!(resp.json["error"].as_str().is_some_and(|e| e.contains("open streams")), "{}", resp.text);
        // A closed stream frees its place.
        readers[0].abort();
        let free = format!("{}/v1/stream/city_supply", server.url);
        let again = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut third = None;
        while !again.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline + Duration::from_secs(10), "the freed place was not reused");
            if third.as_ref().is_none_or(|t: &tokio::task::JoinHandle<()>| t.is_finished()) {
                third = Some(common::spawn_sse(free.clone(), Vec::new(), Arc::default(), Arc::clone(&again)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.shutdown.trigger();
    });
}

#[test]
fn openapi_document_matches_the_routes() {
    let rt = rt();
    rt.block_on(async {
        let spec = spec();
        let catalog = pulse_api::catalog::Catalog::new(&spec, "pulse");
        let server = Server::start(Arc::clone(&spec), &unreachable_clickhouse(), ApiConfig::default()).await;
        let c = server.http();
        let doc = c.get("/openapi.json").await;
        assert_eq!(doc.status, 200);
        let doc = doc.json;
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().expect("paths");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(p, item)| item.as_object().expect("item").keys().map(|m| (m.to_uppercase(), pulse_api::openapi::route_of(p, &catalog))))
            .collect();
        let routed: BTreeSet<(String, String)> = pulse_api::routes::ROUTES.iter().map(|(m, p, _)| ((*m).to_string(), (*p).to_string())).collect();
        assert_eq!(documented, routed, "document and router");
        // Every documented route is served (not the router's fallback), and its path
        // parameters are documented; every $ref resolves.
        let text = serde_json::to_string(&doc).expect("json");
        for (p, item) in paths {
            let (method, op) = item.as_object().and_then(|o| o.iter().next()).expect("one operation");
            assert!(op["responses"]["200"].is_object(), "{p}: 200 documented");
            let params: Vec<&str> =
                op["parameters"].as_array().map(|a| a.iter().filter(|x| x["in"] == "path").filter_map(|x| x["name"].as_str()).collect()).unwrap_or_default();
            let in_path: Vec<&str> = p.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            assert_eq!(params, in_path, "{p}: path parameters");
            let concrete = p.replace("{domain}", "rides").replace("{id}", "x").replace("{metric}", "city_metrics");
            let resp = if method == "post" { c.request("POST", &concrete, &[], "").await } else { c.get(&concrete).await };
            assert!(!resp.text.contains("no such route"), "{p} is not routed: {}", resp.text);
            for s in op["responses"].as_object().expect("responses").keys() {
                assert!(s.parse::<u16>().is_ok(), "{p}: status {s}");
            }
        }
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').expect("end")];
            assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {name}");
        }
        // Undocumented paths are the fallback 404 (JSON); other methods are 405.
        let resp = c.get("/v1/secret").await;
        assert_eq!(resp.status, 404);
        assert!(resp.text.contains("no such route"));
        assert_eq!(c.request("POST", "/v1/metrics/city_metrics", &[], "").await.status, 405);
        // The live page is served.
        let page = c.get("/").await;
        assert!(page.text.contains("<title>Pulse") && page.headers.get("content-type").is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("text/html"))));
        server.shutdown.trigger();
    });
}

#[test]
fn cors_is_configurable() {
    let rt = rt();
    rt.block_on(async {
        let cfg = ApiConfig { cors_origins: vec!["http://dash.example".into()], ..ApiConfig::default() };
        let server = Server::start(spec(), &unreachable_clickhouse(), cfg).await;
        let c = server.http();
        let preflight = |origin: &'static str| {
            let c = c.clone();
            async move {
                let headers = [("origin", origin), ("access-control-request-method", "GET"), ("access-control-request-headers", "authorization")];
                c.request("OPTIONS", "/v1/metrics/city_metrics", &headers, "").await
            }
        };
        let resp = preflight("http://dash.example").await;
        assert_eq!(resp.header("access-control-allow-origin"), Some("http://dash.example"));
        let resp = preflight("http://evil.example").await;
        assert!(resp.header("access-control-allow-origin").is_none());
        let resp = c.get_with("/health", &[("origin", "http://dash.example")]).await;
        assert_eq!(resp.header("access-control-allow-origin"), Some("http://dash.example"));
        server.shutdown.trigger();
    });
}

#[test]
fn slow_queries_time_out_as_503() {
    let Some(f) = fixture() else { return };
    f.rt.block_on(async {
        let ch = ClickHouseConfig { timeout: Duration::from_millis(1), ..f.ch.clone() };
        let server = Server::start(Arc::clone(&f.spec), &ch, ApiConfig::default()).await;
        let resp = server.http().get("/v1/analytics/latency?limit=10").await;
        assert_eq!(resp.status, 503, "{}", resp.text);
        assert!(resp.headers.get("retry-after").is_some());
        assert!(resp.json["error"].as_str().is_some_and(|e| e.contains("in time") || e.contains("too long")), "{}", resp.text);
        server.shutdown.trigger();
    });
}
