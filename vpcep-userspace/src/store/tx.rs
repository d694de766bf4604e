//! The write transaction: one new revision, taken first so that writers queue on it.
use sqlx::Row;

use super::{Result, Store};

/// A write transaction at one new revision. Dropping it without `commit` rolls back.
pub struct WriteTx {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Any>,
    pub(super) revision: i64,
    compacted: i64,
    seq: i64,
    store: Store,
    /// The objects this transaction wrote (`kind/id`) and their projects, for the audit.
    pub(super) touched: Vec<(String, String)>,
    /// Released after the commit (or the rollback on drop).
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Store {
    /// Starts a write transaction: bumps the global revision first (the writer lock).
    pub async fn write(&self) -> Result<WriteTx> {
        let guard = self.writer_turn().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision, compacted",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(WriteTx {
            tx,
            revision: row.try_get(0)?,
            compacted: row.try_get(1)?,
            seq: 0,
            store: self.clone(),
            touched: Vec::new(),
            _guard: guard,
        })
    }
}

impl WriteTx {
    /// The revision this transaction writes.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Claims the one-time filling of limits into the stored objects of `kind` (see
    /// migration 0004): true for the one transaction that removes its row.
    pub async fn claim_limits_fill(&mut self, kind: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM limits_fill WHERE kind = $1")
            .bind(kind)
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
            > 0)
    }

    /// The objects this transaction wrote so far, as `kind/id`, and their projects.
    pub fn touched_objects(&self) -> &[(String, String)] {
        &self.touched
    }

    pub(super) fn touched(&mut self, kind: &str, id: &str, project: String) {
        let r = format!("{kind}/{id}");
        if !self.touched.iter().any(|(x, _)| *x == r) {
            self.touched.push((r, project));
        }
    }

    /// Appends one change of this revision to the log.
    pub(super) async fn log(&mut self, kind: &str, id: &str, op: &str, body: &str) -> Result<()> {
        self.seq += 1;
        sqlx::query(
            "INSERT INTO changes (revision, seq, kind, id, op, body) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.revision)
        .bind(self.seq)
        .bind(kind)
        .bind(id)
        .bind(op)
        .bind(body)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Commits and tells local watchers about the new revision.
    pub async fn commit(mut self) -> Result<i64> {
        // Compact the log now and then, in the same transaction (so `compacted` stays exact).
        let floor = self.revision - self.store.retain;
        if floor > self.compacted && (self.revision % 64 == 0 || self.store.retain < 64) {
            sqlx::query("DELETE FROM changes WHERE revision <= $1")
                .bind(floor)
                .execute(&mut *self.tx)
                .await?;
            sqlx::query("UPDATE meta SET compacted = $1 WHERE id = 1")
                .bind(floor)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        self.store.publish(self.revision);
        Ok(self.revision)
    }
}
