//! Map and program names, versioned like cilium's (`cilium_ct4_global`): a layout change
//! bumps the suffix so a new agent never reinterprets a pinned map of an older layout.
//! Capacities live here too so userspace sizes and checks agree with the object.

/// Per-CPU counters per hook and reason ([`crate::stats::Counter`]).
pub const STATS: &str = "VPCEP_STATS_V2";
/// ifindex → [`crate::endpoint::LocalNic`].
pub const LOCAL_NICS: &str = "VPCEP_LOCAL_NICS_V1";
/// [`crate::endpoint::EndpointKey`] → [`crate::endpoint::Endpoint`].
pub const ENDPOINTS: &str = "VPCEP_ENDPOINTS_V3";
/// [`crate::endpoint::PortKey`] → [`crate::endpoint::PortTarget`].
pub const PORT_MAP: &str = "VPCEP_PORT_MAP_V1";
/// service id → [`crate::endpoint::Service`].
pub const SERVICES: &str = "VPCEP_SERVICES_V1";
/// LPM [`crate::endpoint::WhitelistKey`] → 1.
pub const SRC_WHITELIST: &str = "VPCEP_SRC_WHITELIST_V1";
/// Two slots of [`crate::endpoint::NodeConfig`]; `CONFIG_SLOT[CFG_NODE]` names the one in
/// use (see [`CONFIG_SLOT`]).
pub const NODE: &str = "VPCEP_NODE_V2";
/// Which slot of `NODE` (index [`CFG_NODE`]) and of `TUNNEL` (index [`CFG_TUNNEL`]) is in
/// use. Userspace writes the unused slot whole, then switches: a program never reads a
/// configuration half-written.
pub const CONFIG_SLOT: &str = "VPCEP_CONFIG_SLOT_V1";
pub const CFG_NODE: u32 = 0;
pub const CFG_TUNNEL: u32 = 1;
/// SNAT IPv4 (be) → owning node's underlay IPv4 (be).
pub const SNAT_OWNERS: &str = "VPCEP_SNAT_OWNERS_V1";
/// Hash (not LRU: nothing live is ever evicted) [`crate::endpoint::FlowKey`] →
/// [`crate::endpoint::FlowEntry`].
pub const CT_FWD: &str = "VPCEP_CT_FWD_V4";
/// Hash [`crate::endpoint::RevKey`] → [`crate::endpoint::RevEntry`]: the SNAT port claims.
pub const CT_REV: &str = "VPCEP_CT_REV_V2";
/// Endpoint id → [`crate::endpoint::EndpointFlows`] (live flows, new flows this second).
pub const EP_FLOWS: &str = "VPCEP_EP_FLOWS_V1";
/// Per-CPU sequence number for new flows' owner ids.
pub const FLOW_SEQ: &str = "VPCEP_FLOW_SEQ_V1";
/// index 0 → [`crate::endpoint::GcRequest`]: the keys the agent asks the GC program to
/// check and remove.
pub const GC_REQUEST: &str = "VPCEP_GC_REQUEST_V1";
/// Per-CPU endpoint id → [`crate::endpoint::EndpointCounters`].
pub const EP_STATS: &str = "VPCEP_EP_STATS_V1";
/// Two slots of [`crate::endpoint::TunnelConfig`], switched like `NODE`.
pub const TUNNEL: &str = "VPCEP_TUNNEL_V2";
/// (VNI, VM address) [`crate::endpoint::EndpointKey`] → [`crate::endpoint::LocalAddr`].
pub const LOCAL_ADDRS: &str = "VPCEP_LOCAL_ADDRS_V1";
/// ifindex of a VM NIC → its subnet's DNS address (network order): queries to it are the
/// node resolver's.
pub const DNS_NICS: &str = "VPCEP_DNS_NICS_V1";

/// Endpoint id → [`crate::endpoint::ProxyTemplate`]: the TLVs of its PROXY header.
pub const PROXY_TEMPLATES: &str = "VPCEP_PROXY_TEMPLATES_V1";
/// Per-CPU tcp_proxy event counters ([`crate::stats::proxy_event_index`]).
pub const PROXY_STATS: &str = "VPCEP_PROXY_STATS_V1";

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
    DNS_NICS,
    EP_FLOWS,
    FLOW_SEQ,
    GC_REQUEST,
    CONFIG_SLOT,
    PROXY_TEMPLATES,
    PROXY_STATS,
];

pub const MAX_LOCAL_NICS: u32 = 4096;
pub const MAX_ENDPOINTS: u32 = 65_536;
pub const MAX_PORT_MAPPINGS: u32 = 262_144;
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_WHITELIST_RULES: u32 = 65_536;
pub const MAX_NODES: u32 = 4096;
/// Conntrack capacity of each table (each flow has a forward entry and a port claim): twice
/// the 1M flows a node is planned for. A full table refuses new flows.
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

/// Removes the conntrack entries the agent names in `GC_REQUEST` if they are dead (or all
/// of them, for a flush), with the same compare-and-swap protocol as the fast path; run by
/// the agent through BPF_PROG_TEST_RUN, never attached.
pub const PROG_GC: &str = "vpcep_gc";

/// Every program of the object built with the `bench` feature; the shipped object has all
/// but the no-op and floor programs, which only `cargo xtask bench dataplane` uses.
pub const ALL_PROGRAMS: &[&str] = &[
    PROG_GC,
    PROG_XDP,
    PROG_TC_INGRESS,
    PROG_TC_TUNNEL,
    PROG_NOOP_XDP,
    PROG_NOOP_TC,
    PROG_FLOOR_ESTABLISHED,
    PROG_FLOOR_NEW_FLOW,
];
