//! Benchmark floors: the map and helper work the translating path cannot do without, and
//! nothing else (no checks, counters or header rewrites). `cargo xtask bench dataplane`
//! times them next to the real paths, so a gap between the two is the real program's own
//! cost and the rest is what any program of this design pays on the machine. Never
//! attached; the packet leaves unchanged, so both also run with `repeat`.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use vpcep_common::endpoint::{
    EndpointKey, FlowEntry, FlowKey, IPPROTO_TCP, LocalNic, RevEntry, RevKey,
};

use crate::{
    maps::{CT_FWD, CT_REV, ENDPOINTS, LOCAL_NICS},
    parse::{self, Frame, Ipv4Packet, Parsed},
};

/// The NIC and endpoint lookups every endpoint packet needs, after parsing.
#[inline(always)]
fn endpoint_packet(ctx: &TcContext) -> Option<(Ipv4Packet, LocalNic)> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let Ok(Parsed::Ipv4(pkt)) = parse::parse(&frame) else {
        return None;
    };
    // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for this call.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let nic = LOCAL_NICS.get_ptr(ifindex)?;
    // SAFETY: map value pointer from a successful lookup.
    let nic = unsafe { *nic };
    ENDPOINTS.get_ptr(EndpointKey {
        vpc_id: nic.vpc_id,
        ip_be: pkt.dst,
    })?;
    Some((pkt, nic))
}

/// Established flow: NIC, endpoint and conntrack lookups, the two L4 checksum updates
/// (adding zero) and the redirect.
#[inline(always)]
pub fn established(ctx: &TcContext) -> Option<i32> {
    let (pkt, nic) = endpoint_packet(ctx)?;
    let key = FlowKey::new(
        nic.vpc_id, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto,
    );
    let e = CT_FWD.get_ptr(key)?;
    let off = pkt.l4 + if pkt.proto == IPPROTO_TCP { 16 } else { 6 };
    ctx.l4_csum_replace(off, 0, 0, BPF_F_PSEUDO_HDR as u64)
        .ok()?;
    ctx.l4_csum_replace(off, 0, 0, 0).ok()?;
    // SAFETY: map value pointer from a successful lookup; plain helper call.
    Some(unsafe { bpf_redirect((*e).out_ifindex, 0) as i32 })
}

/// New flow: after the NIC and endpoint lookups, the conntrack lookup that misses, the
/// reverse-key probe and the two inserts, for a tuple made unique by the clock (so
/// every run, repeated or not, inserts fresh keys).
#[inline(always)]
pub fn new_flow(ctx: &TcContext) -> Option<i32> {
    let (pkt, nic) = endpoint_packet(ctx)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = FlowKey::new(
        nic.vpc_id, now as u32, pkt.dst, pkt.sport, pkt.dport, pkt.proto,
    );
    if CT_FWD.get_ptr(key).is_some() {
        return Some(TC_ACT_OK);
    }
    let rk = RevKey::new(pkt.dst, now as u32, pkt.sport, pkt.dport, pkt.proto);
    if CT_REV.get_ptr(rk).is_some() {
        return Some(TC_ACT_OK);
    }
    let rv = RevEntry {
        owner: now,
        fwd: key,
        _pad: [0; 4],
    };
    CT_REV.insert(rk, rv, BPF_NOEXIST as u64).ok()?;
    let entry = FlowEntry {
        rev: rk,
        last_seen_ns: now,
        ..FlowEntry::default()
    };
    CT_FWD.insert(key, entry, BPF_ANY as u64).ok()?;
    Some(TC_ACT_OK)
}
