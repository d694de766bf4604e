//! The node resolver: VMs ask their subnet's DNS address (169.254.169.253 unless the
//! inventory says otherwise); the node answers the endpoint names of the asking VM's VPC
//! and forwards the rest to the configured upstreams.
//!
//! Overlapping VPCs use the same addresses, so the query's source says nothing about its
//! VPC. Its device does: every VM NIC has a host-side device of its own, and the resolver
//! opens one UDP and one TCP socket per NIC, bound to that device (`SO_BINDTODEVICE`) on
//! the DNS address, which it puts on the device as a /32. The kernel then delivers each
//! query to the socket of the NIC it came in on, and sends the answer back out of it;
//! the agent knows each NIC's VPC from the inventory. The TC program passes such queries
//! to the stack like any packet that is not for an endpoint. See docs/agent.md.
//!
//! The resolver runs on a thread of its own (in `netns` when configured) and takes each
//! whole state of the feed from the session, as the owner thread does; it starts serving
//! only after the first one, so a restarting agent never answers from an empty view.
mod serve;
pub mod view;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::watch;

pub use self::{serve::DnsCounters, view::DnsView};
use super::{AgentConfig, desired::FeedState, links::if_index, metrics::Shared};

/// How often NICs that appeared or went are noticed without a feed change.
const RESCAN: Duration = Duration::from_secs(1);

/// The states of the feed, as the session hands them over (`None` until the first).
pub(super) type States = watch::Receiver<Option<Arc<FeedState>>>;

/// Starts the resolver's thread; it stops when the sender of `states` is gone.
pub(super) fn spawn(
    cfg: &AgentConfig,
    states: States,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("vpcep-dns".to_owned())
        .spawn(move || run(cfg, states, shared))
}

fn run(cfg: AgentConfig, states: States, shared: Arc<Shared>) {
    if let Some(ns) = &cfg.netns
        && let Err(e) = super::owner::enter_netns(ns)
    {
        tracing::error!(error = %crate::tls::chain(&e), "dns: resolver not started");
        return;
    }
    // Sockets are opened on this thread, so in its namespace: a runtime of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "dns: resolver not started");
            return;
        }
    };
    rt.block_on(Resolver::new(cfg, shared).follow(states));
}

struct Resolver {
    cfg: AgentConfig,
    shared: Arc<Shared>,
    view: watch::Sender<Arc<DnsView>>,
    ctx: Arc<serve::Ctx>,
    nics: HashMap<String, serve::NicTasks>,
    /// (device index, address) pairs put on the devices.
    addresses: HashSet<(u32, Ipv4Addr)>,
    /// NICs whose sockets could not be opened, warned about once.
    warned: HashSet<String>,
}

impl Resolver {
    fn new(cfg: AgentConfig, shared: Arc<Shared>) -> Self {
        let (view, rx) = watch::channel(Arc::new(DnsView::default()));
        let ctx = Arc::new(serve::Ctx {
            cfg: cfg.dns.clone(),
            view: rx,
        });
        Self {
            cfg,
            shared,
            view,
            ctx,
            nics: HashMap::new(),
            addresses: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    async fn follow(mut self, mut states: States) {
        let mut rescan = tokio::time::interval(RESCAN);
        let mut built: Option<Arc<FeedState>> = None;
        loop {
            tokio::select! {
                r = states.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let state = states.borrow_and_update().clone();
                    if let Some(s) = state
                        && !built.as_ref().is_some_and(|b| b.same_dns_inputs(&s))
                    {
                        // Off this thread: at 100,000 names a build takes ~150 ms, which
                        // the NICs' tasks on this runtime must not wait for. States that
                        // arrive meanwhile are taken together by the next build.
                        let (input, nics) = (s.clone(), self.cfg.nics.clone());
                        let Ok(view) =
                            tokio::task::spawn_blocking(move || DnsView::build(&input, &nics)).await
                        else {
                            continue;
                        };
                        self.shared.dns_names.store(view.len(), Ordering::Relaxed);
                        self.view.send_replace(Arc::new(view));
                        if built.is_none() {
                            tracing::info!("dns: first state received, serving");
                        }
                        built = Some(s);
                    }
                }
                _ = rescan.tick() => {}
            }
            let started = built.is_some();
            if started {
                self.reconcile().await;
            }
        }
        tracing::info!("dns: resolver stopped");
    }

    /// Opens the sockets of NICs that appeared (or changed device, VPC or address) and
    /// closes those of NICs that went.
    async fn reconcile(&mut self) {
        let view = self.view.borrow().clone();
        let want: HashMap<&str, _> = view
            .nics
            .iter()
            .map(|n| (n.iface.as_str(), (if_index(&n.iface), n)))
            .collect();
        self.nics.retain(|iface, t| {
            want.get(iface.as_str())
                .is_some_and(|(idx, n)| t.key == (*idx, n.vni, n.address))
        });
        for (iface, (idx, n)) in &want {
            if *idx == 0 || self.nics.contains_key(*iface) {
                continue;
            }
            let opened = async {
                if !self.addresses.contains(&(*idx, n.address)) {
                    add_address(*idx, n.address).await?;
                    self.addresses.insert((*idx, n.address));
                }
                let counters = self.shared.dns_counters(&n.vpc_id);
                serve::start(n, *idx, self.ctx.clone(), counters).map_err(|e| e.to_string())
            };
            match opened.await {
                Ok(t) => {
                    tracing::info!(iface, address = %n.address, vpc = %n.vpc_id, "dns: serving the NIC");
                    self.warned.remove(*iface);
                    self.nics.insert((*iface).to_owned(), t);
                }
                Err(e) => {
                    if self.warned.insert((*iface).to_owned()) {
                        tracing::warn!(iface, address = %n.address, error = %e, "dns: cannot serve the NIC (retrying)");
                    }
                }
            }
        }
        self.addresses
            .retain(|(idx, _)| want.values().any(|(i, _)| i == idx));
        self.shared
            .dns_nics
            .store(self.nics.len(), Ordering::Relaxed);
    }
}

/// `ip addr replace ADDRESS/32 dev IFINDEX`: the address is local, on the NIC's device,
/// and leaves with the device.
async fn add_address(ifindex: u32, address: Ipv4Addr) -> Result<(), String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let r = handle
        .address()
        .add(ifindex, IpAddr::V4(address), 32)
        .replace()
        .execute()
        .await;
    conn.abort();
    r.map_err(|e| format!("adding {address}/32: {e}"))
}
