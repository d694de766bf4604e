//! The audit trail: who wrote what, from where, with which result. Kept apart from the
//! change log, so the feed never carries it.
use serde::Serialize;
use sqlx::Row;

use super::{Result, Store, StoreError, WriteTx};

/// One audited write request. Holds ids only, never a secret or a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// The request's id (its `x-request-id`).
    pub request_id: String,
    /// RFC 3339 UTC with microseconds.
    pub at: String,
    /// The project acted on ("" when none, e.g. a node).
    pub project_id: String,
    /// `tenant:<project>`, `operator`, `agent:<node>` or `anonymous`.
    pub actor: String,
    /// The AK or token id the request authenticated with ("" for none).
    pub credential_id: String,
    /// The peer address.
    pub source: String,
    /// The operation (its operationId), or method and path when none matched.
    pub action: String,
    /// The objects the write changed, as `kind/id`.
    pub resources: Vec<String>,
    /// `ok`, or `failed` when the write was refused or did not commit.
    pub result: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// What [`Store::audit_records`] selects.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub project_id: Option<String>,
    /// Records at or after this time (in the form of [`AuditRecord::at`]).
    pub since: Option<String>,
    pub limit: i64,
}

/// The form of [`AuditRecord::at`].
pub fn audit_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

const INSERT: &str = "INSERT INTO audit (request_id, at, project_id, actor, credential_id, \
    source, action, resources, result, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

fn insert<'q>(
    r: &'q AuditRecord,
    resources: String,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(INSERT)
        .bind(&r.request_id)
        .bind(&r.at)
        .bind(&r.project_id)
        .bind(&r.actor)
        .bind(&r.credential_id)
        .bind(&r.source)
        .bind(&r.action)
        .bind(resources)
        .bind(&r.result)
        .bind(i64::from(r.status))
}

fn encode(r: &AuditRecord) -> Result<String> {
    serde_json::to_string(&r.resources).map_err(StoreError::Encode)
}

impl WriteTx {
    /// Records a write in this transaction (committed with it or not at all), and drops the
    /// records older than `before` (the retention).
    pub async fn audit(&mut self, r: &AuditRecord, before: Option<&str>) -> Result<()> {
        insert(r, encode(r)?).execute(&mut *self.tx).await?;
        if let Some(before) = before {
            sqlx::query("DELETE FROM audit WHERE at < $1")
                .bind(before)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Records a write that changed nothing (refused or rolled back), on its own.
    pub async fn audit(&self, r: &AuditRecord) -> Result<()> {
        insert(r, encode(r)?).execute(&self.pool).await?;
        Ok(())
    }

    /// The answered status of a recorded write, when it is not the 200 recorded.
    pub async fn audit_status(&self, request_id: &str, status: u16) -> Result<()> {
        sqlx::query("UPDATE audit SET status = $1 WHERE request_id = $2")
            .bind(i64::from(status))
            .bind(request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Audit records, oldest first.
    pub async fn audit_records(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT request_id, at, project_id, actor, credential_id, source, action, \
             resources, result, status FROM audit \
             WHERE ($1 = '' OR project_id = $2) AND at >= $3 \
             ORDER BY at, request_id LIMIT $4",
        )
        .bind(if q.project_id.is_some() { "1" } else { "" })
        .bind(q.project_id.clone().unwrap_or_default())
        .bind(q.since.clone().unwrap_or_default())
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }
}

fn record(r: &sqlx::any::AnyRow) -> Result<AuditRecord> {
    let resources: String = r.try_get(7)?;
    let status: i64 = r.try_get(9)?;
    Ok(AuditRecord {
        request_id: r.try_get(0)?,
        at: r.try_get(1)?,
        project_id: r.try_get(2)?,
        actor: r.try_get(3)?,
        credential_id: r.try_get(4)?,
        source: r.try_get(5)?,
        action: r.try_get(6)?,
        resources: serde_json::from_str(&resources).map_err(|source| StoreError::Corrupt {
            kind: "audit",
            source,
        })?,
        result: r.try_get(8)?,
        status: u16::try_from(status).unwrap_or_default(),
    })
}
