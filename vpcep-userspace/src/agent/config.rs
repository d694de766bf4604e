//! The node agent's configuration file (TOML), parsed and validated once at start.
//!
//! ```toml
//! node_name = "node1"
//! underlay_ip = "192.0.2.1"
//! control_plane = ["https://10.1.0.1:8443", "https://10.1.0.2:8443"]
//! ca_file = "/etc/vpcep/ca.pem"          # CA of the control plane's certificate (default: the system's)
//! cert_file = "/etc/vpcep/node1.pem"     # node certificate (common name = node_name) …
//! key_file = "/etc/vpcep/node1-key.pem"  # … and its key: mutual TLS
//! # token = "agent-node1-secret"         # or an agent token instead of the certificate
//! pin_dir = "/sys/fs/bpf/vpcep"          # default
//! metrics_address = "127.0.0.1:9464"     # default
//! resync_interval_ms = 30000             # default: full reconcile against the kernel maps
//! # netns = "node1"                      # namespace holding the VM NICs (default: the agent's)
//! # vmac = "02:fe:00:00:00:01"           # MAC answering ARP for endpoints and gateways
//! # snat_ports = [1024, 65535]
//! # toa_kind = 254                      # TCP option kind of TOA (tcp_proxy toa_open/open)
//! # tc_attach = "auto"                  # "tcx" (Linux ≥ 6.6), "netlink" (clsact), auto: TCX if there
//! tombstone_secs = 300                   # default: a deleted endpoint's address fails closed
//!
//! [conntrack]                            # idle timeouts in seconds; defaults shown
//! tcp_syn = 60
//! tcp_established = 21600
//! tcp_closing = 10
//! udp = 60
//! gc_interval_ms = 10000
//!
//! [overlay]                              # optional: reach backends on other nodes
//! device = "vpcep0"                      # VXLAN device (external mode), created if missing
//! port = 4789
//! underlay_mtu = 1500                    # TCP MSS through it is clamped to this − 90
//!
//! [dns]                                  # the node resolver for the VMs (docs/agent.md)
//! enabled = true                         # default
//! upstreams = ["192.0.2.53:53"]          # where other names go; none: REFUSED
//! upstream_timeout_ms = 2000             # per upstream, then the next
//! ttl = 5                                # seconds, of the endpoint names' answers
//! max_tcp_connections = 64               # per NIC
//! queries_per_second = 1024              # per NIC, burst twice that; 0: no limit
//!
//! [[nic]]                                # host side of a VM NIC → its inventory port id
//! iface = "tap0"
//! port_id = "6f3c…"
//! ```
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use vpcep_common::endpoint::{DEFAULT_PORT_HI, DEFAULT_PORT_LO, Timeouts, VXLAN_OVERHEAD};

use super::feed_client::Link;
use crate::{
    dataplane::{
        TcAttach,
        config::{FileError, invalid, parse_mac, read_file},
    },
    tls::{TlsError, client::ClientTls},
};

/// A configuration that cannot be read, parsed or validated; `Invalid` names the field.
pub type AgentConfigError = FileError;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_name: String,
    underlay_ip: String,
    control_plane: Vec<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default = "default_pin_dir")]
    pin_dir: PathBuf,
    #[serde(default = "default_metrics")]
    metrics_address: String,
    #[serde(default = "default_resync")]
    resync_interval_ms: u64,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default = "default_vmac")]
    vmac: String,
    #[serde(default = "default_ports")]
    snat_ports: [u16; 2],
    #[serde(default = "default_toa_kind")]
    toa_kind: u8,
    #[serde(default = "default_tombstone")]
    tombstone_secs: u64,
    #[serde(default)]
    conntrack: RawConntrack,
    #[serde(default)]
    nic: Vec<NicConfig>,
    #[serde(default)]
    overlay: Option<RawOverlay>,
    #[serde(default)]
    tc_attach: TcAttach,
    #[serde(default)]
    dns: RawDns,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    enabled: bool,
    upstreams: Vec<String>,
    upstream_timeout_ms: u64,
    ttl: u32,
    max_tcp_connections: usize,
    queries_per_second: u32,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            enabled: true,
            upstreams: Vec::new(),
            upstream_timeout_ms: 2000,
            ttl: 5,
            max_tcp_connections: 64,
            queries_per_second: 1024,
        }
    }
}

/// The node resolver (`agent::dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub enabled: bool,
    /// Tried in order; a name that is not an endpoint's goes to them.
    pub upstreams: Vec<SocketAddr>,
    pub upstream_timeout: Duration,
    pub ttl: u32,
    /// Open TCP connections per NIC; more are closed at accept.
    pub max_tcp_connections: usize,
    /// Queries per second one NIC may send (burst: twice that); more are dropped and
    /// counted, so one VM cannot take the resolver from the others. 0: no limit.
    pub queries_per_second: u32,
}

impl RawDns {
    fn check(self) -> Result<DnsConfig, AgentConfigError> {
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                u.parse::<SocketAddr>()
                    .or_else(|_| {
                        u.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        invalid("dns.upstreams", format!("{u:?} is not an address[:port]"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(100..=30_000).contains(&self.upstream_timeout_ms) {
            return Err(invalid("dns.upstream_timeout_ms", "must be 100-30000"));
        }
        if self.ttl > 86_400 {
            return Err(invalid("dns.ttl", "must be at most 86400"));
        }
        if !(1..=4096).contains(&self.max_tcp_connections) {
            return Err(invalid("dns.max_tcp_connections", "must be 1-4096"));
        }
        if self.queries_per_second > 1_000_000 {
            return Err(invalid(
                "dns.queries_per_second",
                "must be at most 1000000 (0: no limit)",
            ));
        }
        Ok(DnsConfig {
            enabled: self.enabled,
            upstreams,
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            ttl: self.ttl,
            max_tcp_connections: self.max_tcp_connections,
            queries_per_second: self.queries_per_second,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOverlay {
    device: String,
    port: u16,
    underlay_mtu: u16,
}

impl Default for RawOverlay {
    fn default() -> Self {
        Self {
            device: "vpcep0".to_owned(),
            port: 4789,
            underlay_mtu: 1500,
        }
    }
}

/// The VXLAN overlay to other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// VXLAN device in external (collect-metadata) mode; created when missing.
    pub device: String,
    pub port: u16,
    /// Largest inner IPv4 packet: the underlay MTU less the 50 bytes of VXLAN.
    pub inner_mtu: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConntrack {
    tcp_syn: u32,
    tcp_established: u32,
    tcp_closing: u32,
    udp: u32,
    gc_interval_ms: u64,
}

impl Default for RawConntrack {
    fn default() -> Self {
        let t = Timeouts::default();
        Self {
            tcp_syn: t.tcp_syn,
            tcp_established: t.tcp_established,
            tcp_closing: t.tcp_closing,
            udp: t.udp,
            gc_interval_ms: 10_000,
        }
    }
}

fn iface_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', '\0'])
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/vpcep")
}
fn default_metrics() -> String {
    "127.0.0.1:9464".to_owned()
}
fn default_resync() -> u64 {
    30_000
}
fn default_vmac() -> String {
    "02:fe:00:00:00:01".to_owned()
}
fn default_ports() -> [u16; 2] {
    [DEFAULT_PORT_LO, DEFAULT_PORT_HI]
}
fn default_toa_kind() -> u8 {
    vpcep_common::endpoint::TOA_KIND_DEFAULT
}
fn default_tombstone() -> u64 {
    300
}
/// Longest grace period: a day (a tombstone holds an `ENDPOINTS` entry meanwhile).
const MAX_TOMBSTONE_SECS: u64 = 86_400;

/// One local VM NIC.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Host-side interface (tap/veth) in the agent's (or `netns`) namespace.
    pub iface: String,
    /// The NIC's id in the inventory (`/inventory/ports/{id}`).
    pub port_id: String,
    /// With a subnet, the agent registers the NIC when the inventory lacks it (`ip` and
    /// `mac` are then the VM's; the control plane assigns them when left out).
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub underlay_ip: Ipv4Addr,
    pub control_plane: Vec<String>,
    /// Whom the agent trusts and the node certificate it presents.
    pub tls: ClientTls,
    /// The HTTP client built from `tls`, and the agent token if one is configured.
    pub link: Link,
    pub pin_dir: PathBuf,
    pub metrics_address: SocketAddr,
    pub resync_interval: Duration,
    pub netns: Option<String>,
    pub vmac: [u8; 6],
    pub snat_ports: (u16, u16),
    /// TCP option kind of TOA.
    pub toa_kind: u8,
    /// How long the address of an endpoint that left the node fails closed (0 = not at
    /// all: its packets go to the node's stack again at once).
    pub tombstone: Duration,
    pub timeouts: Timeouts,
    pub gc_interval: Duration,
    pub nics: Vec<NicConfig>,
    pub overlay: Option<Overlay>,
    /// How the TC programs attach (TCX where the kernel has it, by default).
    pub tc_attach: TcAttach,
    pub dns: DnsConfig,
    /// Put the newly loaded programs into the existing attachments (`--reload`).
    pub reload: bool,
}

impl RawConfig {
    /// Checks who the node is and where its control plane is; returns the underlay address.
    fn check_identity(&self) -> Result<Ipv4Addr, AgentConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !name_ok(&self.node_name) {
            return Err(invalid("node_name", "must be 1-64 of [A-Za-z0-9._-]"));
        }
        let underlay_ip: Ipv4Addr = self.underlay_ip.parse().map_err(|_| {
            invalid(
                "underlay_ip",
                format!("{:?} is not an IPv4 address", self.underlay_ip),
            )
        })?;
        if self.control_plane.is_empty() {
            return Err(invalid("control_plane", "needs at least one URL"));
        }
        for (i, u) in self.control_plane.iter().enumerate() {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(invalid(
                    format!("control_plane[{i}]"),
                    format!("{u:?} is not an http(s) URL"),
                ));
            }
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("token", "must not be empty"));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(invalid("key_file", "needed with cert_file")),
            (None, Some(_)) => return Err(invalid("cert_file", "needed with key_file")),
            (None, None) if self.token.is_none() => {
                return Err(invalid(
                    "cert_file",
                    "the agent needs a node certificate (cert_file and key_file) or a token",
                ));
            }
            (Some(_), Some(_)) => {
                if let Some(i) = self
                    .control_plane
                    .iter()
                    .position(|u| !u.starts_with("https://"))
                {
                    return Err(invalid(
                        format!("control_plane[{i}]"),
                        "must be an https:// URL: a node certificate is presented over TLS",
                    ));
                }
            }
            _ => {}
        }
        Ok(underlay_ip)
    }

    /// Checks the node-local settings; returns the metrics address and the vMAC.
    fn check_local(&self) -> Result<(SocketAddr, [u8; 6]), AgentConfigError> {
        if !self.pin_dir.is_absolute() {
            return Err(invalid("pin_dir", "must be an absolute path (under bpffs)"));
        }
        let metrics_address: SocketAddr = self.metrics_address.parse().map_err(|_| {
            invalid(
                "metrics_address",
                format!("{:?} is not an address:port", self.metrics_address),
            )
        })?;
        if self.resync_interval_ms < 100 {
            return Err(invalid("resync_interval_ms", "must be at least 100"));
        }
        let vmac = parse_mac("vmac", &self.vmac)
            .map_err(|_| invalid("vmac", format!("{:?} is not a MAC address", self.vmac)))?;
        let [lo, hi] = self.snat_ports;
        if lo == 0 || lo > hi {
            return Err(invalid("snat_ports", "must be [lo, hi] with 1 <= lo <= hi"));
        }
        // Kinds 0-8 are TCP's own options (end, NOP, MSS, window scale, SACK, timestamps).
        if self.toa_kind <= 8 {
            return Err(invalid(
                "toa_kind",
                "must be 9-255 (0-8 are TCP's own options; TOA modules use 254, 200 or 252)",
            ));
        }
        if self.tombstone_secs > MAX_TOMBSTONE_SECS {
            return Err(invalid(
                "tombstone_secs",
                format!("must be 0-{MAX_TOMBSTONE_SECS}"),
            ));
        }
        Ok((metrics_address, vmac))
    }

    fn check_conntrack(&self) -> Result<(), AgentConfigError> {
        let ct = &self.conntrack;
        for (field, v) in [
            ("conntrack.tcp_syn", ct.tcp_syn),
            ("conntrack.tcp_established", ct.tcp_established),
            ("conntrack.tcp_closing", ct.tcp_closing),
            ("conntrack.udp", ct.udp),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1 second"));
            }
        }
        if ct.gc_interval_ms < 100 {
            return Err(invalid("conntrack.gc_interval_ms", "must be at least 100"));
        }
        Ok(())
    }

    fn check_nics(&self) -> Result<(), AgentConfigError> {
        let mut ifaces = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (i, n) in self.nic.iter().enumerate() {
            n.check(i)?;
            if !ifaces.insert(n.iface.clone()) {
                return Err(invalid(format!("nic[{i}].iface"), "listed twice"));
            }
            if !ports.insert(n.port_id.clone()) {
                return Err(invalid(format!("nic[{i}].port_id"), "listed twice"));
            }
        }
        Ok(())
    }
}

impl NicConfig {
    /// Checks the `i`-th NIC on its own.
    fn check(&self, i: usize) -> Result<(), AgentConfigError> {
        if !iface_ok(&self.iface) {
            return Err(invalid(
                format!("nic[{i}].iface"),
                "must be an interface name (1-15 characters)",
            ));
        }
        if self.port_id.is_empty() {
            return Err(invalid(format!("nic[{i}].port_id"), "must not be empty"));
        }
        if let Some(m) = &self.mac {
            parse_mac("", m).map_err(|_| {
                invalid(
                    format!("nic[{i}].mac"),
                    format!("{m:?} is not a MAC address"),
                )
            })?;
        }
        if self.subnet_id.is_none() && (self.ip.is_some() || self.mac.is_some()) {
            return Err(invalid(
                format!("nic[{i}].subnet_id"),
                "needed with ip or mac (they are only used to register the NIC)",
            ));
        }
        Ok(())
    }
}

impl RawOverlay {
    fn check(self) -> Result<Overlay, AgentConfigError> {
        if !iface_ok(&self.device) {
            return Err(invalid(
                "overlay.device",
                "must be an interface name (1-15 characters)",
            ));
        }
        if self.port == 0 {
            return Err(invalid("overlay.port", "must be a UDP port (1-65535)"));
        }
        if !(626..=9216).contains(&self.underlay_mtu) {
            return Err(invalid("overlay.underlay_mtu", "must be 626-9216"));
        }
        Ok(Overlay {
            device: self.device,
            port: self.port,
            inner_mtu: self.underlay_mtu - VXLAN_OVERHEAD,
        })
    }
}

impl AgentConfig {
    /// Reads, validates, and checks the node certificate (present, valid now, for this
    /// node) so that a wrong one stops the agent at start with the reason.
    pub fn load(path: &Path) -> Result<Self, AgentConfigError> {
        let text = read_file(path)?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            AgentConfigError::Parse { source, .. } => AgentConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            e => e,
        })?;
        cfg.tls
            .check_node_cert(&cfg.node_name, chrono::Utc::now().timestamp())
            .map_err(|e| invalid("cert_file", crate::tls::chain(&e)))?;
        Ok(cfg)
    }

    /// Parses and validates; the error names the offending field.
    pub fn parse(text: &str) -> Result<Self, AgentConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| AgentConfigError::Parse {
            path: "config".to_owned(),
            source,
        })?;
        let underlay_ip = raw.check_identity()?;
        let (metrics_address, vmac) = raw.check_local()?;
        raw.check_conntrack()?;
        raw.check_nics()?;
        let overlay = raw.overlay.map(RawOverlay::check).transpose()?;
        let dns = raw.dns.clone().check()?;
        let ct = &raw.conntrack;
        let tls = ClientTls {
            ca_file: raw.ca_file.clone(),
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            insecure: false,
        };
        let field = if raw.cert_file.is_some() {
            "cert_file"
        } else {
            "ca_file"
        };
        let http = tls
            .builder()
            .and_then(|b| b.build().map_err(TlsError::Client))
            .map_err(|e| invalid(field, crate::tls::chain(&e)))?;
        Ok(Self {
            node_name: raw.node_name,
            underlay_ip,
            control_plane: raw.control_plane,
            tls: tls.clone(),
            link: Link {
                http,
                token: raw.token,
                tls: Some(tls),
            },
            pin_dir: raw.pin_dir,
            metrics_address,
            resync_interval: Duration::from_millis(raw.resync_interval_ms),
            netns: raw.netns,
            vmac,
            snat_ports: (raw.snat_ports[0], raw.snat_ports[1]),
            toa_kind: raw.toa_kind,
            tombstone: Duration::from_secs(raw.tombstone_secs),
            timeouts: Timeouts {
                tcp_syn: ct.tcp_syn,
                tcp_established: ct.tcp_established,
                tcp_closing: ct.tcp_closing,
                udp: ct.udp,
            },
            gc_interval: Duration::from_millis(ct.gc_interval_ms),
            nics: raw.nic,
            overlay,
            tc_attach: raw.tc_attach,
            dns,
            reload: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_name = "node1"
underlay_ip = "192.0.2.1"
control_plane = ["http://127.0.0.1:8080"]
token = "t"
[[nic]]
iface = "tapc"
port_id = "p1"
"#;

    fn field_of(text: &str) -> String {
        match AgentConfig::parse(text) {
            Err(AgentConfigError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(c.nics.len(), 1);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/vpcep"));
        assert_eq!(c.tombstone, Duration::from_secs(300));
        let c = AgentConfig::parse(&GOOD.replace("token", "tombstone_secs = 0\ntoken")).unwrap();
        assert_eq!(c.tombstone, Duration::ZERO);
        assert_eq!(
            field_of(&GOOD.replace("token", "tombstone_secs = 86401\ntoken")),
            "tombstone_secs"
        );
        assert_eq!(field_of(&GOOD.replace("192.0.2.1", "x")), "underlay_ip");
        assert_eq!(
            field_of(&GOOD.replace("http://", "ftp://")),
            "control_plane[0]"
        );
        assert_eq!(field_of(&GOOD.replace("\"tapc\"", "\"\"")), "nic[0].iface");
        assert_eq!(
            field_of(&format!("{GOOD}[conntrack]\nudp = 0\n")),
            "conntrack.udp"
        );
        assert!(matches!(
            AgentConfig::parse(&format!("{GOOD}bogus = 1\n")),
            Err(AgentConfigError::Parse { .. })
        ));
    }

    #[test]
    fn overlay_section() {
        assert_eq!(AgentConfig::parse(GOOD).unwrap().overlay, None);
        let c = AgentConfig::parse(&format!("{GOOD}[overlay]\n")).unwrap();
        assert_eq!(
            c.overlay,
            Some(Overlay {
                device: "vpcep0".into(),
                port: 4789,
                inner_mtu: 1450
            })
        );
        let c = AgentConfig::parse(&format!("{GOOD}[overlay]\nunderlay_mtu = 9000\n")).unwrap();
        assert_eq!(c.overlay.map(|o| o.inner_mtu), Some(8950));
        for (bad, field) in [
            ("device = \"a-much-too-long-name\"", "overlay.device"),
            ("port = 0", "overlay.port"),
            ("underlay_mtu = 100", "overlay.underlay_mtu"),
        ] {
            assert_eq!(field_of(&format!("{GOOD}[overlay]\n{bad}\n")), field);
        }
    }

    #[test]
    fn dns_section() {
        let d = AgentConfig::parse(GOOD).unwrap().dns;
        assert!(d.enabled && d.upstreams.is_empty());
        assert_eq!(
            (d.ttl, d.max_tcp_connections, d.queries_per_second),
            (5, 64, 1024)
        );
        assert_eq!(d.upstream_timeout, Duration::from_secs(2));
        let c = AgentConfig::parse(&format!(
            "{GOOD}[dns]\nupstreams = [\"192.0.2.53\", \"192.0.2.54:5353\"]\nenabled = false\n"
        ))
        .unwrap();
        assert!(!c.dns.enabled);
        assert_eq!(
            c.dns.upstreams,
            [
                "192.0.2.53:53".parse().unwrap(),
                "192.0.2.54:5353".parse::<SocketAddr>().unwrap()
            ]
        );
        for (bad, field) in [
            ("upstreams = [\"resolver\"]", "dns.upstreams"),
            ("upstream_timeout_ms = 10", "dns.upstream_timeout_ms"),
            ("ttl = 100000", "dns.ttl"),
            ("max_tcp_connections = 0", "dns.max_tcp_connections"),
            ("queries_per_second = 2000000", "dns.queries_per_second"),
        ] {
            assert_eq!(field_of(&format!("{GOOD}[dns]\n{bad}\n")), field, "{bad}");
        }
    }
}
