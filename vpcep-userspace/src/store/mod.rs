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
    /// Whether objects of this kind hold addresses (see [`Object::address`]).
    const ADDRESSED: bool = false;
    /// The address this object holds: (scope, IPv4 address). `put` and `delete` keep it in
    /// the `addresses` index, so free addresses are found without reading the objects.
    fn address(&self) -> Option<(String, u32)> {
        None
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

    /// Indexes the addresses of the objects of kind `T` written before the `addresses` table
    /// existed. Runs once per kind and database: the first caller claims the kind's row in
    /// `address_fill` (other replicas wait on it, then find it gone).
    pub async fn fill_addresses<T: Object>(&self) -> Result<usize> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query("DELETE FROM address_fill WHERE kind = $1")
            .bind(T::KIND)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(0);
        }
        let rows = sqlx::query("SELECT body FROM objects WHERE kind = $1")
            .bind(T::KIND)
            .fetch_all(&mut *tx)
            .await?;
        let mut n = 0;
        for r in &rows {
            let obj = decode::<T>(r)?;
            if let Some((scope, ip)) = obj.address() {
                // A clash in old data keeps the first holder rather than failing the start.
                n += sqlx::query(
                    "INSERT INTO addresses (scope, ip, kind, id) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (scope, ip) DO NOTHING",
                )
                .bind(scope)
                .bind(i64::from(ip))
                .bind(T::KIND)
                .bind(obj.id())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        }
        tx.commit().await?;
        if n > 0 {
            tracing::info!(kind = T::KIND, addresses = n, "address index filled");
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A consistent snapshot of every object of the given kinds, and its revision.
    /// The feed snapshot as one JSON document, `{"revision": R, "objects": [{"kind", "id",
    /// "revision", "object"}, …]}`, with each object's stored body spliced in as it is (it
    /// was written by `serde_json`), so serving a large store costs no per-object decode and
    /// re-encode.
    pub async fn snapshot_json(&self, kinds: &[&str]) -> Result<String> {
        let (rev, rows) = self.snapshot_rows(kinds).await?;
        let mut out =
            String::with_capacity(rows.iter().map(|r| r.3.len() + 96).sum::<usize>() + 64);
        out.push_str("{\"revision\":");
        out.push_str(&rev.to_string());
        out.push_str(",\"objects\":[");
        for (i, (kind, id, revision, body)) in rows.iter().enumerate() {
            // Every body is a JSON object `serde_json` wrote; a full parse here would cost
            // a third of serving a large store, so only its framing is checked.
            let (t, b) = (body.trim_end(), body.trim_start());
            if !b.starts_with('{') || !t.ends_with('}') {
                return Err(StoreError::Corrupt {
                    kind: "snapshot",
                    source: serde::de::Error::custom(format!("{kind} {id}: not a JSON object")),
                });
            }
            if i > 0 {
                out.push(',');
            }
            // Kinds and ids are our own ASCII names and UUIDs, but escape them anyway.
            let esc = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
            out.push_str("{\"kind\":");
            out.push_str(&esc(kind));
            out.push_str(",\"id\":");
            out.push_str(&esc(id));
            out.push_str(",\"revision\":");
            out.push_str(&revision.to_string());
            out.push_str(",\"object\":");
            out.push_str(body);
            out.push('}');
        }
        out.push_str("]}");
        Ok(out)
    }

    /// (revision, rows of kind, id, revision, body) of one consistent read.
    async fn snapshot_rows(
        &self,
        kinds: &[&str],
    ) -> Result<(i64, Vec<(String, String, i64, String)>)> {
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
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get(0)?;
            if kinds.contains(&kind.as_str()) {
                out.push((kind, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
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
        if T::ADDRESSED {
            self.hold_address(T::KIND, &id, obj.address()).await?;
        }
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
            if T::ADDRESSED {
                self.release_address(T::KIND, id).await?;
            }
            self.log(T::KIND, id, "delete", "null").await?;
        }
        Ok(())
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

    /// Whether `ip` is held in `scope`.
    pub async fn address_taken(&mut self, scope: &str, ip: u32) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM addresses WHERE scope = $1 AND ip = $2")
                .bind(scope)
                .bind(i64::from(ip))
                .fetch_optional(&mut *self.tx)
                .await?
                .is_some(),
        )
    }

    /// The lowest address of `first..=last` that is neither held in `scope` nor `reserved`.
    /// A scope must always be searched with the same range and reserved addresses: the
    /// search starts at the scope's recorded lower bound, below which all are taken.
    pub async fn lowest_free_address(
        &mut self,
        scope: &str,
        first: u32,
        last: u32,
        reserved: &[u32],
    ) -> Result<Option<u32>> {
        const CHUNK: usize = 64;
        let low: Option<i64> = sqlx::query("SELECT low FROM address_low WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let (first, last) = (i64::from(first), i64::from(last));
        let mut c = low.unwrap_or(first).max(first);
        // Walk the held addresses upwards from `c` in chunks until one is missing.
        'search: loop {
            let held: Vec<i64> = sqlx::query(
                "SELECT ip FROM addresses WHERE scope = $1 AND ip >= $2 ORDER BY ip LIMIT $3",
            )
            .bind(scope)
            .bind(c)
            .bind(CHUNK as i64)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
            let more = held.len() == CHUNK;
            let mut held = held.into_iter().peekable();
            loop {
                if c > last {
                    return Ok(None);
                }
                if reserved.iter().any(|r| i64::from(*r) == c) {
                    c += 1;
                    continue;
                }
                match held.peek() {
                    Some(h) if *h < c => {
                        held.next();
                    }
                    Some(h) if *h == c => {
                        held.next();
                        c += 1;
                    }
                    None if more => continue 'search,
                    _ => break 'search,
                }
            }
        }
        sqlx::query(
            "INSERT INTO address_low (scope, low) VALUES ($1, $2) \
             ON CONFLICT (scope) DO UPDATE SET low = excluded.low",
        )
        .bind(scope)
        .bind(c)
        .execute(&mut *self.tx)
        .await?;
        Ok(u32::try_from(c).ok())
    }

    /// Records the address an object holds (replacing the one it held before, if different).
    async fn hold_address(
        &mut self,
        kind: &str,
        id: &str,
        addr: Option<(String, u32)>,
    ) -> Result<()> {
        let old = sqlx::query("SELECT scope, ip FROM addresses WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| -> Result<(String, i64)> { Ok((r.try_get(0)?, r.try_get(1)?)) })
            .transpose()?;
        let new = addr.map(|(s, ip)| (s, i64::from(ip)));
        if old == new {
            return Ok(());
        }
        if old.is_some() {
            self.release_address(kind, id).await?;
        }
        if let Some((scope, ip)) = new {
            sqlx::query("INSERT INTO addresses (scope, ip, kind, id) VALUES ($1, $2, $3, $4)")
                .bind(scope)
                .bind(ip)
                .bind(kind)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Frees the addresses an object holds and lowers its scope's search start to them.
    async fn release_address(&mut self, kind: &str, id: &str) -> Result<()> {
        let freed =
            sqlx::query("DELETE FROM addresses WHERE kind = $1 AND id = $2 RETURNING scope, ip")
                .bind(kind)
                .bind(id)
                .fetch_all(&mut *self.tx)
                .await?;
        for r in freed {
            let (scope, ip): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            sqlx::query("UPDATE address_low SET low = $2 WHERE scope = $1 AND low > $2")
                .bind(&scope)
                .bind(ip)
                .execute(&mut *self.tx)
                .await?;
            // An empty scope needs no bound; dropping it also forgets a deleted subnet's.
            sqlx::query(
                "DELETE FROM address_low WHERE scope = $1 \
                 AND NOT EXISTS (SELECT 1 FROM addresses WHERE scope = $1)",
            )
            .bind(&scope)
            .execute(&mut *self.tx)
            .await?;
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
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Nic {
        id: String,
        scope: String,
        ip: u32,
    }

    impl Object for Nic {
        const KIND: &'static str = "port";
        fn id(&self) -> String {
            self.id.clone()
        }
        fn project(&self) -> String {
            String::new()
        }
        const ADDRESSED: bool = true;
        fn address(&self) -> Option<(String, u32)> {
            Some((self.scope.clone(), self.ip))
        }
    }

    fn nic(id: &str, scope: &str, ip: u32) -> Nic {
        Nic {
            id: id.into(),
            scope: scope.into(),
            ip,
        }
    }

    async fn put(store: &Store, n: Nic) {
        let mut tx = store.write().await.unwrap();
        tx.put(&n).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn lowest(store: &Store) -> Option<u32> {
        let mut tx = store.write().await.unwrap();
        // 1..=6 with 3 reserved (a gateway).
        let ip = tx.lowest_free_address("s", 1, 6, &[3]).await.unwrap();
        tx.commit().await.unwrap();
        ip
    }

    #[tokio::test]
    async fn address_index() {
        /// Removed on drop, also when an assertion fails.
        struct Dir(std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let guard =
            Dir(std::env::temp_dir().join(format!("vpcep-store-test-{}", std::process::id())));
        let dir = guard.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.join("v.db").display()), 1000)
            .await
            .unwrap();
        // What the control plane does at start; nothing to index in a new database.
        assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 0);
        for (id, ip) in [("a", 1), ("b", 2), ("d", 4)] {
            put(&store, nic(id, "s", ip)).await;
        }
        put(&store, nic("other", "t", 5)).await;
        assert_eq!(lowest(&store).await, Some(5), "reserved and held skipped");
        put(&store, nic("e", "s", 5)).await;
        put(&store, nic("f", "s", 6)).await;
        assert_eq!(lowest(&store).await, None, "full");
        let mut tx = store.write().await.unwrap();
        tx.delete::<Nic>("b").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(lowest(&store).await, Some(2), "freed address reused");
        // Moving an object releases its old address; rewriting it unchanged keeps it.
        put(&store, nic("a", "t", 1)).await;
        put(&store, nic("d", "s", 4)).await;
        assert_eq!(lowest(&store).await, Some(1));
        let mut tx = store.write().await.unwrap();
        assert!(tx.address_taken("s", 4).await.unwrap());
        assert!(!tx.address_taken("s", 1).await.unwrap());
        // A double assignment is refused by the index itself.
        assert!(tx.put(&nic("g", "s", 4)).await.is_err());
        drop(tx);

        // A database from before the index: filled once from the stored objects.
        for sql in [
            "DELETE FROM addresses",
            "DELETE FROM address_low",
            "INSERT INTO address_fill (kind) VALUES ('port')",
        ] {
            sqlx::query(sql).execute(&store.pool).await.unwrap();
        }
        assert_eq!(lowest(&store).await, Some(1), "empty index");
        // `lowest` left a bound behind that the fill does not know about; a real database
        // from before the index has none.
        sqlx::query("DELETE FROM address_low")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 5);
        assert_eq!(store.fill_addresses::<Nic>().await.unwrap(), 0, "only once");
        assert_eq!(lowest(&store).await, Some(1));
        put(&store, nic("h", "s", 1)).await;
        assert_eq!(lowest(&store).await, Some(2));
        put(&store, nic("i", "s", 2)).await;
        assert_eq!(lowest(&store).await, None);
    }

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
