//! The server side of the feed: the snapshot and watch handlers, and the watcher that turns
//! the change log into the stream.

use std::{collections::VecDeque, time::Duration};

use axum::{
    Extension,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::header,
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};

use super::wire::{Event, KINDS};
use crate::{
    api::{
        AppState,
        error::{ApiError, ApiResult},
        query_map,
    },
    domain::Identity,
    store::Store,
};

/// Revisions read from the log per query (bounds memory per watcher).
const WINDOW: i64 = 256;
/// A bookmark is sent at least this often, so idle watchers can tell the stream is alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The handlers of the feed's rows of the route table (`api::routes`).
pub fn handler(op: &str, method: MethodFilter) -> Option<MethodRouter<AppState>> {
    match op {
        "feed_snapshot" => Some(on(method, snapshot)),
        "feed_watch" => Some(on(method, watch)),
        _ => None,
    }
}

async fn snapshot(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Response> {
    who.reader()?;
    let body = st.store.snapshot_json(&KINDS).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn watch(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    who.reader()?;
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
    queue: VecDeque<Event>,
    done: bool,
}

impl Watcher {
    /// The next NDJSON line, waiting for changes; `None` ends the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(v) = self.queue.pop_front() {
                // An event always serialises; the fallback only keeps this infallible.
                let mut s = serde_json::to_string(&v).unwrap_or_default();
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
                                self.queue.push_back(Event::Change {
                                    revision: c.revision,
                                    kind: c.kind,
                                    id: c.id,
                                    op: c.op,
                                    object: c.object,
                                });
                            }
                        }
                        self.after = upto;
                    }
                    Ok(None) => self.relist(latest),
                    Err(e) => {
                        tracing::error!(error = %e, "feed query failed");
                        self.queue.push_back(Event::Error);
                        self.done = true;
                    }
                }
                continue;
            }
            if self.bookmarked != self.after {
                self.bookmarked = self.after;
                self.queue.push_back(Event::Bookmark {
                    revision: self.after,
                });
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
        self.queue.push_back(Event::Relist { revision: latest });
        self.done = true;
    }
}
