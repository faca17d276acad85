//! Validated `[[alert]]` rules.

use crate::duration::Millis;

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
