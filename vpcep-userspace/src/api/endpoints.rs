//! Endpoints: create, list, show, source whitelist, delete, policy, route tables.
use std::net::Ipv4Addr;

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
use crate::store::{Filter, Object, WriteTx};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateEndpoint {
    subnet_id: Option<String>,
    endpoint_service_id: Option<String>,
    vpc_id: Option<String>,
    enable_dns: Option<bool>,
    tags: Option<Vec<Tag>>,
    routetables: Option<Vec<String>>,
    port_ip: Option<String>,
    whitelist: Option<Vec<String>>,
    enable_whitelist: Option<bool>,
    description: Option<String>,
    policy_statement: Option<Vec<PolicyStatement>>,
    policy_document: Option<serde_json::Map<String, Value>>,
    ip_version: Option<String>,
    /// Extension: lower limits than the service's (wide integers: a range error names
    /// the field).
    max_connections: Option<i64>,
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
pub struct PolicyStatement {
    #[serde(rename = "Effect")]
    effect: String,
    #[serde(rename = "Action")]
    action: Vec<String>,
    #[serde(rename = "Resource")]
    resource: Vec<String>,
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    condition: Option<serde_json::Map<String, Value>>,
    #[serde(rename = "Sid", default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateWhitelist {
    whitelist: Option<Vec<String>>,
    enable_whitelist: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdatePolicy {
    policy_statement: Option<Vec<PolicyStatement>>,
    policy_document: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateRoutetables {
    routetables: Option<Vec<String>>,
}

const MAX_WHITELIST: usize = 20;

fn check_whitelist(list: &[String]) -> ApiResult<()> {
    if list.len() > MAX_WHITELIST {
        return Err(ApiError::invalid(
            "whitelist",
            format!("at most {MAX_WHITELIST} entries"),
        ));
    }
    for (i, w) in list.iter().enumerate() {
        if Cidr::parse(w).is_none() {
            return Err(ApiError::invalid(
                format!("whitelist[{i}]"),
                "must be an IPv4 address or CIDR",
            ));
        }
    }
    Ok(())
}

fn check_policy(p: &[PolicyStatement]) -> ApiResult<()> {
    for (i, s) in p.iter().enumerate() {
        check_enum(
            &format!("policy_statement[{i}].Effect"),
            &s.effect,
            &["Allow", "Deny"],
        )?;
        if s.action.is_empty() {
            return Err(ApiError::invalid(
                format!("policy_statement[{i}].Action"),
                "must not be empty",
            ));
        }
        if s.resource.is_empty() {
            return Err(ApiError::invalid(
                format!("policy_statement[{i}].Resource"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

fn check_routetables(r: &[String]) -> ApiResult<Vec<String>> {
    r.iter()
        .enumerate()
        .map(|(i, id)| field_uuid(&format!("routetables[{i}]"), id))
        .collect()
}

/// Loads an endpoint of the caller's project (404 otherwise).
async fn own_endpoint(tx: &mut WriteTx, caller: &Caller, id: &str) -> ApiResult<Endpoint> {
    let id = parse_id(id, "endpoint")?;
    match tx.get::<Endpoint>(&id).await? {
        Some(e) if e.project_id == caller.project_id => Ok(e),
        _ => Err(ApiError::not_found("endpoint")),
    }
}

/// Picks (or validates, naming `field` in errors) an address in the subnet for an endpoint
/// or a NIC: not the network, broadcast or gateway address, and not held by a NIC or an
/// endpoint of the subnet. Both are indexed lookups in the store's address index.
pub(crate) async fn assign_ip(
    tx: &mut WriteTx,
    subnet: &Subnet,
    wanted: Option<&str>,
    field: &str,
) -> ApiResult<String> {
    let cidr = Cidr::parse(&subnet.cidr)
        .ok_or_else(|| ApiError::invalid("subnet_id", "subnet has a bad CIDR"))?;
    let gateway: Vec<u32> = subnet
        .gateway_ip
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .into_iter()
        .collect();
    let (first, last) = if cidr.len >= 31 {
        (cidr.addr, cidr.broadcast())
    } else {
        (cidr.addr + 1, cidr.broadcast() - 1)
    };
    if let Some(w) = wanted {
        let ip = parse_ip(field, w)?;
        if ip < first || ip > last || !cidr.contains(ip) {
            return Err(ApiError::invalid(
                field,
                format!("must be a host address in the subnet {cidr}"),
            ));
        }
        if gateway.contains(&ip) || tx.address_taken(&subnet.id, ip).await? {
            return Err(ApiError::Conflict(format!(
                "port_ip: {w} is already in use"
            )));
        }
        return Ok(w.to_owned());
    }
    tx.lowest_free_address(&subnet.id, first, last, &gateway)
        .await?
        .map(|ip| Ipv4Addr::from(ip).to_string())
        .ok_or_else(|| ApiError::Conflict("subnet_id: no free address in the subnet".to_owned()))
}

pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateEndpoint>,
) -> ApiResult<Json<Value>> {
    let service_id = field_uuid(
        "endpoint_service_id",
        &required("endpoint_service_id", req.endpoint_service_id)?,
    )?;
    let vpc_id = field_uuid("vpc_id", &required("vpc_id", req.vpc_id)?)?;
    let subnet_id = req
        .subnet_id
        .as_deref()
        .map(|s| field_uuid("subnet_id", s))
        .transpose()?;
    let tags = req.tags.unwrap_or_default();
    check_tags(&tags)?;
    let whitelist = req.whitelist.unwrap_or_default();
    check_whitelist(&whitelist)?;
    let description = req.description.unwrap_or_default();
    check_description("description", &description)?;
    let policy = req.policy_statement.unwrap_or_default();
    check_policy(&policy)?;
    let routetables = check_routetables(&req.routetables.unwrap_or_default())?;
    if let Some(v) = &req.ip_version {
        check_enum("ip_version", v, &["ipv4"])?;
    }
    let max_connections = check_limit("max_connections", req.max_connections, MAX_CONNECTIONS)?;
    let max_new_connections_per_second = check_limit(
        "max_new_connections_per_second",
        req.max_new_connections_per_second,
        MAX_NEW_CONNECTIONS_PER_SECOND,
    )?;

    let mut tx = st.store.write().await?;
    let svc = tx
        .get::<Service>(&service_id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint service"))?;
    let perms = tx.list::<Permission>(Filter::Ref1(&svc.id)).await?;
    if !permitted(&svc, &perms, &caller.project_id, &caller.domain_id) {
        return Err(ApiError::not_found("endpoint service"));
    }
    if svc.status != "available" {
        return Err(ApiError::Conflict(format!(
            "endpoint service is {}, not available",
            svc.status
        )));
    }
    let quota = quota_for(&mut tx, &st.config, &caller.project_id, Endpoint::KIND).await?;
    if tx
        .count::<Endpoint>(Filter::Project(&caller.project_id))
        .await?
        >= quota
    {
        return Err(ApiError::Quota(format!(
            "endpoint quota of {quota} exceeded"
        )));
    }
    tx.get::<Vpc>(&vpc_id)
        .await?
        .filter(|v| v.project_id == caller.project_id)
        .ok_or_else(|| ApiError::invalid("vpc_id", "no such VPC in this project"))?;
    let (subnet_id, ip) = if svc.service_type == "interface" {
        let sid = subnet_id.ok_or_else(|| {
            ApiError::invalid("subnet_id", "is required for interface endpoint services")
        })?;
        let subnet = tx
            .get::<Subnet>(&sid)
            .await?
            .filter(|s| s.vpc_id == vpc_id)
            .ok_or_else(|| ApiError::invalid("subnet_id", "no such subnet in the VPC"))?;
        let ip = assign_ip(&mut tx, &subnet, req.port_ip.as_deref(), "port_ip").await?;
        (sid, ip)
    } else {
        (subnet_id.unwrap_or_default(), String::new())
    };
    let rev = tx.revision();
    let now = now();
    let enable_dns = req.enable_dns.unwrap_or(false);
    let id = new_id();
    let dns_names = if enable_dns {
        vec![format!("{id}.{}.vpcep.internal", st.config.region)]
    } else {
        vec![]
    };
    let ep = Endpoint {
        id,
        project_id: caller.project_id.clone(),
        domain_id: caller.domain_id.clone(),
        service_id: svc.id.clone(),
        service_name: svc.service_name.clone(),
        service_type: svc.service_type.clone(),
        service_project_id: svc.project_id.clone(),
        status: if svc.approval_enabled {
            "pendingAcceptance"
        } else {
            "accepted"
        }
        .to_owned(),
        vpc_id,
        subnet_id,
        ip,
        // The creating revision is unique and increasing: a ready-made marker id.
        marker_id: rev,
        enable_dns,
        dns_names,
        enable_whitelist: req.enable_whitelist.unwrap_or(!whitelist.is_empty()),
        whitelist,
        routetables,
        description,
        connection_description: String::new(),
        policy_statement: serde_json::to_value(&policy).unwrap_or_default(),
        policy_document: req
            .policy_document
            .map(Value::Object)
            .unwrap_or(Value::Null),
        tags,
        max_connections,
        max_new_connections_per_second,
        created_at: now.clone(),
        updated_at: now,
        created_rev: rev,
        updated_rev: rev,
    };
    tx.put(&ep).await?;
    tx.commit().await?;
    Ok(Json(ep.view()))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let items: Vec<Endpoint> = st
        .store
        .list::<Endpoint>(Filter::Project(&caller.project_id))
        .await?
        .into_iter()
        .filter(|e| {
            q.get("endpoint_service_name")
                .is_none_or(|n| fuzzy(&e.service_name, n))
                && q.get("vpc_id").is_none_or(|v| *v == e.vpc_id)
                && q.get("id").is_none_or(|id| *id == e.id)
        })
        .collect();
    let (page, total) = paging.apply(items, |e| (e.created_rev, e.updated_rev));
    let out: Vec<Value> = page.iter().map(Endpoint::view).collect();
    Ok(Json(json!({"endpoints": out, "total_count": total})))
}

pub async fn show(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&id, "endpoint")?;
    match st.store.get::<Endpoint>(&id).await? {
        Some(e) if e.project_id == caller.project_id => Ok(Json(e.view())),
        _ => Err(ApiError::not_found("endpoint")),
    }
}

pub async fn update_whitelist(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateWhitelist>,
) -> ApiResult<Json<Value>> {
    if let Some(w) = &req.whitelist {
        check_whitelist(w)?;
    }
    let mut tx = st.store.write().await?;
    let mut e = own_endpoint(&mut tx, &caller, &id).await?;
    if let Some(w) = req.whitelist {
        e.whitelist = w;
    }
    if let Some(en) = req.enable_whitelist {
        e.enable_whitelist = en;
    }
    e.updated_at = now();
    e.updated_rev = tx.revision();
    tx.put(&e).await?;
    tx.commit().await?;
    Ok(Json(e.view()))
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let mut tx = st.store.write().await?;
    let e = own_endpoint(&mut tx, &caller, &id).await?;
    tx.delete::<Endpoint>(&e.id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn update_policy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdatePolicy>,
) -> ApiResult<Json<Value>> {
    if let Some(p) = &req.policy_statement {
        check_policy(p)?;
    }
    let mut tx = st.store.write().await?;
    let mut e = own_endpoint(&mut tx, &caller, &id).await?;
    if let Some(p) = req.policy_statement {
        e.policy_statement = serde_json::to_value(&p).unwrap_or_default();
    }
    if let Some(d) = req.policy_document {
        e.policy_document = Value::Object(d);
    }
    e.updated_at = now();
    e.updated_rev = tx.revision();
    tx.put(&e).await?;
    tx.commit().await?;
    Ok(Json(e.view()))
}

pub async fn delete_policy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let mut tx = st.store.write().await?;
    let mut e = own_endpoint(&mut tx, &caller, &id).await?;
    e.policy_statement = json!([]);
    e.policy_document = Value::Null;
    e.updated_at = now();
    e.updated_rev = tx.revision();
    tx.put(&e).await?;
    tx.commit().await?;
    Ok(Json(e.view()))
}

pub async fn update_routetables(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateRoutetables>,
) -> ApiResult<Json<Value>> {
    let rts = check_routetables(&required("routetables", req.routetables)?)?;
    let mut tx = st.store.write().await?;
    let mut e = own_endpoint(&mut tx, &caller, &id).await?;
    e.routetables = rts;
    e.updated_at = now();
    e.updated_rev = tx.revision();
    tx.put(&e).await?;
    tx.commit().await?;
    Ok(Json(json!({"routetables": e.routetables, "error": []})))
}
