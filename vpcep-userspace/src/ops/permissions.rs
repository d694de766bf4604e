//! A service's whitelist (permissions) and its connections: acceptance and descriptions.
use super::{Config, Result, Touch, endpoints::refresh_dns_names, services};
use crate::{
    domain::{
        Caller, Endpoint, EndpointStatus, Error, MAX_PERMISSIONS, Permission, Service, new_id, now,
    },
    store::{Filter, WriteTx},
};

/// The connection `eid` of service `s`; `field` names it in the error.
async fn connection(tx: &mut WriteTx, s: &Service, eid: &str, field: &str) -> Result<Endpoint> {
    tx.get::<Endpoint>(eid)
        .await?
        .filter(|e| e.service_id == s.id)
        .ok_or_else(|| Error::invalid(field, "no such connection on this endpoint service"))
}

/// Accepts (`accept`) or rejects connections of one of the caller's services.
pub async fn accept(
    tx: &mut WriteTx,
    config: &Config,
    caller: &Caller,
    service_id: &str,
    endpoints: &[String],
    accept: bool,
) -> Result<Vec<Endpoint>> {
    let s = services::own(tx, caller, service_id).await?;
    let mut out = Vec::new();
    for (i, eid) in endpoints.iter().enumerate() {
        let mut e = connection(tx, &s, eid, &format!("endpoints[{i}]")).await?;
        if matches!(e.status, EndpointStatus::Failed | EndpointStatus::Deleting) {
            return Err(Error::Conflict(format!(
                "endpoints[{i}]: connection is {}",
                e.status
            )));
        }
        e.status = if accept {
            EndpointStatus::Accepted
        } else {
            EndpointStatus::Rejected
        };
        refresh_dns_names(config, &mut e, &s);
        e.touch(tx);
        tx.put(&e).await?;
        out.push(e);
    }
    Ok(out)
}

/// Sets the provider's descriptions of connections: (endpoint id, description).
pub async fn describe_connections(
    tx: &mut WriteTx,
    caller: &Caller,
    service_id: &str,
    items: Vec<(String, String)>,
) -> Result<Vec<Endpoint>> {
    let s = services::own(tx, caller, service_id).await?;
    let mut out = Vec::new();
    for (i, (eid, d)) in items.into_iter().enumerate() {
        let mut e = connection(tx, &s, &eid, &format!("connections[{i}].id")).await?;
        e.connection_description = d;
        e.touch(tx);
        tx.put(&e).await?;
        out.push(e);
    }
    Ok(out)
}

/// Whitelist entries to add: (permission, its type, description).
pub type NewPermission = (String, &'static str, String);

/// Adds entries not yet on the whitelist (≤ [`MAX_PERMISSIONS`]); returns those added and
/// the whole whitelist after.
pub async fn add(
    tx: &mut WriteTx,
    caller: &Caller,
    service_id: &str,
    items: Vec<NewPermission>,
) -> Result<(Vec<Permission>, Vec<Permission>)> {
    let s = services::own(tx, caller, service_id).await?;
    let mut existing = tx.list::<Permission>(Filter::Ref1(&s.id)).await?;
    let mut added = Vec::new();
    for (perm, ptype, description) in items {
        if existing.iter().any(|p| p.permission == perm) {
            continue;
        }
        if existing.len() >= MAX_PERMISSIONS {
            return Err(Error::invalid(
                "permissions",
                format!("at most {MAX_PERMISSIONS} whitelist entries per endpoint service"),
            ));
        }
        let p = Permission {
            id: new_id(),
            service_id: s.id.clone(),
            project_id: s.project_id.clone(),
            permission: perm,
            permission_type: ptype.to_owned(),
            description,
            created_at: now(),
            created_rev: tx.revision(),
        };
        tx.put(&p).await?;
        existing.push(p.clone());
        added.push(p);
    }
    Ok((added, existing))
}

/// Removes entries by permission string; returns the whole whitelist after.
pub async fn remove(
    tx: &mut WriteTx,
    caller: &Caller,
    service_id: &str,
    perms: &[String],
) -> Result<Vec<Permission>> {
    let s = services::own(tx, caller, service_id).await?;
    let mut existing = tx.list::<Permission>(Filter::Ref1(&s.id)).await?;
    for p in perms {
        if let Some(pos) = existing.iter().position(|e| e.permission == *p) {
            let gone = existing.remove(pos);
            tx.delete::<Permission>(&gone.id).await?;
        }
    }
    Ok(existing)
}

/// Removes entries by id; returns them.
pub async fn remove_ids(
    tx: &mut WriteTx,
    caller: &Caller,
    service_id: &str,
    ids: &[String],
) -> Result<Vec<Permission>> {
    let s = services::own(tx, caller, service_id).await?;
    let mut out = Vec::new();
    for (i, pid) in ids.iter().enumerate() {
        let p = tx
            .get::<Permission>(pid)
            .await?
            .filter(|p| p.service_id == s.id)
            .ok_or_else(|| {
                Error::invalid(format!("permissions[{i}].id"), "no such whitelist entry")
            })?;
        tx.delete::<Permission>(&p.id).await?;
        out.push(p);
    }
    Ok(out)
}

/// Sets the description of one whitelist entry.
pub async fn describe(
    tx: &mut WriteTx,
    caller: &Caller,
    service_id: &str,
    pid: &str,
    description: String,
) -> Result<Permission> {
    let s = services::own(tx, caller, service_id).await?;
    let mut p = tx
        .get::<Permission>(pid)
        .await?
        .filter(|p| p.service_id == s.id)
        .ok_or_else(|| Error::not_found("whitelist entry"))?;
    p.description = description;
    tx.put(&p).await?;
    Ok(p)
}
