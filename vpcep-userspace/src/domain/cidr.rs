//! IPv4 CIDRs (on `ipnetwork`) and addresses as the API accepts them.
use std::net::Ipv4Addr;

pub use ipnetwork::Ipv4Network;

use super::error::{Error, Result};

/// An IPv4 CIDR `a.b.c.d/n` (a bare address is a /32), normalised to its network address.
/// The address and the length are parsed by the standard library, as before: `ipnetwork`'s
/// own parser accepts a different set of spellings.
pub fn parse_cidr(s: &str) -> Option<Ipv4Network> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let net = Ipv4Network::new(addr, len).ok()?;
    Ipv4Network::new(net.network(), len).ok()
}

/// The SNAT range: provider VPCs may not overlap it; node SNAT addresses come from it.
pub const SNAT_RANGE: Ipv4Network =
    match Ipv4Network::new_checked(Ipv4Addr::new(198, 19, 128, 0), 17) {
        Some(n) => n,
        None => panic!("the SNAT range is a valid CIDR"),
    };

/// The first and last address of a network as integers (for ranges and the address index).
pub fn bounds(net: Ipv4Network) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

pub fn parse_ip(field: &str, s: &str) -> Result<u32> {
    s.parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| Error::invalid(field, "must be an IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c = parse_cidr("10.0.0.7/24").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 0, 0, 200)));
        assert!(SNAT_RANGE.overlaps(parse_cidr("198.19.0.0/16").unwrap()));
        assert!(!SNAT_RANGE.overlaps(parse_cidr("198.19.0.0/17").unwrap()));
        assert_eq!(SNAT_RANGE.to_string(), "198.19.128.0/17");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0/8").is_none());
        assert_eq!(bounds(parse_cidr("0.0.0.0/0").unwrap()), (0, u32::MAX));
    }
}
