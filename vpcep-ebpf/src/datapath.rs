//! What each hook does with a packet from a VM NIC. Unmanaged NICs (not in LOCAL_NICS) and
//! non-endpoint traffic pass untouched after the header sanity checks.
use vpcep_common::{
    endpoint::{
        Endpoint, EndpointKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, LocalNic, NodeConfig,
        in_snat_range,
    },
    stats::Reason,
};

use network_types::eth::EthHdr;

use crate::{
    arp, icmp,
    maps::{DNS_NICS, ENDPOINTS, LOCAL_ADDRS, LOCAL_NICS, SNAT_OWNERS},
    nat,
    parse::{self, Frame, Parsed},
    stats, tunnel,
};

/// What to do with the packet.
pub enum Action {
    Pass,
    Drop,
    /// Send back out of the NIC it came in on (ARP and echo replies).
    Tx,
    /// To another NIC's egress.
    Redirect(u32),
}

#[inline(always)]
fn lookup(ifindex: u32) -> Option<(LocalNic, NodeConfig)> {
    let nic = LOCAL_NICS.get_ptr(ifindex)?;
    let node = crate::maps::node()?;
    // SAFETY: map value pointers from successful lookups.
    Some(unsafe { (*nic, *node) })
}

#[inline(always)]
fn endpoint(nic: &LocalNic, dst: u32) -> Option<Endpoint> {
    let ep = ENDPOINTS.get_ptr(EndpointKey {
        vpc_id: nic.vpc_id,
        ip_be: dst,
    })?;
    // SAFETY: map value pointer from a successful lookup.
    Some(unsafe { *ep })
}

/// A DNS query to the NIC's DNS address goes up to the node resolver's socket on this
/// device. The VM addressed it to the gateway's (virtual) MAC, which is not the device's,
/// so the stack would drop it as another host's: it is marked as this host's. Nothing
/// else is: the node does not route for VMs.
#[inline(always)]
fn to_resolver(ctx: &aya_ebpf::programs::TcContext, pkt: &parse::Ipv4Packet, ifindex: u32) {
    if (pkt.proto == IPPROTO_UDP || pkt.proto == IPPROTO_TCP)
        && !pkt.fragment
        && pkt.dport == DNS_PORT_BE
        // SAFETY: map value pointer from a successful lookup.
        && DNS_NICS.get_ptr(ifindex).is_some_and(|a| unsafe { *a } == pkt.dst)
    {
        let _ = ctx.change_type(PACKET_HOST);
    }
}

const DNS_PORT_BE: u16 = 53u16.to_be();
/// `skb->pkt_type` of a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// TC ingress on the host side of a VM NIC: the translating path.
#[inline(always)]
pub fn tc_ingress(
    ctx: &aya_ebpf::programs::TcContext,
    ifindex: u32,
) -> Result<(Reason, Action), Reason> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let parsed = parse::parse(&frame)?;
    // A reply to this node's SNAT address needs no NIC lookup: its flow names the NIC it
    // must arrive on.
    if let Parsed::Ipv4(pkt) = &parsed
        && in_snat_range(pkt.dst)
        && let Some(node) = crate::maps::node()
    {
        // SAFETY: map value pointer from a successful lookup.
        let node = unsafe { *node };
        if pkt.dst == node.snat_ip_be {
            if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::is_error(pkt) {
                let out = icmp::reverse_error(&frame, pkt, ifindex, &node, None)?;
                return Ok((Reason::RevIcmpError, Action::Redirect(out)));
            }
            let (reason, out) = nat::reverse(ctx, pkt, ifindex, &node, None)?;
            return Ok((reason, Action::Redirect(out)));
        }
    }
    let pass = (parsed.pass_reason(), Action::Pass);
    let Some((nic, node)) = lookup(ifindex) else {
        return Ok(pass);
    };
    let pkt = match parsed {
        Parsed::Ipv4(p) => p,
        Parsed::NonIpv4 { ether_type_be } => {
            if ether_type_be == parse::ETH_P_ARP.to_be() && arp::answer(&frame, &nic, &node)? {
                return Ok((Reason::ArpReply, Action::Tx));
            }
            return Ok(pass);
        }
    };
    if in_snat_range(pkt.dst) {
        // Another node's SNAT address: that node holds the flow; without an overlay the
        // local lookup below finds nothing and drops.
        if let Some(t) = tunnel::config() {
            let out = tunnel::to_owner(ctx, &frame, &pkt, &nic, &t)?;
            return Ok((Reason::RevToOwner, Action::Redirect(out)));
        }
        if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::is_error(&pkt) {
            let out = icmp::reverse_error(&frame, &pkt, ifindex, &node, None)?;
            return Ok((Reason::RevIcmpError, Action::Redirect(out)));
        }
        let (reason, out) = nat::reverse(ctx, &pkt, ifindex, &node, None)?;
        return Ok((reason, Action::Redirect(out)));
    }
    let Some(ep) = endpoint(&nic, pkt.dst) else {
        to_resolver(ctx, &pkt, ifindex);
        return Ok(pass);
    };
    if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::icmp_type(&pkt) == icmp::ECHO_REQUEST {
        nat::check_source(&frame, &pkt, &nic)?;
        icmp::echo_reply(&frame, &pkt, &node)?;
        return Ok((Reason::IcmpEchoReply, Action::Tx));
    }
    if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::is_error(&pkt) {
        let r = nat::check_source(&frame, &pkt, &nic)
            .and_then(|()| nat::check_endpoint(&ep))
            .and_then(|()| icmp::forward_error(ctx, &pkt, &nic, &ep, &node));
        match r {
            Ok(_) => stats::endpoint(ep.endpoint_id, ctx.len() as u64, 0),
            Err(_) => stats::endpoint_drop(ep.endpoint_id),
        }
        return Ok((Reason::FwdIcmpError, Action::Redirect(r?)));
    }
    let (reason, out) = nat::forward(ctx, &frame, &pkt, &nic, &ep, ifindex, &node)?;
    Ok((reason, Action::Redirect(out)))
}

/// TC ingress on the node's VXLAN device: what other nodes tunnel here. Replies to this
/// node's SNAT address are translated back (if they come from the flow's backend node and
/// VNI); translated packets for a local backend VM are delivered to it; the rest is dropped.
#[inline(always)]
pub fn tc_tunnel(
    ctx: &aya_ebpf::programs::TcContext,
    ifindex: u32,
) -> Result<(Reason, Action), Reason> {
    let (vni, remote_be) = tunnel::peer(ctx)?;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let Parsed::Ipv4(pkt) = parse::parse(&frame)? else {
        return Err(Reason::DropTunnelBad);
    };
    let t = tunnel::config().ok_or(Reason::DropTunnelBad)?;
    let node = crate::maps::node().ok_or(Reason::DropNodeNotConfigured)?;
    // SAFETY: map value pointer from a successful lookup.
    let node = unsafe { *node };
    if in_snat_range(pkt.dst) {
        if pkt.dst != node.snat_ip_be {
            return Err(Reason::DropTunnelUnknownSnat);
        }
        let peer = Some(tunnel::Peer {
            vni,
            remote_be,
            mss: tunnel::mss(&t),
        });
        if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::is_error(&pkt) {
            let out = icmp::reverse_error(&frame, &pkt, ifindex, &node, peer)?;
            return Ok((Reason::RevIcmpError, Action::Redirect(out)));
        }
        let (reason, out) = nat::reverse(ctx, &pkt, ifindex, &node, peer)?;
        return Ok((reason, Action::Redirect(out)));
    }
    // Only translated traffic rides the overlay: its source is a SNAT address, and the
    // node that owns that address must be the one that sent it (any other underlay host
    // could otherwise inject into local VMs).
    if !in_snat_range(pkt.src) {
        return Err(Reason::DropTunnelUnknownDst);
    }
    match SNAT_OWNERS.get_ptr(pkt.src) {
        // SAFETY: map value pointer from a successful lookup.
        Some(owner) if unsafe { *owner } == remote_be => {}
        _ => return Err(Reason::DropTunnelNotOwner),
    }
    let vm = LOCAL_ADDRS
        .get_ptr(EndpointKey {
            vpc_id: vni,
            ip_be: pkt.dst,
        })
        .ok_or(Reason::DropTunnelUnknownDst)?;
    // SAFETY: map value pointer from a successful lookup.
    let vm = unsafe { *vm };
    let eth: *mut EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = vm.mac;
        (*eth).src_addr = node.vmac;
    }
    Ok((Reason::TunnelDeliver, Action::Redirect(vm.ifindex)))
}

/// XDP on the host side of a VM NIC: answers ARP and echo, drops what the consumer-side
/// checks refuse before the stack sees it, and leaves translation to TC.
#[inline(always)]
pub fn xdp_ingress(frame: &Frame, ifindex: u32) -> Result<(Reason, Action), Reason> {
    let parsed = parse::parse(frame)?;
    let pass = (parsed.pass_reason(), Action::Pass);
    let Some((nic, node)) = lookup(ifindex) else {
        return Ok(pass);
    };
    let pkt = match parsed {
        Parsed::Ipv4(p) => p,
        Parsed::NonIpv4 { ether_type_be } => {
            if ether_type_be == parse::ETH_P_ARP.to_be() && arp::answer(frame, &nic, &node)? {
                return Ok((Reason::ArpReply, Action::Tx));
            }
            return Ok(pass);
        }
    };
    if in_snat_range(pkt.dst) {
        return Ok((Reason::PassToTc, Action::Pass));
    }
    let Some(ep) = endpoint(&nic, pkt.dst) else {
        return Ok(pass);
    };
    if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::icmp_type(&pkt) == icmp::ECHO_REQUEST {
        nat::check_source(frame, &pkt, &nic)?;
        icmp::echo_reply(frame, &pkt, &node)?;
        return Ok((Reason::IcmpEchoReply, Action::Tx));
    }
    if pkt.proto == IPPROTO_ICMP && !pkt.fragment && icmp::is_error(&pkt) {
        nat::check_source(frame, &pkt, &nic)?;
        nat::check_endpoint(&ep)?;
        return Ok((Reason::PassToTc, Action::Pass));
    }
    nat::check_forward(frame, &pkt, &nic, &ep)?;
    Ok((Reason::PassToTc, Action::Pass))
}
