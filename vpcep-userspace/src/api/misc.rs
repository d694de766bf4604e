//! Version discovery, quotas and the v2 calls.
use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    error::{ApiError, ApiResult, Body},
    query_map,
};
use crate::{
    domain::*,
    ops::{quota::quota_read, services},
    store::{Filter, Object},
};

fn version_object(id: &str) -> Value {
    json!({
        "id": id,
        "status": if id == "v1" { "CURRENT" } else { "SUPPORTED" },
        "updated": "2026-01-01T00:00:00Z",
        "version": "",
        "min_version": "",
        "links": [{"href": format!("/{id}/"), "type": "application/json", "rel": "self"}],
    })
}

pub async fn versions() -> Json<Value> {
    Json(json!({"versions": [version_object("v1"), version_object("v2")]}))
}

pub async fn version(Path(v): Path<String>) -> ApiResult<Json<Value>> {
    match v.as_str() {
        "v1" | "v2" => Ok(Json(json!({"version": version_object(&v)}))),
        _ => Err(ApiError::not_found("version")),
    }
}

pub async fn quotas(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q);
    if let Some(t) = q.get("type") {
        check_enum("type", t, &["endpoint_service", "endpoint"])?;
    }
    let mut out = Vec::new();
    for kind in [Service::KIND, Endpoint::KIND] {
        if q.get("type").is_some_and(|t| t != kind) {
            continue;
        }
        let quota = quota_read(&st.store, &st.config, &caller.project_id, kind).await?;
        let f = Filter::Project(&caller.project_id);
        let used = if kind == Service::KIND {
            st.store.count::<Service>(f).await?
        } else {
            st.store.count::<Endpoint>(f).await?
        };
        out.push(json!({"type": kind, "used": used, "quota": quota}));
    }
    Ok(Json(json!({"quotas": {"resources": out}})))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ServerResource {
    resource_id: Option<String>,
    availability_zone_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddServerResources {
    server_resources: Option<Vec<ServerResource>>,
}

pub async fn add_server_resources(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<AddServerResources>,
) -> ApiResult<StatusCode> {
    let items = required("server_resources", req.server_resources)?;
    if items.is_empty() {
        return Err(ApiError::invalid("server_resources", "must not be empty"));
    }
    let mut add = Vec::new();
    for (i, r) in items.into_iter().enumerate() {
        let f = format!("server_resources[{i}].resource_id");
        let rid = field_uuid(&f, &required(&f, r.resource_id)?)?;
        add.push(json!({"resource_id": rid, "availability_zone_id": r.availability_zone_id}));
    }
    st.in_tx(async |tx| services::add_server_resources(tx, &caller, &id, add).await)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn upgrade_service(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    // This operation has no body. There is one edition, so an upgrade only checks the service.
    let id = parse_id(&id, "endpoint service")?;
    match st.store.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => Ok(StatusCode::NO_CONTENT),
        _ => Err(ApiError::not_found("endpoint service")),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpgradeEndpoint {
    action: Option<String>,
}

pub async fn upgrade_endpoint(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpgradeEndpoint>,
) -> ApiResult<StatusCode> {
    let action = required("action", req.action)?;
    check_enum("action", &action, &["upgrade", "rollback"])?;
    let id = parse_id(&id, "endpoint")?;
    match st.store.get::<Endpoint>(&id).await? {
        Some(e) if e.project_id == caller.project_id => Ok(StatusCode::NO_CONTENT),
        _ => Err(ApiError::not_found("endpoint")),
    }
}
