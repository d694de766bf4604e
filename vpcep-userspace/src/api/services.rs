//! Endpoint services: create, list, show, update, delete, rename, describe, public list.
use axum::{
    Extension, Json,
    extract::{RawQuery, State},
};
use serde::Deserialize;

use super::{
    AppState, Paging,
    error::{ApiError, ApiResult, Body, Path},
    fuzzy, query_map,
    views::{
        ConsumerServiceView, PublicServicePage, Renamed, ServiceForCaller, ServicePage, ServiceView,
    },
};
use crate::{
    domain::*,
    ops::services::{self, NewService, ServiceChange},
    store::Filter,
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateService {
    #[schemars(required, pattern(pattern::UUID))]
    port_id: Option<String>,
    #[schemars(pattern(pattern::SERVICE_NAME))]
    service_name: Option<String>,
    #[schemars(required, pattern(pattern::UUID))]
    vpc_id: Option<String>,
    /// Default true.
    approval_enabled: Option<bool>,
    /// Default `interface`; `gateway` for the operator only.
    #[schemars(extend("enum" = pattern::or_null(&SERVICE_TYPES)))]
    service_type: Option<String>,
    #[schemars(required, extend("enum" = SERVER_TYPES))]
    server_type: Option<String>,
    /// Default: the NIC's address.
    #[schemars(ipv4)]
    ip: Option<String>,
    #[schemars(required, length(min = 1, max = MAX_PORT_MAPPINGS))]
    ports: Option<Vec<PortMappingIn>>,
    /// Default `close`.
    #[schemars(extend("enum" = pattern::or_null(&TCP_PROXY)))]
    tcp_proxy: Option<String>,
    /// Extension: default `on_first_ack`.
    #[schemars(extend("enum" = pattern::or_null(&PROXY_HEADER_PLACEMENTS)))]
    proxy_header_placement: Option<String>,
    /// Extension: a DNS name the endpoints with `enable_dns` answer to in their VPC.
    #[schemars(length(max = 254))]
    private_dns_name: Option<String>,
    #[schemars(length(max = MAX_TAGS))]
    tags: Option<Vec<Tag>>,
    #[schemars(length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
    #[schemars(extend("enum" = pattern::or_null(&IP_VERSIONS)))]
    ip_version: Option<String>,
    #[allow(dead_code)]
    snat_network_id: Option<String>,
    /// Extension: the limits of each endpoint (default: the region's).
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_CONNECTIONS))]
    max_connections: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_NEW_CONNECTIONS_PER_SECOND))]
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateService {
    approval_enabled: Option<bool>,
    #[schemars(pattern(pattern::SERVICE_NAME))]
    service_name: Option<String>,
    #[schemars(length(min = 1, max = MAX_PORT_MAPPINGS))]
    ports: Option<Vec<PortMappingIn>>,
    #[schemars(pattern(pattern::UUID))]
    port_id: Option<String>,
    #[schemars(extend("enum" = pattern::or_null(&TCP_PROXY)))]
    tcp_proxy: Option<String>,
    #[schemars(extend("enum" = pattern::or_null(&PROXY_HEADER_PLACEMENTS)))]
    proxy_header_placement: Option<String>,
    /// Extension: `""` removes it.
    #[schemars(length(max = 254))]
    private_dns_name: Option<String>,
    #[schemars(length(max = 512), pattern(pattern::DESCRIPTION))]
    description: Option<String>,
    #[schemars(ipv4)]
    ip: Option<String>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_CONNECTIONS))]
    max_connections: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schemars(with = "Option<i64>", range(min = 0, max = MAX_NEW_CONNECTIONS_PER_SECOND))]
    max_new_connections_per_second: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RenameService {
    #[schemars(required, pattern(pattern::SERVICE_NAME))]
    endpoint_service_name: Option<String>,
}

/// A private DNS name's syntax (empty or absent: none); ownership is checked with the store.
fn check_private_dns_name(n: Option<&str>) -> ApiResult<String> {
    match n {
        None | Some("") => Ok(String::new()),
        Some(n) => {
            crate::domain::dns::check_name(n).map_err(|e| ApiError::invalid("private_dns_name", e))
        }
    }
}

impl CreateService {
    /// The request's fields, checked in the order the errors are reported.
    fn checked(self, caller: &Caller) -> ApiResult<NewService> {
        let port_id = field_uuid("port_id", &required("port_id", self.port_id)?)?;
        let vpc_id = field_uuid("vpc_id", &required("vpc_id", self.vpc_id)?)?;
        let server_type = required("server_type", self.server_type)?;
        check_enum("server_type", &server_type, &SERVER_TYPES)?;
        let ports = check_ports(required("ports", self.ports)?)?;
        if let Some(n) = &self.service_name {
            check_service_name(n)?;
        }
        let service_type = self.service_type.unwrap_or_else(|| "interface".to_owned());
        check_enum("service_type", &service_type, &SERVICE_TYPES)?;
        if service_type == "gateway" && !caller.operator {
            return Err(ApiError::invalid(
                "service_type",
                "gateway services are created by the operator",
            ));
        }
        let tcp_proxy = self.tcp_proxy.unwrap_or_else(|| "close".to_owned());
        check_enum("tcp_proxy", &tcp_proxy, &TCP_PROXY)?;
        let proxy_header_placement = self
            .proxy_header_placement
            .unwrap_or_else(|| PROXY_HEADER_PLACEMENTS[0].to_owned());
        check_enum(
            "proxy_header_placement",
            &proxy_header_placement,
            &PROXY_HEADER_PLACEMENTS,
        )?;
        let private_dns_name = check_private_dns_name(self.private_dns_name.as_deref())?;
        let tags = self.tags.unwrap_or_default();
        check_tags(&tags)?;
        let description = self.description.unwrap_or_default();
        check_description("description", &description)?;
        let ip_version = self.ip_version.unwrap_or_else(|| "ipv4".to_owned());
        check_enum("ip_version", &ip_version, &IP_VERSIONS)?;
        if let Some(ip) = &self.ip {
            parse_ip("ip", ip)?;
        }
        let (max_connections, max_new_connections_per_second) =
            check_limits(self.max_connections, self.max_new_connections_per_second)?;
        Ok(NewService {
            port_id,
            vpc_id,
            service_name: self.service_name,
            server_type,
            service_type,
            approval_enabled: self.approval_enabled.unwrap_or(true),
            ip: self.ip,
            ports,
            tcp_proxy,
            proxy_header_placement,
            private_dns_name,
            tags,
            description,
            ip_version,
            max_connections,
            max_new_connections_per_second,
        })
    }
}

impl UpdateService {
    fn checked(self) -> ApiResult<ServiceChange> {
        if let Some(n) = &self.service_name {
            check_service_name(n)?;
        }
        let ports = self.ports.map(check_ports).transpose()?;
        let port_id = self
            .port_id
            .as_deref()
            .map(|p| field_uuid("port_id", p))
            .transpose()?;
        if let Some(t) = &self.tcp_proxy {
            check_enum("tcp_proxy", t, &TCP_PROXY)?;
        }
        if let Some(p) = &self.proxy_header_placement {
            check_enum("proxy_header_placement", p, &PROXY_HEADER_PLACEMENTS)?;
        }
        let private_dns_name = self
            .private_dns_name
            .as_deref()
            .map(|n| check_private_dns_name(Some(n)))
            .transpose()?;
        if let Some(d) = &self.description {
            check_description("description", d)?;
        }
        if let Some(ip) = &self.ip {
            parse_ip("ip", ip)?;
        }
        let (max_connections, max_new_connections_per_second) =
            check_limits(self.max_connections, self.max_new_connections_per_second)?;
        Ok(ServiceChange {
            approval_enabled: self.approval_enabled,
            service_name: self.service_name,
            ports,
            port_id,
            tcp_proxy: self.tcp_proxy,
            proxy_header_placement: self.proxy_header_placement,
            private_dns_name,
            description: self.description,
            ip: self.ip,
            max_connections,
            max_new_connections_per_second,
        })
    }
}

pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateService>,
) -> ApiResult<Json<ServiceView>> {
    let n = req.checked(&caller)?;
    let svc = st
        .in_tx(async |tx| services::create(tx, &st.config, &caller, n).await)
        .await?;
    services::activate_soon(st.store.clone(), svc.id.clone());
    Ok(Json(svc.view()))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ServicePage>> {
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
                && q.get("status").is_none_or(|st| st == s.status.as_str())
        })
        .collect();
    let (page, total) = paging.apply(items);
    let mut out = Vec::with_capacity(page.len());
    for s in page {
        let eps = st.store.list::<Endpoint>(Filter::Ref1(&s.id)).await?;
        let mut v = s.view();
        v.connection_count = Some(eps.len());
        out.push(v);
    }
    Ok(Json(ServicePage {
        endpoint_services: out,
        total_count: total,
    }))
}

pub async fn show(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<ServiceForCaller>> {
    let s = services::visible(&st.store, &caller, &id).await?;
    Ok(Json(ServiceForCaller::of(&caller, &s)))
}

pub async fn update(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<UpdateService>,
) -> ApiResult<Json<ServiceView>> {
    let change = req.checked()?;
    let s = st
        .in_tx(async |tx| services::update(tx, &st.config, &caller, &id, change).await)
        .await?;
    Ok(Json(s.view()))
}

pub async fn rename(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    Body(req): Body<RenameService>,
) -> ApiResult<Json<Renamed>> {
    let name = required("endpoint_service_name", req.endpoint_service_name)?;
    check_service_name(&name).map_err(|_| {
        ApiError::invalid(
            "endpoint_service_name",
            "must be 1-16 letters, digits, '_' or '-'",
        )
    })?;
    let s = st
        .in_tx(async |tx| services::rename(tx, &st.config, &caller, &id, &name).await)
        .await?;
    Ok(Json(Renamed {
        endpoint_service_name: s.service_name,
    }))
}

pub async fn describe(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ConsumerServiceView>> {
    let q = query_map(q);
    let s = match (q.get("endpoint_service_name"), q.get("id")) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid(
                "endpoint_service_name",
                "exactly one of endpoint_service_name or id is required",
            ));
        }
        (None, Some(id)) => services::visible(&st.store, &caller, id).await?,
        (Some(name), None) => {
            let mut all = st
                .store
                .list::<Service>(Filter::Project(&caller.project_id))
                .await?;
            all.extend(services::foreign_visible(&st.store, &caller).await?);
            all.into_iter()
                .find(|s| s.service_name.eq_ignore_ascii_case(name))
                .ok_or_else(|| ApiError::not_found("endpoint service"))?
        }
    };
    // The consumer-facing call: the consumer view, whoever asks.
    Ok(Json(ConsumerServiceView::from(&s)))
}

pub async fn public(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<PublicServicePage>> {
    let q = query_map(q);
    let paging = Paging::from_query(&q, 1000)?;
    let items: Vec<Service> = services::foreign_visible(&st.store, &caller)
        .await?
        .into_iter()
        .filter(|s| {
            q.get("endpoint_service_name")
                .is_none_or(|n| fuzzy(&s.service_name, n))
                && q.get("id").is_none_or(|id| *id == s.id)
        })
        .collect();
    let (page, total) = paging.apply(items);
    Ok(Json(PublicServicePage {
        endpoint_services: page.iter().map(ConsumerServiceView::from).collect(),
        total_count: total,
    }))
}
