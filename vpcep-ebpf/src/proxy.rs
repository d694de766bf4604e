//! tcp_proxy: what the backend learns about its consumer. A PROXY protocol v2 header is
//! inserted into the client's stream at its first byte, and/or the TOA option rides on
//! the client's first segments; the sequence numbers of the client and the
//! acknowledgements (and SACK edges) of the backend are then shifted by the header's length
//! for the rest of the flow, as Linux's `nf_conntrack_seqadj` does for NAT helpers.
//!
//! Bytes are inserted by growing the packet at its tail and moving the payload (at most
//! one segment, once or twice per flow) up behind the new bytes: the TCP header stays where
//! it is, so a packet whose checksum the sender left to offload (CHECKSUM_PARTIAL, whose
//! `csum_start` no helper can move) stays right, and as the inserted length is a multiple
//! of 4 the moved payload's one's complement sum is unchanged. Segments that need no
//! insertion (all but the first one or two) only get their sequence number rewritten.
//!
//! Header placement (`TCP_PROXY_F_FIRST_DATA` clear, the default): the header is the
//! payload of the ACK completing the handshake, so it reaches the backend even when the
//! server speaks first; any bare segment at the correction position carries it again
//! until the backend acknowledges it, as does a retransmission of the first data. On first
//! data: the first data segment carries it (and its retransmissions, until acknowledged).
use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use vpcep_common::{
    csum,
    endpoint::{
        FlowEntry, PP_ACKED_ANY, PP_ACKED_HEADER, PP_SENT_ALONE, PP_SENT_DATA, PP2_FIXED_LEN,
        TCP_PROXY_F_FIRST_DATA, TCP_PROXY_MODE_MASK, TCP_PROXY_PROXY_VNI, TOA_KIND_DEFAULT,
        TOA_LEN, adjust_seq, pp2_fixed, seq_after, toa_mode, unadjust_ack,
    },
    stats::{ProxyEvent, Reason},
};

use crate::{
    maps::{PROXY_SCRATCH, PROXY_STATS, PROXY_TEMPLATES},
    parse::{Frame, Ipv4Packet, TCP_ACK, TCP_RST, TCP_SYN},
};

/// Largest payload moved to make room (a segment of a 2000-byte MTU; the SYN-ACK's MSS is
/// clamped so that segment plus insertion fit the path).
const MAX_MOVED: usize = 2000;
/// Scratch offset of the inserted bytes: TOA, then the header's fixed part, then its TLVs.
const INS_TOA: usize = 0;
const INS_HDR: usize = TOA_LEN as usize;
/// Options inspected per segment for SACK blocks.
const MAX_OPTIONS: usize = 12;

#[inline(always)]
fn event(mode: u8, e: ProxyEvent) {
    let i = vpcep_common::stats::proxy_event_index(mode, e);
    if let Some(c) = PROXY_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn load_u32(frame: &Frame, off: usize) -> Result<u32, Reason> {
    let p: *const [u8; 4] = frame.ptr_at(off, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(u32::from_be_bytes(unsafe { *p }))
}

/// The flow's fields for a new TCP flow of a service with mode `tcp_proxy`; `syn_seq` is
/// the SYN's sequence number (host order).
#[inline(always)]
pub fn open(fe: &mut FlowEntry, tcp_proxy: u8, syn_seq: u32) {
    fe.pp_mode = tcp_proxy;
    fe.pp_isn = syn_seq.wrapping_add(1);
    fe.pp_sent = 0;
    fe.pp_acked = 0;
    fe.pp_len = match PROXY_TEMPLATES.get_ptr(fe.endpoint_id) {
        // SAFETY: map value pointer from a successful lookup.
        Some(t) => unsafe { (*t).header_len(tcp_proxy) },
        None => 0,
    };
    if vpcep_common::endpoint::proxy_header_mode(tcp_proxy) && fe.pp_len == 0 {
        event(tcp_proxy, ProxyEvent::NoTemplate);
    }
}

/// The sequence number of a TCP segment at `l4` (host order), for a new flow's SYN.
#[inline(always)]
pub fn syn_seq(ctx: &TcContext, l4: usize) -> Result<u32, Reason> {
    load_u32(&Frame::new(ctx.data(), ctx.data_end()), l4 + 4)
}

/// The most a flow inserts into one segment (for the MSS clamp of its SYN-ACK).
#[inline(always)]
pub fn max_insert(e: &FlowEntry) -> u16 {
    e.pp_len + if toa_mode(e.pp_mode) { TOA_LEN } else { 0 }
}

/// Consumer → backend on a tcp_proxy flow, after address translation (`pkt` still holds
/// the consumer's own addresses and ports). Inserts what the segment must carry and
/// shifts its sequence number.
#[inline(always)]
pub fn forward(ctx: &TcContext, pkt: &Ipv4Packet, e: *mut FlowEntry) -> Result<(), Reason> {
    // SAFETY: map value pointer of the flow, valid for this run; `pp_sent` is written by
    // this direction only, `pp_acked` read once.
    let e = unsafe { &mut *e };
    let flags = pkt.tcp_flags;
    if flags & TCP_SYN != 0 {
        return Ok(());
    }
    let mode = e.pp_mode;
    let (pos, len, sent) = (e.pp_isn, e.pp_len, e.pp_sent);
    // SAFETY: a plain read of a byte the other direction may be writing.
    let acked = unsafe { core::ptr::read_volatile(&e.pp_acked) };
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let l4 = pkt.l4;
    let seq = load_u32(&frame, l4 + 4)?;
    let h: *const [u8; 14] = frame.ptr_at(l4, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    let doff = unsafe { (*h)[12] };
    let hl = (doff >> 4) as usize * 4;
    let ip: *const [u8; 4] = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    let tot_len = u16::from_be_bytes(unsafe { [(*ip)[2], (*ip)[3]] }) as usize;
    let l3_len = l4 - EthHdr::LEN;
    if tot_len < l3_len + hl {
        return Err(Reason::DropBadTcp);
    }
    let payload = tot_len - l3_len - hl;
    let first_data = mode & TCP_PROXY_F_FIRST_DATA != 0;

    let mut hdr = false;
    if len != 0 && seq == pos && acked & PP_ACKED_HEADER == 0 && flags & TCP_RST == 0 {
        hdr = if payload > 0 {
            // The first data right behind a header segment goes shifted; any later
            // segment at the position is a retransmission and carries the header again.
            !(!first_data && sent == PP_SENT_ALONE)
        } else {
            !first_data
        };
    }
    let mut toa = toa_mode(mode) && acked & PP_ACKED_ANY == 0 && flags & TCP_RST == 0;
    // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for this call.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    if toa && (hl + TOA_LEN as usize > 60 || gso || payload > MAX_MOVED) {
        // The option space is full (or the segment is a GSO train whose segments would
        // each need it): TOA gives way, the segment goes unchanged otherwise.
        event(mode, ProxyEvent::ToaNoRoom);
        toa = false;
    }
    if hdr && (gso || payload > MAX_MOVED) {
        // The client retransmits, then one segment at a time.
        event(mode, ProxyEvent::DropTooBig);
        return Err(Reason::DropProxyInsert);
    }
    // Once the backend has the header, every segment is past it: a plain offset. (The
    // comparison with the position only holds within 2³¹ bytes of it, which a stream
    // passes after 2 GiB.)
    let new_seq = if hdr {
        seq
    } else if acked & PP_ACKED_HEADER != 0 {
        seq.wrapping_add(len as u32)
    } else {
        adjust_seq(seq, pos, len, sent != 0)
    };
    if payload > 0 && seq == pos {
        e.pp_sent = PP_SENT_DATA;
    } else if hdr && sent == 0 {
        e.pp_sent = PP_SENT_ALONE;
    }
    if new_seq != seq {
        tcp_u32(ctx, l4 + 4, seq, new_seq, l4 + 16)?;
    }
    if !hdr && !toa {
        return Ok(());
    }
    let toa_len = if toa { TOA_LEN as usize } else { 0 };
    let hdr_len = if hdr { len as usize } else { 0 };
    // What to count afterwards, in one word: few values may live across the helpers.
    let header_event = if sent == 0 {
        ProxyEvent::HeaderSent
    } else {
        ProxyEvent::HeaderResent
    };
    let counts = (toa as u32) << 16 | (hdr as u32) << 17 | (header_event as u32) << 8 | mode as u32;
    insert(ctx, pkt, e, toa_len, hdr_len)?;
    let mode = counts as u8;
    if counts & 1 << 16 != 0 {
        event(mode, ProxyEvent::ToaInserted);
    }
    if counts & 1 << 17 != 0 {
        let i = vpcep_common::stats::proxy_event_index(mode, ProxyEvent::HeaderSent)
            + (counts >> 8 & 0xff);
        if let Some(c) = PROXY_STATS.get_ptr_mut(i) {
            // SAFETY: per-CPU slot.
            unsafe { *c += 1 };
        }
    }
    Ok(())
}

/// Grows the segment by `toa_len + hdr_len` bytes behind its TCP header: the TOA option
/// (appended to the options) and the PROXY header (in front of the payload).
#[inline(never)]
fn insert(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    e: &FlowEntry,
    toa_len: usize,
    hdr_len: usize,
) -> Result<(), Reason> {
    // Where the segment's parts are, read again (cheaper than keeping them on the stack).
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let h: *const [u8; 14] = frame.ptr_at(pkt.l4, Reason::DropTruncL4)?;
    let ip: *const [u8; 4] = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    let (hl, tot_len) = unsafe {
        (
            ((*h)[12] >> 4) as usize * 4,
            u16::from_be_bytes([(*ip)[2], (*ip)[3]]) as usize,
        )
    };
    let at_l4 = pkt.l4;
    let payload = tot_len.saturating_sub(at_l4 - EthHdr::LEN + hl);
    let s = PROXY_SCRATCH.get_ptr_mut(0).ok_or(Reason::DropHelper)?;
    // SAFETY: this CPU's slot of a per-CPU map.
    let s = unsafe { &mut *s };
    // 1..=256 for the verifier (the caller inserts at least the 8 bytes of TOA).
    let grow = ((toa_len + hdr_len).wrapping_sub(1) & 0xff) + 1;
    let skb = ctx.skb.skb;
    // Build the inserted bytes.
    if toa_len != 0 {
        let kind = match crate::maps::node() {
            // SAFETY: map value pointer from a successful lookup.
            Some(n) if unsafe { (*n).toa_kind } != 0 => unsafe { (*n).toa_kind },
            _ => TOA_KIND_DEFAULT,
        };
        let sp = pkt.sport.to_ne_bytes();
        let ip = pkt.src.to_ne_bytes();
        s.ins[INS_TOA..INS_TOA + 8].copy_from_slice(&[
            kind,
            TOA_LEN as u8,
            sp[0],
            sp[1],
            ip[0],
            ip[1],
            ip[2],
            ip[3],
        ]);
    }
    if hdr_len != 0 {
        let t = PROXY_TEMPLATES
            .get_ptr(e.endpoint_id)
            .ok_or(Reason::DropProxyInsert)?;
        // SAFETY: map value pointer from a successful lookup.
        let t = unsafe { &*t };
        let tlv_len = if e.pp_mode & TCP_PROXY_MODE_MASK == TCP_PROXY_PROXY_VNI {
            t.tlv_len_vni
        } else {
            t.tlv_len
        };
        if PP2_FIXED_LEN + tlv_len as usize != hdr_len {
            return Err(Reason::DropProxyInsert);
        }
        let fixed = pp2_fixed(tlv_len, pkt.src, pkt.dst, pkt.sport, pkt.dport);
        s.ins[INS_HDR..INS_HDR + PP2_FIXED_LEN].copy_from_slice(&fixed);
        s.ins[INS_HDR + PP2_FIXED_LEN..INS_HDR + PP2_FIXED_LEN + t.tlv.len()]
            .copy_from_slice(&t.tlv);
    }
    let src_off = if toa_len != 0 { INS_TOA } else { INS_HDR };
    // The payload out of the way first.
    if payload > MAX_MOVED {
        return Err(Reason::DropProxyInsert);
    }
    let moved = payload;
    let data_off = at_l4 + hl;
    if moved != 0 {
        // SAFETY: helper call with a buffer of this CPU's scratch slot and a bounded size.
        let r = unsafe {
            bpf_skb_load_bytes(
                skb as *const _,
                data_off as u32,
                s.payload.as_mut_ptr() as *mut _,
                helper_len(moved),
            )
        };
        if r != 0 {
            return Err(Reason::DropHelper);
        }
    }
    let new_len = (EthHdr::LEN + tot_len + grow) as u32;
    // SAFETY: plain helper call; it also drops trailing padding past the IP length.
    if unsafe { bpf_skb_change_tail(skb, new_len, 0) } != 0 {
        return Err(Reason::DropProxyInsert);
    }
    if moved != 0 {
        // SAFETY: as above.
        let r = unsafe {
            bpf_skb_store_bytes(
                skb,
                (data_off + grow) as u32,
                s.payload.as_ptr() as *const _,
                helper_len(moved),
                0,
            )
        };
        if r != 0 {
            return Err(Reason::DropHelper);
        }
    }
    // SAFETY: as above; the source lies within the scratch slot (offset ≤ 8, size ≤ 255).
    let r = unsafe {
        bpf_skb_store_bytes(
            skb,
            data_off as u32,
            s.ins.as_ptr().add(src_off) as *const _,
            grow as u32,
            0,
        )
    };
    if r != 0 {
        return Err(Reason::DropHelper);
    }
    // Checksums: the inserted bytes, the TCP length in the pseudo-header, the data offset
    // (TOA), the IP total length. With CHECKSUM_PARTIAL the helper applies only the
    // pseudo-header part, as the rest is summed at transmit.
    // SAFETY: helper call on this CPU's scratch slot, bounded as above.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            s.ins.as_mut_ptr().add(src_off) as *mut _,
            grow as u32,
            0,
        )
    };
    if sum < 0 {
        return Err(Reason::DropHelper);
    }
    let csum_off = at_l4 + 16;
    ctx.l4_csum_replace(csum_off, 0, sum as u32 as u64, 0)
        .map_err(|_| Reason::DropHelper)?;
    let old_l4 = ((tot_len - (at_l4 - EthHdr::LEN)) as u16).to_be();
    let new_l4 = ((tot_len + grow - (at_l4 - EthHdr::LEN)) as u16).to_be();
    ctx.l4_csum_replace(
        csum_off,
        old_l4 as u64,
        new_l4 as u64,
        BPF_F_PSEUDO_HDR as u64 | 2,
    )
    .map_err(|_| Reason::DropHelper)?;
    if toa_len != 0 {
        let frame = Frame::new(ctx.data(), ctx.data_end());
        let w: *mut [u8; 2] = frame.ptr_at(at_l4 + 12, Reason::DropTruncL4)?;
        // SAFETY: bounds checked by ptr_at.
        let old = unsafe { *w };
        let new = [old[0] + 0x20, old[1]];
        ctx.l4_csum_replace(
            csum_off,
            u16::from_ne_bytes(old) as u64,
            u16::from_ne_bytes(new) as u64,
            2,
        )
        .map_err(|_| Reason::DropHelper)?;
        let frame = Frame::new(ctx.data(), ctx.data_end());
        let w: *mut [u8; 2] = frame.ptr_at(at_l4 + 12, Reason::DropTruncL4)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *w = new };
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let ip: *mut [u8; 12] = frame.ptr_at(EthHdr::LEN, Reason::DropTruncIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let h = &mut *ip;
        let old = [h[2], h[3]];
        let new = ((tot_len + grow) as u16).to_be_bytes();
        let d = csum::diff16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        let check = csum::apply(u16::from_ne_bytes([h[10], h[11]]), d).to_ne_bytes();
        h[2] = new[0];
        h[3] = new[1];
        h[10] = check[0];
        h[11] = check[1];
    }
    Ok(())
}

/// `n` (1..=2048) as a helper's size argument the verifier can bound: read back through
/// memory, so that the compiler cannot drop the mask on the strength of an earlier check
/// (Linux 6.1's verifier loses such a bound with the spill), then masked.
#[inline(always)]
fn helper_len(n: usize) -> u32 {
    // SAFETY: a volatile read of a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    ((n.wrapping_sub(1) & 0x7ff) + 1) as u32
}

/// Backend → consumer on a tcp_proxy flow: notes what the backend acknowledged and maps
/// its acknowledgement number and SACK edges back into the client's sequence space.
#[inline(never)]
pub fn reverse(ctx: &TcContext, pkt: &Ipv4Packet, e: *mut FlowEntry) -> Result<(), Reason> {
    // SAFETY: map value pointer of the flow, valid for this run; `pp_acked` is written by
    // this direction only.
    let e = unsafe { &mut *e };
    if pkt.tcp_flags & TCP_ACK == 0 {
        return Ok(());
    }
    let (pos, len) = (e.pp_isn, e.pp_len);
    let l4 = pkt.l4;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let ack = load_u32(&frame, l4 + 8)?;
    let acked = e.pp_acked;
    let mut now = acked;
    // Judged only until set: the comparisons hold within 2³¹ bytes of the position.
    if acked & PP_ACKED_ANY == 0 && seq_after(ack, pos) {
        now |= PP_ACKED_ANY;
    }
    if len != 0 && acked & PP_ACKED_HEADER == 0 && !seq_after(pos.wrapping_add(len as u32), ack) {
        now |= PP_ACKED_HEADER;
    }
    if now != acked {
        // SAFETY: a byte of the flow's entry that only this direction writes.
        unsafe { core::ptr::write_volatile(&mut e.pp_acked, now) };
    }
    if len == 0 {
        return Ok(());
    }
    // With the header acknowledged, everything the backend acknowledges is past it.
    let steady = now & PP_ACKED_HEADER != 0;
    let client_ack = if steady {
        ack.wrapping_sub(len as u32)
    } else {
        unadjust_ack(ack, pos, len)
    };
    if client_ack != ack {
        tcp_u32(ctx, l4 + 8, ack, client_ack, l4 + 16)?;
    }
    if pkt.tcp_flags & TCP_SYN != 0 {
        return Ok(());
    }
    sack(ctx, l4, e)
}

/// Maps the edges of SACK blocks in the options of the segment at `l4`. Few values stay
/// live across the helper calls (the flow's fields are read again where needed): this
/// path's stack is what the verifier's 512-byte budget has left.
#[inline(always)]
fn sack(ctx: &TcContext, l4: usize, e: &FlowEntry) -> Result<(), Reason> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let h: *const [u8; 24] = match frame.ptr_at(l4, Reason::DropTruncL4) {
        Ok(h) => h,
        Err(_) => return Ok(()),
    };
    // SAFETY: bounds checked by ptr_at; read in place.
    let (hl, ts_only) = unsafe {
        let hl = ((*h)[12] >> 4) as usize * 4;
        (
            hl,
            hl == 32 && (*h)[20] == 1 && (*h)[21] == 1 && (*h)[22] == 8,
        )
    };
    // Only timestamps (NOP, NOP, TS): the usual case, nothing to map.
    if hl <= 20 || ts_only {
        return Ok(());
    }
    // Find the SACK option (reading only: few verifier states), then map its edges.
    let mut off = 20usize;
    let mut at = 0usize;
    let mut olen = 0usize;
    for _ in 0..MAX_OPTIONS {
        if off + 2 > hl {
            break;
        }
        let o: *const [u8; 2] = frame.ptr_at(l4 + off, Reason::DropTruncL4)?;
        // SAFETY: bounds checked by ptr_at.
        let (kind, l) = unsafe { ((*o)[0], (*o)[1] as usize) };
        if kind == 0 {
            break;
        }
        if kind == 1 {
            off += 1;
            continue;
        }
        if l < 2 || off + l > hl {
            break;
        }
        if kind == 5 {
            at = off + 2;
            olen = l;
            break;
        }
        off += l;
    }
    if at == 0 || olen < 10 {
        return Ok(());
    }
    let mut edge = l4 + at;
    let end = edge + (olen - 2) / 8 * 8;
    for _ in 0..8 {
        if edge >= end {
            break;
        }
        // Every edge, unconditionally (an unchanged one costs a no-op rewrite, and no
        // branch the verifier would have to follow).
        let frame = Frame::new(ctx.data(), ctx.data_end());
        let v = load_u32(&frame, edge)?;
        let len = e.pp_len;
        let m = if e.pp_acked & PP_ACKED_HEADER != 0 {
            v.wrapping_sub(len as u32)
        } else {
            unadjust_ack(v, e.pp_isn, len)
        };
        tcp_u32(ctx, edge, v, m, l4 + 16)?;
        edge += 4;
    }
    event(e.pp_mode, ProxyEvent::SackAdjusted);
    Ok(())
}

/// Rewrites the 32-bit TCP field at `off` from `old` to `new` (host order), with the
/// checksum field at `csum_off`.
#[inline(always)]
fn tcp_u32(ctx: &TcContext, off: usize, old: u32, new: u32, csum_off: usize) -> Result<(), Reason> {
    let (o, n) = (old.to_be(), new.to_be());
    // Not a pseudo-header field: with CHECKSUM_PARTIAL the helper leaves the field alone.
    ctx.l4_csum_replace(csum_off, o as u64, n as u64, 4)
        .map_err(|_| Reason::DropHelper)?;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let p: *mut [u8; 4] = frame.ptr_at(off, Reason::DropTruncL4)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *p = n.to_ne_bytes() };
    Ok(())
}
