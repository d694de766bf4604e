//! Taking a node's data plane down for good (the package's removal runs this): every netlink
//! TC filter of ours comes off every interface of this namespace, and the pin directory goes,
//! which releases the pinned TCX links (and with them the attachments) and the maps.
use std::path::Path;

use aya::programs::{
    TcAttachType,
    tc::{self, TcError},
};
use vpcep_common::maps::{PROG_TC_INGRESS, PROG_TC_TUNNEL};

/// What [`detach_all`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Detached {
    /// `interface: program` of each netlink filter removed.
    pub filters: Vec<String>,
    /// Whether the pin directory existed (and is now gone).
    pub pins: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("listing interfaces")]
    Interfaces(#[source] std::io::Error),
    #[error("removing the {program} filter from {iface}")]
    Filter {
        iface: String,
        program: &'static str,
        #[source]
        source: TcError,
    },
    #[error("removing {path}")]
    Pins {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Removes our filters from every interface of the current network namespace, then
/// `pin_dir`. Links held open by a running agent would keep their attachments: stop it first.
pub fn detach_all(pin_dir: &Path) -> Result<Detached, DetachError> {
    let mut out = Detached::default();
    for iface in interfaces()? {
        for program in [PROG_TC_INGRESS, PROG_TC_TUNNEL] {
            match tc::qdisc_detach_program(&iface, TcAttachType::Ingress, program) {
                Ok(()) => out.filters.push(format!("{iface}: {program}")),
                // No filter of that name, or no clsact qdisc at all: nothing of ours there.
                Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(TcError::NetlinkError(_)) => {}
                Err(source) => {
                    return Err(DetachError::Filter {
                        iface,
                        program,
                        source,
                    });
                }
            }
        }
    }
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => out.pins = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DetachError::Pins {
                path: pin_dir.display().to_string(),
                source,
            });
        }
    }
    Ok(out)
}

/// Interface names of the current network namespace (netlink-backed, unlike /sys/class/net,
/// which shows the namespace sysfs was mounted in).
fn interfaces() -> Result<Vec<String>, DetachError> {
    // SAFETY: if_nameindex returns a heap array ending with a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(DetachError::Interfaces(std::io::Error::last_os_error()));
    }
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: `i` stays within the array, which ends at the zero entry.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated name owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
        i += 1;
    }
    // SAFETY: the pointer came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}
