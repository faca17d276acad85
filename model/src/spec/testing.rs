//! Helpers shared by the spec's tests: the default spec and a small base spec
//! that test snippets are appended to.

use std::path::Path;

use super::Spec;

pub(crate) fn default_spec() -> Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
    match Spec::load(&path) {
        Ok(s) => s,
        Err(e) => panic!("default spec must be valid:\n{e}"),
    }
}

pub(super) const BASE: &str = r#"
[[domain]]
name = "rides"
topic = "ride-events"
key = "ride_id"
time_field = "ts"
fields = [
  { name = "ride_id", type = "string" },
  { name = "city", type = "string", dimension = true },
  { name = "kind", type = "enum", values = ["a", "b"] },
  { name = "fare", type = "float" },
  { name = "ts", type = "timestamp" },
]
"#;

pub(super) fn errors(extra: &str) -> Vec<String> {
    let text = format!("{BASE}{extra}");
    match Spec::parse(Path::new("t.toml"), &text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn assert_error(extra: &str, line: usize, needle: &str) {
    let errs = errors(extra);
    assert!(
        errs.iter().any(|e| e.starts_with(&format!("t.toml:{line}: ")) && e.contains(needle)),
        "expected an error at line {line} containing {needle:?}, got {errs:#?}"
    );
}

pub(super) const METRIC_HEAD: &str = "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"city\"]\n";
// BASE ends at line 13; METRIC_HEAD fills lines 14..=18, so the next line is 19.

pub(super) const ALERT_METRIC: &str =
    "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"city\"]\nwindow = \"5m\"\nslide = \"1m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
// BASE ends at line 13, ALERT_METRIC fills lines 14..=21: an alert starts at 22.
