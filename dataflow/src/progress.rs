//! The job's durable progress: per consumer group and domain, the closed
//! watermark whose final windows are durable. It is written to ClickHouse once
//! the epoch that closed those windows is durable on every worker, right
//! before the offsets computed from it are committed, and read back at start:
//! a restart never re-finalises a closed window from the few records it
//! replays, whatever the broker does with commit metadata (some drop it; so
//! do offset-reset tools), and never skips a final that is not durable.
//!
//! A row is written only when the set of closed windows changes (a metric's
//! closing frontier crosses a window end), not every epoch.
//!
//! Each metric also gets a row (`domain` = `metric/NAME/FINGERPRINT`) with the
//! window end below which its windows are final, under that definition. At
//! start a metric resumes from its own row (so a raised lateness never
//! reopens a final window); a metric without one, new or changed, is rebuilt
//! from the raw tables up to where its domain got (see [`metric_starts`]).

use bytes::BytesMut;
use pulse_clickhouse::schema::{PROGRESS_TABLE, encode_progress};
use pulse_model::Spec;

/// Every progress row of `group`: (domain or `metric/NAME/FINGERPRINT`, closed).
async fn rows(client: &clickhouse::Client, database: &str, group: &str) -> Result<Vec<(String, i64)>, clickhouse::error::Error> {
    let sql = format!("SELECT domain, max(closed) FROM `{database}`.`{PROGRESS_TABLE}` WHERE consumer_group = ? GROUP BY domain");
    client.query(&sql).bind(group).fetch_all().await
}

/// Reads the recorded progress of `group`: the closed watermark per spec domain, if any.
pub async fn load(client: &clickhouse::Client, database: &str, group: &str, spec: &Spec) -> Result<Vec<Option<i64>>, clickhouse::error::Error> {
    let rows = rows(client, database, group).await?;
    Ok(spec.domains.iter().map(|d| rows.iter().find(|(name, _)| *name == d.name).map(|(_, c)| *c)).collect())
}

/// What a metric's definition is, for its progress: everything that decides
/// its windows' values (not its lateness, retention or group cap).
pub fn fingerprint(spec: &Spec, m: &pulse_model::Metric) -> String {
    let mut canonical = format!("{}|{:?}|{}|{}|{:?}", spec.metric_domain(m).name, m.group_by, m.window.ms(), m.slide.ms(), m.aggregates);
    if let Some(d) = &m.derived {
        // What its inputs compute decides its values too.
        for &i in &d.inputs {
            canonical.push_str(&format!("|{}={}", spec.metrics[i].name, fingerprint(spec, &spec.metrics[i])));
        }
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canonical.as_bytes()))
}

fn metric_key(spec: &Spec, m: &pulse_model::Metric) -> String {
    format!("metric/{}/{}", m.name, fingerprint(spec, m))
}

/// How a metric starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricStart {
    /// Nothing recorded for the group: the job starts from scratch.
    Fresh,
    /// Its windows ending at or below this are final (under this definition).
    Resume(i64),
    /// New, or its definition changed: its windows ending at or below this
    /// are recomputed from the raw tables before the job starts.
    Rebuild(i64),
}

/// How each metric of `spec` starts for `group`, given the domains' recorded
/// progress. Progress recorded before metrics had rows of their own resumes
/// every metric from its domain.
pub async fn metric_starts(client: &clickhouse::Client, database: &str, group: &str, spec: &Spec) -> Result<Vec<MetricStart>, clickhouse::error::Error> {
    let rows = rows(client, database, group).await?;
    Ok(starts_from(spec, &rows))
}

fn starts_from(spec: &Spec, rows: &[(String, i64)]) -> Vec<MetricStart> {
    let any_metric_row = rows.iter().any(|(k, _)| k.starts_with("metric/"));
    let mut starts: Vec<MetricStart> = Vec::with_capacity(spec.metrics.len());
    for m in &spec.metrics {
        let own = rows.iter().find(|(k, _)| *k == metric_key(spec, m)).map(|(_, c)| *c);
        let start = match &m.derived {
            // Inputs come first in the spec. A derived metric resumes from its own
            // row; without one it is rebuilt up to where its slowest input got.
            Some(d) => {
                let inputs: Vec<MetricStart> = d.inputs.iter().map(|&i| starts[i]).collect();
                let reached = inputs.iter().map(|s| match *s {
                    MetricStart::Fresh => None,
                    MetricStart::Resume(c) | MetricStart::Rebuild(c) => Some(c),
                });
                match (reached.collect::<Option<Vec<i64>>>().and_then(|r| r.into_iter().min()), own) {
                    (None, _) => MetricStart::Fresh,
                    (Some(_), Some(o)) => MetricStart::Resume(o),
                    (Some(r), None) => MetricStart::Rebuild(r),
                }
            }
            None => {
                let domain = rows.iter().find(|(k, _)| *k == spec.metric_domain(m).name).map(|(_, c)| c.saturating_sub(m.lateness.ms()));
                match (domain, own) {
                    (None, _) => MetricStart::Fresh,
                    (Some(d), Some(o)) => MetricStart::Resume(o.max(d)),
                    (Some(d), None) if !any_metric_row => MetricStart::Resume(d),
                    (Some(d), None) => MetricStart::Rebuild(d),
                }
            }
        };
        starts.push(start);
    }
    starts
}

/// The highest revision (final bit aside) any row of the spec's metric tables
/// carries. Revisions continue above it after a restart, so that a re-emitted
/// window always replaces what an earlier run wrote, whatever the clocks say.
pub async fn revision_floor(client: &clickhouse::Client, database: &str, spec: &Spec) -> Result<u64, clickhouse::error::Error> {
    let mut floor = 0u64;
    for m in &spec.metrics {
        let sql = format!("SELECT max(bitAnd(revision, {})) FROM `{database}`.`{}`", crate::emit::FINAL_BIT - 1, m.name);
        floor = floor.max(client.query(&sql).fetch_one::<u64>().await?);
    }
    Ok(floor)
}

/// Decides when a progress row is due and encodes it.
pub struct Progress {
    group: String,
    /// Per derived metric: its progress key and its inputs' (domain, lateness).
    derived: Vec<(String, Vec<(usize, i64)>)>,
    /// Per domain: (progress key, lateness) of each of its metrics.
    metric_keys: Vec<Vec<(String, i64)>>,
    /// Per domain: (lateness, window size, slide) of each of its metrics.
    shapes: Vec<Vec<(i64, i64, i64)>>,
    names: Vec<String>,
    /// Per domain: the closing frontier last written.
    written: Vec<Option<Vec<i64>>>,
}

impl Progress {
    pub fn new(spec: &Spec, group: &str) -> Progress {
        let shapes = (0..spec.domains.len())
            .map(|d| spec.metrics.iter().filter(|m| m.domain == d && !m.is_derived()).map(|m| (m.lateness.ms(), m.window.ms(), m.slide.ms().max(1))).collect())
            .collect();
        let metric_keys = (0..spec.domains.len())
            .map(|d| spec.metrics.iter().filter(|m| m.domain == d && !m.is_derived()).map(|m| (metric_key(spec, m), m.lateness.ms())).collect())
            .collect();
        let derived = spec
            .metrics
            .iter()
            .filter_map(|m| {
                let d = m.derived.as_ref()?;
                Some((metric_key(spec, m), d.inputs.iter().map(|&i| (spec.metrics[i].domain, spec.metrics[i].lateness.ms())).collect()))
            })
            .collect();
        Progress {
            group: group.to_string(),
            derived,
            metric_keys,
            shapes,
            names: spec.domains.iter().map(|d| d.name.clone()).collect(),
            written: vec![None; spec.domains.len()],
        }
    }

    /// For each metric of `domain`, the number of window starts closed at `closed`
    /// (windows `[s, s + size)` with `s + size + lateness <= closed`).
    fn frontier(&self, domain: usize, closed: i64) -> Vec<i64> {
        self.shapes[domain].iter().map(|&(lateness, size, slide)| closed.saturating_sub(lateness).saturating_sub(size).div_euclid(slide)).collect()
    }

    /// The progress rows to write with an epoch whose closed watermarks are
    /// `closed` (none when no domain's set of closed windows changed). Hand it
    /// back to [`Progress::written`] once it is durable.
    pub fn due(&self, closed: &[i64], now_ms: i64) -> Option<Due> {
        let mut due = Due { body: BytesMut::new(), marks: Vec::new(), rows: 0 };
        for (d, &c) in closed.iter().enumerate().take(self.names.len()) {
            // Recorded from the first commit on, even before any window closed:
            // committed offsets always come with known progress.
            let f = self.frontier(d, c);
            if self.written[d].as_ref() != Some(&f) {
                encode_progress(&self.group, &self.names[d], c, now_ms, &mut due.body);
                for (key, lateness) in &self.metric_keys[d] {
                    encode_progress(&self.group, key, c.saturating_sub(*lateness), now_ms, &mut due.body);
                }
                due.rows += 1 + self.metric_keys[d].len();
                due.marks.push((d, f));
            }
        }
        if !due.marks.is_empty() {
            // A derived metric's windows close when its slowest input's do.
            for (key, inputs) in &self.derived {
                let closed_below = inputs.iter().map(|&(d, lateness)| closed.get(d).copied().unwrap_or(i64::MIN).saturating_sub(lateness)).min();
                if let Some(c) = closed_below {
                    encode_progress(&self.group, key, c, now_ms, &mut due.body);
                    due.rows += 1;
                }
            }
        }
        (!due.marks.is_empty()).then_some(due)
    }

    pub fn written(&mut self, due: Due) {
        for (d, f) in due.marks {
            self.written[d] = Some(f);
        }
    }
}

/// Progress rows to write (RowBinary for the progress table), and the closing
/// frontiers they record per domain.
pub struct Due {
    pub body: BytesMut,
    marks: Vec<(usize, Vec<i64>)>,
    rows: usize,
}

impl Due {
    /// Rows in `body`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Domains whose progress it records.
    pub fn domains(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WM_START;

    #[test]
    fn a_row_is_due_only_when_a_window_closes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let spec = Spec::load(&path).expect("spec");
        let mut p = Progress::new(&spec, "g");
        let minute = 60_000;
        // city_metrics: 5 min windows sliding 1 min, 30 s lateness.
        let t = 1_795_515_300_000 / minute * minute;
        let due = p.due(&[t + 30_000, WM_START, WM_START], t).expect("first row");
        assert_eq!(due.domains(), 3, "every domain, with or without a watermark yet");
        assert_eq!(due.rows(), 3 + spec.metrics.len(), "and every metric");
        p.written(due);
        assert!(p.due(&[t + 89_999, WM_START, WM_START], t).is_none(), "no window end crossed");
        assert!(p.due(&[t + 90_000, WM_START, WM_START], t).is_some(), "the window ending at t + 60 s closes at t + 90 s");
    }

    #[test]
    fn a_changed_method_changes_the_fingerprint() {
        use pulse_model::spec::AggMethod;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let mut spec = Spec::load(&path).expect("spec");
        let m = spec.metrics.iter().position(|x| x.name == "city_metrics").expect("city_metrics");
        let a = spec.metrics[m].aggregate_index("unique_riders").expect("unique_riders");
        let exact = fingerprint(&spec, &spec.metrics[m]);
        spec.metrics[m].aggregates[a].method = AggMethod::Hll { precision: 14 };
        let hll14 = fingerprint(&spec, &spec.metrics[m]);
        spec.metrics[m].aggregates[a].method = AggMethod::Hll { precision: 12 };
        let hll12 = fingerprint(&spec, &spec.metrics[m]);
        spec.metrics[m].aggregates[a].method = AggMethod::Exact;
        assert_eq!(fingerprint(&spec, &spec.metrics[m]), exact);
        assert!(exact != hll14 && hll14 != hll12 && exact != hll12);
    }
}
