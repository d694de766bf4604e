//! The control plane's store: SQLite (embedded default) or PostgreSQL (several API replicas),
//! through one set of migrations and runtime queries that both databases accept.
//!
//! Resources are JSON documents in `objects`; every write is one transaction that first bumps
//! the global revision in `meta` (taking the writer lock on both databases), then writes rows and
//! appends to the `changes` log that the agents' feed is served from.
use std::{str::FromStr, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{
    AnyPool, Row,
    any::{AnyConnectOptions, AnyPoolOptions},
};
use tokio::sync::watch;

/// Store errors. Callers map these to an internal error; none carry user input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored document of kind {kind} is not valid")]
    Corrupt {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode document")]
    Encode(#[source] serde_json::Error),
    #[error("unsupported database URL {0:?} (use sqlite://PATH or postgres://…)")]
    BadUrl(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database is behind the pool: a few statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A resource stored as a document.
pub trait Object: Serialize + DeserializeOwned + Send + Sync {
    /// The `kind` column and the feed's kind name.
    const KIND: &'static str;
    fn id(&self) -> String;
    /// Owning project ("" for operator-owned inventory such as nodes).
    fn project(&self) -> String;
    /// Indexed references, meaning per kind (e.g. a service's backend port and VPC).
    fn refs(&self) -> (String, String) {
        (String::new(), String::new())
    }
}

/// One change in the log, as served by the feed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub revision: i64,
    pub kind: String,
    pub id: String,
    pub op: String,
    pub object: serde_json::Value,
}

/// A raw stored object (for the feed snapshot).
#[derive(Debug, Clone, Serialize)]
pub struct RawObject {
    pub kind: String,
    pub id: String,
    pub revision: i64,
    pub object: serde_json::Value,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Latest revision known to this process (local commits and the poller).
    latest: watch::Sender<i64>,
    /// How many revisions of change log to keep before compacting.
    retain: i64,
    /// SQLite: writers of this process queue here instead of in SQLite's busy handler, which
    /// sleeps in coarse steps (the database lock still guards against other processes).
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`: `sqlite://PATH`,
    /// `sqlite:PATH`, a plain file path, or `postgres://…`.
    pub async fn open(url: &str, retain: i64) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = normalize_url(url)?;
        let opts = AnyConnectOptions::from_str(&url)?;
        let max = if backend == Backend::Sqlite { 8 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer; NORMAL is durable
                        // across application crashes, which is what WAL needs.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        let rev: i64 = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&pool)
            .await?
            .try_get(0)?;
        let (latest, _) = watch::channel(rev);
        Ok(Self {
            pool,
            backend,
            latest,
            retain: retain.max(1),
            sqlite_writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Subscribes to the latest known revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Starts a write transaction: bumps the global revision first (the writer lock).
    pub async fn write(&self) -> Result<WriteTx> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
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
            _guard: guard,
        })
    }

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

    fn publish(&self, rev: i64) {
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

    pub async fn get<T: Object>(&self, id: &str) -> Result<Option<T>> {
        let row = sqlx::query("SELECT body FROM objects WHERE kind = $1 AND id = $2")
            .bind(T::KIND)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode::<T>(&r)).transpose()
    }

    pub async fn list<T: Object>(&self, filter: Filter<'_>) -> Result<Vec<T>> {
        let (sql, val) = filter.sql();
        let mut q = sqlx::query(&sql).bind(T::KIND);
        if let Some(v) = val {
            q = q.bind(v);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode::<T>)
            .collect()
    }

    pub async fn count<T: Object>(&self, filter: Filter<'_>) -> Result<i64> {
        let (sql, val) = filter.count_sql();
        let mut q = sqlx::query(&sql).bind(T::KIND);
        if let Some(v) = val {
            q = q.bind(v);
        }
        Ok(q.fetch_one(&self.pool).await?.try_get(0)?)
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
    pub async fn applied(&self) -> Result<std::collections::HashMap<String, (i64, String)>> {
        let rows = sqlx::query("SELECT node, applied_revision, applied_at FROM node_status")
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            out.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }

    /// A consistent snapshot of every object of the given kinds, and its revision.
    pub async fn snapshot(&self, kinds: &[&str]) -> Result<(i64, Vec<RawObject>)> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // One snapshot for both statements (READ COMMITTED would take one per statement).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let rev: i64 = sqlx::query("SELECT revision FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let rows = sqlx::query("SELECT kind, id, revision, body FROM objects ORDER BY kind, id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = Vec::new();
        for r in rows {
            let kind: String = r.try_get(0)?;
            if !kinds.contains(&kind.as_str()) {
                continue;
            }
            let body: String = r.try_get(3)?;
            out.push(RawObject {
                kind,
                id: r.try_get(1)?,
                revision: r.try_get(2)?,
                object: serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                    kind: "snapshot",
                    source,
                })?,
            });
        }
        Ok((rev, out))
    }

    /// Changes in revisions (`after`, `upto`]; `None` when `after` is older than the log.
    pub async fn changes_between(&self, after: i64, upto: i64) -> Result<Option<Vec<Change>>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // The compaction mark and the rows must come from one snapshot.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
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
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let body: String = r.try_get(4)?;
            out.push(Change {
                revision: r.try_get(0)?,
                kind: r.try_get(1)?,
                id: r.try_get(2)?,
                op: r.try_get(3)?,
                object: serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
                    kind: "change",
                    source,
                })?,
            });
        }
        Ok(Some(out))
    }
}

/// Which rows of a kind to list.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    All,
    Project(&'a str),
    Ref1(&'a str),
    Ref2(&'a str),
}

impl Filter<'_> {
    fn sql(&self) -> (String, Option<String>) {
        let base = "SELECT body FROM objects WHERE kind = $1";
        let (col, val) = match self {
            Filter::All => return (format!("{base} ORDER BY revision"), None),
            Filter::Project(v) => ("project_id", v),
            Filter::Ref1(v) => ("ref1", v),
            Filter::Ref2(v) => ("ref2", v),
        };
        (
            format!("{base} AND {col} = $2 ORDER BY revision"),
            Some((*val).to_owned()),
        )
    }
}

impl Filter<'_> {
    fn count_sql(&self) -> (String, Option<String>) {
        let (sql, val) = self.sql();
        (
            sql.replacen("SELECT body", "SELECT COUNT(*)", 1)
                .replace(" ORDER BY revision", ""),
            val,
        )
    }
}

fn decode<T: Object>(row: &sqlx::any::AnyRow) -> Result<T> {
    let body: String = row.try_get(0)?;
    serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
        kind: T::KIND,
        source,
    })
}

fn normalize_url(url: &str) -> Result<(String, Backend)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((url.to_owned(), Backend::Postgres));
    }
    let path = if let Some(p) = url.strip_prefix("sqlite://") {
        p
    } else if let Some(p) = url.strip_prefix("sqlite:") {
        p
    } else if !url.contains("://") {
        url
    } else {
        return Err(StoreError::BadUrl(url.to_owned()));
    };
    if path.is_empty() {
        return Err(StoreError::BadUrl(url.to_owned()));
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    let mode = if path.contains("mode=") {
        String::new()
    } else {
        format!("{sep}mode=rwc")
    };
    Ok((format!("sqlite://{path}{mode}"), Backend::Sqlite))
}

/// A write transaction at one new revision. Dropping it without `commit` rolls back.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    revision: i64,
    compacted: i64,
    seq: i64,
    store: Store,
    /// Released after the commit (or the rollback on drop).
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// The revision this transaction writes.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub async fn get<T: Object>(&mut self, id: &str) -> Result<Option<T>> {
        let row = sqlx::query("SELECT body FROM objects WHERE kind = $1 AND id = $2")
            .bind(T::KIND)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| decode::<T>(&r)).transpose()
    }

    pub async fn list<T: Object>(&mut self, filter: Filter<'_>) -> Result<Vec<T>> {
        let (sql, val) = filter.sql();
        let mut q = sqlx::query(&sql).bind(T::KIND);
        if let Some(v) = val {
            q = q.bind(v);
        }
        q.fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(decode::<T>)
            .collect()
    }

    pub async fn count<T: Object>(&mut self, filter: Filter<'_>) -> Result<i64> {
        let (sql, val) = filter.count_sql();
        let mut q = sqlx::query(&sql).bind(T::KIND);
        if let Some(v) = val {
            q = q.bind(v);
        }
        Ok(q.fetch_one(&mut *self.tx).await?.try_get(0)?)
    }

    /// Inserts or replaces an object and logs the change.
    pub async fn put<T: Object>(&mut self, obj: &T) -> Result<()> {
        let body = serde_json::to_string(obj).map_err(StoreError::Encode)?;
        let (r1, r2) = obj.refs();
        let id = obj.id();
        sqlx::query(
            "INSERT INTO objects (kind, id, project_id, ref1, ref2, revision, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (kind, id) DO UPDATE SET project_id = excluded.project_id, \
             ref1 = excluded.ref1, ref2 = excluded.ref2, revision = excluded.revision, \
             body = excluded.body",
        )
        .bind(T::KIND)
        .bind(&id)
        .bind(obj.project())
        .bind(r1)
        .bind(r2)
        .bind(self.revision)
        .bind(&body)
        .execute(&mut *self.tx)
        .await?;
        self.log(T::KIND, &id, "put", &body).await
    }

    /// Deletes an object (if present) and logs the change.
    pub async fn delete<T: Object>(&mut self, id: &str) -> Result<()> {
        let res = sqlx::query("DELETE FROM objects WHERE kind = $1 AND id = $2")
            .bind(T::KIND)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        if res.rows_affected() > 0 {
            self.log(T::KIND, id, "delete", "null").await?;
        }
        Ok(())
    }

    async fn log(&mut self, kind: &str, id: &str, op: &str, body: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let n = |u: &str| normalize_url(u).map(|(u, b)| (u, b == Backend::Sqlite));
        assert_eq!(
            n("sqlite:///var/lib/v.db").unwrap(),
            ("sqlite:///var/lib/v.db?mode=rwc".to_owned(), true)
        );
        assert_eq!(n("sqlite:v.db").unwrap().0, "sqlite://v.db?mode=rwc");
        assert_eq!(n("/tmp/v.db").unwrap().0, "sqlite:///tmp/v.db?mode=rwc");
        assert_eq!(
            n("sqlite://v.db?mode=ro").unwrap().0,
            "sqlite://v.db?mode=ro"
        );
        assert!(!n("postgres://u@h/db").unwrap().1);
        assert!(n("mysql://h/db").is_err());
        assert!(n("sqlite://").is_err());
    }
}
