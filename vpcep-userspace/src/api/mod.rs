//! The control plane's HTTP API: the VPCEP v1/v2 API as the official SDK drives it, the
//! inventory API for operators and agents and `/openapi.json`. Only routing, extraction,
//! authentication, error mapping and thin handlers live here: the rules are in
//! [`crate::ops`] and [`crate::domain`]. The server ([`crate::server`]) composes this with
//! the feed.
use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Router,
    extract::{DefaultBodyLimit, State},
    http::{Method, StatusCode},
    middleware,
    routing::{MethodFilter, MethodRouter, get},
};

use crate::{
    domain::{Caller, Endpoint, Service},
    ops,
    store::{Store, WriteTx},
};

pub mod audit;
pub mod auth;
pub mod context;
mod endpoints;
pub mod error;
pub mod hashed;
mod inventory;
pub mod limits;
mod misc;
pub mod openapi;
mod permissions;
pub mod routes;
mod services;
mod strict;
mod tags;
mod views;

pub use self::auth::{Credentials, CredentialsFile};
use self::error::{ApiError, ApiResult, Path};
pub use crate::ops::{Config, RequestLimits};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub credentials: Arc<Credentials>,
    pub config: Arc<Config>,
    /// Rate limits, the authentication back-off and the API's metrics.
    pub limits: Arc<limits::Limits>,
    /// Set to true on shutdown: ends the feed streams (which would otherwise hold a graceful
    /// shutdown open forever) and the poller.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn new(store: Store, creds: Credentials, config: Config) -> Self {
        Self {
            store,
            credentials: Arc::new(creds),
            limits: Arc::new(limits::Limits::new(&config.limits)),
            config: Arc::new(config),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Runs an operation in a write transaction and commits it (dropped, it rolls back),
    /// with the request's audit record in the same transaction.
    pub async fn in_tx<T>(
        &self,
        op: impl AsyncFnOnce(&mut WriteTx) -> crate::ops::Result<T>,
    ) -> ApiResult<T> {
        let mut tx = self.store.write().await?;
        let out = op(&mut tx).await?;
        let audited = audit::record(self, &mut tx).await?;
        tx.commit().await?;
        if audited {
            audit::committed();
        }
        Ok(out)
    }
}

/// A tenant's resource that a plain delete removes (the rule is in `ops`).
pub(crate) trait Deletable {
    fn delete<'a>(
        tx: &'a mut WriteTx,
        caller: &'a Caller,
        id: &'a str,
    ) -> impl Future<Output = ops::Result<()>> + Send + 'a;
}

impl Deletable for Endpoint {
    fn delete<'a>(
        tx: &'a mut WriteTx,
        caller: &'a Caller,
        id: &'a str,
    ) -> impl Future<Output = ops::Result<()>> + Send + 'a {
        ops::endpoints::delete(tx, caller, id)
    }
}

impl Deletable for Service {
    fn delete<'a>(
        tx: &'a mut WriteTx,
        caller: &'a Caller,
        id: &'a str,
    ) -> impl Future<Output = ops::Result<()>> + Send + 'a {
        ops::services::delete(tx, caller, id)
    }
}

/// Deletes one of the caller's endpoints or services.
pub(crate) async fn delete<T: Deletable>(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    st.in_tx(async |tx| T::delete(tx, &caller, &id).await)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The method filter of a route table row.
fn method_filter(method: &str) -> Option<MethodFilter> {
    MethodFilter::try_from(Method::from_bytes(method.to_uppercase().as_bytes()).ok()?).ok()
}

/// Builds the router from the route table: the API's handlers, and `others` for the rows it
/// does not serve (the feed's); then authentication, the request limits, the body limit and
/// the error fallbacks.
pub fn router(
    state: AppState,
    others: impl Fn(&str, MethodFilter) -> Option<MethodRouter<AppState>>,
) -> Router {
    let mut r = Router::new();
    for (method, path, op, ..) in routes::OPERATIONS {
        let h =
            method_filter(method).and_then(|m| routes::handler(op, m).or_else(|| others(op, m)));
        match h {
            Some(h) => r = r.route(path, h),
            None => tracing::error!(op, "operation without a handler"),
        }
    }
    let max_body = state.config.max_body;
    r.route("/{version}/", get(misc::version))
        .fallback(|| async { ApiError::not_found("resource") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(middleware::from_fn(audit::identify))
        // Inside authentication: the bucket is the authenticated caller's.
        .layer(middleware::from_fn_with_state(state.clone(), limits::layer))
        .layer(middleware::from_fn_with_state(state.clone(), auth::layer))
        // Outside authentication, so that refused writes are audited too.
        .layer(middleware::from_fn_with_state(state.clone(), audit::layer))
        .layer(middleware::from_fn_with_state(state.clone(), limits::count))
        .layer(middleware::from_fn(context::request_id))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Query parameters as a map (the last value of a repeated key wins).
pub(crate) fn query_map(raw: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The creation and update revisions a list sorts by (timestamps tie).
pub(crate) trait Revisions {
    fn revisions(&self) -> (i64, i64);
}

impl Revisions for Service {
    fn revisions(&self) -> (i64, i64) {
        (self.created_rev, self.updated_rev)
    }
}

impl Revisions for Endpoint {
    fn revisions(&self) -> (i64, i64) {
        (self.created_rev, self.updated_rev)
    }
}

/// Whitelist entries are never updated: both orders are by creation.
impl Revisions for crate::domain::Permission {
    fn revisions(&self) -> (i64, i64) {
        (self.created_rev, self.created_rev)
    }
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
    pub fn apply<T: Revisions>(&self, mut items: Vec<T>) -> (Vec<T>, usize) {
        items.sort_by_key(|i| {
            let (c, u) = i.revisions();
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
