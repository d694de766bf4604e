//! Endpoint translation with SNAT and connection tracking (TC).
//!
//! Consumer → endpoint E:p becomes SNAT:port → backend:server_port; the reply is matched by
//! its reverse entry and becomes E:p → consumer. Endpoint state is checked on every packet
//! in both directions, so rejecting an endpoint or revoking its owner cuts live flows.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vpcep_common::{
    endpoint::{
        CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT, CT_UDP, EP_SRC_WHITELIST, Endpoint,
        EndpointKey, FlowEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, LocalNic, NodeConfig, PortKey,
        RevEntry, RevKey, SNAT_PROBES, SVC_LOCAL, SVC_REMOTE, Timeouts, TunnelConfig, WhitelistKey,
        snat_port_start,
    },
    stats::Reason,
};

use crate::{
    maps::{CT_FWD, CT_REV, ENDPOINTS, PORT_MAP, SERVICES, SRC_WHITELIST},
    parse::{Frame, Ipv4Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
    tunnel::{self, Peer},
};
use vpcep_common::csum;

const NS_PER_SEC: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC at tick resolution: idle timeouts are seconds and `last_seen` is
/// written at most every 250 ms, while reading the TSC costs ~15 ns a packet in a VM.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Consumer-side checks that need no conntrack state (shared with the XDP early-drop
/// path). Returns the server port.
#[inline(always)]
pub fn check_forward(
    frame: &Frame,
    pkt: &Ipv4Packet,
    nic: &LocalNic,
    ep: &Endpoint,
) -> Result<u16, Reason> {
    check_packet(frame, pkt, nic)?;
    check_endpoint(ep)?;
    server_port(pkt, ep)
}

/// What every packet to an endpoint must pass before any lookup: its own source, not a
/// fragment, TCP or UDP.
#[inline(always)]
fn check_packet(frame: &Frame, pkt: &Ipv4Packet, nic: &LocalNic) -> Result<(), Reason> {
    check_source(frame, pkt, nic)?;
    if pkt.fragment {
        return Err(Reason::DropFragment);
    }
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return Err(Reason::DropEndpointProto);
    }
    Ok(())
}

#[inline(always)]
fn server_port(pkt: &Ipv4Packet, ep: &Endpoint) -> Result<u16, Reason> {
    let pt = PORT_MAP
        .get_ptr(PortKey {
            service_id: ep.service_id,
            client_port_be: pkt.dport,
            proto: pkt.proto,
            _pad: 0,
        })
        .ok_or(Reason::DropNoPortMapping)?;
    // SAFETY: map value pointer from a successful lookup.
    Ok(unsafe { (*pt).server_port_be })
}

/// Anti-spoofing: only the VM's own IPv4 and MAC may talk to an endpoint.
#[inline(always)]
pub fn check_source(frame: &Frame, pkt: &Ipv4Packet, nic: &LocalNic) -> Result<(), Reason> {
    if pkt.src != nic.ip_be {
        return Err(Reason::DropSpoofedIp);
    }
    let eth: *const EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).src_addr } != nic.mac {
        return Err(Reason::DropSpoofedMac);
    }
    Ok(())
}

#[inline(always)]
pub fn check_endpoint(ep: &Endpoint) -> Result<(), Reason> {
    if ep.flags & vpcep_common::endpoint::EP_ACCEPTED == 0 {
        return Err(Reason::DropNotAccepted);
    }
    if ep.flags & vpcep_common::endpoint::EP_PERMITTED == 0 {
        return Err(Reason::DropNotPermitted);
    }
    Ok(())
}

#[inline(always)]
pub fn expired(e: &FlowEntry, now: u64, t: &Timeouts) -> bool {
    // Separate loads: otherwise the optimiser turns the match into a stack read indexed by
    // the state, which the verifier rejects (variable-offset stack access).
    // SAFETY: plain reads of valid fields.
    let (syn, est, closing, udp) = unsafe {
        (
            core::ptr::read_volatile(&t.tcp_syn),
            core::ptr::read_volatile(&t.tcp_established),
            core::ptr::read_volatile(&t.tcp_closing),
            core::ptr::read_volatile(&t.udp),
        )
    };
    let secs = match e.state {
        CT_TCP_SYN_SENT => syn,
        CT_TCP_ESTABLISHED => est,
        CT_TCP_CLOSING => closing,
        _ => udp,
    };
    now.saturating_sub(e.last_seen_ns) > secs as u64 * NS_PER_SEC
}

#[inline(always)]
fn track(e: &mut FlowEntry, pkt: &Ipv4Packet, from_backend: bool, now: u64) {
    if pkt.proto == IPPROTO_TCP {
        let f = pkt.tcp_flags;
        if f & TCP_RST != 0 {
            e.state = CT_TCP_CLOSING;
        } else {
            if f & TCP_FIN != 0 {
                e.fin |= if from_backend { 2 } else { 1 };
                if e.fin == 3 {
                    e.state = CT_TCP_CLOSING;
                }
            }
            if from_backend
                && e.state == CT_TCP_SYN_SENT
                && f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
            {
                e.state = CT_TCP_ESTABLISHED;
            }
        }
    }
    // Coarse: one write a second per flow keeps the cache line mostly read-only.
    if now.wrapping_sub(e.last_seen_ns) > NS_PER_SEC / 4 {
        e.last_seen_ns = now;
    }
}

/// Consumer → endpoint. Returns the reason to count and the backend NIC to redirect to.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    frame: &Frame,
    pkt: &Ipv4Packet,
    nic: &LocalNic,
    ep: &Endpoint,
    ifindex: u32,
    node: &NodeConfig,
) -> Result<(Reason, u32), Reason> {
    let r = forward_inner(ctx, frame, pkt, nic, ep, ifindex, node);
    match r {
        Ok((reason, _)) => stats::endpoint(
            ep.endpoint_id,
            ctx.len() as u64,
            (reason == Reason::FwdNewFlow) as u64,
        ),
        Err(_) => stats::endpoint_drop(ep.endpoint_id),
    }
    r
}

#[inline(always)]
fn forward_inner(
    ctx: &TcContext,
    frame: &Frame,
    pkt: &Ipv4Packet,
    nic: &LocalNic,
    ep: &Endpoint,
    ifindex: u32,
    node: &NodeConfig,
) -> Result<(Reason, u32), Reason> {
    check_packet(frame, pkt, nic)?;
    // State first: a rejected consumer's packets cost no conntrack lookup.
    check_endpoint(ep)?;
    let key = FlowKey::new(
        nic.vpc_id, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto,
    );
    let now = now();
    let syn = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let flow = CT_FWD.get_ptr_mut(key);
    if let Some(e) = flow {
        // SAFETY: map value pointer from a successful lookup; racing updates of the
        // state byte, timestamp and cached fields are benign.
        let e = unsafe { &mut *e };
        if let Some(r) = established(ctx, pkt, ep, node, e, syn, now) {
            return r;
        }
    }
    let server_port = server_port(pkt, ep)?;
    let svc = SERVICES
        .get_ptr(ep.service_id)
        .ok_or(Reason::DropNoService)?;
    // SAFETY: map value pointer from a successful lookup.
    let svc = unsafe { *svc };
    // A remote backend goes through the overlay device, if this node has one.
    let (out, overlay) = if svc.location == SVC_LOCAL {
        (svc.ifindex, None)
    } else {
        match tunnel::config() {
            Some(t) if svc.location == SVC_REMOTE && svc.remote_node_be != 0 => {
                (t.ifindex, Some(t))
            }
            _ => return Err(Reason::DropRemoteBackend),
        }
    };
    let remote_node_be = if overlay.is_some() {
        svc.remote_node_be
    } else {
        0
    };
    if node.snat_ip_be == 0 {
        return Err(Reason::DropNodeNotConfigured);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    let mut stale: Option<RevKey> = None;
    if let Some(e) = flow {
        // SAFETY: as above.
        let e = unsafe { &mut *e };
        let reusable = expired(e, now, &node.timeouts)
            || syn && e.state == CT_TCP_CLOSING
            || e.rev.backend_be != svc.backend_ip_be
            || e.rev.backend_port_be != server_port
            || e.out_ifindex != out;
        if !reusable {
            // Same backend after a service change: refresh what the fast path caches, the
            // epoch last in program order (volatile stores keep their order). A CPU racing
            // this one may still send a packet with the old fields (BPF stores carry no
            // barrier), as it would have a moment earlier.
            // SAFETY: `e` is a valid, aligned map value.
            unsafe {
                core::ptr::write_volatile(&mut e.remote_node_be, remote_node_be);
                core::ptr::write_volatile(&mut e.backend_vpc_id, svc.backend_vpc_id);
                core::ptr::write_volatile(&mut e.backend_mac, svc.backend_mac);
                core::ptr::write_volatile(&mut e.epoch, ep.epoch);
            }
            return established_inner(ctx, pkt, node, e, overlay, now);
        }
        stale = Some(e.rev);
    }
    // A new flow.
    if pkt.proto == IPPROTO_TCP && !syn {
        return Err(Reason::DropTcpNoFlow);
    }
    if ep.flags & EP_SRC_WHITELIST != 0 {
        let k = Key::new(
            64,
            WhitelistKey {
                endpoint_id_be: ep.endpoint_id.to_be(),
                src_be: pkt.src,
            },
        );
        if SRC_WHITELIST.get(k).is_none() {
            return Err(Reason::DropSourceWhitelist);
        }
    }
    if let Some(old) = stale {
        let _ = CT_REV.remove(old);
    }
    let rev = allocate(
        &key,
        ifindex,
        nic,
        node,
        svc.backend_ip_be,
        server_port,
        now,
    )?;
    let entry = FlowEntry {
        rev,
        endpoint_id: ep.endpoint_id,
        service_id: ep.service_id,
        out_ifindex: out,
        epoch: ep.epoch,
        remote_node_be,
        backend_vpc_id: svc.backend_vpc_id,
        backend_mac: svc.backend_mac,
        state: if pkt.proto == IPPROTO_TCP {
            CT_TCP_SYN_SENT
        } else {
            CT_UDP
        },
        fin: 0,
        last_seen_ns: now,
    };
    if CT_FWD.insert(key, entry, BPF_ANY as u64).is_err() {
        let _ = CT_REV.remove(rev);
        return Err(Reason::DropCtInsert);
    }
    rewrite(
        ctx,
        pkt,
        rev.snat_be,
        rev.backend_be,
        rev.snat_port_be,
        rev.backend_port_be,
        &svc.backend_mac,
        &node.vmac,
    )?;
    if let Some(t) = overlay {
        tunnel::encap(ctx, svc.remote_node_be, svc.backend_vpc_id)?;
        tunnel::clamp_mss(ctx, pkt, tunnel::mss(&t))?;
    }
    Ok((Reason::FwdNewFlow, out))
}

/// The common case: a live flow whose endpoint's service has not changed since the flow
/// was resolved. Needs no service or port-mapping lookup. `None` = take the full path
/// (service changed, flow idle past its timeout, new SYN on a closing flow, overlay
/// device replaced).
#[inline(always)]
fn established(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    ep: &Endpoint,
    node: &NodeConfig,
    e: &mut FlowEntry,
    syn: bool,
    now: u64,
) -> Option<Result<(Reason, u32), Reason>> {
    if e.epoch != ep.epoch
        || e.service_id != ep.service_id
        || expired(e, now, &node.timeouts)
        || syn && e.state == CT_TCP_CLOSING
    {
        return None;
    }
    let overlay = if e.remote_node_be == 0 {
        None
    } else {
        match tunnel::config() {
            Some(t) if t.ifindex == e.out_ifindex => Some(t),
            _ => return None,
        }
    };
    Some(established_inner(ctx, pkt, node, e, overlay, now))
}

#[inline(always)]
fn established_inner(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    node: &NodeConfig,
    e: &mut FlowEntry,
    overlay: Option<TunnelConfig>,
    now: u64,
) -> Result<(Reason, u32), Reason> {
    if node.snat_ip_be == 0 {
        return Err(Reason::DropNodeNotConfigured);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    track(e, pkt, false, now);
    let rev = e.rev;
    rewrite(
        ctx,
        pkt,
        rev.snat_be,
        rev.backend_be,
        rev.snat_port_be,
        rev.backend_port_be,
        &e.backend_mac,
        &node.vmac,
    )?;
    if let Some(t) = overlay {
        tunnel::encap(ctx, e.remote_node_be, e.backend_vpc_id)?;
        tunnel::clamp_mss(ctx, pkt, tunnel::mss(&t))?;
    }
    Ok((Reason::FwdEstablished, e.out_ifindex))
}

/// Finds a SNAT port whose reverse key is free (or held by a dead flow) and claims it with
/// an insert-if-absent, so two CPUs can never hand out the same port to one backend.
#[inline(always)]
fn allocate(
    key: &FlowKey,
    ifindex: u32,
    nic: &LocalNic,
    node: &NodeConfig,
    backend: u32,
    server_port: u16,
    now: u64,
) -> Result<RevKey, Reason> {
    let lo = node.port_lo as u32;
    let hi = node.port_hi as u32;
    if hi < lo || lo == 0 {
        return Err(Reason::DropNodeNotConfigured);
    }
    let range = hi - lo + 1;
    let start = snat_port_start(key, backend, server_port);
    let value = RevEntry {
        fwd: *key,
        consumer_ifindex: ifindex,
        consumer_mac: nic.mac,
        _pad: [0; 2],
    };
    for i in 0..SNAT_PROBES {
        let port = lo + start.wrapping_add(i) % range;
        let rk = RevKey::new(
            node.snat_ip_be,
            backend,
            (port as u16).to_be(),
            server_port,
            key.proto,
        );
        // Look before inserting: a failed insert into an LRU map still takes and returns
        // a free element, which costs more than the lookup.
        if CT_REV.get_ptr(rk).is_none() && CT_REV.insert(rk, value, BPF_NOEXIST as u64).is_ok() {
            return Ok(rk);
        }
        // Taken: reuse it only if the flow holding it is gone or idle past its timeout.
        let holder = match CT_REV.get_ptr(rk) {
            // SAFETY: map value pointer from a successful lookup.
            Some(p) => unsafe { (*p).fwd },
            None => continue,
        };
        let dead = match CT_FWD.get_ptr(holder) {
            // SAFETY: map value pointer from a successful lookup.
            Some(e) => unsafe { (*e).rev != rk || expired(&*e, now, &node.timeouts) },
            None => true,
        };
        if dead && CT_REV.insert(rk, value, BPF_ANY as u64).is_ok() {
            if let Some(e) = CT_FWD.get_ptr(holder) {
                // SAFETY: as above.
                if unsafe { (*e).rev == rk } {
                    let _ = CT_FWD.remove(holder);
                }
            }
            return Ok(rk);
        }
    }
    Err(Reason::DropSnatExhausted)
}

/// Validates a reverse entry for a packet arriving on `ifindex`: the flow is live, came
/// from this backend NIC, and its endpoint is still accepted and permitted. Returns the
/// forward entry.
#[inline(always)]
pub fn check_reverse(
    rk: &RevKey,
    rv: &RevEntry,
    ifindex: u32,
    node: &NodeConfig,
    now: u64,
    peer: Option<Peer>,
) -> Result<*mut FlowEntry, Reason> {
    let e = CT_FWD
        .get_ptr_mut(rv.fwd)
        .ok_or(Reason::DropNoReverseFlow)?;
    // SAFETY: map value pointer from a successful lookup.
    let fe = unsafe { &*e };
    if fe.rev != *rk || expired(fe, now, &node.timeouts) {
        return Err(Reason::DropNoReverseFlow);
    }
    // A remote backend's replies come only through the overlay program, which passes the
    // tunnel peer it saw; on any other interface they are refused.
    if fe.out_ifindex != ifindex || peer.is_none() && fe.remote_node_be != 0 {
        return Err(Reason::DropReplyWrongNic);
    }
    if let Some(p) = peer {
        let ok = match SERVICES.get_ptr(fe.service_id) {
            // SAFETY: map value pointer from a successful lookup.
            Some(s) => unsafe {
                (*s).remote_node_be == p.remote_be && (*s).backend_vpc_id == p.vni
            },
            None => false,
        };
        if !ok {
            return Err(Reason::DropTunnelWrongPeer);
        }
    }
    let ep = ENDPOINTS
        .get_ptr(EndpointKey {
            vpc_id: rv.fwd.vpc_id,
            ip_be: rv.fwd.dst_be,
        })
        .ok_or(Reason::DropNotAccepted)?;
    // SAFETY: map value pointer from a successful lookup.
    let ep = unsafe { &*ep };
    if ep.endpoint_id != fe.endpoint_id {
        return Err(Reason::DropNotAccepted);
    }
    if let Err(r) = check_endpoint(ep) {
        stats::endpoint_drop(ep.endpoint_id);
        return Err(r);
    }
    Ok(e)
}

/// Backend → SNAT address. Returns the reason and the consumer NIC to redirect to.
#[inline(always)]
pub fn reverse(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    ifindex: u32,
    node: &NodeConfig,
    peer: Option<Peer>,
) -> Result<(Reason, u32), Reason> {
    if pkt.fragment {
        return Err(Reason::DropFragment);
    }
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return Err(Reason::DropNoReverseFlow);
    }
    let rk = RevKey::new(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.proto);
    let rv = CT_REV.get_ptr(rk).ok_or(Reason::DropNoReverseFlow)?;
    // SAFETY: map value pointer from a successful lookup.
    let rv = unsafe { *rv };
    let now = now();
    let e = check_reverse(&rk, &rv, ifindex, node, now, peer)?;
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    // SAFETY: map value pointer from check_reverse.
    let e = unsafe { &mut *e };
    track(e, pkt, true, now);
    stats::endpoint(e.endpoint_id, ctx.len() as u64, 0);
    rewrite(
        ctx,
        pkt,
        rv.fwd.dst_be,
        rv.fwd.src_be,
        rv.fwd.dport_be,
        rv.fwd.sport_be,
        &rv.consumer_mac,
        &node.vmac,
    )?;
    if let Some(p) = peer {
        tunnel::clamp_mss(ctx, pkt, p.mss)?;
    }
    Ok((Reason::RevReply, rv.consumer_ifindex))
}

/// Rewrites addresses, ports, TTL and MACs. The L4 checksum goes through the kernel's
/// helpers (pseudo-header aware, so CHECKSUM_PARTIAL from an offloading VM stays right;
/// a zero UDP checksum stays zero); the IPv4 header checksum is updated by hand.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) -> Result<(), Reason> {
    let (csum_off, mangled) = if pkt.proto == IPPROTO_TCP {
        (pkt.l4 + 16, 0)
    } else {
        (pkt.l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let addr_diff = csum::add(csum::diff32(pkt.src, src), csum::diff32(pkt.dst, dst));
    let port_diff = csum::add(
        csum::diff16(pkt.sport, sport),
        csum::diff16(pkt.dport, dport),
    );
    ctx.l4_csum_replace(
        csum_off,
        0,
        addr_diff as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled,
    )
    .map_err(|_| Reason::DropHelper)?;
    ctx.l4_csum_replace(csum_off, 0, port_diff as u64, mangled)
        .map_err(|_| Reason::DropHelper)?;
    // The helpers invalidated packet pointers: bounds-check again before writing.
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    let ip: *mut Ipv4Hdr = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    let ports: *mut [u16; 2] = frame.ptr_at(pkt.l4, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let h = &mut *ip;
        let old = u16::from_ne_bytes([h.ttl, h.proto]);
        h.ttl = pkt.ttl - 1;
        let d = csum::add(
            addr_diff,
            csum::diff16(old, u16::from_ne_bytes([h.ttl, h.proto])),
        );
        h.check = csum::apply(u16::from_ne_bytes(h.check), d).to_ne_bytes();
        h.src_addr = src.to_ne_bytes();
        h.dst_addr = dst.to_ne_bytes();
        (*ports)[0] = sport;
        (*ports)[1] = dport;
        (*eth).dst_addr = *dst_mac;
        (*eth).src_addr = *src_mac;
    }
    Ok(())
}
