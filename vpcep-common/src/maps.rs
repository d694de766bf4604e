//! Map and program names, versioned like cilium's (`cilium_ct4_global`): a layout change
//! bumps the suffix so a new agent never reinterprets a pinned map of an older layout.

/// Per-CPU counters per hook and reason ([`crate::stats::Counter`]).
pub const STATS: &str = "VPCEP_STATS_V1";

/// Every map the userspace expects in the object file.
pub const ALL_MAPS: &[&str] = &[STATS];

/// XDP program on the host side of a VM NIC.
pub const PROG_XDP: &str = "vpcep_xdp";
/// TC ingress program on the host side of a VM NIC (packets coming from the VM).
pub const PROG_TC_INGRESS: &str = "vpcep_tc_ingress";

/// Every program the userspace expects in the object file.
pub const ALL_PROGRAMS: &[&str] = &[PROG_XDP, PROG_TC_INGRESS];
