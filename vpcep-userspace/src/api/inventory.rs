//! The inventory API (operator and agent scope): VPCs, subnets, ports (NICs), nodes, public
//! services and per-project quotas. Documented in `docs/api.md`.
use axum::{
    Extension, Json,
    extract::State,
    http::StatusCode,
    routing::{MethodFilter, MethodRouter, on},
};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{
    AppState,
    error::{ApiError, ApiResult, Body, Path},
    views::{NodeView, Nodes, OpenServices, Ports, ProjectQuota, Subnets, Vpcs},
};
use crate::{
    domain::*,
    ops::{
        self,
        inventory::{self, NewPort},
        quota, services,
    },
    store::{Filter, Object, WriteTx},
};

/// The handlers of the inventory rows of the route table.
pub fn handler(op: &str, method: MethodFilter) -> Option<MethodRouter<AppState>> {
    macro_rules! h {
        ($f:expr) => {
            on(method, $f)
        };
    }
    Some(match op {
        "inventory_list_vpcs" => h!(list::<Vpc>),
        "inventory_create_vpc" => h!(create_vpc),
        "inventory_show_vpc" => h!(show::<Vpc>),
        "inventory_delete_vpc" => h!(remove::<Vpc>),
        "inventory_list_subnets" => h!(list::<Subnet>),
        "inventory_create_subnet" => h!(create_subnet),
        "inventory_show_subnet" => h!(show::<Subnet>),
        "inventory_delete_subnet" => h!(remove::<Subnet>),
        "inventory_list_ports" => h!(list::<Port>),
        "inventory_create_port" => h!(create_port),
        "inventory_show_port" => h!(show::<Port>),
        "inventory_delete_port" => h!(delete_port),
        "inventory_list_nodes" => h!(list_nodes),
        "inventory_show_node" => h!(show_node),
        "inventory_put_node" => h!(put_node),
        "inventory_delete_node" => h!(delete_node),
        "inventory_put_applied" => h!(put_applied),
        "inventory_public_services" => h!(public_services),
        "inventory_show_quota" => h!(show_quota),
        "inventory_put_quota" => h!(put_quota),
        _ => return None,
    })
}

fn opt_id(field: &str, v: Option<String>) -> ApiResult<String> {
    Ok(v.map_or_else(|| Ok(new_id()), |s| field_uuid(field, &s))?)
}

/// An inventory kind served by the generic list and show.
trait Listed: Object + Serialize {
    /// The name a 404 uses.
    const WHAT: &'static str;
    /// The list answer.
    type List: Serialize;
    fn listed(all: Vec<Self>) -> Self::List;
}

/// An inventory kind the operator deletes by id (the rule is in `ops::inventory`).
trait Removable: Listed {
    fn remove<'a>(
        tx: &'a mut WriteTx,
        id: &'a str,
    ) -> impl Future<Output = ops::Result<()>> + Send + 'a;
}

/// An inventory kind's list answer and 404 name, and its delete rule when it has one.
macro_rules! listed {
    ($t:ty, $what:literal, $list:ident { $field:ident } $(, $delete:path)?) => {
        impl Listed for $t {
            const WHAT: &'static str = $what;
            type List = $list;
            fn listed($field: Vec<Self>) -> $list {
                $list { $field }
            }
        }
        $(
            impl Removable for $t {
                fn remove<'a>(
                    tx: &'a mut WriteTx,
                    id: &'a str,
                ) -> impl Future<Output = ops::Result<()>> + Send + 'a {
                    $delete(tx, id)
                }
            }
        )?
    };
}

listed!(Vpc, "VPC", Vpcs { vpcs }, inventory::delete_vpc);
listed!(
    Subnet,
    "subnet",
    Subnets { subnets },
    inventory::delete_subnet
);
listed!(Port, "port", Ports { ports });

async fn list<T: Listed>(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<T::List>> {
    who.reader()?;
    let all = st.store.list::<T>(Filter::All).await?;
    Ok(Json(T::listed(all)))
}

async fn show<T: Listed>(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<T>> {
    who.reader()?;
    let id = parse_id(&id, T::WHAT)?;
    let v = st
        .store
        .get::<T>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(T::WHAT))?;
    Ok(Json(v))
}

async fn remove<T: Removable>(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.operator()?;
    let id = parse_id(&id, T::WHAT)?;
    st.in_tx(async |tx| T::remove(tx, &id).await).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- VPCs ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    /// Default: a new UUID.
    #[schemars(pattern(pattern::UUID))]
    id: Option<String>,
    #[schemars(required, length(min = 1))]
    project_id: Option<String>,
    name: Option<String>,
    #[schemars(required, pattern(pattern::NETWORK_CIDR))]
    cidr: Option<String>,
    /// Default: a free one.
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 1, max = MAX_VNI))]
    vni: Option<i64>,
}

/// A VPC or subnet CIDR: /30 or larger.
fn network_cidr(v: Option<String>) -> ApiResult<Ipv4Network> {
    parse_cidr(&required("cidr", v)?)
        .filter(|c| c.prefix() <= 30)
        .ok_or_else(|| ApiError::invalid("cidr", "must be an IPv4 CIDR of /30 or larger"))
}

async fn create_vpc(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateVpc>,
) -> ApiResult<(StatusCode, Json<Vpc>)> {
    who.operator()?;
    let id = opt_id("id", req.id)?;
    let project_id = required("project_id", req.project_id)?;
    if project_id.is_empty() {
        return Err(ApiError::invalid("project_id", "must not be empty"));
    }
    let cidr = network_cidr(req.cidr)?;
    let vni = req
        .vni
        .map(|v| {
            u32::try_from(v)
                .ok()
                .filter(|v| (1..=MAX_VNI).contains(v))
                .ok_or_else(|| ApiError::invalid("vni", "must be 1-16777215"))
        })
        .transpose()?;
    let vpc = Vpc {
        id,
        project_id,
        name: req.name.unwrap_or_default(),
        cidr: cidr.to_string(),
        vni: 0,
        created_at: now(),
    };
    let vpc = st
        .in_tx(async |tx| inventory::create_vpc(tx, vpc, vni).await)
        .await?;
    Ok((StatusCode::CREATED, Json(vpc)))
}

// ---- subnets ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    #[schemars(pattern(pattern::UUID))]
    id: Option<String>,
    #[schemars(required, pattern(pattern::UUID))]
    vpc_id: Option<String>,
    #[schemars(required, pattern(pattern::NETWORK_CIDR))]
    cidr: Option<String>,
    /// Default: the first host address.
    #[schemars(ipv4)]
    gateway_ip: Option<String>,
    /// Where the subnet's VMs send DNS queries: the gateway or an address outside the
    /// subnet. Default: 169.254.169.253.
    #[schemars(ipv4)]
    dns_address: Option<String>,
}

async fn create_subnet(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateSubnet>,
) -> ApiResult<(StatusCode, Json<Subnet>)> {
    who.operator()?;
    let id = opt_id("id", req.id)?;
    let vpc_id = field_uuid("vpc_id", &required("vpc_id", req.vpc_id)?)?;
    let cidr = network_cidr(req.cidr)?;
    let (network, broadcast) = bounds(cidr);
    let gateway = match &req.gateway_ip {
        Some(g) => parse_ip("gateway_ip", g)?,
        None => network + 1,
    };
    if gateway <= network || gateway >= broadcast {
        return Err(ApiError::invalid(
            "gateway_ip",
            "must be a host address in the subnet",
        ));
    }
    let dns = match &req.dns_address {
        Some(d) => parse_ip("dns_address", d)?,
        None => u32::from(DEFAULT_DNS_ADDRESS),
    };
    // Inside the subnet only the gateway: any other address there could be a NIC's.
    let dns_ip = Ipv4Addr::from(dns);
    if dns != gateway && (network..=broadcast).contains(&dns)
        || dns_ip.is_unspecified()
        || dns_ip.is_broadcast()
        || dns_ip.is_multicast()
        || dns_ip.is_loopback()
    {
        return Err(ApiError::invalid(
            "dns_address",
            "must be the gateway or a unicast address outside the subnet",
        ));
    }
    let subnet = st
        .in_tx(async |tx| inventory::create_subnet(tx, id, vpc_id, cidr, gateway, dns).await)
        .await?;
    Ok((StatusCode::CREATED, Json(subnet)))
}

// ---- ports (NICs) ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePort {
    #[schemars(pattern(pattern::UUID))]
    id: Option<String>,
    #[schemars(required, pattern(pattern::UUID))]
    subnet_id: Option<String>,
    /// Default: the first free host address.
    #[schemars(ipv4)]
    ip: Option<String>,
    /// Default: `fa:16:3e:…` from the id.
    #[schemars(pattern(pattern::MAC))]
    mac: Option<String>,
    /// A registered node.
    #[schemars(required, pattern(pattern::NODE_NAME))]
    node: Option<String>,
}

async fn create_port(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreatePort>,
) -> ApiResult<(StatusCode, Json<Port>)> {
    let node = required("node", req.node)?;
    who.node_writer(&node)?;
    let id = opt_id("id", req.id)?;
    let subnet_id = field_uuid("subnet_id", &required("subnet_id", req.subnet_id)?)?;
    let mac = match &req.mac {
        Some(m) => check_mac(m)?,
        // A locally administered address derived from the id.
        None => {
            let b = uuid::Uuid::parse_str(&id)
                .map(|u| *u.as_bytes())
                .unwrap_or_default();
            format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
        }
    };
    let n = NewPort {
        id,
        subnet_id,
        ip: req.ip,
        mac,
        node,
    };
    let port = st
        .in_tx(async |tx| inventory::create_port(tx, n).await)
        .await?;
    Ok((StatusCode::CREATED, Json(port)))
}

async fn delete_port(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.reader()?;
    let id = parse_id(&id, "port")?;
    st.in_tx(async |tx| {
        let p = inventory::port(tx, &id).await?;
        who.node_writer(&p.node)?;
        inventory::delete_port(tx, &id).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- nodes ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNode {
    #[schemars(required, ipv4)]
    underlay_ip: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    #[serde(default, deserialize_with = "integral")]
    #[schemars(required, with = "i64", range(min = 0))]
    revision: Option<i64>,
}

async fn node_view(st: &AppState, n: &Node) -> ApiResult<NodeView> {
    let applied = st.store.applied().await?;
    Ok(with_applied(n, applied.get(&n.name)))
}

fn with_applied(n: &Node, a: Option<&(i64, String)>) -> NodeView {
    let (rev, at) = a.map_or((0, ""), |(r, t)| (*r, t.as_str()));
    NodeView {
        node: n.clone(),
        applied_revision: rev,
        applied_at: at.to_owned(),
    }
}

/// Registers or updates a node; a new node gets the lowest free SNAT address.
async fn put_node(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Body(req): Body<PutNode>,
) -> ApiResult<Json<NodeView>> {
    check_node_name(&name)?;
    who.node_writer(&name)?;
    let underlay = required("underlay_ip", req.underlay_ip)?;
    parse_ip("underlay_ip", &underlay)?;
    let node = st
        .in_tx(async |tx| inventory::put_node(tx, &name, underlay).await)
        .await?;
    Ok(Json(node_view(&st, &node).await?))
}

async fn list_nodes(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Nodes>> {
    who.reader()?;
    let applied = st.store.applied().await?;
    let nodes = st
        .store
        .list::<Node>(Filter::All)
        .await?
        .iter()
        .map(|n| with_applied(n, applied.get(&n.name)))
        .collect();
    Ok(Json(Nodes { nodes }))
}

async fn show_node(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView>> {
    who.reader()?;
    let n = st
        .store
        .get::<Node>(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("node"))?;
    Ok(Json(node_view(&st, &n).await?))
}

async fn delete_node(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.operator()?;
    st.in_tx(async |tx| inventory::delete_node(tx, &name).await)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The agent reports the feed revision it has applied.
async fn put_applied(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Body(req): Body<Applied>,
) -> ApiResult<Json<NodeView>> {
    who.node_writer(&name)?;
    let rev = required("revision", req.revision)?;
    let n = inventory::set_applied(&st.store, &name, rev).await?;
    Ok(Json(node_view(&st, &n).await?))
}

// ---- public services and quotas ----

/// Services every tenant can use: gateway services and services whitelisted for `*`.
async fn public_services(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<OpenServices>> {
    who.reader()?;
    let endpoint_services = services::open_to_all(&st.store)
        .await?
        .iter()
        .map(Service::view)
        .collect();
    Ok(Json(OpenServices { endpoint_services }))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQuota {
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_QUOTA))]
    endpoint_service: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_QUOTA))]
    endpoint: Option<i64>,
    /// API requests per second each of the project's credentials may sustain; 0 = no limit.
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_API_RATE))]
    api_rate_per_second: Option<i64>,
    /// Their burst; 0 = the rate.
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_API_RATE))]
    api_rate_burst: Option<i64>,
}

fn quota_view(project_id: String, q: quota::Effective) -> ProjectQuota {
    let (rate, burst) = q.api_rate.unwrap_or((0, 0));
    ProjectQuota {
        project_id,
        endpoint_service: q.endpoint_service,
        endpoint: q.endpoint,
        api_rate_per_second: rate.into(),
        api_rate_burst: burst.into(),
    }
}

async fn show_quota(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(project): Path<String>,
) -> ApiResult<Json<ProjectQuota>> {
    who.operator()?;
    let q = quota::project_quotas(&st.store, &st.config, &project).await?;
    Ok(Json(quota_view(project, q)))
}

async fn put_quota(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(project): Path<String>,
    Body(req): Body<PutQuota>,
) -> ApiResult<Json<ProjectQuota>> {
    who.operator()?;
    let q = QuotaOverride {
        project_id: project.clone(),
        endpoint_service: req.endpoint_service,
        endpoint: req.endpoint,
        api_rate_per_second: req.api_rate_per_second,
        api_rate_burst: req.api_rate_burst,
    };
    let effective = st
        .in_tx(async |tx| quota::put_quota(tx, &st.config, q).await)
        .await?;
    // This replica applies the new rate at once; others when their cached copy expires.
    st.limits.forget_project(&project);
    Ok(Json(quota_view(project, effective)))
}
