//! Version discovery, quotas and the v2 calls.
use axum::{
    Extension, Json,
    extract::{RawQuery, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    AppState,
    error::{ApiError, ApiResult, Body, Path},
    query_map,
    views::{Link, OneVersion, QuotaResources, QuotaUse, Quotas, VersionObject, Versions},
};
use crate::{
    domain::*,
    ops::{quota::quota_read, services},
    store::{Filter, Object},
};

fn version_object(id: &str) -> VersionObject {
    VersionObject {
        id: id.to_owned(),
        status: if id == "v1" { "CURRENT" } else { "SUPPORTED" }.to_owned(),
        updated: "2026-01-01T00:00:00Z".to_owned(),
        version: String::new(),
        min_version: String::new(),
        links: vec![Link {
            href: format!("/{id}/"),
            kind: "application/json".to_owned(),
            rel: "self".to_owned(),
        }],
    }
}

pub async fn versions() -> Json<Versions> {
    Json(Versions {
        versions: vec![version_object("v1"), version_object("v2")],
    })
}

pub async fn version(Path(v): Path<String>) -> ApiResult<Json<OneVersion>> {
    match v.as_str() {
        "v1" | "v2" => Ok(Json(OneVersion {
            version: version_object(&v),
        })),
        _ => Err(ApiError::not_found("version")),
    }
}

pub async fn quotas(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Quotas>> {
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
        out.push(QuotaUse {
            kind: kind.to_owned(),
            used,
            quota,
        });
    }
    Ok(Json(Quotas {
        quotas: QuotaResources { resources: out },
    }))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ServerResource {
    #[schemars(required, pattern(pattern::UUID))]
    resource_id: Option<String>,
    availability_zone_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddServerResources {
    #[schemars(required, length(min = 1))]
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
    #[schemars(required, extend("enum" = ["upgrade", "rollback"]))]
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
