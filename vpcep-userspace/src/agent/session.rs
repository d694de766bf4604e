//! The feed side of the agent: follows the control plane's feed (list, then watch from the
//! revision reached), hands each whole revision to the owner thread and reports back what
//! the owner applied.
use std::{
    sync::{Arc, atomic::Ordering, mpsc},
    time::Duration,
};

use super::{
    AgentConfig, Update,
    desired::FeedState,
    feed_client::{Event, FeedClient, FeedError, Watch},
    metrics::Shared,
    registration, snapshot,
};

/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The feed sends a bookmark at least every 15 s; silence beyond this means a dead stream.
const WATCH_IDLE: Duration = Duration::from_secs(45);

enum SessionEnd {
    Feed(FeedError),
    OwnerGone,
}

impl From<FeedError> for SessionEnd {
    fn from(e: FeedError) -> Self {
        Self::Feed(e)
    }
}

fn stream_ended() -> SessionEnd {
    SessionEnd::Feed(FeedError::Status {
        status: 0,
        body: "watch stream ended".to_owned(),
    })
}

/// What the feed loop carries from one connection to the next.
struct Follower<'a> {
    cfg: &'a AgentConfig,
    tx: mpsc::Sender<Update>,
    /// The resolver's copy of each state.
    dns: tokio::sync::watch::Sender<Option<Arc<FeedState>>>,
    shared: &'a Shared,
    registered: bool,
    /// The state and revision reached, when a session ended without being told to relist:
    /// the next one watches on from there.
    have: Option<(FeedState, i64)>,
    backoff: Duration,
}

/// Follows the feed for ever: list, then watch from the last revision; reconnects with
/// bounded backoff and moves on to the next control-plane URL after a failure.
pub(super) async fn feed_loop(
    cfg: &AgentConfig,
    tx: mpsc::Sender<Update>,
    dns: tokio::sync::watch::Sender<Option<Arc<FeedState>>>,
    shared: &Shared,
) {
    let mut f = Follower {
        cfg,
        tx,
        dns,
        shared,
        registered: false,
        have: None,
        backoff: BACKOFF_MIN,
    };
    let mut url = 0usize;
    loop {
        let base = &cfg.control_plane[url % cfg.control_plane.len()];
        let client = FeedClient::with_link(cfg.link.clone(), base);
        match f.session(base, &client).await {
            Ok(()) => {}
            Err(SessionEnd::OwnerGone) => return,
            Err(SessionEnd::Feed(e)) => {
                tracing::warn!(url = %base, error = %e, retry_in = ?f.backoff, "control plane unreachable; the data plane keeps the last state");
                tokio::time::sleep(f.backoff).await;
                f.backoff = (f.backoff * 2).min(BACKOFF_MAX);
                url += 1;
            }
        }
    }
}

impl Follower<'_> {
    /// One connection to one control plane. `Ok` means "relist now".
    async fn session(&mut self, base: &str, client: &FeedClient) -> Result<(), SessionEnd> {
        if !self.registered {
            registration::register_node(self.cfg, client).await?;
            self.registered = true;
        }
        let (mut state, mut rev) = match self.have.take() {
            Some(h) => h,
            None => self.list(base).await?,
        };
        self.shared.latest.fetch_max(rev, Ordering::Relaxed);
        let r = match client.watch(rev).await {
            Ok(mut w) => {
                self.backoff = BACKOFF_MIN;
                self.follow(&mut w, &mut state, &mut rev).await
            }
            Err(e) => Err(e.into()),
        };
        if r.is_err() {
            self.have = Some((state, rev));
        }
        r
    }

    /// Takes a snapshot, registers the configured NICs it lacks and hands it over.
    async fn list(&self, base: &str) -> Result<(FeedState, i64), SessionEnd> {
        let (revision, st) = snapshot::fetch(&self.cfg.link, base).await?;
        registration::register_nics(self.cfg, base, &st).await;
        tracing::info!(revision, objects = st.len(), "snapshot");
        self.send(&st, revision)?;
        Ok((st, revision))
    }

    /// Applies the watch's events to `state` until the stream ends (`Ok` when told to
    /// relist), handing each completed revision over.
    async fn follow(
        &self,
        w: &mut Watch,
        state: &mut FeedState,
        rev: &mut i64,
    ) -> Result<(), SessionEnd> {
        let mut pending = false;
        loop {
            let ev = match tokio::time::timeout(WATCH_IDLE, w.next()).await {
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) | Err(_) => return Err(stream_ended()),
                Ok(Err(e)) => return Err(e.into()),
            };
            match ev {
                Event::Change {
                    revision,
                    kind,
                    id,
                    op,
                    object,
                } => {
                    // Changes of one revision were one transaction: hand them over together.
                    if pending && revision != *rev {
                        self.send(state, *rev)?;
                    }
                    state.apply(&kind, &id, &op, object);
                    *rev = revision;
                    pending = true;
                    self.shared.latest.fetch_max(*rev, Ordering::Relaxed);
                }
                Event::Bookmark { revision } => {
                    self.shared.latest.fetch_max(revision, Ordering::Relaxed);
                    if pending || revision > *rev {
                        *rev = (*rev).max(revision);
                        self.send(state, *rev)?;
                        pending = false;
                    }
                }
                Event::Relist { revision } => {
                    tracing::info!(revision, "told to relist");
                    return Ok(());
                }
                Event::Error => return Err(stream_ended()),
            }
        }
    }

    fn send(&self, state: &FeedState, revision: i64) -> Result<(), SessionEnd> {
        let state = Arc::new(state.clone());
        self.dns.send_replace(Some(state.clone()));
        self.tx
            .send(Update { state, revision })
            .map_err(|_| SessionEnd::OwnerGone)
    }
}

/// Reports each newly applied revision, to whichever control plane answers.
pub(super) async fn report_applied(cfg: AgentConfig, mut rx: tokio::sync::watch::Receiver<i64>) {
    let clients: Vec<FeedClient> = cfg
        .control_plane
        .iter()
        .map(|u| FeedClient::with_link(cfg.link.clone(), u))
        .collect();
    let mut i = 0usize;
    while rx.changed().await.is_ok() {
        let rev = *rx.borrow_and_update();
        for _ in 0..clients.len() {
            match clients[i % clients.len()]
                .report_applied(&cfg.node_name, rev)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reporting the applied revision");
                    i += 1;
                }
            }
        }
    }
}
