//! ClickHouse tables derived from the spec: one raw table per domain, one
//! table per metric, plus Pulse's bookkeeping tables. This is where a spec
//! field becomes a column type and where a row becomes RowBinary.

use bytes::{BufMut, BytesMut};
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::spec::{AggKind, Domain, FieldType, Metric, Spec};
use pulse_model::{Event, Op, Value};

/// Table recording applied migrations.
pub const MIGRATIONS_TABLE: &str = "pulse_migrations";
/// Periodic pipeline figures written by the services (for the health dashboard).
pub const STATS_TABLE: &str = "pulse_pipeline_stats";
/// The dataflow's durable progress: per consumer group and domain, the closed
/// watermark whose finals are durable (restart safety never depends on the
/// broker keeping commit metadata).
pub const PROGRESS_TABLE: &str = "pulse_progress";
/// Which instance of the dataflow job holds a consumer group: one at a time.
pub const LEASE_TABLE: &str = "pulse_leases";
/// Alert history (firing/resolved notifications) and the evaluator's recorded
/// state (pending/cleared/checkpoint rows) the dataflow resumes from.
pub const ALERTS_TABLE: &str = "pulse_alerts";

/// A column: name and ClickHouse type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: String,
}

impl Column {
    fn new(name: impl Into<String>, ty: impl Into<String>) -> Column {
        Column { name: name.into(), ty: ty.into() }
    }
}

/// A table definition; `create_sql` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub engine: String,
    pub partition_by: Option<String>,
    pub order_by: Vec<String>,
    pub ttl: Option<String>,
    /// Data-skipping indexes: (name, expression, type).
    pub indexes: Vec<(String, String, String)>,
    pub comment: String,
}

/// Quotes an identifier for ClickHouse SQL (names come from the validated spec).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A ClickHouse string literal.
pub fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Table {
    pub fn create_sql(&self, database: &str) -> String {
        let mut cols: Vec<String> = self.columns.iter().map(|c| format!("    {} {}", ident(&c.name), c.ty)).collect();
        for (name, expr, ty) in &self.indexes {
            cols.push(format!("    INDEX {} {expr} TYPE {ty} GRANULARITY 1", ident(name)));
        }
        let mut sql = format!("CREATE TABLE IF NOT EXISTS {}.{}\n(\n{}\n)\nENGINE = {}", ident(database), ident(&self.name), cols.join(",\n"), self.engine);
        if let Some(p) = &self.partition_by {
            sql.push_str(&format!("\nPARTITION BY {p}"));
        }
        let order: Vec<String> = self.order_by.iter().map(|c| ident(c)).collect();
        sql.push_str(&format!("\nORDER BY ({})", order.join(", ")));
        if let Some(t) = &self.ttl {
            sql.push_str(&format!("\nTTL {t}"));
        }
        sql.push_str(&format!("\nCOMMENT '{}'", self.comment.replace('\'', "\\'")));
        sql
    }

    /// `INSERT INTO db.table (cols) FORMAT RowBinary`
    pub fn insert_sql(&self, database: &str) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        format!("INSERT INTO {}.{} ({}) FORMAT RowBinary", ident(database), ident(&self.name), cols.join(", "))
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

// ---------------------------------------------------------------- raw tables

/// Where a raw-table column's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawSource {
    Field(usize),
    PointLat(usize),
    PointLng(usize),
    EventId,
    IngestedAt,
    Version,
    IsDeleted,
    KafkaPartition,
    KafkaOffset,
}

/// Encodings of the raw columns, matching the ClickHouse types chosen below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    Str,
    NullStr,
    I64,
    NullI64,
    F64,
    NullF64,
    Bool,
    NullBool,
    Time,
    NullTime,
    U64,
    U8,
    U16,
}

/// The raw table of one domain and its RowBinary encoder.
#[derive(Debug, Clone)]
pub struct RawTable {
    pub table: Table,
    sources: Vec<(RawSource, Enc)>,
    time_field: usize,
    enum_values: Vec<Option<Vec<String>>>,
}

/// Where a record came from, for provenance columns and derived ids.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record's timestamp (ms), the default for `ingested_at` and versions.
    pub timestamp_ms: i64,
}

fn field_column(name: &str, ty: &FieldType, optional: bool, dimension: bool) -> Vec<(Column, RawSource, Enc)> {
    let _ = name;
    let nullable = |t: &str| if optional { format!("Nullable({t})") } else { t.to_string() };
    match ty {
        FieldType::String | FieldType::Enum(_) if dimension || matches!(ty, FieldType::Enum(_)) => {
            let t = if optional { "LowCardinality(Nullable(String))" } else { "LowCardinality(String)" };
            vec![(Column::new(name, t), RawSource::Field(0), if optional { Enc::NullStr } else { Enc::Str })]
        }
        FieldType::String | FieldType::Enum(_) => {
            vec![(Column::new(name, nullable("String")), RawSource::Field(0), if optional { Enc::NullStr } else { Enc::Str })]
        }
        FieldType::Int => vec![(Column::new(name, nullable("Int64")), RawSource::Field(0), if optional { Enc::NullI64 } else { Enc::I64 })],
        FieldType::Float => vec![(Column::new(name, nullable("Float64")), RawSource::Field(0), if optional { Enc::NullF64 } else { Enc::F64 })],
        FieldType::Bool => vec![(Column::new(name, nullable("Bool")), RawSource::Field(0), if optional { Enc::NullBool } else { Enc::Bool })],
        FieldType::Timestamp => {
            vec![(Column::new(name, nullable("DateTime64(3, 'UTC')")), RawSource::Field(0), if optional { Enc::NullTime } else { Enc::Time })]
        }
        // A point is two columns; absent points are NULL in both.
        FieldType::Point => vec![
            (Column::new(format!("{name}_lat"), "Nullable(Float64)"), RawSource::PointLat(0), Enc::NullF64),
            (Column::new(format!("{name}_lng"), "Nullable(Float64)"), RawSource::PointLng(0), Enc::NullF64),
        ],
    }
}

/// ClickHouse refuses an insert block whose rows fall into more partitions than
/// this (`max_partitions_per_insert_block`, error TOO_MANY_PARTS): the sink groups
/// the rows of a batch by [`RawTable::partition_key`] into inserts of at most this
/// many partitions. Kept next to the raw tables' `PARTITION BY` below.
pub const MAX_PARTITIONS_PER_INSERT: usize = 100;

/// The raw table of a domain.
///
/// Immutable domains: `ReplacingMergeTree` ordered by (dimensions, time, key,
/// event_id), partitioned by day. A replay after a crash inserts the very same
/// rows again; the table key collapses them on merge and under `FINAL`.
///
/// Mutable domains: `ReplacingMergeTree(version, is_deleted)` ordered by
/// `event_id` alone, so that every version of an event, whatever its time or
/// dimensions, replaces the previous one. Replacement only happens inside one
/// partition, and an update may move an event to another day, so mutable
/// tables are not partitioned by time (TTL still expires old rows).
pub fn raw_table(domain: &Domain) -> RawTable {
    let mut cols = Vec::new();
    let mut sources = Vec::new();
    let mut enum_values = Vec::new();
    for (i, f) in domain.fields.iter().enumerate() {
        for (col, src, enc) in field_column(&f.name, &f.ty, f.optional, f.dimension) {
            let src = match src {
                RawSource::Field(_) => RawSource::Field(i),
                RawSource::PointLat(_) => RawSource::PointLat(i),
                RawSource::PointLng(_) => RawSource::PointLng(i),
                other => other,
            };
            cols.push(col);
            sources.push((src, enc));
        }
        enum_values.push(match &f.ty {
            FieldType::Enum(v) => Some(v.clone()),
            _ => None,
        });
    }
    if !domain.declares_event_id() {
        cols.push(Column::new("event_id", "String"));
        sources.push((RawSource::EventId, Enc::Str));
    }
    for (name, ty, src, enc) in [
        ("ingested_at", "DateTime64(3, 'UTC')", RawSource::IngestedAt, Enc::Time),
        ("version", "UInt64", RawSource::Version, Enc::U64),
        ("is_deleted", "UInt8", RawSource::IsDeleted, Enc::U8),
        ("kafka_partition", "UInt16", RawSource::KafkaPartition, Enc::U16),
        ("kafka_offset", "UInt64", RawSource::KafkaOffset, Enc::U64),
    ] {
        cols.push(Column::new(name, ty));
        sources.push((src, enc));
    }
    let time = domain.time_field().name.clone();
    let retention_days = (domain.retention.ms() / 86_400_000).max(1);
    let ttl = Some(format!("toDateTime({}) + INTERVAL {retention_days} DAY", ident(&time)));
    // Point reads by event id and timelines by key skip granules with bloom filters.
    let key_name = domain.key_field().name.clone();
    let mut indexes = Vec::new();
    for col in ["event_id".to_string(), key_name.clone()] {
        if !indexes.iter().any(|(n, _, _): &(String, String, String)| *n == format!("idx_{col}")) {
            indexes.push((format!("idx_{col}"), ident(&col), "bloom_filter(0.01)".to_string()));
        }
    }
    let table = if domain.mutable {
        Table {
            name: domain.name.clone(),
            columns: cols,
            engine: "ReplacingMergeTree(version, is_deleted)".into(),
            partition_by: None,
            order_by: vec!["event_id".into()],
            ttl,
            // Ordered by event_id already; timelines read by the key; reads
            // bounded in time (analytics, dashboards) skip granules by min/max.
            indexes: indexes
                .into_iter()
                .filter(|(n, _, _)| n != "idx_event_id")
                .chain(std::iter::once((format!("idx_{time}"), ident(&time), "minmax".to_string())))
                .collect(),
            comment: format!("Pulse raw events of domain {} (mutable: latest version per event_id, FINAL hides deleted)", domain.name),
        }
    } else {
        let mut order: Vec<String> = domain.fields.iter().filter(|f| f.dimension).map(|f| f.name.clone()).collect();
        order.push(time.clone());
        let key = domain.key_field().name.clone();
        if !order.contains(&key) {
            order.push(key);
        }
        if !order.iter().any(|c| c == "event_id") {
            order.push("event_id".into());
        }
        Table {
            name: domain.name.clone(),
            columns: cols,
            engine: "ReplacingMergeTree".into(),
            // Keep in step with `RawTable::partition_key` and MAX_PARTITIONS_PER_INSERT.
            partition_by: Some(format!("toYYYYMMDD({})", ident(&time))),
            order_by: order,
            ttl,
            indexes,
            comment: format!("Pulse raw events of domain {} (replays collapse on the ordering key)", domain.name),
        }
    };
    RawTable { table, sources, enum_values, time_field: domain.time_field }
}

/// The id of an event: its own, or one derived from its Kafka coordinates (stable across replays).
pub fn event_id_of(ev: &Event, at: &Provenance<'_>) -> String {
    match &ev.event_id {
        Some(id) => id.to_string(),
        None => format!("{}:{}:{}", at.topic, at.partition, at.offset),
    }
}

#[inline]
fn put_str(buf: &mut BytesMut, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.put_slice(s.as_bytes());
}

#[inline]
fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

impl RawTable {
    /// The partition the row of `ev` goes to: `toYYYYMMDD` of the time column
    /// (DateTime64(3, 'UTC')) as the yyyymmdd day in UTC, the value [`encode`](Self::encode)
    /// writes; `None` when the table is not partitioned (mutable domains).
    pub fn partition_key(&self, ev: &Event, at: &Provenance<'_>) -> Option<u32> {
        self.table.partition_by.as_ref()?;
        let ms = match ev.values.get(self.time_field) {
            Some(Value::Time(t)) => *t,
            Some(Value::Null) | None => ev.ingested_at.unwrap_or(at.timestamp_ms),
            Some(_) => 0,
        };
        Some(yyyymmdd_utc(ms))
    }

    /// Appends one event as a RowBinary row.
    pub fn encode(&self, ev: &Event, at: &Provenance<'_>, buf: &mut BytesMut) {
        for &(src, enc) in &self.sources {
            match src {
                // A delete carries no event time: it is stamped with when it was accepted,
                // so that TTL never expires the tombstone before the event it deletes.
                RawSource::Field(i) if i == self.time_field && ev.values[i].is_null() => {
                    buf.put_i64_le(ev.ingested_at.unwrap_or(at.timestamp_ms));
                }
                RawSource::Field(i) => self.put_value(buf, enc, &ev.values[i], i),
                RawSource::PointLat(i) | RawSource::PointLng(i) => match ev.values[i] {
                    Value::Point { lat, lng } => {
                        buf.put_u8(0);
                        buf.put_f64_le(if matches!(src, RawSource::PointLat(_)) { lat } else { lng });
                    }
                    _ => buf.put_u8(1),
                },
                RawSource::EventId => put_str(buf, &event_id_of(ev, at)),
                RawSource::IngestedAt => buf.put_i64_le(ev.ingested_at.unwrap_or(at.timestamp_ms)),
                RawSource::Version => buf.put_u64_le(ev.version.unwrap_or_else(|| u64::try_from(at.timestamp_ms).unwrap_or(0).saturating_mul(1000))),
                RawSource::IsDeleted => buf.put_u8(u8::from(ev.op == Op::Delete)),
                RawSource::KafkaPartition => buf.put_u16_le(u16::try_from(at.partition).unwrap_or(u16::MAX)),
                RawSource::KafkaOffset => buf.put_u64_le(u64::try_from(at.offset).unwrap_or(0)),
            }
        }
    }

    fn put_value(&self, buf: &mut BytesMut, enc: Enc, v: &Value, field: usize) {
        let nullable = matches!(enc, Enc::NullStr | Enc::NullI64 | Enc::NullF64 | Enc::NullBool | Enc::NullTime);
        if nullable {
            if v.is_null() {
                buf.put_u8(1);
                return;
            }
            buf.put_u8(0);
        }
        match (enc, v) {
            (Enc::Str | Enc::NullStr, Value::Str(s)) => put_str(buf, s),
            (Enc::Str | Enc::NullStr, Value::Enum(i)) => {
                let name = self.enum_values[field].as_ref().and_then(|v| v.get(*i as usize)).map_or("", String::as_str);
                put_str(buf, name);
            }
            (Enc::Str | Enc::NullStr, Value::Int(i)) => put_str(buf, &i.to_string()),
            (Enc::I64 | Enc::NullI64, Value::Int(i)) => buf.put_i64_le(*i),
            (Enc::F64 | Enc::NullF64, v) if v.as_f64().is_some() => buf.put_f64_le(v.as_f64().unwrap_or(0.0)),
            (Enc::Bool | Enc::NullBool, Value::Bool(b)) => buf.put_u8(u8::from(*b)),
            (Enc::Time | Enc::NullTime, Value::Time(t)) => buf.put_i64_le(*t),
            // A required column without a value only happens for delete tombstones: write the type's default.
            (Enc::Str | Enc::NullStr, _) => put_str(buf, ""),
            (Enc::I64 | Enc::NullI64 | Enc::Time | Enc::NullTime, _) => buf.put_i64_le(0),
            (Enc::F64 | Enc::NullF64, _) => buf.put_f64_le(0.0),
            (Enc::Bool | Enc::NullBool | Enc::U8, _) => buf.put_u8(0),
            (Enc::U64, _) => buf.put_u64_le(0),
            (Enc::U16, _) => buf.put_u16_le(0),
        }
    }
}

/// The UTC calendar day of a time in ms since the epoch, as yyyymmdd (ClickHouse's
/// `toYYYYMMDD`); days from the civil calendar (H. Hinnant's `civil_from_days`).
pub fn yyyymmdd_utc(ms: i64) -> u32 {
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u32::try_from(year * 10_000 + month * 100 + day).unwrap_or(0)
}

// ---------------------------------------------------------------- metric tables

/// The output table of one metric and its RowBinary encoder.
#[derive(Debug, Clone)]
pub struct MetricTable {
    pub table: Table,
    /// Whether each aggregate column is a count (UInt64) rather than a Nullable(Float64).
    counts: Vec<bool>,
    group_kinds: Vec<GroupKind>,
}

#[derive(Debug, Clone, Copy)]
enum GroupKind {
    Str,
    Int,
    Bool,
}

/// Whether an aggregate is stored as a count (UInt64).
pub fn is_count(kind: &AggKind) -> bool {
    matches!(kind, AggKind::Count | AggKind::CountDistinct(_))
}

pub fn metric_table(spec: &Spec, metric: &Metric) -> MetricTable {
    let domain = spec.metric_domain(metric);
    let mut cols = Vec::new();
    let mut group_kinds = Vec::new();
    let mut order = Vec::new();
    for &g in &metric.group_by {
        let f = &domain.fields[g];
        let (ty, kind) = match f.ty {
            FieldType::Int => ("Int64", GroupKind::Int),
            FieldType::Bool => ("Bool", GroupKind::Bool),
            _ => ("LowCardinality(String)", GroupKind::Str),
        };
        cols.push(Column::new(&f.name, ty));
        group_kinds.push(kind);
        order.push(f.name.clone());
    }
    cols.push(Column::new("window_start", "DateTime64(3, 'UTC')"));
    cols.push(Column::new("window_end", "DateTime64(3, 'UTC')"));
    order.push("window_start".into());
    let mut counts = Vec::new();
    for a in &metric.aggregates {
        let count = is_count(&a.kind);
        cols.push(Column::new(&a.name, if count { "UInt64" } else { "Nullable(Float64)" }));
        counts.push(count);
    }
    cols.push(Column::new("final", "Bool"));
    cols.push(Column::new("revision", "UInt64"));
    cols.push(Column::new("emitted_at", "DateTime64(3, 'UTC')"));
    // Windows expire `retention` after they start: on window_start, the time column
    // of the ordering key and of the partitioning, so whole days of parts drop at once.
    let secs = (metric.retention.ms() / 1000).max(1);
    let ttl = if secs % 86_400 == 0 {
        format!("toDateTime(window_start) + INTERVAL {} DAY", secs / 86_400)
    } else {
        format!("toDateTime(window_start) + INTERVAL {secs} SECOND")
    };
    MetricTable {
        table: Table {
            name: metric.name.clone(),
            columns: cols,
            engine: "ReplacingMergeTree(revision)".into(),
            partition_by: Some("toYYYYMMDD(window_start)".into()),
            order_by: order,
            ttl: Some(ttl),
            indexes: Vec::new(),
            comment: format!(
                "Pulse metric {}: {} windows sliding {} per group; latest revision wins, final = window closed",
                metric.name, metric.window, metric.slide
            ),
        },
        counts,
        group_kinds,
    }
}

impl MetricTable {
    pub fn encode(&self, row: &MetricRow, buf: &mut BytesMut) {
        for (kind, g) in self.group_kinds.iter().zip(&row.group) {
            match (kind, g) {
                (GroupKind::Str, GroupValue::Str(s)) => put_str(buf, s),
                (GroupKind::Str, GroupValue::Int(i)) => put_str(buf, &i.to_string()),
                (GroupKind::Str, GroupValue::Bool(b)) => put_str(buf, if *b { "true" } else { "false" }),
                (GroupKind::Int, GroupValue::Int(i)) => buf.put_i64_le(*i),
                (GroupKind::Bool, GroupValue::Bool(b)) => buf.put_u8(u8::from(*b)),
                (GroupKind::Str, GroupValue::Null) => put_str(buf, ""),
                (GroupKind::Int, _) => buf.put_i64_le(0),
                (GroupKind::Bool, _) => buf.put_u8(0),
            }
        }
        buf.put_i64_le(row.window_start);
        buf.put_i64_le(row.window_end);
        for (count, v) in self.counts.iter().zip(&row.values) {
            match (count, v) {
                (true, AggValue::Count(n)) => buf.put_u64_le(*n),
                (true, AggValue::Float(f)) => buf.put_u64_le(f.map_or(0, |f| f as u64)),
                (false, AggValue::Float(Some(f))) => {
                    buf.put_u8(0);
                    buf.put_f64_le(*f);
                }
                (false, AggValue::Count(n)) => {
                    buf.put_u8(0);
                    buf.put_f64_le(*n as f64);
                }
                (false, AggValue::Float(None)) => buf.put_u8(1),
            }
        }
        buf.put_u8(u8::from(row.is_final));
        buf.put_u64_le(row.revision);
        buf.put_i64_le(row.emitted_at);
    }
}

// ---------------------------------------------------------------- bookkeeping

pub fn migrations_table() -> Table {
    Table {
        name: MIGRATIONS_TABLE.into(),
        columns: vec![
            Column::new("id", "UInt64"),
            Column::new("applied_at", "DateTime64(3, 'UTC')"),
            Column::new("spec_file", "String"),
            Column::new("statement", "String"),
        ],
        engine: "MergeTree".into(),
        partition_by: None,
        order_by: vec!["id".into()],
        ttl: None,
        indexes: Vec::new(),
        comment: "Pulse: every DDL statement pulse migrate applied".into(),
    }
}

/// Long-format pipeline figures: one row per (time, service, domain, name).
pub fn stats_table() -> Table {
    Table {
        name: STATS_TABLE.into(),
        columns: vec![
            Column::new("ts", "DateTime64(3, 'UTC')"),
            Column::new("service", "LowCardinality(String)"),
            Column::new("instance", "LowCardinality(String)"),
            Column::new("domain", "LowCardinality(String)"),
            Column::new("name", "LowCardinality(String)"),
            Column::new("value", "Float64"),
        ],
        engine: "MergeTree".into(),
        partition_by: Some("toYYYYMMDD(ts)".into()),
        order_by: vec!["name".into(), "domain".into(), "ts".into()],
        ttl: Some("toDateTime(ts) + INTERVAL 30 DAY".into()),
        indexes: Vec::new(),
        comment: "Pulse pipeline figures (events, late events, dead letters, watermark delay, lag) for the health dashboard".into(),
    }
}

/// The dataflow's progress: the largest closed watermark per (group, domain) wins.
pub fn progress_table() -> Table {
    Table {
        name: PROGRESS_TABLE.into(),
        columns: vec![
            Column::new("consumer_group", "String"),
            Column::new("domain", "String"),
            Column::new("closed", "Int64"),
            Column::new("written_at", "DateTime64(3, 'UTC')"),
        ],
        engine: "ReplacingMergeTree(closed)".into(),
        partition_by: None,
        order_by: vec!["consumer_group".into(), "domain".into()],
        ttl: None,
        indexes: Vec::new(),
        comment: "Pulse dataflow: per consumer group and domain, the closed watermark whose final windows are durable".into(),
    }
}

/// The job's lease per consumer group: the holder renews it; a newcomer waits
/// until it expires (or is released), then claims the next generation.
pub fn lease_table() -> Table {
    Table {
        name: LEASE_TABLE.into(),
        columns: vec![
            Column::new("consumer_group", "String"),
            Column::new("generation", "UInt64"),
            Column::new("token", "String"),
            Column::new("instance", "String"),
            Column::new("seq", "UInt64"),
            Column::new("renewed_at", "DateTime64(3, 'UTC')"),
        ],
        engine: "ReplacingMergeTree(seq)".into(),
        partition_by: None,
        order_by: vec!["consumer_group".into(), "generation".into(), "token".into()],
        ttl: Some("toDateTime(renewed_at) + INTERVAL 7 DAY".into()),
        indexes: Vec::new(),
        comment: "Pulse dataflow: which instance holds each consumer group (renewed while it runs)".into(),
    }
}

/// Alert history and state: one row per transition of a (rule, group), and a
/// `checkpoint` row whenever the state folded over final windows moves on
/// while the group is pending or firing. Read back at start (the newest row per
/// consumer group, rule and group) so that a restart neither loses a firing
/// alert nor notifies it twice.
pub fn alerts_table() -> Table {
    let ts = "DateTime64(3, 'UTC')";
    Table {
        name: ALERTS_TABLE.into(),
        columns: vec![
            Column::new("consumer_group", "LowCardinality(String)"),
            Column::new("rule", "LowCardinality(String)"),
            Column::new("metric", "LowCardinality(String)"),
            Column::new("group_key", "String"),
            Column::new("event", "LowCardinality(String)"),
            Column::new("status", "LowCardinality(String)"),
            Column::new("severity", "LowCardinality(String)"),
            Column::new("fingerprint", "String"),
            Column::new("labels", "String"),
            Column::new("annotations", "String"),
            Column::new("since", ts),
            Column::new("starts_at", ts),
            Column::new("ends_at", "Nullable(DateTime64(3, 'UTC'))"),
            Column::new("value", "Nullable(Float64)"),
            Column::new("guard_value", "Nullable(Float64)"),
            Column::new("notified_since", "Int64"),
            Column::new("notified_fired_at", "Int64"),
            Column::new("decided_end", "Nullable(Int64)"),
            Column::new("ck_status", "LowCardinality(String)"),
            Column::new("ck_since", "Int64"),
            Column::new("ck_fired_at", "Int64"),
            Column::new("ck_last_end", "Nullable(Int64)"),
            Column::new("ck_last_hold", "Nullable(Int64)"),
            Column::new("ck_changed_at", "Int64"),
            Column::new("ck_value", "Nullable(Float64)"),
            Column::new("ck_guard_value", "Nullable(Float64)"),
            Column::new("row_emitted_at", ts),
            Column::new("recorded_at", ts),
            Column::new("seq", "UInt64"),
        ],
        engine: "MergeTree".into(),
        partition_by: Some("toYYYYMM(recorded_at)".into()),
        order_by: vec!["consumer_group".into(), "rule".into(), "group_key".into(), "seq".into()],
        ttl: Some("toDateTime(recorded_at) + INTERVAL 90 DAY".into()),
        indexes: Vec::new(),
        comment: "Pulse alerts: firing/resolved history per rule and group, and the evaluator state the dataflow resumes from".into(),
    }
}

/// One row of the alerts table (times in ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub consumer_group: String,
    pub rule: String,
    pub metric: String,
    pub group_key: String,
    pub event: String,
    pub status: String,
    pub severity: String,
    pub fingerprint: String,
    pub labels: String,
    pub annotations: String,
    pub since: i64,
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    pub value: Option<f64>,
    pub guard_value: Option<f64>,
    pub notified_since: i64,
    pub notified_fired_at: i64,
    pub decided_end: Option<i64>,
    pub ck_status: String,
    pub ck_since: i64,
    pub ck_fired_at: i64,
    pub ck_last_end: Option<i64>,
    pub ck_last_hold: Option<i64>,
    pub ck_changed_at: i64,
    pub ck_value: Option<f64>,
    pub ck_guard_value: Option<f64>,
    pub row_emitted_at: i64,
    pub recorded_at: i64,
    pub seq: u64,
}

pub fn encode_alert(r: &AlertRow, buf: &mut BytesMut) {
    fn opt_i64(buf: &mut BytesMut, v: Option<i64>) {
        match v {
            Some(v) => {
                buf.put_u8(0);
                buf.put_i64_le(v);
            }
            None => buf.put_u8(1),
        }
    }
    fn opt_f64(buf: &mut BytesMut, v: Option<f64>) {
        match v {
            Some(v) if v.is_finite() => {
                buf.put_u8(0);
                buf.put_f64_le(v);
            }
            _ => buf.put_u8(1),
        }
    }
    for s in [&r.consumer_group, &r.rule, &r.metric, &r.group_key, &r.event, &r.status, &r.severity, &r.fingerprint, &r.labels, &r.annotations] {
        put_str(buf, s);
    }
    buf.put_i64_le(r.since);
    buf.put_i64_le(r.starts_at);
    opt_i64(buf, r.ends_at);
    opt_f64(buf, r.value);
    opt_f64(buf, r.guard_value);
    buf.put_i64_le(r.notified_since);
    buf.put_i64_le(r.notified_fired_at);
    opt_i64(buf, r.decided_end);
    put_str(buf, &r.ck_status);
    buf.put_i64_le(r.ck_since);
    buf.put_i64_le(r.ck_fired_at);
    opt_i64(buf, r.ck_last_end);
    opt_i64(buf, r.ck_last_hold);
    buf.put_i64_le(r.ck_changed_at);
    opt_f64(buf, r.ck_value);
    opt_f64(buf, r.ck_guard_value);
    buf.put_i64_le(r.row_emitted_at);
    buf.put_i64_le(r.recorded_at);
    buf.put_u64_le(r.seq);
}

/// One row of the progress table.
pub fn encode_progress(group: &str, domain: &str, closed: i64, written_at: i64, buf: &mut BytesMut) {
    put_str(buf, group);
    put_str(buf, domain);
    buf.put_i64_le(closed);
    buf.put_i64_le(written_at);
}

/// One row of the stats table.
#[derive(Debug, Clone, PartialEq)]
pub struct StatRow {
    pub ts: i64,
    pub service: &'static str,
    pub instance: String,
    pub domain: String,
    pub name: &'static str,
    pub value: f64,
}

pub fn encode_stat(row: &StatRow, buf: &mut BytesMut) {
    buf.put_i64_le(row.ts);
    put_str(buf, row.service);
    put_str(buf, &row.instance);
    put_str(buf, &row.domain);
    put_str(buf, row.name);
    buf.put_f64_le(row.value);
}

/// Every table the spec needs, bookkeeping first.
pub fn all_tables(spec: &Spec) -> Vec<Table> {
    let mut tables = vec![migrations_table(), stats_table(), progress_table(), lease_table(), alerts_table()];
    tables.extend(spec.domains.iter().map(|d| raw_table(d).table));
    tables.extend(spec.metrics.iter().map(|m| metric_table(spec, m).table));
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> Spec {
        Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rides_table_ddl() {
        let spec = spec();
        let t = raw_table(spec.domain("rides").expect("rides")).table;
        let sql = t.create_sql("pulse");
        assert!(sql.contains("`event_type` LowCardinality(String)"), "{sql}");
        assert!(sql.contains("`city` LowCardinality(String)"), "{sql}");
        assert!(sql.contains("`driver_id` Nullable(String)"), "{sql}");
        assert!(sql.contains("`pickup_lat` Nullable(Float64)"), "{sql}");
        assert!(sql.contains("`timestamp` DateTime64(3, 'UTC')"), "{sql}");
        assert!(sql.contains("ENGINE = ReplacingMergeTree\n"), "{sql}");
        assert!(sql.contains("PARTITION BY toYYYYMMDD(`timestamp`)"), "{sql}");
        assert!(sql.contains("ORDER BY (`city`, `timestamp`, `ride_id`, `event_id`)"), "{sql}");
        assert!(sql.contains("TTL toDateTime(`timestamp`) + INTERVAL 7 DAY"), "{sql}");
        assert!(sql.contains("INDEX `idx_event_id` `event_id` TYPE bloom_filter(0.01) GRANULARITY 1"), "{sql}");
        assert!(sql.contains("INDEX `idx_ride_id` `ride_id` TYPE bloom_filter"), "{sql}");
        let app = raw_table(spec.domain("app_events").expect("app")).table.create_sql("pulse");
        assert!(app.contains("ReplacingMergeTree(version, is_deleted)") && app.contains("ORDER BY (`event_id`)"), "{app}");
    }

    #[test]
    fn metric_table_ddl() {
        let spec = spec();
        let m = spec.metric("city_metrics").expect("metric");
        let sql = metric_table(&spec, m).table.create_sql("pulse");
        assert!(sql.contains("`requests` UInt64") && sql.contains("`unique_riders` UInt64"), "{sql}");
        assert!(sql.contains("`avg_fare` Nullable(Float64)") && sql.contains("`cancellation_rate` Nullable(Float64)"), "{sql}");
        assert!(sql.contains("ReplacingMergeTree(revision)") && sql.contains("ORDER BY (`city`, `window_start`)"), "{sql}");
        // The spec's per-metric retention (default 30 days) is the table's TTL, on the ordering key's time column.
        assert!(sql.contains("TTL toDateTime(window_start) + INTERVAL 30 DAY"), "{sql}");
        let mut m = m.clone();
        m.retention = pulse_model::Millis(36 * 3_600_000);
        assert!(metric_table(&spec, &m).table.create_sql("pulse").contains("TTL toDateTime(window_start) + INTERVAL 129600 SECOND"));
    }

    #[test]
    fn days_are_utc_yyyymmdd() {
        assert_eq!(yyyymmdd_utc(0), 19_700_101);
        assert_eq!(yyyymmdd_utc(-1), 19_691_231);
        assert_eq!(yyyymmdd_utc(1_700_000_000_000), 20_231_114);
        assert_eq!(yyyymmdd_utc(951_782_400_000), 20_000_229); // 2000-02-29 00:00 UTC
        assert_eq!(yyyymmdd_utc(951_868_799_999), 20_000_229);
        assert_eq!(yyyymmdd_utc(4_102_444_800_000), 21_000_101);
    }

    #[test]
    fn partition_key_follows_the_time_field() {
        let spec = spec();
        let rides = raw_table(spec.domain("rides").expect("rides"));
        let decoder = pulse_model::Decoder::new(spec.domain("rides").expect("rides"));
        let ev = decoder
            .decode(br#"{"event_type":"requested","ride_id":"r1","city":"Lima","estimated_fare":1.0,"user_id":"u","timestamp":1700000000000}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let at = Provenance { topic: "t", partition: 0, offset: 0, timestamp_ms: 0 };
        assert_eq!(rides.partition_key(&ev, &at), Some(20_231_114));
        let apps = raw_table(spec.domain("app_events").expect("app"));
        assert!(apps.table.partition_by.is_none());
        let app_ev = pulse_model::Decoder::new(spec.domain("app_events").expect("app"))
            .decode(br#"{"event_id":"a","session_id":"s","event_name":"e","latency_ms":1.0,"timestamp":1700000000000}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(apps.partition_key(&app_ev, &at), None);
    }

    #[test]
    fn varints() {
        let mut b = BytesMut::new();
        put_varint(&mut b, 300);
        assert_eq!(&b[..], &[0xAC, 0x02]);
    }
}
