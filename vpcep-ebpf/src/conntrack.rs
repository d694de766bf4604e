//! Conntrack entries and SNAT port claims, safe against other CPUs and the agent.
//!
//! Both tables are plain hash maps: nothing live is evicted, and a full table refuses the
//! new flow. Entries change hands only through compare-and-swap:
//! * a port claim (`CT_REV`) is taken by insert-if-absent and never rewritten; a dead
//!   holder's claim is first *released* (owner CAS to `CLAIM_RELEASED`, then deleted by
//!   whoever won that CAS) and then inserted afresh, so two CPUs can never both hold it;
//! * a flow (`CT_FWD`) is *killed* by a CAS of its `last_seen_ns` to `CT_KILLED`; the
//!   winner alone releases its claim, gives back its endpoint's live-flow slot and deletes
//!   it. A killed entry is never reused or overwritten, so that delete cannot remove a
//!   newer flow, and a CPU that refreshes a flow's timestamp (also by CAS) learns that it
//!   lost to a killer;
//! * the agent never deletes entries itself: it names candidates to the GC program
//!   ([`gc`]), which applies the same rules.
//!
//! Elements of a hash map may be recycled for another key while a CPU still holds a
//! pointer from an earlier lookup; every CAS is therefore checked against the owner id,
//! which is unique per flow.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
};
use vpcep_common::{
    endpoint::{
        CLAIM_GUARD_S, CLAIM_RELEASED, CT_F_ESTABLISHED, CT_F_FIN_BACKEND, CT_F_FIN_CONSUMER,
        CT_F_RST, CT_KILLED, CT_TCP_CLOSING, Endpoint, FlowEntry, FlowKey, GC_BATCH, GC_FLUSH,
        GC_ORPHAN_CLAIMS, IPPROTO_TCP, NS_PER_SEC, RevEntry, RevKey, Timeouts, flow_owner,
        idle_timeout_s, owner_since_s,
    },
    stats::Reason,
};

use crate::{
    maps::{CT_FWD, CT_REV, EP_FLOWS, FLOW_SEQ, GC_REQUEST},
    parse::{Ipv4Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// `-E2BIG`/`-ENOMEM` from an insert into a full hash map.
const E2BIG: i32 = -7;
const ENOMEM: i32 = -12;

/// CLOCK_MONOTONIC at tick resolution: idle timeouts are seconds and `last_seen` is
/// written at most every 250 ms, while reading the TSC costs ~15 ns a packet in a VM.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

// The bpf target has no `AtomicU64` read-modify-write methods, and this linker neither
// reads back the compare-and-swap intrinsic nor emits fetching atomics for the generic
// CPU: the BPF_ATOMIC instructions (fully ordered; kernel 5.12) are written out. Each takes a pointer to an 8-byte aligned u64
// inside a map value, which stays mapped (hash elements are type-stable) for the run.

#[inline(always)]
fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    let prev: u64;
    // SAFETY: see above. Written as the instruction itself: the compare-and-swap
    // intrinsic's bitcode is not read back by this bpf-linker.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => prev,
            options(nostack),
        );
    }
    prev == old
}

#[inline(always)]
fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut v = v;
    // SAFETY: see above.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) p,
            v = inout(reg) v,
            options(nostack),
        );
    }
    v
}

#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: see above.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

#[inline(always)]
fn or(p: *mut u64, v: u64) {
    // SAFETY: see above.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) |= {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

#[inline(always)]
fn load(p: *const u64) -> u64 {
    // SAFETY: as for `atomic`; a volatile read so the value is read once, here.
    unsafe { core::ptr::read_volatile(p) }
}

/// Killed, or idle past its state's timeout, judged on a `last_seen` read once.
#[inline(always)]
pub fn dead(e: &FlowEntry, seen: u64, now: u64, t: &Timeouts) -> bool {
    seen == CT_KILLED || now.saturating_sub(seen) > idle_timeout_s(ct_state_of(e), t) * NS_PER_SEC
}

#[inline(always)]
fn ct_state_of(e: &FlowEntry) -> u8 {
    vpcep_common::endpoint::ct_state(load(&e.ct))
}

/// The flow's `last_seen`, read once.
#[inline(always)]
pub fn seen(e: &FlowEntry) -> u64 {
    load(&e.last_seen_ns)
}

/// Marks the flow alive at `now` (at most every 250 ms). False when a killer got there
/// first: the flow is gone and the packet must not use its claim.
#[inline(always)]
pub fn touch(e: &mut FlowEntry, seen: u64, now: u64) -> bool {
    if now.wrapping_sub(seen) <= NS_PER_SEC / 4 {
        // Too fresh for any killer: timeouts are whole seconds.
        return true;
    }
    cas(&mut e.last_seen_ns, seen, now) || load(&e.last_seen_ns) != CT_KILLED
}

/// Records TCP flags of this packet in the flow's state bits (fetch-or, so the two
/// directions' CPUs never lose each other's updates).
#[inline(always)]
pub fn track(e: &mut FlowEntry, pkt: &Ipv4Packet, from_backend: bool) {
    if pkt.proto != IPPROTO_TCP {
        return;
    }
    let f = pkt.tcp_flags;
    let mut bits = 0;
    if f & TCP_RST != 0 {
        bits |= CT_F_RST;
    }
    if f & TCP_FIN != 0 {
        bits |= if from_backend {
            CT_F_FIN_BACKEND
        } else {
            CT_F_FIN_CONSUMER
        };
    }
    if from_backend && f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        bits |= CT_F_ESTABLISHED;
    }
    if bits & !load(&e.ct) != 0 {
        or(&mut e.ct, bits);
    }
}

/// A new SYN on a flow that is closing starts a new flow on the same tuple.
#[inline(always)]
pub fn syn_on_closing(e: &FlowEntry, syn: bool) -> bool {
    syn && ct_state_of(e) == CT_TCP_CLOSING
}

/// Counts a new flow against its endpoint's limits. On `Ok` the flow holds one of the
/// endpoint's live-flow slots, given back by [`flow_done`].
#[inline(always)]
pub fn admit(ep: &Endpoint, now: u64) -> Result<(), Reason> {
    let s = EP_FLOWS
        .get_ptr_mut(ep.endpoint_id)
        .ok_or(Reason::DropEndpointFlowLimit)?;
    // SAFETY: map value pointer from a successful lookup.
    let s = unsafe { &mut *s };
    let rate = ep.new_flows_per_sec as u64;
    if rate != 0 {
        let sec = now / NS_PER_SEC;
        let w = load(&s.window_s);
        // A new second: one CPU wins the window and restarts the count (a few flows of
        // other CPUs counted in between are forgotten: the limit is approximate by that).
        if w != sec && cas(&mut s.window_s, w, sec) {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&mut s.opened, 0) };
        }
        if fetch_add(&mut s.opened, 1) >= rate {
            return Err(Reason::DropEndpointRateLimit);
        }
    }
    let live = fetch_add(&mut s.live, 1) as i64;
    let max = ep.max_flows as i64;
    if max != 0 && live >= max {
        add(&mut s.live, u64::MAX);
        return Err(Reason::DropEndpointFlowLimit);
    }
    Ok(())
}

/// Gives back a live-flow slot taken by [`admit`].
#[inline(always)]
pub fn flow_done(endpoint_id: u32) {
    if let Some(s) = EP_FLOWS.get_ptr_mut(endpoint_id) {
        // SAFETY: map value pointer from a successful lookup.
        add(unsafe { &mut (*s).live }, u64::MAX);
    }
}

/// An owner id for a new flow (unique among flows alive at once).
#[inline(always)]
pub fn new_owner(now: u64) -> u64 {
    let seq = match FLOW_SEQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU map; no other CPU writes it.
        Some(p) => unsafe {
            *p = (*p).wrapping_add(1);
            *p
        },
        None => 0,
    };
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    flow_owner(now / NS_PER_SEC, seq, cpu)
}

/// Releases the claim `rk` if `owner` still holds it: CAS to released, then delete.
#[inline(always)]
pub fn release_claim(rk: &RevKey, owner: u64) -> bool {
    match CT_REV.get_ptr_mut(rk) {
        // SAFETY: map value pointer from a successful lookup.
        Some(p) if cas(unsafe { &mut (*p).owner }, owner, CLAIM_RELEASED) => {
            let _ = CT_REV.remove(rk);
            true
        }
        _ => false,
    }
}

/// Kills the flow `key` (entry `e`, `last_seen` read as `seen`, owner `owner`): it must
/// already have been judged dead, revoked or flushed. True if this caller killed it, and
/// has then released its claim, its endpoint's slot and its entry.
#[inline(always)]
pub fn kill(key: &FlowKey, e: *mut FlowEntry, seen: u64, owner: u64) -> bool {
    // SAFETY: map value pointer from a lookup by the caller; see the module comment on
    // recycled elements.
    let e = unsafe { &mut *e };
    if seen == CT_KILLED || !cas(&mut e.last_seen_ns, seen, CT_KILLED) {
        return false;
    }
    if load(&e.owner) != owner {
        // The element was recycled for another flow since the caller's lookup: undo. A
        // killed entry is touched by nobody but its killer, so this restores it exactly.
        cas(&mut e.last_seen_ns, CT_KILLED, seen);
        return false;
    }
    // Killed: nobody else changes the entry any more, so its fields can be used in place.
    release_claim(&e.rev, owner);
    flow_done(e.endpoint_id);
    let _ = CT_FWD.remove(key);
    true
}

/// Why a SNAT port could not be claimed.
#[inline(always)]
fn insert_error(e: i32) -> Reason {
    if e == E2BIG || e == ENOMEM {
        Reason::DropCtFull
    } else {
        Reason::DropSnatExhausted
    }
}

/// Tries to take the claim `rk` for `value`: free → insert-if-absent; held by a flow that
/// is dead → kill it (which releases the claim) and insert; held by nobody (orphaned) →
/// release and insert. A claim younger than `CLAIM_GUARD_S` or held by a live flow is
/// left alone.
#[inline(always)]
pub fn try_claim(rk: &RevKey, value: &RevEntry, now: u64, t: &Timeouts) -> Result<bool, Reason> {
    if let Some(p) = CT_REV.get_ptr(rk) {
        // SAFETY: map value pointer from a successful lookup.
        let old = load(unsafe { &(*p).owner });
        if old == CLAIM_RELEASED || owner_since_s(old) + CLAIM_GUARD_S > now / NS_PER_SEC {
            return Ok(false);
        }
        // SAFETY: as above; a claim is never rewritten, only replaced after release. The
        // key is read in place (a map value may be a lookup's key).
        let holder = unsafe { &(*p).fwd };
        let freed = match CT_FWD.get_ptr_mut(holder) {
            Some(fp) => {
                // SAFETY: map value pointer from a successful lookup.
                let fe = unsafe { &*fp };
                if load(&fe.owner) != old || fe.rev != *rk {
                    release_claim(rk, old)
                } else {
                    let s = seen(fe);
                    s != CT_KILLED && dead(fe, s, now, t) && kill(holder, fp, s, old)
                }
            }
            None => release_claim(rk, old),
        };
        if !freed {
            return Ok(false);
        }
    }
    match CT_REV.insert(rk, value, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == E2BIG || e == ENOMEM => Err(insert_error(e)),
        // Another CPU claimed it in between.
        Err(_) => Ok(false),
    }
}

/// The GC program: the agent names up to `GC_BATCH` forward keys (or claims) in
/// `GC_REQUEST`; each is removed under the rules above if it is dead (or, for a flush,
/// whatever its state). The agent's own view may be stale, so every judgement is made
/// here, at this instant.
#[inline(always)]
pub fn gc() -> Option<()> {
    let req = GC_REQUEST.get_ptr_mut(0)?;
    // SAFETY: map value pointer from a successful lookup; only the agent (one thread)
    // runs this program.
    let req = unsafe { &mut *req };
    let node = crate::maps::node()?;
    // SAFETY: as above.
    let t = unsafe { (*node).timeouts };
    let now = now();
    let (mut removed, mut busy) = (0u32, 0u32);
    let n = req.count as usize;
    for i in 0..GC_BATCH {
        if i >= n {
            break;
        }
        if req.mode == GC_ORPHAN_CLAIMS {
            let rk = req.claims[i];
            let Some(p) = CT_REV.get_ptr(rk) else {
                continue;
            };
            // SAFETY: map value pointer from a successful lookup.
            let (old, holder) = unsafe { (load(&(*p).owner), (*p).fwd) };
            if old == CLAIM_RELEASED || owner_since_s(old) + CLAIM_GUARD_S > now / NS_PER_SEC {
                busy += 1;
                continue;
            }
            let orphan = match CT_FWD.get_ptr(holder) {
                // SAFETY: map value pointer from a successful lookup.
                Some(fp) => unsafe { load(&(*fp).owner) != old || (*fp).rev != rk },
                None => true,
            };
            if orphan && release_claim(&rk, old) {
                removed += 1;
            }
            continue;
        }
        let key = req.flows[i];
        let Some(fp) = CT_FWD.get_ptr_mut(key) else {
            continue;
        };
        // SAFETY: map value pointer from a successful lookup.
        let fe = unsafe { &*fp };
        let (s, owner) = (seen(fe), load(&fe.owner));
        if s == CT_KILLED {
            busy += 1;
        } else if req.mode == GC_FLUSH || dead(fe, s, now, &t) {
            if kill(&key, fp, s, owner) {
                removed += 1;
            } else {
                busy += 1;
            }
        }
    }
    req.removed = removed;
    req.busy = busy;
    Some(())
}
