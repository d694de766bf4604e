//! The stored documents: what the store keeps and the feed carries (the API's views of them
//! are built in `api::views`).
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::{EndpointStatus, ServiceStatus};
use crate::store::Object;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tag {
    #[schemars(length(min = 1, max = 36), pattern(super::rules::pattern::TAG_KEY))]
    pub key: String,
    #[serde(default)]
    #[schemars(length(max = 43), pattern(super::rules::pattern::TAG_VALUE))]
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
    #[serde(default, deserialize_with = "integral")]
    #[schemars(required, with = "Option<i64>", range(min = 1, max = 65535))]
    pub client_port: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(required, with = "Option<i64>", range(min = 1, max = 65535))]
    pub server_port: Option<i64>,
    /// TCP when absent.
    #[schemars(extend("enum" = super::rules::pattern::or_null(&super::rules::PROTOCOLS)))]
    pub protocol: Option<String>,
}

/// An optional integer field of a request. JSON Schema counts `1.0` as an integer, so the
/// server does too: an integral number is taken whatever its spelling, anything else is
/// refused naming the field.
pub fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Exactly representable: |f| < 2^63.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected an integer"
        ))),
    }
}

/// An endpoint service. Its field list and [`Endpoint`]'s look alike (ids, names, tags,
/// timestamps, revisions) but are the two documents' own fields, stored as they are.
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
    pub status: ServiceStatus,
    pub ip: String,
    pub ports: Vec<PortMapping>,
    pub tcp_proxy: String,
    /// Extension: where the PROXY header goes (`PROXY_HEADER_PLACEMENTS`).
    #[serde(default = "first_ack")]
    pub proxy_header_placement: String,
    /// Extension: a name the service's endpoints with DNS on answer to in their VPC
    /// (empty: none).
    #[serde(default)]
    pub private_dns_name: String,
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

/// An endpoint (a consumer's connection to a service).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub id: String,
    pub project_id: String,
    pub domain_id: String,
    pub service_id: String,
    pub service_name: String,
    pub service_type: String,
    pub service_project_id: String,
    pub status: EndpointStatus,
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

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subnet {
    pub id: String,
    pub project_id: String,
    pub vpc_id: String,
    pub cidr: String,
    pub gateway_ip: String,
    /// Where the subnet's VMs send DNS queries; the node's resolver answers there.
    /// Subnets stored before the field existed have the default.
    #[serde(default = "default_dns_address")]
    pub dns_address: String,
    pub created_at: String,
}

/// The DNS address of a subnet created without one: link-local, outside every VPC CIDR.
pub const DEFAULT_DNS_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 253);

fn default_dns_address() -> String {
    DEFAULT_DNS_ADDRESS.to_string()
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

/// Per-project quota overrides (absent: the configured defaults).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaOverride {
    pub project_id: String,
    pub endpoint_service: Option<i64>,
    pub endpoint: Option<i64>,
    /// API requests per second each of the project's credentials may sustain (0 = no
    /// limit). Left out of the document when unset, so overrides stored before it read the
    /// same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_per_second: Option<i64>,
    /// Their burst (0 = the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_burst: Option<i64>,
}

/// The store's view of a record: kind, id, owning project and the two indexed references
/// (empty when unused).
macro_rules! object {
    ($t:ty, $kind:literal, |$s:ident| $id:expr, $project:expr, ($r1:expr, $r2:expr) $(; $($extra:tt)*)?) => {
        impl Object for $t {
            const KIND: &'static str = $kind;
            fn id(&$s) -> String {
                $id.clone()
            }
            fn project(&$s) -> String {
                $project.clone()
            }
            fn refs(&$s) -> (String, String) {
                ($r1.clone(), $r2.clone())
            }
            $($($extra)*)?
        }
    };
}

const NONE: String = String::new();

object!(
    Service,
    "endpoint_service",
    |self| self.id,
    self.project_id,
    (self.port_id, self.vpc_id)
);
object!(Endpoint, "endpoint", |self| self.id, self.project_id, (self.service_id, self.vpc_id);
    const ADDRESSED: bool = true;
    /// An interface endpoint's address in its subnet (gateway endpoints have none).
    fn address(&self) -> Option<(String, u32)> {
        held(&self.subnet_id, &self.ip)
    }
);
object!(
    Permission,
    "permission",
    |self| self.id,
    self.project_id,
    (self.service_id, self.permission)
);
object!(Vpc, "vpc", |self| self.id, self.project_id, (NONE, NONE));
object!(
    Subnet,
    "subnet",
    |self| self.id,
    self.project_id,
    (self.vpc_id, NONE)
);
object!(Port, "port", |self| self.id, self.project_id, (self.subnet_id, self.vpc_id);
    const ADDRESSED: bool = true;
    fn address(&self) -> Option<(String, u32)> {
        held(&self.subnet_id, &self.ip)
    }
);
object!(Node, "node", |self| self.name, NONE, (self.snat_ip, NONE));
object!(
    QuotaOverride,
    "quota",
    |self| self.project_id,
    self.project_id,
    (NONE, NONE)
);

fn first_ack() -> String {
    "on_first_ack".to_owned()
}
