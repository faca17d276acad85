//! One job instance per consumer group. Before it reads anything, an instance
//! takes the group's lease in ClickHouse table `pulse_leases`: when no holder
//! has renewed it within the lease's time to live (or the holder released it
//! on a clean stop), the newcomer claims the next generation; otherwise it
//! waits. The holder renews the lease while it runs; an instance that finds
//! another holder (it was stuck past the time to live and was replaced) is
//! fenced: it stops committing offsets and progress, and ends.
//!
//! ClickHouse has no compare-and-set, so two newcomers can claim the same
//! generation at once: the larger token wins, both read the holder back after
//! a settling pause, and the loser waits again. During a takeover the
//! displaced instance may still deliver rows for up to a renewal interval;
//! the outputs are idempotent by key, so nothing is counted twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pulse_clickhouse::schema::LEASE_TABLE;
use pulse_clickhouse::{ClickHouseConfig, Writer};
use pulse_ops::Shutdown;

/// The longest time to live a lease may have (see `Renewed::Released`).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// When a lease row says it was renewed.
enum Renewed {
    Now,
    /// A day ago: older than any lease's time to live, so the next instance
    /// need not wait, yet recent enough that the table's TTL (7 days) keeps
    /// the row. (An epoch-zero stamp would be dropped by the first merge,
    /// bringing the last renewal back as if the lease were still held.)
    Released,
}

/// The holder of a group's lease, as last written.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Holder {
    pub generation: u64,
    pub token: String,
    pub instance: String,
    pub seq: u64,
    /// How long ago it was renewed, by ClickHouse's clock (the only clock the
    /// instances share: their own may disagree).
    pub age_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("stopped while waiting for the lease of consumer group `{0}`")]
    Stopped(String),
}

/// This instance's lease on a consumer group.
#[derive(Clone)]
pub struct Lease {
    group: String,
    instance: String,
    token: String,
    generation: u64,
    ttl: Duration,
    writer: Writer,
    database: String,
    /// Set once another instance holds the group: stop committing, end.
    pub fenced: Arc<AtomicBool>,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

async fn holder(writer: &Writer, database: &str, group: &str) -> Result<Option<Holder>, clickhouse::error::Error> {
    let sql = format!(
        "SELECT generation, token, instance, seq, toUnixTimestamp64Milli(now64(3)) - toUnixTimestamp64Milli(renewed_at) AS age_ms FROM `{database}`.`{LEASE_TABLE}` FINAL \
         WHERE consumer_group = ? ORDER BY generation DESC, token DESC LIMIT 1"
    );
    writer.client().query(&sql).bind(group).fetch_optional::<Holder>().await
}

impl Lease {
    /// Waits until the group's lease is free (expired or released), then takes it.
    pub async fn acquire(ch: &ClickHouseConfig, writer: &Writer, group: &str, instance: &str, ttl: Duration, shutdown: &Shutdown) -> Result<Lease, LeaseError> {
        let token = uuid::Uuid::now_v7().simple().to_string();
        let mut lease = Lease {
            group: group.to_string(),
            instance: instance.to_string(),
            token,
            generation: 0,
            ttl,
            writer: writer.clone(),
            database: ch.database.clone(),
            fenced: Arc::new(AtomicBool::new(false)),
            seq: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        };
        // A released lease reads as renewed a day ago: a longer time to live
        // would make a released lease look held.
        let ttl = ttl.min(MAX_TTL);
        lease.ttl = ttl;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut waiting_logged = false;
        loop {
            let current = holder(writer, &ch.database, group).await?;
            match &current {
                Some(h) if h.token != lease.token && h.age_ms < ttl_ms => {
                    if !waiting_logged {
                        tracing::warn!(group, holder = %h.instance, generation = h.generation, renewed_ms_ago = h.age_ms, "another instance holds the consumer group; waiting until it stops or its lease expires");
                        waiting_logged = true;
                    }
                }
                Some(h) if h.token == lease.token => {
                    tracing::info!(group, generation = h.generation, instance, "holding the consumer group's lease");
                    return Ok(lease);
                }
                _ => {
                    // Free: claim the next generation, let concurrent claims land, read back.
                    lease.generation = current.as_ref().map_or(1, |h| h.generation + 1);
                    lease.write(1, Renewed::Now).await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return Err(LeaseError::Stopped(group.to_string())),
            }
        }
    }

    /// Writes this instance's lease row, stamped by ClickHouse's clock.
    async fn write(&self, seq: u64, renewed: Renewed) -> Result<(), LeaseError> {
        let at = match renewed {
            Renewed::Now => "now64(3)",
            Renewed::Released => "now64(3) - INTERVAL 1 DAY",
        };
        let sql = format!(
            "INSERT INTO `{}`.`{LEASE_TABLE}` (consumer_group, generation, token, instance, seq, renewed_at) SELECT ?, ?, ?, ?, ?, {at}",
            self.database
        );
        self.writer.client().query(&sql).bind(&self.group).bind(self.generation).bind(&self.token).bind(&self.instance).bind(seq).execute().await?;
        Ok(())
    }

    /// Renews the lease until `shutdown`. Sets `fenced` (and triggers
    /// `shutdown`) when another instance took the group over.
    pub async fn keep(self, shutdown: Shutdown) {
        let every = (self.ttl / 4).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => break,
            }
            let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            if let Err(e) = self.write(seq, Renewed::Now).await {
                tracing::warn!(group = %self.group, "renewing the lease failed (retrying): {e}");
                continue;
            }
            match holder(&self.writer, &self.database, &self.group).await {
                Ok(Some(h)) if h.token != self.token => {
                    tracing::error!(group = %self.group, holder = %h.instance, generation = h.generation, "another instance took the consumer group over; this one stops committing and ends");
                    self.fenced.store(true, Ordering::Release);
                    shutdown.trigger();
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(group = %self.group, "reading the lease failed (retrying): {e}"),
            }
        }
    }

    /// Gives the lease up after a clean stop, so that the next instance need
    /// not wait for it to expire.
    pub async fn release(&self) {
        if self.fenced.load(Ordering::Acquire) {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        match self.write(seq, Renewed::Released).await {
            Ok(()) => tracing::info!(group = %self.group, "lease released"),
            Err(e) => tracing::warn!(group = %self.group, "releasing the lease failed (it expires by itself): {e}"),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }
}
