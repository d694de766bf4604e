//! The one owner of the maps: keeps shadow state (what it believes the kernel holds) and
//! writes only differences, targets first (node, SNAT owners, NICs and their overlay
//! addresses, services, port mappings, source whitelists, then the endpoints that point at
//! them) and deletes in reverse, so the fast path never sees an endpoint whose service is
//! missing. Removed port mappings go before the endpoint writes (see `Syncer::apply`).
use std::collections::{BTreeMap, BTreeSet};

use vpcep_common::endpoint::{
    EndpointKey, FlowEntry, FlowKey, GC_BATCH, GC_EXPIRED, GC_FLUSH, GC_ORPHAN_CLAIMS, LocalAddr,
    LocalNic, RevKey, Timeouts, idle_timeout_s,
};

use super::desired::Desired;
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
            // Not a map of its own: `LOCAL_ADDRS` (read below) is what it shapes.
            backend_nics: BTreeSet::new(),
        };
        self.addrs = dp.local_addrs()?.into_iter().collect();
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
        for (k, v) in changed(&sh.snat_owners, &want.snat_owners).collect::<Vec<_>>() {
            dp.set_snat_owner(k, v)?;
            sh.snat_owners.insert(k, v);
            n.puts += 1;
        }
        for (k, v) in changed(&sh.nics, &want.nics).collect::<Vec<_>>() {
            dp.set_local_nic(k, v)?;
            sh.nics.insert(k, v);
            n.puts += 1;
        }
        let addrs = local_addrs(&want.nics, &want.backend_nics);
        for (k, v) in changed(&self.addrs, &addrs).collect::<Vec<_>>() {
            dp.set_local_addr(k, v)?;
            self.addrs.insert(k, v);
            n.puts += 1;
        }
        for (k, v) in changed(&sh.services, &want.services).collect::<Vec<_>>() {
            dp.set_service(k, v)?;
            sh.services.insert(k, v);
            n.puts += 1;
        }
        for (k, v) in changed(&sh.ports, &want.ports).collect::<Vec<_>>() {
            dp.set_port(k, v)?;
            sh.ports.insert(k, v);
            n.puts += 1;
        }
        let add: Vec<_> = want.sources.difference(&sh.sources).copied().collect();
        for r in add {
            dp.allow_source(r.0, r.1, r.2)?;
            sh.sources.insert(r);
            n.puts += 1;
        }
        // Removed port mappings go before the endpoints' new epochs are written: a packet of
        // an established flow that sees a new epoch re-resolves its mapping and, if it still
        // found the old one, would carry the new epoch on with it. (Endpoints name a
        // service, never a mapping, so this removes nothing still pointed at.)
        for k in gone(&sh.ports, &want.ports).collect::<Vec<_>>() {
            dp.remove_port(&k)?;
            sh.ports.remove(&k);
            n.deletes += 1;
        }
        // Removed whitelist rules too, for the same reason: the new epoch re-checks the
        // flow's source, which must not still find the rule.
        let del: BTreeSet<_> = sh.sources.difference(&want.sources).copied().collect();
        for r in del {
            dp.disallow_source(r.0, r.1, r.2)?;
            sh.sources.remove(&r);
            n.deletes += 1;
        }
        for (k, v) in changed(&sh.endpoints, &want.endpoints).collect::<Vec<_>>() {
            dp.set_endpoint(k, v)?;
            sh.endpoints.insert(k, v);
            n.puts += 1;
        }
        // Deletes in reverse: nothing is removed while an entry still points at it.
        for k in gone(&sh.endpoints, &want.endpoints).collect::<Vec<_>>() {
            dp.remove_endpoint(&k)?;
            sh.endpoints.remove(&k);
            n.deletes += 1;
        }
        for k in gone(&sh.services, &want.services).collect::<Vec<_>>() {
            dp.remove_service(k)?;
            sh.services.remove(&k);
            n.deletes += 1;
        }
        for k in gone(&self.addrs, &addrs).collect::<Vec<_>>() {
            dp.remove_local_addr(&k)?;
            self.addrs.remove(&k);
            n.deletes += 1;
        }
        for k in gone(&sh.nics, &want.nics).collect::<Vec<_>>() {
            dp.remove_local_nic(k)?;
            sh.nics.remove(&k);
            n.deletes += 1;
        }
        for k in gone(&sh.snat_owners, &want.snat_owners).collect::<Vec<_>>() {
            dp.remove_snat_owner(k)?;
            sh.snat_owners.remove(&k);
            n.deletes += 1;
        }
        Ok(n)
    }
}

/// Idle timeout of a conntrack entry, in nanoseconds.
pub fn idle_limit_ns(entry: &FlowEntry, t: &Timeouts) -> u64 {
    idle_timeout_s(entry.state(), t) * 1_000_000_000
}

/// The clock the fast path stamps flows with (CLOCK_MONOTONIC, read at tick resolution).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Hands `keys` to the GC program in batches; returns (removed, busy).
fn gc_batches<K: Copy>(
    dp: &mut Dataplane,
    keys: &[K],
    run: impl Fn(&mut Dataplane, &[K]) -> Result<(u32, u32), DataplaneError>,
) -> Result<(usize, usize), DataplaneError> {
    let (mut removed, mut busy) = (0, 0);
    for chunk in keys.chunks(GC_BATCH) {
        let (r, b) = run(dp, chunk)?;
        removed += r as usize;
        busy += b as usize;
    }
    Ok((removed, busy))
}

/// Removes the flows (both entries) of endpoints not in `live`: a deleted endpoint's flows
/// go at once rather than at their idle timeout. The kernel's GC program removes them, so
/// a flow created on a reused tuple since the listing is never touched. Returns how many
/// flows were removed; an error leaves the rest for the next try.
pub fn flush_flows(
    dp: &mut Dataplane,
    live: &std::collections::HashSet<u32>,
) -> Result<usize, DataplaneError> {
    let doomed: Vec<FlowKey> = dp
        .flows()?
        .into_iter()
        .filter(|(_, e)| !live.contains(&e.endpoint_id))
        .map(|(k, _)| k)
        .collect();
    let (removed, _) = gc_batches(dp, &doomed, |dp, c| dp.gc(GC_FLUSH, c, &[]))?;
    Ok(removed)
}

/// Removes forward entries idle past their state's timeout with their port claims, and
/// port claims no flow holds any more. The listing only picks candidates; the kernel's GC
/// program judges each one at that instant. Returns (entries remaining, entries removed).
pub fn gc_conntrack(dp: &mut Dataplane, t: &Timeouts) -> Result<(usize, usize), DataplaneError> {
    let now = monotonic_ns();
    let flows = dp.flows()?;
    let idle: Vec<FlowKey> = flows
        .iter()
        .filter(|(_, e)| now.saturating_sub(e.last_seen_ns) > idle_limit_ns(e, t))
        .map(|(k, _)| *k)
        .collect();
    let (removed, _) = gc_batches(dp, &idle, |dp, c| dp.gc(GC_EXPIRED, c, &[]))?;
    let held: std::collections::HashMap<FlowKey, (RevKey, u64)> =
        flows.iter().map(|(k, e)| (*k, (e.rev, e.owner))).collect();
    let orphans: Vec<RevKey> = dp
        .revs()?
        .into_iter()
        .filter(|(rk, rv)| held.get(&rv.fwd) != Some(&(*rk, rv.owner)))
        .map(|(rk, _)| rk)
        .collect();
    let (released, _) = gc_batches(dp, &orphans, |dp, c| dp.gc(GC_ORPHAN_CLAIMS, &[], c))?;
    Ok((flows.len() - removed, removed + released))
}

/// Endpoint ids that left the maps and whose flows may still be in conntrack. An id stays
/// until a flush succeeds with the id no longer live, so a failed flush is tried again.
#[derive(Debug, Default)]
pub struct FlushQueue {
    pending: std::collections::HashSet<u32>,
}

impl FlushQueue {
    /// Notes the ids of `had` (the maps before a write) that `want` no longer has; ids back
    /// in `want` are no longer due (their endpoint's new generation kills its old flows).
    pub fn note(
        &mut self,
        had: &std::collections::HashSet<u32>,
        want: &std::collections::HashSet<u32>,
    ) {
        self.pending.extend(had.difference(want));
        self.pending.retain(|id| !want.contains(id));
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Runs `flush` (which removes the flows of every endpoint not in `live`, the ids the
    /// maps hold now) if any id is due; ids still in `live` (their removal has not been
    /// written yet) stay due after a success, all of them after a failure.
    pub fn run<E>(
        &mut self,
        live: &std::collections::HashSet<u32>,
        flush: impl FnOnce(&std::collections::HashSet<u32>) -> Result<usize, E>,
    ) -> Option<Result<usize, E>> {
        if self.pending.is_empty() {
            return None;
        }
        let r = flush(live);
        if r.is_ok() {
            self.pending.retain(|id| live.contains(id));
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::HashSet};

    use super::*;

    fn ids(v: &[u32]) -> HashSet<u32> {
        v.iter().copied().collect()
    }

    /// One pass of the owner: the endpoints the maps held before the write, the ones
    /// wanted (written), then the flush of removed endpoints' flows.
    fn pass(
        q: &mut FlushQueue,
        had: &[u32],
        want: &[u32],
        flush: impl FnOnce(&HashSet<u32>) -> Result<usize, ()>,
    ) -> Option<Result<usize, ()>> {
        q.note(&ids(had), &ids(want));
        q.run(&ids(want), flush)
    }

    #[test]
    fn a_failed_flush_is_retried_until_it_succeeds() {
        let mut q = FlushQueue::default();
        let calls = Cell::new(0);
        // Endpoint 2 is removed; the flush fails.
        let r = pass(&mut q, &[1, 2], &[1], |live| {
            calls.set(calls.get() + 1);
            assert_eq!(*live, ids(&[1]));
            Err(())
        });
        assert_eq!(r, Some(Err(())));
        // The next pass has nothing new (the maps no longer hold 2): the flush runs again.
        let r = pass(&mut q, &[1], &[1], |_| {
            calls.set(calls.get() + 1);
            Ok(3)
        });
        assert_eq!(r, Some(Ok(3)));
        assert_eq!(calls.get(), 2);
        // Done: no more flushes.
        assert_eq!(pass(&mut q, &[1], &[1], |_| Ok(0)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn an_id_not_yet_removed_stays_due_and_one_back_is_dropped() {
        let mut q = FlushQueue::default();
        q.note(&ids(&[1, 2, 3]), &ids(&[1]));
        // The write stopped before removing 3: the flush keeps its flows, 3 stays due.
        assert_eq!(q.run(&ids(&[1, 3]), |_| Ok::<_, ()>(1)), Some(Ok(1)));
        assert!(!q.is_empty());
        // 3 comes back before it was removed: nothing is due any more.
        q.note(&ids(&[1, 3]), &ids(&[1, 3]));
        assert!(q.is_empty());
    }

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
