//! Map and program names, versioned like cilium's (`cilium_ct4_global`): a layout change
//! bumps the suffix so a new agent never reinterprets a pinned map of an older layout.
//! Capacities live here too so userspace sizes and checks agree with the object.

/// Per-CPU counters per hook and reason ([`crate::stats::Counter`]).
pub const STATS: &str = "VPCEP_STATS_V1";
/// ifindex → [`crate::endpoint::LocalNic`].
pub const LOCAL_NICS: &str = "VPCEP_LOCAL_NICS_V1";
/// [`crate::endpoint::EndpointKey`] → [`crate::endpoint::Endpoint`].
pub const ENDPOINTS: &str = "VPCEP_ENDPOINTS_V2";
/// [`crate::endpoint::PortKey`] → [`crate::endpoint::PortTarget`].
pub const PORT_MAP: &str = "VPCEP_PORT_MAP_V1";
/// service id → [`crate::endpoint::Service`].
pub const SERVICES: &str = "VPCEP_SERVICES_V1";
/// LPM [`crate::endpoint::WhitelistKey`] → 1.
pub const SRC_WHITELIST: &str = "VPCEP_SRC_WHITELIST_V1";
/// index 0 → [`crate::endpoint::NodeConfig`].
pub const NODE: &str = "VPCEP_NODE_V1";
/// SNAT IPv4 (be) → owning node's underlay IPv4 (be).
pub const SNAT_OWNERS: &str = "VPCEP_SNAT_OWNERS_V1";
/// LRU [`crate::endpoint::FlowKey`] → [`crate::endpoint::FlowEntry`].
pub const CT_FWD: &str = "VPCEP_CT_FWD_V2";
/// LRU [`crate::endpoint::RevKey`] → [`crate::endpoint::RevEntry`].
pub const CT_REV: &str = "VPCEP_CT_REV_V1";
/// Per-CPU endpoint id → [`crate::endpoint::EndpointCounters`].
pub const EP_STATS: &str = "VPCEP_EP_STATS_V1";
/// index 0 → [`crate::endpoint::TunnelConfig`].
pub const TUNNEL: &str = "VPCEP_TUNNEL_V1";
/// (VNI, VM address) [`crate::endpoint::EndpointKey`] → [`crate::endpoint::LocalAddr`].
pub const LOCAL_ADDRS: &str = "VPCEP_LOCAL_ADDRS_V1";

/// Every map the userspace expects in the object file.
pub const ALL_MAPS: &[&str] = &[
    STATS,
    LOCAL_NICS,
    ENDPOINTS,
    PORT_MAP,
    SERVICES,
    SRC_WHITELIST,
    NODE,
    SNAT_OWNERS,
    CT_FWD,
    CT_REV,
    EP_STATS,
    TUNNEL,
    LOCAL_ADDRS,
];

pub const MAX_LOCAL_NICS: u32 = 4096;
pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_PORT_MAPPINGS: u32 = 262_144;
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_WHITELIST_RULES: u32 = 65_536;
pub const MAX_NODES: u32 = 4096;
/// Conntrack capacity (each flow has a forward and a reverse entry): twice the 1M flows a
/// node is planned for, so that at the planned load the LRU maps do not evict live flows.
pub const MAX_FLOWS: u32 = 1 << 21;

/// XDP program on the host side of a VM NIC.
pub const PROG_XDP: &str = "vpcep_xdp";
/// TC ingress program on the host side of a VM NIC (packets coming from the VM).
pub const PROG_TC_INGRESS: &str = "vpcep_tc_ingress";

/// TC ingress program on the node's VXLAN device (packets decapsulated from other nodes).
pub const PROG_TC_TUNNEL: &str = "vpcep_tc_tunnel";

/// Programs that do nothing: the baselines benchmarks measure against.
pub const PROG_NOOP_XDP: &str = "vpcep_noop_xdp";
pub const PROG_NOOP_TC: &str = "vpcep_noop_tc";

/// Benchmark floors (TC): only the map and helper work an established packet, or a new
/// flow, cannot do without; never attached.
pub const PROG_FLOOR_ESTABLISHED: &str = "vpcep_floor_established";
pub const PROG_FLOOR_NEW_FLOW: &str = "vpcep_floor_new_flow";

/// Every program the userspace expects in the object file.
pub const ALL_PROGRAMS: &[&str] = &[
    PROG_XDP,
    PROG_TC_INGRESS,
    PROG_TC_TUNNEL,
    PROG_NOOP_XDP,
    PROG_NOOP_TC,
    PROG_FLOOR_ESTABLISHED,
    PROG_FLOOR_NEW_FLOW,
];
