//! The agents' change feed, Kubernetes-style list + watch:
//! `GET /feed/snapshot` lists every agent-relevant object at revision R, and
//! `GET /feed/watch?after=R` streams the changes after R as newline-delimited JSON.
//! A watcher whose R is older than the retained log is told to relist.

use std::{collections::VecDeque, time::Duration};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        auth::Identity,
        error::{ApiError, ApiResult},
        query_map,
    },
    store::Store,
};

/// The kinds an agent needs to compute its node's maps.
pub const KINDS: [&str; 7] = [
    "vpc",
    "subnet",
    "port",
    "node",
    "endpoint_service",
    "endpoint",
    "permission",
];

/// Revisions read from the log per query (bounds memory per watcher).
const WINDOW: i64 = 256;
/// A bookmark is sent at least this often, so idle watchers can tell the stream is alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/feed/snapshot", get(snapshot))
        .route("/feed/watch", get(watch))
}

fn agent_or_operator(id: &Identity) -> ApiResult<()> {
    match id {
        Identity::Operator | Identity::Agent { .. } => Ok(()),
        Identity::Anonymous => Err(ApiError::Unauthorized(
            "credentials are required".to_owned(),
        )),
        Identity::Tenant { .. } => Err(ApiError::Forbidden(
            "operator or agent scope required".to_owned(),
        )),
    }
}

async fn snapshot(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Response> {
    agent_or_operator(&who)?;
    let body = st.store.snapshot_json(&KINDS).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn watch(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    agent_or_operator(&who)?;
    let q = query_map(q);
    let after: i64 = q
        .get("after")
        .ok_or_else(|| ApiError::invalid("after", "is required"))?
        .parse()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::invalid("after", "must be a revision (integer ≥ 0)"))?;
    let w = Watcher {
        store: st.store.clone(),
        rx: st.store.subscribe(),
        shutdown: st.shutdown.subscribe(),
        after,
        bookmarked: -1,
        queue: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok::<Bytes, std::io::Error>(line), w))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Watcher {
    store: Store,
    rx: tokio::sync::watch::Receiver<i64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    after: i64,
    bookmarked: i64,
    queue: VecDeque<Value>,
    done: bool,
}

impl Watcher {
    /// The next NDJSON line, waiting for changes; `None` ends the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(v) = self.queue.pop_front() {
                let mut s = v.to_string();
                s.push('\n');
                return Some(Bytes::from(s));
            }
            if self.done {
                return None;
            }
            let latest = *self.rx.borrow_and_update();
            if self.after > latest {
                // Ahead of the store (e.g. it was replaced): start over.
                self.relist(latest);
                continue;
            }
            if self.after < latest {
                let upto = latest.min(self.after + WINDOW);
                match self.store.changes_between(self.after, upto).await {
                    Ok(Some(changes)) => {
                        for c in changes {
                            if KINDS.contains(&c.kind.as_str()) {
                                self.queue.push_back(json!({
                                    "type": "change",
                                    "revision": c.revision,
                                    "kind": c.kind,
                                    "id": c.id,
                                    "op": c.op,
                                    "object": c.object,
                                }));
                            }
                        }
                        self.after = upto;
                    }
                    Ok(None) => self.relist(latest),
                    Err(e) => {
                        tracing::error!(error = %e, "feed query failed");
                        self.queue.push_back(json!({"type": "error"}));
                        self.done = true;
                    }
                }
                continue;
            }
            if self.bookmarked != self.after {
                self.bookmarked = self.after;
                self.queue
                    .push_back(json!({"type": "bookmark", "revision": self.after}));
                continue;
            }
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        return None;
                    }
                }
                _ = self.shutdown.wait_for(|s| *s) => return None,
                _ = tokio::time::sleep(HEARTBEAT) => self.bookmarked = -1,
            }
        }
    }

    fn relist(&mut self, latest: i64) {
        self.queue
            .push_back(json!({"type": "relist", "revision": latest}));
        self.done = true;
    }
}
