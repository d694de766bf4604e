//! The inventory the operator and the agents keep: VPCs (VNI allocation), subnets, NICs
//! (address assignment, backend suspend/resume) and nodes (SNAT address allocation).
use std::{collections::HashSet, net::Ipv4Addr};

use super::{Result, addresses::assign_ip, services};
use crate::{
    domain::{
        Endpoint, Error, Ipv4Network, MAX_VNI, Node, Port, SNAT_RANGE, Service, Subnet, Vpc,
        bounds, now, parse_cidr,
    },
    store::{Filter, Object, Store, WriteTx},
};

/// Fails when a record with this id exists (`what` names it).
async fn absent<T: Object>(tx: &mut WriteTx, id: &str, what: &str) -> Result<()> {
    if tx.get::<T>(id).await?.is_some() {
        return Err(Error::Conflict(format!("id: {what} {id} exists")));
    }
    Ok(())
}

/// Creates a VPC with the given VNI, or the lowest free one.
pub async fn create_vpc(tx: &mut WriteTx, mut vpc: Vpc, vni: Option<u32>) -> Result<Vpc> {
    absent::<Vpc>(tx, &vpc.id, "VPC").await?;
    let used: HashSet<u32> = tx
        .list::<Vpc>(Filter::All)
        .await?
        .iter()
        .map(|v| v.vni)
        .collect();
    vpc.vni = match vni {
        Some(v) if used.contains(&v) => {
            return Err(Error::Conflict(format!("vni: {v} is in use")));
        }
        Some(v) => v,
        None => (1..=MAX_VNI)
            .find(|v| !used.contains(v))
            .ok_or_else(|| Error::Conflict("vni: none free".to_owned()))?,
    };
    tx.put(&vpc).await?;
    Ok(vpc)
}

/// Deletes a VPC nothing refers to.
pub async fn delete_vpc(tx: &mut WriteTx, id: &str) -> Result<()> {
    tx.get::<Vpc>(id)
        .await?
        .ok_or_else(|| Error::not_found("VPC"))?;
    let refs = [
        ("subnets", tx.count::<Subnet>(Filter::Ref1(id)).await?),
        ("ports", tx.count::<Port>(Filter::Ref2(id)).await?),
        (
            "endpoint services",
            tx.count::<Service>(Filter::Ref2(id)).await?,
        ),
        ("endpoints", tx.count::<Endpoint>(Filter::Ref2(id)).await?),
    ];
    if let Some((what, n)) = refs.iter().find(|(_, n)| *n > 0) {
        return Err(Error::Conflict(format!("VPC is still used by {n} {what}")));
    }
    tx.delete::<Vpc>(id).await?;
    Ok(())
}

/// Creates a subnet inside its VPC's CIDR, overlapping none of the VPC's other subnets.
pub async fn create_subnet(
    tx: &mut WriteTx,
    id: String,
    vpc_id: String,
    cidr: Ipv4Network,
    gateway: u32,
    dns_address: u32,
) -> Result<Subnet> {
    let vpc = tx
        .get::<Vpc>(&vpc_id)
        .await?
        .ok_or_else(|| Error::invalid("vpc_id", "no such VPC"))?;
    let vcidr = parse_cidr(&vpc.cidr).ok_or_else(|| Error::invalid("vpc_id", "bad CIDR"))?;
    if !cidr.is_subnet_of(vcidr) {
        return Err(Error::invalid(
            "cidr",
            format!("must be inside the VPC's {vcidr}"),
        ));
    }
    absent::<Subnet>(tx, &id, "subnet").await?;
    for s in tx.list::<Subnet>(Filter::Ref1(&vpc_id)).await? {
        if parse_cidr(&s.cidr).is_some_and(|c| c.overlaps(cidr)) {
            return Err(Error::Conflict(format!(
                "cidr: overlaps subnet {} ({})",
                s.id, s.cidr
            )));
        }
    }
    let subnet = Subnet {
        id,
        project_id: vpc.project_id,
        vpc_id,
        cidr: cidr.to_string(),
        gateway_ip: Ipv4Addr::from(gateway).to_string(),
        dns_address: Ipv4Addr::from(dns_address).to_string(),
        created_at: now(),
    };
    tx.put(&subnet).await?;
    Ok(subnet)
}

/// Deletes a subnet without NICs or endpoints.
pub async fn delete_subnet(tx: &mut WriteTx, id: &str) -> Result<()> {
    let s = tx
        .get::<Subnet>(id)
        .await?
        .ok_or_else(|| Error::not_found("subnet"))?;
    let ports = tx.count::<Port>(Filter::Ref1(id)).await?;
    let eps = tx
        .list::<Endpoint>(Filter::Ref2(&s.vpc_id))
        .await?
        .iter()
        .filter(|e| e.subnet_id == id)
        .count();
    if ports > 0 || eps > 0 {
        return Err(Error::Conflict(format!(
            "subnet is still used by {ports} ports and {eps} endpoints"
        )));
    }
    tx.delete::<Subnet>(id).await?;
    Ok(())
}

/// A NIC to register.
#[derive(Debug, Clone)]
pub struct NewPort {
    pub id: String,
    pub subnet_id: String,
    pub ip: Option<String>,
    pub mac: String,
    pub node: String,
}

/// Registers a NIC on a known node, with an address in its subnet; services it backs resume.
pub async fn create_port(tx: &mut WriteTx, n: NewPort) -> Result<Port> {
    if tx.get::<Node>(&n.node).await?.is_none() {
        return Err(Error::invalid("node", "no such node"));
    }
    absent::<Port>(tx, &n.id, "port").await?;
    let subnet = tx
        .get::<Subnet>(&n.subnet_id)
        .await?
        .ok_or_else(|| Error::invalid("subnet_id", "no such subnet"))?;
    let ip = assign_ip(tx, &subnet, n.ip.as_deref(), "ip").await?;
    let port = Port {
        id: n.id,
        project_id: subnet.project_id.clone(),
        vpc_id: subnet.vpc_id.clone(),
        subnet_id: n.subnet_id,
        ip,
        mac: n.mac,
        node: n.node,
        created_at: now(),
    };
    tx.put(&port).await?;
    services::on_port_added(tx, &port.id).await?;
    Ok(port)
}

/// Loads a NIC (404 otherwise).
pub async fn port(tx: &mut WriteTx, id: &str) -> Result<Port> {
    tx.get::<Port>(id)
        .await?
        .ok_or_else(|| Error::not_found("port"))
}

/// Removes a NIC; services it backs are suspended.
pub async fn delete_port(tx: &mut WriteTx, id: &str) -> Result<()> {
    tx.delete::<Port>(id).await?;
    services::on_port_removed(tx, id).await?;
    Ok(())
}

/// Registers a node (with the lowest free SNAT address) or updates its underlay address.
pub async fn put_node(tx: &mut WriteTx, name: &str, underlay: String) -> Result<Node> {
    let node = match tx.get::<Node>(name).await? {
        Some(mut n) => {
            n.underlay_ip = underlay;
            n
        }
        None => {
            let used: HashSet<u32> = tx
                .list::<Node>(Filter::All)
                .await?
                .iter()
                .filter_map(|n| n.snat_ip.parse::<Ipv4Addr>().ok())
                .map(u32::from)
                .collect();
            let (network, broadcast) = bounds(SNAT_RANGE);
            let snat = (network + 1..broadcast)
                .find(|a| !used.contains(a))
                .ok_or_else(|| Error::Conflict("no free SNAT address".to_owned()))?;
            Node {
                name: name.to_owned(),
                underlay_ip: underlay,
                snat_ip: Ipv4Addr::from(snat).to_string(),
                created_at: now(),
            }
        }
    };
    tx.put(&node).await?;
    Ok(node)
}

/// Removes a node without NICs.
pub async fn delete_node(tx: &mut WriteTx, name: &str) -> Result<()> {
    tx.get::<Node>(name)
        .await?
        .ok_or_else(|| Error::not_found("node"))?;
    let ports = tx
        .list::<Port>(Filter::All)
        .await?
        .iter()
        .filter(|p| p.node == name)
        .count();
    if ports > 0 {
        return Err(Error::Conflict(format!("node still has {ports} ports")));
    }
    tx.delete::<Node>(name).await?;
    Ok(())
}

/// Records the feed revision a node's agent has applied.
pub async fn set_applied(store: &Store, name: &str, revision: i64) -> Result<Node> {
    if revision < 0 {
        return Err(Error::invalid("revision", "must not be negative"));
    }
    let n = store
        .get::<Node>(name)
        .await?
        .ok_or_else(|| Error::not_found("node"))?;
    store.set_applied(name, revision, &now()).await?;
    Ok(n)
}
