//! Address assignment in a subnet, shared by endpoints and NICs (one address scope per
//! subnet, kept by the store's address index).
use std::net::Ipv4Addr;

use super::Result;
use crate::{
    domain::{Error, Subnet, bounds, parse_cidr, parse_ip},
    store::WriteTx,
};

/// Picks (or validates, naming `field` in errors) an address in the subnet for an endpoint
/// or a NIC: not the network, broadcast or gateway address, and not held by a NIC or an
/// endpoint of the subnet. Both are indexed lookups in the store's address index.
pub async fn assign_ip(
    tx: &mut WriteTx,
    subnet: &Subnet,
    wanted: Option<&str>,
    field: &str,
) -> Result<String> {
    let cidr = parse_cidr(&subnet.cidr)
        .ok_or_else(|| Error::invalid("subnet_id", "subnet has a bad CIDR"))?;
    let gateway: Vec<u32> = subnet
        .gateway_ip
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .into_iter()
        .collect();
    let (network, broadcast) = bounds(cidr);
    let (first, last) = if cidr.prefix() >= 31 {
        (network, broadcast)
    } else {
        (network + 1, broadcast - 1)
    };
    if let Some(w) = wanted {
        let ip = parse_ip(field, w)?;
        if ip < first || ip > last {
            return Err(Error::invalid(
                field,
                format!("must be a host address in the subnet {cidr}"),
            ));
        }
        if gateway.contains(&ip) || tx.address_taken(&subnet.id, ip).await? {
            return Err(Error::Conflict(format!("port_ip: {w} is already in use")));
        }
        return Ok(w.to_owned());
    }
    tx.lowest_free_address(&subnet.id, first, last, &gateway)
        .await?
        .map(|ip| Ipv4Addr::from(ip).to_string())
        .ok_or_else(|| Error::Conflict("subnet_id: no free address in the subnet".to_owned()))
}
