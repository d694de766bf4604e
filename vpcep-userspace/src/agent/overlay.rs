//! The VXLAN overlay to other nodes: the device (created over netlink when missing), the
//! tunnel program attached to it (its link pinned like the NICs') and `TUNNEL` pointing
//! at it, all three repaired when they drift.
use rtnetlink::{LinkMessageBuilder, LinkVxlan};
use vpcep_common::endpoint::TunnelConfig;

use super::{
    AgentConfig, config,
    links::{LINKS_DIR, if_index, release_stale},
};
use crate::dataplane::Dataplane;

#[derive(Debug, thiserror::Error)]
enum VxlanError {
    #[error("opening a netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// Creates the overlay's VXLAN device in this thread's network namespace, up, with what
/// `ip link add DEV type vxlan dstport PORT external` sets: collect-metadata (external)
/// mode, the UDP port, and no learning (external implies it).
fn create_vxlan(o: &config::Overlay) -> Result<(), VxlanError> {
    // The owner thread has no runtime; the socket must be opened on it (its namespace).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let conn = tokio::spawn(conn);
        let msg = LinkMessageBuilder::<LinkVxlan>::new(&o.device)
            .port(o.port)
            .collect_metadata(true)
            .learning(false)
            .up()
            .build();
        let r = handle.link().add(msg).execute().await;
        conn.abort();
        Ok(r?)
    })
}

/// The overlay's state on the owner thread.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    /// ifindex of the overlay device the tunnel program is attached to (0 = none).
    ifindex: u32,
}

impl Overlay {
    /// Whether the tunnel program is attached to the overlay device.
    pub fn attached(&self) -> bool {
        self.ifindex != 0
    }

    /// Keeps the device present, the program attached to it and `TUNNEL` pointing at it.
    pub fn poll(&mut self, dp: &mut Dataplane, cfg: &AgentConfig) {
        let Some(o) = &cfg.overlay else {
            // No overlay (any more): remote backends are dropped, not sent to a stale device.
            if dp.tunnel().is_ok_and(|t| t.ifindex != 0) {
                let _ = dp.set_tunnel(TunnelConfig::default());
            }
            return;
        };
        let mut idx = if_index(&o.device);
        if idx == 0 {
            match create_vxlan(o) {
                Ok(()) => {
                    tracing::info!(device = %o.device, port = o.port, "overlay device created")
                }
                Err(e) => {
                    tracing::warn!(device = %o.device, error = %e, "creating the overlay device")
                }
            }
            idx = if_index(&o.device);
        }
        if idx != self.ifindex {
            self.attach(dp, cfg, o, idx);
        }
        let want = TunnelConfig {
            ifindex: self.ifindex,
            inner_mtu: o.inner_mtu,
            _pad: [0; 2],
        };
        if dp.tunnel().ok() != Some(want)
            && let Err(e) = dp.set_tunnel(want)
        {
            tracing::warn!(error = %e, "writing the overlay config");
        }
    }

    /// Attaches the tunnel program to the device now at `idx` (none when 0), releasing the
    /// pins of earlier devices of that name.
    fn attach(&mut self, dp: &mut Dataplane, cfg: &AgentConfig, o: &config::Overlay, idx: u32) {
        let links = cfg.pin_dir.join(LINKS_DIR);
        let keep = format!("vx-{}-{idx}", o.device);
        release_stale(&links, &format!("vx-{}-", o.device), &keep);
        self.ifindex = 0;
        if idx == 0 {
            return;
        }
        let prog = vpcep_common::maps::PROG_TC_TUNNEL;
        match dp.attach_persistent(prog, &o.device, &links.join(&keep), cfg.reload) {
            Ok(how) => {
                tracing::info!(device = %o.device, ifindex = idx, ?how, "overlay attached");
                self.ifindex = idx;
            }
            Err(e) => tracing::warn!(device = %o.device, error = %e, "attaching the overlay"),
        }
    }
}
