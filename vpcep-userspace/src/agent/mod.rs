//! The node agent: registers the node, follows the control plane's change feed (list +
//! watch), computes this node's map contents and has one owner thread write the
//! difference; attaches the TC program to the local VM NICs as they appear, collects idle
//! conntrack entries and serves Prometheus metrics. See `docs/agent.md`.
pub mod config;
pub mod desired;
pub mod privileges;
mod snapshot;
pub mod sync;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt::Write as _,
    future::Future,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use vpcep_common::endpoint::{EP_TOMBSTONE, Endpoint, EndpointKey, TunnelConfig};
use vpcep_common::maps::{
    MAX_ENDPOINTS, MAX_FLOWS, MAX_LOCAL_NICS, MAX_NODES, MAX_PORT_MAPPINGS, MAX_SERVICES,
    MAX_WHITELIST_RULES,
};

pub use self::config::{AgentConfig, AgentConfigError};
use self::{
    desired::{FeedState, Ids, Local},
    sync::{FlushQueue, Syncer},
};
use crate::{
    dataplane::{Dataplane, DataplaneError},
    feed::client::{Event, FeedClient, FeedError},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data plane")]
    Dataplane(#[from] DataplaneError),
    #[error("entering network namespace {name}")]
    Netns {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the data-plane thread")]
    Thread(#[source] std::io::Error),
    #[error("the data-plane thread stopped")]
    OwnerGone,
}

/// What the feed side hands the owner: the whole state at a revision.
struct Update {
    state: Arc<FeedState>,
    revision: i64,
}

/// Figures shared between the feed side, the owner thread and the metrics server.
#[derive(Default)]
struct Shared {
    applied: AtomicI64,
    latest: AtomicI64,
    metrics: Mutex<String>,
}

/// How often the owner looks for NICs that appeared or went away.
const IFACE_POLL: Duration = Duration::from_millis(500);
/// How often the owner refreshes the metrics text.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The feed sends a bookmark at least every 15 s; silence beyond this means a dead stream.
const WATCH_IDLE: Duration = Duration::from_secs(45);

/// Runs the agent until `shutdown` completes. Dropping the future stops it as well.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel::<Update>();
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(0i64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let owner_cfg = cfg.clone();
    let owner_shared = shared.clone();
    let owner = std::thread::Builder::new()
        .name("vpcep-dataplane".to_owned())
        .spawn(move || owner(owner_cfg, rx, owner_shared, applied_tx, ready_tx))
        .map_err(AgentError::Thread)?;
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(AgentError::OwnerGone),
    }
    let listener = tokio::net::TcpListener::bind(cfg.metrics_address)
        .await
        .map_err(|source| AgentError::Metrics {
            addr: cfg.metrics_address,
            source,
        })?;
    let metrics = tokio::spawn(serve_metrics(listener, shared.clone()));
    let reporter = tokio::spawn(report_applied(cfg.clone(), applied_rx));
    tokio::select! {
        _ = shutdown => {}
        _ = feed_loop(&cfg, tx, &shared) => {}
    }
    metrics.abort();
    reporter.abort();
    // The sender is gone with the feed loop: the owner finishes its tick and exits.
    let _ = tokio::task::spawn_blocking(move || owner.join()).await;
    tracing::info!("agent stopped");
    Ok(())
}

/// Follows the feed for ever: list, then watch from the last revision; reconnects with
/// bounded backoff and moves on to the next control-plane URL after a failure.
async fn feed_loop(cfg: &AgentConfig, tx: mpsc::Sender<Update>, shared: &Shared) {
    let mut url = 0usize;
    let mut backoff = BACKOFF_MIN;
    let mut registered = false;
    let mut have: Option<(FeedState, i64)> = None;
    loop {
        let base = &cfg.control_plane[url % cfg.control_plane.len()];
        let client = FeedClient::new(base, &cfg.token);
        match session(
            cfg,
            base,
            &client,
            &tx,
            shared,
            &mut registered,
            &mut have,
            &mut backoff,
        )
        .await
        {
            Ok(()) => {}
            Err(SessionEnd::OwnerGone) => return,
            Err(SessionEnd::Feed(e)) => {
                tracing::warn!(url = %base, error = %e, retry_in = ?backoff, "control plane unreachable; the data plane keeps the last state");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                url += 1;
            }
        }
    }
}

enum SessionEnd {
    Feed(FeedError),
    OwnerGone,
}

impl From<FeedError> for SessionEnd {
    fn from(e: FeedError) -> Self {
        Self::Feed(e)
    }
}

fn send(tx: &mpsc::Sender<Update>, state: &FeedState, revision: i64) -> Result<(), SessionEnd> {
    tx.send(Update {
        state: Arc::new(state.clone()),
        revision,
    })
    .map_err(|_| SessionEnd::OwnerGone)
}

fn stream_ended() -> SessionEnd {
    SessionEnd::Feed(FeedError::Status {
        status: 0,
        body: "watch stream ended".to_owned(),
    })
}

/// One connection to one control plane. `Ok` means "relist now".
#[allow(clippy::too_many_arguments)] // the feed loop's state, threaded through one session
async fn session(
    cfg: &AgentConfig,
    base: &str,
    client: &FeedClient,
    tx: &mpsc::Sender<Update>,
    shared: &Shared,
    registered: &mut bool,
    have: &mut Option<(FeedState, i64)>,
    backoff: &mut Duration,
) -> Result<(), SessionEnd> {
    if !*registered {
        let node = client
            .register_node(&cfg.node_name, &cfg.underlay_ip.to_string())
            .await?;
        tracing::info!(node = %cfg.node_name, snat_ip = %node["snat_ip"], "node registered");
        *registered = true;
    }
    let (mut state, mut rev) = match have.take() {
        Some(h) => h,
        None => {
            let (revision, st) = snapshot::fetch(base, &cfg.token).await?;
            register_nics(cfg, base, &st).await;
            tracing::info!(revision, objects = st.len(), "snapshot");
            send(tx, &st, revision)?;
            (st, revision)
        }
    };
    shared.latest.fetch_max(rev, Ordering::Relaxed);
    let watch = client.watch(rev).await;
    let mut w = match watch {
        Ok(w) => w,
        Err(e) => {
            *have = Some((state, rev));
            return Err(e.into());
        }
    };
    *backoff = BACKOFF_MIN;
    let mut pending = false;
    loop {
        let ev = match tokio::time::timeout(WATCH_IDLE, w.next()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) | Err(_) => {
                *have = Some((state, rev));
                return Err(stream_ended());
            }
            Ok(Err(e)) => {
                *have = Some((state, rev));
                return Err(e.into());
            }
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
                if pending && revision != rev {
                    send(tx, &state, rev)?;
                }
                state.apply(&kind, &id, &op, object);
                rev = revision;
                pending = true;
                shared.latest.fetch_max(rev, Ordering::Relaxed);
            }
            Event::Bookmark { revision } => {
                shared.latest.fetch_max(revision, Ordering::Relaxed);
                if pending || revision > rev {
                    rev = rev.max(revision);
                    send(tx, &state, rev)?;
                    pending = false;
                }
            }
            Event::Relist { revision } => {
                tracing::info!(revision, "told to relist");
                return Ok(());
            }
            Event::Error => {
                *have = Some((state, rev));
                return Err(stream_ended());
            }
        }
    }
}

/// Registers configured NICs the inventory lacks (when the config gives their subnet) and
/// warns about the ones it does not place on this node. The new ports arrive through the
/// watch like any other change.
async fn register_nics(cfg: &AgentConfig, base: &str, st: &FeedState) {
    let http = reqwest::Client::new();
    for n in &cfg.nics {
        match st.port(&n.port_id) {
            None if n.subnet_id.is_some() => {
                let mut body = serde_json::json!({
                    "id": n.port_id,
                    "subnet_id": n.subnet_id,
                    "node": cfg.node_name,
                });
                if let Some(ip) = n.ip {
                    body["ip"] = serde_json::json!(ip.to_string());
                }
                if let Some(mac) = &n.mac {
                    body["mac"] = serde_json::json!(mac);
                }
                let resp = http
                    .post(format!("{base}/inventory/ports"))
                    .header("x-auth-token", &cfg.token)
                    .json(&body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(iface = %n.iface, port_id = %n.port_id, "NIC registered")
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        tracing::warn!(iface = %n.iface, port_id = %n.port_id, status, body = %text, "registering the NIC")
                    }
                    Err(e) => {
                        tracing::warn!(iface = %n.iface, port_id = %n.port_id, error = %e, "registering the NIC")
                    }
                }
            }
            None => {
                tracing::warn!(iface = %n.iface, port_id = %n.port_id, "NIC not in the inventory")
            }
            Some(p) if p.node != cfg.node_name => {
                tracing::warn!(iface = %n.iface, port_id = %n.port_id, node = %p.node, "NIC registered on another node")
            }
            Some(_) => {}
        }
    }
}

/// Reports each newly applied revision, to whichever control plane answers.
async fn report_applied(cfg: AgentConfig, mut rx: tokio::sync::watch::Receiver<i64>) {
    let clients: Vec<FeedClient> = cfg
        .control_plane
        .iter()
        .map(|u| FeedClient::new(u, &cfg.token))
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

async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move {
                let text = shared.metrics.lock().map(|m| m.clone()).unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

fn enter_netns(name: &str) -> Result<(), AgentError> {
    let path = format!("/run/netns/{name}");
    let err = |source| AgentError::Netns {
        name: name.to_owned(),
        source,
    };
    let f = std::fs::File::open(&path).map_err(err)?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn if_index(name: &str) -> u32 {
    match std::ffi::CString::new(name) {
        // SAFETY: valid NUL-terminated string.
        Ok(c) => unsafe { libc::if_nametoindex(c.as_ptr()) },
        Err(_) => 0,
    }
}

/// A NIC the program is attached to (a TCX link pinned under `links/`, or a netlink
/// filter at [`crate::dataplane::NL_PRIORITY`]).
struct Attached {
    ifindex: u32,
}

/// Subdirectory of the pin directory holding one pinned TC link per NIC.
const LINKS_DIR: &str = "links";
/// Where the TC program is pinned.
const PROG_PIN: &str = "prog_tc_ingress";

/// Creates the overlay's VXLAN device in external (collect-metadata) mode, in this
/// thread's network namespace (the child inherits it), and brings it up.
fn create_vxlan(o: &config::Overlay) -> Result<(), String> {
    let port = o.port.to_string();
    for args in [
        vec![
            "link", "add", &o.device, "type", "vxlan", "dstport", &port, "external",
        ],
        vec!["link", "set", &o.device, "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn link_pin_name(iface: &str, ifindex: u32) -> String {
    format!("tc-{iface}-{ifindex}")
}

/// The ids of the endpoints (not the tombstones) of a map's contents.
fn ids_of(eps: &BTreeMap<EndpointKey, Endpoint>) -> HashSet<u32> {
    eps.values()
        .filter(|e| e.flags & EP_TOMBSTONE == 0)
        .map(|e| e.endpoint_id)
        .collect()
}

/// How long a failed flush of removed endpoints' flows waits before it is tried again.
const FLUSH_RETRY: Duration = Duration::from_secs(1);

/// The owner thread's state.
struct Owner {
    cfg: AgentConfig,
    dp: Dataplane,
    syncer: Syncer,
    ids: Ids,
    attached: BTreeMap<String, Attached>,
    shared: Arc<Shared>,
    ct_entries: usize,
    ct_collected: u64,
    /// ifindex of the overlay device the tunnel program is attached to (0 = none).
    overlay_ifindex: u32,
    /// Addresses of endpoints that left the node, failing closed until the instant given.
    tombstones: BTreeMap<EndpointKey, Instant>,
    /// Removed endpoints whose flows are still to be flushed.
    flush: FlushQueue,
    /// Endpoint ids given to new endpoints whose flow accounting is still to be zeroed.
    reset_flows: BTreeSet<u32>,
}

/// The data-plane owner: runs on its own thread (inside `netns` when configured) because
/// attaching and resolving interfaces depend on the thread's network namespace.
fn owner(
    cfg: AgentConfig,
    rx: mpsc::Receiver<Update>,
    shared: Arc<Shared>,
    applied_tx: tokio::sync::watch::Sender<i64>,
    ready: tokio::sync::oneshot::Sender<Result<(), AgentError>>,
) {
    let start = || -> Result<Dataplane, AgentError> {
        if let Some(ns) = &cfg.netns {
            enter_netns(ns)?;
        }
        let mut dp = Dataplane::load_pinned(&cfg.pin_dir)?;
        dp.set_tc_attach(cfg.tc_attach);
        tracing::info!(tc_attach = ?dp.tc_attach(), "TC attach mode");
        let links = cfg.pin_dir.join(LINKS_DIR);
        if cfg.reload {
            // Each NIC's attachment gets the new program in place on the first poll.
            tracing::warn!("--reload: the newly loaded programs replace the attached ones");
        }
        std::fs::create_dir_all(&links).map_err(|source| {
            AgentError::Dataplane(DataplaneError::PinDir {
                path: links.clone(),
                source,
            })
        })?;
        dp.pin_tc_program(&cfg.pin_dir.join(PROG_PIN))?;
        Ok(dp)
    };
    let dp = match start() {
        Ok(dp) => {
            let _ = ready.send(Ok(()));
            dp
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut o = Owner {
        cfg,
        dp,
        syncer: Syncer::new(),
        ids: Ids::default(),
        attached: BTreeMap::new(),
        shared,
        ct_entries: 0,
        ct_collected: 0,
        overlay_ifindex: 0,
        tombstones: BTreeMap::new(),
        flush: FlushQueue::default(),
        reset_flows: BTreeSet::new(),
    };
    o.main(rx, applied_tx);
}

impl Owner {
    fn main(&mut self, rx: mpsc::Receiver<Update>, applied_tx: tokio::sync::watch::Sender<i64>) {
        let mut latest: Option<Update> = None;
        let mut dirty = true;
        let now = Instant::now();
        let mut last_poll = now - IFACE_POLL;
        let mut last_resync = now;
        let mut last_gc = now;
        let mut last_metrics = now - METRICS_EVERY;
        let mut last_flush = now - FLUSH_RETRY;
        // The maps may hold entries from an earlier run: start from what is there. Its
        // tombstones get a grace period of their own (when it began is not recorded).
        match self.syncer.read_back(&mut self.dp) {
            Ok(()) => {
                let sh = self.syncer.shadow();
                self.ids.seed(sh.endpoints.values());
                for (k, e) in &sh.endpoints {
                    if e.flags & EP_TOMBSTONE != 0 {
                        self.tombstones.insert(*k, now + self.cfg.tombstone);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the maps back"),
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(u) => {
                    latest = Some(u);
                    // Only the newest state matters.
                    while let Ok(u) = rx.try_recv() {
                        latest = Some(u);
                    }
                    dirty = true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now.duration_since(last_poll) >= IFACE_POLL {
                last_poll = now;
                dirty |= self.poll_ifaces();
            }
            if now.duration_since(last_resync) >= self.cfg.resync_interval {
                last_resync = now;
                match self.syncer.read_back(&mut self.dp) {
                    Ok(()) => dirty = true,
                    Err(e) => tracing::warn!(error = %e, "reading the maps back"),
                }
            }
            // A tombstone whose grace period ended is removed by the next write.
            dirty |= self.tombstones.values().any(|until| *until <= now);
            if dirty && let Some(u) = &latest {
                let local = Local {
                    node_name: self.cfg.node_name.clone(),
                    vmac: self.cfg.vmac,
                    snat_ports: self.cfg.snat_ports,
                    timeouts: self.cfg.timeouts,
                    nics: self
                        .cfg
                        .nics
                        .iter()
                        .filter_map(|n| {
                            self.attached
                                .get(&n.iface)
                                .map(|a| (n.port_id.clone(), a.ifindex))
                        })
                        .collect(),
                };
                let mut want = desired::compute(&u.state, &local, &mut self.ids);
                self.reset_flows.extend(self.ids.take_fresh());
                self.reset_endpoint_flows();
                self.add_tombstones(&mut want, now);
                desired::carry_generations(
                    &mut want.endpoints,
                    &self.syncer.shadow().endpoints,
                    desired::random_generation,
                );
                let had: HashSet<u32> = ids_of(&self.syncer.shadow().endpoints);
                self.flush.note(&had, &ids_of(&want.endpoints));
                match self.syncer.apply(&mut self.dp, &want) {
                    Ok(n) => {
                        dirty = false;
                        if n.puts + n.deletes > 0 {
                            tracing::info!(
                                revision = u.revision,
                                puts = n.puts,
                                deletes = n.deletes,
                                "maps updated"
                            );
                        }
                        // Flushed at once, not after the retry delay.
                        last_flush = now - FLUSH_RETRY;
                        self.shared.applied.store(u.revision, Ordering::Relaxed);
                        applied_tx.send_replace(u.revision);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "writing the maps; retrying");
                        // The shadow may be off after a failed write: read it back first.
                        last_resync = now - self.cfg.resync_interval;
                    }
                }
            }
            if !self.flush.is_empty() && now.duration_since(last_flush) >= FLUSH_RETRY {
                last_flush = now;
                let live = ids_of(&self.syncer.shadow().endpoints);
                let dp = &mut self.dp;
                match self.flush.run(&live, |live| sync::flush_flows(dp, live)) {
                    Some(Ok(flows)) => tracing::info!(flows, "flows of removed endpoints flushed"),
                    Some(Err(e)) => tracing::warn!(error = %e, "flushing flows; retrying"),
                    None => {}
                }
            }
            if now.duration_since(last_gc) >= self.cfg.gc_interval {
                last_gc = now;
                match sync::gc_conntrack(&mut self.dp, &self.cfg.timeouts) {
                    Ok((left, removed)) => {
                        self.ct_entries = left;
                        self.ct_collected += removed as u64;
                        if removed > 0 {
                            tracing::debug!(removed, left, "conntrack entries collected");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "conntrack collection"),
                }
            }
            if now.duration_since(last_metrics) >= METRICS_EVERY {
                last_metrics = now;
                let text = self.render_metrics();
                if let Ok(mut m) = self.shared.metrics.lock() {
                    *m = text;
                }
            }
        }
        // Links made here are detached when `dp` drops with the owner.
        tracing::info!("data-plane owner stopping");
    }

    /// Zeroes the flow accounting of endpoint ids given out anew (an earlier run may have
    /// left counts there); what fails is tried again on the next write.
    fn reset_endpoint_flows(&mut self) {
        let dp = &mut self.dp;
        self.reset_flows
            .retain(|id| match dp.reset_endpoint_flows(*id) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(endpoint_id = id, error = %e, "zeroing the flow accounting");
                    true
                }
            });
    }

    /// Puts the tombstones into `want`: the addresses of endpoints the maps hold and
    /// `want` drops get one for the grace period; one whose address `want` gives a new
    /// endpoint, or whose period ended, goes.
    fn add_tombstones(&mut self, want: &mut desired::Desired, now: Instant) {
        for (k, e) in &self.syncer.shadow().endpoints {
            if e.flags & EP_TOMBSTONE == 0 && !want.endpoints.contains_key(k) {
                self.tombstones
                    .entry(*k)
                    .or_insert(now + self.cfg.tombstone);
            }
        }
        self.tombstones
            .retain(|k, until| !want.endpoints.contains_key(k) && *until > now);
        for k in self.tombstones.keys() {
            want.endpoints.insert(*k, desired::TOMBSTONE);
        }
    }

    /// Attaches to configured NICs that appeared (or adopts the link an earlier run
    /// pinned), and releases the links of NICs that went away. Returns whether anything
    /// changed.
    /// Keeps the overlay device present, the tunnel program attached to it (link pinned,
    /// like the NICs') and `TUNNEL` pointing at it; repairs all three when they drift.
    fn poll_overlay(&mut self) {
        let Some(o) = self.cfg.overlay.clone() else {
            // No overlay (any more): remote backends are dropped, not sent to a stale device.
            if self.dp.tunnel().is_ok_and(|t| t.ifindex != 0) {
                let _ = self.dp.set_tunnel(TunnelConfig::default());
            }
            return;
        };
        let mut idx = if_index(&o.device);
        if idx == 0 {
            match create_vxlan(&o) {
                Ok(()) => {
                    tracing::info!(device = %o.device, port = o.port, "overlay device created")
                }
                Err(e) => {
                    tracing::warn!(device = %o.device, error = %e, "creating the overlay device")
                }
            }
            idx = if_index(&o.device);
        }
        let links = self.cfg.pin_dir.join(LINKS_DIR);
        if idx != self.overlay_ifindex {
            let keep = format!("vx-{}-{idx}", o.device);
            let prefix = format!("vx-{}-", o.device);
            if let Ok(rd) = std::fs::read_dir(&links) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&prefix) && name != keep {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            self.overlay_ifindex = 0;
            if idx != 0 {
                let pin = links.join(&keep);
                match self.dp.attach_persistent(
                    vpcep_common::maps::PROG_TC_TUNNEL,
                    &o.device,
                    &pin,
                    self.cfg.reload,
                ) {
                    Ok(how) => {
                        tracing::info!(device = %o.device, ifindex = idx, ?how, "overlay attached");
                        self.overlay_ifindex = idx;
                    }
                    Err(e) => {
                        tracing::warn!(device = %o.device, error = %e, "attaching the overlay")
                    }
                }
            }
        }
        let want = TunnelConfig {
            ifindex: self.overlay_ifindex,
            inner_mtu: o.inner_mtu,
            _pad: [0; 2],
        };
        if self.dp.tunnel().ok() != Some(want)
            && let Err(e) = self.dp.set_tunnel(want)
        {
            tracing::warn!(error = %e, "writing the overlay config");
        }
    }

    fn poll_ifaces(&mut self) -> bool {
        self.poll_overlay();
        let links = self.cfg.pin_dir.join(LINKS_DIR);
        let mut changed = false;
        for n in &self.cfg.nics {
            let idx = if_index(&n.iface);
            let current = self.attached.get(&n.iface).map(|a| a.ifindex);
            if current == Some(idx) || (current.is_none() && idx == 0) {
                continue;
            }
            if self.attached.remove(&n.iface).is_some() {
                tracing::info!(iface = %n.iface, "NIC went away");
                changed = true;
            }
            // Pins of an earlier device of that name hold defunct links: release them.
            let keep = link_pin_name(&n.iface, idx);
            let prefix = format!("tc-{}-", n.iface);
            if let Ok(rd) = std::fs::read_dir(&links) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&prefix) && name != keep {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            if idx == 0 {
                continue;
            }
            let pin = links.join(&keep);
            match self.dp.attach_persistent(
                vpcep_common::maps::PROG_TC_INGRESS,
                &n.iface,
                &pin,
                self.cfg.reload,
            ) {
                Ok(how) => tracing::info!(iface = %n.iface, ifindex = idx, ?how, "attached"),
                Err(e) => {
                    tracing::warn!(iface = %n.iface, error = %e, "attaching");
                    continue;
                }
            }
            self.attached
                .insert(n.iface.clone(), Attached { ifindex: idx });
            changed = true;
        }
        changed
    }

    fn render_metrics(&mut self) -> String {
        let mut s = String::new();
        let applied = self.shared.applied.load(Ordering::Relaxed);
        let latest = self.shared.latest.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# TYPE vpcep_agent_applied_revision gauge\nvpcep_agent_applied_revision {applied}"
        );
        let _ = writeln!(
            s,
            "# TYPE vpcep_agent_latest_revision gauge\nvpcep_agent_latest_revision {latest}"
        );
        // Revisions seen on the feed but not yet in the maps (0 when in sync).
        let _ = writeln!(
            s,
            "# TYPE vpcep_agent_revision_lag gauge\nvpcep_agent_revision_lag {}",
            (latest - applied).max(0)
        );
        if let Some(o) = &self.cfg.overlay {
            let _ = writeln!(
                s,
                "# TYPE vpcep_overlay_attached gauge\nvpcep_overlay_attached{{device=\"{}\"}} {}",
                o.device,
                u8::from(self.overlay_ifindex != 0)
            );
        }
        let _ = writeln!(s, "# TYPE vpcep_nic_attached gauge");
        for n in &self.cfg.nics {
            let up = u8::from(self.attached.contains_key(&n.iface));
            let _ = writeln!(
                s,
                "vpcep_nic_attached{{iface=\"{}\",port_id=\"{}\"}} {up}",
                n.iface, n.port_id
            );
        }
        let mut eps: Vec<(String, u32)> = self
            .ids
            .endpoints()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        eps.sort();
        for (name, kind) in [
            ("packets", "counter"),
            ("bytes", "counter"),
            ("new_flows", "counter"),
            ("drops", "counter"),
        ] {
            let _ = writeln!(s, "# TYPE vpcep_endpoint_{name}_total {kind}");
            for (uuid, id) in &eps {
                if let Ok(c) = self.dp.endpoint_counters(*id) {
                    let v = match name {
                        "packets" => c.packets,
                        "bytes" => c.bytes,
                        "new_flows" => c.new_flows,
                        _ => c.drops,
                    };
                    let _ = writeln!(s, "vpcep_endpoint_{name}_total{{endpoint=\"{uuid}\"}} {v}");
                }
            }
        }
        let _ = writeln!(s, "# TYPE vpcep_packets_total counter");
        if let Ok(stats) = self.dp.stats() {
            for ((hook, reason), c) in stats {
                let _ = writeln!(
                    s,
                    "vpcep_packets_total{{hook=\"{hook}\",reason=\"{reason}\"}} {}",
                    c.packets
                );
            }
        }
        let _ = writeln!(
            s,
            "# TYPE vpcep_conntrack_entries gauge\nvpcep_conntrack_entries {}",
            self.ct_entries
        );
        let _ = writeln!(
            s,
            "# TYPE vpcep_conntrack_collected_total counter\nvpcep_conntrack_collected_total {}",
            self.ct_collected
        );
        let sh = self.syncer.shadow();
        let _ = writeln!(
            s,
            "# TYPE vpcep_map_entries gauge\n# TYPE vpcep_map_capacity gauge"
        );
        for (map, n, cap) in [
            ("local_nics", sh.nics.len(), MAX_LOCAL_NICS),
            ("snat_owners", sh.snat_owners.len(), MAX_NODES),
            ("services", sh.services.len(), MAX_SERVICES),
            ("port_map", sh.ports.len(), MAX_PORT_MAPPINGS),
            ("src_whitelist", sh.sources.len(), MAX_WHITELIST_RULES),
            ("endpoints", sh.endpoints.len(), MAX_ENDPOINTS),
            ("ct_fwd", self.ct_entries, MAX_FLOWS),
        ] {
            let _ = writeln!(
                s,
                "vpcep_map_entries{{map=\"{map}\"}} {n}\nvpcep_map_capacity{{map=\"{map}\"}} {cap}"
            );
        }
        s
    }
}
