//! What the API can read, derived once from the validated spec: for each domain
//! its raw table and how each column is selected and rendered, for each metric
//! its table, group fields and aggregates. Identifiers in SQL come only from here.

use pulse_clickhouse::schema::ident;
use pulse_model::spec::{FieldType, Spec};
use serde_json::{Map, Value};

use crate::params::rfc3339;

/// How a selected column becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// As ClickHouse wrote it.
    Plain,
    /// Epoch ms → RFC 3339 string.
    Time,
    /// Two columns (lat, lng) → `{"lat": .., "lng": ..}` or null.
    Point,
}

/// The type a filter value is parsed as and bound with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterType {
    Str,
    Int,
    Bool,
}

impl FilterType {
    pub fn of(ty: &FieldType) -> Option<FilterType> {
        match ty {
            FieldType::String | FieldType::Enum(_) => Some(FilterType::Str),
            FieldType::Int => Some(FilterType::Int),
            FieldType::Bool => Some(FilterType::Bool),
            _ => None,
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            FilterType::Str => "String",
            FilterType::Int => "Int64",
            FilterType::Bool => "Bool",
        }
    }
}

/// One output column of a SELECT: the expression(s) and how to render them.
#[derive(Debug, Clone)]
pub struct OutCol {
    pub name: String,
    pub exprs: Vec<String>,
    pub render: Render,
}

/// Renders one `JSONCompactEachRow` row (an array) with `cols` into an object.
pub fn render_row(cols: &[OutCol], values: Vec<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut it = values.into_iter();
    for c in cols {
        let v = match c.render {
            Render::Plain => it.next().unwrap_or(Value::Null),
            Render::Time => match it.next().and_then(|v| v.as_i64()) {
                Some(ms) => rfc3339(ms).map_or(Value::Null, Value::String),
                None => Value::Null,
            },
            Render::Point => {
                let (lat, lng) = (it.next().unwrap_or(Value::Null), it.next().unwrap_or(Value::Null));
                if lat.is_null() || lng.is_null() {
                    Value::Null
                } else {
                    let mut p = Map::new();
                    p.insert("lat".into(), lat);
                    p.insert("lng".into(), lng);
                    Value::Object(p)
                }
            }
        };
        out.insert(c.name.clone(), v);
    }
    out
}

pub fn select_list(cols: &[OutCol]) -> String {
    cols.iter().flat_map(|c| c.exprs.iter().cloned()).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone)]
pub struct FieldView {
    pub name: String,
    pub filter: Option<FilterType>,
}

#[derive(Debug, Clone)]
pub struct DomainView {
    pub name: String,
    /// `db`.`table`
    pub table: String,
    pub mutable: bool,
    pub key: String,
    pub time_col: String,
    pub fields: Vec<FieldView>,
    /// Columns of an event answer, in spec order plus the envelope.
    pub cols: Vec<OutCol>,
}

impl DomainView {
    /// `FROM` clause: mutable tables are read with FINAL (latest version, deletes hidden).
    pub fn from(&self) -> String {
        if self.mutable { format!("{} FINAL", self.table) } else { self.table.clone() }
    }

    pub fn field(&self, name: &str) -> Option<&FieldView> {
        self.fields.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    pub filter: FilterType,
}

#[derive(Debug, Clone)]
pub struct MetricView {
    pub name: String,
    pub table: String,
    pub groups: Vec<GroupView>,
    pub aggs: Vec<String>,
    pub cols: Vec<OutCol>,
    /// Names of the metric row's time columns (rendered as RFC 3339).
    pub time_cols: [&'static str; 3],
}

impl MetricView {
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    pub fn group(&self, name: &str) -> Option<&GroupView> {
        self.groups.iter().find(|g| g.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub database: String,
    pub domains: Vec<DomainView>,
    pub metrics: Vec<MetricView>,
}

impl Catalog {
    pub fn new(spec: &Spec, database: &str) -> Catalog {
        let qualified = |t: &str| format!("{}.{}", ident(database), ident(t));
        let domains = spec
            .domains
            .iter()
            .map(|d| {
                let mut cols = Vec::new();
                let mut fields = Vec::new();
                for f in &d.fields {
                    let col = match f.ty {
                        FieldType::Timestamp => {
                            OutCol { name: f.name.clone(), exprs: vec![format!("toUnixTimestamp64Milli({})", ident(&f.name))], render: Render::Time }
                        }
                        FieldType::Point => OutCol {
                            name: f.name.clone(),
                            exprs: vec![ident(&format!("{}_lat", f.name)), ident(&format!("{}_lng", f.name))],
                            render: Render::Point,
                        },
                        _ => OutCol { name: f.name.clone(), exprs: vec![ident(&f.name)], render: Render::Plain },
                    };
                    cols.push(col);
                    fields.push(FieldView { name: f.name.clone(), filter: FilterType::of(&f.ty) });
                }
                if !d.declares_event_id() {
                    cols.push(OutCol { name: "event_id".into(), exprs: vec![ident("event_id")], render: Render::Plain });
                }
                cols.push(OutCol { name: "ingested_at".into(), exprs: vec!["toUnixTimestamp64Milli(`ingested_at`)".into()], render: Render::Time });
                if d.mutable {
                    cols.push(OutCol { name: "version".into(), exprs: vec![ident("version")], render: Render::Plain });
                }
                DomainView {
                    name: d.name.clone(),
                    table: qualified(&d.name),
                    mutable: d.mutable,
                    key: d.key_field().name.clone(),
                    time_col: d.time_field().name.clone(),
                    fields,
                    cols,
                }
            })
            .collect();
        let metrics = spec
            .metrics
            .iter()
            .map(|m| {
                let domain = spec.metric_domain(m);
                let groups: Vec<GroupView> = m
                    .group_by
                    .iter()
                    .map(|&g| {
                        let f = &domain.fields[g];
                        // Metric tables store Int and Bool groups as such, everything else as strings.
                        let filter = match f.ty {
                            FieldType::Int => FilterType::Int,
                            FieldType::Bool => FilterType::Bool,
                            _ => FilterType::Str,
                        };
                        GroupView { name: f.name.clone(), filter }
                    })
                    .collect();
                let mut cols: Vec<OutCol> =
                    groups.iter().map(|g| OutCol { name: g.name.clone(), exprs: vec![ident(&g.name)], render: Render::Plain }).collect();
                for t in ["window_start", "window_end"] {
                    cols.push(OutCol { name: t.into(), exprs: vec![format!("toUnixTimestamp64Milli({})", ident(t))], render: Render::Time });
                }
                for a in &m.aggregates {
                    cols.push(OutCol { name: a.name.clone(), exprs: vec![ident(&a.name)], render: Render::Plain });
                }
                cols.push(OutCol { name: "final".into(), exprs: vec![ident("final")], render: Render::Plain });
                cols.push(OutCol { name: "revision".into(), exprs: vec![ident("revision")], render: Render::Plain });
                cols.push(OutCol { name: "emitted_at".into(), exprs: vec!["toUnixTimestamp64Milli(`emitted_at`)".into()], render: Render::Time });
                MetricView {
                    name: m.name.clone(),
                    table: qualified(&m.name),
                    groups,
                    aggs: m.aggregates.iter().map(|a| a.name.clone()).collect(),
                    cols,
                    time_cols: ["window_start", "window_end", "emitted_at"],
                }
            })
            .collect();
        Catalog { database: database.to_string(), domains, metrics }
    }

    pub fn domain(&self, name: &str) -> Option<&DomainView> {
        self.domains.iter().find(|d| d.name == name)
    }

    pub fn metric(&self, name: &str) -> Option<&MetricView> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn default_spec_catalog() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let c = Catalog::new(&spec, "pulse");
        let rides = c.domain("rides").expect("rides");
        assert_eq!(rides.table, "`pulse`.`rides`");
        assert_eq!(rides.from(), "`pulse`.`rides`");
        assert_eq!(rides.key, "ride_id");
        let sel = select_list(&rides.cols);
        assert!(sel.contains("`pickup_lat`, `pickup_lng`") && sel.contains("toUnixTimestamp64Milli(`timestamp`)") && sel.contains("`event_id`"), "{sel}");
        assert_eq!(c.domain("app_events").expect("app").from(), "`pulse`.`app_events` FINAL");
        let m = c.metric("city_metrics").expect("metric");
        assert_eq!(m.group_names(), ["city"]);
        let row = render_row(&rides.cols[6..8], vec![serde_json::json!(1.5), serde_json::json!(2.5), Value::Null, Value::Null]);
        assert_eq!(row["pickup"], serde_json::json!({"lat": 1.5, "lng": 2.5}));
        assert!(row["dropoff"].is_null());
    }
}
