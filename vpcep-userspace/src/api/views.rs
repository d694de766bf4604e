//! The API's JSON views of the stored records (the reference API's field set: stored
//! fields plus the constant ones this product does not vary), and the answers that wrap
//! them. Handlers serialise these types and `/openapi.json` documents them, so the document
//! says what is sent.
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::domain::{
    Audience, Caller, Endpoint, EndpointStatus, Node, Permission, Port, PortMapping, Service,
    ServiceStatus, Subnet, Tag, Vpc,
};

/// An error item of the reference's `error` lists (this product's are always empty).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueryError {
    pub error_code: String,
    pub error_message: String,
}

/// An endpoint service as its owner (and the operator) sees it. Like [`EndpointView`] it
/// repeats part of its record's field list on purpose: what is sent, not what is stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ServiceView {
    pub id: String,
    pub port_id: String,
    pub service_name: String,
    pub server_type: String,
    pub vpc_id: String,
    pub pool_id: String,
    pub approval_enabled: bool,
    pub status: ServiceStatus,
    pub service_type: String,
    pub created_at: String,
    pub updated_at: String,
    pub project_id: String,
    pub domain_id: String,
    pub ip: String,
    pub ports: Vec<PortMapping>,
    pub tcp_proxy: String,
    /// Extension: where the PROXY header goes.
    pub proxy_header_placement: String,
    /// Extension: the name its endpoints with `enable_dns` answer to; null when none.
    pub private_dns_name: Option<String>,
    pub tags: Vec<Tag>,
    pub description: String,
    pub enable_policy: bool,
    pub ip_version: String,
    pub max_connections: u32,
    pub max_new_connections_per_second: u32,
    pub supported_editions: Vec<String>,
    pub cidr_type: String,
    pub public_border_group: String,
    pub error: Vec<QueryError>,
    /// The service's endpoints; in lists only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_count: Option<usize>,
}

impl Service {
    pub fn view(&self) -> ServiceView {
        ServiceView {
            id: self.id.clone(),
            port_id: self.port_id.clone(),
            service_name: self.service_name.clone(),
            server_type: self.server_type.clone(),
            vpc_id: self.vpc_id.clone(),
            pool_id: String::new(),
            approval_enabled: self.approval_enabled,
            status: self.status,
            service_type: self.service_type.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            project_id: self.project_id.clone(),
            domain_id: self.domain_id.clone(),
            ip: self.ip.clone(),
            ports: self.ports.clone(),
            tcp_proxy: self.tcp_proxy.clone(),
            proxy_header_placement: self.proxy_header_placement.clone(),
            private_dns_name: (!self.private_dns_name.is_empty())
                .then(|| self.private_dns_name.clone()),
            tags: self.tags.clone(),
            description: self.description.clone(),
            enable_policy: self.enable_policy,
            ip_version: self.ip_version.clone(),
            max_connections: self.max_connections.unwrap_or(0),
            max_new_connections_per_second: self.max_new_connections_per_second.unwrap_or(0),
            supported_editions: vec!["Professional".to_owned()],
            cidr_type: "private".to_owned(),
            public_border_group: "center".to_owned(),
            error: Vec::new(),
            connection_count: None,
        }
    }
}

/// An endpoint as its owner sees it. Its field list repeats part of [`Endpoint`]'s on
/// purpose: the record is what is stored, this is what is sent (the reference's names and
/// constants, without the provider's and the feed's fields), and `/openapi.json` documents it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointView {
    pub id: String,
    pub service_type: String,
    pub status: EndpointStatus,
    /// `["active"]` once accepted, else empty.
    pub active_status: Vec<String>,
    pub enable_status: String,
    pub specification_name: String,
    pub endpoint_service_name: String,
    pub marker_id: i64,
    pub endpoint_service_id: String,
    pub enable_dns: bool,
    pub dns_names: Vec<String>,
    pub ip: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub project_id: String,
    pub tags: Vec<Tag>,
    pub error: Vec<QueryError>,
    pub whitelist: Vec<String>,
    pub enable_whitelist: bool,
    pub routetables: Vec<String>,
    pub description: String,
    /// The policy statements as given (a list of statements), `[]` when none.
    pub policy_statement: Value,
    /// The policy document as given (an object), null when none.
    pub policy_document: Value,
    pub endpoint_pool_id: String,
    pub public_border_group: String,
    pub ipv6_address: Option<String>,
    /// Only when the consumer set them: otherwise the service's apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_connections_per_second: Option<u32>,
}

/// One endpoint as the service's provider sees it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConnectionView {
    pub id: String,
    pub marker_id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub domain_id: String,
    pub project_id: String,
    pub status: EndpointStatus,
    /// The provider's description of the connection.
    pub description: String,
    pub error: Vec<QueryError>,
}

impl Endpoint {
    pub fn view(&self) -> EndpointView {
        let active = if self.status == EndpointStatus::Accepted {
            vec!["active".to_owned()]
        } else {
            vec![]
        };
        EndpointView {
            id: self.id.clone(),
            service_type: self.service_type.clone(),
            status: self.status,
            active_status: active,
            enable_status: "enable".to_owned(),
            specification_name: "default".to_owned(),
            endpoint_service_name: self.service_name.clone(),
            marker_id: self.marker_id,
            endpoint_service_id: self.service_id.clone(),
            enable_dns: self.enable_dns,
            dns_names: self.dns_names.clone(),
            ip: self.ip.clone(),
            vpc_id: self.vpc_id.clone(),
            subnet_id: self.subnet_id.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            project_id: self.project_id.clone(),
            tags: self.tags.clone(),
            error: Vec::new(),
            whitelist: self.whitelist.clone(),
            enable_whitelist: self.enable_whitelist,
            routetables: self.routetables.clone(),
            description: self.description.clone(),
            policy_statement: self.policy_statement.clone(),
            policy_document: self.policy_document.clone(),
            endpoint_pool_id: String::new(),
            public_border_group: "center".to_owned(),
            ipv6_address: None,
            max_connections: self.max_connections,
            max_new_connections_per_second: self.max_new_connections_per_second,
        }
    }

    pub fn connection_view(&self) -> ConnectionView {
        ConnectionView {
            id: self.id.clone(),
            marker_id: self.marker_id,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            domain_id: self.domain_id.clone(),
            project_id: self.project_id.clone(),
            status: self.status,
            description: self.connection_description.clone(),
            error: Vec::new(),
        }
    }
}

/// A whitelist entry.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PermissionView {
    pub id: String,
    pub permission: String,
    pub permission_type: String,
    pub description: String,
    pub created_at: String,
}

impl Permission {
    pub fn view(&self) -> PermissionView {
        PermissionView {
            id: self.id.clone(),
            permission: self.permission.clone(),
            permission_type: self.permission_type.clone(),
            description: self.description.clone(),
            created_at: self.created_at.clone(),
        }
    }
}

/// A service as a consumer sees it (a tenant that may connect to it but does not own it):
/// the reference's describe and public fields, the approval, the state and the client side
/// of the ports; never the provider's backend address, NIC or LB id, VPC, project, tags,
/// description or server ports. Who gets which view is [`Audience`]'s rule.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConsumerServiceView {
    pub id: String,
    pub service_name: String,
    pub service_type: String,
    /// The provider's domain id, as the reference's public list shows it; empty when the
    /// provider has no domain of its own (its domain is then its project id).
    pub owner: String,
    pub approval_enabled: bool,
    pub status: ServiceStatus,
    /// The ports an endpoint listens on.
    pub ports: Vec<ClientPort>,
    pub created_at: String,
    pub is_charge: bool,
    pub public_border_group: String,
    pub enable_policy: bool,
}

/// The client side of a port mapping.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClientPort {
    pub client_port: u16,
    pub protocol: String,
}

impl From<&Service> for ConsumerServiceView {
    fn from(s: &Service) -> Self {
        Self {
            id: s.id.clone(),
            service_name: s.service_name.clone(),
            service_type: s.service_type.clone(),
            owner: if s.domain_id == s.project_id {
                String::new()
            } else {
                s.domain_id.clone()
            },
            approval_enabled: s.approval_enabled,
            status: s.status,
            ports: s
                .ports
                .iter()
                .map(|p| ClientPort {
                    client_port: p.client_port,
                    protocol: p.protocol.clone(),
                })
                .collect(),
            created_at: s.created_at.clone(),
            is_charge: false,
            public_border_group: "center".to_owned(),
            enable_policy: s.enable_policy,
        }
    }
}

/// A service as a caller may read it: in full for its owner and the operator, the consumer
/// view for anyone else.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ServiceForCaller {
    Owner(Box<ServiceView>),
    Consumer(ConsumerServiceView),
}

impl ServiceForCaller {
    pub fn of(caller: &Caller, s: &Service) -> Self {
        match Audience::of(caller, s) {
            Audience::Owner => Self::Owner(Box::new(s.view())),
            Audience::Consumer => Self::Consumer(s.into()),
        }
    }
}

/// An answer holding one list under its key (and the other fields named).
macro_rules! answer {
    ($($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty),* $(,)? })*) => {
        $(
            $(#[$m])*
            #[derive(Debug, Clone, Serialize, JsonSchema)]
            pub struct $name {
                $($(#[$fm])* pub $field: $ty,)*
            }
        )*
    };
}

answer! {
    /// A page of the caller's services, with their endpoint counts.
    ServicePage { endpoint_services: Vec<ServiceView>, total_count: usize }
    /// `public`: the services the caller may use but does not own.
    PublicServicePage { endpoint_services: Vec<ConsumerServiceView>, total_count: usize }
    EndpointPage { endpoints: Vec<EndpointView>, total_count: usize }
    ConnectionPage { connections: Vec<ConnectionView>, total_count: usize }
    /// The connections a call changed.
    Connections { connections: Vec<ConnectionView> }
    PermissionPage { permissions: Vec<PermissionView>, total_count: usize }
    /// The whitelist entries a call added, removed or changed.
    Permissions { permissions: Vec<PermissionView> }
    /// `permissions/action`: the service's whole whitelist after the change.
    PermissionStrings { permissions: Vec<String>, permission_type: String }
    Renamed { endpoint_service_name: String }
    Routetables { routetables: Vec<String>, error: Vec<QueryError> }
    TagKey { key: String, values: Vec<String> }
    ProjectTags { tags: Vec<TagKey> }
    Resource { resource_id: String, resource_name: String, tags: Vec<Tag> }
    QuotaUse {
        #[serde(rename = "type")]
        kind: String,
        used: i64,
        quota: i64,
    }
    QuotaResources { resources: Vec<QuotaUse> }
    Quotas { quotas: QuotaResources }
    Link {
        href: String,
        #[serde(rename = "type")]
        kind: String,
        rel: String,
    }
    VersionObject {
        id: String,
        status: String,
        updated: String,
        version: String,
        min_version: String,
        links: Vec<Link>,
    }
    Versions { versions: Vec<VersionObject> }
    OneVersion { version: VersionObject }
    Vpcs { vpcs: Vec<Vpc> }
    Subnets { subnets: Vec<Subnet> }
    Ports { ports: Vec<Port> }
    /// A node with the feed revision its agent last reported (0 and "" before any).
    NodeView {
        #[serde(flatten)]
        node: Node,
        applied_revision: i64,
        applied_at: String,
    }
    Nodes { nodes: Vec<NodeView> }
    OpenServices { endpoint_services: Vec<ServiceView> }
    /// The quotas that apply to a project; `api_rate_per_second` 0 is no limit (and its
    /// burst 0 then).
    ProjectQuota {
        project_id: String,
        endpoint_service: i64,
        endpoint: i64,
        api_rate_per_second: i64,
        api_rate_burst: i64,
    }
    /// Audit records, oldest first.
    AuditRecords { audit_records: Vec<crate::store::AuditRecord> }
}

/// `resource_instances/action`: the matching resources (`filter`) or only their number
/// (`count`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Resource>>,
    pub total_count: usize,
}
