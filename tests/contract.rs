//! Both HTTP services against their own OpenAPI documents: schemathesis (from
//! PyPI, in the test venv: `scripts/setup.sh --for-tests`) generates requests
//! from `/openapi.json`, valid and invalid, and checks every answer against the
//! document (status codes, bodies, headers, content types), that valid input is
//! accepted and invalid input refused, and that nothing answers 5xx. The
//! services run as separate processes with keys configured.

mod support;

use std::path::PathBuf;
use std::process::Command;

use pulse_testkit::stack_brokers;
use support::procs::{Deployment, READ_KEY, WRITE_KEY, wait_ready};

/// The schemathesis CLI: `PULSE_SCHEMATHESIS`, else the test venv's.
fn schemathesis() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PULSE_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var("PULSE_CACHE").map(PathBuf::from).ok().or_else(|| std::env::var("HOME").ok().map(|h| PathBuf::from(h).join(".cache/pulse")))?;
    let bin = cache.join("venv/bin/schemathesis");
    bin.exists().then_some(bin)
}

fn run(st: &std::path::Path, dir: &std::path::Path, url: &str, key: &str, extra: &[&str]) -> (bool, String) {
    // Invalid input may also be refused as too large (413: a generated string past a length limit can
    // make the body exceed the size limit) or unsupported (415).
    let config = dir.join("schemathesis.toml");
    // The analytics refuse a `from`..`to` span over 31 days: a rule across two parameters, which
    // JSON Schema cannot state, so valid-looking pairs may be refused there (and only there).
    let mut text = "[checks.negative_data_rejection]\nexpected-statuses = [\"400\", \"401\", \"403\", \"404\", \"405\", \"406\", \"409\", \"413\", \"415\", \"422\", \"428\", \"429\"]\n".to_string();
    // Likewise a timeline's `cursor` is opaque: only cursors the API returned are accepted.
    for path in ["^/v1/analytics/", "^/v1/events/[a-z_]+$"] {
        text.push_str(&format!("\n[[operations]]\ninclude-path-regex = \"{path}\"\nchecks.positive_data_acceptance.enabled = false\n"));
    }
    std::fs::write(&config, text).expect("schemathesis config");
    let out = Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{url}/openapi.json"), "--header", &format!("Authorization: Bearer {key}")])
        .args(["--max-examples", "15", "--seed", "20", "--workers", "2", "--max-time", "75", "--request-timeout", "10", "--no-color"])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", "")
        // Its example database and reports go to the deployment's directory, not the work tree.
        .current_dir(dir)
        .output()
        .expect("run schemathesis");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn both_services_hold_to_their_openapi_documents() {
    let Some(brokers) = stack_brokers() else { return };
    let Some(st) = schemathesis() else {
        eprintln!("skipped: no schemathesis (scripts/setup.sh --for-tests installs it into the test venv)");
        return;
    };
    let mut d = Deployment::new("pulse-contract", &brokers);
    // Generated traffic comes fast: no rate limits here (they have their own tests).
    d.env.push(("PULSE_INGEST_RATE_LIMIT".into(), "0".into()));
    d.env.push(("PULSE_API_RATE_LIMIT".into(), "0".into()));
    let mut ingest = d.start("ingest", &["ingest"]);
    let mut api = d.start("api", &["api"]);
    wait_ready(&format!("http://127.0.0.1:{}/ready", d.ingest_port), &mut ingest);
    wait_ready(&format!("http://127.0.0.1:{}/ready", d.api_port), &mut api);
    // Ingest: an event's time must lie within the domain's bounds around the server's clock, and
    // string limits are in UTF-8 bytes; JSON Schema can say neither, so "valid by the schema" events
    // may be refused (400): the check that valid input is accepted is left out for ingest.
    let (ok_ingest, out_ingest) = run(&st, &d.dir, &d.ingest_url(), WRITE_KEY, &["--exclude-checks", "positive_data_acceptance"]);
    let (ok_api, out_api) = run(&st, &d.dir, &format!("http://127.0.0.1:{}", d.api_port), READ_KEY, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    drop((ingest, api));
    d.remove(&rt);
    if let Ok(dir) = std::env::var("PULSE_CONTRACT_OUT") {
        let _ = std::fs::write(format!("{dir}/ingest.txt"), &out_ingest);
        let _ = std::fs::write(format!("{dir}/api.txt"), &out_api);
    }
    assert!(ok_ingest, "schemathesis against ingest:\n{out_ingest}");
    assert!(ok_api, "schemathesis against the API:\n{out_api}");
}
