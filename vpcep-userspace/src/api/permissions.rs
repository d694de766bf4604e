//! Whitelist (permissions) and connections of an endpoint service.
use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, Paging,
    auth::Caller,
    error::{ApiError, ApiResult, Body},
    fuzzy, query_map,
    services::own_service,
};
use crate::{
    api::model::*,
    store::{Filter, WriteTx},
};

/// Whitelist entries per service.
const MAX_PERMISSIONS: usize = 1000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionAction {
    action: Option<String>,
    endpoints: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionDesc {
    id: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionDescs {
    connections: Option<Vec<ConnectionDesc>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PermissionAction {
    permissions: Option<Vec<String>>,
    permission_type: Option<String>,
    action: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddPermission {
    permission: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BatchCreate {
    permissions: Option<Vec<AddPermission>>,
    permission_type: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RemovePermission {
    id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BatchDelete {
    permissions: Option<Vec<RemovePermission>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PermissionDesc {
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdatePermissionDesc {
    permission: Option<PermissionDesc>,
}

pub async fn list_connections(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let id = parse_id(&id, "endpoint service")?;
    match st.store.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => {}
        _ => return Err(ApiError::not_found("endpoint service")),
    }
    let marker = q
        .get("marker_id")
        .map(|m| {
            m.parse::<i64>()
                .map_err(|_| ApiError::invalid("marker_id", "must be an integer"))
        })
        .transpose()?;
    let items: Vec<Endpoint> = st
        .store
        .list::<Endpoint>(Filter::Ref1(&id))
        .await?
        .into_iter()
        .filter(|e| {
            q.get("id").is_none_or(|i| *i == e.id)
                && marker.is_none_or(|m| m == e.marker_id)
                && q.get("status").is_none_or(|s| *s == e.status)
        })
        .collect();
    let (page, total) = paging.apply(items, |e| (e.created_rev, e.updated_rev));
    let out: Vec<Value> = page.iter().map(Endpoint::connection_view).collect();
    Ok(Json(json!({"connections": out, "total_count": total})))
}

pub async fn connection_action(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<ConnectionAction>,
) -> ApiResult<Json<Value>> {
    let action = required("action", req.action)?;
    check_enum("action", &action, &["receive", "reject"])?;
    let ids = required("endpoints", req.endpoints)?;
    if ids.is_empty() {
        return Err(ApiError::invalid("endpoints", "must not be empty"));
    }
    let ids = ids
        .iter()
        .enumerate()
        .map(|(i, e)| field_uuid(&format!("endpoints[{i}]"), e))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut out = Vec::new();
    for (i, eid) in ids.iter().enumerate() {
        let mut e = tx
            .get::<Endpoint>(eid)
            .await?
            .filter(|e| e.service_id == s.id)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("endpoints[{i}]"),
                    "no such connection on this endpoint service",
                )
            })?;
        if e.status == "failed" || e.status == "deleting" {
            return Err(ApiError::Conflict(format!(
                "endpoints[{i}]: connection is {}",
                e.status
            )));
        }
        e.status = if action == "receive" {
            "accepted"
        } else {
            "rejected"
        }
        .to_owned();
        e.updated_at = now();
        e.updated_rev = tx.revision();
        tx.put(&e).await?;
        out.push(e.connection_view());
    }
    tx.commit().await?;
    Ok(Json(json!({"connections": out})))
}

pub async fn connection_descriptions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<ConnectionDescs>,
) -> ApiResult<Json<Value>> {
    let items = required("connections", req.connections)?;
    let mut checked = Vec::with_capacity(items.len());
    for (i, c) in items.into_iter().enumerate() {
        let eid = field_uuid(
            &format!("connections[{i}].id"),
            &required(&format!("connections[{i}].id"), c.id)?,
        )?;
        let d = required(&format!("connections[{i}].description"), c.description)?;
        check_description(&format!("connections[{i}].description"), &d)?;
        checked.push((eid, d));
    }
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut out = Vec::new();
    for (i, (eid, d)) in checked.into_iter().enumerate() {
        let mut e = tx
            .get::<Endpoint>(&eid)
            .await?
            .filter(|e| e.service_id == s.id)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("connections[{i}].id"),
                    "no such connection on this endpoint service",
                )
            })?;
        e.connection_description = d;
        e.updated_at = now();
        e.updated_rev = tx.revision();
        tx.put(&e).await?;
        out.push(e.connection_view());
    }
    tx.commit().await?;
    Ok(Json(json!({"connections": out})))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 500)?;
    let id = parse_id(&id, "endpoint service")?;
    match st.store.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => {}
        _ => return Err(ApiError::not_found("endpoint service")),
    }
    let items: Vec<Permission> = st
        .store
        .list::<Permission>(Filter::Ref1(&id))
        .await?
        .into_iter()
        .filter(|p| q.get("permission").is_none_or(|f| fuzzy(&p.permission, f)))
        .collect();
    let (page, total) = paging.apply(items, |p| (p.created_rev, p.created_rev));
    let out: Vec<Value> = page.iter().map(Permission::view).collect();
    Ok(Json(json!({"permissions": out, "total_count": total})))
}

fn check_type(field: &str, given: Option<&str>, actual: &str) -> ApiResult<()> {
    if let Some(t) = given {
        check_enum("permission_type", t, &["domainId", "orgPath"])?;
        if t != actual {
            return Err(ApiError::invalid(
                field,
                format!("does not match permission_type {t}"),
            ));
        }
    }
    Ok(())
}

async fn add_one(
    tx: &mut WriteTx,
    s: &Service,
    existing: &mut Vec<Permission>,
    perm: &str,
    ptype: &str,
    description: String,
) -> ApiResult<Option<Permission>> {
    if existing.iter().any(|p| p.permission == perm) {
        return Ok(None);
    }
    if existing.len() >= MAX_PERMISSIONS {
        return Err(ApiError::invalid(
            "permissions",
            format!("at most {MAX_PERMISSIONS} whitelist entries per endpoint service"),
        ));
    }
    let p = Permission {
        id: new_id(),
        service_id: s.id.clone(),
        project_id: s.project_id.clone(),
        permission: perm.to_owned(),
        permission_type: ptype.to_owned(),
        description,
        created_at: now(),
        created_rev: tx.revision(),
    };
    tx.put(&p).await?;
    existing.push(p.clone());
    Ok(Some(p))
}

pub async fn action(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<PermissionAction>,
) -> ApiResult<Json<Value>> {
    let action = required("action", req.action)?;
    check_enum("action", &action, &["add", "remove"])?;
    let perms = required("permissions", req.permissions)?;
    let mut types = Vec::with_capacity(perms.len());
    for (i, p) in perms.iter().enumerate() {
        let f = format!("permissions[{i}]");
        let t = check_permission(&f, p)?;
        check_type(&f, req.permission_type.as_deref(), t)?;
        types.push(t);
    }
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut existing = tx.list::<Permission>(Filter::Ref1(&s.id)).await?;
    for (p, t) in perms.iter().zip(&types) {
        if action == "add" {
            add_one(&mut tx, &s, &mut existing, p, t, String::new()).await?;
        } else if let Some(pos) = existing.iter().position(|e| e.permission == *p) {
            let gone = existing.remove(pos);
            tx.delete::<Permission>(&gone.id).await?;
        }
    }
    tx.commit().await?;
    let all: Vec<&String> = existing.iter().map(|p| &p.permission).collect();
    Ok(Json(json!({
        "permissions": all,
        "permission_type": req.permission_type.unwrap_or_else(|| "domainId".to_owned()),
    })))
}

pub async fn batch_create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<BatchCreate>,
) -> ApiResult<Json<Value>> {
    let items = required("permissions", req.permissions)?;
    let mut checked = Vec::with_capacity(items.len());
    for (i, p) in items.into_iter().enumerate() {
        let f = format!("permissions[{i}].permission");
        let perm = required(&f, p.permission)?;
        let t = check_permission(&f, &perm)?;
        check_type(&f, req.permission_type.as_deref(), t)?;
        let d = p.description.unwrap_or_default();
        check_description(&format!("permissions[{i}].description"), &d)?;
        checked.push((perm, t, d));
    }
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut existing = tx.list::<Permission>(Filter::Ref1(&s.id)).await?;
    let mut out = Vec::new();
    for (perm, t, d) in checked {
        if let Some(p) = add_one(&mut tx, &s, &mut existing, &perm, t, d).await? {
            out.push(p.view());
        }
    }
    tx.commit().await?;
    Ok(Json(json!({"permissions": out})))
}

pub async fn batch_delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<BatchDelete>,
) -> ApiResult<Json<Value>> {
    let items = required("permissions", req.permissions)?;
    let mut ids = Vec::with_capacity(items.len());
    for (i, p) in items.into_iter().enumerate() {
        let f = format!("permissions[{i}].id");
        ids.push(field_uuid(&f, &required(&f, p.id)?)?);
    }
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut out = Vec::new();
    for (i, pid) in ids.iter().enumerate() {
        let p = tx
            .get::<Permission>(pid)
            .await?
            .filter(|p| p.service_id == s.id)
            .ok_or_else(|| {
                ApiError::invalid(format!("permissions[{i}].id"), "no such whitelist entry")
            })?;
        tx.delete::<Permission>(&p.id).await?;
        out.push(p.view());
    }
    tx.commit().await?;
    Ok(Json(json!({"permissions": out})))
}

pub async fn describe(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id, pid)): Path<(String, String, String)>,
    Body(req): Body<UpdatePermissionDesc>,
) -> ApiResult<Json<Value>> {
    let d = required(
        "permission.description",
        required("permission", req.permission)?.description,
    )?;
    check_description("permission.description", &d)?;
    let pid = parse_id(&pid, "whitelist entry")?;
    let mut tx = st.store.write().await?;
    let s = own_service(&mut tx, &caller, &id).await?;
    let mut p = tx
        .get::<Permission>(&pid)
        .await?
        .filter(|p| p.service_id == s.id)
        .ok_or_else(|| ApiError::not_found("whitelist entry"))?;
    p.description = d;
    tx.put(&p).await?;
    tx.commit().await?;
    Ok(Json(json!({"permissions": [p.view()]})))
}
