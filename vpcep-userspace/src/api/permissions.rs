//! Whitelist (permissions) and connections of an endpoint service. The handlers share their
//! shape (extractors, field checks, one `ops` call in a transaction, the answer); each is one
//! operation of the route table with its own fields, so these near-copies stay.
use axum::{
    Extension, Json,
    extract::{RawQuery, State},
};
use serde::Deserialize;

use super::{
    AppState, Paging,
    error::{ApiError, ApiResult, Body, Path},
    fuzzy, query_map,
    views::{ConnectionPage, Connections, PermissionPage, PermissionStrings, Permissions},
};
use crate::{
    domain::*,
    ops::{permissions, services},
    store::Filter,
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionAction {
    #[schemars(required, extend("enum" = ["receive", "reject"]))]
    action: Option<String>,
    #[schemars(required, length(min = 1), inner(pattern(pattern::UUID)))]
    endpoints: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionDesc {
    #[schemars(required, pattern(pattern::UUID))]
    id: Option<String>,
    #[schemars(required, length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ConnectionDescs {
    #[schemars(required)]
    connections: Option<Vec<ConnectionDesc>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PermissionAction {
    #[schemars(required, length(max = MAX_PERMISSIONS), inner(pattern(pattern::PERMISSION)))]
    permissions: Option<Vec<String>>,
    /// When given, what every permission string is.
    #[schemars(extend("enum" = pattern::or_null(&PERMISSION_TYPES)))]
    permission_type: Option<String>,
    #[schemars(required, extend("enum" = ["add", "remove"]))]
    action: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddPermission {
    #[schemars(required, pattern(pattern::PERMISSION))]
    permission: Option<String>,
    #[schemars(length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BatchCreate {
    #[schemars(required, length(max = MAX_PERMISSIONS))]
    permissions: Option<Vec<AddPermission>>,
    #[schemars(extend("enum" = pattern::or_null(&PERMISSION_TYPES)))]
    permission_type: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RemovePermission {
    #[schemars(required, pattern(pattern::UUID))]
    id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BatchDelete {
    #[schemars(required)]
    permissions: Option<Vec<RemovePermission>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PermissionDesc {
    #[schemars(required, length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdatePermissionDesc {
    #[schemars(required)]
    permission: Option<PermissionDesc>,
}

pub async fn list_connections(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ConnectionPage>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let id = services::check_owned(&st.store, &caller, &id).await?;
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
                && q.get("status").is_none_or(|s| s == e.status.as_str())
        })
        .collect();
    let (page, total) = paging.apply(items);
    Ok(Json(ConnectionPage {
        connections: page.iter().map(Endpoint::connection_view).collect(),
        total_count: total,
    }))
}

pub async fn connection_action(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<ConnectionAction>,
) -> ApiResult<Json<Connections>> {
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
        .collect::<Result<Vec<_>>>()?;
    let eps = st
        .in_tx(async |tx| {
            permissions::accept(tx, &st.config, &caller, &id, &ids, action == "receive").await
        })
        .await?;
    Ok(Json(Connections {
        connections: eps.iter().map(Endpoint::connection_view).collect(),
    }))
}

pub async fn connection_descriptions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<ConnectionDescs>,
) -> ApiResult<Json<Connections>> {
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
    let eps = st
        .in_tx(async |tx| permissions::describe_connections(tx, &caller, &id, checked).await)
        .await?;
    Ok(Json(Connections {
        connections: eps.iter().map(Endpoint::connection_view).collect(),
    }))
}

pub async fn action(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<PermissionAction>,
) -> ApiResult<Json<PermissionStrings>> {
    let action = required("action", req.action)?;
    check_enum("action", &action, &["add", "remove"])?;
    let perms = required("permissions", req.permissions)?;
    // Checked on its own too: an empty list has no item to check it against.
    check_permission_type_given(req.permission_type.as_deref())?;
    let mut items = Vec::with_capacity(perms.len());
    for (i, p) in perms.iter().enumerate() {
        let f = format!("permissions[{i}]");
        let t = check_permission(&f, p)?;
        check_permission_type(&f, req.permission_type.as_deref(), t)?;
        items.push((p.clone(), t, String::new()));
    }
    let all = st
        .in_tx(async |tx| {
            if action == "add" {
                Ok(permissions::add(tx, &caller, &id, items).await?.1)
            } else {
                permissions::remove(tx, &caller, &id, &perms).await
            }
        })
        .await?;
    Ok(Json(PermissionStrings {
        permissions: all.into_iter().map(|p| p.permission).collect(),
        permission_type: req.permission_type.unwrap_or_else(|| "domainId".to_owned()),
    }))
}

pub async fn batch_create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<BatchCreate>,
) -> ApiResult<Json<Permissions>> {
    let items = required("permissions", req.permissions)?;
    check_permission_type_given(req.permission_type.as_deref())?;
    let mut checked = Vec::with_capacity(items.len());
    for (i, p) in items.into_iter().enumerate() {
        let f = format!("permissions[{i}].permission");
        let perm = required(&f, p.permission)?;
        let t = check_permission(&f, &perm)?;
        check_permission_type(&f, req.permission_type.as_deref(), t)?;
        let d = p.description.unwrap_or_default();
        check_description(&format!("permissions[{i}].description"), &d)?;
        checked.push((perm, t, d));
    }
    let (added, _) = st
        .in_tx(async |tx| permissions::add(tx, &caller, &id, checked).await)
        .await?;
    Ok(Json(Permissions {
        permissions: added.iter().map(Permission::view).collect(),
    }))
}

pub async fn batch_delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<BatchDelete>,
) -> ApiResult<Json<Permissions>> {
    let items = required("permissions", req.permissions)?;
    let mut ids = Vec::with_capacity(items.len());
    for (i, p) in items.into_iter().enumerate() {
        let f = format!("permissions[{i}].id");
        ids.push(field_uuid(&f, &required(&f, p.id)?)?);
    }
    let gone = st
        .in_tx(async |tx| permissions::remove_ids(tx, &caller, &id, &ids).await)
        .await?;
    Ok(Json(Permissions {
        permissions: gone.iter().map(Permission::view).collect(),
    }))
}

pub async fn describe(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id, pid)): Path<(String, String, String)>,
    Body(req): Body<UpdatePermissionDesc>,
) -> ApiResult<Json<Permissions>> {
    let d = required(
        "permission.description",
        required("permission", req.permission)?.description,
    )?;
    check_description("permission.description", &d)?;
    let pid = parse_id(&pid, "whitelist entry")?;
    let p = st
        .in_tx(async |tx| permissions::describe(tx, &caller, &id, &pid, d).await)
        .await?;
    Ok(Json(Permissions {
        permissions: vec![p.view()],
    }))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<PermissionPage>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 500)?;
    let id = services::check_owned(&st.store, &caller, &id).await?;
    let items: Vec<Permission> = st
        .store
        .list::<Permission>(Filter::Ref1(&id))
        .await?
        .into_iter()
        .filter(|p| q.get("permission").is_none_or(|f| fuzzy(&p.permission, f)))
        .collect();
    let (page, total) = paging.apply(items);
    Ok(Json(PermissionPage {
        permissions: page.iter().map(Permission::view).collect(),
        total_count: total,
    }))
}
