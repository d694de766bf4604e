//! Endpoint services: create, update, rename, delete, visibility, and the lifecycle
//! (activation, the sweep at start, suspend/resume with the backend NIC, limit fill-in).
use std::collections::HashSet;

use serde_json::Value;

use super::{Config, Result, Touch, endpoints::refresh_dns_names, quota};
use crate::{
    domain::{
        Caller, Endpoint, EndpointStatus, Error, MAX_SERVICES_PER_BACKEND, Permission, Port,
        PortMapping, SNAT_RANGE, Service, ServiceStatus, Tag, Vpc, dns, full_name, new_id, now,
        parse_cidr, parse_id, permitted, port_clash,
    },
    store::{Filter, Object, Store, StoreError, WriteTx},
};

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewService {
    pub port_id: String,
    pub vpc_id: String,
    pub service_name: Option<String>,
    pub server_type: String,
    pub service_type: String,
    pub approval_enabled: bool,
    /// The address endpoints reach; default: the backend NIC's.
    pub ip: Option<String>,
    pub ports: Vec<PortMapping>,
    pub tcp_proxy: String,
    pub proxy_header_placement: String,
    /// Checked for syntax; ownership and uniqueness are checked here.
    pub private_dns_name: String,
    pub tags: Vec<Tag>,
    pub description: String,
    pub ip_version: String,
    pub max_connections: Option<u32>,
    pub max_new_connections_per_second: Option<u32>,
}

/// A validated update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServiceChange {
    pub approval_enabled: Option<bool>,
    pub service_name: Option<String>,
    pub ports: Option<Vec<PortMapping>>,
    pub port_id: Option<String>,
    pub tcp_proxy: Option<String>,
    pub proxy_header_placement: Option<String>,
    /// `Some("")` removes the name.
    pub private_dns_name: Option<String>,
    pub description: Option<String>,
    pub ip: Option<String>,
    pub max_connections: Option<u32>,
    pub max_new_connections_per_second: Option<u32>,
}

/// Loads a service owned by the caller (404 otherwise: other tenants' services are invisible).
pub async fn own(tx: &mut WriteTx, caller: &Caller, id: &str) -> Result<Service> {
    let id = parse_id(id, "endpoint service")?;
    match tx.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => Ok(s),
        _ => Err(Error::not_found("endpoint service")),
    }
}

/// Whether the caller owns the service (for reads; 404 otherwise).
pub async fn check_owned(store: &Store, caller: &Caller, id: &str) -> Result<String> {
    let id = parse_id(id, "endpoint service")?;
    match store.get::<Service>(&id).await? {
        Some(s) if s.project_id == caller.project_id => Ok(id),
        _ => Err(Error::not_found("endpoint service")),
    }
}

/// Loads a service the caller owns or is whitelisted for.
pub async fn visible(store: &Store, caller: &Caller, id: &str) -> Result<Service> {
    let id = parse_id(id, "endpoint service")?;
    let s = store
        .get::<Service>(&id)
        .await?
        .ok_or_else(|| Error::not_found("endpoint service"))?;
    if s.project_id == caller.project_id {
        return Ok(s);
    }
    let perms = store.list::<Permission>(Filter::Ref1(&s.id)).await?;
    if permitted(&s, &perms, &caller.project_id, &caller.domain_id) {
        Ok(s)
    } else {
        Err(Error::not_found("endpoint service"))
    }
}

/// Ids of the services whitelisted for any of these permission strings.
async fn whitelisted(store: &Store, perms: &[String]) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for p in perms {
        for perm in store.list::<Permission>(Filter::Ref2(p)).await? {
            ids.insert(perm.service_id);
        }
    }
    Ok(ids)
}

/// Services the caller may use but does not own (whitelisted, `*`, or gateway services).
pub async fn foreign_visible(store: &Store, caller: &Caller) -> Result<Vec<Service>> {
    let perms = [
        "*".to_owned(),
        "iam:domain::*".to_owned(),
        format!("iam:domain::{}", caller.domain_id),
    ];
    let ids = whitelisted(store, &perms).await?;
    let mut out = Vec::new();
    for s in store.list::<Service>(Filter::All).await? {
        if s.project_id != caller.project_id && (ids.contains(&s.id) || s.service_type == "gateway")
        {
            out.push(s);
        }
    }
    Ok(out)
}

/// Services every tenant can use: gateway services and services whitelisted for `*`.
pub async fn open_to_all(store: &Store) -> Result<Vec<Service>> {
    let star = whitelisted(store, &["*".to_owned(), "iam:domain::*".to_owned()]).await?;
    Ok(store
        .list::<Service>(Filter::All)
        .await?
        .into_iter()
        .filter(|s| s.service_type == "gateway" || star.contains(&s.id))
        .collect())
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
) -> Result<String> {
    let vpc = tx
        .get::<Vpc>(vpc_id)
        .await?
        .filter(|v| v.project_id == caller.project_id)
        .ok_or_else(|| Error::invalid("vpc_id", "no such VPC in this project"))?;
    let cidr = parse_cidr(&vpc.cidr).ok_or_else(|| Error::invalid("vpc_id", "bad CIDR"))?;
    if cidr.overlaps(SNAT_RANGE) {
        return Err(Error::invalid(
            "vpc_id",
            format!("the provider VPC must not overlap {SNAT_RANGE}"),
        ));
    }
    let port = tx
        .get::<Port>(port_id)
        .await?
        .filter(|p| p.vpc_id == vpc.id)
        .ok_or_else(|| Error::invalid("port_id", "no such port in the VPC"))?;
    let siblings: Vec<Service> = tx
        .list::<Service>(Filter::Ref1(port_id))
        .await?
        .into_iter()
        .filter(|s| Some(s.id.as_str()) != self_id)
        .collect();
    if siblings.len() >= MAX_SERVICES_PER_BACKEND {
        return Err(Error::invalid(
            "port_id",
            format!("at most {MAX_SERVICES_PER_BACKEND} endpoint services per backend resource"),
        ));
    }
    for s in &siblings {
        if let Some(what) = port_clash(ports, &s.ports) {
            return Err(Error::Conflict(format!(
                "ports: {what} is already used by endpoint service {} on the same port_id",
                s.id
            )));
        }
    }
    Ok(port.ip)
}

/// Creates a service in `creating`: quota, backend checks, the region's default limits.
/// The caller activates it once committed ([`activate`]).
pub async fn create(
    tx: &mut WriteTx,
    config: &Config,
    caller: &Caller,
    n: NewService,
) -> Result<Service> {
    quota::check_room::<Service>(tx, config, &caller.project_id).await?;
    let backend_ip = check_backend(tx, caller, &n.vpc_id, &n.port_id, &n.ports, None).await?;
    check_private_dns_name(tx, config, &n.private_dns_name, None).await?;
    let id = new_id();
    let now = now();
    let rev = tx.revision();
    let svc = Service {
        service_name: full_name(&config.region, n.service_name.as_deref(), &id),
        id,
        project_id: caller.project_id.clone(),
        domain_id: caller.domain_id.clone(),
        port_id: n.port_id,
        vpc_id: n.vpc_id,
        server_type: n.server_type,
        service_type: n.service_type,
        approval_enabled: n.approval_enabled,
        status: ServiceStatus::Creating,
        ip: n.ip.unwrap_or(backend_ip),
        ports: n.ports,
        tcp_proxy: n.tcp_proxy,
        proxy_header_placement: n.proxy_header_placement,
        private_dns_name: n.private_dns_name,
        tags: n.tags,
        description: n.description,
        enable_policy: false,
        ip_version: n.ip_version,
        server_resources: Vec::new(),
        max_connections: Some(n.max_connections.unwrap_or(config.default_max_connections)),
        max_new_connections_per_second: Some(
            n.max_new_connections_per_second
                .unwrap_or(config.default_max_new_connections_per_second),
        ),
        created_at: now.clone(),
        updated_at: now,
        created_rev: rev,
        updated_rev: rev,
    };
    tx.put(&svc).await?;
    Ok(svc)
}

/// Applies an update to one of the caller's services.
pub async fn update(
    tx: &mut WriteTx,
    config: &Config,
    caller: &Caller,
    id: &str,
    c: ServiceChange,
) -> Result<Service> {
    let mut s = own(tx, caller, id).await?;
    if c.ports.is_some() || c.port_id.is_some() {
        let port_id = c.port_id.clone().unwrap_or_else(|| s.port_id.clone());
        let mappings = c.ports.clone().unwrap_or_else(|| s.ports.clone());
        let vpc = s.vpc_id.clone();
        let ip = check_backend(tx, caller, &vpc, &port_id, &mappings, Some(&s.id)).await?;
        if c.port_id.is_some() {
            s.port_id = port_id;
            if c.ip.is_none() {
                s.ip = ip;
            }
            // Re-associated with an existing backend of the same type: resume.
            if matches!(s.status, ServiceStatus::Suspended | ServiceStatus::Failed) {
                s.status = ServiceStatus::Available;
            }
        }
        s.ports = mappings;
    }
    let mut renamed = false;
    if let Some(n) = &c.service_name {
        s.service_name = full_name(&config.region, Some(n), &s.id);
        renamed = true;
    }
    if let Some(n) = c.private_dns_name {
        check_private_dns_name(tx, config, &n, Some(&s.id)).await?;
        renamed |= n != s.private_dns_name;
        s.private_dns_name = n;
    }
    if renamed {
        rename_endpoints(tx, config, &s).await?;
    }
    let keep = |v: &mut String, new: Option<String>| {
        if let Some(n) = new {
            *v = n;
        }
    };
    keep(&mut s.tcp_proxy, c.tcp_proxy);
    keep(&mut s.proxy_header_placement, c.proxy_header_placement);
    keep(&mut s.description, c.description);
    keep(&mut s.ip, c.ip);
    s.approval_enabled = c.approval_enabled.unwrap_or(s.approval_enabled);
    s.max_connections = c.max_connections.or(s.max_connections);
    s.max_new_connections_per_second = c
        .max_new_connections_per_second
        .or(s.max_new_connections_per_second);
    s.touch(tx);
    tx.put(&s).await?;
    Ok(s)
}

/// Endpoints carry their service's name.
async fn rename_endpoints(tx: &mut WriteTx, config: &Config, s: &Service) -> Result<()> {
    for mut e in tx.list::<Endpoint>(Filter::Ref1(&s.id)).await? {
        e.service_name = s.service_name.clone();
        refresh_dns_names(config, &mut e, s);
        e.touch(tx);
        tx.put(&e).await?;
    }
    Ok(())
}

/// A provider's private DNS name (empty: none) must lie outside the generated zone, under
/// a suffix the operator allows (when it names any), and be no other service's.
async fn check_private_dns_name(
    tx: &mut WriteTx,
    config: &Config,
    name: &str,
    self_id: Option<&str>,
) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    let zone = config.dns_zone();
    if dns::in_zone(name, &zone) {
        return Err(Error::invalid(
            "private_dns_name",
            format!("{zone} is the zone of the generated names"),
        ));
    }
    let suffixes = &config.private_dns_suffixes;
    if !suffixes.is_empty() && !suffixes.iter().any(|z| dns::in_zone(name, z) && name != z) {
        return Err(Error::invalid(
            "private_dns_name",
            format!(
                "must end in one of the allowed suffixes: {}",
                suffixes.join(", ")
            ),
        ));
    }
    let taken = tx
        .list::<Service>(Filter::All)
        .await?
        .into_iter()
        .find(|s| s.private_dns_name == name && Some(s.id.as_str()) != self_id);
    if let Some(s) = taken {
        return Err(Error::Conflict(format!(
            "private_dns_name: {name} is already the name of endpoint service {}",
            s.id
        )));
    }
    Ok(())
}

/// Renames one of the caller's services (and its endpoints' copies of the name).
pub async fn rename(
    tx: &mut WriteTx,
    config: &Config,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<Service> {
    let mut s = own(tx, caller, id).await?;
    s.service_name = full_name(&config.region, Some(name), &s.id);
    s.touch(tx);
    tx.put(&s).await?;
    rename_endpoints(tx, config, &s).await?;
    Ok(s)
}

/// Deletes a service without live connections; its pending or rejected endpoints fail and
/// its whitelist goes with it.
pub async fn delete(tx: &mut WriteTx, caller: &Caller, id: &str) -> Result<()> {
    let s = own(tx, caller, id).await?;
    let eps = tx.list::<Endpoint>(Filter::Ref1(&s.id)).await?;
    if let Some(e) = eps.iter().find(|e| {
        matches!(
            e.status,
            EndpointStatus::Accepted | EndpointStatus::Creating
        )
    }) {
        return Err(Error::Conflict(format!(
            "endpoint service has {} endpoint {}; reject or delete it first",
            e.status, e.id
        )));
    }
    for mut e in eps {
        e.status = EndpointStatus::Failed;
        e.dns_names.clear();
        e.touch(tx);
        tx.put(&e).await?;
    }
    for p in tx.list::<Permission>(Filter::Ref1(&s.id)).await? {
        tx.delete::<Permission>(&p.id).await?;
    }
    tx.delete::<Service>(&s.id).await?;
    Ok(())
}

/// Adds server resources (kept as given, without duplicates) to one of the caller's services.
pub async fn add_server_resources(
    tx: &mut WriteTx,
    caller: &Caller,
    id: &str,
    add: Vec<Value>,
) -> Result<()> {
    let mut s = own(tx, caller, id).await?;
    for a in add {
        if !s.server_resources.contains(&a) {
            s.server_resources.push(a);
        }
    }
    s.touch(tx);
    tx.put(&s).await?;
    Ok(())
}

// ---- lifecycle ----

/// Moves a creating service to available (backend present) or failed. The API's creates are
/// asynchronous: this runs after the create has been answered, and at start for services
/// left in `creating`.
pub async fn activate(tx: &mut WriteTx, id: &str) -> Result<(), StoreError> {
    let Some(mut s) = tx.get::<Service>(id).await? else {
        return Ok(());
    };
    if s.status != ServiceStatus::Creating {
        return Ok(());
    }
    s.status = if tx.get::<Port>(&s.port_id).await?.is_some() {
        ServiceStatus::Available
    } else {
        ServiceStatus::Failed
    };
    s.touch(tx);
    tx.put(&s).await
}

/// [`activate`] in a transaction of its own.
pub async fn activate_now(store: &Store, id: &str) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    activate(&mut tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// [`activate_now`] once the create has been answered (the API's creates are asynchronous).
pub fn activate_soon(store: Store, id: String) {
    tokio::spawn(async move {
        if let Err(e) = activate_now(&store, &id).await {
            tracing::error!(service = %id, error = %e, "activating endpoint service failed");
        }
    });
}

/// The services still in `creating` (for the sweep at start).
pub async fn creating(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .list::<Service>(Filter::All)
        .await?
        .into_iter()
        .filter(|s| s.status == ServiceStatus::Creating)
        .map(|s| s.id)
        .collect())
}

async fn backend_moved(
    tx: &mut WriteTx,
    port_id: &str,
    from: ServiceStatus,
    to: ServiceStatus,
) -> Result<(), StoreError> {
    for mut s in tx.list::<Service>(Filter::Ref1(port_id)).await? {
        if s.status == from {
            s.status = to;
            s.touch(tx);
            tx.put(&s).await?;
        }
    }
    Ok(())
}

/// The backend NIC went away: its available services become suspended.
pub async fn on_port_removed(tx: &mut WriteTx, port_id: &str) -> Result<(), StoreError> {
    backend_moved(
        tx,
        port_id,
        ServiceStatus::Available,
        ServiceStatus::Suspended,
    )
    .await
}

/// The backend NIC is back: its suspended services resume.
pub async fn on_port_added(tx: &mut WriteTx, port_id: &str) -> Result<(), StoreError> {
    backend_moved(
        tx,
        port_id,
        ServiceStatus::Suspended,
        ServiceStatus::Available,
    )
    .await
}

/// Gives the services stored before limits existed the region's default limits (once per
/// database; a no-op afterwards).
pub async fn fill_service_limits(store: &Store, config: &Config) -> Result<usize, StoreError> {
    let mut tx = store.write().await?;
    if !tx.claim_limits_fill(Service::KIND).await? {
        // Dropped: the revision bump rolls back.
        return Ok(0);
    }
    let mut n = 0;
    for mut s in tx.list::<Service>(Filter::All).await? {
        if s.max_connections.is_none() || s.max_new_connections_per_second.is_none() {
            s.max_connections
                .get_or_insert(config.default_max_connections);
            s.max_new_connections_per_second
                .get_or_insert(config.default_max_new_connections_per_second);
            tx.put(&s).await?;
            n += 1;
        }
    }
    tx.commit().await?;
    if n > 0 {
        tracing::info!(services = n, "default connection limits filled in");
    }
    Ok(n)
}
