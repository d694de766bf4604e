//! Endpoint services: create, list, show, update, delete, rename, describe, public list.
use std::collections::HashSet;

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, Paging,
    auth::Caller,
    error::{ApiError, ApiResult, Body},
    fuzzy,
    inventory::quota_for,
    model::*,
    query_map,
};
use crate::store::{Filter, Object, Store, WriteTx};

/// At most this many services may share one backend resource.
pub const MAX_SERVICES_PER_BACKEND: usize = 5;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateService {
    port_id: Option<String>,
    service_name: Option<String>,
    vpc_id: Option<String>,
    approval_enabled: Option<bool>,
    service_type: Option<String>,
    server_type: Option<String>,
    ip: Option<String>,
    ports: Option<Vec<PortMappingIn>>,
    tcp_proxy: Option<String>,
    tags: Option<Vec<Tag>>,
    description: Option<String>,
    ip_version: Option<String>,
    #[allow(dead_code)]
    snat_network_id: Option<String>,
    /// Extension: the limits of each endpoint (default: the region's).
    max_connections: Option<i64>,
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateService {
    approval_enabled: Option<bool>,
    service_name: Option<String>,
    ports: Option<Vec<PortMappingIn>>,
    port_id: Option<String>,
    tcp_proxy: Option<String>,
    description: Option<String>,
    ip: Option<String>,
    max_connections: Option<i64>,
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RenameService {
    endpoint_service_name: Option<String>,
}

/// The SDK's four values plus `proxy_vni`, which the product documentation also lists.
const TCP_PROXY: [&str; 5] = ["close", "toa_open", "proxy_open", "open", "proxy_vni"];
const SERVER_TYPES: [&str; 3] = ["VM", "LB", "VIP"];

/// The two limit extension fields of a request.
fn check_limits(conns: Option<i64>, rate: Option<i64>) -> ApiResult<(Option<u32>, Option<u32>)> {
    Ok((
        check_limit("max_connections", conns, MAX_CONNECTIONS)?,
        check_limit(
            "max_new_connections_per_second",
            rate,
            MAX_NEW_CONNECTIONS_PER_SECOND,
        )?,
    ))
}

fn full_name(region: &str, name: Option<&str>, id: &str) -> String {
    match name {
        Some(n) => format!("{region}.{n}.{id}"),
        None => format!("{region}.{id}"),
    }
}

/// Loads a service owned by the caller (404 otherwise: other tenants' services are invisible).
pub(crate) async fn own_service(tx: &mut WriteTx, caller: &Caller, id: &str) -> ApiResult<Service> {
    let id = parse_id(id, "endpoint service")?;
    match tx.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => Ok(s),
        _ => Err(ApiError::not_found("endpoint service")),
    }
}

/// Loads a service the caller owns or is whitelisted for.
pub(crate) async fn visible_service(
    store: &Store,
    caller: &Caller,
    id: &str,
) -> ApiResult<Service> {
    let id = parse_id(id, "endpoint service")?;
    let s = store
        .get::<Service>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint service"))?;
    if s.project_id == caller.project_id {
        return Ok(s);
    }
    let perms = store.list::<Permission>(Filter::Ref1(&s.id)).await?;
    if permitted(&s, &perms, &caller.project_id, &caller.domain_id) {
        Ok(s)
    } else {
        Err(ApiError::not_found("endpoint service"))
    }
}

/// Checks the backend of a service: the VPC is the caller's and outside the SNAT range, the
/// port is in that VPC, and no sibling on the same port clashes or exceeds the limit.
/// Returns the backend port's IP.
async fn check_backend(
    tx: &mut WriteTx,
    caller: &Caller,
    vpc_id: &str,
    port_id: &str,
    ports: &[PortMapping],
    self_id: Option<&str>,
) -> ApiResult<String> {
    let vpc = tx
        .get::<Vpc>(vpc_id)
        .await?
        .filter(|v| v.project_id == caller.project_id)
        .ok_or_else(|| ApiError::invalid("vpc_id", "no such VPC in this project"))?;
    let cidr = Cidr::parse(&vpc.cidr).ok_or_else(|| ApiError::invalid("vpc_id", "bad CIDR"))?;
    if cidr.overlaps(&SNAT_RANGE) {
        return Err(ApiError::invalid(
            "vpc_id",
            format!("the provider VPC must not overlap {SNAT_RANGE}"),
        ));
    }
    let port = tx
        .get::<Port>(port_id)
        .await?
        .filter(|p| p.vpc_id == vpc.id)
        .ok_or_else(|| ApiError::invalid("port_id", "no such port in the VPC"))?;
    let siblings: Vec<Service> = tx
        .list::<Service>(Filter::Ref1(port_id))
        .await?
        .into_iter()
        .filter(|s| Some(s.id.as_str()) != self_id)
        .collect();
    if siblings.len() >= MAX_SERVICES_PER_BACKEND {
        return Err(ApiError::invalid(
            "port_id",
            format!("at most {MAX_SERVICES_PER_BACKEND} endpoint services per backend resource"),
        ));
    }
    for s in &siblings {
        if let Some(what) = port_clash(ports, &s.ports) {
            return Err(ApiError::Conflict(format!(
                "ports: {what} is already used by endpoint service {} on the same port_id",
                s.id
            )));
        }
    }
    Ok(port.ip)
}

pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateService>,
) -> ApiResult<Json<Value>> {
    let port_id = field_uuid("port_id", &required("port_id", req.port_id)?)?;
    let vpc_id = field_uuid("vpc_id", &required("vpc_id", req.vpc_id)?)?;
    let server_type = required("server_type", req.server_type)?;
    check_enum("server_type", &server_type, &SERVER_TYPES)?;
    let ports = check_ports(required("ports", req.ports)?)?;
    if let Some(n) = &req.service_name {
        check_service_name(n)?;
    }
    let service_type = req.service_type.unwrap_or_else(|| "interface".to_owned());
    check_enum("service_type", &service_type, &["interface", "gateway"])?;
    if service_type == "gateway" && !caller.operator {
        return Err(ApiError::invalid(
            "service_type",
            "gateway services are created by the operator",
        ));
    }
    let tcp_proxy = req.tcp_proxy.unwrap_or_else(|| "close".to_owned());
    check_enum("tcp_proxy", &tcp_proxy, &TCP_PROXY)?;
    let tags = req.tags.unwrap_or_default();
    check_tags(&tags)?;
    let description = req.description.unwrap_or_default();
    check_description("description", &description)?;
    let ip_version = req.ip_version.unwrap_or_else(|| "ipv4".to_owned());
    check_enum("ip_version", &ip_version, &["ipv4"])?;
    if let Some(ip) = &req.ip {
        parse_ip("ip", ip)?;
    }
    let (max_connections, max_new_connections_per_second) =
        check_limits(req.max_connections, req.max_new_connections_per_second)?;

    let mut tx = st.store.write().await?;
    let quota = quota_for(&mut tx, &st.config, &caller.project_id, Service::KIND).await?;
    if tx
        .count::<Service>(Filter::Project(&caller.project_id))
        .await?
        >= quota
    {
        return Err(ApiError::Quota(format!(
            "endpoint_service quota of {quota} exceeded"
        )));
    }
    let backend_ip = check_backend(&mut tx, &caller, &vpc_id, &port_id, &ports, None).await?;
    let id = new_id();
    let now = now();
    let rev = tx.revision();
    let svc = Service {
        service_name: full_name(&st.config.region, req.service_name.as_deref(), &id),
        id,
        project_id: caller.project_id.clone(),
        domain_id: caller.domain_id.clone(),
        port_id,
        vpc_id,
        server_type,
        service_type,
        approval_enabled: req.approval_enabled.unwrap_or(true),
        status: "creating".to_owned(),
        ip: req.ip.unwrap_or(backend_ip),
        ports,
        tcp_proxy,
        tags,
        description,
        enable_policy: false,
        ip_version,
        server_resources: Vec::new(),
        max_connections: Some(max_connections.unwrap_or(st.config.default_max_connections)),
        max_new_connections_per_second: Some(
            max_new_connections_per_second
                .unwrap_or(st.config.default_max_new_connections_per_second),
        ),
        created_at: now.clone(),
        updated_at: now,
        created_rev: rev,
        updated_rev: rev,
    };
    tx.put(&svc).await?;
    tx.commit().await?;
    spawn_activate(st, svc.id.clone());
    Ok(Json(svc.view()))
}

/// Moves a creating service to available (backend present) or failed, after the create
/// has been answered (the API's creates are asynchronous).
fn spawn_activate(st: AppState, id: String) {
    tokio::spawn(async move {
        if let Err(e) = activate(&st.store, &id).await {
            tracing::error!(service = %id, error = %e, "activating endpoint service failed");
        }
    });
}

async fn activate(store: &Store, id: &str) -> Result<(), crate::store::StoreError> {
    let mut tx = store.write().await?;
    let Some(mut s) = tx.get::<Service>(id).await? else {
        return Ok(());
    };
    if s.status != "creating" {
        return Ok(());
    }
    s.status = if tx.get::<Port>(&s.port_id).await?.is_some() {
        "available"
    } else {
        "failed"
    }
    .to_owned();
    s.updated_at = now();
    s.updated_rev = tx.revision();
    tx.put(&s).await?;
    tx.commit().await?;
    Ok(())
}

/// On start: finish services left in `creating` (e.g. by a restart between the two steps).
pub(crate) fn spawn_sweep(st: AppState) {
    tokio::spawn(async move {
        match st.store.list::<Service>(Filter::All).await {
            Ok(all) => {
                for s in all.into_iter().filter(|s| s.status == "creating") {
                    if let Err(e) = activate(&st.store, &s.id).await {
                        tracing::error!(service = %s.id, error = %e, "sweep failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
    });
}

/// The backend NIC went away: its available services become suspended.
pub(crate) async fn on_port_removed(tx: &mut WriteTx, port_id: &str) -> ApiResult<()> {
    for mut s in tx.list::<Service>(Filter::Ref1(port_id)).await? {
        if s.status == "available" {
            s.status = "suspended".to_owned();
            s.updated_at = now();
            s.updated_rev = tx.revision();
            tx.put(&s).await?;
        }
    }
    Ok(())
}

/// The backend NIC is back: its suspended services resume.
pub(crate) async fn on_port_added(tx: &mut WriteTx, port_id: &str) -> ApiResult<()> {
    for mut s in tx.list::<Service>(Filter::Ref1(port_id)).await? {
        if s.status == "suspended" {
            s.status = "available".to_owned();
            s.updated_at = now();
            s.updated_rev = tx.revision();
            tx.put(&s).await?;
        }
    }
    Ok(())
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let all = st
        .store
        .list::<Service>(Filter::Project(&caller.project_id))
        .await?;
    let items: Vec<Service> = all
        .into_iter()
        .filter(|s| {
            q.get("endpoint_service_name")
                .is_none_or(|n| fuzzy(&s.service_name, n))
                && q.get("id").is_none_or(|id| *id == s.id)
                && q.get("status").is_none_or(|st| *st == s.status)
        })
        .collect();
    let (page, total) = paging.apply(items, |s| (s.created_rev, s.updated_rev));
    let mut out = Vec::with_capacity(page.len());
    for s in page {
        let eps = st.store.list::<Endpoint>(Filter::Ref1(&s.id)).await?;
        let mut v = s.view();
        v["connection_count"] = json!(eps.len());
        out.push(v);
    }
    Ok(Json(
        json!({"endpoint_services": out, "total_count": total}),
    ))
}

pub async fn show(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(visible_service(&st.store, &caller, &id).await?.view()))
}

pub async fn update(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateService>,
) -> ApiResult<Json<Value>> {
    if let Some(n) = &req.service_name {
        check_service_name(n)?;
    }
    let ports = req.ports.map(check_ports).transpose()?;
    let new_port = req
        .port_id
        .as_deref()
        .map(|p| field_uuid("port_id", p))
        .transpose()?;
    if let Some(t) = &req.tcp_proxy {
        check_enum("tcp_proxy", t, &TCP_PROXY)?;
    }
    if let Some(d) = &req.description {
        check_description("description", d)?;
    }
    if let Some(ip) = &req.ip {
        parse_ip("ip", ip)?;
    }
    let (max_connections, max_new_connections_per_second) =
        check_limits(req.max_connections, req.max_new_connections_per_second)?;
    let mut tx = st.store.write().await?;
    let mut s = own_service(&mut tx, &caller, &id).await?;
    if ports.is_some() || new_port.is_some() {
        let port_id = new_port.clone().unwrap_or_else(|| s.port_id.clone());
        let mappings = ports.clone().unwrap_or_else(|| s.ports.clone());
        let vpc = s.vpc_id.clone();
        let ip = check_backend(&mut tx, &caller, &vpc, &port_id, &mappings, Some(&s.id)).await?;
        if new_port.is_some() {
            s.port_id = port_id;
            if req.ip.is_none() {
                s.ip = ip;
            }
            // Re-associated with an existing backend of the same type: resume.
            if s.status == "suspended" || s.status == "failed" {
                s.status = "available".to_owned();
            }
        }
        s.ports = mappings;
    }
    if let Some(a) = req.approval_enabled {
        s.approval_enabled = a;
    }
    if let Some(n) = &req.service_name {
        s.service_name = full_name(&st.config.region, Some(n), &s.id);
        rename_endpoints(&mut tx, &s).await?;
    }
    if let Some(t) = req.tcp_proxy {
        s.tcp_proxy = t;
    }
    if let Some(d) = req.description {
        s.description = d;
    }
    if let Some(ip) = req.ip {
        s.ip = ip;
    }
    if let Some(n) = max_connections {
        s.max_connections = Some(n);
    }
    if let Some(n) = max_new_connections_per_second {
        s.max_new_connections_per_second = Some(n);
    }
    s.updated_at = now();
    s.updated_rev = tx.revision();
    tx.put(&s).await?;
    tx.commit().await?;
    Ok(Json(s.view()))
}

async fn rename_endpoints(tx: &mut WriteTx, s: &Service) -> ApiResult<()> {
    for mut e in tx.list::<Endpoint>(Filter::Ref1(&s.id)).await? {
        e.service_name = s.service_name.clone();
        tx.put(&e).await?;
    }
    Ok(())
}

pub async fn rename(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<RenameService>,
) -> ApiResult<Json<Value>> {
    let name = required("endpoint_service_name", req.endpoint_service_name)?;
    check_service_name(&name).map_err(|_| {
        ApiError::invalid(
            "endpoint_service_name",
            "must be 1-16 letters, digits, '_' or '-'",
        )
    })?;
    let mut tx = st.store.write().await?;
    let mut s = own_service(&mut tx, &caller, &id).await?;
    s.service_name = full_name(&st.config.region, Some(&name), &s.id);
    s.updated_at = now();
    s.updated_rev = tx.revision();
    tx.put(&s).await?;
    rename_endpoints(&mut tx, &s).await?;
    tx.commit().await?;
    Ok(Json(json!({"endpoint_service_name": s.service_name})))
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let eps = tx.list::<Endpoint>(Filter::Ref1(&s.id)).await?;
    if let Some(e) = eps
        .iter()
        .find(|e| e.status == "accepted" || e.status == "creating")
    {
        return Err(ApiError::Conflict(format!(
            "endpoint service has {} endpoint {}; reject or delete it first",
            e.status, e.id
        )));
    }
    // Remaining (pending or rejected) endpoints lose their service.
    for mut e in eps {
        e.status = "failed".to_owned();
        e.updated_at = now();
        e.updated_rev = tx.revision();
        tx.put(&e).await?;
    }
    for p in tx.list::<Permission>(Filter::Ref1(&s.id)).await? {
        tx.delete::<Permission>(&p.id).await?;
    }
    tx.delete::<Service>(&s.id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Services the caller may use but does not own (whitelisted, `*`, or gateway services).
async fn foreign_visible(st: &AppState, caller: &Caller) -> ApiResult<Vec<Service>> {
    let mut ids = HashSet::new();
    for p in [
        "*".to_owned(),
        "iam:domain::*".to_owned(),
        format!("iam:domain::{}", caller.domain_id),
    ] {
        for perm in st.store.list::<Permission>(Filter::Ref2(&p)).await? {
            ids.insert(perm.service_id);
        }
    }
    let mut out = Vec::new();
    for s in st.store.list::<Service>(Filter::All).await? {
        if s.project_id != caller.project_id && (ids.contains(&s.id) || s.service_type == "gateway")
        {
            out.push(s);
        }
    }
    Ok(out)
}

pub async fn describe(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let s = match (q.get("endpoint_service_name"), q.get("id")) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid(
                "endpoint_service_name",
                "exactly one of endpoint_service_name or id is required",
            ));
        }
        (None, Some(id)) => visible_service(&st.store, &caller, id).await?,
        (Some(name), None) => {
            let mut all = st
                .store
                .list::<Service>(Filter::Project(&caller.project_id))
                .await?;
            all.extend(foreign_visible(&st, &caller).await?);
            all.into_iter()
                .find(|s| s.service_name.eq_ignore_ascii_case(name))
                .ok_or_else(|| ApiError::not_found("endpoint service"))?
        }
    };
    Ok(Json(json!({
        "id": s.id,
        "service_name": s.service_name,
        "service_type": s.service_type,
        "created_at": s.created_at,
        "is_charge": false,
        "public_border_group": "center",
        "enable_policy": s.enable_policy,
    })))
}

pub async fn public(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let items: Vec<Service> = foreign_visible(&st, &caller)
        .await?
        .into_iter()
        .filter(|s| {
            q.get("endpoint_service_name")
                .is_none_or(|n| fuzzy(&s.service_name, n))
                && q.get("id").is_none_or(|id| *id == s.id)
        })
        .collect();
    let (page, total) = paging.apply(items, |s| (s.created_rev, s.updated_rev));
    let out: Vec<Value> = page
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "owner": s.domain_id,
                "service_name": s.service_name,
                "service_type": s.service_type,
                "created_at": s.created_at,
                "is_charge": false,
                "enable_policy": s.enable_policy,
            })
        })
        .collect();
    Ok(Json(
        json!({"endpoint_services": out, "total_count": total}),
    ))
}
