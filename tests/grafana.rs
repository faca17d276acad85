//! The Grafana provisioning, checked the way Grafana and the ClickHouse plugin
//! would: structure, uids, references, durations and states; then every panel's
//! and the alert rule's SQL, with the plugin's macros expanded, runs against
//! ClickHouse holding what the real pipeline produced.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pulse_gen::{CITIES, GenConfig, Generator};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboards() -> Vec<(String, Json)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard");
            out.push((path.display().to_string(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Grafana's rule for uids: at most 40 of [A-Za-z0-9_-].
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 40 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_duration(d: &str) -> bool {
    let (num, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    !num.is_empty() && matches!(unit, "s" | "m" | "h" | "d")
}

fn datasource_uids() -> HashSet<String> {
    let ds = yaml("grafana/provisioning/datasources/clickhouse.yaml");
    ds["datasources"].as_sequence().expect("datasources").iter().map(|d| d["uid"].as_str().expect("uid").to_string()).collect()
}

#[test]
fn datasource_uses_the_plugin_v4_keys() {
    let ds = yaml("grafana/provisioning/datasources/clickhouse.yaml");
    assert_eq!(ds["apiVersion"].as_i64(), Some(1));
    let d = &ds["datasources"][0];
    assert_eq!(d["type"].as_str(), Some("grafana-clickhouse-datasource"));
    assert!(valid_uid(d["uid"].as_str().expect("uid")));
    for key in ["host", "port", "protocol", "username", "defaultDatabase"] {
        assert!(!d["jsonData"][key].is_null(), "jsonData.{key} missing");
    }
    for legacy in ["server", "url", "database"] {
        assert!(d["jsonData"][legacy].is_null(), "legacy key jsonData.{legacy}");
    }
    assert!(matches!(d["jsonData"]["protocol"].as_str(), Some("http" | "native")));
    assert!(d["secureJsonData"]["password"].as_str().is_some_and(|p| p.starts_with("${")), "password comes from the environment");
    assert!(d["jsonData"]["password"].is_null(), "no password in jsonData");
    let provider = yaml("grafana/provisioning/dashboards/pulse.yaml");
    assert_eq!(provider["providers"][0]["type"].as_str(), Some("file"));
    assert!(provider["providers"][0]["options"]["path"].as_str().is_some());
}

#[test]
fn dashboards_are_well_formed() {
    let uids = datasource_uids();
    let mut dash_uids = HashSet::new();
    for (path, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{path}: uid"));
        assert!(valid_uid(uid) && dash_uids.insert(uid.to_string()), "{path}: uid {uid}");
        assert_eq!(d["schemaVersion"].as_i64(), Some(41), "{path}");
        assert_eq!(d["refresh"].as_str(), Some("10s"), "{path}");
        assert!(d["time"]["from"].as_str().is_some() && d["time"]["to"].as_str().is_some(), "{path}: time range");
        let mut ids = HashSet::new();
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{path}: panels"));
        assert!(!panels.is_empty());
        for p in panels {
            let id = p["id"].as_i64().unwrap_or_else(|| panic!("{path}: panel id"));
            assert!(ids.insert(id), "{path}: duplicate panel id {id}");
            let g = &p["gridPos"];
            assert!(g["w"].as_i64().is_some_and(|w| (1..=24).contains(&w)) && g["h"].as_i64().is_some_and(|h| h > 0), "{path}: gridPos of {id}");
            assert!(g["x"].as_i64().unwrap_or(-1) + g["w"].as_i64().unwrap_or(0) <= 24, "{path}: panel {id} overflows the grid");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{path}: targets of {id}"));
            let mut refs = HashSet::new();
            for t in targets {
                assert!(refs.insert(t["refId"].as_str().expect("refId").to_string()), "{path}: duplicate refId in {id}");
                assert!(uids.contains(t["datasource"]["uid"].as_str().expect("datasource uid")), "{path}: unknown datasource in {id}");
                assert_eq!(t["editorType"].as_str(), Some("sql"));
                assert!(matches!(t["format"].as_i64(), Some(0 | 1)), "{path}: format of {id}");
                assert!(t["rawSql"].as_str().is_some_and(|s| !s.trim().is_empty()), "{path}: rawSql of {id}");
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(ds) = v["datasource"]["uid"].as_str() {
                assert!(uids.contains(ds), "{path}: variable datasource");
            }
        }
    }
    let city = dashboards().into_iter().find(|(_, d)| d["uid"] == "pulse-city-operations").expect("city dashboard").1;
    assert!(city["templating"]["list"].as_array().expect("variables").iter().any(|v| v["name"] == "city"), "city variable");
    let titles: Vec<&str> = city["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
    assert!(titles.iter().any(|t| t.contains("Cancellation rate")) && titles.iter().any(|t| t.contains("drivers")), "{titles:?}");
    let rate = city["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"].as_str().is_some_and(|t| t.starts_with("Cancellation rate by city")))
        .expect("rate panel");
    let steps = rate["fieldConfig"]["defaults"]["thresholds"]["steps"].as_array().expect("thresholds");
    assert!(steps.iter().any(|s| s["value"].as_f64() == Some(0.3)), "the 30% threshold is drawn");
}

#[test]
fn alert_rule_contact_point_and_policy_are_well_formed() {
    let a = yaml("grafana/provisioning/alerting/pulse.yaml");
    assert_eq!(a["apiVersion"].as_i64(), Some(1));
    let uids = datasource_uids();
    let group = &a["groups"][0];
    assert!(valid_duration(group["interval"].as_str().expect("interval")));
    let rule = &group["rules"][0];
    assert!(valid_uid(rule["uid"].as_str().expect("rule uid")));
    assert_eq!(rule["for"].as_str(), Some("5m"));
    assert!(matches!(rule["noDataState"].as_str(), Some("NoData" | "Alerting" | "OK" | "KeepLast")));
    assert!(matches!(rule["execErrState"].as_str(), Some("Alerting" | "Error" | "OK" | "KeepLast")));
    let data = rule["data"].as_sequence().expect("data");
    let refs: HashSet<&str> = data.iter().map(|d| d["refId"].as_str().expect("refId")).collect();
    assert_eq!(refs.len(), data.len(), "unique refIds");
    assert!(refs.contains(rule["condition"].as_str().expect("condition")), "condition names a refId");
    let thresholds: Vec<&Yaml> = data.iter().filter(|d| d["model"]["type"].as_str() == Some("threshold")).collect();
    assert_eq!(thresholds.len(), 1, "exactly one threshold expression");
    let conds = thresholds[0]["model"]["conditions"].as_sequence().expect("conditions");
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0]["evaluator"]["type"].as_str(), Some("gt"));
    assert_eq!(conds[0]["evaluator"]["params"][0].as_f64(), Some(0.3));
    for d in data {
        let ds = d["datasourceUid"].as_str().expect("datasourceUid");
        assert!(ds == "__expr__" || uids.contains(ds), "unknown datasource {ds}");
        assert!(d["relativeTimeRange"]["from"].as_i64().is_some());
        if let Some(e) = d["model"]["expression"].as_str() {
            assert!(refs.contains(e), "expression refers to {e}");
        }
    }
    let summary = rule["annotations"]["summary"].as_str().expect("summary");
    assert!(summary.contains("$labels.city") && summary.contains("$values.B"), "{summary}");
    let cp = &a["contactPoints"][0];
    let receiver = &cp["receivers"][0];
    assert_eq!(receiver["type"].as_str(), Some("webhook"));
    assert!(valid_uid(receiver["uid"].as_str().expect("receiver uid")));
    assert!(receiver["settings"]["url"].as_str().is_some_and(|u| u.contains("${PULSE_ALERT_WEBHOOK_URL}")));
    let policy = &a["policies"][0];
    assert_eq!(policy["receiver"].as_str(), cp["name"].as_str(), "policy routes to the contact point");
    assert!(policy["group_by"].as_sequence().expect("group_by").iter().any(|g| g.as_str() == Some("city")));
}

/// What the ClickHouse plugin does with a time-series result before Grafana
/// draws it: a "long" frame (a time column, value columns, string label
/// columns) becomes a wide frame with `data.LongToWide`, which refuses rows
/// whose time is not ascending. Returns the number of series (label sets).
fn long_to_wide(rows: &[Json]) -> Result<usize, String> {
    let mut last: Option<String> = None;
    let mut series = HashSet::new();
    for (i, r) in rows.iter().enumerate() {
        let time = r["time"]
            .as_str()
            .map(str::to_string)
            .or_else(|| r["time"].as_i64().map(|t| format!("{t:020}")))
            .ok_or_else(|| format!("row {i}: time is {}", r["time"]))?;
        if let Some(prev) = &last
            && time < *prev
        {
            return Err(format!("long series must be sorted ascending by time to be converted (row {i}: {time} after {prev})"));
        }
        let labels: Vec<String> = r.as_object().into_iter().flatten().filter(|(k, v)| *k != "time" && v.is_string()).map(|(k, v)| format!("{k}={v}")).collect();
        series.insert(labels);
        last = Some(time);
    }
    Ok(series.len())
}

/// Whether a time-series query sorts all of its rows: ClickHouse applies an
/// `ORDER BY` written after a top-level `UNION ALL` to the last branch only.
fn sorts_every_branch(sql: &str) -> bool {
    let upper = sql.to_uppercase();
    let mut depth = 0i32;
    let mut top_union = false;
    let mut top_order_after_union = false;
    let bytes = upper.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ if depth == 0 && upper[i..].starts_with("UNION ALL") => top_union = true,
            _ if depth == 0 && top_union && upper[i..].starts_with("ORDER BY") => top_order_after_union = true,
            _ => {}
        }
    }
    !(top_union && top_order_after_union)
}

#[test]
fn time_series_sort_every_branch_of_a_union() {
    assert!(!sorts_every_branch("SELECT 1 AS time UNION ALL SELECT 2 AS time ORDER BY time"));
    assert!(sorts_every_branch("SELECT * FROM (SELECT 1 AS time UNION ALL SELECT 2 AS time) ORDER BY time"));
    for (path, d) in dashboards() {
        for panel in d["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let sql = t["rawSql"].as_str().expect("sql");
                if t["format"].as_i64() == Some(0) {
                    assert!(sorts_every_branch(sql), "{path}: panel {:?} sorts only the last branch of its UNION ALL:\n{sql}", panel["title"]);
                }
            }
        }
    }
}

#[test]
fn long_to_wide_needs_ascending_time() {
    let rows: Vec<Json> = ["2026-12-02 10:00:00", "2026-12-02 10:01:00", "2026-12-02 10:00:00"]
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"time": t, "domain": format!("d{}", i % 2), "v": 1}))
        .collect();
    assert!(long_to_wide(&rows).is_err(), "a union whose ORDER BY sorted only its last branch");
    assert_eq!(long_to_wide(&rows[..2]), Ok(2));
}

/// Grafana's folder store as the provisioners see it: (uid, title) at the root.
#[derive(Default)]
struct Folders {
    folders: Vec<(String, String)>,
    /// Grafana setups where two folders may not share a title refuse the second.
    unique_titles: bool,
    generated: usize,
}

impl Folders {
    fn create(&mut self, uid: Option<&str>, title: &str) -> Result<String, String> {
        if self.unique_titles && self.folders.iter().any(|(_, t)| t == title) {
            return Err(format!("a folder with the title {title:?} already exists"));
        }
        let uid = uid.map(str::to_string).unwrap_or_else(|| {
            self.generated += 1;
            format!("generated-{}", self.generated)
        });
        if self.folders.iter().any(|(u, _)| *u == uid) {
            return Err(format!("a folder with uid {uid} already exists"));
        }
        self.folders.push((uid.clone(), title.to_string()));
        Ok(uid)
    }

    /// Alert rule file provisioning (Grafana 12, `rules_provisioner.go`
    /// `getOrCreateFolderByTitle`): a group's `folder` is a title; found by title,
    /// else created with a generated uid. Returns each group's folder uid.
    fn provision_alert_groups(&mut self, alerting: &Yaml) -> Result<Vec<String>, String> {
        let mut uids = Vec::new();
        for group in alerting["groups"].as_sequence().into_iter().flatten() {
            let title = group["folder"].as_str().filter(|t| !t.trim().is_empty()).ok_or("rule group has no folder set")?;
            assert!(group["folderUid"].is_null() && group["folderUID"].is_null(), "alert rule files have no folder uid: Grafana ignores it");
            let found = self.folders.iter().find(|(_, t)| t == title).map(|(u, _)| u.clone());
            uids.push(match found {
                Some(uid) => uid,
                None => self.create(None, title)?,
            });
        }
        Ok(uids)
    }

    /// Dashboard file providers (Grafana 12, `file_reader.go` `getOrCreateFolder`):
    /// with `folderUid` the folder is looked up by that uid only, else by title;
    /// when not found it is created with `folderUid` (or a generated uid).
    fn provision_dashboards(&mut self, providers: &Yaml) -> Result<Vec<String>, String> {
        let mut uids = Vec::new();
        for p in providers["providers"].as_sequence().into_iter().flatten() {
            let title = p["folder"].as_str().filter(|t| !t.is_empty()).ok_or("folder name missing")?;
            let folder_uid = p["folderUid"].as_str().filter(|u| !u.is_empty());
            assert_ne!(folder_uid, Some("general"), "folder uid `general` is refused");
            let found = match folder_uid {
                Some(uid) => self.folders.iter().find(|(u, _)| u == uid),
                None => self.folders.iter().find(|(_, t)| t == title),
            }
            .map(|(u, _)| u.clone());
            uids.push(match found {
                Some(uid) => uid,
                None => self.create(folder_uid, title)?,
            });
        }
        Ok(uids)
    }
}

#[test]
fn alert_rules_and_dashboards_share_one_folder() {
    let alerting = yaml("grafana/provisioning/alerting/pulse.yaml");
    let providers = yaml("grafana/provisioning/dashboards/pulse.yaml");
    for unique_titles in [false, true] {
        // Grafana provisions alert rules before dashboards; the other order must work too.
        for alerts_first in [true, false] {
            let mut grafana = Folders { unique_titles, ..Folders::default() };
            let (rules, dashboards) = if alerts_first {
                let r = grafana.provision_alert_groups(&alerting);
                (r, grafana.provision_dashboards(&providers))
            } else {
                let d = grafana.provision_dashboards(&providers);
                (grafana.provision_alert_groups(&alerting), d)
            };
            let what = format!("unique titles {unique_titles}, alerts first {alerts_first}");
            let rules = rules.unwrap_or_else(|e| panic!("{what}: alert rules not provisioned: {e}"));
            let dashboards = dashboards.unwrap_or_else(|e| panic!("{what}: dashboards not provisioned: {e}"));
            assert_eq!(grafana.folders.len(), 1, "{what}: folders {:?}", grafana.folders);
            assert!(rules.iter().chain(&dashboards).all(|u| *u == grafana.folders[0].0), "{what}: rules in {rules:?}, dashboards in {dashboards:?}");
        }
    }
}

/// The ClickHouse tables Pulse creates, by name: (ordering key, the time column
/// a query must bound, whether a replay can store a row twice).
fn tables() -> HashMap<String, (Vec<String>, String, bool)> {
    let spec = pulse_model::Spec::load(&root().join("pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut out = HashMap::new();
    for t in pulse_clickhouse::schema::all_tables(&spec) {
        // The first time column of the ordering key; a table ordered by id alone
        // (a mutable domain's raw table) is bounded on its time field (its TTL column).
        let key_time = t.order_by.iter().find(|c| t.column(c).is_some_and(|c| c.ty.starts_with("DateTime"))).cloned();
        // (Bookkeeping tables without a time column are not read by dashboards.)
        if let Some(time) = key_time.or_else(|| spec.domain(&t.name).map(|d| d.time_field().name.clone())) {
            out.insert(t.name.clone(), (t.order_by.clone(), time, t.engine.starts_with("ReplacingMergeTree")));
        }
    }
    out
}

/// Every query of the provisioning: (where, SQL).
fn all_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, d) in dashboards() {
        for panel in d["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                out.push((format!("{path}: panel {:?}", panel["title"]), t["rawSql"].as_str().expect("sql").to_string()));
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"].as_str() {
                out.push((format!("{path}: variable {}", v["name"]), q.to_string()));
            }
        }
    }
    let alerting = yaml("grafana/provisioning/alerting/pulse.yaml");
    for group in alerting["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            for d in rule["data"].as_sequence().expect("data") {
                if let Some(sql) = d["model"]["rawSql"].as_str() {
                    out.push((format!("alert rule {:?}", rule["uid"]), sql.to_string()));
                }
            }
        }
    }
    out
}

/// Each `FROM <table>` of a query, with the text up to the next `FROM` (its scope).
fn table_reads(sql: &str) -> Vec<(String, String)> {
    let starts: Vec<usize> = sql.match_indices("FROM ").map(|(i, _)| i).collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let end = starts.get(n + 1).copied().unwrap_or(sql.len());
            let name: String = sql[i + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (name, sql[i..end].to_string())
        })
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// Whether a query scope bounds `col` from below and above with the query's range.
fn bounds(scope: &str, col: &str) -> bool {
    scope.contains(&format!("$__timeFilter({col})"))
        || scope.contains(&format!("$__timeFilter_ms({col})"))
        || (scope.contains(&format!("{col} >= $__fromTime")) && scope.contains(&format!("{col} <= $__toTime")))
}

#[test]
fn every_query_reads_exactly_and_is_bounded_by_the_ordering_key() {
    let tables = tables();
    let spec = pulse_model::Spec::load(&root().join("pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut reads = 0;
    for (place, sql) in all_queries() {
        for (table, scope) in table_reads(&sql) {
            let Some((order, time, replacing)) = tables.get(&table) else { continue };
            reads += 1;
            // Raw tables (a replay stores rows twice until a merge) and metric tables
            // (one row per revision) are read with FINAL.
            if *replacing {
                assert!(scope.starts_with(&format!("FROM {table} FINAL")), "{place}: reads {table} without FINAL:\n{sql}");
            }
            assert!(
                bounds(&scope, time),
                "{place}: {table} is ordered by ({}) but the query does not bound {time} by the time range:\n{sql}",
                order.join(", ")
            );
            // A metric panel drawn at window_end shifts its window_start bounds by the window.
            if let Some(m) = spec.metric(&table)
                && scope.contains(&format!("{time} >= $__fromTime - INTERVAL"))
            {
                let want = format!(
                    "{time} >= $__fromTime - INTERVAL {} SECOND AND {time} <= $__toTime - INTERVAL {} SECOND",
                    m.window.ms() / 1000,
                    m.window.ms() / 1000
                );
                assert!(scope.contains(&want), "{place}: {table}'s windows last {}: expected `{want}`:\n{sql}", m.window);
            }
        }
    }
    assert!(reads >= 20, "{reads} table reads");
    // The alert decides on closed windows only.
    let alerting = yaml("grafana/provisioning/alerting/pulse.yaml");
    let sql = alerting["groups"][0]["rules"][0]["data"][0]["model"]["rawSql"].as_str().expect("alert sql");
    assert!(sql.contains("final = 1") && sql.contains("FROM city_metrics FINAL"), "the alert reads finals:\n{sql}");
    assert!(!sql.contains("window_end"), "the alert is bounded by window_start:\n{sql}");
}

/// The plugin's backend macros and the front end's variable expansion.
fn expand(sql: &str, from_s: i64, to_s: i64, interval_s: i64, cities: &[&str]) -> String {
    let mut out = sql.replace("${city:singlequote}", &cities.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(","));
    let macro_arg = |s: &str, name: &str| -> Option<(usize, usize, String)> {
        let start = s.find(name)?;
        let open = start + name.len();
        let close = open + s[open..].find(')')?;
        Some((start, close + 1, s[open + 1..close].to_string()))
    };
    while let Some((a, b, col)) = macro_arg(&out, "$__timeFilter_ms") {
        out.replace_range(a..b, &format!("{col} >= fromUnixTimestamp64Milli({}) AND {col} <= fromUnixTimestamp64Milli({})", from_s * 1000, to_s * 1000));
    }
    while let Some((a, b, col)) = macro_arg(&out, "$__timeFilter") {
        out.replace_range(a..b, &format!("{col} >= toDateTime({from_s}) AND {col} <= toDateTime({to_s})"));
    }
    while let Some((a, b, col)) = macro_arg(&out, "$__timeInterval") {
        out.replace_range(a..b, &format!("toStartOfInterval(toDateTime({col}), INTERVAL {interval_s} second)"));
    }
    out.replace("$__fromTime", &format!("toDateTime({from_s})"))
        .replace("$__toTime", &format!("toDateTime({to_s})"))
        .replace("$__interval_s", &interval_s.to_string())
}

#[test]
fn every_query_runs_on_pipeline_data_and_the_alert_fires_for_the_surging_city() {
    let Some(mut p) = support::Pipeline::start("pulse_grafana") else { return };
    // 20 minutes of events ending now; Amsterdam cancels 40% of its rides.
    let now = support::now_ms();
    let cfg = GenConfig {
        start_ms: now - 20 * 60_000,
        rate: 60.0,
        surge_after_ms: Some(0),
        surge_city: 0,
        surge_cancel_rate: 0.40,
        disorder_ms: 2_000,
        ..GenConfig::default()
    };
    let produced = p.produce(Generator::new(cfg).take(72_000)) as f64;
    // (Counting the raw tables would undercount: app-event versions collapse on insert.)
    p.wait_for("every record stored by the sink", Duration::from_secs(120), |p| {
        p.scalar("SELECT sum(value) FROM pulse_pipeline_stats WHERE service = 'sink' AND name = 'events_stored'") >= produced
    });
    p.wait_for("city windows near now", Duration::from_secs(120), |p| {
        p.scalar("SELECT toFloat64(count()) FROM city_metrics FINAL WHERE window_start >= now() - INTERVAL 10 MINUTE") >= 40.0
    });
    p.wait_for("pipeline stats", Duration::from_secs(30), |p| p.scalar("SELECT toFloat64(count()) FROM pulse_pipeline_stats") > 0.0);
    // The alert reads closed windows (finals) only.
    p.wait_for("closed city windows near now", Duration::from_secs(120), |p| {
        p.scalar("SELECT toFloat64(count()) FROM city_metrics FINAL WHERE final AND window_start >= now() - INTERVAL 15 MINUTE") >= 100.0
    });
    let raw: Vec<String> = p.spec.domains.iter().map(|d| d.name.clone()).collect();
    let reads_raw = |sql: &str| table_reads(sql).iter().any(|(t, _)| raw.contains(t));
    let mut raw_results = Vec::new();

    // The dashboard's time range ends now (rows were ingested after the events' times).
    let to = support::now_ms() / 1000;
    let from = to - 3600;
    let all: Vec<&str> = CITIES.to_vec();
    let mut ran = 0;
    for (path, d) in dashboards() {
        for panel in d["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let sql = expand(t["rawSql"].as_str().expect("sql"), from, to, 60, &all);
                let rows = p.rows(&sql);
                if reads_raw(&sql) {
                    // Without its LIMIT: ties under a LIMIT may come in any order.
                    let unlimited = sql.split("\nLIMIT ").next().unwrap_or(&sql).to_string();
                    let all_rows = if unlimited == sql { rows.clone() } else { p.rows(&unlimited) };
                    raw_results.push((unlimited, all_rows));
                }
                let title = panel["title"].as_str().unwrap_or_default();
                assert!(!rows.is_empty(), "{path}: panel {title:?} returned no rows:\n{sql}");
                // Time series need a time column; every query names its columns.
                if t["format"].as_i64() == Some(0) {
                    assert!(rows[0].get("time").is_some(), "{path}: {title:?} has no time column: {}", rows[0]);
                    long_to_wide(&rows).unwrap_or_else(|e| panic!("{path}: panel {title:?}: the plugin cannot convert the result: {e}\n{sql}"));
                }
                ran += 1;
            }
        }
        // Template variables run too.
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"].as_str() {
                assert!(!p.rows(&expand(q, from, to, 60, &all)).is_empty(), "{path}: variable {} has no values", v["name"]);
            }
        }
    }
    assert!(ran >= 18, "ran {ran} panel queries");

    // The alert query: one row per city with enough requests; above 0.3 only for Amsterdam.
    let alert = yaml("grafana/provisioning/alerting/pulse.yaml");
    let query = &alert["groups"][0]["rules"][0]["data"][0];
    let range = query["relativeTimeRange"]["from"].as_i64().expect("from");
    let sql = expand(query["model"]["rawSql"].as_str().expect("sql"), to - range, to, 60, &all);
    let rows = p.rows(&sql);
    let rates: HashMap<String, f64> =
        rows.iter().map(|r| (r["city"].as_str().expect("city").to_string(), r["cancellation_rate"].as_f64().expect("rate"))).collect();
    assert_eq!(rates.len(), 20, "a row per city: {rates:?}");
    let firing: Vec<&String> = rates.iter().filter(|(_, r)| **r > 0.3).map(|(c, _)| c).collect();
    assert_eq!(firing, vec!["Amsterdam"], "{rates:?}");

    // A sink replay (a crash after an insert, before its offsets were committed)
    // stores the same rows again; until ClickHouse merges them both copies are
    // there. Every raw-table panel shows the same figures as before.
    assert!(raw_results.len() >= 4, "{} raw-table panels", raw_results.len());
    for t in &raw {
        let copy = format!("SYSTEM STOP MERGES {t}\nINSERT INTO {t} SELECT * FROM {t}");
        for stmt in copy.lines() {
            p.rt.block_on(p.ch.client().query(stmt).execute()).unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
    }
    let (all_rows, distinct) = (p.scalar("SELECT toFloat64(count()) FROM rides"), p.scalar("SELECT toFloat64(count()) FROM rides FINAL"));
    assert_eq!(all_rows, 2.0 * distinct, "every ride is stored twice now");
    let sorted = |rows: &[Json]| {
        let mut v: Vec<String> = rows.iter().map(Json::to_string).collect();
        v.sort();
        v
    };
    for (sql, before) in &raw_results {
        assert_eq!(sorted(&p.rows(sql)), sorted(before), "a replay changed what this query shows:\n{sql}");
    }
    p.stop();
}
