//! The node agent: registers the node, follows the control plane's change feed (list +
//! watch), computes this node's map contents and has one owner thread write the
//! difference; attaches the TC program to the local VM NICs as they appear, collects idle
//! conntrack entries and serves Prometheus metrics. See `docs/agent.md`.
//!
//! Modules by concern: [`session`] follows the feed with [`feed_client`] (and
//! [`registration`] puts the node and its NICs into the inventory); [`owner`] runs the
//! data-plane thread, which writes the maps through [`sync`] from [`desired`], keeps the
//! NICs' links and pins ([`links`]) and the VXLAN device ([`overlay`]), collects conntrack
//! ([`gc`]) and fills the figures [`metrics`] serves. [`dns`] is the node resolver the
//! VMs ask, on a thread of its own.
pub mod config;
pub mod desired;
pub mod dns;
pub mod feed_client;
pub mod gc;
mod links;
mod metrics;
mod overlay;
mod owner;
pub mod privileges;
mod registration;
mod session;
mod snapshot;
pub mod sync;

use std::{
    future::Future,
    sync::{Arc, mpsc},
};

pub use self::config::{AgentConfig, AgentConfigError};
use self::{desired::FeedState, metrics::Shared};
use crate::dataplane::DataplaneError;

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
        .spawn(move || owner::run(owner_cfg, rx, owner_shared, applied_tx, ready_tx))
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
    let metrics = tokio::spawn(metrics::serve(listener, shared.clone()));
    let (dns_tx, dns_rx) = tokio::sync::watch::channel(None);
    let resolver = if cfg.dns.enabled {
        Some(dns::spawn(&cfg, dns_rx, shared.clone()).map_err(AgentError::Thread)?)
    } else {
        None
    };
    let reporter = tokio::spawn(session::report_applied(cfg.clone(), applied_rx));
    tokio::select! {
        _ = shutdown => {}
        _ = session::feed_loop(&cfg, tx, dns_tx, &shared) => {}
    }
    metrics.abort();
    reporter.abort();
    // The sender is gone with the feed loop: the owner finishes its tick and exits.
    let _ = tokio::task::spawn_blocking(move || owner.join()).await;
    // So is the resolver's: its sender went with the feed loop too.
    if let Some(r) = resolver {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
    tracing::info!("agent stopped");
    Ok(())
}
