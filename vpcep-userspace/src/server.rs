//! The control plane's server: composes the API and the feed on one router, owns the
//! background workers (the feed poller, service activation and the sweep at start) and runs
//! `vpcep control-plane`.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::Router;
use tokio::net::TcpListener;

pub use crate::ops::services::fill_service_limits;
use crate::{
    api::{self, AppState, Config, Credentials, CredentialsFile, auth::CredentialsError},
    domain::{Endpoint, Port},
    feed, ops,
    store::{Store, StoreError},
    tls::{
        ServerTls, TlsArgs, TlsError,
        server::{TlsFiles, plain_allowed},
    },
};

/// `vpcep control-plane` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Database: `sqlite:///path/vpcep.db` (created if missing) or `postgres://…`.
    #[arg(long, default_value = "sqlite://vpcep.db")]
    pub db: String,
    /// Credentials file (TOML): AK/SK pairs, tokens, agent tokens, operator tokens.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed")]
    Io(#[from] std::io::Error),
    #[error("cannot load the TLS files")]
    Tls(#[from] TlsError),
    #[error(
        "plain HTTP on {0} would send tokens and signatures in clear over the network: give \
         --tls-cert and --tls-key (`vpcep pki init` makes a development CA and certificate), \
         or listen on a loopback address"
    )]
    PlainHttp(SocketAddr),
}

/// Runs `vpcep control-plane` until Ctrl-C or SIGTERM, on a multi-threaded runtime of its own (the
/// binary's runtime is single-threaded, which suits the node tools but not a server).
pub async fn run(args: ControlPlaneArgs) -> Result<(), ServeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("control-plane".to_owned())
        .spawn(move || {
            let res = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Io)
                .and_then(|rt| rt.block_on(serve(args)));
            let _ = tx.send(res);
        })?;
    rx.await
        .unwrap_or_else(|_| Err(ServeError::Io(std::io::Error::other("server thread died"))))
}

/// Serves `vpcep control-plane` on the current runtime until Ctrl-C or SIGTERM.
pub async fn serve(args: ControlPlaneArgs) -> Result<(), ServeError> {
    let creds = match &args.credentials {
        Some(p) => CredentialsFile::load(p)?,
        None => {
            tracing::warn!("no --credentials file: only unauthenticated routes will work");
            CredentialsFile::default()
        }
    };
    // TLS files first: a bad one fails the start before anything listens.
    let tls = match args.tls.files() {
        Some(files) => Some(ServerTls::load(files)?),
        None if plain_allowed(&args.listen) => None,
        None => return Err(ServeError::PlainHttp(args.listen)),
    };
    let store = Store::open(&args.db, args.config.feed_retain).await?;
    prepare(&store, &args.config).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    // The bound address, so that `--listen …:0` tells which port it got.
    let addr = listener.local_addr()?;
    let state = AppState::new(store, Credentials::new(creds), args.config);
    let shutdown = state.shutdown.clone();
    let stop = async move {
        stop_signal().await;
        tracing::info!("shutting down");
        shutdown.send_replace(true);
    };
    match tls {
        Some(tls) => {
            tracing::info!(
                %addr,
                db = ?state.store.backend(),
                cert = %tls.files().cert.display(),
                client_ca = ?tls.files().client_ca,
                "control plane listening (HTTPS)"
            );
            tls.spawn_watcher(RELOAD_POLL, state.shutdown.subscribe());
            crate::tls::server::serve(listener, app(state), tls, stop).await;
        }
        None => {
            tracing::warn!(
                %addr,
                db = ?state.store.backend(),
                "control plane listening on PLAIN HTTP: credentials cross the connection in \
                 clear; for loopback development only (give --tls-cert and --tls-key)"
            );
            axum::serve(
                listener,
                app(state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await?;
        }
    }
    Ok(())
}

/// How often the TLS files are checked for a new certificate.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Brings a database up to date before serving: the address index and the default limits.
async fn prepare(store: &Store, config: &Config) -> Result<(), StoreError> {
    fill_address_index(store).await?;
    fill_service_limits(store, config).await?;
    Ok(())
}

/// Indexes the addresses of NICs and endpoints stored before the address index existed
/// (a no-op once done for the database).
async fn fill_address_index(store: &Store) -> Result<(), StoreError> {
    store.fill_addresses::<Port>().await?;
    store.fill_addresses::<Endpoint>().await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// A server running in this process (tests and the benchmark).
pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Server {
    /// Serves plain HTTP on an ephemeral loopback port.
    pub async fn start(
        store: Store,
        creds: Credentials,
        config: Config,
    ) -> Result<Self, ServeError> {
        Self::start_with(store, creds, config, None).await
    }

    /// Serves HTTPS on an ephemeral loopback port; the files are reloaded when they change.
    pub async fn start_tls(
        store: Store,
        creds: Credentials,
        config: Config,
        files: TlsFiles,
    ) -> Result<Self, ServeError> {
        Self::start_with(store, creds, config, Some(ServerTls::load(files)?)).await
    }

    async fn start_with(
        store: Store,
        creds: Credentials,
        config: Config,
        tls: Option<Arc<ServerTls>>,
    ) -> Result<Self, ServeError> {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        prepare(&store, &config).await?;
        let state = AppState::new(store, creds, config);
        let shutdown = state.shutdown.clone();
        let mut stopped = state.shutdown.subscribe();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let app = app(state);
        let task = match tls {
            Some(tls) => {
                // Faster than the server's poll: tests rotate certificates.
                tls.spawn_watcher(Duration::from_millis(100), shutdown.subscribe());
                tokio::spawn(async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    };
                    crate::tls::server::serve(listener, app, tls, stop).await;
                })
            }
            None => tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "server stopped");
                }
            }),
        };
        Ok(Self {
            addr,
            scheme,
            task,
            shutdown,
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.task.abort();
    }
}

/// Builds the router (API and feed); spawns the feed poller and the creating→available sweep.
pub fn app(state: AppState) -> Router {
    state.store.spawn_poller(
        Duration::from_millis(state.config.feed_poll_ms.max(10)),
        state.shutdown.subscribe(),
    );
    spawn_sweep(state.store.clone());
    api::router(state, feed::server::handler)
}

/// On start: finish services left in `creating` (e.g. by a restart between the two steps).
fn spawn_sweep(store: Store) {
    tokio::spawn(async move {
        match ops::services::creating(&store).await {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = ops::services::activate_now(&store, &id).await {
                        tracing::error!(service = %id, error = %e, "sweep failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
    });
}
