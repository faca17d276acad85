//! The evaluation state machine.
//!
//! Per (rule, group), windows are judged in window order (event time):
//! - a window's *verdict* is `Hold` when its guard (if any) and its condition
//!   hold, `Break` when the guard holds and the condition does not, `NoData`
//!   when the guard fails, a value is NULL, or the window ended empty;
//! - a window is judged once event time reached its end (the metric has a row
//!   of a window starting at or after that end) or it is final, with its newest
//!   revision; a final replaces the live revisions of its window;
//! - `Hold` makes an inactive group pending from the window's end (`since`); a
//!   pending group fires at the first `Hold` window whose end is `for` or more
//!   after `since`; a missing window (a gap) restarts the pending period;
//! - `Break` ends pending and resolves firing; `NoData` ends pending and leaves
//!   firing alone; a group whose newest `Hold` window is `resolve_after` or more
//!   behind the metric's event time resolves (it stopped reporting).
//!
//! Finals never change once emitted, so the state folded over finals (the
//! *checkpoint*) is kept; the few complete windows that are not final yet are
//! folded on top of it at each evaluation, so a final that disagrees with its
//! live revisions corrects the decision. The state reported last (*notified*)
//! is compared with the new one: the differences are the transitions.

use std::collections::{BTreeMap, HashMap, HashSet};

use pulse_model::Spec;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::spec::{AlertCondition, AlertRule};

/// Durations of one rule, in ms of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub for_ms: i64,
    pub slide_ms: i64,
    pub resolve_after_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Hold,
    Break,
    NoData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Inactive,
    /// The condition holds since the end of the window `since`.
    Pending {
        since: i64,
    },
    /// ...and has held for `for`: firing since the end of window `fired_at`.
    Firing {
        since: i64,
        fired_at: i64,
    },
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Inactive => "inactive",
            Status::Pending { .. } => "pending",
            Status::Firing { .. } => "firing",
        }
    }

    pub fn since(self) -> Option<i64> {
        match self {
            Status::Inactive => None,
            Status::Pending { since } | Status::Firing { since, .. } => Some(since),
        }
    }

    /// Rebuilds a status from its stored form (`name`, since, fired_at).
    pub fn from_parts(name: &str, since: i64, fired_at: i64) -> Status {
        match name {
            "pending" => Status::Pending { since },
            "firing" => Status::Firing { since, fired_at },
            _ => Status::Inactive,
        }
    }
}

/// The state of one (rule, group) after folding windows in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fold {
    pub status: Status,
    /// End of the newest window folded (windows at or before it are not folded again).
    pub last_end: Option<i64>,
    /// End of the newest `Hold` window.
    pub last_hold: Option<i64>,
    /// Event time of the newest status change (a resolution's `endsAt`).
    pub changed_at: i64,
    /// Condition and guard values of the newest `Hold` window (or of the window that resolved the alert).
    pub value: Option<f64>,
    pub guard_value: Option<f64>,
}

impl Default for Fold {
    fn default() -> Self {
        Fold { status: Status::Inactive, last_end: None, last_hold: None, changed_at: 0, value: None, guard_value: None }
    }
}

impl Fold {
    /// Folds one complete window (ignored when not after `last_end`).
    pub fn step(&mut self, p: &Params, end: i64, verdict: Verdict, value: Option<f64>, guard_value: Option<f64>) {
        if self.last_end.is_some_and(|le| end <= le) {
            return;
        }
        let gap = self.last_end.is_some_and(|le| end.saturating_sub(le) > p.slide_ms);
        if let (Status::Firing { .. }, Some(h)) = (self.status, self.last_hold)
            && end.saturating_sub(h) >= p.resolve_after_ms
        {
            self.status = Status::Inactive;
            self.changed_at = h.saturating_add(p.resolve_after_ms);
        }
        match verdict {
            Verdict::Hold => {
                match self.status {
                    Status::Inactive => self.pending(end),
                    Status::Pending { .. } if gap => self.pending(end),
                    _ => {}
                }
                if let Status::Pending { since } = self.status
                    && end.saturating_sub(since) >= p.for_ms
                {
                    self.status = Status::Firing { since, fired_at: end };
                    self.changed_at = end;
                }
                self.last_hold = Some(end);
                self.value = value;
                self.guard_value = guard_value;
            }
            Verdict::Break => {
                if self.status != Status::Inactive {
                    self.status = Status::Inactive;
                    self.changed_at = end;
                    // A resolution reports the window that broke the condition.
                    self.value = value;
                    self.guard_value = guard_value;
                }
            }
            Verdict::NoData => {
                if let Status::Pending { .. } = self.status {
                    self.status = Status::Inactive;
                    self.changed_at = end;
                }
            }
        }
        self.last_end = Some(end);
    }

    fn pending(&mut self, end: i64) {
        self.status = Status::Pending { since: end };
        self.changed_at = end;
    }

    /// The state at event time `progress`: a group whose newest `Hold` window
    /// is `resolve_after` or more behind stopped reporting and resolves.
    pub fn at_progress(mut self, p: &Params, progress: i64) -> Fold {
        if self.status != Status::Inactive
            && let Some(h) = self.last_hold
            && progress.saturating_sub(h) >= p.resolve_after_ms
        {
            self.status = Status::Inactive;
            self.changed_at = h.saturating_add(p.resolve_after_ms);
        }
        self
    }
}

/// What a transition (or a stored row) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// inactive → pending (recorded, not notified).
    Pending,
    /// → firing (notified).
    Firing,
    /// firing → inactive (notified).
    Resolved,
    /// pending → inactive (recorded, not notified).
    Cleared,
    /// The state folded over finals moved on (recorded for restarts).
    Checkpoint,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Pending => "pending",
            EventKind::Firing => "firing",
            EventKind::Resolved => "resolved",
            EventKind::Cleared => "cleared",
            EventKind::Checkpoint => "checkpoint",
        }
    }

    /// Whether receivers (topic, webhooks, SSE) are told.
    pub fn notifies(self) -> bool {
        matches!(self, EventKind::Firing | EventKind::Resolved)
    }
}

/// A group of a metric: its values rendered as labels, and a key made of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// `field=value` pairs joined by `,` (values as rendered in labels).
    pub key: String,
    pub labels: Vec<(String, String)>,
}

impl GroupKey {
    pub fn new(names: &[String], values: &[GroupValue]) -> GroupKey {
        let labels: Vec<(String, String)> = names.iter().zip(values).map(|(n, v)| (n.clone(), render_group_value(v))).collect();
        let key = labels.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(",");
        GroupKey { key, labels }
    }
}

pub fn render_group_value(v: &GroupValue) -> String {
    match v {
        GroupValue::Str(s) => s.to_string(),
        GroupValue::Int(i) => i.to_string(),
        GroupValue::Bool(b) => b.to_string(),
        GroupValue::Null => String::new(),
    }
}

/// A change of one (rule, group), to record and (firing/resolved) to notify.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Index into `Spec::alerts`.
    pub rule: usize,
    pub group: GroupKey,
    pub kind: EventKind,
    /// The episode: end of the first window of the run that fired (or is pending).
    pub since: i64,
    /// Firing: end of the window that completed `for` (Alertmanager `startsAt`).
    pub starts_at: i64,
    /// Resolved/cleared: event time it ended.
    pub ends_at: Option<i64>,
    pub value: Option<f64>,
    pub guard_value: Option<f64>,
    /// The state reported to receivers after this transition.
    pub notified: Status,
    /// The state folded over finals, to resume from after a restart.
    pub checkpoint: Fold,
    /// End of the newest window the decision was made on (a restarted engine
    /// reports nothing for the group until it has folded up to it again).
    pub decided_end: Option<i64>,
    /// `emitted_at` of the newest row of the group that led to the decision (ms, wall clock).
    pub row_emitted_at: i64,
}

fn condition_value(c: &AlertCondition, values: &[AggValue]) -> Option<f64> {
    values.get(c.aggregate).and_then(|v| v.as_f64()).filter(|v| v.is_finite())
}

/// Judges one window of a rule's metric: (verdict, condition value, guard value).
pub fn verdict(rule: &AlertRule, values: &[AggValue], deleted: bool) -> (Verdict, Option<f64>, Option<f64>) {
    if deleted {
        return (Verdict::NoData, None, None);
    }
    let value = condition_value(&rule.condition, values);
    let guard_value = rule.guard.as_ref().and_then(|g| condition_value(g, values));
    if let Some(g) = &rule.guard {
        match guard_value {
            Some(gv) if g.op.holds(gv, g.value) => {}
            _ => return (Verdict::NoData, value, guard_value),
        }
    }
    match value {
        None => (Verdict::NoData, None, guard_value),
        Some(v) if rule.condition.op.holds(v, rule.condition.value) => (Verdict::Hold, value, guard_value),
        Some(_) => (Verdict::Break, value, guard_value),
    }
}

/// The transitions from the `old` reported state to the `new` one (none: the
/// reported state stands).
pub fn diff(old: Status, new: &Fold) -> Vec<(EventKind, Status)> {
    use Status::*;
    let mut out = Vec::new();
    match (old, new.status) {
        (Inactive, Inactive) => {}
        (Inactive, Pending { .. }) => out.push((EventKind::Pending, new.status)),
        (Inactive, Firing { .. }) => out.push((EventKind::Firing, new.status)),
        (Pending { since: a }, Pending { since: b }) => {
            if a != b {
                out.push((EventKind::Pending, new.status));
            }
        }
        (Pending { .. }, Firing { .. }) => out.push((EventKind::Firing, new.status)),
        (Pending { .. }, Inactive) => out.push((EventKind::Cleared, old)),
        // Still firing, on a run that starts elsewhere: a window filled a gap or a
        // final replaced its revisions. Receivers were told it fires and it still
        // does; the episode they know goes on (no resolve-and-fire flap).
        (Firing { .. }, Firing { .. }) => {}
        (Firing { .. }, Pending { .. }) => {
            out.push((EventKind::Resolved, old));
            out.push((EventKind::Pending, new.status));
        }
        (Firing { .. }, Inactive) => out.push((EventKind::Resolved, old)),
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct OpenWindow {
    revision: u64,
    verdict: Verdict,
    value: Option<f64>,
    guard_value: Option<f64>,
}

#[derive(Debug)]
struct GroupState {
    group: GroupKey,
    checkpoint: Fold,
    /// Windows after the checkpoint that are not final yet: newest revision each.
    open: BTreeMap<i64, OpenWindow>,
    /// What receivers were told last.
    notified: Status,
    /// The checkpoint last recorded.
    recorded: Fold,
    /// The output (worker) whose rows carry this group (a group stays on one worker).
    source: Option<usize>,
    /// After a restart: the window the recorded decision was made on; until the
    /// fold reaches it again, the replayed rows are catching up and change nothing.
    catching_up: Option<i64>,
    row_emitted_at: i64,
}

impl GroupState {
    fn new(group: GroupKey) -> GroupState {
        GroupState {
            group,
            checkpoint: Fold::default(),
            open: BTreeMap::new(),
            notified: Status::Inactive,
            recorded: Fold::default(),
            source: None,
            catching_up: None,
            row_emitted_at: 0,
        }
    }

    fn current(&self, p: &Params, progress: i64) -> Fold {
        let mut f = self.checkpoint;
        for (&end, w) in self.open.range(..=progress) {
            f.step(p, end, w.verdict, w.value, w.guard_value);
        }
        f.at_progress(p, progress)
    }
}

struct RuleInfo {
    rule: AlertRule,
    params: Params,
    group_names: Vec<String>,
}

/// Evaluates every rule of a spec on the rows of their metrics.
pub struct Engine {
    rules: Vec<RuleInfo>,
    /// Rules per metric.
    by_metric: Vec<Vec<usize>>,
    /// Event time reached per metric and source (worker): the largest window start
    /// of any row, or window end of any final. A group is judged on its own
    /// worker's progress, so that another worker running ahead (a backlog, a
    /// restart) cannot declare it silent before its rows arrive.
    progress: Vec<Vec<i64>>,
    sources: usize,
    groups: Vec<HashMap<String, GroupState>>,
    /// Restored groups not installed yet: installed when their first row comes
    /// (in cluster mode another process may own a group), or all at once.
    restored: Vec<HashMap<String, GroupState>>,
}

impl Engine {
    pub fn new(spec: &Spec) -> Engine {
        Engine::with_sources(spec, 1)
    }

    /// An engine fed by `sources` outputs (the job's workers in this process), see [`Engine::observe_from`].
    pub fn with_sources(spec: &Spec, sources: usize) -> Engine {
        let sources = sources.max(1);
        let mut by_metric = vec![Vec::new(); spec.metrics.len()];
        let rules = spec
            .alerts
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let metric = &spec.metrics[rule.metric];
                by_metric[rule.metric].push(i);
                let domain = spec.metric_domain(metric);
                RuleInfo {
                    rule: rule.clone(),
                    params: Params { for_ms: rule.for_.ms(), slide_ms: metric.slide.ms(), resolve_after_ms: rule.resolve_after.ms() },
                    group_names: metric.group_by.iter().map(|&g| domain.fields[g].name.clone()).collect(),
                }
            })
            .collect::<Vec<_>>();
        let groups = rules.iter().map(|_| HashMap::new()).collect();
        let restored = rules.iter().map(|_| HashMap::new()).collect();
        Engine { rules, by_metric, progress: vec![vec![i64::MIN; sources]; spec.metrics.len()], sources, groups, restored }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn params(&self, rule: usize) -> Params {
        self.rules[rule].params
    }

    /// Resumes a (rule, group) from its recorded state (after a restart): the
    /// checkpoint to fold on from, and what receivers were told last.
    ///
    /// The group is evaluated again from its first row on; [`Engine::install_restored`]
    /// evaluates every restored group from now on (one process sees every group).
    pub fn restore(&mut self, rule: usize, group: GroupKey, checkpoint: Fold, notified: Status, decided_end: Option<i64>) {
        let Some(groups) = self.restored.get_mut(rule) else { return };
        let mut gs = GroupState::new(group.clone());
        gs.checkpoint = checkpoint;
        gs.notified = notified;
        gs.catching_up = decided_end.filter(|&d| checkpoint.last_end.is_none_or(|e| e < d));
        gs.recorded = checkpoint;
        groups.insert(group.key, gs);
    }

    /// Evaluates every restored group from now on, rows or not (a group that
    /// stopped reporting resolves after `resolve_after`).
    pub fn install_restored(&mut self) {
        for (r, restored) in self.restored.iter_mut().enumerate() {
            for (k, gs) in restored.drain() {
                self.groups[r].entry(k).or_insert(gs);
            }
        }
    }

    /// The state reported last for every (rule, group) that is not inactive.
    pub fn active(&self) -> Vec<(usize, GroupKey, Status)> {
        let mut out = Vec::new();
        for r in 0..self.rules.len() {
            for gs in self.groups[r].values().chain(self.restored[r].values()) {
                if gs.notified != Status::Inactive {
                    out.push((r, gs.group.clone(), gs.notified));
                }
            }
        }
        out
    }

    /// Takes rows in the order the job emitted them and returns the transitions they cause.
    pub fn observe(&mut self, rows: &[MetricRow]) -> Vec<Transition> {
        self.observe_from(0, rows)
    }

    /// Like [`Engine::observe`], for rows of output `source` (0-based, below `sources`).
    pub fn observe_from(&mut self, source: usize, rows: &[MetricRow]) -> Vec<Transition> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        let source = source % self.sources;
        let mut advanced = vec![false; self.progress.len()];
        let mut touched: HashSet<(usize, String)> = HashSet::new();
        for row in rows {
            let Some(rules) = self.by_metric.get(row.metric) else { continue };
            if rules.is_empty() {
                continue;
            }
            let reached = if row.is_final { row.window_start.max(row.window_end) } else { row.window_start };
            if reached > self.progress[row.metric][source] {
                self.progress[row.metric][source] = reached;
                advanced[row.metric] = true;
            }
            for &r in rules {
                let info = &self.rules[r];
                let group = GroupKey::new(&info.group_names, &row.group);
                let restored = &mut self.restored[r];
                let gs = self.groups[r].entry(group.key.clone()).or_insert_with(|| restored.remove(&group.key).unwrap_or_else(|| GroupState::new(group)));
                gs.row_emitted_at = gs.row_emitted_at.max(row.emitted_at);
                gs.source = Some(source);
                touched.insert((r, gs.group.key.clone()));
                if gs.checkpoint.last_end.is_some_and(|le| row.window_end <= le) {
                    continue;
                }
                let (v, value, guard_value) = verdict(&info.rule, &row.values, row.deleted);
                if row.is_final || row.deleted {
                    // Windows before a final never get another row: settle them first.
                    let earlier: Vec<i64> = gs.open.range(..row.window_end).map(|(&e, _)| e).collect();
                    for e in earlier {
                        if let Some(w) = gs.open.remove(&e) {
                            gs.checkpoint.step(&info.params, e, w.verdict, w.value, w.guard_value);
                        }
                    }
                    gs.open.remove(&row.window_end);
                    gs.checkpoint.step(&info.params, row.window_end, v, value, guard_value);
                } else {
                    let w = OpenWindow { revision: row.revision, verdict: v, value, guard_value };
                    match gs.open.get(&row.window_end) {
                        Some(old) if old.revision > row.revision => {}
                        _ => {
                            gs.open.insert(row.window_end, w);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for r in 0..self.rules.len() {
            let metric = self.rules[r].rule.metric;
            let own = self.progress[metric][source];
            // Groups not seen since a restart: judged when every worker got that far.
            let slowest = self.progress[metric].iter().copied().min().unwrap_or(i64::MIN);
            let keys: Vec<(String, i64)> = if advanced[metric] {
                self.groups[r]
                    .iter()
                    .filter_map(|(k, gs)| match gs.source {
                        Some(s) if s == source => Some((k.clone(), own)),
                        Some(_) => None,
                        None => Some((k.clone(), slowest)),
                    })
                    .collect()
            } else {
                touched.iter().filter(|(tr, _)| *tr == r).map(|(_, k)| (k.clone(), own)).collect()
            };
            for (k, progress) in keys {
                self.evaluate(r, &k, progress, &mut out);
            }
        }
        out
    }

    fn evaluate(&mut self, r: usize, key: &str, progress: i64, out: &mut Vec<Transition>) {
        let params = self.rules[r].params;
        let Some(gs) = self.groups[r].get_mut(key) else { return };
        let current = gs.current(&params, progress);
        if let Some(until) = gs.catching_up {
            if current.last_end.is_some_and(|e| e >= until) {
                gs.catching_up = None;
            } else {
                return;
            }
        }
        let changes = diff(gs.notified, &current);
        for (kind, status) in &changes {
            let (since, starts_at) = match *status {
                Status::Pending { since } => (since, since),
                Status::Firing { since, fired_at } => (since, fired_at),
                Status::Inactive => (current.changed_at, current.changed_at),
            };
            let ends_at = matches!(kind, EventKind::Resolved | EventKind::Cleared).then_some(current.changed_at);
            let notified_after = if matches!(kind, EventKind::Resolved | EventKind::Cleared) { Status::Inactive } else { *status };
            out.push(Transition {
                rule: r,
                group: gs.group.clone(),
                kind: *kind,
                since,
                starts_at,
                ends_at,
                value: current.value,
                guard_value: current.guard_value,
                notified: notified_after,
                checkpoint: gs.checkpoint,
                decided_end: current.last_end,
                row_emitted_at: gs.row_emitted_at,
            });
        }
        if !changes.is_empty() {
            gs.notified = current.status;
            gs.recorded = gs.checkpoint;
        } else if gs.checkpoint.last_end != gs.recorded.last_end
            && (gs.checkpoint.status != Status::Inactive || gs.notified != Status::Inactive || gs.recorded.status != Status::Inactive)
        {
            out.push(Transition {
                rule: r,
                group: gs.group.clone(),
                kind: EventKind::Checkpoint,
                since: gs.notified.since().unwrap_or(0),
                starts_at: match gs.notified {
                    Status::Firing { fired_at, .. } => fired_at,
                    s => s.since().unwrap_or(0),
                },
                ends_at: None,
                value: current.value,
                guard_value: current.guard_value,
                notified: gs.notified,
                checkpoint: gs.checkpoint,
                decided_end: current.last_end,
                row_emitted_at: gs.row_emitted_at,
            });
            gs.recorded = gs.checkpoint;
        }
        // A quiet group is forgotten once nothing of it can matter any more
        // (memory follows the groups with open windows or an active alert).
        if current.status == Status::Inactive
            && gs.notified == Status::Inactive
            && gs.checkpoint.status == Status::Inactive
            && gs.open.is_empty()
            && gs.checkpoint.last_end.is_none_or(|e| e <= progress.saturating_sub(params.resolve_after_ms))
        {
            self.groups[r].remove(key);
        }
    }

    /// The rule of a transition.
    pub fn rule(&self, r: usize) -> &AlertRule {
        &self.rules[r].rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params { for_ms: 300, slide_ms: 60, resolve_after_ms: 600 };

    #[test]
    fn fires_after_for_and_resolves_on_break() {
        let mut f = Fold::default();
        for (i, end) in (60..=360).step_by(60).enumerate() {
            f.step(&P, end, Verdict::Hold, Some(0.4), Some(30.0));
            if i < 5 {
                assert_eq!(f.status, Status::Pending { since: 60 }, "at {end}");
            }
        }
        assert_eq!(f.status, Status::Firing { since: 60, fired_at: 360 });
        f.step(&P, 420, Verdict::NoData, None, Some(3.0));
        assert_eq!(f.status, Status::Firing { since: 60, fired_at: 360 });
        f.step(&P, 480, Verdict::Break, Some(0.1), Some(30.0));
        assert_eq!((f.status, f.changed_at), (Status::Inactive, 480));
    }

    #[test]
    fn a_gap_restarts_pending_and_silence_resolves() {
        let mut f = Fold::default();
        f.step(&P, 60, Verdict::Hold, None, None);
        f.step(&P, 120, Verdict::Hold, None, None);
        f.step(&P, 240, Verdict::Hold, None, None);
        assert_eq!(f.status, Status::Pending { since: 240 });
        for end in (300..=540).step_by(60) {
            f.step(&P, end, Verdict::Hold, None, None);
        }
        assert_eq!(f.status, Status::Firing { since: 240, fired_at: 540 });
        assert_eq!(f.at_progress(&P, 1139).status, f.status);
        let stale = f.at_progress(&P, 1140);
        assert_eq!((stale.status, stale.changed_at), (Status::Inactive, 1140));
    }
}
