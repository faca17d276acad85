//! The Kubernetes manifests (`deploy/kubernetes/`, kustomize), checked against
//! the code as `tests/deploy.rs` checks the compose file: every manifest parses
//! and is a kind Kubernetes serves, the containers run real subcommands with
//! variables the code reads, probes ask real endpoints on the ports the
//! services listen on, Services and autoscalers point at what exists, the sink
//! has no more replicas than partitions, and the dataflow's StatefulSet forms
//! one timely cluster (hostfile, process index, process count agree).
//!
//! With `kubectl` on the PATH the base and the example overlay are rendered by
//! its kustomize (`kubectl kustomize`), as `kubectl apply -k` would; without it
//! the base is assembled here (resources and generated ConfigMaps).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

mod source;

use source::{code_variables, root};

fn kube() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn parse_all(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text).map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}"))).filter(|v| !v.is_null()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// The kinds the manifests may use, by apiVersion (all GA APIs).
const KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
];

/// RFC 1123 label names (most object names; ≤ 63 here so they can also be labels).
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[test]
fn every_manifest_parses_and_uses_served_kinds() {
    let mut files = Vec::new();
    yaml_files(&kube(), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for f in &files {
        let docs = parse_all(&read(f), &f.display().to_string());
        assert!(!docs.is_empty(), "{}: empty", f.display());
        for d in docs {
            let (api, kind) = (s(&d["apiVersion"], "apiVersion"), s(&d["kind"], "kind"));
            assert!(KINDS.contains(&(api, kind)), "{}: {api} {kind} is not one of {KINDS:?}", f.display());
            if kind == "Kustomization" {
                continue;
            }
            let name = s(&d["metadata"]["name"], "metadata.name");
            assert!(dns_label(name), "{}: name {name:?}", f.display());
        }
    }
}

/// A kustomization's references exist: resources, patch files, generator files.
#[test]
fn kustomizations_refer_to_files_that_exist() {
    for dir in ["base", "overlays/example"] {
        let dir = kube().join(dir);
        let k: Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml"))).expect("kustomization");
        for r in seq(&k["resources"]) {
            let p = dir.join(s(r, "resource"));
            assert!(p.exists(), "{}: resource {} does not exist", dir.display(), p.display());
        }
        for p in seq(&k["patches"]) {
            if let Some(path) = p["path"].as_str() {
                assert!(dir.join(path).exists(), "{}: patch {path} does not exist", dir.display());
            }
        }
        for g in seq(&k["configMapGenerator"]).iter().chain(seq(&k["secretGenerator"])) {
            for f in seq(&g["files"]).iter().chain(seq(&g["envs"])) {
                let f = s(f, "file");
                let f = f.split_once('=').map_or(f, |(_, p)| p);
                assert!(dir.join(f).exists(), "{}: generator file {f} does not exist", dir.display());
            }
        }
    }
}

#[test]
fn the_deployed_spec_is_the_repository_spec() {
    let copy = kube().join("base/pulse.toml");
    assert_eq!(
        read(&copy),
        read(&root().join("pulse.toml")),
        "deploy/kubernetes/base/pulse.toml differs from pulse.toml: cp pulse.toml deploy/kubernetes/base/pulse.toml"
    );
    pulse_model::Spec::load(&copy).unwrap_or_else(|e| panic!("{e}"));
}

/// Renders a kustomization: `kubectl kustomize` when kubectl is here, else
/// (base only) its resources plus its generated ConfigMaps, unhashed.
fn render(dir: &str) -> Option<Vec<Value>> {
    let path = kube().join(dir);
    if let Ok(out) = Command::new("kubectl").arg("kustomize").arg(&path).output() {
        assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
        return Some(parse_all(&String::from_utf8_lossy(&out.stdout), dir));
    }
    if dir != "base" {
        return None;
    }
    let k: Value = serde_yaml::from_str(&read(&path.join("kustomization.yaml"))).expect("kustomization");
    let mut docs = Vec::new();
    for r in seq(&k["resources"]) {
        docs.extend(parse_all(&read(&path.join(s(r, "resource"))), "resource"));
    }
    for g in seq(&k["configMapGenerator"]) {
        let mut data = serde_yaml::Mapping::new();
        for l in seq(&g["literals"]) {
            let (key, value) = s(l, "literal").split_once('=').expect("KEY=value");
            data.insert(key.into(), value.into());
        }
        for f in seq(&g["files"]) {
            let f = s(f, "file");
            data.insert(f.into(), read(&path.join(f)).into());
        }
        let mut cm = serde_yaml::Mapping::new();
        cm.insert("apiVersion".into(), "v1".into());
        cm.insert("kind".into(), "ConfigMap".into());
        let mut meta = serde_yaml::Mapping::new();
        meta.insert("name".into(), g["name"].clone());
        cm.insert("metadata".into(), meta.into());
        cm.insert("data".into(), data.into());
        docs.push(cm.into());
    }
    Some(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn help(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pulse")).args(args).arg("--help").output().expect("pulse --help");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn subcommands() -> BTreeSet<String> {
    let (_, text) = help(&[]);
    let mut out = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
        } else if in_commands {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            out.extend(line.split_whitespace().next().map(String::from));
        }
    }
    out
}

/// Where each long-running subcommand serves HTTP: its address variable, the
/// default port (`pulse <sub> --help`), and the sources that define its routes.
const SERVICES: &[(&str, &str, u16, &[&str])] = &[
    ("ingest", "PULSE_INGEST_ADDR", 8081, &["ingest/src", "ops/src"]),
    ("api", "PULSE_API_ADDR", 8080, &["api/src", "ops/src"]),
    ("sink", "PULSE_SINK_METRICS_ADDR", 9101, &["ops/src"]),
    ("dataflow", "PULSE_DATAFLOW_METRICS_ADDR", 9102, &["ops/src"]),
];

fn source_has(dirs: &[&str], needle: &str) -> bool {
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| root().join(d)).collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && std::fs::read_to_string(&p).unwrap_or_default().contains(needle) {
                return true;
            }
        }
    }
    false
}

/// A container's environment: its `env` names and values (None: from a secret
/// or the downward API) plus every key of the ConfigMaps it takes with `envFrom`.
fn environment(c: &Value, docs: &[Value]) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for from in seq(&c["envFrom"]) {
        let name = s(&from["configMapRef"]["name"], "envFrom configMapRef");
        let cm = find(docs, "ConfigMap", name).unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which is not deployed"));
        for (k, v) in cm["data"].as_mapping().expect("data") {
            env.insert(s(k, "key").to_string(), v.as_str().map(String::from));
        }
    }
    for e in seq(&c["env"]) {
        env.insert(s(&e["name"], "env name").to_string(), e["value"].as_str().map(String::from));
    }
    env
}

/// The workloads running Pulse: (kind/name, the object).
fn workloads(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet" | "Job")))
        .map(|d| (format!("{}/{}", s(&d["kind"], "kind"), s(&d["metadata"]["name"], "name")), d))
        .collect()
}

fn check(docs: &[Value], what: &str) {
    let commands = subcommands();
    let known = code_variables();
    let spec = pulse_model::Spec::load(&root().join("pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = BTreeSet::new();
    for (name, workload) in workloads(docs) {
        let pod = &workload["spec"]["template"]["spec"];
        for c in seq(&pod["containers"]) {
            let image = s(&c["image"], "image");
            assert!(image == "pulse" || image.contains("pulse:") || image.ends_with("/pulse"), "{what} {name}: image {image}");
            let args: Vec<&str> = seq(&c["args"]).iter().map(|a| s(a, "arg")).collect();
            let sub = *args.first().unwrap_or_else(|| panic!("{what} {name}: the container names its subcommand in args"));
            assert!(commands.contains(sub), "{what} {name}: `pulse {sub}` is not a subcommand ({commands:?})");
            assert!(help(&args).0, "{what} {name}: `pulse {} --help` fails", args.join(" "));
            seen.insert(sub.to_string());

            // Variables: only ones the code reads (librdkafka's PULSE_KAFKA_<PROPERTY> pass through).
            let env = environment(c, docs);
            for k in env.keys() {
                let passthrough = k.starts_with("PULSE_KAFKA_") && k != "PULSE_KAFKA_BROKERS";
                assert!(passthrough || known.contains(k), "{what} {name}: {k} is read by nothing");
            }
            for e in seq(&c["env"]) {
                if let Some(key) = e["valueFrom"]["secretKeyRef"].as_mapping() {
                    assert_eq!(key.get("name").and_then(Value::as_str), Some("pulse-secrets"), "{what} {name}: secrets come from pulse-secrets");
                }
            }
            // The spec is mounted where PULSE_SPEC points.
            let spec_path = env.get("PULSE_SPEC").cloned().flatten().unwrap_or_else(|| panic!("{what} {name}: PULSE_SPEC"));
            let mounted = seq(&c["volumeMounts"]).iter().any(|m| {
                let vol = seq(&pod["volumes"]).iter().find(|v| v["name"] == m["name"]).expect("mounted volume");
                vol["configMap"]["name"].as_str().is_some_and(|n| n.starts_with("pulse-spec"))
                    && spec_path.strip_prefix(s(&m["mountPath"], "mountPath")).is_some_and(|rest| rest.trim_start_matches('/') == "pulse.toml")
            });
            assert!(mounted, "{what} {name}: the spec ConfigMap is not mounted at {spec_path}");
            if let Some(cm) = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("pulse-spec"))) {
                let text = s(&cm["data"]["pulse.toml"], "pulse.toml");
                pulse_model::Spec::parse(Path::new("pulse.toml"), text).unwrap_or_else(|e| panic!("{what}: the deployed spec: {e}"));
            }

            if name.starts_with("Job/") {
                assert!(matches!(pod["restartPolicy"].as_str(), Some("OnFailure" | "Never")), "{what} {name}: restartPolicy");
                assert!(matches!(sub, "topics" | "migrate"), "{what} {name}: one-shot jobs are topics and migrate");
                let wait = env.get("PULSE_WAIT").cloned().flatten().unwrap_or_else(|| panic!("{what} {name}: PULSE_WAIT"));
                assert!(pulse_model::parse_duration(&wait).is_ok(), "{what} {name}: PULSE_WAIT={wait}");
                continue;
            }

            // Services: probes on their real endpoints and ports.
            let &(_, addr_var, default_port, sources) =
                SERVICES.iter().find(|(s, ..)| *s == sub).unwrap_or_else(|| panic!("{what} {name}: `pulse {sub}` is not a long-running service"));
            let addr = env.get(addr_var).cloned().flatten().unwrap_or_else(|| panic!("{what} {name}: {addr_var}"));
            let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{what} {name}: {addr_var}={addr}"));
            assert_eq!(port, default_port, "{what} {name}: {addr_var}");
            assert!(help(&[sub]).1.contains(&format!(":{default_port}]")), "`pulse {sub}` defaults to port {default_port}");
            let ports: BTreeMap<String, u64> = seq(&c["ports"])
                .iter()
                .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p["containerPort"].as_u64().expect("containerPort")))
                .collect();
            assert!(ports.values().any(|p| *p == u64::from(port)), "{what} {name}: containerPort {port} is not declared ({ports:?})");
            for (probe, want) in [("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
                let get = &c[probe]["httpGet"];
                let path = s(&get["path"], probe);
                assert_eq!(path, want, "{what} {name}: {probe}");
                assert!(source_has(sources, &format!("\"{path}\"")), "{what} {name}: `pulse {sub}` serves no {path}");
                let probe_port = match &get["port"] {
                    Value::Number(n) => n.as_u64().expect("port"),
                    Value::String(p) => *ports.get(p).unwrap_or_else(|| panic!("{what} {name}: {probe} names port {p}, which the container lacks")),
                    other => panic!("{what} {name}: {probe} port {other:?}"),
                };
                assert_eq!(probe_port, u64::from(port), "{what} {name}: {probe} asks a port `pulse {sub}` does not listen on");
            }
            if sub == "sink" {
                let min_partitions = spec.domains.iter().map(|d| d.partitions).min().expect("domains");
                let replicas = workload["spec"]["replicas"].as_i64().unwrap_or(1);
                assert!(replicas <= i64::from(min_partitions), "{what} {name}: {replicas} replicas for topics of {min_partitions} partitions");
            }
        }
    }
    for needed in ["topics", "migrate", "ingest", "api", "sink", "dataflow"] {
        assert!(seen.contains(needed), "{what}: nothing runs `pulse {needed}`");
    }

    // Services select pods that exist and target ports they declare.
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        let svc_name = s(&svc["metadata"]["name"], "name");
        let selector = svc["spec"]["selector"].as_mapping().expect("selector");
        let pods: Vec<&Value> = workloads(docs)
            .into_iter()
            .map(|(_, w)| &w["spec"]["template"])
            .filter(|t| selector.iter().all(|(k, v)| t["metadata"]["labels"].get(k) == Some(v)))
            .collect();
        assert!(!pods.is_empty(), "{what}: Service {svc_name} selects no pods");
        for p in seq(&svc["spec"]["ports"]) {
            let target = &p["targetPort"];
            for pod in &pods {
                let ok = seq(&pod["spec"]["containers"]).iter().flat_map(|c| seq(&c["ports"])).any(|cp| match target {
                    Value::String(n) => cp["name"] == n.as_str(),
                    Value::Number(n) => cp["containerPort"].as_u64() == n.as_u64(),
                    _ => cp["containerPort"] == p["port"],
                });
                assert!(ok, "{what}: Service {svc_name} targets port {target:?}, which its pods lack");
            }
        }
    }
    // Autoscalers scale Deployments that exist.
    for hpa in docs.iter().filter(|d| d["kind"] == "HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert!(find(docs, s(&target["kind"], "kind"), s(&target["name"], "name")).is_some(), "{what}: HPA scales {target:?}, which does not exist");
        assert!(hpa["spec"]["minReplicas"].as_i64() <= hpa["spec"]["maxReplicas"].as_i64());
    }
    timely_cluster(docs, what);
}

/// The dataflow's StatefulSet is one timely cluster: as many processes as pods,
/// a hostfile naming each pod (by ordinal) under the headless Service on the
/// timely port, and each process's index from its pod's ordinal.
fn timely_cluster(docs: &[Value], what: &str) {
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap_or_else(|| panic!("{what}: no StatefulSet for the dataflow"));
    let name = s(&sts["metadata"]["name"], "name");
    let spec = &sts["spec"];
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"), "{what}: the cluster's pods start and restart together");
    let replicas = spec["replicas"].as_u64().expect("replicas");
    let service = s(&spec["serviceName"], "serviceName");
    let svc = find(docs, "Service", service).unwrap_or_else(|| panic!("{what}: serviceName {service} is not a Service"));
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"), "{what}: {service} is headless (per-pod DNS names)");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"].as_bool(), Some(true), "{what}: peers resolve each other before they are ready");
    let pod = &spec["template"]["spec"];
    let c = seq(&pod["containers"]).iter().find(|c| seq(&c["args"]).first().and_then(Value::as_str) == Some("dataflow")).expect("dataflow container");
    let env = environment(c, docs);
    let processes: u64 = env.get("PULSE_DATAFLOW_PROCESSES").cloned().flatten().and_then(|v| v.parse().ok()).expect("PULSE_DATAFLOW_PROCESSES");
    assert_eq!(processes, replicas, "{what}: PULSE_DATAFLOW_PROCESSES and replicas");
    let index = seq(&c["env"]).iter().find(|e| e["name"] == "PULSE_DATAFLOW_PROCESS").expect("PULSE_DATAFLOW_PROCESS");
    assert_eq!(
        index["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']"),
        "{what}: the process index is the pod's ordinal"
    );
    // The hostfile: the file PULSE_DATAFLOW_HOSTFILE names, in a mounted ConfigMap.
    let hostfile = env.get("PULSE_DATAFLOW_HOSTFILE").cloned().flatten().expect("PULSE_DATAFLOW_HOSTFILE");
    let (dir, key) = hostfile.rsplit_once('/').expect("a file path");
    let mount = seq(&c["volumeMounts"]).iter().find(|m| m["mountPath"] == dir).unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir}"));
    let volume = seq(&pod["volumes"]).iter().find(|v| v["name"] == mount["name"]).expect("volume");
    let cm = find(docs, "ConfigMap", s(&volume["configMap"]["name"], "configMap")).expect("hostfile ConfigMap");
    let text = s(&cm["data"][key], "hostfile");
    // As `pulse dataflow` reads it (src/dataflow_cmd.rs `cluster_of`): blank lines and # comments skipped.
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let timely_port = seq(&c["ports"]).iter().find(|p| p["name"] == "timely").and_then(|p| p["containerPort"].as_u64()).expect("timely port");
    assert_eq!(lines.len() as u64, processes, "{what}: the hostfile lists {} processes, -n says {processes}", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{name}-{i}.{service}:{timely_port}"), "{what}: hostfile line {i} is not pod {i}");
    }
    assert!(seq(&svc["spec"]["ports"]).iter().any(|p| p["port"].as_u64() == Some(timely_port)), "{what}: {service} exposes the timely port");
}

#[test]
fn the_base_runs_real_subcommands_with_known_variables_and_probes() {
    let docs = render("base").expect("the base renders");
    check(&docs, "base");
}

#[test]
fn the_example_overlay_renders_consistently() {
    let Some(docs) = render("overlays/example") else {
        eprintln!("kubectl not found: the overlay is checked for references only");
        return;
    };
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "pulse"), "every object in namespace pulse");
    check(&docs, "overlays/example");
}

#[test]
fn the_kubernetes_page_explains_the_deployment_and_its_secret() {
    let page = read(&root().join("docs/kubernetes.md"));
    assert!(read(&root().join("README.md")).contains("](docs/kubernetes.md)"), "the README links the Kubernetes page");
    assert!(page.contains("kubectl apply -k deploy/kubernetes/overlays/example"), "how to apply");
    // The secret command creates every key the manifests read.
    let mut keys = BTreeSet::new();
    for (_, workload) in workloads(&render("base").expect("base")) {
        for c in seq(&workload["spec"]["template"]["spec"]["containers"]) {
            for e in seq(&c["env"]) {
                if let Some(k) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                    keys.insert(k.to_string());
                }
            }
        }
    }
    for k in &keys {
        assert!(page.contains(&format!("--from-literal={k}=")), "docs/kubernetes.md's secret command lacks {k}");
    }
}
