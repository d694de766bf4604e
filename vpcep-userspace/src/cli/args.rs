//! Command-line arguments of the API verbs (the binary mounts [`ApiCommand`] under `vpcep`).
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::output::Format;

/// Options every API verb takes (also accepted after the subcommand).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Profile of the config file to use [env: VPCEP_PROFILE; default: the file's
    /// `default_profile`, else `default`].
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Config file [env: VPCEP_CONFIG; default: $XDG_CONFIG_HOME/vpcep/config.toml or
    /// ~/.config/vpcep/config.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// API address, e.g. http://127.0.0.1:8080 [env: VPCEP_URL].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Project to act in (tenant paths) [env: VPCEP_PROJECT_ID].
    #[arg(long, global = true)]
    pub project_id: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub request_timeout: u64,
    /// Print on stderr which credential is used and where it came from, and each request.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// CA bundle (PEM) the API's certificate must chain to [env: VPCEP_CA_FILE; default: the
    /// profile's `ca_file`, else the system's CA store].
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For development only: anyone on the path can then read
    /// and replay the credentials.
    #[arg(long, global = true)]
    pub insecure: bool,
}

/// `--wait` and its bound.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the resource leaves its creating/pending state.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit status 1).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub timeout: u64,
}

/// Paging of list verbs.
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Maximum number of items.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
}

macro_rules! group {
    ($name:ident, $cmd:ty) => {
        #[derive(Debug, Clone, Args)]
        pub struct $name {
            #[command(flatten)]
            pub global: GlobalArgs,
            #[command(subcommand)]
            pub cmd: $cmd,
        }
    };
}

group!(ServiceArgs, ServiceCmd);
group!(EndpointArgs, EndpointCmd);
group!(PermissionArgs, PermissionCmd);
group!(ConnectionArgs, ConnectionCmd);
group!(TagArgs, TagCmd);
group!(QuotaArgs, QuotaCmd);
group!(PublicServiceArgs, PublicServiceCmd);
group!(VpcArgs, VpcCmd);
group!(SubnetArgs, SubnetCmd);
group!(PortArgs, PortCmd);
group!(NodeArgs, NodeCmd);
group!(AuditArgs, AuditCmd);

/// The API verbs, mounted as top-level subcommands of `vpcep`.
#[derive(Debug, Clone, Subcommand)]
pub enum ApiCommand {
    /// Endpoint services (provider side).
    #[command(visible_alias = "svc")]
    Service(ServiceArgs),
    /// VPC endpoints (consumer side).
    #[command(visible_alias = "ep")]
    Endpoint(EndpointArgs),
    /// Whitelist of an endpoint service: who may connect.
    #[command(visible_alias = "perm")]
    Permission(PermissionArgs),
    /// Connections to an endpoint service: list, accept, reject.
    #[command(visible_alias = "conn")]
    Connection(ConnectionArgs),
    /// Tags of endpoint services and endpoints.
    Tag(TagArgs),
    /// Quotas: the project's usage, or (operator) per-project overrides.
    Quota(QuotaArgs),
    /// Public services (gateway services and services whitelisted for everyone; operator).
    PublicService(PublicServiceArgs),
    /// Inventory: VPCs (operator).
    Vpc(VpcArgs),
    /// Inventory: subnets (operator).
    Subnet(SubnetArgs),
    /// Inventory: ports, i.e. VM NICs (operator, agents for their node).
    #[command(visible_alias = "nic")]
    Port(PortArgs),
    /// Inventory: compute nodes (operator).
    Node(NodeArgs),
    /// The audit trail of writes: your project's, or (operator) any project's.
    Audit(AuditArgs),
}

impl ApiCommand {
    pub fn global(&self) -> &GlobalArgs {
        match self {
            Self::Service(a) => &a.global,
            Self::Endpoint(a) => &a.global,
            Self::Permission(a) => &a.global,
            Self::Connection(a) => &a.global,
            Self::Tag(a) => &a.global,
            Self::Quota(a) => &a.global,
            Self::PublicService(a) => &a.global,
            Self::Vpc(a) => &a.global,
            Self::Subnet(a) => &a.global,
            Self::Port(a) => &a.global,
            Self::Node(a) => &a.global,
            Self::Audit(a) => &a.global,
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCmd {
    /// Create an endpoint service in front of a NIC of one of your VPCs.
    Create(ServiceCreate),
    /// List your endpoint services.
    #[command(visible_alias = "ls")]
    List {
        /// Only services whose name contains this (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Only services in this status.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show a service by id, or by its full name (`<region>.<name>.<id>`).
    Show { service: String },
    /// Change a service; only the given fields change (`--port` replaces all mappings).
    Update(ServiceUpdate),
    /// Give a service a new short name.
    Rename { id: String, name: String },
    /// Delete a service (refused while endpoints are accepted or being created).
    #[command(visible_alias = "rm")]
    Delete { id: String },
    /// Services of other projects that you may connect to.
    Public {
        /// Only services whose name contains this.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: Page,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServiceCreate {
    /// Backend NIC (inventory port id).
    #[arg(long)]
    pub port_id: String,
    /// VPC of the backend NIC.
    #[arg(long)]
    pub vpc_id: String,
    /// Port mapping `CLIENT[:SERVER][/tcp|udp]`; repeatable, at least one.
    #[arg(long = "port", value_name = "MAPPING", required = true)]
    pub ports: Vec<String>,
    /// Short name (1-16 of letters, digits, `_`, `-`).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "VM", value_parser = ["VM", "LB", "VIP"])]
    pub server_type: String,
    /// `interface` (default) or `gateway` (operator only).
    #[arg(long)]
    pub service_type: Option<String>,
    /// Whether connections need the provider's acceptance.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub approval: bool,
    /// Backend address (defaults to the NIC's).
    #[arg(long)]
    pub ip: Option<String>,
    /// close, toa_open, proxy_open, open or proxy_vni.
    #[arg(long)]
    pub tcp_proxy: Option<String>,
    /// Where the PROXY header goes: on_first_ack (default) or on_first_data.
    #[arg(long)]
    pub proxy_header_placement: Option<String>,
    /// A DNS name the endpoints with a domain name answer to in their VPC.
    #[arg(long)]
    pub private_dns_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Live connections each endpoint may hold (0 = no limit); default: the region's.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// New connections per second each endpoint may open (0 = no limit); default: the region's.
    #[arg(long, value_name = "N")]
    pub max_new_connections_per_second: Option<u32>,
    /// Tag `KEY=VALUE`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceUpdate {
    pub id: String,
    /// Replace all port mappings (`CLIENT[:SERVER][/tcp|udp]`; repeatable).
    #[arg(long = "port", value_name = "MAPPING")]
    pub ports: Vec<String>,
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub approval: Option<bool>,
    /// New short name.
    #[arg(long)]
    pub name: Option<String>,
    /// Move the service to another NIC (same VPC and server type).
    #[arg(long)]
    pub port_id: Option<String>,
    #[arg(long)]
    pub ip: Option<String>,
    /// close, toa_open, proxy_open, open or proxy_vni (new connections only).
    #[arg(long)]
    pub tcp_proxy: Option<String>,
    /// on_first_ack or on_first_data (new connections only).
    #[arg(long)]
    pub proxy_header_placement: Option<String>,
    /// A DNS name the endpoints with a domain name answer to ("" removes it).
    #[arg(long)]
    pub private_dns_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Live connections each endpoint may hold (0 = no limit).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// New connections per second each endpoint may open (0 = no limit).
    #[arg(long, value_name = "N")]
    pub max_new_connections_per_second: Option<u32>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EndpointCmd {
    /// Connect to an endpoint service from one of your subnets.
    Create(EndpointCreate),
    /// List your endpoints.
    #[command(visible_alias = "ls")]
    List {
        /// Only endpoints whose service name contains this.
        #[arg(long)]
        service_name: Option<String>,
        #[arg(long)]
        vpc_id: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    Show {
        id: String,
    },
    /// Delete an endpoint.
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
    },
    /// Replace the source whitelist of an endpoint (no entries: empty list).
    Whitelist {
        id: String,
        /// IPv4 addresses or CIDRs (at most 20).
        entries: Vec<String>,
        /// Turn whitelist enforcement on or off (default: on when entries are given).
        #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
        enable: Option<bool>,
    },
    /// Wait until an endpoint reaches a status (default `accepted`).
    Wait {
        id: String,
        #[arg(long, default_value = "accepted")]
        status: String,
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct EndpointCreate {
    /// The endpoint service to connect to.
    #[arg(long)]
    pub service_id: String,
    #[arg(long)]
    pub vpc_id: String,
    #[arg(long)]
    pub subnet_id: String,
    /// Address of the endpoint (default: the first free one of the subnet).
    #[arg(long)]
    pub port_ip: Option<String>,
    /// Source address or CIDR allowed to use the endpoint; repeatable.
    #[arg(long = "whitelist", value_name = "CIDR")]
    pub whitelist: Vec<String>,
    #[arg(long)]
    pub enable_dns: bool,
    #[arg(long)]
    pub description: Option<String>,
    // The limits, tags and wait repeat `ServiceCreate`'s flags, but not their help texts
    // (an endpoint's limit can only lower its service's), so they are not one flattened group.
    /// Live connections this endpoint may hold: can only lower the service's limit.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// New connections per second this endpoint may open: can only lower the service's.
    #[arg(long, value_name = "N")]
    pub max_new_connections_per_second: Option<u32>,
    /// Tag `KEY=VALUE`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Wait until the endpoint is accepted (fails if it is rejected).
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PermissionCmd {
    /// Whitelist entries of a service.
    #[command(visible_alias = "ls")]
    List {
        service_id: String,
        #[command(flatten)]
        page: Page,
    },
    /// Allow `*`, `iam:domain::<id>`, `organizations:orgPath::<path>` or a bare domain id.
    Add {
        service_id: String,
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Remove whitelist entries (same forms as `add`).
    #[command(visible_alias = "rm")]
    Remove {
        service_id: String,
        #[arg(required = true)]
        entries: Vec<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConnectionCmd {
    /// Endpoints connected to one of your services.
    #[command(visible_alias = "ls")]
    List {
        service_id: String,
        /// Only connections in this status (e.g. pendingAcceptance).
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Accept connections (the API's `receive` action).
    Accept {
        service_id: String,
        #[arg(required = true)]
        endpoint_ids: Vec<String>,
    },
    /// Reject connections.
    Reject {
        service_id: String,
        #[arg(required = true)]
        endpoint_ids: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TagResource {
    /// An endpoint service.
    #[value(alias = "svc")]
    Service,
    #[value(alias = "ep")]
    Endpoint,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TagCmd {
    /// Add tags (an existing key gets the new value).
    Add {
        #[arg(value_enum)]
        resource: TagResource,
        id: String,
        /// `KEY=VALUE` (or `KEY` for an empty value).
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags by `KEY`, or by `KEY=VALUE` only when the value matches.
    #[command(visible_alias = "rm")]
    Remove {
        #[arg(value_enum)]
        resource: TagResource,
        id: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Tags of one resource, or with no id every key and its values in the project.
    #[command(visible_alias = "ls")]
    List {
        #[arg(value_enum)]
        resource: TagResource,
        id: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCmd {
    /// Quota and usage of your project.
    Show,
    /// The quotas of a project (operator).
    Get { project: String },
    /// Override the quotas of a project (operator). The override is replaced whole: a
    /// value not given is the default again.
    Set {
        project: String,
        #[arg(long)]
        endpoint_services: Option<i64>,
        #[arg(long)]
        endpoints: Option<i64>,
        /// API requests per second each of the project's credentials may sustain
        /// (0 = no limit).
        #[arg(long)]
        api_rate_per_second: Option<i64>,
        /// Their burst (0 = the rate).
        #[arg(long)]
        api_rate_burst: Option<i64>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PublicServiceCmd {
    #[command(visible_alias = "ls")]
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum VpcCmd {
    /// Register a VPC of a project.
    Create {
        /// Owning project.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        name: Option<String>,
        /// VNI (default: a free one).
        #[arg(long)]
        vni: Option<u32>,
        /// Id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
    #[command(visible_alias = "ls")]
    List {
        /// Only VPCs of this project.
        #[arg(long)]
        owner: Option<String>,
    },
    Show {
        id: String,
    },
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SubnetCmd {
    Create {
        #[arg(long)]
        vpc_id: String,
        #[arg(long)]
        cidr: String,
        /// Default: the first host address.
        #[arg(long)]
        gateway_ip: Option<String>,
        /// Where the subnet's VMs send DNS queries (default: 169.254.169.253).
        #[arg(long)]
        dns_address: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        vpc_id: Option<String>,
    },
    Show {
        id: String,
    },
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PortCmd {
    Create {
        #[arg(long)]
        subnet_id: String,
        /// Node the NIC lives on (must be registered).
        #[arg(long)]
        node: String,
        /// Default: the first free address of the subnet.
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        subnet_id: Option<String>,
    },
    Show {
        id: String,
    },
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCmd {
    /// Register a node, or change its underlay address.
    #[command(visible_alias = "create")]
    Register {
        name: String,
        #[arg(long)]
        underlay_ip: String,
    },
    #[command(visible_alias = "ls")]
    List,
    Show {
        name: String,
    },
    /// Remove a node (refused while it has NICs).
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCmd {
    /// Audited writes, oldest first: of `--project` (else the profile's project; an operator
    /// without one sees every project's).
    #[command(visible_alias = "ls")]
    List {
        /// The project acted on.
        #[arg(long)]
        project: Option<String>,
        /// Every project (operator).
        #[arg(long, conflicts_with = "project")]
        all: bool,
        /// From this time: RFC 3339 (`2026-12-01T00:00:00Z`) or an age (`90s`, `30m`, `12h`,
        /// `7d`).
        #[arg(long)]
        since: Option<String>,
        /// At most this many records (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}
