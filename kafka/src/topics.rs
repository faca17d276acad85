//! Topics from the spec: one per domain, the aggregated-metrics topic and the
//! dead-letter topic. `ensure_topics` creates what is missing, fixes what it
//! can (too few partitions, differing configs) and reports what it cannot.

use std::collections::HashMap;
use std::time::Duration;

use pulse_model::Spec;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::{Error, Result};

/// The desired state of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs Pulse manages (retention.ms, cleanup.policy, compression.type).
    pub configs: Vec<(String, String)>,
}

/// Partitions of Pulse's own output topics.
pub const AGGREGATED_PARTITIONS: i32 = 6;
pub const DEAD_LETTER_PARTITIONS: i32 = 3;

/// Every topic the spec needs.
pub fn plan_topics(spec: &Spec) -> Vec<TopicPlan> {
    let mut plans: Vec<TopicPlan> = spec
        .domains
        .iter()
        .map(|d| TopicPlan {
            name: d.topic.clone(),
            partitions: d.partitions,
            replication: d.replication,
            configs: vec![
                ("retention.ms".into(), d.retention.ms().to_string()),
                ("cleanup.policy".into(), d.cleanup_policy.clone()),
                ("compression.type".into(), d.compression.clone()),
            ],
        })
        .collect();
    let replication = spec.domains.iter().map(|d| d.replication).max().unwrap_or(1);
    // Metric rows are keyed by metric/group/window: compaction keeps each window's
    // latest revision, deletion bounds the topic.
    plans.push(TopicPlan {
        name: spec.pipeline.aggregated_topic.clone(),
        partitions: AGGREGATED_PARTITIONS,
        replication,
        configs: vec![
            ("retention.ms".into(), (7 * 86_400_000i64).to_string()),
            ("cleanup.policy".into(), "compact,delete".into()),
            ("compression.type".into(), "lz4".into()),
        ],
    });
    plans.push(TopicPlan {
        name: spec.pipeline.dead_letter_topic.clone(),
        partitions: DEAD_LETTER_PARTITIONS,
        replication,
        configs: vec![
            ("retention.ms".into(), (14 * 86_400_000i64).to_string()),
            ("cleanup.policy".into(), "delete".into()),
            ("compression.type".into(), "lz4".into()),
        ],
    });
    // Alert notifications, keyed rule/group: one partition keeps them in order
    // (a few per hour, not a volume), deletion after 30 days (history is in ClickHouse).
    if !spec.alerts.is_empty() {
        plans.push(TopicPlan {
            name: spec.pipeline.alerts_topic.clone(),
            partitions: 1,
            replication,
            configs: vec![
                ("retention.ms".into(), (30 * 86_400_000i64).to_string()),
                ("cleanup.policy".into(), "delete".into()),
                ("compression.type".into(), "lz4".into()),
            ],
        });
    }
    plans
}

/// What `ensure_topics` did and found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    /// Differences that were corrected (added partitions, altered configs).
    pub fixed: Vec<String>,
    /// Differences that cannot be corrected automatically (e.g. too many partitions).
    pub drift: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates missing topics and reconciles existing ones with their plan.
pub async fn ensure_topics(admin: &AdminClient<DefaultClientContext>, plans: &[TopicPlan]) -> Result<TopicReport> {
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    let metadata = admin.inner().fetch_metadata(None, TIMEOUT)?;
    let existing: HashMap<String, i32> =
        metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| (t.name().to_string(), t.partitions().len() as i32)).collect();
    let mut report = TopicReport::default();

    let missing: Vec<&TopicPlan> = plans.iter().filter(|p| !existing.contains_key(&p.name)).collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|p| p.configs.iter().fold(NewTopic::new(&p.name, p.partitions, TopicReplication::Fixed(p.replication)), |t, (k, v)| t.set(k, v)))
            .collect();
        for result in admin.create_topics(new_topics.iter(), &opts).await? {
            match result {
                Ok(name) => report.created.push(name),
                // Another instance created it between our metadata read and now.
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => {
                    return Err(Error::Topic { topic: name, message: format!("cannot create: {code}") });
                }
            }
        }
    }

    let present: Vec<&TopicPlan> = plans.iter().filter(|p| existing.contains_key(&p.name)).collect();
    let mut grow = Vec::new();
    for p in &present {
        let have = existing[&p.name];
        if have < p.partitions {
            grow.push(NewPartitions::new(&p.name, p.partitions as usize));
            report.fixed.push(format!("{}: partitions {have} -> {}", p.name, p.partitions));
        } else if have > p.partitions {
            report.drift.push(format!(
                "{}: has {have} partitions, the spec asks for {} (Kafka cannot remove partitions; recreate the topic or raise the spec)",
                p.name, p.partitions
            ));
        }
    }
    if !grow.is_empty() {
        match admin.create_partitions(grow.iter(), &opts).await {
            Ok(results) => {
                for result in results {
                    if let Err((name, code)) = result {
                        return Err(Error::Topic { topic: name, message: format!("cannot add partitions: {code}") });
                    }
                }
            }
            // A broker without the CreatePartitions API (e.g. Tansu 0.6): report, do not abort.
            Err(e) => {
                let (failed, kept): (Vec<String>, Vec<String>) =
                    report.fixed.drain(..).partition(|f| grow.iter().any(|g| f.starts_with(&format!("{}: partitions ", g.topic_name))));
                report.fixed = kept;
                for f in failed {
                    report.drift.push(format!("{f} not possible: the broker cannot add partitions ({e})"));
                }
            }
        }
    }

    if !present.is_empty() {
        let resources: Vec<ResourceSpecifier<'_>> = present.iter().map(|p| ResourceSpecifier::Topic(&p.name)).collect();
        match admin.describe_configs(resources.iter(), &opts).await {
            Ok(results) => {
                let mut alter = Vec::new();
                for (p, result) in present.iter().zip(results) {
                    let resource = match result {
                        Ok(r) => r,
                        Err(e) => {
                            report.drift.push(format!("{}: cannot read configs ({e}); not verified", p.name));
                            continue;
                        }
                    };
                    let entries = resource.entry_map();
                    let differs: Vec<String> = p
                        .configs
                        .iter()
                        .filter(|(k, v)| entries.get(k.as_str()).and_then(|e| e.value.as_deref()) != Some(v.as_str()))
                        .map(|(k, v)| {
                            let have = entries.get(k.as_str()).and_then(|e| e.value.clone()).unwrap_or_else(|| "unset".into());
                            format!("{k} {have} -> {v}")
                        })
                        .collect();
                    if differs.is_empty() {
                        let prefix = format!("{}:", p.name);
                        if !report.fixed.iter().chain(&report.drift).any(|f| f.starts_with(&prefix)) {
                            report.unchanged.push(p.name.clone());
                        }
                    } else {
                        report.fixed.push(format!("{}: {}", p.name, differs.join(", ")));
                        alter.push(p.configs.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(&p.name)), |a, (k, v)| a.set(k, v)));
                    }
                }
                if !alter.is_empty() {
                    match admin.alter_configs(alter.iter(), &opts).await {
                        Ok(results) => {
                            for result in results {
                                if let Err((resource, code)) = result {
                                    report.drift.push(format!("{resource:?}: cannot alter configs: {code}"));
                                }
                            }
                        }
                        // A broker without the AlterConfigs API: report, do not abort.
                        Err(e) => report.drift.push(format!("cannot alter topic configs ({e}); see the fixes listed above")),
                    }
                }
            }
            Err(e) => {
                for p in &present {
                    report.drift.push(format!("{}: cannot read configs ({e}); not verified", p.name));
                }
            }
        }
    }
    Ok(report)
}

/// Creates the planned topics on librdkafka's in-process mock cluster (whose
/// broker does not implement the CreateTopics admin API).
pub fn create_on_mock<C: rdkafka::ClientContext>(mock: &rdkafka::mocking::MockCluster<'_, C>, plans: &[TopicPlan]) -> Result<()> {
    for p in plans {
        mock.create_topic(&p.name, p.partitions, 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn plans_every_topic_of_the_default_spec() {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).unwrap_or_else(|e| panic!("{e}"));
        let plans = plan_topics(&spec);
        let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ride-events", "driver-locations", "app-events", "analytics-aggregated", "pulse-dead-letter", "pulse-alerts"]);
        let rides = &plans[0];
        assert_eq!(rides.partitions, 12);
        assert!(rides.configs.contains(&("retention.ms".into(), "604800000".into())));
        assert!(plans[1].configs.contains(&("cleanup.policy".into(), "compact,delete".into())));
    }
}
