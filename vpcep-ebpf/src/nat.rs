//! Endpoint translation with SNAT and connection tracking (TC).
//!
//! Consumer → endpoint E:p becomes SNAT:port → backend:server_port; the reply is matched by
//! its port claim and becomes E:p → consumer. Endpoint state is checked on every packet
//! in both directions, so rejecting an endpoint or revoking its owner cuts live flows; a
//! flow of an earlier generation of its endpoint is dead, and a changed epoch re-checks
//! the flow against the endpoint's whitelist and port mappings. How entries are claimed,
//! refreshed and removed safely between CPUs is in `conntrack.rs`.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use vpcep_common::{
    endpoint::{
        CLAIM_RELEASED, CT_F_UDP, EP_ACCEPTED, EP_PERMITTED, EP_SRC_WHITELIST, EP_TOMBSTONE,
        Endpoint, EndpointKey, FlowEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, LocalNic, NodeConfig,
        PortKey, RevEntry, RevKey, SNAT_PROBES, SVC_LOCAL, SVC_REMOTE, TunnelConfig, WhitelistKey,
        snat_port_start,
    },
    stats::Reason,
};

pub use crate::conntrack::now;
use crate::{
    conntrack::{self, dead, seen, touch, track},
    maps::{
        CT_FWD, CT_REV, ENDPOINTS, PORT_MAP, SCRATCH_CLAIM, SCRATCH_FLOW, SERVICES, SRC_WHITELIST,
    },
    parse::{Frame, Ipv4Packet, TCP_ACK, TCP_SYN},
    proxy, stats,
    tunnel::{self, Peer},
};
use vpcep_common::csum;

/// MSS of a 1500-byte MTU: what a local backend's SYN-ACK is clamped from when tcp_proxy
/// inserts bytes into the client's segments.
const LOCAL_MSS: u16 = 1460;

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
    server_port(ep.service_id, pkt.dport, pkt.proto)
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
fn server_port(service_id: u32, client_port_be: u16, proto: u8) -> Result<u16, Reason> {
    let pt = PORT_MAP
        .get_ptr(PortKey {
            service_id,
            client_port_be,
            proto,
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
    if ep.flags & EP_TOMBSTONE != 0 {
        return Err(Reason::DropEndpointDeleted);
    }
    if ep.flags & EP_ACCEPTED == 0 {
        return Err(Reason::DropNotAccepted);
    }
    if ep.flags & EP_PERMITTED == 0 {
        return Err(Reason::DropNotPermitted);
    }
    Ok(())
}

/// The endpoint's source whitelist admits `src` (or it has none).
#[inline(always)]
fn whitelisted(ep: &Endpoint, src_be: u32) -> bool {
    ep.flags & EP_SRC_WHITELIST == 0
        || SRC_WHITELIST
            .get(Key::new(
                64,
                WhitelistKey {
                    endpoint_id_be: ep.endpoint_id.to_be(),
                    src_be,
                },
            ))
            .is_some()
}

/// The flow belongs to this instance of its endpoint.
#[inline(always)]
fn same_instance(e: &FlowEntry, ep: &Endpoint) -> bool {
    e.generation == ep.generation
        && e.endpoint_id == ep.endpoint_id
        && e.service_id == ep.service_id
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
        // SAFETY: map value pointer from a successful lookup; shared fields change only
        // through the atomic operations of `conntrack`.
        let e = unsafe { &mut *e };
        if let Some(r) = established(ctx, pkt, ep, node, e, syn, now) {
            return r;
        }
    }
    let server_port = server_port(ep.service_id, pkt.dport, pkt.proto)?;
    let svc = SERVICES
        .get_ptr(ep.service_id)
        .ok_or(Reason::DropNoService)?;
    // SAFETY: map value pointer from a successful lookup.
    let svc = unsafe { &*svc };
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
    let allowed = whitelisted(ep, pkt.src);
    if let Some(p) = flow {
        // SAFETY: as above.
        let e = unsafe { &mut *p };
        let (s, owner) = (seen(e), e.owner);
        if s == vpcep_common::endpoint::CT_KILLED {
            // Its killer is removing it this instant.
            return Err(Reason::DropCtBusy);
        }
        let current = same_instance(e, ep)
            && !dead(e, s, now, &node.timeouts)
            && !conntrack::syn_on_closing(e, syn);
        if current
            && allowed
            && e.rev.backend_be == svc.backend_ip_be
            && e.rev.backend_port_be == server_port
            && e.out_ifindex == out
        {
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
            return established_inner(ctx, pkt, node, e, overlay, now, s);
        }
        // The flow is over (idle, closed), revoked (other instance of the endpoint, source
        // no longer whitelisted) or points elsewhere now: it goes, and this packet is
        // judged as a new flow.
        if !conntrack::kill(&key, p, s, owner) {
            return Err(Reason::DropCtBusy);
        }
        if current && !allowed {
            return Err(Reason::DropFlowRevoked);
        }
    }
    // A new flow.
    if pkt.proto == IPPROTO_TCP && !syn {
        return Err(Reason::DropTcpNoFlow);
    }
    if !allowed {
        return Err(Reason::DropSourceWhitelist);
    }
    // The new entry is built in a per-CPU scratch slot, not on the 512-byte stack.
    let fe = SCRATCH_FLOW.get_ptr_mut(0).ok_or(Reason::DropHelper)?;
    // SAFETY: this CPU's slot of a per-CPU map; nothing else runs on it meanwhile.
    let fe = unsafe { &mut *fe };
    // Field by field: a struct literal would be built on the stack and copied.
    fe.rev = RevKey::new(
        node.snat_ip_be,
        svc.backend_ip_be,
        0,
        server_port,
        key.proto,
    );
    fe.last_seen_ns = now;
    fe.ct = if pkt.proto == IPPROTO_TCP {
        0
    } else {
        CT_F_UDP
    };
    fe.endpoint_id = ep.endpoint_id;
    fe.service_id = ep.service_id;
    fe.out_ifindex = out;
    fe.epoch = ep.epoch;
    fe.generation = ep.generation;
    fe.remote_node_be = remote_node_be;
    fe.backend_vpc_id = svc.backend_vpc_id;
    fe.consumer_ifindex = ifindex;
    fe.backend_mac = svc.backend_mac;
    fe.consumer_mac = nic.mac;
    if pkt.proto == IPPROTO_TCP && svc.tcp_proxy != 0 {
        let seq = proxy::syn_seq(ctx, pkt.l4)?;
        proxy::open(fe, svc.tcp_proxy, seq);
    } else {
        fe.pp_mode = 0;
        fe.pp_len = 0;
        fe.pp_isn = 0;
        fe.pp_sent = 0;
        fe.pp_acked = 0;
    }
    open_flow(&key, fe, ep, node, now)?;
    let rev = fe.rev;
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

/// The common case: a live flow of this instance of the endpoint whose epoch has not
/// changed since the flow was checked. Needs no service, port-mapping or whitelist lookup.
/// `None` = take the full path (epoch or generation changed, flow idle past its timeout,
/// new SYN on a closing flow, overlay device replaced).
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
    let s = seen(e);
    if e.epoch != ep.epoch
        || !same_instance(e, ep)
        || dead(e, s, now, &node.timeouts)
        || conntrack::syn_on_closing(e, syn)
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
    Some(established_inner(ctx, pkt, node, e, overlay, now, s))
}

#[inline(always)]
fn established_inner(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    node: &NodeConfig,
    e: &mut FlowEntry,
    overlay: Option<TunnelConfig>,
    now: u64,
    seen: u64,
) -> Result<(Reason, u32), Reason> {
    if node.snat_ip_be == 0 {
        return Err(Reason::DropNodeNotConfigured);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    if !touch(e, seen, now) {
        return Err(Reason::DropCtBusy);
    }
    track(e, pkt, false);
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
    if e.pp_mode != 0 && pkt.proto == IPPROTO_TCP {
        proxy::forward(ctx, pkt, e)?;
    }
    if let Some(t) = overlay {
        tunnel::encap(ctx, e.remote_node_be, e.backend_vpc_id)?;
        tunnel::clamp_mss(ctx, pkt, tunnel::mss(&t))?;
    }
    Ok((Reason::FwdEstablished, e.out_ifindex))
}

/// Opens the flow `key` whose entry is prepared in `fe` (all but its claim): counts it
/// against its endpoint's limits, claims a SNAT port and inserts the entry. On any
/// failure nothing is left held. Not inlined: a BPF function of its own keeps the caller
/// within the 512-byte stack.
#[inline(never)]
// The entry is inserted from the scratch slot by reference: a copy would take 88 bytes of
// the stack this function exists to save.
#[allow(clippy::needless_borrows_for_generic_args)]
fn open_flow(
    key: &FlowKey,
    fe: &mut FlowEntry,
    ep: &Endpoint,
    node: &NodeConfig,
    now: u64,
) -> Result<(), Reason> {
    conntrack::admit(ep, now)?;
    fe.owner = conntrack::new_owner(now);
    if let Err(r) = claim(key, fe, node, now) {
        conntrack::flow_done(ep.endpoint_id);
        return Err(r);
    }
    if let Err(e) = CT_FWD.insert(key, &*fe, BPF_NOEXIST as u64) {
        conntrack::release_claim(&fe.rev, fe.owner);
        conntrack::flow_done(ep.endpoint_id);
        // Full, or another CPU created this tuple's flow in between (-EEXIST).
        return Err(if e == -17 {
            Reason::DropCtBusy
        } else {
            Reason::DropCtFull
        });
    }
    Ok(())
}

/// Claims a SNAT port for the new flow in `fe` (whose `rev` names all but the port):
/// probes from a hash of the tuple and takes the first claim that is free or whose holder
/// is dead (`conntrack::try_claim`), leaving it in `fe.rev`. The probe key and the claim
/// live in map memory and the loop re-reads what it needs: registers spilled around the
/// helper calls would otherwise take the stack the caller's frame leaves.
#[inline(always)]
fn claim(key: &FlowKey, fe: &mut FlowEntry, node: &NodeConfig, now: u64) -> Result<(), Reason> {
    let lo = node.port_lo as u32;
    let hi = node.port_hi as u32;
    if hi < lo || lo == 0 {
        return Err(Reason::DropNodeNotConfigured);
    }
    let start = snat_port_start(key, fe.rev.backend_be, fe.rev.backend_port_be);
    let value = SCRATCH_CLAIM.get_ptr_mut(0).ok_or(Reason::DropHelper)?;
    // SAFETY: this CPU's slot of a per-CPU map.
    let value = unsafe { &mut *value };
    value.owner = fe.owner;
    value.fwd = *key;
    for i in 0..SNAT_PROBES {
        // SAFETY: plain reads of valid fields (volatile: re-read, not kept in registers).
        let (lo, hi) = unsafe {
            (
                core::ptr::read_volatile(&node.port_lo) as u32,
                core::ptr::read_volatile(&node.port_hi) as u32,
            )
        };
        // At least 1 whatever was read: no division by zero (hence no panic path).
        let range = (hi.wrapping_sub(lo) + 1).max(1);
        fe.rev.snat_port_be = ((lo + start.wrapping_add(i) % range) as u16).to_be();
        if conntrack::try_claim(&fe.rev, value, now, &node.timeouts)? {
            return Ok(());
        }
    }
    Err(Reason::DropSnatExhausted)
}

/// Validates a port claim for a packet arriving on `ifindex`: the flow holding it is
/// live, of the current instance of its endpoint, came from this backend NIC (or tunnel
/// peer), and its endpoint is still accepted and permitted and still allows it. Returns
/// the forward entry and its `last_seen` as read.
#[inline(always)]
pub fn check_reverse(
    rk: &RevKey,
    rv: &RevEntry,
    ifindex: u32,
    node: &NodeConfig,
    now: u64,
    peer: Option<Peer>,
) -> Result<(*mut FlowEntry, u64), Reason> {
    if rv.owner == CLAIM_RELEASED {
        return Err(Reason::DropNoReverseFlow);
    }
    let e = CT_FWD
        .get_ptr_mut(rv.fwd)
        .ok_or(Reason::DropNoReverseFlow)?;
    // SAFETY: map value pointer from a successful lookup.
    let fe = unsafe { &*e };
    let s = seen(fe);
    if fe.owner != rv.owner || fe.rev != *rk || dead(fe, s, now, &node.timeouts) {
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
    if ep.flags & EP_TOMBSTONE != 0 {
        return Err(Reason::DropEndpointDeleted);
    }
    if ep.endpoint_id != fe.endpoint_id {
        return Err(Reason::DropNotAccepted);
    }
    if let Err(r) = check_endpoint(ep) {
        stats::endpoint_drop(ep.endpoint_id);
        return Err(r);
    }
    if !same_instance(fe, ep) || ep.epoch != fe.epoch && !still_allowed(fe, rk, rv, ep) {
        stats::endpoint_drop(ep.endpoint_id);
        return Err(Reason::DropFlowRevoked);
    }
    Ok((e, s))
}

/// After an epoch change the consumer's next packet re-checks the flow; until then its
/// replies are checked here: the source whitelist and the port mapping must still allow
/// the flow, to the same backend.
#[inline(always)]
fn still_allowed(fe: &FlowEntry, rk: &RevKey, rv: &RevEntry, ep: &Endpoint) -> bool {
    if !whitelisted(ep, rv.fwd.src_be) {
        return false;
    }
    let Ok(port) = server_port(fe.service_id, rv.fwd.dport_be, rv.fwd.proto) else {
        return false;
    };
    port == rk.backend_port_be
        && match SERVICES.get_ptr(fe.service_id) {
            // SAFETY: map value pointer from a successful lookup.
            Some(s) => unsafe { (*s).backend_ip_be == rk.backend_be },
            None => false,
        }
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
    // SAFETY: map value pointer from a successful lookup; claims are never rewritten.
    let rv = unsafe { *rv };
    let now = now();
    let (e, s) = check_reverse(&rk, &rv, ifindex, node, now, peer)?;
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    // SAFETY: map value pointer from check_reverse.
    let e = unsafe { &mut *e };
    if !touch(e, s, now) {
        return Err(Reason::DropCtBusy);
    }
    track(e, pkt, true);
    let insert = if e.pp_mode != 0 && pkt.proto == IPPROTO_TCP {
        proxy::reverse(ctx, pkt, e)?;
        proxy::max_insert(e)
    } else {
        0
    };
    let (out, mac) = (e.consumer_ifindex, e.consumer_mac);
    stats::endpoint(e.endpoint_id, ctx.len() as u64, 0);
    rewrite(
        ctx,
        pkt,
        rv.fwd.dst_be,
        rv.fwd.src_be,
        rv.fwd.dport_be,
        rv.fwd.sport_be,
        &mac,
        &node.vmac,
    )?;
    // The client's segments must fit the path with what tcp_proxy inserts into them.
    let mss = match peer {
        Some(p) => p.mss,
        None => LOCAL_MSS,
    };
    if peer.is_some() || insert != 0 {
        tunnel::clamp_mss(ctx, pkt, mss - insert)?;
    }
    Ok((Reason::RevReply, out))
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
