//! The data-plane owner: one thread (inside `netns` when configured, because attaching and
//! resolving interfaces depend on the thread's network namespace) that alone writes the
//! maps. Each tick it takes the newest feed state, polls the NICs and the overlay, writes
//! the difference, flushes removed endpoints' flows, collects conntrack and refreshes the
//! metrics' figures.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use vpcep_common::endpoint::{
    EP_TOMBSTONE, Endpoint, EndpointKey, TCP_PROXY_ACTIVE_MODES, tcp_proxy_name,
};
use vpcep_common::maps::{
    MAX_ENDPOINTS, MAX_FLOWS, MAX_LOCAL_NICS, MAX_NODES, MAX_PORT_MAPPINGS, MAX_SERVICES,
    MAX_WHITELIST_RULES,
};
use vpcep_common::stats::ProxyEvent;

use super::{
    AgentConfig, AgentError, Update,
    desired::{self, Ids, Local},
    gc::{self, FlushQueue},
    links::{LINKS_DIR, Nics, PROG_PIN},
    metrics::{Figures, Shared},
    overlay::Overlay,
    sync::Syncer,
};
use crate::dataplane::{Dataplane, DataplaneError};

/// How often the owner looks for NICs that appeared or went away.
const IFACE_POLL: Duration = Duration::from_millis(500);
/// How often the owner refreshes the metrics' figures.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// How long a failed flush of removed endpoints' flows waits before it is tried again.
const FLUSH_RETRY: Duration = Duration::from_secs(1);

/// The owner thread's state.
struct Owner {
    cfg: AgentConfig,
    dp: Dataplane,
    syncer: Syncer,
    ids: Ids,
    nics: Nics,
    overlay: Overlay,
    shared: Arc<Shared>,
    ct_entries: usize,
    ct_collected: u64,
    /// Addresses of endpoints that left the node, failing closed until the instant given.
    tombstones: BTreeMap<EndpointKey, Instant>,
    /// Removed endpoints whose flows are still to be flushed.
    flush: FlushQueue,
    /// Endpoint ids given to new endpoints whose flow accounting is still to be zeroed.
    reset_flows: BTreeSet<u32>,
}

/// When each periodic job last ran.
struct Timers {
    poll: Instant,
    resync: Instant,
    gc: Instant,
    metrics: Instant,
    flush: Instant,
}

/// Whether `every` has passed since `last`; if so, `last` becomes `now`.
fn due(last: &mut Instant, now: Instant, every: Duration) -> bool {
    if now.duration_since(*last) >= every {
        *last = now;
        return true;
    }
    false
}

pub(super) fn enter_netns(name: &str) -> Result<(), AgentError> {
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

/// Enters the namespace, opens the pinned maps and pins the TC program.
fn start(cfg: &AgentConfig) -> Result<Dataplane, AgentError> {
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
}

/// The owner thread: reports on `ready` whether it started, then runs until `rx` closes.
pub(super) fn run(
    cfg: AgentConfig,
    rx: mpsc::Receiver<Update>,
    shared: Arc<Shared>,
    applied_tx: tokio::sync::watch::Sender<i64>,
    ready: tokio::sync::oneshot::Sender<Result<(), AgentError>>,
) {
    let dp = match start(&cfg) {
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
        nics: Nics::default(),
        overlay: Overlay::default(),
        shared,
        ct_entries: 0,
        ct_collected: 0,
        tombstones: BTreeMap::new(),
        flush: FlushQueue::default(),
        reset_flows: BTreeSet::new(),
    };
    o.main(rx, applied_tx);
}

/// The ids of the endpoints (not the tombstones) of a map's contents.
fn ids_of(eps: &BTreeMap<EndpointKey, Endpoint>) -> HashSet<u32> {
    eps.values()
        .filter(|e| e.flags & EP_TOMBSTONE == 0)
        .map(|e| e.endpoint_id)
        .collect()
}

impl Owner {
    fn main(&mut self, rx: mpsc::Receiver<Update>, applied_tx: tokio::sync::watch::Sender<i64>) {
        let mut latest: Option<Update> = None;
        let mut dirty = true;
        let now = Instant::now();
        let mut t = Timers {
            poll: now - IFACE_POLL,
            resync: now,
            gc: now,
            metrics: now - METRICS_EVERY,
            flush: now - FLUSH_RETRY,
        };
        self.adopt_maps(now);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(u) => {
                    // Only the newest state matters.
                    latest = Some(rx.try_iter().last().unwrap_or(u));
                    dirty = true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if due(&mut t.poll, now, IFACE_POLL) {
                self.overlay.poll(&mut self.dp, &self.cfg);
                dirty |= self.nics.poll(&mut self.dp, &self.cfg);
            }
            if due(&mut t.resync, now, self.cfg.resync_interval) {
                match self.syncer.read_back(&mut self.dp) {
                    Ok(()) => dirty = true,
                    Err(e) => tracing::warn!(error = %e, "reading the maps back"),
                }
            }
            // A tombstone whose grace period ended is removed by the next write.
            dirty |= self.tombstones.values().any(|until| *until <= now);
            if dirty && let Some(u) = &latest {
                if self.write(u, now) {
                    dirty = false;
                    // Flushed at once, not after the retry delay.
                    t.flush = now - FLUSH_RETRY;
                    applied_tx.send_replace(u.revision);
                } else {
                    // The shadow may be off after a failed write: read it back first.
                    t.resync = now - self.cfg.resync_interval;
                }
            }
            if !self.flush.is_empty() && due(&mut t.flush, now, FLUSH_RETRY) {
                self.flush_removed();
            }
            if due(&mut t.gc, now, self.cfg.gc_interval) {
                self.collect();
            }
            if due(&mut t.metrics, now, METRICS_EVERY) {
                let f = self.figures();
                if let Ok(mut m) = self.shared.figures.lock() {
                    *m = f;
                }
            }
        }
        // Links made here are detached when `dp` drops with the owner.
        tracing::info!("data-plane owner stopping");
    }

    /// The maps may hold entries from an earlier run: start from what is there. Its
    /// tombstones get a grace period of their own (when it began is not recorded).
    fn adopt_maps(&mut self, now: Instant) {
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
    }

    /// What this node contributes to the desired state now.
    fn local(&self) -> Local {
        Local {
            node_name: self.cfg.node_name.clone(),
            vmac: self.cfg.vmac,
            snat_ports: self.cfg.snat_ports,
            toa_kind: self.cfg.toa_kind,
            timeouts: self.cfg.timeouts,
            nics: self
                .cfg
                .nics
                .iter()
                .filter_map(|n| self.nics.ifindex(&n.iface).map(|i| (n.port_id.clone(), i)))
                .collect(),
            dns: self.cfg.dns.enabled,
        }
    }

    /// Computes the maps' contents for `u` and writes the difference; whether it succeeded.
    fn write(&mut self, u: &Update, now: Instant) -> bool {
        let mut want = desired::compute(&u.state, &self.local(), &mut self.ids);
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
                if n.puts + n.deletes > 0 {
                    tracing::info!(
                        revision = u.revision,
                        puts = n.puts,
                        deletes = n.deletes,
                        "maps updated"
                    );
                }
                self.shared.applied.store(u.revision, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing the maps; retrying");
                false
            }
        }
    }

    /// Flushes the flows of removed endpoints (tried again later on failure).
    fn flush_removed(&mut self) {
        let live = ids_of(&self.syncer.shadow().endpoints);
        let dp = &mut self.dp;
        match self.flush.run(&live, |live| gc::flush_flows(dp, live)) {
            Some(Ok(flows)) => tracing::info!(flows, "flows of removed endpoints flushed"),
            Some(Err(e)) => tracing::warn!(error = %e, "flushing flows; retrying"),
            None => {}
        }
    }

    /// Collects idle conntrack entries.
    fn collect(&mut self) {
        match gc::gc_conntrack(&mut self.dp, &self.cfg.timeouts) {
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

    /// The figures the metrics server shows until the next refresh.
    fn figures(&self) -> Figures {
        let mut eps: Vec<(String, u32)> = self
            .ids
            .endpoints()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        eps.sort();
        let sh = self.syncer.shadow();
        Figures {
            overlay: (self.cfg.overlay.as_ref())
                .map(|o| (o.device.clone(), self.overlay.attached())),
            nics: (self.cfg.nics.iter())
                .map(|n| {
                    let up = self.nics.ifindex(&n.iface).is_some();
                    (n.iface.clone(), n.port_id.clone(), up)
                })
                .collect(),
            endpoints: (eps.into_iter())
                .filter_map(|(uuid, id)| self.dp.endpoint_counters(id).ok().map(|c| (uuid, c)))
                .collect(),
            packets: (self.dp.stats().into_iter().flatten())
                .map(|(k, c)| (k, c.packets))
                .collect(),
            proxy: TCP_PROXY_ACTIVE_MODES
                .iter()
                .flat_map(|m| ProxyEvent::ALL.iter().map(move |e| (*m, *e)))
                .filter_map(|(m, e)| {
                    let n = self.dp.proxy_event(m, e).ok()?;
                    (n != 0).then(|| ((tcp_proxy_name(m), e.name()), n))
                })
                .collect(),
            ct_entries: self.ct_entries,
            ct_collected: self.ct_collected,
            maps: vec![
                ("local_nics", sh.nics.len(), MAX_LOCAL_NICS),
                ("snat_owners", sh.snat_owners.len(), MAX_NODES),
                ("services", sh.services.len(), MAX_SERVICES),
                ("port_map", sh.ports.len(), MAX_PORT_MAPPINGS),
                ("src_whitelist", sh.sources.len(), MAX_WHITELIST_RULES),
                ("endpoints", sh.endpoints.len(), MAX_ENDPOINTS),
                ("ct_fwd", self.ct_entries, MAX_FLOWS),
            ],
        }
    }
}
