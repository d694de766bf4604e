//! Stored resources, their API views, and the field rules shared by the handlers.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use crate::store::Object;

/// `YYYY-MM-DDTHH:MM:SSZ`, as the reference documents timestamps.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortMapping {
    pub client_port: u16,
    pub server_port: u16,
    pub protocol: String,
}

/// Request form of a port mapping: wide integers so that a range error names the field.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PortMappingIn {
    pub client_port: Option<i64>,
    pub server_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Service {
    pub id: String,
    pub project_id: String,
    pub domain_id: String,
    pub port_id: String,
    pub vpc_id: String,
    pub service_name: String,
    pub server_type: String,
    pub service_type: String,
    pub approval_enabled: bool,
    pub status: String,
    pub ip: String,
    pub ports: Vec<PortMapping>,
    pub tcp_proxy: String,
    pub tags: Vec<Tag>,
    pub description: String,
    pub enable_policy: bool,
    pub ip_version: String,
    #[serde(default)]
    pub server_resources: Vec<Value>,
    /// Extension: live connections each endpoint of the service may hold (0 = no limit),
    /// the default for its endpoints. `None` only in documents stored before limits
    /// existed, until the control plane fills in the region default at start.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Extension: new connections per second each endpoint may open (0 = no limit).
    #[serde(default)]
    pub max_new_connections_per_second: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    /// Creation and update revisions: a total order for sorting (timestamps tie).
    pub created_rev: i64,
    pub updated_rev: i64,
}

impl Object for Service {
    const KIND: &'static str = "endpoint_service";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
    fn refs(&self) -> (String, String) {
        (self.port_id.clone(), self.vpc_id.clone())
    }
}

impl Service {
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "port_id": self.port_id,
            "service_name": self.service_name,
            "server_type": self.server_type,
            "vpc_id": self.vpc_id,
            "pool_id": "",
            "approval_enabled": self.approval_enabled,
            "status": self.status,
            "service_type": self.service_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "project_id": self.project_id,
            "domain_id": self.domain_id,
            "ip": self.ip,
            "ports": self.ports,
            "tcp_proxy": self.tcp_proxy,
            "tags": self.tags,
            "description": self.description,
            "enable_policy": self.enable_policy,
            "ip_version": self.ip_version,
            "max_connections": self.max_connections.unwrap_or(0),
            "max_new_connections_per_second": self.max_new_connections_per_second.unwrap_or(0),
            "supported_editions": ["Professional"],
            "cidr_type": "private",
            "public_border_group": "center",
            "error": [],
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub id: String,
    pub project_id: String,
    pub domain_id: String,
    pub service_id: String,
    pub service_name: String,
    pub service_type: String,
    pub service_project_id: String,
    pub status: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub ip: String,
    pub marker_id: i64,
    pub enable_dns: bool,
    pub dns_names: Vec<String>,
    pub whitelist: Vec<String>,
    pub enable_whitelist: bool,
    pub routetables: Vec<String>,
    pub description: String,
    /// The provider's description of this connection.
    pub connection_description: String,
    pub policy_statement: Value,
    pub policy_document: Value,
    pub tags: Vec<Tag>,
    /// Extension: the consumer's own limits, if set. The smaller of these and the
    /// service's applies, so a consumer can lower but never raise what the provider set.
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_new_connections_per_second: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    pub created_rev: i64,
    pub updated_rev: i64,
}

impl Object for Endpoint {
    const KIND: &'static str = "endpoint";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
    fn refs(&self) -> (String, String) {
        (self.service_id.clone(), self.vpc_id.clone())
    }
    const ADDRESSED: bool = true;
    /// An interface endpoint's address in its subnet (gateway endpoints have none).
    fn address(&self) -> Option<(String, u32)> {
        held(&self.subnet_id, &self.ip)
    }
}

impl Endpoint {
    pub fn view(&self) -> Value {
        let active = if self.status == "accepted" {
            vec!["active"]
        } else {
            vec![]
        };
        let mut v = self.base_view(active);
        // Only when the consumer set them: otherwise the service's apply.
        for (k, val) in [
            ("max_connections", self.max_connections),
            (
                "max_new_connections_per_second",
                self.max_new_connections_per_second,
            ),
        ] {
            if let Some(n) = val {
                v[k] = json!(n);
            }
        }
        v
    }

    fn base_view(&self, active: Vec<&str>) -> Value {
        json!({
            "id": self.id,
            "service_type": self.service_type,
            "status": self.status,
            "active_status": active,
            "enable_status": "enable",
            "specification_name": "default",
            "endpoint_service_name": self.service_name,
            "marker_id": self.marker_id,
            "endpoint_service_id": self.service_id,
            "enable_dns": self.enable_dns,
            "dns_names": self.dns_names,
            "ip": self.ip,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "project_id": self.project_id,
            "tags": self.tags,
            "error": [],
            "whitelist": self.whitelist,
            "enable_whitelist": self.enable_whitelist,
            "routetables": self.routetables,
            "description": self.description,
            "policy_statement": self.policy_statement,
            "policy_document": self.policy_document,
            "endpoint_pool_id": "",
            "public_border_group": "center",
            "ipv6_address": Value::Null,
        })
    }

    pub fn connection_view(&self) -> Value {
        json!({
            "id": self.id,
            "marker_id": self.marker_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "domain_id": self.domain_id,
            "project_id": self.project_id,
            "status": self.status,
            "description": self.connection_description,
            "error": [],
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Permission {
    pub id: String,
    pub service_id: String,
    /// The service owner's project.
    pub project_id: String,
    pub permission: String,
    pub permission_type: String,
    pub description: String,
    pub created_at: String,
    pub created_rev: i64,
}

impl Object for Permission {
    const KIND: &'static str = "permission";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
    fn refs(&self) -> (String, String) {
        (self.service_id.clone(), self.permission.clone())
    }
}

impl Permission {
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "permission": self.permission,
            "permission_type": self.permission_type,
            "description": self.description,
            "created_at": self.created_at,
        })
    }
}

// ---- inventory ----

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vpc {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub cidr: String,
    pub vni: u32,
    pub created_at: String,
}

impl Object for Vpc {
    const KIND: &'static str = "vpc";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subnet {
    pub id: String,
    pub project_id: String,
    pub vpc_id: String,
    pub cidr: String,
    pub gateway_ip: String,
    pub created_at: String,
}

impl Object for Subnet {
    const KIND: &'static str = "subnet";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
    fn refs(&self) -> (String, String) {
        (self.vpc_id.clone(), String::new())
    }
}

/// A VM NIC (or load balancer VIP) known to the inventory.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Port {
    pub id: String,
    pub project_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub ip: String,
    pub mac: String,
    pub node: String,
    pub created_at: String,
}

impl Object for Port {
    const KIND: &'static str = "port";
    fn id(&self) -> String {
        self.id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
    fn refs(&self) -> (String, String) {
        (self.subnet_id.clone(), self.vpc_id.clone())
    }
    const ADDRESSED: bool = true;
    fn address(&self) -> Option<(String, u32)> {
        held(&self.subnet_id, &self.ip)
    }
}

/// Ports and endpoints share one address scope per subnet: subnets of a VPC do not overlap
/// and an address always lies in its own subnet, so this equals "any NIC of the subnet or
/// endpoint of the VPC".
fn held(subnet_id: &str, ip: &str) -> Option<(String, u32)> {
    let ip = ip.parse::<Ipv4Addr>().ok()?;
    Some((subnet_id.to_owned(), u32::from(ip)))
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    pub name: String,
    pub underlay_ip: String,
    pub snat_ip: String,
    pub created_at: String,
}

impl Object for Node {
    const KIND: &'static str = "node";
    fn id(&self) -> String {
        self.name.clone()
    }
    fn project(&self) -> String {
        String::new()
    }
    fn refs(&self) -> (String, String) {
        (self.snat_ip.clone(), String::new())
    }
}

// ---- rules ----

/// Parses a path or body id; anything but a UUID is "not found".
pub fn parse_id(id: &str, what: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::not_found(what))
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A body field that must hold a UUID (400 naming the field otherwise).
pub fn field_uuid(field: &str, v: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(v)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::invalid(field, "must be a UUID"))
}

/// Largest `max_connections`: a node's conntrack table holds this many flows.
pub const MAX_CONNECTIONS: u32 = vpcep_common::maps::MAX_FLOWS;
/// Largest `max_new_connections_per_second`.
pub const MAX_NEW_CONNECTIONS_PER_SECOND: u32 = 1_000_000;

/// A connection limit of a request: an integer from 0 (no limit) to `max`.
pub fn check_limit(field: &str, v: Option<i64>, max: u32) -> ApiResult<Option<u32>> {
    match v {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    field,
                    format!("must be an integer from 0 (no limit) to {max}"),
                )
            }),
    }
}

pub fn required<T>(field: &str, v: Option<T>) -> ApiResult<T> {
    v.ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// service_name: ≤16 of letters, digits, `_` and `-`.
pub fn check_service_name(v: &str) -> ApiResult<()> {
    if v.is_empty()
        || v.chars().count() > 16
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::invalid(
            "service_name",
            "must be 1-16 letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

/// Descriptions: ≤512 characters, no `<` or `>`.
pub fn check_description(field: &str, v: &str) -> ApiResult<()> {
    if v.chars().count() > 512 || v.contains(['<', '>']) {
        return Err(ApiError::invalid(
            field,
            "must be at most 512 characters without '<' or '>'",
        ));
    }
    Ok(())
}

pub const MAX_TAGS: usize = 20;
const TAG_FORBIDDEN: [char; 8] = ['=', '*', '<', '>', '\\', ',', '|', '/'];

/// The tag rule this product enforces: key 1–36, value ≤43, neither containing
/// `= * < > \ , | /` nor starting or ending with a space.
pub fn check_tag(field: &str, t: &Tag) -> ApiResult<()> {
    let k = &t.key;
    if k.is_empty() || k.chars().count() > 36 {
        return Err(ApiError::invalid(
            format!("{field}.key"),
            "must be 1-36 characters",
        ));
    }
    if k.contains(TAG_FORBIDDEN) || k.starts_with(' ') || k.ends_with(' ') {
        return Err(ApiError::invalid(
            format!("{field}.key"),
            "must not contain = * < > \\ , | / nor start or end with a space",
        ));
    }
    let v = &t.value;
    if v.chars().count() > 43 {
        return Err(ApiError::invalid(
            format!("{field}.value"),
            "must be at most 43 characters",
        ));
    }
    if v.contains(TAG_FORBIDDEN) || v.starts_with(' ') || v.ends_with(' ') {
        return Err(ApiError::invalid(
            format!("{field}.value"),
            "must not contain = * < > \\ , | / nor start or end with a space",
        ));
    }
    Ok(())
}

/// Validates a full tag list (≤20, unique keys).
pub fn check_tags(tags: &[Tag]) -> ApiResult<()> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid("tags", "at most 20 tags per resource"));
    }
    for (i, t) in tags.iter().enumerate() {
        check_tag(&format!("tags[{i}]"), t)?;
        if tags[..i].iter().any(|o| o.key == t.key) {
            return Err(ApiError::invalid(format!("tags[{i}].key"), "duplicate key"));
        }
    }
    Ok(())
}

pub const MAX_PORT_MAPPINGS: usize = 200;

/// Port mappings: 1–65535, TCP or UDP, no duplicates, ≤200.
pub fn check_ports(ports: Vec<PortMappingIn>) -> ApiResult<Vec<PortMapping>> {
    if ports.is_empty() {
        return Err(ApiError::invalid(
            "ports",
            "at least one mapping is required",
        ));
    }
    if ports.len() > MAX_PORT_MAPPINGS {
        return Err(ApiError::invalid(
            "ports",
            "at most 200 mappings per request",
        ));
    }
    let mut out: Vec<PortMapping> = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        let port = |name: &str, v: Option<i64>| -> ApiResult<u16> {
            let f = format!("ports[{i}].{name}");
            let v = v.ok_or_else(|| ApiError::invalid(&f, "is required"))?;
            u16::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| ApiError::invalid(&f, "must be 1-65535"))
        };
        let client_port = port("client_port", p.client_port)?;
        let server_port = port("server_port", p.server_port)?;
        let protocol = p.protocol.unwrap_or_else(|| "TCP".to_owned());
        if protocol != "TCP" && protocol != "UDP" {
            return Err(ApiError::invalid(
                format!("ports[{i}].protocol"),
                "must be TCP or UDP",
            ));
        }
        let m = PortMapping {
            client_port,
            server_port,
            protocol,
        };
        if out
            .iter()
            .any(|o| o.protocol == m.protocol && o.client_port == m.client_port)
        {
            return Err(ApiError::invalid(
                format!("ports[{i}]"),
                "duplicate client_port for this protocol in the service",
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// A client or server port of `mine` already used, per protocol, by a sibling service on the
/// same backend port.
pub fn port_clash(mine: &[PortMapping], sibling: &[PortMapping]) -> Option<String> {
    for m in mine {
        for s in sibling {
            if m.protocol != s.protocol {
                continue;
            }
            if m.client_port == s.client_port {
                return Some(format!("client_port {} ({})", m.client_port, m.protocol));
            }
            if m.server_port == s.server_port {
                return Some(format!("server_port {} ({})", m.server_port, m.protocol));
            }
        }
    }
    None
}

pub fn check_enum(field: &str, v: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// An IPv4 CIDR (`a.b.c.d/n`), normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: u32,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().ok()?;
        let len: u8 = l.parse().ok()?;
        if len > 32 {
            return None;
        }
        Some(Self {
            addr: u32::from(addr) & Self::mask_of(len),
            len,
        })
    }

    fn mask_of(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    pub fn mask(&self) -> u32 {
        Self::mask_of(self.len)
    }

    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask() == self.addr
    }

    pub fn overlaps(&self, o: &Cidr) -> bool {
        let m = self.mask() & o.mask();
        self.addr & m == o.addr & m
    }

    pub fn broadcast(&self) -> u32 {
        self.addr | !self.mask()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

/// The SNAT range: provider VPCs may not overlap it; node SNAT addresses come from it.
pub const SNAT_RANGE: Cidr = Cidr {
    addr: 0xC613_8000,
    len: 17,
};

pub fn parse_ip(field: &str, s: &str) -> ApiResult<u32> {
    s.parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| ApiError::invalid(field, "must be an IPv4 address"))
}

/// Permission strings: `*`, `iam:domain::<[A-Za-z0-9*_-]{1,64}>`,
/// `organizations:orgPath::<path ≤1024>`. Returns the permission type.
pub fn check_permission(field: &str, p: &str) -> ApiResult<&'static str> {
    if p == "*" {
        return Ok("domainId");
    }
    if let Some(d) = p.strip_prefix("iam:domain::")
        && !d.is_empty()
        && d.len() <= 64
        // Beyond the reference's [A-Za-z0-9*]: `-` and `_` too, because a domain defaults
        // to the project id and project ids may contain them.
        && d
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '-' | '_'))
    {
        return Ok("domainId");
    }
    if let Some(o) = p.strip_prefix("organizations:orgPath::")
        && !o.is_empty()
        && o.len() <= 1024
        && !o.contains(['<', '>'])
    {
        return Ok("orgPath");
    }
    Err(ApiError::invalid(
        field,
        "must be '*', 'iam:domain::<domain_id>' or 'organizations:orgPath::<path>'",
    ))
}

/// Whether a consumer domain may see and connect to a service with these permissions.
pub fn permitted(service: &Service, perms: &[Permission], project: &str, domain: &str) -> bool {
    permits(
        &service.project_id,
        &service.service_type,
        perms.iter().map(|p| p.permission.as_str()),
        project,
        domain,
    )
}

/// [`permitted`] on just the fields it reads (the agent keeps only those): the service's
/// owner project and type, and its permission strings.
pub fn permits<'a>(
    owner: &str,
    service_type: &str,
    permissions: impl IntoIterator<Item = &'a str>,
    project: &str,
    domain: &str,
) -> bool {
    if owner == project || service_type == "gateway" {
        return true;
    }
    let mine = format!("iam:domain::{domain}");
    permissions
        .into_iter()
        .any(|p| p == "*" || p == "iam:domain::*" || p == mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("10.0.0.7/24").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert!(c.contains(u32::from(Ipv4Addr::new(10, 0, 0, 200))));
        assert!(SNAT_RANGE.overlaps(&Cidr::parse("198.19.0.0/16").unwrap()));
        assert!(!SNAT_RANGE.overlaps(&Cidr::parse("198.19.0.0/17").unwrap()));
        assert_eq!(SNAT_RANGE.to_string(), "198.19.128.0/17");
    }

    #[test]
    fn tag_rules() {
        let t = |k: &str, v: &str| {
            check_tag(
                "t",
                &Tag {
                    key: k.into(),
                    value: v.into(),
                },
            )
        };
        assert!(t("env", "prod").is_ok());
        assert!(t("", "x").is_err());
        assert!(t(&"k".repeat(37), "").is_err());
        assert!(t("a=b", "").is_err());
        assert!(t("k", &"v".repeat(44)).is_err());
        assert!(t(" k", "").is_err());
        assert!(t("k", "a/b").is_err());
    }
}
