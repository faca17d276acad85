//! Alerts evaluated in the pipeline.
//!
//! [`engine`] turns the rows a metric emits (live revisions and finals) into
//! per-(rule, group) states in event time — inactive → pending → firing →
//! resolved — and the transitions between them; [`payload`] renders a
//! transition as a Prometheus Alertmanager webhook message (version 4);
//! [`webhook`] delivers those messages with retries, exponential backoff and
//! de-duplication, off the caller's path (a task behind a bounded channel).

pub mod engine;
pub mod payload;
pub mod webhook;

pub use engine::{Engine, EventKind, Fold, GroupKey, Params, Status, Transition, Verdict};
pub use payload::{AlertMessage, WebhookMessage};
pub use webhook::WebhookStats;
pub use webhook::{WebhookConfig, WebhookError, WebhookSender};
