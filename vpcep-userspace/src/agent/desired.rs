//! Pure: the feed's objects → the map contents this node should have.
//!
//! Ids in the maps: a VPC is its VNI; services and endpoints get dense u32 ids that
//! [`Ids`] assigns on first sight and keeps for the life of the process (an endpoint id
//! indexes the per-endpoint counters, so it must not move while its flows live).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use vpcep_common::{
    endpoint::{
        EP_ACCEPTED, EP_PERMITTED, EP_SRC_WHITELIST, EP_TOMBSTONE, Endpoint, EndpointKey, Fnv,
        IPPROTO_TCP, IPPROTO_UDP, LocalNic, NodeConfig, PortKey, PortTarget, ProxyTemplate,
        SVC_LOCAL, SVC_REMOTE, Service, TCP_PROXY_CLOSE, Timeouts, in_snat_range,
        proxy_header_mode, service_epoch, tcp_proxy_byte,
    },
    maps::{MAX_ENDPOINTS, MAX_SERVICES},
};

use crate::{
    dataplane::config::{parse_cidr, parse_mac},
    domain::{PortMapping, permits},
};

// The feed's documents, trimmed to the fields `compute` reads (parsed once, when the change
// arrives: a whole JSON document per object costs about ten times as much memory).

#[derive(Debug, Deserialize)]
struct VpcRec {
    vni: u32,
}

#[derive(Debug, Deserialize)]
struct SubnetRec {
    gateway_ip: String,
    /// Absent in documents written before the field existed: the default address.
    #[serde(default)]
    dns_address: Option<String>,
}

/// A NIC of the inventory.
#[derive(Debug, Deserialize)]
pub struct PortRec {
    pub vpc_id: String,
    pub subnet_id: String,
    pub ip: String,
    pub mac: String,
    pub node: String,
}

#[derive(Debug, Deserialize)]
struct NodeRec {
    underlay_ip: String,
    snat_ip: String,
}

#[derive(Debug, Deserialize)]
struct ServiceRec {
    project_id: String,
    service_type: String,
    port_id: String,
    vpc_id: String,
    status: String,
    ip: String,
    ports: Vec<PortMapping>,
    tcp_proxy: String,
    /// Where the PROXY header goes: `on_first_ack` (absent: the default) or
    /// `on_first_data`.
    #[serde(default)]
    proxy_header_placement: Option<String>,
    /// The default limits of the service's endpoints (0 = none); absent in documents
    /// written before limits existed.
    #[serde(default)]
    max_connections: u32,
    #[serde(default)]
    max_new_connections_per_second: u32,
}

#[derive(Debug, Deserialize)]
struct EndpointRec {
    project_id: String,
    domain_id: String,
    service_id: String,
    status: String,
    vpc_id: String,
    ip: String,
    marker_id: i64,
    whitelist: Vec<String>,
    enable_whitelist: bool,
    /// The consumer's own limits, if set: they can only lower the service's.
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_new_connections_per_second: Option<u32>,
    /// The names the control plane gave it (only while accepted with `enable_dns`).
    #[serde(default)]
    dns_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PermissionRec {
    service_id: String,
    permission: String,
}

/// Objects of one kind by id. Shared pointers make the copy handed to the owner thread on
/// every update cheap.
type Objects<T> = BTreeMap<Arc<str>, Arc<T>>;

/// The objects of the feed this node uses, by kind and id.
#[derive(Debug, Default, Clone)]
pub struct FeedState {
    vpcs: Objects<VpcRec>,
    subnets: Objects<SubnetRec>,
    ports: Objects<PortRec>,
    nodes: Objects<NodeRec>,
    services: Objects<ServiceRec>,
    endpoints: Objects<EndpointRec>,
    permissions: Objects<PermissionRec>,
}

/// Stores (or on `put == false` removes) one object. A document that does not parse is
/// logged and dropped, so a newer control plane's document never stops the node.
fn upsert<T: DeserializeOwned>(map: &mut Objects<T>, kind: &str, id: &str, put: bool, v: Value) {
    if !put {
        map.remove(id);
        return;
    }
    match T::deserialize(v) {
        Ok(t) => {
            map.insert(Arc::from(id), Arc::new(t));
        }
        Err(e) => {
            tracing::warn!(kind, id, error = %e, "skipping an object that does not parse");
            map.remove(id);
        }
    }
}

impl FeedState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one change (`op` = `put` with the whole object, or `delete`). Kinds the node
    /// does not use are ignored.
    pub fn apply(&mut self, kind: &str, id: &str, op: &str, object: Value) {
        let put = op != "delete" && !object.is_null();
        match kind {
            "vpc" => upsert(&mut self.vpcs, kind, id, put, object),
            "subnet" => upsert(&mut self.subnets, kind, id, put, object),
            "port" => upsert(&mut self.ports, kind, id, put, object),
            "node" => upsert(&mut self.nodes, kind, id, put, object),
            "endpoint_service" => upsert(&mut self.services, kind, id, put, object),
            "endpoint" => upsert(&mut self.endpoints, kind, id, put, object),
            "permission" => upsert(&mut self.permissions, kind, id, put, object),
            _ => {}
        }
    }

    /// Stores the object `d` holds, parsed straight into its record (no intermediate JSON
    /// value). Unlike [`FeedState::apply`], a document that does not parse is an error: the
    /// deserializer cannot skip the rest of it.
    pub(super) fn put_from<'de, D: serde::Deserializer<'de>>(
        &mut self,
        kind: &str,
        id: &str,
        d: D,
    ) -> Result<(), D::Error> {
        fn put<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
            map: &mut Objects<T>,
            id: &str,
            d: D,
        ) -> Result<(), D::Error> {
            map.insert(Arc::from(id), Arc::new(T::deserialize(d)?));
            Ok(())
        }
        match kind {
            "vpc" => put(&mut self.vpcs, id, d),
            "subnet" => put(&mut self.subnets, id, d),
            "port" => put(&mut self.ports, id, d),
            "node" => put(&mut self.nodes, id, d),
            "endpoint_service" => put(&mut self.services, id, d),
            "endpoint" => put(&mut self.endpoints, id, d),
            "permission" => put(&mut self.permissions, id, d),
            _ => serde::de::IgnoredAny::deserialize(d).map(|_| ()),
        }
    }

    pub fn len(&self) -> usize {
        self.vpcs.len()
            + self.subnets.len()
            + self.ports.len()
            + self.nodes.len()
            + self.services.len()
            + self.endpoints.len()
            + self.permissions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoint names of every VPC, for the node resolver: (VNI, endpoint id, name,
    /// address) of each accepted endpoint's `dns_names`.
    pub fn dns_records(&self) -> impl Iterator<Item = (u32, &str, &str, Ipv4Addr)> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.status == "accepted" && !e.dns_names.is_empty())
            .filter_map(|(id, e)| {
                let vni = self.vpcs.get(e.vpc_id.as_str())?.vni;
                let ip = e.ip.parse::<Ipv4Addr>().ok()?;
                Some(
                    e.dns_names
                        .iter()
                        .map(move |n| (vni, &**id, n.as_str(), ip)),
                )
            })
            .flatten()
    }

    /// Whether the objects the resolver's table is built from (VPCs, subnets, NICs,
    /// endpoints) are the very same in `other`: a state shares the records it did not
    /// change with the one before, so this is a pointer comparison per object.
    pub fn same_dns_inputs(&self, other: &FeedState) -> bool {
        fn same<T>(a: &Objects<T>, b: &Objects<T>) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
        }
        same(&self.vpcs, &other.vpcs)
            && same(&self.subnets, &other.subnets)
            && same(&self.ports, &other.ports)
            && same(&self.endpoints, &other.endpoints)
    }

    /// A local NIC's VPC (id and VNI) and its subnet's DNS address, for the resolver.
    pub fn nic_dns(&self, port_id: &str) -> Option<(&str, u32, Ipv4Addr)> {
        let p = self.ports.get(port_id)?;
        let vni = self.vpcs.get(p.vpc_id.as_str())?.vni;
        let addr = match self
            .subnets
            .get(p.subnet_id.as_str())?
            .dns_address
            .as_deref()
        {
            Some(a) => a.parse().ok()?,
            None => crate::domain::DEFAULT_DNS_ADDRESS,
        };
        Some((p.vpc_id.as_str(), vni, addr))
    }

    pub fn port(&self, id: &str) -> Option<&PortRec> {
        self.ports.get(id).map(Arc::as_ref)
    }
}

/// Dense ids for services and endpoints, stable for the life of the process, and across
/// restarts: [`Ids::seed`] takes them back from the pinned endpoint map (by marker id), so
/// a restarted agent does not renumber what live flows and counters refer to.
#[derive(Debug, Default)]
pub struct Ids {
    services: HashMap<String, u32>,
    endpoints: HashMap<String, u32>,
    used_services: HashSet<u32>,
    used_endpoints: HashSet<u32>,
    /// marker id → (endpoint id, service id) found in the maps at start.
    seeds: HashMap<u32, (u32, u32)>,
    next_service: u32,
    next_endpoint: u32,
    /// Endpoint ids given out (not taken back from the maps) since the last
    /// [`Ids::take_fresh`]: their flow accounting may hold an earlier run's counts.
    fresh: Vec<u32>,
}

fn assign(
    map: &mut HashMap<String, u32>,
    used: &mut HashSet<u32>,
    next: &mut u32,
    id: &str,
    max: u32,
) -> Option<u32> {
    if let Some(v) = map.get(id) {
        return Some(*v);
    }
    // Id 0 is left unused so that a zeroed value never names a real object.
    let mut n = (*next).max(1);
    while used.contains(&n) {
        n = n.checked_add(1)?;
    }
    if n >= max {
        return None;
    }
    *next = n + 1;
    used.insert(n);
    map.insert(id.to_owned(), n);
    Some(n)
}

impl Ids {
    /// Remembers the ids of endpoints already in the kernel map.
    pub fn seed<'a>(&mut self, existing: impl Iterator<Item = &'a Endpoint>) {
        // A tombstone names no endpoint (its ids are zero).
        for e in existing.filter(|e| e.flags & EP_TOMBSTONE == 0) {
            self.seeds
                .insert(e.marker_id, (e.endpoint_id, e.service_id));
        }
    }

    /// Ids for an endpoint and its service, reusing seeded ones when free.
    fn for_endpoint(&mut self, ep: &str, marker: u32, svc: &str) -> Option<(u32, u32)> {
        if !self.endpoints.contains_key(ep)
            && let Some((e, s)) = self.seeds.remove(&marker)
        {
            if !self.used_endpoints.contains(&e) {
                self.used_endpoints.insert(e);
                self.endpoints.insert(ep.to_owned(), e);
            }
            if !self.services.contains_key(svc) && !self.used_services.contains(&s) {
                self.used_services.insert(s);
                self.services.insert(svc.to_owned(), s);
            }
        }
        let s = assign(
            &mut self.services,
            &mut self.used_services,
            &mut self.next_service,
            svc,
            MAX_SERVICES,
        )?;
        let known = self.endpoints.contains_key(ep);
        let e = assign(
            &mut self.endpoints,
            &mut self.used_endpoints,
            &mut self.next_endpoint,
            ep,
            MAX_ENDPOINTS,
        )?;
        if !known {
            self.fresh.push(e);
        }
        Some((s, e))
    }

    /// The endpoint ids newly given out since the last call; a seeded id is not among
    /// them (its flows and their accounting live on).
    pub fn take_fresh(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.fresh)
    }

    /// The id an endpoint was given, if any.
    pub fn endpoint_of(&self, id: &str) -> Option<u32> {
        self.endpoints.get(id).copied()
    }

    /// Every (endpoint UUID, map id) assigned so far.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, u32)> {
        self.endpoints.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// What the node itself contributes: its name, node-local settings and the interfaces
/// present right now (inventory port id → host-side ifindex).
#[derive(Debug, Clone)]
pub struct Local {
    pub node_name: String,
    pub vmac: [u8; 6],
    pub snat_ports: (u16, u16),
    pub toa_kind: u8,
    pub timeouts: Timeouts,
    pub nics: BTreeMap<String, u32>,
    /// Whether the node resolver serves the NICs (`DNS_NICS` is then filled).
    pub dns: bool,
}

/// The complete contents of the maps the agent owns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub node: Option<NodeConfig>,
    /// SNAT address → underlay address of its node, for every node.
    pub snat_owners: BTreeMap<u32, u32>,
    pub nics: BTreeMap<u32, LocalNic>,
    pub services: BTreeMap<u32, Service>,
    pub ports: BTreeMap<PortKey, PortTarget>,
    /// (endpoint id, source address be, prefix length).
    pub sources: BTreeSet<(u32, u32, u32)>,
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// Endpoint id → the TLVs of its PROXY header, for endpoints of services that send one.
    pub proxy_templates: BTreeMap<u32, ProxyTemplate>,
    /// Local NICs (ifindex) that are the backend of an available service: the only VMs the
    /// overlay delivers to.
    pub backend_nics: BTreeSet<u32>,
    /// Local NIC (ifindex) → its subnet's DNS address (network order), for the NICs the
    /// resolver serves.
    pub dns_nics: BTreeMap<u32, u32>,
}

/// An endpoint's epoch: its service's ([`service_epoch`]) combined with its source
/// whitelist (on or off, and the rules), so that narrowing the whitelist or turning it on
/// re-checks the established flows too.
pub fn endpoint_epoch(service_epoch: u32, whitelist: Option<&BTreeSet<(u32, u32)>>) -> u32 {
    let mut h = Fnv::new();
    h.bytes(&service_epoch.to_ne_bytes());
    match whitelist {
        None => h.bytes(&[0]),
        Some(rules) => {
            h.bytes(&[1]);
            for (src, len) in rules {
                h.bytes(&src.to_ne_bytes());
                h.bytes(&len.to_ne_bytes());
            }
        }
    }
    h.0
}

/// The smaller of the limits set (0 = none).
pub fn effective_limit(service: u32, endpoint: Option<u32>) -> u32 {
    match (service, endpoint.unwrap_or(0)) {
        (0, e) => e,
        (s, 0) => s,
        (s, e) => s.min(e),
    }
}

/// Whether new flows may be opened through an endpoint with these flags.
pub fn usable(flags: u32) -> bool {
    flags & (EP_ACCEPTED | EP_PERMITTED | EP_TOMBSTONE) == EP_ACCEPTED | EP_PERMITTED
}

/// The value that makes an endpoint's address fail closed after the endpoint left.
pub const TOMBSTONE: Endpoint = Endpoint {
    endpoint_id: 0,
    service_id: 0,
    marker_id: 0,
    flags: EP_TOMBSTONE,
    epoch: 0,
    generation: 0,
    max_flows: 0,
    new_flows_per_sec: 0,
};

/// Gives each endpoint of `want` its generation: the one `had` (what the maps hold) has
/// for the same endpoint at the same key, unless the endpoint just became usable again;
/// otherwise a fresh one from `fresh`, which must not return 0. So a flow opened before a
/// revocation, or through an earlier endpoint at the same address, never passes again.
pub fn carry_generations(
    want: &mut BTreeMap<EndpointKey, Endpoint>,
    had: &BTreeMap<EndpointKey, Endpoint>,
    mut fresh: impl FnMut() -> u32,
) {
    for (k, e) in want.iter_mut() {
        if e.flags & EP_TOMBSTONE != 0 {
            continue;
        }
        e.generation = match had.get(k) {
            Some(old)
                if old.flags & EP_TOMBSTONE == 0
                    && old.generation != 0
                    && old.endpoint_id == e.endpoint_id
                    && old.marker_id == e.marker_id
                    && (usable(old.flags) || !usable(e.flags)) =>
            {
                old.generation
            }
            _ => fresh(),
        };
    }
}

/// A random generation (never 0, which no live endpoint has).
pub fn random_generation() -> u32 {
    loop {
        let g: u32 = rand::random();
        if g != 0 {
            return g;
        }
    }
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_be(s: &str) -> Option<u32> {
    s.parse::<Ipv4Addr>().ok().map(be)
}

fn mac(s: &str) -> Option<[u8; 6]> {
    parse_mac("mac", s).ok()
}

fn cidr(s: &str) -> Option<(u32, u32)> {
    let net = parse_cidr("cidr", s).ok()?;
    Some((be(net.network()), u32::from(net.prefix())))
}

/// Unknown names (a newer control plane's) give `close`: nothing is inserted.
fn tcp_proxy(s: &str, placement: Option<&str>) -> u8 {
    tcp_proxy_byte(s, placement).unwrap_or(TCP_PROXY_CLOSE)
}

/// Computes the desired map contents for this node.
pub fn compute(state: &FeedState, local: &Local, ids: &mut Ids) -> Desired {
    let mut d = Desired {
        node: node_config(state, local),
        snat_owners: snat_owners(state),
        ..Desired::default()
    };
    let mut perms: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in state.permissions.values() {
        perms
            .entry(p.service_id.as_str())
            .or_default()
            .push(p.permission.as_str());
    }
    let ctx = Ctx {
        state,
        local,
        local_vpcs: local_nics(state, local, &mut d),
        perms,
    };
    // The VMs that serve an endpoint service: whatever the overlay brings is for them.
    for svc in state.services.values() {
        if svc.status == "available"
            && let Some(ifindex) = local.nics.get(svc.port_id.as_str())
        {
            d.backend_nics.insert(*ifindex);
        }
    }
    for (ep_id, ep) in &state.endpoints {
        ctx.add_endpoint(&mut d, ids, ep_id, ep);
    }
    d
}

/// The node's own entry, once the control plane gave it a SNAT address.
fn node_config(state: &FeedState, local: &Local) -> Option<NodeConfig> {
    let snat = state
        .nodes
        .get(local.node_name.as_str())
        .and_then(|n| ip_be(&n.snat_ip))
        .filter(|ip| in_snat_range(*ip))?;
    Some(NodeConfig {
        snat_ip_be: snat,
        port_lo: local.snat_ports.0,
        port_hi: local.snat_ports.1,
        vmac: local.vmac,
        toa_kind: local.toa_kind,
        _pad: 0,
        timeouts: local.timeouts,
    })
}

/// SNAT address → underlay address, for every node.
fn snat_owners(state: &FeedState) -> BTreeMap<u32, u32> {
    let mut owners = BTreeMap::new();
    for n in state.nodes.values() {
        if let (Some(snat), Some(underlay)) = (ip_be(&n.snat_ip), ip_be(&n.underlay_ip))
            && in_snat_range(snat)
        {
            owners.insert(snat, underlay);
        }
    }
    owners
}

/// Puts the local VM NICs into `d`; returns the VPCs (by VNI) that have one here.
fn local_nics(state: &FeedState, local: &Local, d: &mut Desired) -> BTreeSet<u32> {
    let mut local_vpcs = BTreeSet::new();
    for (port_id, ifindex) in &local.nics {
        let Some(p) = state.ports.get(port_id.as_str()) else {
            continue;
        };
        let vni = state.vpcs.get(p.vpc_id.as_str()).map(|v| v.vni);
        let (Some(vpc), Some(ip), Some(m)) = (vni, ip_be(&p.ip), mac(&p.mac)) else {
            continue;
        };
        let subnet = state.subnets.get(p.subnet_id.as_str());
        let gateway = subnet.and_then(|s| ip_be(&s.gateway_ip)).unwrap_or(0);
        if local.dns
            && let Some(s) = subnet
        {
            let dns = match s.dns_address.as_deref() {
                Some(a) => ip_be(a),
                None => Some(be(crate::domain::DEFAULT_DNS_ADDRESS)),
            };
            if let Some(a) = dns {
                d.dns_nics.insert(*ifindex, a);
            }
        }
        d.nics.insert(
            *ifindex,
            LocalNic {
                vpc_id: vpc,
                ip_be: ip,
                gateway_be: gateway,
                mac: m,
                _pad: [0; 2],
            },
        );
        local_vpcs.insert(vpc);
    }
    local_vpcs
}

/// The port mappings of a service, under its map id.
fn service_ports(service_id: u32, ports: &[PortMapping]) -> BTreeMap<PortKey, PortTarget> {
    let mut out = BTreeMap::new();
    for pm in ports {
        let proto = match pm.protocol.as_str() {
            "UDP" => IPPROTO_UDP,
            _ => IPPROTO_TCP,
        };
        out.insert(
            PortKey {
                service_id,
                client_port_be: pm.client_port.to_be(),
                proto,
                _pad: 0,
            },
            PortTarget {
                server_port_be: pm.server_port.to_be(),
                _pad: 0,
            },
        );
    }
    out
}

/// What each endpoint of [`compute`] is judged against.
struct Ctx<'a> {
    state: &'a FeedState,
    local: &'a Local,
    /// The VPCs (by VNI) with a local NIC: only their endpoints concern this node.
    local_vpcs: BTreeSet<u32>,
    /// The permission strings of each service, by service id.
    perms: HashMap<&'a str, Vec<&'a str>>,
}

impl Ctx<'_> {
    fn vni(&self, vpc: &str) -> Option<u32> {
        self.state.vpcs.get(vpc).map(|v| v.vni)
    }

    /// The `SERVICES` entry for `svc`, or `None` when its endpoints get nothing here.
    fn service(&self, svc: &ServiceRec) -> Option<Service> {
        // A suspended service lost its backend NIC (e.g. with its node): its endpoints stay,
        // as unreachable, so that their traffic is dropped and counted (`drop_remote_backend`)
        // instead of passing untouched.
        if !matches!(svc.status.as_str(), "available" | "suspended") {
            return None;
        }
        let backend = (self.state.ports)
            .get_key_value(svc.port_id.as_str())
            .filter(|_| svc.status == "available");
        let (Some(backend_vni), Some(backend_ip)) = (self.vni(&svc.vpc_id), ip_be(&svc.ip)) else {
            return None;
        };
        let backend_mac = backend.and_then(|(_, b)| mac(&b.mac)).unwrap_or_default();
        let (location, ifindex, remote) = match backend {
            None => (SVC_REMOTE, 0, 0),
            Some((backend_id, backend)) => match self.local.nics.get(backend_id.as_ref()) {
                Some(ifindex) => (SVC_LOCAL, *ifindex, 0),
                None if backend.node == self.local.node_name => return None, // here, not attached yet
                None => match (self.state.nodes)
                    .get(backend.node.as_str())
                    .and_then(|n| ip_be(&n.underlay_ip))
                {
                    Some(u) => (SVC_REMOTE, 0, u),
                    None => (SVC_REMOTE, 0, 0),
                },
            },
        };
        Some(Service {
            backend_ip_be: backend_ip,
            backend_vpc_id: backend_vni,
            ifindex,
            remote_node_be: remote,
            backend_mac,
            location,
            tcp_proxy: tcp_proxy(&svc.tcp_proxy, svc.proxy_header_placement.as_deref()),
        })
    }

    /// `EP_ACCEPTED` and `EP_PERMITTED` as the endpoint's state and the service's
    /// permissions give them.
    fn access_flags(&self, svc_id: &str, svc: &ServiceRec, ep: &EndpointRec) -> u32 {
        let mut flags = 0;
        if ep.status == "accepted" {
            flags |= EP_ACCEPTED;
        }
        let svc_perms = self
            .perms
            .get(svc_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if permits(
            &svc.project_id,
            &svc.service_type,
            svc_perms.iter().copied(),
            &ep.project_id,
            &ep.domain_id,
        ) {
            flags |= EP_PERMITTED;
        }
        flags
    }

    /// Puts an endpoint with its service, port mappings and whitelist into `d`, if it
    /// concerns this node (`None` when it does not).
    fn add_endpoint(
        &self,
        d: &mut Desired,
        ids: &mut Ids,
        ep_id: &str,
        ep: &EndpointRec,
    ) -> Option<()> {
        let ep_vni = self.vni(&ep.vpc_id)?;
        if !self.local_vpcs.contains(&ep_vni) || matches!(ep.status.as_str(), "failed" | "deleting")
        {
            return None;
        }
        let ep_ip = ip_be(&ep.ip)?;
        let (svc_id, svc) = self.state.services.get_key_value(ep.service_id.as_str())?;
        let service = self.service(svc)?;
        let marker_id = u32::try_from(ep.marker_id).unwrap_or(u32::MAX);
        let Some((service_id, endpoint_id)) = ids.for_endpoint(ep_id, marker_id, svc_id) else {
            tracing::warn!(endpoint = %ep_id, "out of service or endpoint ids");
            return None;
        };
        d.services.insert(service_id, service);
        let svc_ports = service_ports(service_id, &svc.ports);
        let svc_epoch = service_epoch(&service, &svc_ports);
        d.ports.extend(svc_ports);
        let mut flags = self.access_flags(svc_id, svc, ep);
        let mut rules = BTreeSet::new();
        if ep.enable_whitelist {
            flags |= EP_SRC_WHITELIST;
            for w in &ep.whitelist {
                if let Some((src, len)) = cidr(w) {
                    d.sources.insert((endpoint_id, src, len));
                    rules.insert((src, len));
                }
            }
        }
        let epoch = endpoint_epoch(svc_epoch, ep.enable_whitelist.then_some(&rules));
        if proxy_header_mode(service.tcp_proxy) {
            match ProxyTemplate::new(ep_id, marker_id, &ep.vpc_id, ep_vni) {
                Some(t) => {
                    d.proxy_templates.insert(endpoint_id, t);
                }
                None => tracing::warn!(endpoint = %ep_id, "ids too long for a PROXY header"),
            }
        }
        d.endpoints.insert(
            EndpointKey {
                vpc_id: ep_vni,
                ip_be: ep_ip,
            },
            Endpoint {
                endpoint_id,
                service_id,
                marker_id,
                flags,
                epoch,
                // Given by `carry_generations`, which knows what the maps hold.
                generation: 0,
                max_flows: effective_limit(svc.max_connections, ep.max_connections),
                new_flows_per_sec: effective_limit(
                    svc.max_new_connections_per_second,
                    ep.max_new_connections_per_second,
                ),
            },
        );
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn state() -> FeedState {
        let mut s = FeedState::new();
        let mut put = |kind: &str, id: &str, v: Value| s.apply(kind, id, "put", v);
        put(
            "vpc",
            "va",
            json!({"id":"va","project_id":"pc","name":"","cidr":"10.0.0.0/24","vni":11,"created_at":""}),
        );
        put(
            "vpc",
            "vb",
            json!({"id":"vb","project_id":"pp","name":"","cidr":"10.0.0.0/24","vni":22,"created_at":""}),
        );
        put(
            "subnet",
            "sa",
            json!({"id":"sa","project_id":"pc","vpc_id":"va","cidr":"10.0.0.0/24","gateway_ip":"10.0.0.1","created_at":""}),
        );
        put(
            "port",
            "pc",
            json!({"id":"pc","project_id":"pc","vpc_id":"va","subnet_id":"sa","ip":"10.0.0.2","mac":"02:00:00:00:00:02","node":"n1","created_at":""}),
        );
        put(
            "port",
            "pb",
            json!({"id":"pb","project_id":"pp","vpc_id":"vb","subnet_id":"sb","ip":"10.0.0.5","mac":"02:00:00:00:00:05","node":"n2","created_at":""}),
        );
        put(
            "node",
            "n1",
            json!({"name":"n1","underlay_ip":"192.0.2.1","snat_ip":"198.19.128.1","created_at":""}),
        );
        put(
            "node",
            "n2",
            json!({"name":"n2","underlay_ip":"192.0.2.2","snat_ip":"198.19.128.2","created_at":""}),
        );
        put("endpoint_service", "s1", service("10.0.0.5", 80));
        put("endpoint", "e1", endpoint("pendingAcceptance"));
        s
    }

    fn service(ip: &str, server_port: u16) -> Value {
        json!({
        "id":"s1","project_id":"pp","domain_id":"pp","port_id":"pb","vpc_id":"vb","service_name":"x",
        "server_type":"VM","service_type":"interface","approval_enabled":true,"status":"available",
        "ip":ip,"ports":[{"client_port":8080,"server_port":server_port,"protocol":"TCP"}],
        "tcp_proxy":"close","tags":[],"description":"","enable_policy":false,"ip_version":"ipv4",
        "created_at":"","updated_at":"","created_rev":1,"updated_rev":1})
    }

    fn endpoint(status: &str) -> Value {
        json!({
        "id":"e1","project_id":"pc","domain_id":"pc","service_id":"s1","service_name":"x",
        "service_type":"interface","service_project_id":"pp","status":status,
        "vpc_id":"va","subnet_id":"sa","ip":"10.0.0.100","marker_id":9,"enable_dns":false,
        "dns_names":[],"whitelist":["10.0.0.0/25"],"enable_whitelist":true,"routetables":[],
        "description":"","connection_description":"","policy_statement":null,
        "policy_document":null,"tags":[],"created_at":"","updated_at":"","created_rev":9,
        "updated_rev":9})
    }

    fn local() -> Local {
        Local {
            node_name: "n1".into(),
            vmac: [2, 0xfe, 0, 0, 0, 1],
            snat_ports: (1024, 65535),
            toa_kind: 254,
            timeouts: Timeouts::default(),
            nics: [("pc".to_owned(), 7)].into(),
            dns: true,
        }
    }

    #[test]
    fn endpoint_epoch_follows_its_service_and_port_mappings() {
        let mut ids = Ids::default();
        let mut s = state();
        let epoch = |s: &FeedState, ids: &mut Ids| {
            compute(s, &local(), ids)
                .endpoints
                .values()
                .next()
                .map(|e| e.epoch)
                .unwrap()
        };
        let e0 = epoch(&s, &mut ids);
        assert_eq!(e0, epoch(&s, &mut ids), "stable while nothing changes");
        // The endpoint's own state is not part of it.
        s.apply("endpoint", "e1", "put", endpoint("accepted"));
        assert_eq!(e0, epoch(&s, &mut ids));
        // A port mapping to another server port changes it, and so does the backend.
        s.apply("endpoint_service", "s1", "put", service("10.0.0.5", 81));
        let e1 = epoch(&s, &mut ids);
        assert_ne!(e0, e1);
        s.apply("endpoint_service", "s1", "put", service("10.0.0.6", 81));
        assert_ne!(e1, epoch(&s, &mut ids));
    }

    fn endpoint_with(whitelist: &[&str], enabled: bool, limits: Value) -> Value {
        let mut e = endpoint("accepted");
        e["whitelist"] = json!(whitelist);
        e["enable_whitelist"] = json!(enabled);
        if let (Some(e), Some(l)) = (e.as_object_mut(), limits.as_object()) {
            e.extend(l.clone());
        }
        e
    }

    fn the_endpoint(s: &FeedState, ids: &mut Ids) -> Endpoint {
        compute(s, &local(), ids)
            .endpoints
            .values()
            .next()
            .copied()
            .unwrap()
    }

    #[test]
    fn endpoint_epoch_follows_its_source_whitelist() {
        let mut ids = Ids::default();
        let mut s = state();
        let mut epoch = |w: &[&str], on: bool| {
            s.apply("endpoint", "e1", "put", endpoint_with(w, on, json!({})));
            the_endpoint(&s, &mut ids).epoch
        };
        let two = epoch(&["10.0.0.0/25", "10.0.0.128/26"], true);
        assert_eq!(two, epoch(&["10.0.0.128/26", "10.0.0.0/25"], true));
        // A CIDR removed, or the whitelist turned off or on, changes it.
        let one = epoch(&["10.0.0.0/25"], true);
        assert_ne!(one, two);
        let off = epoch(&["10.0.0.0/25"], false);
        assert_ne!(off, one);
        // Off, the rules do not count; on with none is not the same as off.
        assert_eq!(off, epoch(&[], false));
        assert_ne!(off, epoch(&[], true));
    }

    #[test]
    fn limits_are_the_smaller_of_the_service_and_the_endpoint() {
        let mut ids = Ids::default();
        let mut s = state();
        let limits = |s: &FeedState, ids: &mut Ids| {
            let e = the_endpoint(s, ids);
            (e.max_flows, e.new_flows_per_sec)
        };
        // A service document from before limits: none.
        assert_eq!(limits(&s, &mut ids), (0, 0));
        let mut svc = service("10.0.0.5", 80);
        svc["max_connections"] = json!(3000);
        svc["max_new_connections_per_second"] = json!(0);
        s.apply("endpoint_service", "s1", "put", svc);
        assert_eq!(limits(&s, &mut ids), (3000, 0));
        for (own, want) in [
            (
                json!({"max_connections": 2, "max_new_connections_per_second": 50}),
                (2, 50),
            ),
            // A consumer cannot raise the provider's limit.
            (json!({"max_connections": 5000}), (3000, 0)),
            (
                json!({"max_connections": 0, "max_new_connections_per_second": null}),
                (3000, 0),
            ),
        ] {
            s.apply("endpoint", "e1", "put", endpoint_with(&[], false, own));
            assert_eq!(limits(&s, &mut ids), want);
        }
        assert_eq!(effective_limit(0, Some(7)), 7);
        assert_eq!(effective_limit(9, None), 9);
        assert_eq!(effective_limit(0, None), 0);
    }

    #[test]
    fn generations_are_new_for_a_new_or_usable_again_endpoint_only() {
        let key = EndpointKey {
            vpc_id: 11,
            ip_be: 100,
        };
        let ep = |id, flags, generation| Endpoint {
            endpoint_id: id,
            service_id: 1,
            marker_id: id * 10,
            flags,
            generation,
            ..Endpoint::default()
        };
        let usable_flags = EP_ACCEPTED | EP_PERMITTED;
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            1000 + n
        };
        let mut gen_of = |want: Endpoint, had: Option<Endpoint>| {
            let mut w: BTreeMap<_, _> = [(key, want)].into();
            let h: BTreeMap<_, _> = had.map(|h| (key, h)).into_iter().collect();
            carry_generations(&mut w, &h, &mut fresh);
            w[&key].generation
        };
        // New on the node.
        assert_eq!(gen_of(ep(1, usable_flags, 0), None), 1001);
        // Unchanged while usable, and when it stops being usable (flows are cut by the flags).
        assert_eq!(
            gen_of(ep(1, usable_flags, 0), Some(ep(1, usable_flags, 7))),
            7
        );
        assert_eq!(
            gen_of(ep(1, EP_PERMITTED, 0), Some(ep(1, usable_flags, 7))),
            7
        );
        assert_eq!(
            gen_of(ep(1, EP_ACCEPTED, 0), Some(ep(1, EP_PERMITTED, 7))),
            7
        );
        // Usable again (re-accepted, re-permitted): new.
        assert_eq!(
            gen_of(ep(1, usable_flags, 0), Some(ep(1, EP_PERMITTED, 7))),
            1002
        );
        assert_eq!(
            gen_of(ep(1, usable_flags, 0), Some(ep(1, EP_ACCEPTED, 7))),
            1003
        );
        // Another endpoint at the same key, or one replacing a tombstone: new.
        assert_eq!(
            gen_of(ep(2, usable_flags, 0), Some(ep(1, usable_flags, 7))),
            1004
        );
        assert_eq!(gen_of(ep(1, usable_flags, 0), Some(TOMBSTONE)), 1005);
        // A tombstone stays one.
        assert_eq!(gen_of(TOMBSTONE, Some(ep(1, usable_flags, 7))), 0);
        assert_ne!(random_generation(), 0);
    }

    #[test]
    fn dns_inputs_change_with_endpoints_not_with_permissions() {
        let a = state();
        let mut b = a.clone();
        assert!(b.same_dns_inputs(&a));
        b.apply(
            "permission",
            "x",
            "put",
            json!({"service_id": "s", "permission": "*"}),
        );
        assert!(b.same_dns_inputs(&a), "permissions do not name anything");
        let mut c = a.clone();
        c.apply("endpoint", "e-new", "delete", Value::Null);
        assert!(c.same_dns_inputs(&a), "deleting what is not there");
        let (id, _) = a.endpoints.iter().next().unwrap();
        c.apply("endpoint", id, "delete", Value::Null);
        assert!(!c.same_dns_inputs(&a));
    }

    #[test]
    fn overlay_delivers_to_local_backends_only() {
        let mut l = local();
        l.nics.insert("pb".to_owned(), 8);
        let d = compute(&state(), &l, &mut Ids::default());
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.backend_nics, [8].into());
        // Subnets without a DNS address have the default one.
        let dns = be(crate::domain::DEFAULT_DNS_ADDRESS);
        assert_eq!(d.dns_nics.get(&7), Some(&dns));
        l.dns = false;
        assert!(
            compute(&state(), &l, &mut Ids::default())
                .dns_nics
                .is_empty()
        );
        // Not available: not a backend.
        let mut s = state();
        let mut svc = service("10.0.0.5", 80);
        svc["status"] = json!("suspended");
        s.apply("endpoint_service", "s1", "put", svc);
        assert!(compute(&s, &l, &mut Ids::default()).backend_nics.is_empty());
    }

    #[test]
    fn fresh_ids_and_tombstones_in_the_seed() {
        let mut ids = Ids::default();
        ids.seed([TOMBSTONE, TOMBSTONE].iter());
        let mut s = state();
        let e = the_endpoint(&s, &mut ids);
        assert_eq!(e.endpoint_id, 1, "tombstones hold no id");
        assert_eq!(ids.take_fresh(), vec![1]);
        the_endpoint(&s, &mut ids);
        assert!(ids.take_fresh().is_empty(), "only once");
        // An id taken back from the maps keeps its accounting.
        let mut seeded = Ids::default();
        seeded.seed(
            [Endpoint {
                endpoint_id: 5,
                service_id: 3,
                marker_id: 9,
                ..Endpoint::default()
            }]
            .iter(),
        );
        assert_eq!(the_endpoint(&s, &mut seeded).endpoint_id, 5);
        assert!(seeded.take_fresh().is_empty());
        s.apply("endpoint", "e1", "delete", Value::Null);
        assert!(compute(&s, &local(), &mut ids).endpoints.is_empty());
    }

    #[test]
    fn remote_backend_pending_then_permitted() {
        let mut ids = Ids::default();
        let mut s = state();
        let d = compute(&s, &local(), &mut ids);
        assert_eq!(
            d.node.unwrap().snat_ip_be,
            be(Ipv4Addr::new(198, 19, 128, 1))
        );
        assert_eq!(d.nics[&7].vpc_id, 11);
        assert_eq!(
            d.snat_owners[&be(Ipv4Addr::new(198, 19, 128, 2))],
            be(Ipv4Addr::new(192, 0, 2, 2))
        );
        let svc = d.services[&1];
        assert_eq!(svc.location, SVC_REMOTE);
        assert_eq!(svc.remote_node_be, be(Ipv4Addr::new(192, 0, 2, 2)));
        let ep = d.endpoints.values().next().copied().unwrap();
        // Not accepted, and the consumer's domain is not whitelisted yet.
        assert_eq!(ep.flags, EP_SRC_WHITELIST);
        assert_eq!(d.sources.iter().next().unwrap().2, 25);
        s.apply(
            "permission",
            "w1",
            "put",
            json!({"id":"w1","service_id":"s1","project_id":"pp",
            "permission":"iam:domain::pc","permission_type":"domainId","description":"",
            "created_at":"","created_rev":10}),
        );
        let d2 = compute(&s, &local(), &mut ids);
        let ep2 = d2.endpoints.values().next().copied().unwrap();
        assert_eq!(ep2.flags, EP_SRC_WHITELIST | EP_PERMITTED);
        assert_eq!(ep2.endpoint_id, ep.endpoint_id, "ids are stable");
        // No local NIC in the consumer VPC: nothing for this node.
        let mut l = local();
        l.nics.clear();
        let d3 = compute(&s, &l, &mut ids);
        assert!(d3.endpoints.is_empty() && d3.services.is_empty());
        // A restarted agent takes the ids back from the map.
        let mut fresh = Ids::default();
        fresh.seed(
            [Endpoint {
                endpoint_id: 40,
                service_id: 30,
                marker_id: 9,
                flags: 0,
                epoch: 0,
                ..Endpoint::default()
            }]
            .iter(),
        );
        let d4 = compute(&s, &local(), &mut fresh);
        let ep4 = d4.endpoints.values().next().copied().unwrap();
        assert_eq!((ep4.endpoint_id, ep4.service_id), (40, 30));
        s.apply("endpoint", "e1", "delete", Value::Null);
        assert!(compute(&s, &local(), &mut ids).endpoints.is_empty());
    }

    #[test]
    fn bad_documents_and_unknown_kinds_are_skipped() {
        let mut s = state();
        let n = s.len();
        s.apply("future_kind", "f1", "put", json!({"anything": [1]}));
        assert_eq!(s.len(), n);
        assert_eq!(
            compute(&s, &local(), &mut Ids::default()).endpoints.len(),
            1
        );
        // A put that does not parse takes the object out rather than keeping the old one.
        s.apply(
            "endpoint",
            "e1",
            "put",
            json!({"id": "e1", "marker_id": "x"}),
        );
        assert_eq!(s.len(), n - 1);
        assert!(
            compute(&s, &local(), &mut Ids::default())
                .endpoints
                .is_empty()
        );
        assert_eq!(s.port("pb").map(|p| p.node.as_str()), Some("n2"));
    }
}
