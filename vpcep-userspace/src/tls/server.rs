//! The control plane's TLS: its configuration, reloaded without a restart, and the accept
//! loop.
//!
//! A new configuration applies to connections accepted after it; connections already open
//! keep theirs, so a certificate swap fails no request. A file caught half-written (or a
//! new certificate whose key is not there yet) fails to load: the old configuration stays
//! and the next poll tries again.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{Result, TlsError, VERSIONS, cert_info, chain, provider, read_certs, read_key};
use crate::api::context::ClientCert;

/// `vpcep control-plane` TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Server certificate chain (PEM): with --tls-key, the API is served over HTTPS. Both
    /// files are reloaded when they change (checked every second) or on SIGHUP.
    #[arg(long, env = "VPCEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, env = "VPCEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) of the node certificates: an agent that presents a certificate it
    /// signed authenticates as the node its common name names (mutual TLS).
    #[arg(long, env = "VPCEP_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

/// The files a configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.client_ca.clone(),
        })
    }
}

/// What identifies a version of the files: their modification times and sizes.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut s = vec![one(&files.cert), one(&files.key)];
    if let Some(ca) = &files.client_ca {
        s.push(one(ca));
    }
    s
}

/// The server's TLS configuration, swapped whole when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamp when `current` was built, and the last stamp that failed to load
    /// (logged once, not every poll).
    stamps: Mutex<(Stamp, Option<Stamp>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let certs = read_certs("certificate", &files.cert)?;
    let key = read_key("key", &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies the certificates clients present against the node CA. Presenting none is
/// allowed: tenants and the operator authenticate with signatures and tokens.
fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("client CA bundle", ca)? {
        roots.add(c).map_err(|source| TlsError::Config {
            cert: ca.to_owned(),
            key: ca.to_owned(),
            source,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: ca.to_owned(),
            source,
        })
}

impl ServerTls {
    /// Loads the files; an error here stops the server (a bad file at start is a mistake,
    /// one at reload may be a rotation in progress).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        let s = stamp(&files);
        let config = build(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
            stamps: Mutex::new((s, None)),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the configuration if the files changed (or always, when `force`); true
    /// when a new one is in use.
    pub fn reload(&self, force: bool) -> bool {
        let now = stamp(&self.files);
        let Ok(mut stamps) = self.stamps.lock() else {
            return false;
        };
        if !force && now == stamps.0 {
            return false;
        }
        match build(&self.files) {
            Ok(config) => {
                match self.current.write() {
                    Ok(mut c) => *c = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                *stamps = (now, None);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                if stamps.1.as_ref() != Some(&now) {
                    tracing::error!(
                        error = %chain(&e),
                        "TLS files changed but do not load; still serving the previous certificate"
                    );
                    stamps.1 = Some(now);
                }
                false
            }
        }
    }

    /// Polls the files every `every` and reloads on SIGHUP, until shutdown.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    _ = shutdown.changed() => return,
                };
                if force {
                    tracing::info!("SIGHUP: reloading the TLS files");
                }
                this.reload(force);
            }
        });
    }
}

/// A handshake that takes longer is dropped (a client that connects and sends nothing must
/// not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The verified client certificate of a connection, as the API sees it.
fn client_cert(conn: &rustls::ServerConnection) -> Option<ClientCert> {
    let der = conn.peer_certificates()?.first()?;
    let info = cert_info(der)?;
    Some(ClientCert {
        node: info.common_name?,
        serial: info.serial,
    })
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets open
/// connections finish (up to [`DRAIN`]). Every request carries the peer address
/// (`ConnectInfo`) and, when the connection presented one, its verified [`ClientCert`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        // The cause (a client certificate expired or not signed by the node CA, a
                        // client that does not trust ours) is in the error.
                        tracing::info!(%peer, error = %chain(&e), "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let cert = client_cert(stream.get_ref().1);
            let svc = app.map_request(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(c) = &cert {
                    req.extensions_mut().insert(c.clone());
                }
                req
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}

/// The address a plain-HTTP server may listen on without TLS: loopback only.
pub fn plain_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
