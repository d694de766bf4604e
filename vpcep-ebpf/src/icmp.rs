//! ICMP: echo answered for endpoint addresses, and errors from the backend side about a
//! translated flow (destination unreachable incl. fragmentation needed, time exceeded)
//! translated back, inner header included, so PMTU discovery works through the endpoint.
//!
//! ICMP and IPv4 header checksums are always computed in software by the sender (only
//! TCP/UDP use partial offload), so these paths update them incrementally by hand.
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vpcep_common::{
    endpoint::{
        Endpoint, FlowKey, IPPROTO_TCP, IPPROTO_UDP, LocalNic, NodeConfig, RevEntry, RevKey,
    },
    stats::Reason,
};

use crate::{
    conntrack,
    maps::{CT_FWD, CT_REV, SERVICES},
    nat,
    parse::{Frame, Ipv4Packet},
    tunnel,
};
use vpcep_common::csum;

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACH: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;

/// Type of an ICMP packet (parse stores type and code in `sport`).
#[inline(always)]
pub fn icmp_type(pkt: &Ipv4Packet) -> u8 {
    pkt.sport.to_ne_bytes()[0]
}

#[inline(always)]
pub fn is_error(pkt: &Ipv4Packet) -> bool {
    matches!(icmp_type(pkt), DEST_UNREACH | TIME_EXCEEDED)
}

/// Turns an echo request to an endpoint into the reply, in place.
#[inline(always)]
pub fn echo_reply(frame: &Frame, pkt: &Ipv4Packet, node: &NodeConfig) -> Result<(), Reason> {
    let eth: *mut EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    let ip: *mut Ipv4Hdr = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    let icmp: *mut [u8; 4] = frame.ptr_at(pkt.l4, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let e = &mut *eth;
        e.dst_addr = e.src_addr;
        e.src_addr = node.vmac;
        let h = &mut *ip;
        core::mem::swap(&mut h.src_addr, &mut h.dst_addr);
        let old = u16::from_ne_bytes([h.ttl, h.proto]);
        h.ttl = 64;
        let new = u16::from_ne_bytes([h.ttl, h.proto]);
        let check = u16::from_ne_bytes(h.check);
        h.check = csum::apply(check, csum::diff16(old, new)).to_ne_bytes();
        let i = &mut *icmp;
        let old = u16::from_ne_bytes([i[0], i[1]]);
        i[0] = ECHO_REPLY;
        let new = u16::from_ne_bytes([i[0], i[1]]);
        let check = u16::from_ne_bytes([i[2], i[3]]);
        let c = csum::apply(check, csum::diff16(old, new)).to_ne_bytes();
        i[2] = c[0];
        i[3] = c[1];
    }
    Ok(())
}

/// The quoted packet of an ICMP error: its IPv4 header and first 8 bytes of L4.
#[repr(C)]
struct Quoted {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frags: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// The flow an ICMP error is about, from its quoted header (raw addresses and ports).
struct QuotedFlow {
    ihl: usize,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

/// Parses the quoted TCP/UDP header; anything else is `unknown` (the reason for an error
/// about no flow of ours).
#[inline(always)]
fn parse_quoted(frame: &Frame, pkt: &Ipv4Packet, unknown: Reason) -> Result<QuotedFlow, Reason> {
    let off = pkt.l4 + 8;
    let q: *const Quoted = frame.ptr_at(off, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, proto, src, dst) = unsafe {
        (
            (*q).vihl,
            (*q).proto,
            u32::from_ne_bytes((*q).src),
            u32::from_ne_bytes((*q).dst),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Err(unknown);
    }
    let ports: *const [u16; 2] = frame.ptr_at(off + ihl, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    let (sport, dport) = unsafe { ((*ports)[0], (*ports)[1]) };
    Ok(QuotedFlow {
        ihl,
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// What a translated ICMP error becomes.
struct ErrorRewrite {
    inner_src: u32,
    inner_dst: u32,
    inner_sport: u16,
    inner_dport: u16,
    outer_src: u32,
    outer_dst: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

/// Rewrites the quoted header (addresses, ports, its IPv4 checksum), the ICMP checksum
/// (which covers all of that), the outer header (addresses, TTL - 1, checksum) and MACs.
/// The quoted L4 checksum is left as quoted: receivers do not verify it.
#[inline(always)]
fn rewrite_error(
    frame: &Frame,
    pkt: &Ipv4Packet,
    qf: &QuotedFlow,
    rw: &ErrorRewrite,
) -> Result<(), Reason> {
    let off = pkt.l4 + 8;
    let eth: *mut EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    let ip: *mut Ipv4Hdr = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    let icmp: *mut [u8; 4] = frame.ptr_at(pkt.l4, Reason::DropTruncL4)?;
    let q: *mut Quoted = frame.ptr_at(off, Reason::DropTruncL4)?;
    let ports: *mut [u16; 2] = frame.ptr_at(off + qf.ihl, Reason::DropTruncL4)?;
    // SAFETY: every pointer was bounds checked by ptr_at above.
    unsafe {
        let qi = &mut *q;
        let inner_ip = csum::add(
            csum::diff32(qf.src, rw.inner_src),
            csum::diff32(qf.dst, rw.inner_dst),
        );
        let old_check = u16::from_ne_bytes(qi.check);
        let new_check = csum::apply(old_check, inner_ip);
        qi.src = rw.inner_src.to_ne_bytes();
        qi.dst = rw.inner_dst.to_ne_bytes();
        qi.check = new_check.to_ne_bytes();
        (*ports)[0] = rw.inner_sport;
        (*ports)[1] = rw.inner_dport;
        let mut d = inner_ip;
        d = csum::add(d, csum::diff16(old_check, new_check));
        d = csum::add(d, csum::diff16(qf.sport, rw.inner_sport));
        d = csum::add(d, csum::diff16(qf.dport, rw.inner_dport));
        let i = &mut *icmp;
        let c = csum::apply(u16::from_ne_bytes([i[2], i[3]]), d).to_ne_bytes();
        i[2] = c[0];
        i[3] = c[1];
        let h = &mut *ip;
        let mut o = csum::diff32(pkt.src, rw.outer_src);
        o = csum::add(o, csum::diff32(pkt.dst, rw.outer_dst));
        let old = u16::from_ne_bytes([h.ttl, h.proto]);
        h.ttl -= 1;
        o = csum::add(o, csum::diff16(old, u16::from_ne_bytes([h.ttl, h.proto])));
        h.check = csum::apply(u16::from_ne_bytes(h.check), o).to_ne_bytes();
        h.src_addr = rw.outer_src.to_ne_bytes();
        h.dst_addr = rw.outer_dst.to_ne_bytes();
        let e = &mut *eth;
        e.dst_addr = rw.dst_mac;
        e.src_addr = rw.src_mac;
    }
    Ok(())
}

/// Translates an ICMP error sent by a backend to a SNAT address back to the consumer.
/// Returns the consumer NIC to redirect to.
#[inline(always)]
pub fn reverse_error(
    frame: &Frame,
    pkt: &Ipv4Packet,
    ifindex: u32,
    node: &NodeConfig,
    peer: Option<crate::tunnel::Peer>,
) -> Result<u32, Reason> {
    let qf = parse_quoted(frame, pkt, Reason::DropNoReverseFlow)?;
    // The quoted packet is the one we sent: SNAT address:port → backend.
    if qf.src != pkt.dst {
        return Err(Reason::DropNoReverseFlow);
    }
    // Through the tunnel only the backend itself may report about its flow: any other VM
    // of the backend's node and VPC could otherwise forge errors for flows it guessed.
    if peer.is_some() && pkt.src != qf.dst {
        return Err(Reason::DropTunnelWrongPeer);
    }
    let rk = RevKey::new(qf.src, qf.dst, qf.sport, qf.dport, qf.proto);
    let rv: RevEntry = match CT_REV.get_ptr(rk) {
        // SAFETY: map value pointer from a successful lookup.
        Some(p) => unsafe { *p },
        None => return Err(Reason::DropNoReverseFlow),
    };
    let now = nat::now();
    let (e, _) = nat::check_reverse(&rk, &rv, ifindex, node, now, peer)?;
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    // SAFETY: map value pointer from check_reverse.
    let (endpoint_id, out, consumer_mac) =
        unsafe { ((*e).endpoint_id, (*e).consumer_ifindex, (*e).consumer_mac) };
    // Consumer and endpoint as the consumer knows them.
    let (consumer, endpoint) = (rv.fwd.src_be, rv.fwd.dst_be);
    rewrite_error(
        frame,
        pkt,
        &qf,
        &ErrorRewrite {
            inner_src: consumer,
            inner_dst: endpoint,
            inner_sport: rv.fwd.sport_be,
            inner_dport: rv.fwd.dport_be,
            outer_src: endpoint,
            outer_dst: consumer,
            dst_mac: consumer_mac,
            src_mac: node.vmac,
        },
    )?;
    crate::stats::endpoint(endpoint_id, frame.len() as u64, 0);
    Ok(out)
}

/// Translates an ICMP error a consumer sends to an endpoint about a flow of that endpoint
/// (e.g. port unreachable for a reply) toward the backend, through the overlay when the
/// backend is remote. Returns the NIC to redirect to.
#[inline(always)]
pub fn forward_error(
    ctx: &aya_ebpf::programs::TcContext,
    pkt: &Ipv4Packet,
    nic: &LocalNic,
    ep: &Endpoint,
    node: &NodeConfig,
) -> Result<u32, Reason> {
    let frame = &Frame::new(ctx.data(), ctx.data_end());
    let qf = parse_quoted(frame, pkt, Reason::DropIcmpNoFlow)?;
    // The quoted packet is one the consumer received: endpoint:port → consumer:port.
    if qf.src != pkt.dst || qf.dst != pkt.src {
        return Err(Reason::DropIcmpNoFlow);
    }
    let key = FlowKey::new(nic.vpc_id, qf.dst, qf.src, qf.dport, qf.sport, qf.proto);
    let fe = CT_FWD.get_ptr(key).ok_or(Reason::DropIcmpNoFlow)?;
    // SAFETY: map value pointer from a successful lookup.
    let fe = unsafe { *fe };
    let now = nat::now();
    if fe.endpoint_id != ep.endpoint_id
        || fe.generation != ep.generation
        || conntrack::dead(&fe, fe.last_seen_ns, now, &node.timeouts)
    {
        return Err(Reason::DropIcmpNoFlow);
    }
    let svc = SERVICES
        .get_ptr(fe.service_id)
        .ok_or(Reason::DropNoService)?;
    // SAFETY: map value pointer from a successful lookup.
    let backend_mac = unsafe { (*svc).backend_mac };
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let rev = fe.rev;
    rewrite_error(
        frame,
        pkt,
        &qf,
        &ErrorRewrite {
            inner_src: rev.backend_be,
            inner_dst: rev.snat_be,
            inner_sport: rev.backend_port_be,
            inner_dport: rev.snat_port_be,
            outer_src: rev.snat_be,
            outer_dst: rev.backend_be,
            dst_mac: backend_mac,
            src_mac: node.vmac,
        },
    )?;
    if fe.remote_node_be != 0 {
        tunnel::encap(ctx, fe.remote_node_be, fe.backend_vpc_id)?;
    }
    Ok(fe.out_ifindex)
}
