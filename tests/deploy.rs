//! The deployment files, checked against the code: `docker-compose.yml` and
//! the `Dockerfile` (Docker cannot run here, so they are read, not run); and
//! the pages that document them (`README.md`, `docs/`): every variable and
//! spec key documented, every link pointing at a file and heading that exist.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use std::process::Command;

use serde_yaml::Value;

mod source;

use source::{code_variables, root};

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut v: Value = serde_yaml::from_str(&text).expect("valid YAML");
    // Resolve `<<: *anchor` merge keys, as docker compose does.
    v.apply_merge().expect("merge keys");
    v
}

/// Variables the Grafana provisioning, the ClickHouse config and the scripts read (not the binary).
fn deployment_variables() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join("grafana"), root().join("deploy"), root().join("scripts")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for (i, _) in text.match_indices("PULSE_") {
                let name: String = text[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    // Files the compose file defines inline (`configs: {name: {content: ...}}`), e.g. a ClickHouse users.d file.
    for (_, config) in compose()["configs"].as_mapping().into_iter().flatten() {
        let text = config["content"].as_str().unwrap_or_default();
        for (i, _) in text.match_indices("PULSE_") {
            out.insert(text[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect());
        }
    }
    out
}

fn subcommands() -> BTreeSet<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_pulse")).arg("--help").output().expect("pulse --help");
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut out = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            if let Some(cmd) = line.split_whitespace().next() {
                out.insert(cmd.to_string());
            }
        }
    }
    out
}

#[test]
fn compose_services_run_real_subcommands_with_known_variables() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().filter_map(|k| k.as_str().map(String::from)).collect();
    let commands = subcommands();
    let known = code_variables();
    let deployment = deployment_variables();
    let mut pulse_services = 0;
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        // depends_on names existing services.
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for dep in deps.keys() {
                assert!(names.contains(dep.as_str().expect("dependency")), "{name} depends on unknown {dep:?}");
            }
        }
        // Environment: every PULSE_* variable is one the code (or the provisioning) reads.
        let env = svc["environment"].as_mapping().cloned().unwrap_or_default();
        for k in env.keys().filter_map(|k| k.as_str()) {
            if k.starts_with("PULSE_") && k != "PULSE_KAFKA_BROKERS" && k.starts_with("PULSE_KAFKA_") {
                continue; // librdkafka passthrough
            }
            if k.starts_with("PULSE_") {
                assert!(known.contains(k) || deployment.contains(k), "{name}: {k} is read by nothing");
            }
        }
        if svc["image"].as_str() == Some("pulse:latest") {
            pulse_services += 1;
            let cmd = svc["command"].as_sequence().expect("pulse services name their subcommand");
            let sub = cmd[0].as_str().expect("subcommand");
            assert!(commands.contains(sub), "{name}: `pulse {sub}` is not a subcommand ({commands:?})");
            let status = Command::new(env!("CARGO_BIN_EXE_pulse"))
                .args(cmd.iter().filter_map(|a| a.as_str()))
                .arg("--help")
                .output()
                .expect("pulse <subcommand> --help");
            assert!(status.status.success(), "{name}: `pulse {} --help` fails", sub);
            // Long-running services have health checks on their /ready.
            if svc["restart"].as_str() != Some("no") {
                let test = svc["healthcheck"]["test"].as_sequence().expect("healthcheck");
                assert!(test.iter().any(|t| t.as_str().is_some_and(|s| s.ends_with("/ready"))), "{name}: healthcheck on /ready");
            }
        }
        // Mounted files exist.
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            if let Some(spec) = v.as_str()
                && spec.starts_with("./")
            {
                let host = spec.split(':').next().expect("host path");
                assert!(root().join(host).exists(), "{name}: mounts {host}, which does not exist");
            }
        }
    }
    assert!(pulse_services >= 6, "topics, migrate, ingest, sink, dataflow, api");
}

#[test]
fn compose_ports_match_the_defaults() {
    let c = compose();
    let svc = |n: &str| c["services"][n].clone();
    let env = |s: &Value, k: &str| s["environment"][k].as_str().map(String::from);
    let port_of = |addr: &str| addr.rsplit(':').next().expect("port").to_string();
    // Defaults in the code.
    let help = |args: &[&str]| {
        String::from_utf8_lossy(&Command::new(env!("CARGO_BIN_EXE_pulse")).args(args).arg("--help").output().expect("help").stdout).into_owned()
    };
    for (service, sub, var, default_port) in [
        ("ingest", "ingest", "PULSE_INGEST_ADDR", "8081"),
        ("api", "api", "PULSE_API_ADDR", "8080"),
        ("sink", "sink", "PULSE_SINK_METRICS_ADDR", "9101"),
        ("dataflow", "dataflow", "PULSE_DATAFLOW_METRICS_ADDR", "9102"),
    ] {
        let s = svc(service);
        let addr = env(&s, var).unwrap_or_else(|| panic!("{service}: {var}"));
        assert_eq!(port_of(&addr), default_port, "{service}: {var}");
        let h = help(&[sub]);
        assert!(h.contains(&format!(":{default_port}]")), "`pulse {sub}` defaults to port {default_port}:\n{h}");
        if let Some(ports) = s["ports"].as_sequence() {
            for p in ports {
                let p = p.as_str().expect("port mapping");
                assert!(p.ends_with(&format!(":{default_port}")), "{service}: {p}");
            }
        }
    }
    assert_eq!(env(&svc("ingest"), "PULSE_KAFKA_BROKERS").as_deref(), Some("kafka:9092"));
    let kafka = svc("kafka");
    let advertised = env(&kafka, "KAFKA_ADVERTISED_LISTENERS").expect("advertised listeners");
    assert!(advertised.contains("kafka:9092") && advertised.contains("localhost:29092"), "{advertised}");
    assert_eq!(env(&kafka, "KAFKA_PROCESS_ROLES").as_deref(), Some("broker,controller"), "KRaft mode");
    // The stores are reachable from this host only, not from every interface.
    for store in ["kafka", "clickhouse"] {
        for p in svc(store)["ports"].as_sequence().into_iter().flatten() {
            let p = p.as_str().expect("port mapping");
            assert!(p.starts_with("127.0.0.1:"), "{store} publishes {p} on every interface");
        }
    }
    // ClickHouse's first boot runs a loopback-only temporary server: the health
    // check must not be satisfied by it.
    let ch = svc("clickhouse")["healthcheck"]["test"].as_sequence().expect("healthcheck").iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(" ");
    assert!(!ch.contains("localhost") && !ch.contains("127.0.0.1"), "{ch}");
    // Alerts go to a receiver that exists: the compose file refuses to start without one.
    let webhook = env(&svc("grafana"), "PULSE_ALERT_WEBHOOK_URL").expect("webhook");
    assert!(webhook.starts_with("${PULSE_ALERT_WEBHOOK_URL:?"), "{webhook}");
}

#[test]
fn grafana_points_at_the_compose_clickhouse_and_its_read_only_user() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let env: HashMap<String, String> =
        g["environment"].as_mapping().expect("grafana env").iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect();
    assert!(c["services"][env["PULSE_GRAFANA_CLICKHOUSE_HOST"].as_str()].is_mapping(), "the data source host is a compose service");
    assert_eq!(env["PULSE_GRAFANA_CLICKHOUSE_PORT"], "8123");
    assert!(env["GF_PLUGINS_PREINSTALL_SYNC"].starts_with("grafana-clickhouse-datasource@4."), "plugin v4 pinned");
    let image = g["image"].as_str().expect("image");
    let version: Vec<u32> = image.rsplit(':').next().expect("tag").split('.').filter_map(|p| p.parse().ok()).collect();
    assert!(
        version.first().copied().unwrap_or(0) > 11 || (version.first() == Some(&11) && version.get(1).copied().unwrap_or(0) >= 6),
        "Grafana 11.6+: {image}"
    );
    let users = std::fs::read_to_string(root().join("deploy/clickhouse/users.d/grafana.xml")).expect("users file");
    let user = &env["PULSE_GRAFANA_CLICKHOUSE_USER"];
    assert!(users.contains(&format!("<{user}>")), "the ClickHouse users file defines {user}");
    assert!(users.contains("<readonly>") && users.contains("GRANT SELECT ON pulse.*") && !users.contains("GRANT ALL"), "SELECT only");
    let ds = std::fs::read_to_string(root().join("grafana/provisioning/datasources/clickhouse.yaml")).expect("datasource");
    for var in ["PULSE_GRAFANA_CLICKHOUSE_HOST", "PULSE_GRAFANA_CLICKHOUSE_PORT", "PULSE_GRAFANA_CLICKHOUSE_USER", "PULSE_GRAFANA_CLICKHOUSE_PASSWORD"] {
        assert!(ds.contains(&format!("${{{var}}}")), "the data source reads {var}");
        assert!(env.contains_key(var), "compose sets {var} for Grafana");
    }
    // Mounted where the provider looks.
    let provider = std::fs::read_to_string(root().join("grafana/provisioning/dashboards/pulse.yaml")).expect("provider");
    let mounts: Vec<&str> = g["volumes"].as_sequence().expect("volumes").iter().filter_map(|v| v.as_str()).collect();
    assert!(mounts.iter().any(|m| m.starts_with("./grafana/dashboards:") && provider.contains(m.split(':').nth(1).expect("target"))), "{mounts:?}");
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_ships_spec_and_grafana() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let froms = d.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    assert!(d.contains("cargo build --release --locked"), "release build from the lock file");
    assert!(d.contains("--mount=type=cache"), "cached dependencies");
    let last_user = d.lines().rfind(|l| l.starts_with("USER ")).expect("USER");
    assert!(!last_user.contains("root"), "non-root: {last_user}");
    for needed in ["COPY pulse.toml", "COPY grafana", "ENTRYPOINT [\"pulse\"]"] {
        assert!(d.contains(needed), "{needed}");
    }
}

/// `README.md` and the pages under `docs/`: the pages people read, checked here
/// against the code and against each other.
fn doc_pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(root().join("docs")).expect("docs/").flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
    pages.sort();
    paths.extend(pages);
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))).collect()
}

/// The lines of a Markdown page outside fenced code blocks.
fn prose(md: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    md.lines().filter(move |l| {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors of a page's headings, as GitHub makes them: lower case,
/// punctuation other than `-` and `_` dropped, spaces as `-`.
fn anchors(md: &str) -> BTreeSet<String> {
    prose(md)
        .filter_map(|l| {
            let title = l.trim_start_matches('#');
            (title.len() < l.len() && title.starts_with(' ')).then_some(title.trim())
        })
        .map(|t| t.to_lowercase().chars().filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_')).map(|c| if c == ' ' { '-' } else { c }).collect())
        .collect()
}

/// Targets of the page's Markdown links (`[text](target)`), outside code blocks.
fn links(md: &str) -> Vec<String> {
    prose(md).flat_map(|l| l.match_indices("](").map(move |(i, _)| l[i + 2..].split(')').next().unwrap_or_default().to_string())).collect()
}

#[test]
fn the_configuration_page_lists_every_environment_variable() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs/configuration.md");
    let documented: BTreeSet<String> = page.lines().filter(|l| l.starts_with("| `PULSE_")).filter_map(|l| l.split('`').nth(1).map(String::from)).collect();
    let code = code_variables();
    let missing: Vec<&String> = code
        .iter()
        .filter(|v| !documented.contains(*v) && !v.starts_with("PULSE_TEST") && !v.starts_with("PULSE_CRASH") && !v.starts_with("PULSE_SINK_CHILD"))
        .collect();
    assert!(missing.is_empty(), "docs/configuration.md lacks {missing:?}");
    let deployment = deployment_variables();
    let stale: Vec<&String> = documented.iter().filter(|v| !code.contains(*v) && !deployment.contains(*v) && !v.ends_with("_*")).collect();
    assert!(stale.is_empty(), "docs/configuration.md documents variables nothing reads: {stale:?}");
    // Every variable any page names is one something reads: the code, the
    // deployment files, the compose file, or librdkafka (`PULSE_KAFKA_<PROPERTY>`).
    let compose_text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    for (path, md) in doc_pages() {
        for (i, _) in md.match_indices("PULSE_") {
            let name: String = md[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
            let known =
                code.contains(&name) || deployment.contains(&name) || compose_text.contains(&name) || name.starts_with("PULSE_KAFKA_") || name == "PULSE_";
            assert!(known, "{} names {name}, which nothing reads", path.display());
        }
    }
}

#[test]
fn the_spec_page_documents_every_key_the_spec_accepts() {
    // The keys of the spec's TOML tables: the fields of the `Raw*` structs the
    // spec is deserialized into (or their `#[serde(rename)]`).
    let source = std::fs::read_to_string(root().join("model/src/spec/raw.rs")).expect("model/src/spec/raw.rs");
    let mut keys = BTreeSet::new();
    let mut in_raw = false;
    let mut rename = None;
    for line in source.lines().map(|l| l.trim().trim_start_matches("pub(super) ")) {
        if line.starts_with("struct Raw") {
            in_raw = true;
        } else if line == "}" {
            in_raw = false;
        } else if in_raw {
            if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(String::from);
            } else if let Some((field, _)) = line.split_once(':').filter(|_| !line.starts_with('#') && !line.starts_with("//")) {
                keys.insert(rename.take().unwrap_or_else(|| field.trim_start_matches("pub ").to_string()));
            }
        }
    }
    assert!(keys.len() > 30 && keys.contains("idle_timeout") && keys.contains("fn") && keys.contains("for"), "read the spec's keys: {keys:?}");
    // Alert rules are documented on their own page.
    let docs = ["docs/spec.md", "docs/alerts.md"].map(|p| std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))).concat();
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| ![format!("{k} ="), format!("`{k}`"), format!(" {k}`"), format!("[{k}]")].iter().any(|form| docs.contains(form.as_str())))
        .collect();
    assert!(undocumented.is_empty(), "docs/spec.md (or docs/alerts.md) does not document the spec keys {undocumented:?}");
}

#[test]
fn every_relative_link_of_the_readme_and_docs_points_at_a_file_and_heading() {
    let pages = doc_pages();
    let mut checked = 0;
    for (path, md) in &pages {
        for target in links(md) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() { path.clone() } else { path.parent().expect("a directory").join(file) };
            assert!(resolved.exists(), "{}: link {target} points at {}, which does not exist", path.display(), resolved.display());
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&resolved).unwrap_or_else(|e| panic!("{}: {e}", resolved.display()));
                assert!(anchors(&text).contains(anchor), "{}: link {target}: {} has no heading #{anchor}", path.display(), resolved.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "found only {checked} links");
    // The README leads to every page.
    let readme = &pages[0].1;
    for (path, _) in &pages[1..] {
        let name = path.file_name().expect("name").to_string_lossy();
        assert!(links(readme).iter().any(|l| l.split('#').next() == Some(&format!("docs/{name}"))), "README.md does not link docs/{name}");
    }
}

#[test]
fn compose_requires_secrets_and_the_api_reads_as_a_read_only_user() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    // Every key and password is required (`${VAR:?message}`): no defaults, no empty values.
    let mut secrets = 0;
    for (name, svc) in services {
        for (k, v) in svc["environment"].as_mapping().into_iter().flatten() {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else { continue };
            if k.contains("PASSWORD") || k.ends_with("API_KEYS") {
                secrets += 1;
                assert!(v.starts_with("${") && v.contains(":?") && v.ends_with('}'), "{name:?}: {k} must be required, not {v}");
            }
        }
    }
    assert!(secrets >= 8, "{secrets} secrets");
    // Separate write and read keys.
    let env = |s: &str, k: &str| c["services"][s]["environment"][k].as_str().map(String::from);
    assert!(env("ingest", "PULSE_INGEST_API_KEYS").is_some_and(|v| v.starts_with("${PULSE_INGEST_API_KEYS:?")));
    assert!(env("api", "PULSE_API_KEYS").is_some_and(|v| v.starts_with("${PULSE_API_KEYS:?")));
    assert!(env("ingest", "PULSE_API_KEYS").is_none(), "read keys are not write keys");
    // The API logs into ClickHouse as its own read-only user, defined by a users.d file mounted into the server.
    let admin = env("clickhouse", "CLICKHOUSE_USER").expect("admin user");
    let api_user = env("api", "PULSE_CLICKHOUSE_USER").expect("api user");
    assert_ne!(api_user, admin, "the API is not the admin");
    let api_password = env("api", "PULSE_CLICKHOUSE_PASSWORD").expect("api password");
    let var = api_password.trim_start_matches("${").split(":?").next().expect("variable").to_string();
    assert!(env("clickhouse", &var).is_some(), "the server gets {var} to read the API user's password from");
    let mounts = c["services"]["clickhouse"]["configs"].as_sequence().expect("clickhouse configs");
    let mount = mounts.iter().find(|m| m["target"].as_str().is_some_and(|t| t.starts_with("/etc/clickhouse-server/users.d/"))).expect("a users.d config");
    let source = mount["source"].as_str().expect("source");
    let users = c["configs"][source]["content"].as_str().expect("inline users file");
    assert!(users.contains(&format!("<{api_user}>")) && users.contains(&format!("<password from_env=\"{var}\"/>")), "{users}");
    assert!(users.contains("<readonly>") && users.contains("GRANT SELECT ON pulse.*") && !users.contains("GRANT ALL"), "SELECT only");
    // Secrets stay out of the image.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == ".env"), ".env is not excluded from the image");
}

/// Runs `pulse <args>` with the given variables (and no keys from the caller's environment)
/// until it exits or prints `wait_for` on stderr; its exit status (None: still running, killed) and stderr.
fn run_briefly(args: &[&str], env: &[(&str, &str)], wait_for: &str) -> (Option<std::process::ExitStatus>, String) {
    use std::io::BufRead as _;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse"));
    for var in ["PULSE_API_KEYS", "PULSE_READ_API_KEYS", "PULSE_INGEST_API_KEYS", "PULSE_INSECURE"] {
        cmd.env_remove(var);
    }
    let closed = pulse_testkit::free_port();
    let mut child = cmd
        .args(args)
        .env("PULSE_SPEC", root().join("pulse.toml"))
        .env("PULSE_KAFKA_BROKERS", format!("127.0.0.1:{closed}"))
        .env("PULSE_CLICKHOUSE_URL", format!("http://127.0.0.1:{closed}"))
        .env("PULSE_API_STREAM", "false")
        .env("PULSE_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pulse");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut out = String::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains(wait_for) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            out.extend(rx.try_iter().map(|l| l + "\n"));
            return (Some(status), out);
        }
        assert!(std::time::Instant::now() < deadline, "pulse {args:?} neither exited nor printed {wait_for:?}:\n{out}");
    }
    // Printed and exiting, or printed and running on: give it a moment to tell.
    let settle = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < settle {
        if let Ok(Some(status)) = child.try_wait() {
            return (Some(status), out);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, out)
}

#[test]
fn services_refuse_to_start_without_keys_unless_insecure() {
    let ingest_addr = ("PULSE_INGEST_ADDR", "127.0.0.1:0");
    let api_addr = ("PULSE_API_ADDR", "127.0.0.1:0");
    for (sub, addr, var) in [("ingest", ingest_addr, "PULSE_INGEST_API_KEYS"), ("api", api_addr, "PULSE_API_KEYS")] {
        let (status, err) = run_briefly(&[sub], &[addr], "refuses to start");
        assert!(status.is_some_and(|s| !s.success()), "pulse {sub} without keys: {status:?}\n{err}");
        assert!(err.contains("refuses to start without API keys") && err.contains(var) && err.contains("--insecure"), "{err}");
        // Malformed or weak keys are refused too.
        let (status, err) = run_briefly(&[sub], &[addr, (var, "short")], "must have");
        assert!(status.is_some_and(|s| !s.success()) && err.contains("16"), "pulse {sub} with a short key: {err}");
        // Scopes must name the spec's domains (ingest) or metrics and domains (api).
        let (status, err) = run_briefly(&[sub], &[addr, (var, "0123456789abcdef0123:nosuchthing")], "nosuchthing");
        assert!(status.is_some_and(|s| !s.success()), "pulse {sub} with an unknown scope: {err}");
        // --insecure starts, with a warning.
        let (status, err) = run_briefly(&[sub, "--insecure"], &[addr], "without authentication");
        assert!(status.is_none(), "pulse {sub} --insecure should keep running: {err}");
        let (status, _) = run_briefly(&[sub], &[addr, ("PULSE_INSECURE", "1")], "without authentication");
        assert!(status.is_none(), "PULSE_INSECURE=1");
    }
    // Read keys are not write keys: PULSE_API_KEYS alone does not open ingest.
    let (status, err) = run_briefly(&["ingest"], &[ingest_addr, ("PULSE_API_KEYS", "0123456789abcdef0123")], "refuses to start");
    assert!(status.is_some_and(|s| !s.success()), "{err}");
}
