//! Map definitions; names, layouts and capacities come from `vpcep_common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use vpcep_common::{
    endpoint::{
        Endpoint, EndpointCounters, EndpointFlows, EndpointKey, FlowEntry, FlowKey, GcRequest,
        LocalAddr, LocalNic, NodeConfig, PortKey, PortTarget, ProxyTemplate, RevEntry, RevKey,
        Service, TunnelConfig, WhitelistKey,
    },
    maps::{
        MAX_ENDPOINTS, MAX_FLOWS, MAX_LOCAL_NICS, MAX_NODES, MAX_PORT_MAPPINGS, MAX_SERVICES,
        MAX_WHITELIST_RULES,
    },
    stats::{Counter, PROXY_STATS_ENTRIES, STATS_ENTRIES},
};

#[map(name = "VPCEP_STATS_V2")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "VPCEP_LOCAL_NICS_V1")]
pub static LOCAL_NICS: HashMap<u32, LocalNic> = HashMap::with_max_entries(MAX_LOCAL_NICS, 0);

#[map(name = "VPCEP_ENDPOINTS_V3")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "VPCEP_PORT_MAP_V1")]
pub static PORT_MAP: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(MAX_PORT_MAPPINGS, 0);

#[map(name = "VPCEP_SERVICES_V1")]
pub static SERVICES: HashMap<u32, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "VPCEP_SRC_WHITELIST_V1")]
pub static SRC_WHITELIST: LpmTrie<WhitelistKey, u32> =
    LpmTrie::with_max_entries(MAX_WHITELIST_RULES, 0);

#[map(name = "VPCEP_NODE_V2")]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(2, 0);

#[map(name = "VPCEP_CONFIG_SLOT_V1")]
pub static CONFIG_SLOT: Array<u32> = Array::with_max_entries(2, 0);

#[map(name = "VPCEP_SNAT_OWNERS_V1")]
pub static SNAT_OWNERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_NODES, 0);

#[map(name = "VPCEP_CT_FWD_V4")]
pub static CT_FWD: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "VPCEP_CT_REV_V2")]
pub static CT_REV: HashMap<RevKey, RevEntry> = HashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "VPCEP_EP_FLOWS_V1")]
pub static EP_FLOWS: Array<EndpointFlows> = Array::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "VPCEP_FLOW_SEQ_V1")]
pub static FLOW_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for a new flow's entry (too large for the BPF stack).
#[map(name = "VPCEP_SCRATCH_FLOW_V1")]
pub static SCRATCH_FLOW: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for a new flow's port claim.
#[map(name = "VPCEP_SCRATCH_CLAIM_V1")]
pub static SCRATCH_CLAIM: PerCpuArray<RevEntry> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the tunnel key of an encapsulated packet.
#[map(name = "VPCEP_TUNNEL_KEY_V1")]
pub static TUNNEL_KEY: PerCpuArray<aya_ebpf::bindings::bpf_tunnel_key> =
    PerCpuArray::with_max_entries(1, 0);

#[map(name = "VPCEP_GC_REQUEST_V1")]
pub static GC_REQUEST: Array<GcRequest> = Array::with_max_entries(1, 0);

#[map(name = "VPCEP_EP_STATS_V1")]
pub static EP_STATS: PerCpuArray<EndpointCounters> =
    PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "VPCEP_TUNNEL_V2")]
pub static TUNNEL: Array<TunnelConfig> = Array::with_max_entries(2, 0);

/// The slot of `NODE` or `TUNNEL` in use (`which`: `CFG_NODE`, `CFG_TUNNEL`).
#[inline(always)]
fn config_slot(which: u32) -> u32 {
    match CONFIG_SLOT.get_ptr(which) {
        // SAFETY: map value pointer from a successful lookup; one aligned word.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) & 1,
        None => 0,
    }
}

/// The node configuration in use.
#[inline(always)]
pub fn node() -> Option<*const NodeConfig> {
    NODE.get_ptr(config_slot(vpcep_common::maps::CFG_NODE))
}

/// The overlay configuration in use.
#[inline(always)]
pub fn tunnel() -> Option<*const TunnelConfig> {
    TUNNEL.get_ptr(config_slot(vpcep_common::maps::CFG_TUNNEL))
}

#[map(name = "VPCEP_LOCAL_ADDRS_V1")]
pub static LOCAL_ADDRS: HashMap<EndpointKey, LocalAddr> =
    HashMap::with_max_entries(MAX_LOCAL_NICS, 0);

#[map(name = "VPCEP_DNS_NICS_V1")]
pub static DNS_NICS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LOCAL_NICS, 0);

#[map(name = "VPCEP_PROXY_TEMPLATES_V1")]
pub static PROXY_TEMPLATES: Array<ProxyTemplate> = Array::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "VPCEP_PROXY_STATS_V1")]
pub static PROXY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROXY_STATS_ENTRIES, 0);

/// Per-CPU scratch space of tcp_proxy: the bytes inserted into a segment, and its
/// payload while it is moved behind them.
#[repr(C)]
pub struct ProxyScratch {
    pub ins: [u8; 256],
    pub payload: [u8; 2048],
}

#[map(name = "VPCEP_PROXY_SCRATCH_V1")]
pub static PROXY_SCRATCH: PerCpuArray<ProxyScratch> = PerCpuArray::with_max_entries(1, 0);
