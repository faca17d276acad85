//! `pulse migrate`: derives the DDL from the spec and applies it idempotently.
//! Additive changes (a new field, a new metric, a new aggregate) become
//! `ALTER TABLE ... ADD COLUMN` or new tables; destructive ones (a removed or
//! retyped column, a changed table key) are refused and nothing is applied.

use pulse_model::Spec;
use serde::Deserialize;

use crate::config::ClickHouseConfig;
use crate::schema::{MIGRATIONS_TABLE, Table, all_tables, ident};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("refusing destructive schema changes (nothing was applied):\n  {}", .0.join("\n  "))]
    Destructive(Vec<String>),
}

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub up_to_date: Vec<String>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct ColumnInfo {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// Plans the statements that bring the database to the spec, without applying them.
pub async fn plan(cfg: &ClickHouseConfig, spec: &Spec) -> Result<(Vec<String>, MigrationReport), MigrateError> {
    let client = cfg.server_client();
    let db = &cfg.database;
    let mut statements = vec![format!("CREATE DATABASE IF NOT EXISTS {}", ident(db))];
    let mut report = MigrationReport::default();
    let mut refused = Vec::new();
    for table in all_tables(spec) {
        let existing: Vec<ColumnInfo> = client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ? ORDER BY position")
            .bind(db.as_str())
            .bind(table.name.as_str())
            .fetch_all()
            .await?;
        if existing.is_empty() {
            statements.push(table.create_sql(db));
            continue;
        }
        let before = statements.len();
        diff(&table, &existing, db, &mut statements, &mut refused);
        let key: Vec<SortingKey> = client
            .query("SELECT sorting_key, engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(db.as_str())
            .bind(table.name.as_str())
            .fetch_all()
            .await?;
        let want = table.order_by.join(", ");
        let normalize = |k: &str| k.replace(['`', '(', ')', ' '], "");
        if let Some(k) = key.first()
            && normalize(&k.sorting_key) != normalize(&want)
        {
            refused.push(format!("{}: ORDER BY is ({}), the spec needs ({want}); recreate the table", table.name, k.sorting_key));
        }
        // A data-skipping index the spec's tables have and this one lacks is added and built.
        let have: Vec<String> = client
            .query("SELECT name FROM system.data_skipping_indices WHERE database = ? AND table = ?")
            .bind(db.as_str())
            .bind(table.name.as_str())
            .fetch_all()
            .await?;
        for (name, expr, ty) in &table.indexes {
            if !have.contains(name) {
                let t = format!("{}.{}", ident(db), ident(&table.name));
                statements.push(format!("ALTER TABLE {t} ADD INDEX IF NOT EXISTS {} {expr} TYPE {ty} GRANULARITY 1", ident(name)));
                statements.push(format!("ALTER TABLE {t} MATERIALIZE INDEX {}", ident(name)));
            }
        }
        // A changed retention changes the table's TTL in place (ClickHouse applies it at the next merges).
        if let (Some(k), Some(ttl)) = (key.first(), &table.ttl)
            && normalize_ttl(ttl_clause(&k.engine_full).unwrap_or_default()) != normalize_ttl(ttl)
        {
            statements.push(format!("ALTER TABLE {}.{} MODIFY TTL {ttl}", ident(db), ident(&table.name)));
        }
        if statements.len() == before {
            report.up_to_date.push(table.name.clone());
        }
    }
    if !refused.is_empty() {
        return Err(MigrateError::Destructive(refused));
    }
    Ok((statements, report))
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct SortingKey {
    sorting_key: String,
    engine_full: String,
}

/// The TTL expression of a table, as `system.tables.engine_full` shows it.
fn ttl_clause(engine_full: &str) -> Option<&str> {
    let start = engine_full.find(" TTL ")? + " TTL ".len();
    let rest = &engine_full[start..];
    Some(rest.find(" SETTINGS ").map_or(rest, |end| &rest[..end]))
}

/// A TTL expression in one spelling: ClickHouse shows `INTERVAL 30 DAY` as
/// `toIntervalDay(30)` and drops quotes and spaces.
fn normalize_ttl(expr: &str) -> String {
    let flat: String = expr.chars().filter(|c| !c.is_whitespace() && *c != '`').collect::<String>().to_lowercase();
    let mut out = String::with_capacity(flat.len());
    let mut rest = flat.as_str();
    while let Some(i) = rest.find("interval") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "interval".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let unit = ["second", "minute", "hour", "day", "week", "month", "year"].into_iter().find(|u| after[digits..].starts_with(u));
        match unit {
            Some(u) if digits > 0 => {
                out.push_str(&format!("tointerval{u}({})", &after[..digits]));
                rest = &after[digits + u.len()..];
            }
            _ => {
                out.push_str("interval");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn diff(table: &Table, existing: &[ColumnInfo], db: &str, statements: &mut Vec<String>, refused: &mut Vec<String>) {
    for have in existing {
        match table.column(&have.name) {
            None => refused.push(format!(
                "{}: column `{}` is no longer in the spec (dropping data is not automatic; drop it by hand or restore the field)",
                table.name, have.name
            )),
            Some(want) if want.ty != have.ty => refused.push(format!(
                "{}: column `{}` is {} in ClickHouse but {} in the spec (changing a column's type is not automatic)",
                table.name, have.name, have.ty, want.ty
            )),
            Some(_) => {}
        }
    }
    let mut previous: Option<&str> = None;
    for want in &table.columns {
        if !existing.iter().any(|c| c.name == want.name) {
            let position = match previous {
                Some(p) => format!(" AFTER {}", ident(p)),
                None => " FIRST".to_string(),
            };
            statements.push(format!("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {} {}{position}", ident(db), ident(&table.name), ident(&want.name), want.ty));
        }
        previous = Some(&want.name);
    }
}

/// Applies the plan and records each statement in the migrations table.
pub async fn migrate(cfg: &ClickHouseConfig, spec: &Spec) -> Result<MigrationReport, MigrateError> {
    let (statements, mut report) = plan(cfg, spec).await?;
    let client = cfg.server_client();
    let mut applied = Vec::new();
    for sql in &statements {
        client.query(sql).execute().await?;
        // The database statement is always planned; only count it when it created something.
        if !sql.starts_with("CREATE DATABASE") {
            tracing::info!("migrate: {}", sql.lines().next().unwrap_or(sql));
            applied.push(sql.clone());
        }
    }
    if !applied.is_empty() {
        let next: u64 = client.query(&format!("SELECT max(id) + 1 FROM {}.{}", ident(&cfg.database), ident(MIGRATIONS_TABLE))).fetch_one().await?;
        for (i, sql) in applied.iter().enumerate() {
            client
                .query(&format!(
                    "INSERT INTO {}.{} (id, applied_at, spec_file, statement) VALUES (?, now64(3), ?, ?)",
                    ident(&cfg.database),
                    ident(MIGRATIONS_TABLE)
                ))
                .bind(next + i as u64)
                .bind(spec.file.display().to_string())
                .bind(sql.as_str())
                .execute()
                .await?;
        }
    }
    report.applied = applied;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_spellings_compare_equal() {
        let shown = "ReplacingMergeTree(revision) PARTITION BY toYYYYMM(window_start) ORDER BY (city, window_start) TTL toDateTime(window_start) + toIntervalDay(30) SETTINGS index_granularity = 8192";
        let clause = ttl_clause(shown).unwrap_or_default();
        assert_eq!(normalize_ttl(clause), normalize_ttl("toDateTime(`window_start`) + INTERVAL 30 DAY"));
        assert_ne!(normalize_ttl(clause), normalize_ttl("toDateTime(`window_start`) + INTERVAL 7 DAY"));
        assert_eq!(normalize_ttl("toDateTime(ts) + INTERVAL 129600 SECOND"), "todatetime(ts)+tointervalsecond(129600)");
        assert_eq!(ttl_clause("MergeTree ORDER BY x SETTINGS index_granularity = 8192"), None);
    }
}
