//! Database URLs, the connection pool and migrations.
use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use sqlx::{
    AnyConnection, AnyPool, Row,
    any::{AnyConnectOptions, AnyPoolOptions},
};
use tokio::sync::watch;

use super::{Backend, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`: `sqlite://PATH`,
    /// `sqlite:PATH`, a plain file path, or `postgres://…`.
    pub async fn open(url: &str, retain: i64) -> Result<Self> {
        let (pool, backend) = connect(url).await?;
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
}

async fn connect(url: &str) -> Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let (url, backend) = normalize_url(url)?;
    let file = (backend == Backend::Sqlite).then(|| sqlite_file(&url));
    if let Some(file) = &file {
        create_parent(file)?;
    }
    let opts = AnyConnectOptions::from_str(&url)?;
    let max = if backend == Backend::Sqlite { 8 } else { 16 };
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    sqlite_pragmas(conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| match file {
            Some(path) => StoreError::SqliteOpen { path, source },
            None => StoreError::Db(source),
        })?;
    Ok((pool, backend))
}

/// The file of a normalized SQLite URL (`sqlite://PATH?…`).
fn sqlite_file(url: &str) -> PathBuf {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    PathBuf::from(path.split('?').next().unwrap_or(path))
}

/// Creates the folder of a SQLite file (`/var/lib/vpcep` on a fresh machine), so that the
/// documented path works; SQLite itself only creates the file.
fn create_parent(file: &Path) -> Result<()> {
    // `:memory:` and a bare file name have no folder to create.
    if file.as_os_str().to_string_lossy().starts_with(':') {
        return Ok(());
    }
    match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|source| StoreError::SqliteDir {
            path: dir.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}

async fn sqlite_pragmas(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    // WAL lets readers run beside the single writer; NORMAL is durable across application
    // crashes, which is what WAL needs.
    for pragma in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA busy_timeout = 30000",
    ] {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The URL sqlx opens and the backend behind it. SQLite files are created when missing
/// (`mode=rwc`) unless the URL names a mode.
pub(super) fn normalize_url(url: &str) -> Result<(String, Backend)> {
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
