//! The control plane's HTTP API: the VPCEP v1/v2 API as the official SDK drives it, the
//! inventory API for operators and agents, the agents' change feed and `/openapi.json`.
use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post, put},
};
use tokio::net::TcpListener;

use crate::store::{self, Object, Store, StoreError};

pub mod auth;
mod endpoints;
pub mod error;
mod inventory;
mod misc;
pub mod model;
pub mod openapi;
mod permissions;
mod services;
mod tags;

pub use auth::{Credentials, CredentialsFile};

use self::error::{ApiError, ApiResult};

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
    pub config: Config,
}

/// Settings of the API itself.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Region used in full service names (`<region>.<name>.<id>`).
    #[arg(long, default_value = "local-1")]
    pub region: String,
    /// Default endpoint-service quota per project.
    #[arg(long, default_value_t = 20)]
    pub quota_endpoint_services: i64,
    /// Default endpoint quota per project.
    #[arg(long, default_value_t = 50)]
    pub quota_endpoints: i64,
    /// Largest accepted request body in bytes (larger → 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Revisions of change log kept for watchers; an older watcher must relist.
    #[arg(long, default_value_t = 100_000)]
    pub feed_retain: i64,
    /// How often (ms) to look for changes written by other replicas.
    #[arg(long, default_value_t = 200)]
    pub feed_poll_ms: u64,
    /// Live connections an endpoint may hold when its service sets no `max_connections`
    /// (0 = no limit).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(0..=i64::from(model::MAX_CONNECTIONS)))]
    pub default_max_connections: u32,
    /// New connections per second an endpoint may open when its service sets no
    /// `max_new_connections_per_second` (0 = no limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(model::MAX_NEW_CONNECTIONS_PER_SECOND)))]
    pub default_max_new_connections_per_second: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: "local-1".to_owned(),
            quota_endpoint_services: 20,
            quota_endpoints: 50,
            max_body: 1 << 20,
            feed_retain: 100_000,
            feed_poll_ms: 200,
            default_max_connections: 3000,
            default_max_new_connections_per_second: 0,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub credentials: Arc<Credentials>,
    pub config: Arc<Config>,
    /// Set to true on shutdown: ends the feed streams (which would otherwise hold a graceful
    /// shutdown open forever) and the poller.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] auth::CredentialsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed")]
    Io(#[from] std::io::Error),
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
    let store = Store::open(&args.db, args.config.feed_retain).await?;
    fill_address_index(&store).await?;
    fill_service_limits(&store, &args.config).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %args.listen, db = ?store.backend(), "control plane listening");
    let state = AppState::new(store, Credentials::new(creds), args.config);
    let shutdown = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            stop_signal().await;
            tracing::info!("shutting down");
            shutdown.send_replace(true);
        })
        .await?;
    Ok(())
}

/// Indexes the addresses of NICs and endpoints stored before the address index existed
/// (a no-op once done for the database).
async fn fill_address_index(store: &Store) -> Result<(), StoreError> {
    store.fill_addresses::<model::Port>().await?;
    store.fill_addresses::<model::Endpoint>().await?;
    Ok(())
}

/// Gives the services stored before limits existed the region's default limits (once per
/// database; a no-op afterwards).
pub async fn fill_service_limits(store: &Store, config: &Config) -> Result<usize, StoreError> {
    let mut tx = store.write().await?;
    if !tx.claim_limits_fill(model::Service::KIND).await? {
        // Dropped: the revision bump rolls back.
        return Ok(0);
    }
    let mut n = 0;
    for mut s in tx.list::<model::Service>(store::Filter::All).await? {
        if s.max_connections.is_none() || s.max_new_connections_per_second.is_none() {
            s.max_connections
                .get_or_insert(config.default_max_connections);
            s.max_new_connections_per_second
                .get_or_insert(config.default_max_new_connections_per_second);
            tx.put(&s).await?;
            n += 1;
        }
    }
    tx.commit().await?;
    if n > 0 {
        tracing::info!(services = n, "default connection limits filled in");
    }
    Ok(n)
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
    task: tokio::task::JoinHandle<()>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Server {
    /// Serves on an ephemeral loopback port.
    pub async fn start(
        store: Store,
        creds: Credentials,
        config: Config,
    ) -> Result<Self, ServeError> {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        fill_address_index(&store).await?;
        fill_service_limits(&store, &config).await?;
        let state = AppState::new(store, creds, config);
        let shutdown = state.shutdown.clone();
        let app = app(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "server stopped");
            }
        });
        Ok(Self {
            addr,
            task,
            shutdown,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.task.abort();
    }
}

impl AppState {
    pub fn new(store: Store, creds: Credentials, config: Config) -> Self {
        Self {
            store,
            credentials: Arc::new(creds),
            config: Arc::new(config),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

/// Builds the router; spawns the feed poller and the creating→available sweep.
pub fn app(state: AppState) -> Router {
    state.store.spawn_poller(
        Duration::from_millis(state.config.feed_poll_ms.max(10)),
        state.shutdown.subscribe(),
    );
    services::spawn_sweep(state.clone());
    let max_body = state.config.max_body;
    let svc = "/v1/{project_id}/vpc-endpoint-services";
    let ep = "/v1/{project_id}/vpc-endpoints";
    Router::new()
        .route("/", get(misc::versions))
        .route("/openapi.json", get(openapi::serve))
        .route("/{version}", get(misc::version))
        .route("/{version}/", get(misc::version))
        .route("/v1/{project_id}/quotas", get(misc::quotas))
        .route(svc, get(services::list).post(services::create))
        .route(&format!("{svc}/describe"), get(services::describe))
        .route(&format!("{svc}/public"), get(services::public))
        .route(
            &format!("{svc}/{{service_id}}"),
            get(services::show)
                .put(services::update)
                .delete(services::delete),
        )
        .route(&format!("{svc}/{{service_id}}/name"), put(services::rename))
        .route(
            &format!("{svc}/{{service_id}}/connections"),
            get(permissions::list_connections),
        )
        .route(
            &format!("{svc}/{{service_id}}/connections/action"),
            post(permissions::connection_action),
        )
        .route(
            &format!("{svc}/{{service_id}}/connections/description"),
            put(permissions::connection_descriptions),
        )
        .route(
            &format!("{svc}/{{service_id}}/permissions"),
            get(permissions::list),
        )
        .route(
            &format!("{svc}/{{service_id}}/permissions/action"),
            post(permissions::action),
        )
        .route(
            &format!("{svc}/{{service_id}}/permissions/batch-create"),
            post(permissions::batch_create),
        )
        .route(
            &format!("{svc}/{{service_id}}/permissions/batch-delete"),
            post(permissions::batch_delete),
        )
        .route(
            &format!("{svc}/{{service_id}}/permissions/{{permission_id}}"),
            put(permissions::describe),
        )
        .route(ep, get(endpoints::list).post(endpoints::create))
        .route(
            &format!("{ep}/{{endpoint_id}}"),
            get(endpoints::show)
                .put(endpoints::update_whitelist)
                .delete(endpoints::delete),
        )
        .route(
            &format!("{ep}/{{endpoint_id}}/policy"),
            put(endpoints::update_policy).delete(endpoints::delete_policy),
        )
        .route(
            &format!("{ep}/{{endpoint_id}}/routetables"),
            put(endpoints::update_routetables),
        )
        .route(
            "/v1/{project_id}/{resource_type}/resource_instances/action",
            post(tags::filter),
        )
        .route(
            "/v1/{project_id}/{resource_type}/tags",
            get(tags::project_tags),
        )
        .route(
            "/v1/{project_id}/{resource_type}/{resource_id}/tags/action",
            post(tags::action),
        )
        .route(
            "/v2/{project_id}/vpc-endpoint-services/{service_id}/add-server-resources",
            post(misc::add_server_resources),
        )
        .route(
            "/v2/{project_id}/vpc-endpoint-services/{service_id}/upgrade",
            post(misc::upgrade_service),
        )
        .route(
            "/v2/{project_id}/vpc-endpoints/{endpoint_id}/upgrade",
            post(misc::upgrade_endpoint),
        )
        .merge(inventory::routes())
        .merge(crate::feed::routes())
        .fallback(|| async { ApiError::not_found("resource") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), auth::layer))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Query parameters as a map (the last value of a repeated key wins).
pub(crate) fn query_map(raw: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// List paging and sorting, as the reference lists take it.
pub(crate) struct Paging {
    pub limit: usize,
    pub offset: usize,
    /// Sort by update time (`update_at`) instead of creation (`create_at`).
    pub by_update: bool,
    pub desc: bool,
}

impl Paging {
    pub fn from_query(q: &HashMap<String, String>, max_limit: usize) -> ApiResult<Self> {
        let num = |k: &str, default: usize, max: usize| -> ApiResult<usize> {
            match q.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| ApiError::invalid(k, format!("must be an integer 0-{max}"))),
            }
        };
        let by_update = match q.get("sort_key").map(String::as_str) {
            None | Some("create_at") | Some("created_at") => false,
            Some("update_at") | Some("updated_at") => true,
            Some(_) => {
                return Err(ApiError::invalid(
                    "sort_key",
                    "must be create_at or update_at",
                ));
            }
        };
        let desc = match q.get("sort_dir").map(String::as_str) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => return Err(ApiError::invalid("sort_dir", "must be asc or desc")),
        };
        Ok(Self {
            limit: num("limit", 10, max_limit)?,
            offset: num("offset", 0, usize::MAX)?,
            by_update,
            desc,
        })
    }

    /// Sorts by (created or updated revision), then pages; returns the page and the total.
    pub fn apply<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> (i64, i64)) -> (Vec<T>, usize) {
        items.sort_by_key(|i| {
            let (c, u) = key(i);
            if self.by_update { u } else { c }
        });
        if self.desc {
            items.reverse();
        }
        let total = items.len();
        let page = items
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .collect();
        (page, total)
    }
}

/// Case-insensitive "fuzzy" name match used by the list filters.
pub(crate) fn fuzzy(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}
