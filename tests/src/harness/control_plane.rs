//! The control plane in process: the real API server on a loopback port over a fresh SQLite
//! file or a throwaway PostgreSQL server.
use std::{path::Path, sync::Arc};

use vpcep::{
    api::{Config, Credentials, RequestLimits},
    server::Server,
    store::Store,
    tls::server::TlsFiles,
};

use super::{Pki, Postgres, TempDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The control plane's defaults with the request limits off: the tests send many requests
/// quickly from one credential and one address (and some fail authentication on purpose),
/// which the production defaults would refuse. `tests/api/rate_limits.rs` sets its own.
pub fn test_config() -> Config {
    Config {
        limits: RequestLimits::off(),
        ..Config::default()
    }
}

/// The URL of the SQLite database file `vpcep.db` in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("vpcep.db").display())
}

/// Opens the store at `url` and starts an API server on it.
pub async fn start_server(url: &str, credentials: Credentials, config: Config) -> Server {
    let store = Store::open(url, config.feed_retain).await.unwrap();
    Server::start(store, credentials, config).await.unwrap()
}

/// A server, its store and the database under them.
pub struct ControlPlane {
    pub server: Server,
    pub store: Store,
    // Dropped after the server: the database outlives it.
    pg: Option<Postgres>,
    dir: TempDir,
    /// The CA and certificates of a control plane over HTTPS started with one (see
    /// [`ControlPlane::start_mtls`]); removed with it.
    pub pki: Option<Arc<Pki>>,
}

impl ControlPlane {
    pub async fn start(db: Db, credentials: Credentials, config: Config) -> Self {
        Self::start_with(db, credentials, config, None).await
    }

    /// Over HTTPS with `tls` (mutual TLS when it names a client CA).
    pub async fn start_tls(
        db: Db,
        credentials: Credentials,
        config: Config,
        tls: TlsFiles,
    ) -> Self {
        Self::start_with(db, credentials, config, Some(tls)).await
    }

    /// Over mutual TLS with the certificates of `pki` (the server's, and its CA for the
    /// nodes), which the control plane keeps.
    pub async fn start_mtls(db: Db, credentials: Credentials, config: Config, pki: Pki) -> Self {
        let mut cp = Self::start_tls(db, credentials, config, pki.server_files()).await;
        cp.pki = Some(Arc::new(pki));
        cp
    }

    async fn start_with(
        db: Db,
        credentials: Credentials,
        config: Config,
        tls: Option<TlsFiles>,
    ) -> Self {
        let dir = TempDir::new("cp");
        let pg = (db == Db::Postgres).then(Postgres::start);
        let url = match &pg {
            Some(pg) => pg.url(),
            None => sqlite_url(&dir.0),
        };
        let store = Store::open(&url, config.feed_retain).await.unwrap();
        let server = match tls {
            Some(tls) => Server::start_tls(store.clone(), credentials, config, tls).await,
            None => Server::start(store.clone(), credentials, config).await,
        }
        .unwrap();
        Self {
            server,
            store,
            pg,
            dir,
            pki: None,
        }
    }

    /// The database's URL.
    pub fn db_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url(),
            None => sqlite_url(&self.dir.0),
        }
    }

    /// Another API replica on the same database.
    pub async fn replica(&self, credentials: Credentials, config: Config) -> Server {
        start_server(&self.db_url(), credentials, config).await
    }
}
