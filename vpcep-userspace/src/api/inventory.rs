//! The inventory API (operator and agent scope): VPCs, subnets, ports (NICs), nodes, public
//! services and per-project quotas. Documented in `docs/api.md`.
use std::{collections::HashSet, net::Ipv4Addr};

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, put},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    AppState, Config,
    auth::Identity,
    error::{ApiError, ApiResult, Body},
    model::*,
    services,
};
use crate::store::{Filter, Object, Store, WriteTx};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/inventory/vpcs", get(list_vpcs).post(create_vpc))
        .route("/inventory/vpcs/{id}", get(show_vpc).delete(delete_vpc))
        .route("/inventory/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/inventory/subnets/{id}",
            get(show_subnet).delete(delete_subnet),
        )
        .route("/inventory/ports", get(list_ports).post(create_port))
        .route("/inventory/ports/{id}", get(show_port).delete(delete_port))
        .route("/inventory/nodes", get(list_nodes))
        .route(
            "/inventory/nodes/{name}",
            get(show_node).put(put_node).delete(delete_node),
        )
        .route("/inventory/nodes/{name}/applied-revision", put(put_applied))
        .route("/inventory/public-services", get(public_services))
        .route(
            "/inventory/quotas/{project_id}",
            get(show_quota).put(put_quota),
        )
}

/// Per-project quota overrides (absent: the configured defaults).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaOverride {
    pub project_id: String,
    pub endpoint_service: Option<i64>,
    pub endpoint: Option<i64>,
}

impl Object for QuotaOverride {
    const KIND: &'static str = "quota";
    fn id(&self) -> String {
        self.project_id.clone()
    }
    fn project(&self) -> String {
        self.project_id.clone()
    }
}

fn pick(o: Option<QuotaOverride>, config: &Config, kind: &str) -> i64 {
    let (over, default) = if kind == Service::KIND {
        (
            o.and_then(|o| o.endpoint_service),
            config.quota_endpoint_services,
        )
    } else {
        (o.and_then(|o| o.endpoint), config.quota_endpoints)
    };
    over.unwrap_or(default)
}

/// The quota of `kind` for a project, read inside a write transaction (atomic checks).
pub(crate) async fn quota_for(
    tx: &mut WriteTx,
    config: &Config,
    project: &str,
    kind: &str,
) -> ApiResult<i64> {
    Ok(pick(tx.get::<QuotaOverride>(project).await?, config, kind))
}

/// The quota of `kind` for a project, for reads.
pub(crate) async fn quota_read(
    store: &Store,
    config: &Config,
    project: &str,
    kind: &str,
) -> ApiResult<i64> {
    Ok(pick(
        store.get::<QuotaOverride>(project).await?,
        config,
        kind,
    ))
}

fn operator(id: &Identity) -> ApiResult<()> {
    match id {
        Identity::Operator => Ok(()),
        Identity::Anonymous => Err(ApiError::Unauthorized(
            "credentials are required".to_owned(),
        )),
        _ => Err(ApiError::Forbidden("operator scope required".to_owned())),
    }
}

/// Reads: the operator or any agent.
fn reader(id: &Identity) -> ApiResult<()> {
    match id {
        Identity::Operator | Identity::Agent { .. } => Ok(()),
        Identity::Anonymous => Err(ApiError::Unauthorized(
            "credentials are required".to_owned(),
        )),
        Identity::Tenant { .. } => Err(ApiError::Forbidden(
            "operator or agent scope required".to_owned(),
        )),
    }
}

/// Writes about one node: the operator or that node's agent.
fn node_writer(id: &Identity, node: &str) -> ApiResult<()> {
    match id {
        Identity::Agent { node: n } if n == node => Ok(()),
        Identity::Agent { .. } => Err(ApiError::Forbidden(
            "an agent may only change its own node".to_owned(),
        )),
        other => operator(other),
    }
}

fn opt_id(field: &str, v: Option<String>) -> ApiResult<String> {
    v.map_or_else(|| Ok(new_id()), |s| field_uuid(field, &s))
}

// ---- VPCs ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateVpc {
    id: Option<String>,
    project_id: Option<String>,
    name: Option<String>,
    cidr: Option<String>,
    vni: Option<u32>,
}

const MAX_VNI: u32 = (1 << 24) - 1;

async fn create_vpc(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateVpc>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    operator(&who)?;
    let id = opt_id("id", req.id)?;
    let project_id = required("project_id", req.project_id)?;
    if project_id.is_empty() {
        return Err(ApiError::invalid("project_id", "must not be empty"));
    }
    let cidr = Cidr::parse(&required("cidr", req.cidr)?)
        .filter(|c| c.len <= 30)
        .ok_or_else(|| ApiError::invalid("cidr", "must be an IPv4 CIDR of /30 or larger"))?;
    if let Some(v) = req.vni
        && (v == 0 || v > MAX_VNI)
    {
        return Err(ApiError::invalid("vni", "must be 1-16777215"));
    }
    let mut tx = st.store.write().await?;
    if tx.get::<Vpc>(&id).await?.is_some() {
        return Err(ApiError::Conflict(format!("id: VPC {id} exists")));
    }
    let used: HashSet<u32> = tx
        .list::<Vpc>(Filter::All)
        .await?
        .iter()
        .map(|v| v.vni)
        .collect();
    let vni = match req.vni {
        Some(v) if used.contains(&v) => {
            return Err(ApiError::Conflict(format!("vni: {v} is in use")));
        }
        Some(v) => v,
        None => (1..=MAX_VNI)
            .find(|v| !used.contains(v))
            .ok_or_else(|| ApiError::Conflict("vni: none free".to_owned()))?,
    };
    let vpc = Vpc {
        id,
        project_id,
        name: req.name.unwrap_or_default(),
        cidr: cidr.to_string(),
        vni,
        created_at: now(),
    };
    tx.put(&vpc).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!(vpc))))
}

async fn list_vpcs(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    Ok(Json(
        json!({"vpcs": st.store.list::<Vpc>(Filter::All).await?}),
    ))
}

async fn show_vpc(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    let id = parse_id(&id, "VPC")?;
    let v = st
        .store
        .get::<Vpc>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("VPC"))?;
    Ok(Json(json!(v)))
}

async fn delete_vpc(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    let id = parse_id(&id, "VPC")?;
    let mut tx = st.store.write().await?;
    tx.get::<Vpc>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("VPC"))?;
    let refs = [
        ("subnets", tx.count::<Subnet>(Filter::Ref1(&id)).await?),
        ("ports", tx.count::<Port>(Filter::Ref2(&id)).await?),
        (
            "endpoint services",
            tx.count::<Service>(Filter::Ref2(&id)).await?,
        ),
        ("endpoints", tx.count::<Endpoint>(Filter::Ref2(&id)).await?),
    ];
    if let Some((what, n)) = refs.iter().find(|(_, n)| *n > 0) {
        return Err(ApiError::Conflict(format!(
            "VPC is still used by {n} {what}"
        )));
    }
    tx.delete::<Vpc>(&id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- subnets ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateSubnet {
    id: Option<String>,
    vpc_id: Option<String>,
    cidr: Option<String>,
    gateway_ip: Option<String>,
}

async fn create_subnet(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateSubnet>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    operator(&who)?;
    let id = opt_id("id", req.id)?;
    let vpc_id = field_uuid("vpc_id", &required("vpc_id", req.vpc_id)?)?;
    let cidr = Cidr::parse(&required("cidr", req.cidr)?)
        .filter(|c| c.len <= 30)
        .ok_or_else(|| ApiError::invalid("cidr", "must be an IPv4 CIDR of /30 or larger"))?;
    let gateway = match &req.gateway_ip {
        Some(g) => parse_ip("gateway_ip", g)?,
        None => cidr.addr + 1,
    };
    if !cidr.contains(gateway) || gateway == cidr.addr || gateway == cidr.broadcast() {
        return Err(ApiError::invalid(
            "gateway_ip",
            "must be a host address in the subnet",
        ));
    }
    let mut tx = st.store.write().await?;
    let vpc = tx
        .get::<Vpc>(&vpc_id)
        .await?
        .ok_or_else(|| ApiError::invalid("vpc_id", "no such VPC"))?;
    let vcidr = Cidr::parse(&vpc.cidr).ok_or_else(|| ApiError::invalid("vpc_id", "bad CIDR"))?;
    if cidr.len < vcidr.len || !vcidr.contains(cidr.addr) {
        return Err(ApiError::invalid(
            "cidr",
            format!("must be inside the VPC's {vcidr}"),
        ));
    }
    if tx.get::<Subnet>(&id).await?.is_some() {
        return Err(ApiError::Conflict(format!("id: subnet {id} exists")));
    }
    for s in tx.list::<Subnet>(Filter::Ref1(&vpc_id)).await? {
        if Cidr::parse(&s.cidr).is_some_and(|c| c.overlaps(&cidr)) {
            return Err(ApiError::Conflict(format!(
                "cidr: overlaps subnet {} ({})",
                s.id, s.cidr
            )));
        }
    }
    let subnet = Subnet {
        id,
        project_id: vpc.project_id,
        vpc_id,
        cidr: cidr.to_string(),
        gateway_ip: Ipv4Addr::from(gateway).to_string(),
        created_at: now(),
    };
    tx.put(&subnet).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!(subnet))))
}

async fn list_subnets(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    Ok(Json(
        json!({"subnets": st.store.list::<Subnet>(Filter::All).await?}),
    ))
}

async fn show_subnet(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    let id = parse_id(&id, "subnet")?;
    let s = st
        .store
        .get::<Subnet>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("subnet"))?;
    Ok(Json(json!(s)))
}

async fn delete_subnet(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    let id = parse_id(&id, "subnet")?;
    let mut tx = st.store.write().await?;
    let s = tx
        .get::<Subnet>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("subnet"))?;
    let ports = tx.count::<Port>(Filter::Ref1(&id)).await?;
    let eps = tx
        .list::<Endpoint>(Filter::Ref2(&s.vpc_id))
        .await?
        .iter()
        .filter(|e| e.subnet_id == id)
        .count();
    if ports > 0 || eps > 0 {
        return Err(ApiError::Conflict(format!(
            "subnet is still used by {ports} ports and {eps} endpoints"
        )));
    }
    tx.delete::<Subnet>(&id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- ports (NICs) ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreatePort {
    id: Option<String>,
    subnet_id: Option<String>,
    ip: Option<String>,
    mac: Option<String>,
    node: Option<String>,
}

fn check_mac(m: &str) -> ApiResult<String> {
    let parts: Vec<&str> = m.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(m.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid("mac", "must be xx:xx:xx:xx:xx:xx"))
    }
}

async fn create_port(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreatePort>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let node = required("node", req.node)?;
    node_writer(&who, &node)?;
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
    let mut tx = st.store.write().await?;
    if tx.get::<Node>(&node).await?.is_none() {
        return Err(ApiError::invalid("node", "no such node"));
    }
    if tx.get::<Port>(&id).await?.is_some() {
        return Err(ApiError::Conflict(format!("id: port {id} exists")));
    }
    let subnet = tx
        .get::<Subnet>(&subnet_id)
        .await?
        .ok_or_else(|| ApiError::invalid("subnet_id", "no such subnet"))?;
    let ip = super::endpoints::assign_ip(&mut tx, &subnet, req.ip.as_deref(), "ip").await?;
    let port = Port {
        id,
        project_id: subnet.project_id.clone(),
        vpc_id: subnet.vpc_id.clone(),
        subnet_id,
        ip,
        mac,
        node,
        created_at: now(),
    };
    tx.put(&port).await?;
    services::on_port_added(&mut tx, &port.id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!(port))))
}

async fn list_ports(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    Ok(Json(
        json!({"ports": st.store.list::<Port>(Filter::All).await?}),
    ))
}

async fn show_port(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    let id = parse_id(&id, "port")?;
    let p = st
        .store
        .get::<Port>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("port"))?;
    Ok(Json(json!(p)))
}

async fn delete_port(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    reader(&who)?;
    let id = parse_id(&id, "port")?;
    let mut tx = st.store.write().await?;
    let p = tx
        .get::<Port>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("port"))?;
    node_writer(&who, &p.node)?;
    tx.delete::<Port>(&id).await?;
    services::on_port_removed(&mut tx, &id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- nodes ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PutNode {
    underlay_ip: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Applied {
    revision: Option<i64>,
}

fn check_node_name(n: &str) -> ApiResult<()> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ApiError::invalid(
            "name",
            "must be 1-64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

async fn node_view(st: &AppState, n: &Node) -> ApiResult<Value> {
    let applied = st.store.applied().await?;
    Ok(with_applied(n, applied.get(&n.name)))
}

fn with_applied(n: &Node, a: Option<&(i64, String)>) -> Value {
    let mut v = json!(n);
    let (rev, at) = a.map_or((0, ""), |(r, t)| (*r, t.as_str()));
    v["applied_revision"] = json!(rev);
    v["applied_at"] = json!(at);
    v
}

/// Registers or updates a node; a new node gets the lowest free SNAT address.
async fn put_node(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Body(req): Body<PutNode>,
) -> ApiResult<Json<Value>> {
    check_node_name(&name)?;
    node_writer(&who, &name)?;
    let underlay = required("underlay_ip", req.underlay_ip)?;
    parse_ip("underlay_ip", &underlay)?;
    let mut tx = st.store.write().await?;
    let node = match tx.get::<Node>(&name).await? {
        Some(mut n) => {
            n.underlay_ip = underlay;
            n
        }
        None => {
            let used: HashSet<u32> = tx
                .list::<Node>(Filter::All)
                .await?
                .iter()
                .filter_map(|n| n.snat_ip.parse::<Ipv4Addr>().ok())
                .map(u32::from)
                .collect();
            let snat = (SNAT_RANGE.addr + 1..SNAT_RANGE.broadcast())
                .find(|a| !used.contains(a))
                .ok_or_else(|| ApiError::Conflict("no free SNAT address".to_owned()))?;
            Node {
                name: name.clone(),
                underlay_ip: underlay,
                snat_ip: Ipv4Addr::from(snat).to_string(),
                created_at: now(),
            }
        }
    };
    tx.put(&node).await?;
    tx.commit().await?;
    Ok(Json(node_view(&st, &node).await?))
}

async fn list_nodes(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    let applied = st.store.applied().await?;
    let out: Vec<Value> = st
        .store
        .list::<Node>(Filter::All)
        .await?
        .iter()
        .map(|n| with_applied(n, applied.get(&n.name)))
        .collect();
    Ok(Json(json!({"nodes": out})))
}

async fn show_node(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
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
    operator(&who)?;
    let mut tx = st.store.write().await?;
    tx.get::<Node>(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("node"))?;
    let ports = tx
        .list::<Port>(Filter::All)
        .await?
        .iter()
        .filter(|p| p.node == name)
        .count();
    if ports > 0 {
        return Err(ApiError::Conflict(format!("node still has {ports} ports")));
    }
    tx.delete::<Node>(&name).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The agent reports the feed revision it has applied.
async fn put_applied(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Body(req): Body<Applied>,
) -> ApiResult<Json<Value>> {
    node_writer(&who, &name)?;
    let rev = required("revision", req.revision)?;
    if rev < 0 {
        return Err(ApiError::invalid("revision", "must not be negative"));
    }
    let n = st
        .store
        .get::<Node>(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("node"))?;
    st.store.set_applied(&name, rev, &now()).await?;
    Ok(Json(node_view(&st, &n).await?))
}

// ---- public services and quotas ----

/// Services every tenant can use: gateway services and services whitelisted for `*`.
async fn public_services(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Json<Value>> {
    reader(&who)?;
    let mut star = HashSet::new();
    for p in ["*", "iam:domain::*"] {
        for perm in st.store.list::<Permission>(Filter::Ref2(p)).await? {
            star.insert(perm.service_id);
        }
    }
    let out: Vec<Value> = st
        .store
        .list::<Service>(Filter::All)
        .await?
        .iter()
        .filter(|s| s.service_type == "gateway" || star.contains(&s.id))
        .map(Service::view)
        .collect();
    Ok(Json(json!({"endpoint_services": out})))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PutQuota {
    endpoint_service: Option<i64>,
    endpoint: Option<i64>,
}

async fn show_quota(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    operator(&who)?;
    Ok(Json(json!({
        "project_id": project,
        "endpoint_service": quota_read(&st.store, &st.config, &project, Service::KIND).await?,
        "endpoint": quota_read(&st.store, &st.config, &project, Endpoint::KIND).await?,
    })))
}

async fn put_quota(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    Path(project): Path<String>,
    Body(req): Body<PutQuota>,
) -> ApiResult<Json<Value>> {
    operator(&who)?;
    for (f, v) in [
        ("endpoint_service", req.endpoint_service),
        ("endpoint", req.endpoint),
    ] {
        if v.is_some_and(|v| !(0..=100_000).contains(&v)) {
            return Err(ApiError::invalid(f, "must be 0-100000"));
        }
    }
    let mut tx = st.store.write().await?;
    let q = QuotaOverride {
        project_id: project.clone(),
        endpoint_service: req.endpoint_service,
        endpoint: req.endpoint,
    };
    tx.put(&q).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "project_id": project,
        "endpoint_service": pick(Some(q.clone()), &st.config, Service::KIND),
        "endpoint": pick(Some(q), &st.config, Endpoint::KIND),
    })))
}
