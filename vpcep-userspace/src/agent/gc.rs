//! Conntrack collection: idle flows and orphaned port claims go at their timeout, and the
//! flows of removed endpoints at once. The listing only picks candidates; the kernel's GC
//! program judges each one, so a flow created on a reused tuple meanwhile is never touched.
use std::collections::{HashMap, HashSet};

use vpcep_common::endpoint::{
    FlowEntry, FlowKey, GC_BATCH, GC_EXPIRED, GC_FLUSH, GC_ORPHAN_CLAIMS, RevKey, Timeouts,
    idle_timeout_s,
};

use crate::dataplane::{Dataplane, DataplaneError};

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
pub fn flush_flows(dp: &mut Dataplane, live: &HashSet<u32>) -> Result<usize, DataplaneError> {
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
    let held: HashMap<FlowKey, (RevKey, u64)> =
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
    pending: HashSet<u32>,
}

impl FlushQueue {
    /// Notes the ids of `had` (the maps before a write) that `want` no longer has; ids back
    /// in `want` are no longer due (their endpoint's new generation kills its old flows).
    pub fn note(&mut self, had: &HashSet<u32>, want: &HashSet<u32>) {
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
        live: &HashSet<u32>,
        flush: impl FnOnce(&HashSet<u32>) -> Result<usize, E>,
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
    use std::cell::Cell;

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
}
