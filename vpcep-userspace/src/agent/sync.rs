//! The one owner of the maps: keeps shadow state (what it believes the kernel holds) and
//! writes only differences, targets first (node, SNAT owners, NICs and their overlay
//! addresses, services, port mappings, source whitelists, then the endpoints that point at
//! them) and deletes in reverse, so the fast path never sees an endpoint whose service is
//! missing. Removed port mappings go before the endpoint writes (see `Syncer::apply`).
use std::collections::{BTreeMap, BTreeSet};

use vpcep_common::endpoint::{EndpointKey, LocalAddr, LocalNic};

use super::desired::Desired;
// Collection lives in `gc`; these stay reachable here for existing callers.
pub use super::gc::{flush_flows, gc_conntrack, idle_limit_ns, monotonic_ns};
use crate::dataplane::{Dataplane, DataplaneError};

/// How many writes a diff made, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub puts: usize,
    pub deletes: usize,
}

/// The maps' contents as last written or read back.
#[derive(Debug, Default)]
pub struct Syncer {
    shadow: Desired,
    /// `LOCAL_ADDRS` as last written or read back; derived from the NICs, so not part of
    /// [`Desired`].
    addrs: BTreeMap<EndpointKey, LocalAddr>,
    /// `DNS_NICS` as last written or read back.
    dns: BTreeMap<u32, u32>,
}

/// Where the overlay program delivers: (VNI, VM address) → NIC, for the local NICs that
/// are a service's backend only. Other VMs receive nothing through the overlay, so an
/// underlay host cannot reach them that way.
fn local_addrs(
    nics: &BTreeMap<u32, LocalNic>,
    backends: &BTreeSet<u32>,
) -> BTreeMap<EndpointKey, LocalAddr> {
    nics.iter()
        .filter(|(ifindex, _)| backends.contains(ifindex))
        .map(|(ifindex, n)| {
            (
                EndpointKey {
                    vpc_id: n.vpc_id,
                    ip_be: n.ip_be,
                },
                LocalAddr {
                    ifindex: *ifindex,
                    mac: n.mac,
                    _pad: [0; 2],
                },
            )
        })
        .collect()
}

fn changed<'a, K: Ord + Copy, V: PartialEq + Copy>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, V)> + 'a {
    new.iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
}

fn gone<'a, K: Ord + Copy, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> + 'a {
    old.keys().filter(|k| !new.contains_key(k)).copied()
}

impl Syncer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn shadow(&self) -> &Desired {
        &self.shadow
    }

    /// Replaces the shadow with what the kernel maps hold now, so that the next
    /// [`Self::apply`] repairs anything changed behind the agent's back.
    pub fn read_back(&mut self, dp: &mut Dataplane) -> Result<(), DataplaneError> {
        let node = dp.node()?;
        self.shadow = Desired {
            node: (node.snat_ip_be != 0).then_some(node),
            snat_owners: dp.snat_owners()?.into_iter().collect(),
            nics: dp.local_nics()?.into_iter().collect(),
            services: dp.services()?.into_iter().collect(),
            ports: dp.ports()?.into_iter().collect(),
            sources: dp.sources()?.into_iter().collect(),
            endpoints: dp.endpoints()?.into_iter().collect(),
            // An array indexed by endpoint id: rewritten whole by the next apply.
            proxy_templates: BTreeMap::new(),
            // Not a map of its own: `LOCAL_ADDRS` (read below) is what it shapes.
            backend_nics: BTreeSet::new(),
            // Read into `self.dns` below.
            dns_nics: BTreeMap::new(),
        };
        self.addrs = dp.local_addrs()?.into_iter().collect();
        self.dns = dp.dns_nics()?.into_iter().collect();
        Ok(())
    }

    /// Writes the difference between the shadow and `want`. The shadow follows each
    /// successful write, so after an error the next call resumes where this one stopped.
    pub fn apply(&mut self, dp: &mut Dataplane, want: &Desired) -> Result<Applied, DataplaneError> {
        let mut n = Applied::default();
        let sh = &mut self.shadow;
        if let Some(node) = want.node
            && sh.node != Some(node)
        {
            dp.set_node(node)?;
            sh.node = Some(node);
            n.puts += 1;
        }
        let p = &mut n.puts;
        put_changed(&mut sh.snat_owners, &want.snat_owners, p, |k, v| {
            dp.set_snat_owner(k, v)
        })?;
        put_changed(&mut sh.nics, &want.nics, p, |k, v| dp.set_local_nic(k, v))?;
        let addrs = local_addrs(&want.nics, &want.backend_nics);
        put_changed(&mut self.addrs, &addrs, p, |k, v| dp.set_local_addr(k, v))?;
        put_changed(&mut self.dns, &want.dns_nics, p, |k, v| {
            dp.set_dns_nic(k, v)
        })?;
        put_changed(&mut sh.services, &want.services, p, |k, v| {
            dp.set_service(k, v)
        })?;
        put_changed(&mut sh.ports, &want.ports, p, |k, v| dp.set_port(k, v))?;
        let add: Vec<_> = want.sources.difference(&sh.sources).copied().collect();
        for r in add {
            dp.allow_source(r.0, r.1, r.2)?;
            sh.sources.insert(r);
            *p += 1;
        }
        let d = &mut n.deletes;
        // Removed port mappings go before the endpoints' new epochs are written: a packet of
        // an established flow that sees a new epoch re-resolves its mapping and, if it still
        // found the old one, would carry the new epoch on with it. (Endpoints name a
        // service, never a mapping, so this removes nothing still pointed at.)
        remove_gone(&mut sh.ports, &want.ports, d, |k| dp.remove_port(&k))?;
        // Removed whitelist rules too, for the same reason: the new epoch re-checks the
        // flow's source, which must not still find the rule.
        let del: BTreeSet<_> = sh.sources.difference(&want.sources).copied().collect();
        for r in del {
            dp.disallow_source(r.0, r.1, r.2)?;
            sh.sources.remove(&r);
            *d += 1;
        }
        // A new flow reads its endpoint's template: it is there before the endpoint.
        put_changed(
            &mut sh.proxy_templates,
            &want.proxy_templates,
            &mut n.puts,
            |k, v| dp.set_proxy_template(k, v),
        )?;
        put_changed(&mut sh.endpoints, &want.endpoints, &mut n.puts, |k, v| {
            dp.set_endpoint(k, v)
        })?;
        // Deletes in reverse: nothing is removed while an entry still points at it.
        let d = &mut n.deletes;
        remove_gone(&mut sh.endpoints, &want.endpoints, d, |k| {
            dp.remove_endpoint(&k)
        })?;
        remove_gone(&mut sh.services, &want.services, d, |k| {
            dp.remove_service(k)
        })?;
        remove_gone(&mut self.addrs, &addrs, d, |k| dp.remove_local_addr(&k))?;
        remove_gone(&mut self.dns, &want.dns_nics, d, |k| dp.remove_dns_nic(k))?;
        remove_gone(&mut sh.nics, &want.nics, d, |k| dp.remove_local_nic(k))?;
        remove_gone(&mut sh.snat_owners, &want.snat_owners, d, |k| {
            dp.remove_snat_owner(k)
        })?;
        Ok(n)
    }
}

/// Writes the entries of `want` that `shadow` lacks or holds otherwise with `put`, and
/// records each written one in `shadow` and in the count `n`.
fn put_changed<K: Ord + Copy, V: PartialEq + Copy>(
    shadow: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    n: &mut usize,
    mut put: impl FnMut(K, V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    for (k, v) in changed(shadow, want).collect::<Vec<_>>() {
        put(k, v)?;
        shadow.insert(k, v);
        *n += 1;
    }
    Ok(())
}

/// Removes the entries of `shadow` that `want` lacks with `remove`, likewise.
fn remove_gone<K: Ord + Copy, V>(
    shadow: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    n: &mut usize,
    mut remove: impl FnMut(K) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    for k in gone(shadow, want).collect::<Vec<_>>() {
        remove(k)?;
        shadow.remove(&k);
        *n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_delivers_to_backend_nics_only() {
        let nic = |ip: u32| LocalNic {
            vpc_id: 7,
            ip_be: ip,
            ..LocalNic::default()
        };
        let nics: BTreeMap<u32, LocalNic> = [(3, nic(5)), (4, nic(6))].into();
        let addrs = local_addrs(&nics, &[4].into());
        assert_eq!(addrs.len(), 1);
        assert_eq!(
            addrs[&EndpointKey {
                vpc_id: 7,
                ip_be: 6
            }]
                .ifindex,
            4
        );
        assert!(local_addrs(&nics, &BTreeSet::new()).is_empty());
    }
}
