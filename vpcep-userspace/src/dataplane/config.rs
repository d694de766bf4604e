//! A static map configuration (TOML) for development and tests: `vpcep dataplane run
//! --config FILE` fills the maps from it, the job the agent does from the control plane.
//!
//! ```toml
//! [node]
//! snat_ip = "198.19.128.10"
//! port_range = [20000, 60000]
//! vmac = "02:fe:00:00:00:01"
//!
//! [[nic]]
//! iface = "tapc"
//! vpc = 1
//! ip = "10.0.0.2"
//! mac = "02:00:00:00:00:02"
//! gateway = "10.0.0.1"
//!
//! [[service]]
//! id = 3
//! backend_ip = "10.0.0.5"
//! backend_vpc = 2
//! backend_iface = "tapb"
//! backend_mac = "02:00:00:00:00:05"
//! ports = [{ client = 8080, server = 80, protocol = "TCP" }]
//!
//! # [[service]] with its backend on another node: `remote_node` (its underlay address)
//! # instead of `backend_iface`, and an [overlay]:
//! # [overlay]
//! # device = "vx0"                      # VXLAN device in external mode (must exist)
//! # inner_mtu = 1450                    # underlay MTU − 50
//! # [[snat_owner]]                      # where replies to other nodes' SNAT addresses go
//! # snat_ip = "198.19.128.11"
//! # underlay_ip = "192.168.50.2"
//!
//! [[endpoint]]
//! id = 7
//! vpc = 1
//! ip = "10.0.0.100"
//! service = 3
//! accepted = true
//! whitelist = ["10.0.0.0/24"]
//! ```
use std::{net::Ipv4Addr, path::Path};

use ipnetwork::{IpNetworkError, Ipv4Network};
use serde::Deserialize;
use vpcep_common::endpoint::{
    DEFAULT_PORT_HI, DEFAULT_PORT_LO, EP_ACCEPTED, EP_PERMITTED, EP_SRC_WHITELIST, Endpoint,
    EndpointKey, IPPROTO_TCP, IPPROTO_UDP, LocalAddr, LocalNic, NodeConfig, PortKey, PortTarget,
    ProxyTemplate, SVC_LOCAL, SVC_REMOTE, Service, Timeouts, TunnelConfig, in_snat_range,
    proxy_header_mode, service_epoch, tcp_proxy_byte,
};

use super::{Dataplane, DataplaneError};

/// A configuration file that cannot be read, parsed or validated: the map configuration
/// here and the agent's (`crate::agent::AgentConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
}

/// The error naming a bad field.
pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> FileError {
    FileError::Invalid {
        field: field.into(),
        msg: msg.into(),
    }
}

/// Reads a configuration file whole.
pub fn read_file(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub nic: Vec<NicSection>,
    #[serde(default)]
    pub service: Vec<ServiceSection>,
    #[serde(default)]
    pub endpoint: Vec<EndpointSection>,
    #[serde(default)]
    pub overlay: Option<OverlaySection>,
    #[serde(default)]
    pub snat_owner: Vec<SnatOwnerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySection {
    pub device: String,
    #[serde(default = "default_inner_mtu")]
    pub inner_mtu: u16,
}

fn default_inner_mtu() -> u16 {
    1500 - vpcep_common::endpoint::VXLAN_OVERHEAD
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatOwnerSection {
    pub snat_ip: Ipv4Addr,
    pub underlay_ip: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub snat_ip: Ipv4Addr,
    #[serde(default = "default_ports")]
    pub port_range: [u16; 2],
    pub vmac: String,
    #[serde(default)]
    pub timeouts: Option<TimeoutSection>,
}

fn default_ports() -> [u16; 2] {
    [DEFAULT_PORT_LO, DEFAULT_PORT_HI]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSection {
    pub iface: String,
    pub vpc: u32,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub id: u32,
    pub backend_ip: Ipv4Addr,
    pub backend_vpc: u32,
    /// Local backend: its NIC. Remote backend: `remote_node` instead.
    #[serde(default)]
    pub backend_iface: Option<String>,
    #[serde(default)]
    pub remote_node: Option<Ipv4Addr>,
    pub backend_mac: String,
    pub ports: Vec<PortSection>,
    /// `close` (default), `toa_open`, `proxy_open`, `open` or `proxy_vni`.
    #[serde(default)]
    pub tcp_proxy: Option<String>,
    /// `on_first_ack` (default) or `on_first_data`.
    #[serde(default)]
    pub proxy_header_placement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSection {
    pub client: u16,
    pub server: u16,
    pub protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub id: u32,
    pub vpc: u32,
    pub ip: Ipv4Addr,
    pub service: u32,
    #[serde(default)]
    pub accepted: bool,
    #[serde(default = "yes")]
    pub permitted: bool,
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Live flows the endpoint may hold; 0 (default) = no limit.
    #[serde(default)]
    pub max_flows: u32,
    /// New flows per second the endpoint may open; 0 (default) = no limit.
    #[serde(default)]
    pub new_flows_per_sec: u32,
}

fn yes() -> bool {
    true
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], FileError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(invalid(field, format!("{s:?} is not a MAC address")));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| invalid(field, format!("{s:?} is not a MAC address")))?;
    }
    Ok(mac)
}

/// Parses `a.b.c.d/n` (or a bare address as /32); the address may have host bits set.
pub fn parse_cidr(field: &str, s: &str) -> Result<Ipv4Network, FileError> {
    let bad_prefix = || invalid(field, format!("{s:?} has a bad prefix length"));
    // A netmask (`/255.255.255.0`), which the crate also takes, is not a prefix length.
    if s.split_once('/').is_some_and(|(_, p)| p.contains('.')) {
        return Err(bad_prefix());
    }
    s.parse().map_err(|e| match e {
        IpNetworkError::InvalidAddr(_) => invalid(field, format!("{s:?} is not an IPv4 CIDR")),
        _ => bad_prefix(),
    })
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Resolves an interface name in the caller's network namespace.
fn ifindex(field: &str, name: &str) -> Result<u32, FileError> {
    let c = std::ffi::CString::new(name).map_err(|_| invalid(field, "contains NUL"))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(invalid(field, format!("no interface {name:?}")));
    }
    Ok(idx)
}

impl MapConfig {
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_file(path)?;
        toml::from_str(&text).map_err(|source| FileError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Interfaces the programs should be attached to (every VM NIC and local backend NIC;
    /// the overlay device gets its own program).
    pub fn interfaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nic.iter().map(|n| n.iface.clone()).collect();
        for i in self.service.iter().filter_map(|s| s.backend_iface.as_ref()) {
            if !v.contains(i) {
                v.push(i.clone());
            }
        }
        v
    }

    /// Validates everything first, then writes the maps targets-first (node, NICs,
    /// services, port mappings, whitelists, and the endpoints that point at them last), so
    /// the programs never see an endpoint whose service is missing.
    pub fn apply(&self, dp: &mut Dataplane) -> Result<(), ConfigError> {
        let node = self.node_config()?;
        let nics = self.nics()?;
        let (services, ports) = self.services()?;
        let (endpoints, rules) = self.endpoints(&services, &ports)?;
        let plan = Plan {
            node,
            tunnel: self.tunnel()?,
            nics,
            services,
            ports,
            rules,
            endpoints,
        };
        Ok(plan.write(dp, &self.snat_owner)?)
    }

    fn node_config(&self) -> Result<NodeConfig, FileError> {
        let n = &self.node;
        if !in_snat_range(be(n.snat_ip)) {
            return Err(invalid("node.snat_ip", "must be inside 198.19.128.0/17"));
        }
        let [lo, hi] = n.port_range;
        if lo == 0 || hi < lo {
            return Err(invalid(
                "node.port_range",
                "must be [lo, hi] with 0 < lo <= hi",
            ));
        }
        Ok(NodeConfig {
            snat_ip_be: be(n.snat_ip),
            port_lo: lo,
            port_hi: hi,
            vmac: parse_mac("node.vmac", &n.vmac)?,
            toa_kind: 0,
            _pad: 0,
            timeouts: n
                .timeouts
                .as_ref()
                .map_or_else(Timeouts::default, |t| Timeouts {
                    tcp_syn: t.tcp_syn,
                    tcp_established: t.tcp_established,
                    tcp_closing: t.tcp_closing,
                    udp: t.udp,
                }),
        })
    }

    fn nics(&self) -> Result<Vec<(u32, LocalNic)>, FileError> {
        let mut nics = Vec::new();
        for (i, nic) in self.nic.iter().enumerate() {
            let f = format!("nic[{i}]");
            nics.push((
                ifindex(&format!("{f}.iface"), &nic.iface)?,
                LocalNic {
                    vpc_id: nic.vpc,
                    ip_be: be(nic.ip),
                    gateway_be: be(nic.gateway),
                    mac: parse_mac(&format!("{f}.mac"), &nic.mac)?,
                    _pad: [0; 2],
                },
            ));
        }
        Ok(nics)
    }

    fn services(&self) -> Result<(Services, Ports), FileError> {
        let mut services = Vec::new();
        let mut ports = Vec::new();
        for (i, s) in self.service.iter().enumerate() {
            let f = format!("service[{i}]");
            let (location, idx, remote) = match (&s.backend_iface, s.remote_node) {
                (Some(iface), None) => {
                    (SVC_LOCAL, ifindex(&format!("{f}.backend_iface"), iface)?, 0)
                }
                (None, Some(node)) => (SVC_REMOTE, 0, be(node)),
                _ => {
                    return Err(invalid(
                        format!("{f}.backend_iface"),
                        "give exactly one of backend_iface (local) and remote_node",
                    ));
                }
            };
            let tcp_proxy = tcp_proxy_byte(
                s.tcp_proxy.as_deref().unwrap_or("close"),
                s.proxy_header_placement.as_deref(),
            )
            .ok_or_else(|| {
                invalid(
                    format!("{f}.tcp_proxy"),
                    "must be close, toa_open, proxy_open, open or proxy_vni, with \
                     proxy_header_placement on_first_ack or on_first_data",
                )
            })?;
            services.push((
                s.id,
                Service {
                    backend_ip_be: be(s.backend_ip),
                    backend_vpc_id: s.backend_vpc,
                    ifindex: idx,
                    remote_node_be: remote,
                    backend_mac: parse_mac(&format!("{f}.backend_mac"), &s.backend_mac)?,
                    location,
                    tcp_proxy,
                },
            ));
            for (j, p) in s.ports.iter().enumerate() {
                ports.push(port_entry(&format!("{f}.ports[{j}]"), s.id, p)?);
            }
        }
        Ok((services, ports))
    }

    /// The endpoints and their source whitelist rules (endpoint id, source be, length).
    fn endpoints(
        &self,
        services: &[(u32, Service)],
        ports: &[(PortKey, PortTarget)],
    ) -> Result<(Endpoints, Rules), FileError> {
        let mut endpoints = Vec::new();
        let mut rules = Vec::new();
        for (i, e) in self.endpoint.iter().enumerate() {
            let f = format!("endpoint[{i}]");
            if !self.service.iter().any(|s| s.id == e.service) {
                return Err(invalid(
                    format!("{f}.service"),
                    format!("no service {}", e.service),
                ));
            }
            for (j, w) in e.whitelist.iter().enumerate() {
                let net = parse_cidr(&format!("{f}.whitelist[{j}]"), w)?;
                rules.push((e.id, be(net.ip()), u32::from(net.prefix())));
            }
            let mut flags = 0;
            if e.accepted {
                flags |= EP_ACCEPTED;
            }
            if e.permitted {
                flags |= EP_PERMITTED;
            }
            if !e.whitelist.is_empty() {
                flags |= EP_SRC_WHITELIST;
            }
            let epoch = services
                .iter()
                .find(|(id, _)| *id == e.service)
                .map(|(_, svc)| {
                    let mine = ports.iter().filter(|(k, _)| k.service_id == e.service);
                    service_epoch(svc, mine.map(|(k, t)| (k, t)))
                })
                .unwrap_or(0);
            endpoints.push((
                EndpointKey {
                    vpc_id: e.vpc,
                    ip_be: be(e.ip),
                },
                Endpoint {
                    endpoint_id: e.id,
                    service_id: e.service,
                    marker_id: e.id,
                    flags,
                    // One instance per configured endpoint: the file has no history.
                    generation: 1,
                    max_flows: e.max_flows,
                    new_flows_per_sec: e.new_flows_per_sec,
                    epoch,
                },
            ));
        }
        Ok((endpoints, rules))
    }

    fn tunnel(&self) -> Result<TunnelConfig, FileError> {
        let Some(o) = &self.overlay else {
            return Ok(TunnelConfig::default());
        };
        if o.inner_mtu < 576 {
            return Err(invalid("overlay.inner_mtu", "must be at least 576"));
        }
        Ok(TunnelConfig {
            ifindex: ifindex("overlay.device", &o.device)?,
            inner_mtu: o.inner_mtu,
            _pad: [0; 2],
        })
    }
}

/// One port mapping of service `id`; `f` names it in errors.
fn port_entry(f: &str, id: u32, p: &PortSection) -> Result<(PortKey, PortTarget), FileError> {
    let proto = match p.protocol.as_str() {
        "TCP" | "tcp" => IPPROTO_TCP,
        "UDP" | "udp" => IPPROTO_UDP,
        other => {
            return Err(invalid(
                format!("{f}.protocol"),
                format!("{other:?}: expected TCP or UDP"),
            ));
        }
    };
    if p.client == 0 || p.server == 0 {
        return Err(invalid(f, "ports are 1-65535"));
    }
    Ok((
        PortKey {
            service_id: id,
            client_port_be: p.client.to_be(),
            proto,
            _pad: 0,
        },
        PortTarget {
            server_port_be: p.server.to_be(),
            _pad: 0,
        },
    ))
}

type Services = Vec<(u32, Service)>;
type Ports = Vec<(PortKey, PortTarget)>;
type Endpoints = Vec<(EndpointKey, Endpoint)>;
/// Source whitelist rules: (endpoint id, source be, prefix length).
type Rules = Vec<(u32, u32, u32)>;

/// The map entries of a validated configuration.
struct Plan {
    node: NodeConfig,
    tunnel: TunnelConfig,
    nics: Vec<(u32, LocalNic)>,
    services: Services,
    ports: Ports,
    rules: Rules,
    endpoints: Endpoints,
}

impl Plan {
    /// Writes the entries targets first (see [`MapConfig::apply`]).
    fn write(self, dp: &mut Dataplane, owners: &[SnatOwnerSection]) -> Result<(), DataplaneError> {
        dp.set_node(self.node)?;
        dp.set_tunnel(self.tunnel)?;
        for o in owners {
            dp.set_snat_owner(be(o.snat_ip), be(o.underlay_ip))?;
        }
        for (idx, nic) in self.nics {
            dp.set_local_nic(idx, nic)?;
            let key = EndpointKey {
                vpc_id: nic.vpc_id,
                ip_be: nic.ip_be,
            };
            let addr = LocalAddr {
                ifindex: idx,
                mac: nic.mac,
                _pad: [0; 2],
            };
            dp.set_local_addr(key, addr)?;
        }
        let services_mode: Vec<(u32, u8)> = self
            .services
            .iter()
            .map(|(id, s)| (*id, s.tcp_proxy))
            .collect();
        for (id, s) in self.services {
            dp.set_service(id, s)?;
        }
        for (k, v) in self.ports {
            dp.set_port(k, v)?;
        }
        for (id, ip, len) in self.rules {
            dp.allow_source(id, ip, len)?;
        }
        for (k, v) in self.endpoints {
            // A PROXY header names the endpoint and VPC by their numbers here: the file
            // has no API ids.
            let svc = services_mode.iter().find(|(id, _)| *id == v.service_id);
            if let Some((_, m)) = svc
                && proxy_header_mode(*m)
                && let Some(t) = ProxyTemplate::new(
                    &format!("endpoint-{}", v.endpoint_id),
                    v.marker_id,
                    &format!("vpc-{}", k.vpc_id),
                    k.vpc_id,
                )
            {
                dp.set_proxy_template(v.endpoint_id, t)?;
            }
            dp.set_endpoint(k, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_names_bad_fields() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let cfg: MapConfig = toml::from_str(&example).unwrap();
        assert_eq!(
            cfg.interfaces(),
            vec!["tapc".to_string(), "tapb".to_string()]
        );
        assert_eq!(cfg.endpoint[0].whitelist, vec!["10.0.0.0/24"]);
        assert!(
            parse_mac("nic[0].mac", "02:00")
                .unwrap_err()
                .to_string()
                .starts_with("nic[0].mac")
        );
        assert_eq!(parse_cidr("w", "10.0.0.0/24").unwrap().prefix(), 24);
        assert!(parse_cidr("w", "10.0.0.0/33").is_err());
        let bad = example.replace("protocol = \"TCP\"", "protocol = \"SCTP\"");
        let cfg: MapConfig = toml::from_str(&bad).unwrap();
        assert_eq!(cfg.service[0].ports[0].protocol, "SCTP");
    }
}
