//! The overlay between nodes. A translated packet for a backend on another node leaves
//! through this node's VXLAN device in collect-metadata mode: the program sets the tunnel
//! key (the provider VPC's VNI, the backend node's underlay address) and the kernel's VXLAN
//! driver encapsulates, outer UDP checksum included. On the receiving node the program on
//! the VXLAN device delivers decapsulated packets to the local backend VM, and a backend's
//! reply to another node's SNAT address is tunnelled to that node, which alone holds the
//! flow's state.
use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use vpcep_common::{
    endpoint::{IPPROTO_TCP, LocalNic, TunnelConfig},
    stats::Reason,
};

use crate::{
    maps::{SNAT_OWNERS, TUNNEL_KEY},
    parse::{Frame, Ipv4Packet, TCP_SYN},
};

/// TTL of the outer header.
const OUTER_TTL: u8 = 64;
/// IPv4 + TCP headers without options: the MSS is the inner MTU less these.
const TCP_IP_HEADERS: u16 = 40;

/// Where a packet that came through the tunnel came from: checked against the flow's
/// service so that one node cannot answer for another node's backend.
#[derive(Clone, Copy)]
pub struct Peer {
    pub vni: u32,
    pub remote_be: u32,
    /// MSS to clamp SYN-ACKs of the flow to.
    pub mss: u16,
}

/// The overlay device, when this node has one.
#[inline(always)]
pub fn config() -> Option<TunnelConfig> {
    let t = crate::maps::tunnel()?;
    // SAFETY: map value pointer from a successful lookup.
    let t = unsafe { *t };
    (t.ifindex != 0).then_some(t)
}

/// Largest MSS whose segments fit the overlay unfragmented.
#[inline(always)]
pub fn mss(t: &TunnelConfig) -> u16 {
    // Never below the IPv4 minimum, whatever the configured MTU.
    t.inner_mtu.max(576) - TCP_IP_HEADERS
}

/// Sets the packet's tunnel metadata: the VXLAN device it is redirected to encapsulates
/// it with `vni` toward `remote_be`.
#[inline(always)]
pub fn encap(ctx: &TcContext, remote_be: u32, vni: u32) -> Result<(), Reason> {
    // In per-CPU scratch space rather than on the stack, which the new-flow path needs.
    let key = TUNNEL_KEY.get_ptr_mut(0).ok_or(Reason::DropHelper)?;
    // SAFETY: this CPU's slot of a per-CPU map; bpf_tunnel_key is plain data.
    let k = unsafe { &mut *key };
    // SAFETY: as above.
    *k = unsafe { core::mem::zeroed() };
    k.tunnel_id = vni;
    // The helper takes the address in host order.
    k.__bindgen_anon_1.remote_ipv4 = u32::from_be(remote_be);
    k.tunnel_ttl = OUTER_TTL;
    // SAFETY: valid skb and key pointers; flags 0 keeps the outer UDP checksum on.
    let r = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(Reason::DropHelper);
    }
    Ok(())
}

/// The VNI and the sending node's underlay address of a decapsulated packet.
#[inline(always)]
pub fn peer(ctx: &TcContext) -> Result<(u32, u32), Reason> {
    // SAFETY: as in `encap`.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: valid skb and key pointers.
    let r = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(Reason::DropTunnelBad);
    }
    // SAFETY: the IPv4 member, which the helper filled (no BPF_F_TUNINFO_IPV6).
    Ok((
        key.tunnel_id,
        unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be(),
    ))
}

/// Backend → a SNAT address of another node: tunnelled, untranslated, to the node that
/// owns it (it alone holds the flow). Returns the VXLAN device to redirect to.
#[inline(always)]
pub fn to_owner(
    ctx: &TcContext,
    frame: &Frame,
    pkt: &Ipv4Packet,
    nic: &LocalNic,
    t: &TunnelConfig,
) -> Result<u32, Reason> {
    crate::nat::check_source(frame, pkt, nic)?;
    let owner = SNAT_OWNERS
        .get_ptr(pkt.dst)
        .ok_or(Reason::DropSnatNoOwner)?;
    // SAFETY: map value pointer from a successful lookup.
    let owner = unsafe { *owner };
    encap(ctx, owner, nic.vpc_id)?;
    Ok(t.ifindex)
}

/// Lowers the MSS option of a SYN (or SYN-ACK) to `max`, so that no segment of the flow
/// needs fragmenting in the overlay. Only an MSS that is the first option is seen: every
/// mainstream stack puts it there.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, pkt: &Ipv4Packet, max: u16) -> Result<(), Reason> {
    if pkt.proto != IPPROTO_TCP || pkt.fragment || pkt.tcp_flags & TCP_SYN == 0 {
        return Ok(());
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let Ok(hdr) = frame.ptr_at::<[u8; 24]>(pkt.l4, Reason::DropTruncL4) else {
        return Ok(());
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { *hdr };
    if h[12] >> 4 < 6 || h[20] != 2 || h[21] != 4 {
        return Ok(());
    }
    let old = u16::from_be_bytes([h[22], h[23]]);
    if old <= max {
        return Ok(());
    }
    let (old_be, new_be) = (old.to_be(), max.to_be());
    // No pseudo-header flag: with CHECKSUM_PARTIAL the field holds the pseudo-header sum
    // only and the options are summed later, so the helper leaves it alone.
    ctx.l4_csum_replace(pkt.l4 + 16, old_be as u64, new_be as u64, 2)
        .map_err(|_| Reason::DropHelper)?;
    // The helper invalidated packet pointers.
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let p: *mut u16 = frame.ptr_at(pkt.l4 + 22, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { p.write_unaligned(new_be) };
    Ok(())
}
