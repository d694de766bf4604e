//! The TC program's attachment to the configured VM NICs: one TCX link pinned per NIC
//! under `links/` (or a netlink filter), adopted by a restarted agent, released when the
//! NIC goes away or is replaced by a new device of the same name.
use std::{collections::BTreeMap, path::Path};

use super::AgentConfig;
use crate::dataplane::Dataplane;

/// Subdirectory of the pin directory holding one pinned TC link per NIC.
pub(super) const LINKS_DIR: &str = "links";
/// Where the TC program is pinned.
pub(super) const PROG_PIN: &str = "prog_tc_ingress";

/// The interface's index in this thread's network namespace (0 = no such interface).
pub(super) fn if_index(name: &str) -> u32 {
    match std::ffi::CString::new(name) {
        // SAFETY: valid NUL-terminated string.
        Ok(c) => unsafe { libc::if_nametoindex(c.as_ptr()) },
        Err(_) => 0,
    }
}

/// Removes the pins in `links` whose name starts with `prefix`, except `keep`: they hold
/// the defunct links of an earlier device of that name.
pub(super) fn release_stale(links: &Path, prefix: &str, keep: &str) {
    if let Ok(rd) = std::fs::read_dir(links) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn link_pin_name(iface: &str, ifindex: u32) -> String {
    format!("tc-{iface}-{ifindex}")
}

/// The NICs the program is attached to (a TCX link pinned under `links/`, or a netlink
/// filter at [`crate::dataplane::NL_PRIORITY`]): iface → ifindex.
#[derive(Debug, Default)]
pub(super) struct Nics {
    attached: BTreeMap<String, u32>,
}

impl Nics {
    /// The ifindex of `iface` if the program is attached to it.
    pub fn ifindex(&self, iface: &str) -> Option<u32> {
        self.attached.get(iface).copied()
    }

    /// Attaches to configured NICs that appeared (or adopts the link an earlier run
    /// pinned), and releases the links of NICs that went away. Returns whether anything
    /// changed.
    pub fn poll(&mut self, dp: &mut Dataplane, cfg: &AgentConfig) -> bool {
        let links = cfg.pin_dir.join(LINKS_DIR);
        let mut changed = false;
        for n in &cfg.nics {
            let idx = if_index(&n.iface);
            let current = self.ifindex(&n.iface);
            if current == Some(idx) || (current.is_none() && idx == 0) {
                continue;
            }
            if self.attached.remove(&n.iface).is_some() {
                tracing::info!(iface = %n.iface, "NIC went away");
                changed = true;
            }
            let keep = link_pin_name(&n.iface, idx);
            release_stale(&links, &format!("tc-{}-", n.iface), &keep);
            if idx == 0 {
                continue;
            }
            let pin = links.join(&keep);
            let prog = vpcep_common::maps::PROG_TC_INGRESS;
            match dp.attach_persistent(prog, &n.iface, &pin, cfg.reload) {
                Ok(how) => tracing::info!(iface = %n.iface, ifindex = idx, ?how, "attached"),
                Err(e) => {
                    tracing::warn!(iface = %n.iface, error = %e, "attaching");
                    continue;
                }
            }
            self.attached.insert(n.iface.clone(), idx);
            changed = true;
        }
        changed
    }
}
