//! Endpoints: create, list, show, source whitelist, delete, policy, route tables.
use axum::{
    Extension, Json,
    extract::{RawQuery, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, Paging,
    error::{ApiError, ApiResult, Body, Path},
    fuzzy, query_map,
    views::{EndpointPage, EndpointView, QueryError, Routetables},
};
use crate::{
    domain::*,
    ops::endpoints::{self, NewEndpoint},
    store::Filter,
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateEndpoint {
    /// Required for interface services.
    #[schemars(pattern(pattern::UUID))]
    subnet_id: Option<String>,
    #[schemars(required, pattern(pattern::UUID))]
    endpoint_service_id: Option<String>,
    #[schemars(required, pattern(pattern::UUID))]
    vpc_id: Option<String>,
    enable_dns: Option<bool>,
    #[schemars(length(max = MAX_TAGS))]
    tags: Option<Vec<Tag>>,
    #[schemars(inner(pattern(pattern::UUID)))]
    routetables: Option<Vec<String>>,
    /// Default: the first free host address of the subnet.
    #[schemars(ipv4)]
    port_ip: Option<String>,
    #[schemars(length(max = MAX_WHITELIST), inner(pattern(pattern::CIDR_OR_ADDRESS)))]
    whitelist: Option<Vec<String>>,
    enable_whitelist: Option<bool>,
    #[schemars(length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
    policy_statement: Option<Vec<PolicyStatement>>,
    policy_document: Option<serde_json::Map<String, Value>>,
    #[schemars(extend("enum" = pattern::or_null(&IP_VERSIONS)))]
    ip_version: Option<String>,
    /// Extension: lower limits than the service's (wide integers: a range error names
    /// the field).
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_CONNECTIONS))]
    max_connections: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_NEW_CONNECTIONS_PER_SECOND))]
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateWhitelist {
    #[schemars(length(max = MAX_WHITELIST), inner(pattern(pattern::CIDR_OR_ADDRESS)))]
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
    #[schemars(required, inner(pattern(pattern::UUID)))]
    routetables: Option<Vec<String>>,
}

impl CreateEndpoint {
    /// The request's fields, checked in the order the errors are reported.
    fn checked(self) -> ApiResult<NewEndpoint> {
        let service_id = field_uuid(
            "endpoint_service_id",
            &required("endpoint_service_id", self.endpoint_service_id)?,
        )?;
        let vpc_id = field_uuid("vpc_id", &required("vpc_id", self.vpc_id)?)?;
        let subnet_id = self
            .subnet_id
            .as_deref()
            .map(|s| field_uuid("subnet_id", s))
            .transpose()?;
        let tags = self.tags.unwrap_or_default();
        check_tags(&tags)?;
        let whitelist = self.whitelist.unwrap_or_default();
        check_whitelist(&whitelist)?;
        let description = self.description.unwrap_or_default();
        check_description("description", &description)?;
        let policy_statement = self.policy_statement.unwrap_or_default();
        check_policy(&policy_statement)?;
        let routetables = check_routetables(&self.routetables.unwrap_or_default())?;
        if let Some(v) = &self.ip_version {
            check_enum("ip_version", v, &IP_VERSIONS)?;
        }
        let (max_connections, max_new_connections_per_second) =
            check_limits(self.max_connections, self.max_new_connections_per_second)?;
        Ok(NewEndpoint {
            service_id,
            vpc_id,
            subnet_id,
            port_ip: self.port_ip,
            enable_dns: self.enable_dns.unwrap_or(false),
            tags,
            whitelist,
            enable_whitelist: self.enable_whitelist,
            routetables,
            description,
            policy_statement,
            policy_document: self
                .policy_document
                .map(Value::Object)
                .unwrap_or(Value::Null),
            max_connections,
            max_new_connections_per_second,
        })
    }
}

pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateEndpoint>,
) -> ApiResult<Json<EndpointView>> {
    let n = req.checked()?;
    let ep = st
        .in_tx(async |tx| endpoints::create(tx, &st.config, &caller, n).await)
        .await?;
    Ok(Json(ep.view()))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<EndpointPage>> {
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
    let (page, total) = paging.apply(items);
    Ok(Json(EndpointPage {
        endpoints: page.iter().map(Endpoint::view).collect(),
        total_count: total,
    }))
}

pub async fn show(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<EndpointView>> {
    let id = parse_id(&id, "endpoint")?;
    match st.store.get::<Endpoint>(&id).await? {
        Some(e) if e.project_id == caller.project_id => Ok(Json(e.view())),
        _ => Err(ApiError::not_found("endpoint")),
    }
}

/// Applies `change` to one of the caller's endpoints in a transaction of its own.
async fn modify(
    st: &AppState,
    caller: &Caller,
    id: &str,
    change: impl FnOnce(&mut Endpoint),
) -> ApiResult<Endpoint> {
    let e = st
        .in_tx(async |tx| endpoints::modify(tx, caller, id, change).await)
        .await?;
    Ok(e)
}

pub async fn update_whitelist(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateWhitelist>,
) -> ApiResult<Json<EndpointView>> {
    if let Some(w) = &req.whitelist {
        check_whitelist(w)?;
    }
    let e = modify(&st, &caller, &id, |e| {
        if let Some(w) = req.whitelist {
            e.whitelist = w;
        }
        if let Some(en) = req.enable_whitelist {
            e.enable_whitelist = en;
        }
    })
    .await?;
    Ok(Json(e.view()))
}

pub async fn update_policy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdatePolicy>,
) -> ApiResult<Json<EndpointView>> {
    if let Some(p) = &req.policy_statement {
        check_policy(p)?;
    }
    let e = modify(&st, &caller, &id, |e| {
        if let Some(p) = req.policy_statement {
            e.policy_statement = serde_json::to_value(&p).unwrap_or_default();
        }
        if let Some(d) = req.policy_document {
            e.policy_document = Value::Object(d);
        }
    })
    .await?;
    Ok(Json(e.view()))
}

pub async fn delete_policy(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<EndpointView>> {
    let e = modify(&st, &caller, &id, |e| {
        e.policy_statement = json!([]);
        e.policy_document = Value::Null;
    })
    .await?;
    Ok(Json(e.view()))
}

pub async fn update_routetables(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateRoutetables>,
) -> ApiResult<Json<Routetables>> {
    let rts = check_routetables(&required("routetables", req.routetables)?)?;
    let e = modify(&st, &caller, &id, |e| e.routetables = rts).await?;
    Ok(Json(Routetables {
        routetables: e.routetables,
        error: Vec::<QueryError>::new(),
    }))
}
