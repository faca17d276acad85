//! Kafka client settings: the broker list plus any librdkafka property passed
//! through as `PULSE_KAFKA_<PROPERTY>` (dots written as `_`, a literal `_` as
//! `__`), e.g. `PULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`.

use rdkafka::ClientConfig;

pub const BROKERS_ENV: &str = "PULSE_KAFKA_BROKERS";
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
const PREFIX: &str = "PULSE_KAFKA_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    /// librdkafka properties applied to every client, after Pulse's own defaults.
    pub properties: Vec<(String, String)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { brokers: DEFAULT_BROKERS.to_string(), properties: Vec::new() }
    }
}

/// Turns `SECURITY_PROTOCOL` into `security.protocol` (`__` stands for `_`).
pub fn property_name(env_suffix: &str) -> String {
    env_suffix.to_ascii_lowercase().split("__").map(|part| part.replace('_', ".")).collect::<Vec<_>>().join("_")
}

impl KafkaConfig {
    /// The given broker list plus every `PULSE_KAFKA_*` property of the environment.
    pub fn from_env(brokers: impl Into<String>) -> KafkaConfig {
        Self::from_vars(brokers, std::env::vars())
    }

    pub fn from_vars(brokers: impl Into<String>, vars: impl IntoIterator<Item = (String, String)>) -> KafkaConfig {
        let mut properties: Vec<(String, String)> =
            vars.into_iter().filter(|(k, _)| k.starts_with(PREFIX) && k != BROKERS_ENV).map(|(k, v)| (property_name(&k[PREFIX.len()..]), v)).collect();
        properties.sort();
        KafkaConfig { brokers: brokers.into(), properties }
    }

    /// A client configuration with the brokers and passthrough properties.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "pulse");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer settings for data Pulse must not lose: every in-sync replica
    /// acknowledges, idempotent (no duplicates on retry), lz4, a short linger.
    pub fn reliable_producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "pulse");
        c.set("acks", "all");
        c.set("enable.idempotence", "true");
        c.set("compression.type", "lz4");
        c.set("linger.ms", "5");
        c.set("message.timeout.ms", "30000");
        c.set("queue.buffering.max.messages", "1000000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer settings: a group, manual offset commits, read from the beginning
    /// when the group has no committed offset.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "pulse");
        c.set("group.id", group);
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        c.set("auto.offset.reset", "earliest");
        c.set("fetch.wait.max.ms", "10");
        c.set("session.timeout.ms", "10000");
        c.set("heartbeat.interval.ms", "1000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_properties() {
        let cfg = KafkaConfig::from_vars(
            "b:9092",
            [
                ("PULSE_KAFKA_BROKERS".to_string(), "ignored".to_string()),
                ("PULSE_KAFKA_SECURITY_PROTOCOL".to_string(), "SASL_SSL".to_string()),
                ("PULSE_KAFKA_SASL_USERNAME".to_string(), "me".to_string()),
                ("PULSE_KAFKA_SOME__ODD_NAME".to_string(), "x".to_string()),
                ("OTHER".to_string(), "y".to_string()),
            ],
        );
        assert_eq!(cfg.brokers, "b:9092");
        assert_eq!(
            cfg.properties,
            [
                ("sasl.username".to_string(), "me".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("some_odd.name".to_string(), "x".to_string()),
            ]
        );
        assert_eq!(cfg.client().get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cfg.reliable_producer().get("acks"), Some("all"));
    }
}
