//! Endpoints: create (permission, state, quota, address), changes and delete.
use serde_json::Value;

use super::{Config, Result, Touch, addresses::assign_ip, quota};
use crate::{
    domain::{
        Caller, Endpoint, EndpointStatus, Error, Permission, PolicyStatement, Service,
        ServiceStatus, Subnet, Tag, Vpc, dns, new_id, now, parse_id, permitted,
    },
    store::{Filter, WriteTx},
};

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub service_id: String,
    pub vpc_id: String,
    pub subnet_id: Option<String>,
    pub port_ip: Option<String>,
    pub enable_dns: bool,
    pub tags: Vec<Tag>,
    pub whitelist: Vec<String>,
    pub enable_whitelist: Option<bool>,
    pub routetables: Vec<String>,
    pub description: String,
    pub policy_statement: Vec<PolicyStatement>,
    pub policy_document: Value,
    pub max_connections: Option<u32>,
    pub max_new_connections_per_second: Option<u32>,
}

/// The service to connect to: visible to the caller and available.
async fn usable_service(tx: &mut WriteTx, caller: &Caller, id: &str) -> Result<Service> {
    let svc = tx
        .get::<Service>(id)
        .await?
        .ok_or_else(|| Error::not_found("endpoint service"))?;
    let perms = tx.list::<Permission>(Filter::Ref1(&svc.id)).await?;
    if !permitted(&svc, &perms, &caller.project_id, &caller.domain_id) {
        return Err(Error::not_found("endpoint service"));
    }
    if svc.status != ServiceStatus::Available {
        return Err(Error::Conflict(format!(
            "endpoint service is {}, not available",
            svc.status
        )));
    }
    Ok(svc)
}

/// The endpoint's subnet and address: an interface endpoint takes one in its subnet, a
/// gateway endpoint none.
async fn placement(tx: &mut WriteTx, svc: &Service, n: &NewEndpoint) -> Result<(String, String)> {
    if svc.service_type != "interface" {
        return Ok((n.subnet_id.clone().unwrap_or_default(), String::new()));
    }
    let sid = n.subnet_id.clone().ok_or_else(|| {
        Error::invalid("subnet_id", "is required for interface endpoint services")
    })?;
    let subnet = tx
        .get::<Subnet>(&sid)
        .await?
        .filter(|s| s.vpc_id == n.vpc_id)
        .ok_or_else(|| Error::invalid("subnet_id", "no such subnet in the VPC"))?;
    let ip = assign_ip(tx, &subnet, n.port_ip.as_deref(), "port_ip").await?;
    Ok((sid, ip))
}

/// Creates an endpoint of the caller's project: accepted at once, or pending when the
/// service wants approval.
pub async fn create(
    tx: &mut WriteTx,
    config: &Config,
    caller: &Caller,
    n: NewEndpoint,
) -> Result<Endpoint> {
    let svc = usable_service(tx, caller, &n.service_id).await?;
    quota::check_room::<Endpoint>(tx, config, &caller.project_id).await?;
    tx.get::<Vpc>(&n.vpc_id)
        .await?
        .filter(|v| v.project_id == caller.project_id)
        .ok_or_else(|| Error::invalid("vpc_id", "no such VPC in this project"))?;
    if n.enable_dns {
        // One endpoint per service and VPC may have the domain name (the names would clash).
        let taken = tx
            .list::<Endpoint>(Filter::Ref1(&svc.id))
            .await?
            .into_iter()
            .find(|e| e.enable_dns && e.vpc_id == n.vpc_id);
        if let Some(e) = taken {
            return Err(Error::Conflict(format!(
                "enable_dns: endpoint {} of this VPC already has the domain name of endpoint \
                 service {}; only one endpoint per service and VPC may enable it",
                e.id, svc.id
            )));
        }
    }
    let (subnet_id, ip) = placement(tx, &svc, &n).await?;
    let rev = tx.revision();
    let now = now();
    let id = new_id();
    let mut ep = Endpoint {
        id,
        project_id: caller.project_id.clone(),
        domain_id: caller.domain_id.clone(),
        service_id: svc.id.clone(),
        service_name: svc.service_name.clone(),
        service_type: svc.service_type.clone(),
        service_project_id: svc.project_id.clone(),
        status: if svc.approval_enabled {
            EndpointStatus::PendingAcceptance
        } else {
            EndpointStatus::Accepted
        },
        vpc_id: n.vpc_id,
        subnet_id,
        ip,
        // The creating revision is unique and increasing: a ready-made marker id.
        marker_id: rev,
        enable_dns: n.enable_dns,
        dns_names: Vec::new(),
        enable_whitelist: n.enable_whitelist.unwrap_or(!n.whitelist.is_empty()),
        whitelist: n.whitelist,
        routetables: n.routetables,
        description: n.description,
        connection_description: String::new(),
        policy_statement: serde_json::to_value(&n.policy_statement).unwrap_or_default(),
        policy_document: n.policy_document,
        tags: n.tags,
        max_connections: n.max_connections,
        max_new_connections_per_second: n.max_new_connections_per_second,
        created_at: now.clone(),
        updated_at: now,
        created_rev: rev,
        updated_rev: rev,
    };
    refresh_dns_names(config, &mut ep, &svc);
    tx.put(&ep).await?;
    Ok(ep)
}

/// Sets an endpoint's `dns_names` from its state and its service: the names while it is
/// accepted with the domain name on, none otherwise.
pub fn refresh_dns_names(config: &Config, e: &mut Endpoint, svc: &Service) {
    e.dns_names = if e.enable_dns && e.status == EndpointStatus::Accepted {
        dns::endpoint_names(
            &config.dns_zone(),
            &config.region,
            &e.id,
            &svc.id,
            &svc.service_name,
            &svc.private_dns_name,
        )
    } else {
        Vec::new()
    };
}

/// Loads an endpoint of the caller's project (404 otherwise).
pub async fn own(tx: &mut WriteTx, caller: &Caller, id: &str) -> Result<Endpoint> {
    let id = parse_id(id, "endpoint")?;
    match tx.get::<Endpoint>(&id).await? {
        Some(e) if e.project_id == caller.project_id => Ok(e),
        _ => Err(Error::not_found("endpoint")),
    }
}

/// Changes one of the caller's endpoints with `change` and stores it.
pub async fn modify(
    tx: &mut WriteTx,
    caller: &Caller,
    id: &str,
    change: impl FnOnce(&mut Endpoint),
) -> Result<Endpoint> {
    let mut e = own(tx, caller, id).await?;
    change(&mut e);
    e.touch(tx);
    tx.put(&e).await?;
    Ok(e)
}

pub async fn delete(tx: &mut WriteTx, caller: &Caller, id: &str) -> Result<()> {
    let e = own(tx, caller, id).await?;
    tx.delete::<Endpoint>(&e.id).await?;
    Ok(())
}
