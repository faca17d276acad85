//! The pipeline spec (`pulse.toml`): domains (what producers send) and metrics
//! (what the dataflow job maintains). Parsing keeps source spans so that every
//! error names the file and line; validation collects every error at once.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::duration::{Millis, parse_duration};
use crate::expr::Expr;

/// Columns every raw table and every metric table has besides the spec's fields.
pub const RESERVED_RAW_COLUMNS: &[&str] = &["ingested_at", "version", "is_deleted"];
pub const RESERVED_METRIC_COLUMNS: &[&str] = &["window_start", "window_end", "final", "revision", "emitted_at", "metric"];
/// The envelope field carrying an event's identity. Ingest assigns one when missing.
pub const EVENT_ID: &str = "event_id";

// ------------------------------------------------------------------ errors

/// One problem in a spec, located at a line of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Every problem found in a spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ validated model

/// A validated pipeline spec.
#[derive(Debug, Clone)]
pub struct Spec {
    pub file: PathBuf,
    pub pipeline: Pipeline,
    pub domains: Vec<Domain>,
    pub metrics: Vec<Metric>,
    /// `[[alert]]` rules, evaluated by the dataflow on the metrics' rows.
    pub alerts: Vec<AlertRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    Drop,
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub idle_timeout: Millis,
    pub emit_interval: Millis,
    pub late_events: LatePolicy,
    pub aggregated_topic: String,
    pub dead_letter_topic: String,
    /// Firing/resolved alert notifications (JSON, keyed `rule/group`).
    pub alerts_topic: String,
}

#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub topic: String,
    pub partitions: i32,
    pub replication: i32,
    pub retention: Millis,
    pub cleanup_policy: String,
    pub compression: String,
    /// Index into `fields` of the Kafka key (and, for mutable domains, the event identity).
    pub key: usize,
    /// Index into `fields` of the event-time field (a `timestamp`).
    pub time_field: usize,
    pub mutable: bool,
    pub fields: Vec<Field>,
    /// How far ahead of its reference clock (ingest's clock, or the record's
    /// broker timestamp on the topics) an event's time may be.
    pub max_future: Millis,
    /// How far behind its reference clock an event's time may be (default: the retention).
    pub max_age: Millis,
}

impl Domain {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn key_field(&self) -> &Field {
        &self.fields[self.key]
    }

    pub fn time_field(&self) -> &Field {
        &self.fields[self.time_field]
    }

    /// Whether the domain declares `event_id` itself (otherwise it is envelope-only).
    pub fn declares_event_id(&self) -> bool {
        self.field_index(EVENT_ID).is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub optional: bool,
    /// A low-cardinality grouping dimension: NFC-normalized, `LowCardinality` in ClickHouse.
    pub dimension: bool,
    /// Smallest and largest accepted value of a numeric field.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Longest accepted string value, in UTF-8 bytes.
    pub max_length: usize,
}

/// Default longest value of a dimension or an identifier (the key, `event_id`).
pub const DEFAULT_ID_LENGTH: usize = 256;
/// Default longest value of any other string field.
pub const DEFAULT_TEXT_LENGTH: usize = 65_536;
/// Default `max_future` of a domain.
pub const DEFAULT_MAX_FUTURE: Millis = Millis(5 * 60_000);
/// Default `max_groups` of a metric.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    String,
    Enum(Vec<String>),
    Int,
    Float,
    Bool,
    Timestamp,
    /// `{ "lat": f64, "lng": f64 }`
    Point,
}

impl FieldType {
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Enum(_) => "enum",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Point => "point",
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, FieldType::Int | FieldType::Float)
    }
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    /// Index into `Spec::domains`.
    pub domain: usize,
    /// Indexes into the domain's fields.
    pub group_by: Vec<usize>,
    pub window: Millis,
    pub slide: Millis,
    pub lateness: Millis,
    pub aggregates: Vec<Aggregate>,
    /// Most groups with an open window at once; events of further groups are
    /// counted in the metric's overflow group (see `OVERFLOW_GROUP`).
    pub max_groups: usize,
    /// How long the metric table keeps a window, counted from its start (the
    /// table's TTL, on its ordering key's time column); default
    /// [`DEFAULT_METRIC_RETENTION`].
    pub retention: Millis,
    /// A derived metric reads other metrics' windows, not a domain's events.
    /// Its `domain` and `group_by` are then its first input's (the domain its
    /// group fields come from); its window and slide are its inputs'.
    pub derived: Option<Derived>,
}

/// The inputs of a derived metric: other metrics' windows, joined on the
/// derived metric's group fields and the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Indexes into `Spec::metrics` (never derived ones).
    pub inputs: Vec<usize>,
    /// Per input, per group field of the derived metric: its position in the input's `group_by`.
    pub key_positions: Vec<Vec<usize>>,
}

/// A comparison of an alert rule: `gt`, `ge`, `lt`, `le`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn parse(s: &str) -> Option<CmpOp> {
        match s {
            "gt" | ">" => Some(CmpOp::Gt),
            "ge" | ">=" => Some(CmpOp::Ge),
            "lt" | "<" => Some(CmpOp::Lt),
            "le" | "<=" => Some(CmpOp::Le),
            _ => None,
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CmpOp::Gt => value > threshold,
            CmpOp::Ge => value >= threshold,
            CmpOp::Lt => value < threshold,
            CmpOp::Le => value <= threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
}

/// `aggregate op value` on one of the rule's metric's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCondition {
    /// Index into the metric's aggregates.
    pub aggregate: usize,
    pub op: CmpOp,
    pub value: f64,
}

/// An `[[alert]]` rule (see `docs/alerts.md` for its semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    /// Index into `Spec::metrics`.
    pub metric: usize,
    pub condition: AlertCondition,
    /// How long (event time, consecutive windows) the condition must hold before the alert fires.
    pub for_: Millis,
    /// Windows failing the guard carry no information (too little data to judge).
    pub guard: Option<AlertCondition>,
    pub severity: String,
    /// Extra labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Annotation templates, sorted by name; `{{value}}`, `{{threshold}}`,
    /// `{{guard_value}}`, `{{rule}}`, `{{metric}}`, `{{severity}}`, `{{for}}`
    /// and the group fields expand.
    pub annotations: Vec<(String, String)>,
    /// A group whose newest window satisfying the rule is this far behind the
    /// metric's event time resolves (it stopped reporting). Default: `for` + window.
    pub resolve_after: Millis,
    /// Webhook receiving this rule's notifications (`PULSE_ALERT_WEBHOOK_URL` overrides).
    pub webhook: Option<String>,
}

/// Default `retention` of a metric: 30 days, longer than any default raw
/// retention, so dashboards keep a month of windows after the raw events expire.
pub const DEFAULT_METRIC_RETENTION: Millis = Millis(30 * 86_400_000);

/// The value string group fields take in a metric's overflow group.
pub const OVERFLOW_GROUP: &str = "__overflow__";

impl Metric {
    /// Number of windows each event belongs to.
    pub fn windows_per_event(&self) -> i64 {
        self.window.ms() / self.slide.ms()
    }

    pub fn aggregate_index(&self, name: &str) -> Option<usize> {
        self.aggregates.iter().position(|a| a.name == name)
    }

    pub fn is_derived(&self) -> bool {
        self.derived.is_some()
    }
}

/// One aggregate of a metric. Its `Debug` form is part of the metric's
/// definition fingerprint (see the dataflow's `progress`): a new field must
/// appear there too (and leave the form of existing definitions unchanged).
#[derive(Clone)]
pub struct Aggregate {
    pub name: String,
    pub kind: AggKind,
    pub filter: Option<Filter>,
    /// How it is computed: exactly (the default) or by a sketch.
    pub method: AggMethod,
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Aggregate");
        s.field("name", &self.name).field("kind", &self.kind).field("filter", &self.filter);
        // Only a sketch shows: an exact aggregate keeps the form (and the
        // fingerprint) it had before methods existed.
        if self.method != AggMethod::Exact {
            s.field("method", &self.method);
        }
        s.finish()
    }
}

/// How an aggregate is computed (`method` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum AggMethod {
    /// Every value of every open window is kept (the default).
    #[default]
    Exact,
    /// `count_distinct` by a HyperLogLog sketch of 2^precision registers
    /// (relative standard error about 1.04 / sqrt(2^precision)). Insert-only:
    /// refused on mutable domains.
    Hll { precision: u8 },
    /// `quantile` by a DDSketch: within `relative_accuracy` of the exact
    /// element of the same rank. Supports retractions.
    DdSketch { relative_accuracy: f64 },
}

/// Default `precision` of an `hll` count_distinct.
pub const DEFAULT_HLL_PRECISION: u8 = 14;
/// Accepted `precision` of an `hll` count_distinct.
pub const HLL_PRECISIONS: std::ops::RangeInclusive<u8> = 4..=18;
/// Default `relative_accuracy` of a `ddsketch` quantile.
pub const DEFAULT_DDSKETCH_ACCURACY: f64 = 0.01;

impl AggMethod {
    pub fn name(&self) -> &'static str {
        match self {
            AggMethod::Exact => "exact",
            AggMethod::Hll { .. } => "hll",
            AggMethod::DdSketch { .. } => "ddsketch",
        }
    }
}

/// Aggregate functions. Field arguments are indexes into the domain's fields;
/// ratio arguments are indexes into the metric's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub enum AggKind {
    Count,
    Sum(usize),
    Avg(usize),
    Min(usize),
    Max(usize),
    CountDistinct(usize),
    /// Exact quantile: the element at index `floor(q * n)` (clamped) of the sorted values,
    /// the definition of ClickHouse's `quantileExact`.
    Quantile(usize, f64),
    Ratio(usize, usize),
    /// An aggregate of a derived metric: arithmetic over its inputs' aggregates.
    Expr(Expr),
}

impl AggKind {
    pub fn fn_name(&self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum(_) => "sum",
            AggKind::Avg(_) => "avg",
            AggKind::Min(_) => "min",
            AggKind::Max(_) => "max",
            AggKind::CountDistinct(_) => "count_distinct",
            AggKind::Quantile(..) => "quantile",
            AggKind::Ratio(..) => "ratio",
            AggKind::Expr(_) => "expr",
        }
    }

    /// The domain field this aggregate reads, if any.
    pub fn field(&self) -> Option<usize> {
        match *self {
            AggKind::Sum(f) | AggKind::Avg(f) | AggKind::Min(f) | AggKind::Max(f) | AggKind::CountDistinct(f) | AggKind::Quantile(f, _) => Some(f),
            AggKind::Count | AggKind::Ratio(..) | AggKind::Expr(_) => None,
        }
    }
}

/// A filter on one field of the event. Literals are checked against the field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(usize, Literal),
    In(usize, Vec<Literal>),
    NonEmpty(usize),
}

impl Filter {
    pub fn field(&self) -> usize {
        match self {
            Filter::Eq(f, _) | Filter::In(f, _) | Filter::NonEmpty(f) => *f,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    /// Index into the enum's values.
    Enum(u8),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Spec {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }

    pub fn domain_index(&self, name: &str) -> Option<usize> {
        self.domains.iter().position(|d| d.name == name)
    }

    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn metric_domain(&self, metric: &Metric) -> &Domain {
        &self.domains[metric.domain]
    }

    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecErrors(vec![SpecError { file: path.to_path_buf(), line: 0, message: format!("cannot read spec: {e}") }]))?;
        Spec::parse(path, &text)
    }

    /// Parses and validates spec text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Spec, SpecErrors> {
        let lines = LineIndex::new(text);
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| lines.line(s.start));
            SpecErrors(vec![SpecError { file: file.to_path_buf(), line, message: e.message().trim().to_string() }])
        })?;
        let mut v = Validator { file: file.to_path_buf(), lines, errors: Vec::new() };
        let spec = v.spec(raw);
        if v.errors.is_empty() {
            Ok(spec)
        } else {
            v.errors.sort_by_key(|e| e.line);
            Err(SpecErrors(v.errors))
        }
    }
}

// ------------------------------------------------------------------ raw TOML

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    pipeline: Option<S<RawPipeline>>,
    #[serde(default)]
    domain: Vec<S<RawDomain>>,
    #[serde(default)]
    metric: Vec<S<RawMetric>>,
    #[serde(default)]
    alert: Vec<S<RawAlert>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: S<String>,
    metric: S<String>,
    condition: S<RawCondition>,
    #[serde(rename = "for")]
    for_: Option<S<String>>,
    guard: Option<S<RawCondition>>,
    severity: Option<S<String>>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, S<String>>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, S<String>>,
    resolve_after: Option<S<String>>,
    webhook: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    aggregate: S<String>,
    op: S<String>,
    value: S<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    idle_timeout: Option<S<String>>,
    emit_interval: Option<S<String>>,
    late_events: Option<S<String>>,
    aggregated_topic: Option<S<String>>,
    dead_letter_topic: Option<S<String>>,
    alerts_topic: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: S<String>,
    topic: S<String>,
    #[serde(default)]
    partitions: Option<S<i64>>,
    #[serde(default)]
    replication: Option<S<i64>>,
    retention: Option<S<String>>,
    cleanup_policy: Option<S<String>>,
    compression: Option<S<String>>,
    key: S<String>,
    time_field: S<String>,
    #[serde(default)]
    mutable: bool,
    fields: Vec<S<RawField>>,
    max_future: Option<S<String>>,
    max_age: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: S<String>,
    #[serde(rename = "type")]
    ty: S<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    dimension: bool,
    values: Option<S<Vec<String>>>,
    min: Option<S<f64>>,
    max: Option<S<f64>>,
    max_length: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: S<String>,
    domain: Option<S<String>>,
    /// A derived metric's input metrics (instead of `domain`).
    inputs: Option<S<Vec<String>>>,
    group_by: Option<S<Vec<String>>>,
    window: Option<S<String>>,
    slide: Option<S<String>>,
    lateness: Option<S<String>>,
    aggregates: Vec<S<RawAggregate>>,
    max_groups: Option<S<i64>>,
    retention: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    name: S<String>,
    #[serde(rename = "fn")]
    func: Option<S<String>>,
    /// A derived metric's aggregate: an expression over its inputs' aggregates.
    expr: Option<S<String>>,
    field: Option<S<String>>,
    filter: Option<S<RawFilter>>,
    q: Option<S<f64>>,
    numerator: Option<S<String>>,
    denominator: Option<S<String>>,
    method: Option<S<String>>,
    precision: Option<S<i64>>,
    relative_accuracy: Option<S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    field: S<String>,
    eq: Option<toml::Value>,
    #[serde(rename = "in")]
    one_of: Option<Vec<toml::Value>>,
    non_empty: Option<bool>,
}

// ------------------------------------------------------------------ validation

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

struct Validator {
    file: PathBuf,
    lines: LineIndex,
    errors: Vec<SpecError>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && s.len() <= 128
}

/// The `{{name}}` placeholders of an annotation template (names trimmed).
pub fn template_placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        out.push(after[..close].trim().to_string());
        rest = &after[close + 2..];
    }
    out
}

fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Validator {
    fn err<T>(&mut self, at: &S<T>, message: impl Into<String>) {
        let line = self.lines.line(at.span().start);
        self.errors.push(SpecError { file: self.file.clone(), line, message: message.into() });
    }

    fn duration(&mut self, at: &S<String>, what: &str) -> Option<Millis> {
        match parse_duration(at.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(at, format!("{what}: {e}"));
                None
            }
        }
    }

    fn opt_duration(&mut self, at: &Option<S<String>>, what: &str, default: Millis) -> Millis {
        at.as_ref().and_then(|d| self.duration(d, what)).unwrap_or(default)
    }

    fn spec(&mut self, raw: RawSpec) -> Spec {
        let pipeline = self.pipeline(raw.pipeline.as_ref().map(|p| p.get_ref()));
        let mut domains = Vec::new();
        let mut names = HashSet::new();
        let mut topics = HashSet::new();
        for d in &raw.domain {
            let name = d.get_ref().name.get_ref().clone();
            if !names.insert(name.clone()) {
                self.err(&d.get_ref().name, format!("duplicate domain name `{name}`"));
            }
            let topic = d.get_ref().topic.get_ref().clone();
            if !topics.insert(topic.clone()) {
                self.err(&d.get_ref().topic, format!("domain `{name}`: topic `{topic}` is already used by another domain"));
            }
            if topic == pipeline.aggregated_topic || topic == pipeline.dead_letter_topic || topic == pipeline.alerts_topic {
                self.err(&d.get_ref().topic, format!("domain `{name}`: topic `{topic}` is reserved for Pulse's own output"));
            }
            if let Some(domain) = self.domain(d.get_ref()) {
                domains.push(domain);
            }
        }
        if raw.domain.is_empty() {
            self.errors.push(SpecError { file: self.file.clone(), line: 1, message: "the spec declares no [[domain]]".into() });
        }
        let mut metrics = Vec::new();
        let mut metric_names = HashSet::new();
        for m in &raw.metric {
            let name = m.get_ref().name.get_ref().clone();
            if !metric_names.insert(name.clone()) {
                self.err(&m.get_ref().name, format!("duplicate metric name `{name}`"));
            }
            if names.contains(&name) {
                self.err(&m.get_ref().name, format!("metric `{name}` has the name of a domain (both become ClickHouse tables)"));
            }
            if name == "alerts" {
                self.err(&m.get_ref().name, "metric name `alerts` is reserved (GET /v1/stream/alerts streams alert notifications)");
            }
            let metric = if m.get_ref().inputs.is_some() {
                self.derived(m.get_ref(), &domains, &metrics, &raw.metric)
            } else {
                self.metric(m.get_ref(), &domains, &raw.domain)
            };
            if let Some(metric) = metric {
                metrics.push(metric);
            }
        }
        let mut alerts = Vec::new();
        let mut alert_names = HashSet::new();
        for a in &raw.alert {
            let name = a.get_ref().name.get_ref().clone();
            if !alert_names.insert(name.clone()) {
                self.err(&a.get_ref().name, format!("duplicate alert name `{name}`"));
            }
            if let Some(rule) = self.alert(a.get_ref(), &domains, &metrics, &raw.metric) {
                alerts.push(rule);
            }
        }
        Spec { file: self.file.clone(), pipeline, domains, metrics, alerts }
    }

    fn alert(&mut self, raw: &RawAlert, domains: &[Domain], metrics: &[Metric], raw_metrics: &[S<RawMetric>]) -> Option<AlertRule> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            self.err(&raw.name, format!("alert name `{name}` must be 1-128 characters of A-Za-z0-9_-."));
        }
        let Some(metric_index) = metrics.iter().position(|m| &m.name == raw.metric.get_ref()) else {
            if !raw_metrics.iter().any(|m| m.get_ref().name.get_ref() == raw.metric.get_ref()) {
                self.err(&raw.metric, format!("alert `{name}`: unknown metric `{}`", raw.metric.get_ref()));
            }
            return None;
        };
        let metric = &metrics[metric_index];
        let condition = self.alert_condition(&raw.condition, &name, "condition", metric);
        let guard = raw.guard.as_ref().map(|g| self.alert_condition(g, &name, "guard", metric));
        let for_ = self.opt_duration(&raw.for_, &format!("alert `{name}`: for"), Millis(0));
        if for_.ms() < 0
            && let Some(f) = &raw.for_
        {
            self.err(f, format!("alert `{name}`: for must not be negative"));
        }
        let default_resolve = Millis(for_.ms().saturating_add(metric.window.ms()));
        let resolve_after = self.opt_duration(&raw.resolve_after, &format!("alert `{name}`: resolve_after"), default_resolve);
        if let Some(r) = &raw.resolve_after
            && resolve_after.ms() < metric.slide.ms()
        {
            self.err(r, format!("alert `{name}`: resolve_after {resolve_after} must be at least the metric's slide ({})", metric.slide));
        }
        let severity = match &raw.severity {
            None => "warning".to_string(),
            Some(s) => {
                let v = s.get_ref();
                if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
                    self.err(s, format!("alert `{name}`: severity `{v}` must be 1-64 characters of A-Za-z0-9_-"));
                }
                v.clone()
            }
        };
        let domain = &domains[metric.domain];
        let group_names: Vec<&str> = metric.group_by.iter().map(|&g| domain.fields[g].name.as_str()).collect();
        let reserved = ["alertname", "rule", "metric", "severity"];
        let mut labels = Vec::new();
        for (k, v) in &raw.labels {
            if !is_label_name(k) {
                self.err(v, format!("alert `{name}`: label name `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"));
            } else if reserved.contains(&k.as_str()) || group_names.contains(&k.as_str()) {
                self.err(v, format!("alert `{name}`: label `{k}` is set by Pulse (alertname, rule, metric, severity and the group fields)"));
            }
            labels.push((k.clone(), v.get_ref().clone()));
        }
        let mut annotations = Vec::new();
        for (k, v) in &raw.annotations {
            if !is_label_name(k) {
                self.err(v, format!("alert `{name}`: annotation name `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"));
            }
            for placeholder in template_placeholders(v.get_ref()) {
                let known = ["value", "threshold", "guard_value", "rule", "metric", "severity", "for"].contains(&placeholder.as_str())
                    || group_names.contains(&placeholder.as_str());
                if !known {
                    self.err(
                        v,
                        format!(
                            "alert `{name}`: annotation `{k}`: unknown placeholder `{{{{{placeholder}}}}}` (use value, threshold, guard_value, rule, metric, severity, for or a group field: {})",
                            group_names.join(", ")
                        ),
                    );
                }
            }
            annotations.push((k.clone(), v.get_ref().clone()));
        }
        let webhook = raw.webhook.as_ref().map(|w| {
            let url = w.get_ref();
            if !url.starts_with("http://") {
                self.err(w, format!("alert `{name}`: webhook `{url}` must be an http:// URL (no TLS client in Pulse: put a TLS proxy in front)"));
            }
            url.clone()
        });
        if self.errors.len() > before {
            return None;
        }
        Some(AlertRule {
            name,
            metric: metric_index,
            condition: condition?,
            for_,
            guard: match guard {
                Some(g) => Some(g?),
                None => None,
            },
            severity,
            labels,
            annotations,
            resolve_after,
            webhook,
        })
    }

    fn alert_condition(&mut self, raw: &S<RawCondition>, name: &str, what: &str, metric: &Metric) -> Option<AlertCondition> {
        let c = raw.get_ref();
        let aggregate = metric.aggregate_index(c.aggregate.get_ref());
        if aggregate.is_none() {
            self.err(&c.aggregate, format!("alert `{name}`: {what}: `{}` is not an aggregate of metric `{}`", c.aggregate.get_ref(), metric.name));
        }
        let op = CmpOp::parse(c.op.get_ref());
        if op.is_none() {
            self.err(&c.op, format!("alert `{name}`: {what}: unknown op `{}` (use gt, ge, lt or le)", c.op.get_ref()));
        }
        let value = *c.value.get_ref();
        if !value.is_finite() {
            self.err(&c.value, format!("alert `{name}`: {what}: value must be a finite number"));
        }
        Some(AlertCondition { aggregate: aggregate?, op: op?, value })
    }

    fn pipeline(&mut self, raw: Option<&RawPipeline>) -> Pipeline {
        let mut p = Pipeline {
            idle_timeout: Millis(10_000),
            emit_interval: Millis(200),
            late_events: LatePolicy::Drop,
            aggregated_topic: "analytics-aggregated".into(),
            dead_letter_topic: "pulse-dead-letter".into(),
            alerts_topic: "pulse-alerts".into(),
        };
        let Some(raw) = raw else { return p };
        p.idle_timeout = self.opt_duration(&raw.idle_timeout, "idle_timeout", p.idle_timeout);
        p.emit_interval = self.opt_duration(&raw.emit_interval, "emit_interval", p.emit_interval);
        if let Some(e) = &raw.emit_interval
            && p.emit_interval.ms() == 0
        {
            self.err(e, "emit_interval must be greater than 0");
        }
        if let Some(l) = &raw.late_events {
            match l.get_ref().as_str() {
                "drop" => p.late_events = LatePolicy::Drop,
                "dead_letter" => p.late_events = LatePolicy::DeadLetter,
                other => self.err(l, format!("late_events: unknown policy `{other}` (use drop or dead_letter)")),
            }
        }
        for (slot, raw_topic) in
            [(&mut p.aggregated_topic, &raw.aggregated_topic), (&mut p.dead_letter_topic, &raw.dead_letter_topic), (&mut p.alerts_topic, &raw.alerts_topic)]
        {
            if let Some(t) = raw_topic {
                if is_topic_name(t.get_ref()) {
                    *slot = t.get_ref().clone();
                } else {
                    let msg = format!("`{}` is not a valid Kafka topic name", t.get_ref());
                    self.err(t, msg);
                }
            }
        }
        p
    }

    fn domain(&mut self, raw: &RawDomain) -> Option<Domain> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("domain name `{name}` must be a lowercase identifier ([a-z_][a-z0-9_]*)"));
        }
        if !is_topic_name(raw.topic.get_ref()) {
            self.err(&raw.topic, format!("domain `{name}`: `{}` is not a valid Kafka topic name", raw.topic.get_ref()));
        }
        let partitions = match &raw.partitions {
            None => 1,
            Some(p) if (1..=10_000).contains(p.get_ref()) => *p.get_ref() as i32,
            Some(p) => {
                self.err(p, format!("domain `{name}`: partitions must be between 1 and 10000"));
                1
            }
        };
        let replication = match &raw.replication {
            None => 1,
            Some(r) if (1..=16).contains(r.get_ref()) => *r.get_ref() as i32,
            Some(r) => {
                self.err(r, format!("domain `{name}`: replication must be between 1 and 16"));
                1
            }
        };
        let retention = self.opt_duration(&raw.retention, &format!("domain `{name}`: retention"), Millis(7 * 86_400_000));
        let cleanup_policy = match &raw.cleanup_policy {
            None => "delete".to_string(),
            Some(c) => {
                let v = c.get_ref().replace(' ', "");
                if !matches!(v.as_str(), "delete" | "compact" | "compact,delete" | "delete,compact") {
                    self.err(c, format!("domain `{name}`: cleanup_policy `{}` must be delete, compact or compact,delete", c.get_ref()));
                }
                v
            }
        };
        let compression = match &raw.compression {
            None => "lz4".to_string(),
            Some(c) => {
                if !matches!(c.get_ref().as_str(), "none" | "gzip" | "snappy" | "lz4" | "zstd" | "producer") {
                    self.err(c, format!("domain `{name}`: compression `{}` must be one of none, gzip, snappy, lz4, zstd, producer", c.get_ref()));
                }
                c.get_ref().clone()
            }
        };

        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        for f in &raw.fields {
            let f = f.get_ref();
            let fname = f.name.get_ref().clone();
            if !is_identifier(&fname) {
                self.err(&f.name, format!("domain `{name}`: field name `{fname}` must be a lowercase identifier"));
            }
            if !seen.insert(fname.clone()) {
                self.err(&f.name, format!("domain `{name}`: duplicate field `{fname}`"));
            }
            if RESERVED_RAW_COLUMNS.contains(&fname.as_str()) || fname.starts_with('_') {
                self.err(&f.name, format!("domain `{name}`: field name `{fname}` is reserved"));
            }
            let ty = match f.ty.get_ref().as_str() {
                "string" => FieldType::String,
                "enum" => FieldType::Enum(Vec::new()),
                "int" => FieldType::Int,
                "float" => FieldType::Float,
                "bool" => FieldType::Bool,
                "timestamp" => FieldType::Timestamp,
                "point" => FieldType::Point,
                other => {
                    self.err(&f.ty, format!("domain `{name}`: field `{fname}` has unknown type `{other}` (string, enum, int, float, bool, timestamp, point)"));
                    continue;
                }
            };
            let ty = match (ty, &f.values) {
                (FieldType::Enum(_), Some(values)) => {
                    let vals = values.get_ref();
                    let unique: HashSet<&String> = vals.iter().collect();
                    if vals.is_empty() || vals.len() > 255 {
                        self.err(values, format!("domain `{name}`: enum field `{fname}` needs between 1 and 255 values"));
                    } else if unique.len() != vals.len() {
                        self.err(values, format!("domain `{name}`: enum field `{fname}` has duplicate values"));
                    }
                    FieldType::Enum(vals.clone())
                }
                (FieldType::Enum(_), None) => {
                    self.err(&f.ty, format!("domain `{name}`: enum field `{fname}` needs `values = [...]`"));
                    continue;
                }
                (ty, Some(values)) => {
                    self.err(values, format!("domain `{name}`: field `{fname}` of type {} cannot have `values` (only enum fields can)", ty.name()));
                    ty
                }
                (ty, None) => ty,
            };
            if f.dimension && !matches!(ty, FieldType::String | FieldType::Enum(_)) {
                self.err(&f.name, format!("domain `{name}`: field `{fname}` of type {} cannot be a dimension (only string and enum fields can)", ty.name()));
            }
            for bound in [&f.min, &f.max].into_iter().flatten() {
                if !ty.is_numeric() {
                    self.err(bound, format!("domain `{name}`: field `{fname}` of type {} cannot have `min`/`max` (only int and float fields can)", ty.name()));
                } else if !bound.get_ref().is_finite() {
                    self.err(bound, format!("domain `{name}`: field `{fname}`: `min`/`max` must be finite numbers"));
                }
            }
            if let (Some(lo), Some(hi)) = (&f.min, &f.max)
                && lo.get_ref() > hi.get_ref()
            {
                self.err(hi, format!("domain `{name}`: field `{fname}`: `max` {} is below `min` {}", hi.get_ref(), lo.get_ref()));
            }
            let is_identity = fname == *raw.key.get_ref() || fname == EVENT_ID;
            let default_length = if f.dimension || is_identity { DEFAULT_ID_LENGTH } else { DEFAULT_TEXT_LENGTH };
            let max_length = match &f.max_length {
                None => default_length,
                Some(l) if !matches!(ty, FieldType::String) => {
                    self.err(l, format!("domain `{name}`: field `{fname}` of type {} cannot have `max_length` (only string fields can)", ty.name()));
                    default_length
                }
                Some(l) if (1..=1_048_576).contains(l.get_ref()) => *l.get_ref() as usize,
                Some(l) => {
                    self.err(l, format!("domain `{name}`: field `{fname}`: `max_length` must be between 1 and 1048576 bytes"));
                    default_length
                }
            };
            fields.push(Field {
                name: fname,
                ty,
                optional: f.optional,
                dimension: f.dimension,
                min: f.min.as_ref().map(|v| *v.get_ref()),
                max: f.max.as_ref().map(|v| *v.get_ref()),
                max_length,
            });
        }

        let find = |field: &S<String>| fields.iter().position(|f| &f.name == field.get_ref());
        let key = find(&raw.key);
        match key {
            None => self.err(&raw.key, format!("domain `{name}`: key `{}` is not a field of the domain", raw.key.get_ref())),
            Some(k) => {
                let f = &fields[k];
                if !matches!(f.ty, FieldType::String | FieldType::Enum(_) | FieldType::Int) || f.optional {
                    self.err(&raw.key, format!("domain `{name}`: key `{}` must be a required string or int field", f.name));
                }
            }
        }
        if raw.mutable && raw.key.get_ref() != EVENT_ID {
            self.err(&raw.key, format!("domain `{name}`: a mutable domain is keyed by `{EVENT_ID}` (updates and deletes address events by id)"));
        }
        let time_field = find(&raw.time_field);
        match time_field {
            None => self.err(&raw.time_field, format!("domain `{name}`: time_field `{}` is not a field of the domain", raw.time_field.get_ref())),
            Some(t) => {
                let f = &fields[t];
                if f.ty != FieldType::Timestamp || f.optional {
                    self.err(&raw.time_field, format!("domain `{name}`: time_field `{}` must be a required timestamp field", f.name));
                }
            }
        }
        if let Some(i) = fields.iter().position(|f| f.name == EVENT_ID)
            && fields[i].ty != FieldType::String
        {
            self.err(&raw.name, format!("domain `{name}`: field `{EVENT_ID}` must be a string"));
        }
        let max_future = self.opt_duration(&raw.max_future, &format!("domain `{name}`: max_future"), DEFAULT_MAX_FUTURE);
        let max_age = self.opt_duration(&raw.max_age, &format!("domain `{name}`: max_age"), retention);
        if let Some(a) = &raw.max_age
            && max_age.ms() <= 0
        {
            self.err(a, format!("domain `{name}`: max_age must be greater than 0"));
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Domain {
            name,
            topic: raw.topic.get_ref().clone(),
            partitions,
            replication,
            retention,
            cleanup_policy,
            compression,
            key: key?,
            time_field: time_field?,
            mutable: raw.mutable,
            fields,
            max_future,
            max_age,
        })
    }

    fn metric(&mut self, raw: &RawMetric, domains: &[Domain], raw_domains: &[S<RawDomain>]) -> Option<Metric> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("metric name `{name}` must be a lowercase identifier"));
        }
        let Some(raw_domain) = &raw.domain else {
            self.err(&raw.name, format!("metric `{name}` needs `domain` (or `inputs`, for a metric derived from other metrics)"));
            return None;
        };
        let Some(raw_window) = &raw.window else {
            self.err(&raw.name, format!("metric `{name}` needs `window`"));
            return None;
        };
        let Some(domain_index) = domains.iter().position(|d| &d.name == raw_domain.get_ref()) else {
            // A domain that failed validation has already been reported; do not pile on.
            if !raw_domains.iter().any(|d| d.get_ref().name.get_ref() == raw_domain.get_ref()) {
                self.err(raw_domain, format!("metric `{name}`: unknown domain `{}`", raw_domain.get_ref()));
            }
            return None;
        };
        let domain = &domains[domain_index];
        let field = |this: &mut Self, at: &S<String>, role: &str| -> Option<usize> {
            let idx = domain.field_index(at.get_ref());
            if idx.is_none() {
                this.err(at, format!("metric `{name}`: {role} `{}` is not a field of domain `{}`", at.get_ref(), domain.name));
            }
            idx
        };

        let mut group_by = Vec::new();
        let mut group_names = HashSet::new();
        let no_groups = S::new(raw.name.span(), Vec::new());
        let raw_group_by = raw.group_by.as_ref().unwrap_or(&no_groups);
        for g in raw_group_by.get_ref() {
            let at = S::new(raw_group_by.span(), g.clone());
            if let Some(i) = field(self, &at, "group_by field") {
                let f = &domain.fields[i];
                if !matches!(f.ty, FieldType::String | FieldType::Enum(_) | FieldType::Int | FieldType::Bool) {
                    self.err(raw_group_by, format!("metric `{name}`: cannot group by `{g}` of type {}", f.ty.name()));
                }
                if !group_names.insert(g.clone()) {
                    self.err(raw_group_by, format!("metric `{name}`: `{g}` appears twice in group_by"));
                }
                group_by.push(i);
            }
        }

        let window = self.duration(raw_window, &format!("metric `{name}`: window"));
        let slide = match &raw.slide {
            Some(s) => self.duration(s, &format!("metric `{name}`: slide")),
            None => window,
        };
        let lateness = self.opt_duration(&raw.lateness, &format!("metric `{name}`: lateness"), Millis(0));
        if let (Some(w), Some(s)) = (window, slide) {
            let at = raw.slide.as_ref().unwrap_or(raw_window);
            if w.ms() <= 0 || s.ms() <= 0 {
                self.err(at, format!("metric `{name}`: window and slide must be greater than 0"));
            } else if w.ms() % s.ms() != 0 {
                self.err(at, format!("metric `{name}`: window {w} is not a multiple of slide {s}"));
            } else if w.ms() / s.ms() > 1440 {
                self.err(at, format!("metric `{name}`: window {w} / slide {s} gives more than 1440 windows per event"));
            }
        }

        let mut aggregates: Vec<Aggregate> = Vec::new();
        let mut agg_names = HashSet::new();
        // Ratios refer to other aggregates by name; resolve them after the first pass.
        let mut ratios = Vec::new();
        for a in &raw.aggregates {
            let a = a.get_ref();
            let aname = a.name.get_ref().clone();
            self.aggregate_name(&name, &a.name, &mut agg_names, group_names.contains(&aname));
            if let Some(e) = &a.expr {
                self.err(e, format!("metric `{name}`: only derived metrics (with `inputs`) have `expr` aggregates; `{aname}` needs `fn`"));
                continue;
            }
            let Some(func_at) = &a.func else {
                self.err(&a.name, format!("metric `{name}`: aggregate `{aname}` needs `fn`"));
                continue;
            };
            let func = func_at.get_ref().as_str();
            let needs_field = matches!(func, "sum" | "avg" | "min" | "max" | "count_distinct" | "quantile");
            let f = match (&a.field, needs_field) {
                (Some(fld), true) => field(self, fld, "field"),
                (None, true) => {
                    self.err(func_at, format!("metric `{name}`: aggregate `{aname}` ({func}) needs `field`"));
                    None
                }
                (Some(fld), false) => {
                    self.err(fld, format!("metric `{name}`: aggregate `{aname}` ({func}) takes no `field`"));
                    None
                }
                (None, false) => None,
            };
            if let Some(fi) = f {
                let fty = &domain.fields[fi].ty;
                let numeric_only = matches!(func, "sum" | "avg" | "min" | "max" | "quantile");
                if numeric_only
                    && !fty.is_numeric()
                    && !(matches!(func, "min" | "max") && *fty == FieldType::Timestamp)
                    && let Some(fld) = &a.field
                {
                    self.err(
                        fld,
                        format!("metric `{name}`: aggregate `{aname}` ({func}) needs a numeric field, `{}` is {}", domain.fields[fi].name, fty.name()),
                    );
                }
                if func == "count_distinct"
                    && *fty == FieldType::Point
                    && let Some(fld) = &a.field
                {
                    self.err(fld, format!("metric `{name}`: cannot count distinct points"));
                }
            }
            if func != "quantile"
                && let Some(q) = &a.q
            {
                self.err(q, format!("metric `{name}`: aggregate `{aname}` ({func}) takes no `q`"));
            }
            if func != "ratio" {
                for r in [&a.numerator, &a.denominator].into_iter().flatten() {
                    self.err(r, format!("metric `{name}`: only ratio aggregates take numerator/denominator"));
                }
            }
            let kind = match func {
                "count" => Some(AggKind::Count),
                "sum" => f.map(AggKind::Sum),
                "avg" => f.map(AggKind::Avg),
                "min" => f.map(AggKind::Min),
                "max" => f.map(AggKind::Max),
                "count_distinct" => f.map(AggKind::CountDistinct),
                "quantile" => match &a.q {
                    Some(q) if (0.0..=1.0).contains(q.get_ref()) => f.map(|f| AggKind::Quantile(f, *q.get_ref())),
                    Some(q) => {
                        self.err(q, format!("metric `{name}`: quantile q must be between 0 and 1"));
                        None
                    }
                    None => {
                        self.err(func_at, format!("metric `{name}`: quantile `{aname}` needs `q` (e.g. q = 0.95)"));
                        None
                    }
                },
                "ratio" => {
                    match (&a.numerator, &a.denominator) {
                        (Some(n), Some(d)) => ratios.push((aggregates.len(), n, d)),
                        _ => self.err(func_at, format!("metric `{name}`: ratio `{aname}` needs numerator and denominator (names of other aggregates)")),
                    }
                    if a.filter.is_some() {
                        self.err(func_at, format!("metric `{name}`: a ratio takes its filters from its numerator and denominator"));
                    }
                    Some(AggKind::Ratio(usize::MAX, usize::MAX))
                }
                other => {
                    self.err(
                        func_at,
                        format!("metric `{name}`: unknown aggregate function `{other}` (count, sum, avg, min, max, count_distinct, quantile, ratio)"),
                    );
                    None
                }
            };
            let filter = a.filter.as_ref().and_then(|flt| self.filter(flt, &name, domain));
            let method = self.method(a, &name, &aname, domain);
            if let Some(kind) = kind {
                aggregates.push(Aggregate { name: aname, kind, filter, method });
            }
        }
        for (slot, n, d) in ratios {
            let resolve = |this: &mut Self, at: &S<String>| -> Option<usize> {
                match raw.aggregates.iter().position(|a| a.get_ref().name.get_ref() == at.get_ref()) {
                    None => {
                        this.err(at, format!("metric `{name}`: ratio refers to unknown aggregate `{}`", at.get_ref()));
                        None
                    }
                    Some(i) => {
                        let target = aggregates.iter().position(|a| &a.name == at.get_ref());
                        match target.map(|t| &aggregates[t].kind) {
                            Some(AggKind::Ratio(..)) => {
                                this.err(at, format!("metric `{name}`: a ratio cannot refer to another ratio (`{}`)", at.get_ref()));
                                None
                            }
                            Some(AggKind::Count | AggKind::Sum(_) | AggKind::CountDistinct(_)) => target,
                            Some(_) => {
                                this.err(
                                    at,
                                    format!("metric `{name}`: a ratio's parts must be count, sum or count_distinct aggregates (`{}` is not)", at.get_ref()),
                                );
                                None
                            }
                            None => {
                                let _ = i;
                                None
                            }
                        }
                    }
                }
            };
            let num = resolve(self, n);
            let den = resolve(self, d);
            if let (Some(num), Some(den)) = (num, den)
                && let Some(a) = aggregates.get_mut(slot)
            {
                a.kind = AggKind::Ratio(num, den);
            }
        }
        if raw.aggregates.is_empty() {
            self.err(&raw.name, format!("metric `{name}` has no aggregates"));
        }
        let max_groups = match &raw.max_groups {
            None => DEFAULT_MAX_GROUPS,
            Some(g) if (1..=10_000_000).contains(g.get_ref()) => *g.get_ref() as usize,
            Some(g) => {
                self.err(g, format!("metric `{name}`: max_groups must be between 1 and 10000000"));
                DEFAULT_MAX_GROUPS
            }
        };
        let retention = self.opt_duration(&raw.retention, &format!("metric `{name}`: retention"), DEFAULT_METRIC_RETENTION);
        if let (Some(r), Some(w)) = (&raw.retention, window) {
            // A window must close (window + lateness after its start) before the TTL may drop it.
            let needed = w.ms().saturating_add(lateness.ms());
            if retention.ms() < 1000 || retention.ms() <= needed {
                self.err(r, format!("metric `{name}`: retention {retention} must be longer than window + lateness ({})", Millis(needed)));
            } else if retention.ms() % 1000 != 0 {
                self.err(r, format!("metric `{name}`: retention {retention} must be a whole number of seconds"));
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Metric { name, domain: domain_index, group_by, window: window?, slide: slide?, lateness, aggregates, max_groups, retention, derived: None })
    }

    /// An aggregate's `method` and its parameters (`precision`, `relative_accuracy`).
    fn method(&mut self, a: &RawAggregate, metric: &str, aname: &str, domain: &Domain) -> AggMethod {
        let func = a.func.as_ref().map_or("", |f| f.get_ref().as_str());
        let method = match &a.method {
            None => AggMethod::Exact,
            Some(m) => match (m.get_ref().as_str(), func) {
                (_, f) if !matches!(f, "count_distinct" | "quantile") => {
                    self.err(m, format!("metric `{metric}`: aggregate `{aname}` ({func}) takes no `method` (only count_distinct and quantile do)"));
                    AggMethod::Exact
                }
                ("exact", _) => AggMethod::Exact,
                ("hll", "count_distinct") => {
                    if domain.mutable {
                        self.err(
                            m,
                            format!(
                                "metric `{metric}`: aggregate `{aname}`: method `hll` cannot forget a value, and domain `{}` is mutable (updates and deletes retract values); use the exact count_distinct",
                                domain.name
                            ),
                        );
                    }
                    AggMethod::Hll { precision: DEFAULT_HLL_PRECISION }
                }
                ("ddsketch", "quantile") => AggMethod::DdSketch { relative_accuracy: DEFAULT_DDSKETCH_ACCURACY },
                ("hll" | "ddsketch", _) => {
                    let wants = if m.get_ref() == "hll" { "count_distinct" } else { "quantile" };
                    self.err(m, format!("metric `{metric}`: aggregate `{aname}` ({func}): method `{}` is only for {wants}", m.get_ref()));
                    AggMethod::Exact
                }
                (other, _) => {
                    self.err(
                        m,
                        format!("metric `{metric}`: aggregate `{aname}`: unknown method `{other}` (exact; hll for count_distinct; ddsketch for quantile)"),
                    );
                    AggMethod::Exact
                }
            },
        };
        let method = match (method, &a.precision) {
            (AggMethod::Hll { .. }, Some(p)) => match u8::try_from(*p.get_ref()) {
                Ok(precision) if HLL_PRECISIONS.contains(&precision) => AggMethod::Hll { precision },
                _ => {
                    self.err(
                        p,
                        format!(
                            "metric `{metric}`: aggregate `{aname}`: precision must be an integer between {} and {}",
                            HLL_PRECISIONS.start(),
                            HLL_PRECISIONS.end()
                        ),
                    );
                    method
                }
            },
            (_, Some(p)) => {
                self.err(p, format!("metric `{metric}`: aggregate `{aname}`: only method = \"hll\" takes `precision`"));
                method
            }
            (m, None) => m,
        };
        match (method, &a.relative_accuracy) {
            (AggMethod::DdSketch { .. }, Some(r)) => {
                let a = *r.get_ref();
                if a > 0.0 && a < 1.0 {
                    AggMethod::DdSketch { relative_accuracy: a }
                } else {
                    self.err(r, format!("metric `{metric}`: aggregate `{aname}`: relative_accuracy must be between 0 and 1 (exclusive), e.g. 0.01"));
                    method
                }
            }
            (_, Some(r)) => {
                self.err(r, format!("metric `{metric}`: aggregate `{aname}`: only method = \"ddsketch\" takes `relative_accuracy`"));
                method
            }
            (m, None) => m,
        }
    }

    /// Checks an aggregate's name: an identifier, once per metric, not a column the metric table has already.
    fn aggregate_name(&mut self, metric: &str, at: &S<String>, seen: &mut HashSet<String>, is_group_field: bool) {
        let aname = at.get_ref();
        if !is_identifier(aname) {
            self.err(at, format!("metric `{metric}`: aggregate name `{aname}` must be a lowercase identifier"));
        }
        if !seen.insert(aname.clone()) {
            self.err(at, format!("metric `{metric}`: duplicate aggregate `{aname}`"));
        }
        if is_group_field || RESERVED_METRIC_COLUMNS.contains(&aname.as_str()) {
            self.err(at, format!("metric `{metric}`: aggregate name `{aname}` clashes with a column of the metric table"));
        }
    }

    /// A metric derived from other metrics' windows (`inputs` instead of `domain`).
    fn derived(&mut self, raw: &RawMetric, domains: &[Domain], metrics: &[Metric], raw_metrics: &[S<RawMetric>]) -> Option<Metric> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("metric name `{name}` must be a lowercase identifier"));
        }
        let raw_inputs = raw.inputs.as_ref()?;
        if let Some(d) = &raw.domain {
            self.err(d, format!("metric `{name}`: a derived metric takes no `domain` (it reads its inputs' windows)"));
        }
        if let Some(at) = &raw.lateness {
            self.err(at, format!("metric `{name}`: a derived metric takes no `lateness` (its windows close when every input's have)"));
        }
        if let Some(g) = &raw.max_groups {
            self.err(g, format!("metric `{name}`: a derived metric takes no `max_groups` (its inputs' caps apply)"));
        }
        let mut inputs: Vec<usize> = Vec::new();
        if raw_inputs.get_ref().is_empty() || raw_inputs.get_ref().len() > 8 {
            self.err(raw_inputs, format!("metric `{name}`: `inputs` lists 1 to 8 metrics"));
        }
        for input in raw_inputs.get_ref() {
            if *input == name {
                self.err(raw_inputs, format!("metric `{name}`: a derived metric cannot read itself (a cycle)"));
                continue;
            }
            match metrics.iter().position(|m| &m.name == input) {
                Some(i) if metrics[i].is_derived() => self.err(
                    raw_inputs,
                    format!("metric `{name}`: input `{input}` is itself derived; derived metrics read metrics of domains only (no chains, so no cycles)"),
                ),
                Some(i) if inputs.contains(&i) => self.err(raw_inputs, format!("metric `{name}`: input `{input}` is listed twice")),
                Some(i) => inputs.push(i),
                None => match raw_metrics.iter().position(|m| m.get_ref().name.get_ref() == input) {
                    // An input that failed validation has been reported already.
                    Some(i) if raw_metrics[i].get_ref().inputs.is_some() => self.err(
                        raw_inputs,
                        format!("metric `{name}`: input `{input}` is itself derived; derived metrics read metrics of domains only (no chains, so no cycles)"),
                    ),
                    Some(i) if raw_metrics[i].span().start > raw.name.span().start => {
                        self.err(raw_inputs, format!("metric `{name}`: input `{input}` must be declared before the metrics derived from it"))
                    }
                    Some(_) => {}
                    None => self.err(raw_inputs, format!("metric `{name}`: unknown input metric `{input}`")),
                },
            }
        }
        if self.errors.len() > before || inputs.is_empty() {
            return None;
        }
        let first = &metrics[inputs[0]];
        let field_names = |m: &Metric| -> Vec<String> { m.group_by.iter().map(|&g| domains[m.domain].fields[g].name.clone()).collect() };
        // Windows: every input's must be the same; a `window`/`slide` given must say the same.
        for &i in &inputs[1..] {
            let m = &metrics[i];
            if (m.window, m.slide) != (first.window, first.slide) {
                self.err(
                    raw_inputs,
                    format!(
                        "metric `{name}`: inputs have different windows (`{}`: {} sliding {}, `{}`: {} sliding {}); joined windows must be the same",
                        first.name, first.window, first.slide, m.name, m.window, m.slide
                    ),
                );
            }
        }
        for (key, at, want) in [("window", &raw.window, first.window), ("slide", &raw.slide, first.slide)] {
            if let Some(at) = at
                && let Some(given) = self.duration(at, &format!("metric `{name}`: {key}"))
                && given != want
            {
                self.err(at, format!("metric `{name}`: {key} {given} differs from its inputs' ({want}); a derived metric's windows are its inputs'"));
            }
        }
        // Group fields: by name, the same set in every input, with the same types.
        let group_names: Vec<String> = match &raw.group_by {
            Some(g) => g.get_ref().clone(),
            None => field_names(first),
        };
        let at_groups = raw.group_by.as_ref().map_or(raw_inputs.span(), |g| g.span());
        let at_groups = S::new(at_groups, ());
        let mut key_positions = vec![Vec::new(); inputs.len()];
        for (k, &i) in inputs.iter().enumerate() {
            let m = &metrics[i];
            let names = field_names(m);
            let mut sorted_names = names.clone();
            sorted_names.sort();
            let mut wanted = group_names.clone();
            wanted.sort();
            if sorted_names != wanted {
                self.err(
                    &at_groups,
                    format!(
                        "metric `{name}`: input `{}` groups by [{}], not by [{}]; inputs are joined on all their group fields, which must be the derived metric's",
                        m.name,
                        names.join(", "),
                        group_names.join(", ")
                    ),
                );
                continue;
            }
            for g in &group_names {
                if let Some(p) = names.iter().position(|n| n == g) {
                    let (ty, first_ty) = (
                        &domains[m.domain].fields[m.group_by[p]].ty,
                        first.group_by.iter().find(|&&f| &domains[first.domain].fields[f].name == g).map(|&f| &domains[first.domain].fields[f].ty),
                    );
                    if Some(ty) != first_ty {
                        self.err(&at_groups, format!("metric `{name}`: group field `{g}` is {} in `{}` but not in `{}`", ty.name(), m.name, first.name));
                    }
                    key_positions[k].push(p);
                }
            }
        }
        let group_by: Vec<usize> =
            group_names.iter().filter_map(|g| first.group_by.iter().copied().find(|&f| &domains[first.domain].fields[f].name == g)).collect();

        let mut aggregates = Vec::new();
        let mut agg_names = HashSet::new();
        for a in &raw.aggregates {
            let a = a.get_ref();
            let aname = a.name.get_ref().clone();
            self.aggregate_name(&name, &a.name, &mut agg_names, group_names.contains(&aname));
            if let Some(f) = &a.func
                && f.get_ref() != "expr"
            {
                self.err(f, format!("metric `{name}`: a derived metric's aggregates are expressions (`expr = \"…\"`), not `fn = \"{}\"`", f.get_ref()));
            }
            let extra = [a.field.as_ref().map(|x| x.span()), a.filter.as_ref().map(|x| x.span()), a.q.as_ref().map(|x| x.span())];
            if let Some(span) = extra.into_iter().flatten().next() {
                self.err(&S::new(span, ()), format!("metric `{name}`: aggregate `{aname}` of a derived metric takes only `name` and `expr`"));
            }
            let Some(text) = &a.expr else {
                self.err(&a.name, format!("metric `{name}`: aggregate `{aname}` needs `expr` (e.g. \"{}.{}\")", first.name, first.aggregates[0].name));
                continue;
            };
            let mut resolve = |r: &crate::expr::RawRef| -> Result<(usize, usize), String> {
                let Some(k) = inputs.iter().position(|&i| metrics[i].name == r.metric) else {
                    return Err(format!("`{}` is not an input of `{name}` (inputs: {})", r.metric, raw_inputs.get_ref().join(", ")));
                };
                let m = &metrics[inputs[k]];
                let Some(ai) = m.aggregate_index(&r.aggregate) else {
                    return Err(format!("metric `{}` has no aggregate `{}`", m.name, r.aggregate));
                };
                Ok((k, ai))
            };
            match Expr::parse(text.get_ref(), &mut resolve) {
                Ok(e) => aggregates.push(Aggregate { name: aname, kind: AggKind::Expr(e), filter: None, method: AggMethod::Exact }),
                Err(e) => self.err(text, format!("metric `{name}`: aggregate `{aname}`: {e}")),
            }
        }
        if raw.aggregates.is_empty() {
            self.err(&raw.name, format!("metric `{name}` has no aggregates"));
        }
        let lateness = inputs.iter().map(|&i| metrics[i].lateness).max().unwrap_or(Millis(0));
        let retention = self.opt_duration(&raw.retention, &format!("metric `{name}`: retention"), DEFAULT_METRIC_RETENTION);
        if let Some(r) = &raw.retention {
            let needed = first.window.ms().saturating_add(lateness.ms());
            if retention.ms() < 1000 || retention.ms() <= needed || retention.ms() % 1000 != 0 {
                self.err(
                    r,
                    format!("metric `{name}`: retention {retention} must be a whole number of seconds longer than window + lateness ({})", Millis(needed)),
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Metric {
            name,
            domain: first.domain,
            group_by,
            window: first.window,
            slide: first.slide,
            lateness,
            aggregates,
            max_groups: DEFAULT_MAX_GROUPS,
            retention,
            derived: Some(Derived { inputs, key_positions }),
        })
    }

    fn filter(&mut self, raw: &S<RawFilter>, metric: &str, domain: &Domain) -> Option<Filter> {
        let r = raw.get_ref();
        let Some(fi) = domain.field_index(r.field.get_ref()) else {
            self.err(&r.field, format!("metric `{metric}`: filter on `{}`, which is not a field of domain `{}`", r.field.get_ref(), domain.name));
            return None;
        };
        let field = &domain.fields[fi];
        let given = usize::from(r.eq.is_some()) + usize::from(r.one_of.is_some()) + usize::from(r.non_empty.is_some());
        if given != 1 {
            self.err(raw, format!("metric `{metric}`: a filter takes exactly one of `eq`, `in`, `non_empty`"));
            return None;
        }
        if let Some(v) = &r.eq {
            return self.literal(raw, metric, field, v).map(|l| Filter::Eq(fi, l));
        }
        if let Some(vs) = &r.one_of {
            let lits: Vec<_> = vs.iter().filter_map(|v| self.literal(raw, metric, field, v)).collect();
            return (lits.len() == vs.len() && !lits.is_empty()).then_some(Filter::In(fi, lits));
        }
        if r.non_empty == Some(true) {
            if !matches!(field.ty, FieldType::String | FieldType::Enum(_)) && !field.optional {
                self.err(
                    raw,
                    format!("metric `{metric}`: non_empty needs a string field or an optional field, `{}` is a required {}", field.name, field.ty.name()),
                );
                return None;
            }
            return Some(Filter::NonEmpty(fi));
        }
        self.err(raw, format!("metric `{metric}`: `non_empty = false` filters nothing; remove the filter"));
        None
    }

    fn literal(&mut self, at: &S<RawFilter>, metric: &str, field: &Field, v: &toml::Value) -> Option<Literal> {
        let lit = match (&field.ty, v) {
            (FieldType::Enum(values), toml::Value::String(s)) => match values.iter().position(|x| x == s) {
                Some(i) => Some(Literal::Enum(i as u8)),
                None => {
                    self.err(at, format!("metric `{metric}`: `{s}` is not a value of enum field `{}` ({})", field.name, values.join(", ")));
                    return None;
                }
            },
            // Dimension values are stored in NFC; so is a filter on one.
            (FieldType::String, toml::Value::String(s)) if field.dimension => {
                use unicode_normalization::UnicodeNormalization as _;
                Some(Literal::Str(s.nfc().collect()))
            }
            (FieldType::String, toml::Value::String(s)) => Some(Literal::Str(s.clone())),
            (FieldType::Int, toml::Value::Integer(i)) => Some(Literal::Int(*i)),
            (FieldType::Float, toml::Value::Float(f)) => Some(Literal::Float(*f)),
            (FieldType::Float, toml::Value::Integer(i)) => Some(Literal::Float(*i as f64)),
            (FieldType::Bool, toml::Value::Boolean(b)) => Some(Literal::Bool(*b)),
            _ => None,
        };
        if lit.is_none() {
            self.err(at, format!("metric `{metric}`: filter value {} does not match field `{}` of type {}", toml_literal(v), field.name, field.ty.name()));
        }
        lit
    }
}

fn toml_literal(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => other.type_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_spec() -> Spec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        match Spec::load(&path) {
            Ok(s) => s,
            Err(e) => panic!("default spec must be valid:\n{e}"),
        }
    }

    #[test]
    fn default_spec_is_valid_and_complete() {
        let spec = default_spec();
        let names: Vec<_> = spec.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["rides", "driver_locations", "app_events"]);
        let rides = spec.domain("rides").expect("rides");
        assert_eq!(rides.topic, "ride-events");
        assert_eq!(rides.partitions, 12);
        assert_eq!(rides.retention, Millis(7 * 86_400_000));
        assert_eq!(rides.key_field().name, "ride_id");
        assert!(!rides.mutable);
        let dl = spec.domain("driver_locations").expect("driver_locations");
        assert_eq!((dl.partitions, dl.cleanup_policy.as_str()), (24, "compact,delete"));
        assert!(spec.domain("app_events").expect("app_events").mutable);

        let city = spec.metric("city_metrics").expect("city_metrics");
        assert_eq!((city.window, city.slide, city.lateness), (Millis(300_000), Millis(60_000), Millis(30_000)));
        assert_eq!(city.windows_per_event(), 5);
        let rate = &city.aggregates[city.aggregate_index("cancellation_rate").expect("rate")];
        let cancels = city.aggregate_index("cancellations").expect("cancellations");
        let requests = city.aggregate_index("requests").expect("requests");
        assert_eq!(rate.kind, AggKind::Ratio(cancels, requests));
        let ev = spec.metric("event_metrics").expect("event_metrics");
        assert!(ev.aggregates.iter().any(|a| matches!(a.kind, AggKind::Quantile(_, q) if q == 0.95)));
        assert_eq!(spec.pipeline.emit_interval, Millis(200));
    }

    const BASE: &str = r#"
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

    fn errors(extra: &str) -> Vec<String> {
        let text = format!("{BASE}{extra}");
        match Spec::parse(Path::new("t.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn assert_error(extra: &str, line: usize, needle: &str) {
        let errs = errors(extra);
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("t.toml:{line}: ")) && e.contains(needle)),
            "expected an error at line {line} containing {needle:?}, got {errs:#?}"
        );
    }

    const METRIC_HEAD: &str = "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"city\"]\n";
    // BASE ends at line 13; METRIC_HEAD fills lines 14..=18, so the next line is 19.

    #[test]
    fn valid_metric_passes() {
        assert_eq!(errors(&format!("{METRIC_HEAD}window = \"5m\"\nslide = \"1m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n")), Vec::<String>::new());
    }

    const INPUTS: &str = r#"
[[metric]]
name = "a"
domain = "rides"
group_by = ["city"]
window = "5m"
slide = "1m"
aggregates = [{ name = "n", fn = "count" }, { name = "fares", fn = "sum", field = "fare" }]

[[metric]]
name = "b"
domain = "rides"
group_by = ["city"]
window = "5m"
slide = "1m"
lateness = "10s"
aggregates = [{ name = "top", fn = "max", field = "fare" }]
"#;

    fn derived(body: &str) -> Vec<String> {
        errors(&format!("{INPUTS}\n[[metric]]\nname = \"d\"\n{body}"))
    }

    fn assert_derived_error(body: &str, needle: &str) {
        let errs = derived(body);
        assert!(errs.iter().any(|e| e.contains(needle)), "expected an error containing {needle:?}, got {errs:#?}");
    }

    #[test]
    fn derived_metrics() {
        let ok = "inputs = [\"a\", \"b\"]\naggregates = [{ name = \"r\", expr = \"a.n / b.top\" }, { name = \"s\", expr = \"(a.fares - 1) * -2\" }]\n";
        assert_eq!(derived(ok), Vec::<String>::new());
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{INPUTS}\n[[metric]]\nname = \"d\"\n{ok}")).expect("valid");
        let d = spec.metric("d").expect("d");
        let derived = d.derived.as_ref().expect("derived");
        assert_eq!(derived.inputs, vec![0, 1]);
        assert_eq!(derived.key_positions, vec![vec![0], vec![0]]);
        assert_eq!((d.window, d.slide, d.lateness), (Millis(300_000), Millis(60_000), Millis(10_000)), "its inputs' windows; their largest lateness");
        assert!(matches!(&d.aggregates[0].kind, AggKind::Expr(e) if e.to_string() == "(#0.0 / #1.0)"));

        assert_derived_error("inputs = [\"d\"]\naggregates = [{ name = \"r\", expr = \"1\" }]\n", "cannot read itself (a cycle)");
        assert_derived_error("inputs = [\"a\", \"zz\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "unknown input metric `zz`");
        assert_derived_error("inputs = [\"a\", \"a\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "listed twice");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.nope\" }]\n", "metric `a` has no aggregate `nope`");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"b.top\" }]\n", "`b` is not an input of `d`");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n +\" }]\n", "ends early");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n a.n\" }]\n", "column 5");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", fn = \"count\" }]\n", "aggregates are expressions");
        assert_derived_error("inputs = [\"a\"]\naggregates = [{ name = \"r\", expr = \"a.n\", field = \"fare\" }]\n", "takes only `name` and `expr`");
        assert_derived_error("inputs = [\"a\"]\ndomain = \"rides\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "takes no `domain`");
        assert_derived_error("inputs = [\"a\"]\nlateness = \"1m\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "takes no `lateness`");
        assert_derived_error("inputs = [\"a\"]\nwindow = \"10m\"\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "differs from its inputs'");
        assert_derived_error("inputs = [\"a\"]\ngroup_by = [\"kind\"]\naggregates = [{ name = \"r\", expr = \"a.n\" }]\n", "groups by [city], not by [kind]");
        assert_derived_error("inputs = []\naggregates = [{ name = \"r\", expr = \"1\" }]\n", "1 to 8 metrics");
        // An expression nested beyond the parser's depth is refused, not a stack overflow.
        let deep = format!("inputs = [\"a\"]\naggregates = [{{ name = \"r\", expr = \"{}a.n{}\" }}]\n", "(".repeat(5000), ")".repeat(5000));
        assert_derived_error(&deep, "nested more than");
        // Mismatched windows between inputs, a derived input (no chains), and an input declared later.
        let more = r#"
[[metric]]
name = "c"
domain = "rides"
group_by = ["city"]
window = "10m"
slide = "1m"
aggregates = [{ name = "n", fn = "count" }]

[[metric]]
name = "e"
inputs = ["a", "c"]
aggregates = [{ name = "r", expr = "a.n / c.n" }]

[[metric]]
name = "f"
inputs = ["a"]
aggregates = [{ name = "r", expr = "a.n" }]

[[metric]]
name = "g"
inputs = ["f"]
aggregates = [{ name = "r", expr = "f.r" }]

[[metric]]
name = "h"
inputs = ["later"]
aggregates = [{ name = "r", expr = "later.n" }]

[[metric]]
name = "later"
domain = "rides"
window = "5m"
aggregates = [{ name = "n", fn = "count" }]

[[metric]]
name = "k"
inputs = ["a", "kinds"]
aggregates = [{ name = "r", expr = "a.n" }]
"#;
        let errs = errors(&format!("{INPUTS}{more}"));
        for needle in [
            "metric `e`: inputs have different windows",
            "metric `g`: input `f` is itself derived",
            "metric `h`: input `later` must be declared before",
            "metric `k`: unknown input metric `kinds`",
        ] {
            assert!(errs.iter().any(|e| e.contains(needle)), "expected {needle:?} in {errs:#?}");
        }
    }

    #[test]
    fn metric_retention() {
        let spec = Spec::parse(
            Path::new("t.toml"),
            &format!("{BASE}{METRIC_HEAD}window = \"5m\"\nretention = \"90d\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
        )
        .expect("valid");
        assert_eq!(spec.metrics[0].retention, Millis(90 * 86_400_000));
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"))
            .expect("valid");
        assert_eq!(spec.metrics[0].retention, DEFAULT_METRIC_RETENTION);
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nlateness = \"30s\"\nretention = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            21,
            "longer than window + lateness (330s)",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nretention = \"soon\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "metric `m`: retention",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nretention = \"3601500ms\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "whole number of seconds",
        );
    }

    #[test]
    fn unknown_field_in_metric() {
        assert_error(&format!("{METRIC_HEAD}window = \"5m\"\ncolour = 3\naggregates = []\n"), 20, "unknown field `colour`");
    }

    #[test]
    fn unknown_aggregate() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n  {{ name = \"n\", fn = \"median\" }},\n]\n"),
            21,
            "unknown aggregate function `median`",
        );
    }

    #[test]
    fn window_not_multiple_of_slide() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\nslide = \"2m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"),
            20,
            "window 5m is not a multiple of slide 2m",
        );
    }

    #[test]
    fn bad_duration() {
        assert_error(&format!("{METRIC_HEAD}window = \"5 minutes\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"), 19, "window: duration `5 minutes`");
    }

    #[test]
    fn duplicate_names() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\" }},\n{{ name = \"n\", fn = \"count\" }},\n]\n"),
            22,
            "duplicate aggregate `n`",
        );
        assert_error(
            &format!(
                "{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n{METRIC_HEAD}window = \"5m\"\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n"
            ),
            23,
            "duplicate metric name `m`",
        );
        assert_error(
            "\n[[domain]]\nname = \"rides\"\ntopic = \"other\"\nkey = \"k\"\ntime_field = \"t\"\nfields = [{ name = \"k\", type = \"string\" }, { name = \"t\", type = \"timestamp\" }]\n",
            16,
            "duplicate domain name `rides`",
        );
    }

    #[test]
    fn filter_on_missing_field() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\", filter = {{ field = \"colour\", eq = \"red\" }} }},\n]\n"),
            21,
            "filter on `colour`, which is not a field of domain `rides`",
        );
    }

    #[test]
    fn filter_value_not_in_enum() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"n\", fn = \"count\", filter = {{ field = \"kind\", eq = \"c\" }} }},\n]\n"),
            21,
            "`c` is not a value of enum field `kind`",
        );
    }

    #[test]
    fn unknown_group_field_and_domain() {
        let text =
            "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"country\"]\nwindow = \"5m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
        assert_error(text, 18, "group_by field `country` is not a field");
        let text = "\n[[metric]]\nname = \"m\"\ndomain = \"trips\"\nwindow = \"5m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
        assert_error(text, 17, "unknown domain `trips`");
    }

    #[test]
    fn numeric_aggregate_on_string_and_bad_ratio() {
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"s\", fn = \"sum\", field = \"city\" }},\n]\n"),
            21,
            "needs a numeric field",
        );
        assert_error(
            &format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{{ name = \"r\", fn = \"ratio\", numerator = \"x\", denominator = \"r\" }},\n]\n"),
            21,
            "unknown aggregate `x`",
        );
    }

    #[test]
    fn domain_errors() {
        let text = "\n[[domain]]\nname = \"Bad Name\"\ntopic = \"t2\"\nkey = \"nope\"\ntime_field = \"k\"\nfields = [{ name = \"k\", type = \"strin\" }]\n";
        assert_error(text, 16, "must be a lowercase identifier");
        assert_error(text, 20, "unknown type `strin`");
        assert_error(text, 18, "key `nope` is not a field");
    }

    #[test]
    fn syntax_errors_have_lines() {
        assert_error("\n[[metric]\n", 15, "");
    }

    #[test]
    fn trust_boundary_keys() {
        let domain = |fields: &str, extra: &str| {
            format!(
                "[[domain]]\nname = \"d\"\ntopic = \"t\"\nkey = \"id\"\ntime_field = \"ts\"\n{extra}fields = [\n  {{ name = \"id\", type = \"string\" }},\n  {{ name = \"ts\", type = \"timestamp\" }},\n{fields}]\n"
            )
        };
        let errs = |text: String| match Spec::parse(Path::new("t.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| format!("{}:{}", e.line, e.message)).collect::<Vec<_>>(),
        };
        let ok = Spec::parse(Path::new("t.toml"), &domain("  { name = \"fare\", type = \"float\", min = 0, max = 10.5 },\n  { name = \"city\", type = \"string\", dimension = true, max_length = 64 },\n  { name = \"note\", type = \"string\" },\n", "max_future = \"1m\"\nmax_age = \"2d\"\n")).expect("valid");
        let d = &ok.domains[0];
        assert_eq!((d.max_future, d.max_age), (Millis(60_000), Millis(2 * 86_400_000)));
        assert_eq!((d.fields[2].min, d.fields[2].max), (Some(0.0), Some(10.5)));
        assert_eq!((d.fields[0].max_length, d.fields[3].max_length, d.fields[4].max_length), (DEFAULT_ID_LENGTH, 64, DEFAULT_TEXT_LENGTH));
        let defaults = Spec::parse(Path::new("t.toml"), &domain("", "retention = \"3d\"\n")).expect("valid");
        assert_eq!((defaults.domains[0].max_future, defaults.domains[0].max_age), (DEFAULT_MAX_FUTURE, Millis(3 * 86_400_000)));
        let e = errs(domain("  { name = \"s\", type = \"string\", min = 1 },\n", ""));
        assert!(e.iter().any(|e| e.starts_with("9:") && e.contains("cannot have `min`/`max`")), "{e:?}");
        let e = errs(domain("  { name = \"x\", type = \"int\", min = 5, max = 1 },\n", ""));
        assert!(e.iter().any(|e| e.contains("`max` 1 is below `min` 5")), "{e:?}");
        let e = errs(domain("  { name = \"x\", type = \"int\", max_length = 5 },\n", ""));
        assert!(e.iter().any(|e| e.contains("cannot have `max_length`")), "{e:?}");
        let e = errs(domain("", "max_future = \"soon\"\n"));
        assert!(e.iter().any(|e| e.starts_with("6:") && e.contains("max_future")), "{e:?}");
        let e = errs(format!(
            "{}\n[[metric]]\nname = \"m\"\ndomain = \"d\"\nwindow = \"1m\"\nmax_groups = 0\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n",
            domain("", "")
        ));
        assert!(e.iter().any(|e| e.contains("max_groups must be between")), "{e:?}");
    }

    /// `METRIC_HEAD` and one aggregate, which sits at line 21.
    fn one_aggregate(agg: &str) -> String {
        format!("{METRIC_HEAD}window = \"5m\"\naggregates = [\n{agg},\n]\n")
    }

    #[test]
    fn sketch_methods_parse_with_their_defaults() {
        let aggs = [
            r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll" }"#,
            r#"{ name = "u2", fn = "count_distinct", field = "ride_id", method = "hll", precision = 10 }"#,
            r#"{ name = "p", fn = "quantile", field = "fare", q = 0.9, method = "ddsketch" }"#,
            r#"{ name = "p2", fn = "quantile", field = "fare", q = 0.9, method = "ddsketch", relative_accuracy = 0.02 }"#,
            r#"{ name = "p3", fn = "quantile", field = "fare", q = 0.9, method = "exact" }"#,
            r#"{ name = "p4", fn = "quantile", field = "fare", q = 0.9 }"#,
            r#"{ name = "lo", fn = "min", field = "fare" }"#,
        ];
        let text = format!("{BASE}{METRIC_HEAD}window = \"5m\"\naggregates = [\n{}\n]\n", aggs.join(",\n"));
        let spec = Spec::parse(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let methods: Vec<AggMethod> = spec.metrics[0].aggregates.iter().map(|a| a.method).collect();
        assert_eq!(
            methods,
            [
                AggMethod::Hll { precision: 14 },
                AggMethod::Hll { precision: 10 },
                AggMethod::DdSketch { relative_accuracy: 0.01 },
                AggMethod::DdSketch { relative_accuracy: 0.02 },
                AggMethod::Exact,
                AggMethod::Exact,
                AggMethod::Exact,
            ]
        );
    }

    #[test]
    fn sketch_method_errors_have_lines() {
        let cases = [
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "hll" }"#, "method `hll` is only for count_distinct"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "ddsketch" }"#, "method `ddsketch` is only for quantile"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "tdigest" }"#, "unknown method `tdigest`"),
            (r#"{ name = "lo", fn = "min", field = "fare", method = "exact" }"#, "(min) takes no `method`"),
            (r#"{ name = "n", fn = "count", method = "hll" }"#, "(count) takes no `method`"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll", precision = 3 }"#, "precision must be an integer between 4 and 18"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", method = "hll", precision = 19 }"#, "precision must be an integer between 4 and 18"),
            (r#"{ name = "u", fn = "count_distinct", field = "ride_id", precision = 12 }"#, "only method = \"hll\" takes `precision`"),
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", precision = 12 }"#, "only method = \"hll\" takes `precision`"),
            (
                r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", relative_accuracy = 1.0 }"#,
                "relative_accuracy must be between 0 and 1",
            ),
            (
                r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, method = "ddsketch", relative_accuracy = 0.0 }"#,
                "relative_accuracy must be between 0 and 1",
            ),
            (r#"{ name = "p", fn = "quantile", field = "fare", q = 0.5, relative_accuracy = 0.01 }"#, "only method = \"ddsketch\" takes `relative_accuracy`"),
        ];
        for (agg, needle) in cases {
            assert_error(&one_aggregate(agg), 21, needle);
        }
    }

    #[test]
    fn hll_is_refused_on_a_mutable_domain_and_ddsketch_is_not() {
        let text = "[[domain]]\nname = \"apps\"\ntopic = \"apps\"\nkey = \"event_id\"\ntime_field = \"ts\"\nmutable = true\nfields = [\n  { name = \"event_id\", type = \"string\" },\n  { name = \"user\", type = \"string\" },\n  { name = \"ms\", type = \"float\" },\n  { name = \"ts\", type = \"timestamp\" },\n]\n\n[[metric]]\nname = \"m\"\ndomain = \"apps\"\nwindow = \"5m\"\naggregates = [\n  { name = \"p\", fn = \"quantile\", field = \"ms\", q = 0.5, method = \"ddsketch\" },\n  { name = \"u\", fn = \"count_distinct\", field = \"user\", method = \"hll\" },\n  { name = \"x\", fn = \"count_distinct\", field = \"user\" },\n]\n";
        let errs = match Spec::parse(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].starts_with("t.toml:20: ") && errs[0].contains("method `hll` cannot forget a value, and domain `apps` is mutable"), "{errs:#?}");
        let ok = text.replace(", method = \"hll\"", "");
        let spec = Spec::parse(Path::new("t.toml"), &ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.metrics[0].aggregates[0].method, AggMethod::DdSketch { relative_accuracy: 0.01 });
    }

    /// The derived `Debug` form of an aggregate before `method` existed.
    mod before_methods {
        // Its fields are read by the derived `Debug` only.
        #[allow(dead_code)]
        #[derive(Debug)]
        pub struct Aggregate<'a> {
            pub name: &'a String,
            pub kind: &'a super::AggKind,
            pub filter: &'a Option<super::Filter>,
        }
    }

    #[test]
    fn an_exact_aggregate_keeps_its_debug_form_and_a_sketch_changes_it() {
        let spec = default_spec();
        for m in &spec.metrics {
            for a in &m.aggregates {
                assert_eq!(a.method, AggMethod::Exact);
                let old = before_methods::Aggregate { name: &a.name, kind: &a.kind, filter: &a.filter };
                assert_eq!(format!("{a:?}"), format!("{old:?}"));
            }
        }
        let mut a = spec.metrics[0].aggregates[0].clone();
        let exact = format!("{a:?}");
        a.method = AggMethod::Hll { precision: 14 };
        let hll14 = format!("{a:?}");
        a.method = AggMethod::Hll { precision: 12 };
        assert!(exact != hll14 && hll14 != format!("{a:?}") && hll14.contains("Hll"), "{hll14}");
    }

    #[test]
    fn every_error_is_reported() {
        let errs = errors(&format!(
            "{METRIC_HEAD}window = \"5m\"\nslide = \"2m\"\naggregates = [\n{{ name = \"n\", fn = \"nope\" }},\n{{ name = \"s\", fn = \"sum\", field = \"nope\" }},\n]\n"
        ));
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn default_spec_ships_the_cancellation_alert() {
        let spec = default_spec();
        assert_eq!(spec.alerts.len(), 1);
        let a = &spec.alerts[0];
        let city = &spec.metrics[a.metric];
        assert_eq!(city.name, "city_metrics");
        assert_eq!(city.aggregates[a.condition.aggregate].name, "cancellation_rate");
        assert_eq!((a.condition.op, a.condition.value), (CmpOp::Gt, 0.30));
        let guard = a.guard.as_ref().expect("guard");
        assert_eq!((city.aggregates[guard.aggregate].name.as_str(), guard.op, guard.value), ("requests", CmpOp::Ge, 20.0));
        assert_eq!(a.for_, Millis(300_000));
        assert_eq!(a.resolve_after, Millis(600_000));
        assert_eq!(spec.pipeline.alerts_topic, "pulse-alerts");
    }

    const ALERT_METRIC: &str = "\n[[metric]]\nname = \"m\"\ndomain = \"rides\"\ngroup_by = [\"city\"]\nwindow = \"5m\"\nslide = \"1m\"\naggregates = [{ name = \"n\", fn = \"count\" }]\n";
    // BASE ends at line 13, ALERT_METRIC fills lines 14..=21: an alert starts at 22.

    #[test]
    fn the_alerts_stream_name_is_reserved() {
        assert_error(&ALERT_METRIC.replace("name = \"m\"", "name = \"alerts\""), 16, "`alerts` is reserved");
    }

    #[test]
    fn valid_alert_passes() {
        let text = format!(
            "{ALERT_METRIC}[[alert]]\nname = \"a\"\nmetric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"ge\", value = 3 }}\nfor = \"2m\"\nlabels = {{ team = \"x\" }}\nannotations = {{ summary = \"{{{{city}}}} at {{{{value}}}}\" }}\n"
        );
        assert_eq!(errors(&text), Vec::<String>::new());
        let spec = Spec::parse(Path::new("t.toml"), &format!("{BASE}{text}")).expect("valid");
        assert_eq!(spec.alerts[0].resolve_after, Millis(420_000));
        assert_eq!(spec.alerts[0].severity, "warning");
    }

    #[test]
    fn alert_errors_have_lines() {
        let head = format!("{ALERT_METRIC}[[alert]]\nname = \"a\"\n");
        assert_error(&format!("{head}metric = \"nope\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\n"), 24, "unknown metric `nope`");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"x\", op = \"gt\", value = 1 }}\n"), 25, "`x` is not an aggregate");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"above\", value = 1 }}\n"), 25, "unknown op `above`");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nfor = \"soon\"\n"), 26, "for: duration");
        assert_error(
            &format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nannotations = {{ s = \"{{{{town}}}}\" }}\n"),
            26,
            "unknown placeholder `{{town}}`",
        );
        assert_error(
            &format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nlabels = {{ city = \"x\" }}\n"),
            26,
            "label `city` is set by Pulse",
        );
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nwebhook = \"ftp://x\"\n"), 26, "webhook");
        assert_error(&format!("{head}metric = \"m\"\ncondition = {{ aggregate = \"n\", op = \"gt\", value = 1 }}\nthreshold = 3\n"), 26, "unknown field");
    }
}
