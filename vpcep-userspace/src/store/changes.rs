//! The change log the feed's watch is served from, the latest revision (local commits and a
//! poller for other processes' commits), and the revisions the agents report applied.
use std::{collections::HashMap, time::Duration};

use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;

use super::{Result, Store, StoreError};

/// One change in the log, as served by the feed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub revision: i64,
    pub kind: String,
    pub id: String,
    pub op: String,
    pub object: serde_json::Value,
}

impl Store {
    /// Polls the database for revisions written by other processes (another API replica on
    /// the same PostgreSQL) and publishes them to local watchers.
    /// Stops when `stop` turns true or its sender is gone.
    pub fn spawn_poller(
        &self,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = stop.wait_for(|s| *s) => {
                        let _ = r;
                        return;
                    }
                }
                match store.current_revision().await {
                    Ok(rev) => store.publish(rev),
                    Err(e) => tracing::warn!(error = %e, "polling the revision failed"),
                }
            }
        })
    }

    /// Tells local watchers about `rev` if it is newer than what they know.
    pub(super) fn publish(&self, rev: i64) {
        self.latest.send_if_modified(|cur| {
            if rev > *cur {
                *cur = rev;
                true
            } else {
                false
            }
        });
    }

    pub async fn current_revision(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// Changes in revisions (`after`, `upto`]; `None` when `after` is older than the log.
    pub async fn changes_between(&self, after: i64, upto: i64) -> Result<Option<Vec<Change>>> {
        // The compaction mark and the rows must come from one snapshot.
        let mut tx = self.begin_consistent_read().await?;
        let compacted: i64 = sqlx::query("SELECT compacted FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if after < compacted {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT revision, kind, id, op, body FROM changes \
             WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(change).collect::<Result<_>>().map(Some)
    }

    /// Records the revision a node's agent has applied (not part of the change log).
    pub async fn set_applied(&self, node: &str, revision: i64, at: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO node_status (node, applied_revision, applied_at) VALUES ($1, $2, $3) \
             ON CONFLICT (node) DO UPDATE SET applied_revision = excluded.applied_revision, \
             applied_at = excluded.applied_at",
        )
        .bind(node)
        .bind(revision)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every node's applied revision and when it was reported.
    pub async fn applied(&self) -> Result<HashMap<String, (i64, String)>> {
        let rows = sqlx::query("SELECT node, applied_revision, applied_at FROM node_status")
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::new();
        for r in rows {
            out.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }
}

/// A `changes` row: revision, kind, id, op, body.
fn change(r: &sqlx::any::AnyRow) -> Result<Change> {
    let body: String = r.try_get(4)?;
    Ok(Change {
        revision: r.try_get(0)?,
        kind: r.try_get(1)?,
        id: r.try_get(2)?,
        op: r.try_get(3)?,
        object: serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
            kind: "change",
            source,
        })?,
    })
}
