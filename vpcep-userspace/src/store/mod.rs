//! The control plane's store: SQLite (embedded default) or PostgreSQL (several API replicas),
//! through one set of migrations and runtime queries that both databases accept.
//!
//! Resources are JSON documents in `objects`; every write is one transaction that first bumps
//! the global revision in `meta` (taking the writer lock on both databases), then writes rows and
//! appends to the `changes` log that the agents' feed is served from.
//!
//! * `pool`: database URLs, connecting and migrating.
//! * `objects`: reading and writing documents, and the list filters.
//! * `tx`: the write transaction (revision bump, commit, log compaction).
//! * `address`: the index of the addresses that objects hold.
//! * `changes`: the change log, the revision poller and the agents' applied revisions.
//! * `audit`: the audit trail (not part of the change log).
//! * `snapshot`: the feed snapshot as one JSON document.
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use sqlx::AnyPool;
use tokio::sync::watch;

mod address;
mod audit;
mod changes;
mod objects;
mod pool;
mod snapshot;
mod tx;

#[cfg(test)]
mod tests;

pub use audit::{AuditQuery, AuditRecord, audit_time};
pub use changes::Change;
pub use objects::Filter;
pub use tx::WriteTx;

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
    #[error(
        "cannot create the database folder {}: create it (mkdir -p {}) writable by this \
         user, or give another --db sqlite://PATH",
        path.display(), path.display()
    )]
    SqliteDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open the SQLite database {}: its folder must be writable by this user (or \
         give another --db sqlite://PATH)",
        path.display()
    )]
    SqliteOpen {
        path: std::path::PathBuf,
        #[source]
        source: sqlx::Error,
    },
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
    /// Whether objects of this kind hold addresses (see [`Object::address`]).
    const ADDRESSED: bool = false;
    /// The address this object holds: (scope, IPv4 address). `put` and `delete` keep it in
    /// the `addresses` index, so free addresses are found without reading the objects.
    fn address(&self) -> Option<(String, u32)> {
        None
    }
}

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
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Subscribes to the latest known revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// SQLite: waits for this process's other writers (see `sqlite_writer`). PostgreSQL
    /// needs no such queue: its row locks wait without polling.
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }

    /// A transaction for reads whose statements all see one snapshot. SQLite's transactions
    /// already do; PostgreSQL's default (READ COMMITTED) takes one per statement.
    async fn begin_consistent_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}
