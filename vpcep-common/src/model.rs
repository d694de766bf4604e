//! Reference model of the kernel programs: the same translation written as plain Rust over
//! byte buffers and ordinary maps. The differential test runs random packets and random map
//! contents through both and requires identical verdicts, reasons, output bytes and
//! conntrack state.
//!
//! Conventions mirror the kernel side: addresses and ports are raw network-order values as
//! loaded from the packet (`u32::from_ne_bytes` of the four bytes).
use std::{collections::BTreeMap, vec::Vec};

use crate::{
    csum,
    endpoint::*,
    maps::MAX_ENDPOINTS,
    stats::{Counter, Hook, ProxyEvent, Reason, proxy_event_index},
};

/// What the program does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Back out of the receiving NIC (XDP_TX, or a TC redirect to the same ifindex).
    Tx,
    /// To another NIC (TC redirect).
    Redirect(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub verdict: Verdict,
    /// The packet as it leaves the program.
    pub frame: Vec<u8>,
}

/// Map contents, as the kernel holds them.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub nics: BTreeMap<u32, LocalNic>,
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    pub ports: BTreeMap<PortKey, PortTarget>,
    pub services: BTreeMap<u32, Service>,
    /// (endpoint id, source network (raw), prefix length).
    pub whitelist: Vec<(u32, u32, u32)>,
    pub node: NodeConfig,
    /// The overlay device (ifindex 0 = none). Packets to a remote backend are redirected
    /// to it (the tunnel key they carry is metadata, not bytes of the frame).
    pub tunnel: TunnelConfig,
    /// SNAT address → the underlay address of the node that owns it.
    pub snat_owners: BTreeMap<u32, u32>,
    pub fwd: BTreeMap<FlowKey, FlowEntry>,
    pub rev: BTreeMap<RevKey, RevEntry>,
    pub ep_stats: BTreeMap<u32, EndpointCounters>,
    /// Live flows per endpoint id (`EP_FLOWS.live`).
    pub ep_live: BTreeMap<u32, i64>,
    pub stats: BTreeMap<(u32, u32), Counter>,
    /// tcp_proxy: PROXY header TLVs by endpoint id (an array in the kernel: a missing
    /// entry reads as all zeros).
    pub proxy_templates: BTreeMap<u32, ProxyTemplate>,
    /// tcp_proxy events by `proxy_event_index`.
    pub proxy_events: BTreeMap<u32, u64>,
    /// Owner ids handed out so far (the kernel's are per CPU; the differential test
    /// compares conntrack state up to owner ids).
    pub owners: u64,
}

/// MSS of a 1500-byte MTU: a local backend's SYN-ACK on a tcp_proxy flow is clamped
/// from it by what the flow inserts.
const LOCAL_MSS: u16 = 1460;
/// Largest payload the kernel moves to make room for tcp_proxy's bytes.
const PROXY_MAX_MOVED: usize = 2000;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug)]
struct Pkt {
    l4: usize,
    proto: u8,
    fragment: bool,
    ttl: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
}

enum Parsed {
    NonIpv4(u16),
    Ipv4(Pkt),
}

fn rd16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(f.get(at..at + 2)?.try_into().ok()?))
}
fn rd32(f: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(f.get(at..at + 4)?.try_into().ok()?))
}
fn wr16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}
fn wr32(f: &mut [u8], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn has(f: &[u8], at: usize, len: usize) -> bool {
    at + len <= f.len()
}

fn parse(f: &[u8]) -> Result<Parsed, Reason> {
    if !has(f, 0, 14) {
        return Err(Reason::DropTruncEth);
    }
    let et = rd16(f, 12).unwrap_or(0);
    if et != 0x0800u16.to_be() {
        return Ok(Parsed::NonIpv4(et));
    }
    if !has(f, 14, 20) {
        return Err(Reason::DropTruncIpv4);
    }
    let vihl = f[14];
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    let frags = u16::from_be_bytes([f[20], f[21]]);
    let proto = f[23];
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 || tot < ihl {
        return Err(Reason::DropBadIpv4);
    }
    if !has(f, 14 + ihl - 4, 4) {
        return Err(Reason::DropTruncIpv4);
    }
    let l4 = 14 + ihl;
    let mut p = Pkt {
        l4,
        proto,
        fragment: frags & 0x3fff != 0,
        ttl: f[22],
        src: rd32(f, 26).unwrap_or(0),
        dst: rd32(f, 30).unwrap_or(0),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    if frags & 0x1fff == 0 {
        match proto {
            IPPROTO_TCP => {
                if !has(f, l4, 20) {
                    return Err(Reason::DropTruncL4);
                }
                if f[l4 + 12] >> 4 < 5 {
                    return Err(Reason::DropBadTcp);
                }
                p.sport = rd16(f, l4).unwrap_or(0);
                p.dport = rd16(f, l4 + 2).unwrap_or(0);
                p.tcp_flags = f[l4 + 13];
            }
            IPPROTO_UDP => {
                if !has(f, l4, 8) {
                    return Err(Reason::DropTruncL4);
                }
                p.sport = rd16(f, l4).unwrap_or(0);
                p.dport = rd16(f, l4 + 2).unwrap_or(0);
            }
            IPPROTO_ICMP => {
                if !has(f, l4, 4) {
                    return Err(Reason::DropTruncL4);
                }
                p.sport = rd16(f, l4).unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(Parsed::Ipv4(p))
}

fn pass_reason(p: &Parsed) -> Reason {
    match p {
        Parsed::NonIpv4(et) if *et == 0x0806u16.to_be() => Reason::PassArp,
        Parsed::NonIpv4(_) => Reason::PassNonIpv4,
        Parsed::Ipv4(p) if p.fragment => Reason::PassFragment,
        Parsed::Ipv4(p) => match p.proto {
            IPPROTO_TCP => Reason::PassTcp,
            IPPROTO_UDP => Reason::PassUdp,
            _ => Reason::PassOtherProto,
        },
    }
}

fn icmp_type(p: &Pkt) -> u8 {
    p.sport.to_ne_bytes()[0]
}

fn dead(e: &FlowEntry, now: u64, t: &Timeouts) -> bool {
    e.dead(now, t)
}

fn track(e: &mut FlowEntry, p: &Pkt, from_backend: bool, now: u64) {
    if p.proto == IPPROTO_TCP {
        let f = p.tcp_flags;
        if f & TCP_RST != 0 {
            e.ct |= CT_F_RST;
        }
        if f & TCP_FIN != 0 {
            e.ct |= if from_backend {
                CT_F_FIN_BACKEND
            } else {
                CT_F_FIN_CONSUMER
            };
        }
        if from_backend && f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            e.ct |= CT_F_ESTABLISHED;
        }
    }
    if now.wrapping_sub(e.last_seen_ns) > NS_PER_SEC / 4 {
        e.last_seen_ns = now;
    }
}

/// The overlay's MSS: its inner MTU (at least the IPv4 minimum) less IPv4 and TCP headers.
fn overlay_mss(t: &TunnelConfig) -> u16 {
    t.inner_mtu.max(576) - 40
}

/// Lowers the MSS of a SYN (or SYN-ACK) whose first option is an MSS above `max`.
fn clamp_mss(f: &mut [u8], p: &Pkt, max: u16) {
    if p.proto != IPPROTO_TCP || p.fragment || p.tcp_flags & TCP_SYN == 0 {
        return;
    }
    let l4 = p.l4;
    if !has(f, l4, 24) || f[l4 + 12] >> 4 < 6 || f[l4 + 20] != 2 || f[l4 + 21] != 4 {
        return;
    }
    let old = u16::from_be_bytes([f[l4 + 22], f[l4 + 23]]);
    if old <= max {
        return;
    }
    let (old_be, new_be) = (old.to_be(), max.to_be());
    let c = rd16(f, l4 + 16).unwrap_or(0);
    wr16(
        f,
        l4 + 16,
        csum::kernel_l4_replace(c, csum::diff16(old_be, new_be), false),
    );
    wr16(f, l4 + 22, new_be);
}

fn syn_on_closing(e: &FlowEntry, syn: bool) -> bool {
    syn && e.state() == CT_TCP_CLOSING
}

fn same_instance(e: &FlowEntry, ep: &Endpoint) -> bool {
    e.generation == ep.generation
        && e.endpoint_id == ep.endpoint_id
        && e.service_id == ep.service_id
}

fn check_endpoint(ep: &Endpoint) -> Result<(), Reason> {
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

#[allow(clippy::too_many_arguments)]
fn rewrite(
    f: &mut [u8],
    p: &Pkt,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) {
    let (off, mangled) = if p.proto == IPPROTO_TCP {
        (p.l4 + 16, false)
    } else {
        (p.l4 + 6, true)
    };
    let addr = csum::add(csum::diff32(p.src, src), csum::diff32(p.dst, dst));
    let ports = csum::add(csum::diff16(p.sport, sport), csum::diff16(p.dport, dport));
    let mut c = rd16(f, off).unwrap_or(0);
    c = csum::kernel_l4_replace(c, addr, mangled);
    c = csum::kernel_l4_replace(c, ports, mangled);
    wr16(f, off, c);
    let old = u16::from_ne_bytes([f[22], f[23]]);
    f[22] = p.ttl - 1;
    let d = csum::add(addr, csum::diff16(old, u16::from_ne_bytes([f[22], f[23]])));
    let ipc = rd16(f, 24).unwrap_or(0);
    wr16(f, 24, csum::apply(ipc, d));
    wr32(f, 26, src);
    wr32(f, 30, dst);
    wr16(f, p.l4, sport);
    wr16(f, p.l4 + 2, dport);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
}

/// The flow an ICMP error is about, from its quoted header.
struct Quoted {
    ihl: usize,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

fn parse_quoted(f: &[u8], p: &Pkt, unknown: Reason) -> Result<Quoted, Reason> {
    let q = p.l4 + 8;
    if !has(f, q, 20) {
        return Err(Reason::DropTruncL4);
    }
    let vihl = f[q];
    let proto = f[q + 9];
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Err(unknown);
    }
    if !has(f, q + ihl, 4) {
        return Err(Reason::DropTruncL4);
    }
    Ok(Quoted {
        ihl,
        proto,
        src: rd32(f, q + 12).unwrap_or(0),
        dst: rd32(f, q + 16).unwrap_or(0),
        sport: rd16(f, q + ihl).unwrap_or(0),
        dport: rd16(f, q + ihl + 2).unwrap_or(0),
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

fn rewrite_error(f: &mut [u8], p: &Pkt, q: &Quoted, rw: &ErrorRewrite) {
    let o = p.l4 + 8;
    let inner_ip = csum::add(
        csum::diff32(q.src, rw.inner_src),
        csum::diff32(q.dst, rw.inner_dst),
    );
    let old_check = rd16(f, o + 10).unwrap_or(0);
    let new_check = csum::apply(old_check, inner_ip);
    wr32(f, o + 12, rw.inner_src);
    wr32(f, o + 16, rw.inner_dst);
    wr16(f, o + 10, new_check);
    wr16(f, o + q.ihl, rw.inner_sport);
    wr16(f, o + q.ihl + 2, rw.inner_dport);
    let mut d = inner_ip;
    d = csum::add(d, csum::diff16(old_check, new_check));
    d = csum::add(d, csum::diff16(q.sport, rw.inner_sport));
    d = csum::add(d, csum::diff16(q.dport, rw.inner_dport));
    let ic = rd16(f, p.l4 + 2).unwrap_or(0);
    wr16(f, p.l4 + 2, csum::apply(ic, d));
    let mut od = csum::add(
        csum::diff32(p.src, rw.outer_src),
        csum::diff32(p.dst, rw.outer_dst),
    );
    let old = u16::from_ne_bytes([f[22], f[23]]);
    f[22] -= 1;
    od = csum::add(od, csum::diff16(old, u16::from_ne_bytes([f[22], f[23]])));
    let c = rd16(f, 24).unwrap_or(0);
    wr16(f, 24, csum::apply(c, od));
    wr32(f, 26, rw.outer_src);
    wr32(f, 30, rw.outer_dst);
    f[0..6].copy_from_slice(&rw.dst_mac);
    f[6..12].copy_from_slice(&rw.src_mac);
}

impl Model {
    fn count(&mut self, hook: Hook, reason: Reason, bytes: u64) {
        let c = self.stats.entry((hook as u32, reason as u32)).or_default();
        c.packets += 1;
        c.bytes += bytes;
    }

    fn ep_count(&mut self, id: u32, bytes: u64, new_flow: u64) {
        let c = self.ep_stats.entry(id).or_default();
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow;
    }

    fn ep_drop(&mut self, id: u32) {
        self.ep_stats.entry(id).or_default().drops += 1;
    }

    fn endpoint(&self, nic: &LocalNic, dst: u32) -> Option<Endpoint> {
        self.endpoints
            .get(&EndpointKey {
                vpc_id: nic.vpc_id,
                ip_be: dst,
            })
            .copied()
    }

    fn whitelisted(&self, id: u32, src: u32) -> bool {
        let src = u32::from_be(src);
        self.whitelist.iter().any(|&(eid, net, len)| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            eid == id && (src & mask) == (u32::from_be(net) & mask)
        })
    }

    /// The TC ingress program on NIC `ifindex` at time `now` (ns).
    pub fn tc_ingress(&mut self, ifindex: u32, frame: &[u8], now: u64) -> Outcome {
        let mut f = frame.to_vec();
        let (reason, verdict) = match self.tc(ifindex, &mut f, now) {
            Ok(v) => v,
            Err(r) => (r, Verdict::Drop),
        };
        self.count(Hook::TcIngress, reason, frame.len() as u64);
        Outcome {
            reason,
            verdict,
            frame: f,
        }
    }

    /// The XDP program on NIC `ifindex`.
    pub fn xdp_ingress(&mut self, ifindex: u32, frame: &[u8]) -> Outcome {
        let mut f = frame.to_vec();
        let (reason, verdict) = match self.xdp(ifindex, &mut f) {
            Ok(v) => v,
            Err(r) => (r, Verdict::Drop),
        };
        self.count(Hook::Xdp, reason, frame.len() as u64);
        Outcome {
            reason,
            verdict,
            frame: f,
        }
    }

    fn arp_answer(&self, f: &mut [u8], nic: &LocalNic) -> bool {
        if !has(f, 14, 28) {
            return false;
        }
        if f[14..16] != [0, 1]
            || f[16..18] != [8, 0]
            || f[18] != 6
            || f[19] != 4
            || f[20..22] != [0, 1]
        {
            return false;
        }
        let target = rd32(f, 38).unwrap_or(0);
        let ours = target == nic.gateway_be && target != 0 || self.endpoint(nic, target).is_some();
        if !ours || self.node.vmac == [0; 6] {
            return false;
        }
        let mut asker_mac = [0u8; 6];
        asker_mac.copy_from_slice(&f[22..28]);
        let asker_ip = rd32(f, 28).unwrap_or(0);
        f[20..22].copy_from_slice(&[0, 2]);
        f[32..38].copy_from_slice(&asker_mac);
        wr32(f, 38, asker_ip);
        f[22..28].copy_from_slice(&self.node.vmac);
        wr32(f, 28, target);
        f[0..6].copy_from_slice(&asker_mac);
        f[6..12].copy_from_slice(&self.node.vmac);
        true
    }

    fn check_source(f: &[u8], p: &Pkt, nic: &LocalNic) -> Result<(), Reason> {
        if p.src != nic.ip_be {
            return Err(Reason::DropSpoofedIp);
        }
        if f[6..12] != nic.mac {
            return Err(Reason::DropSpoofedMac);
        }
        Ok(())
    }

    fn echo_reply(&self, f: &mut [u8], p: &Pkt) {
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or_default();
        f[0..6].copy_from_slice(&src_mac);
        f[6..12].copy_from_slice(&self.node.vmac);
        let (s, d) = (rd32(f, 26).unwrap_or(0), rd32(f, 30).unwrap_or(0));
        wr32(f, 26, d);
        wr32(f, 30, s);
        let old = u16::from_ne_bytes([f[22], f[23]]);
        f[22] = 64;
        let new = u16::from_ne_bytes([f[22], f[23]]);
        let c = rd16(f, 24).unwrap_or(0);
        wr16(f, 24, csum::apply(c, csum::diff16(old, new)));
        let old = rd16(f, p.l4).unwrap_or(0);
        f[p.l4] = 0;
        let new = rd16(f, p.l4).unwrap_or(0);
        let c = rd16(f, p.l4 + 2).unwrap_or(0);
        wr16(f, p.l4 + 2, csum::apply(c, csum::diff16(old, new)));
    }

    fn check_forward(
        &self,
        f: &[u8],
        p: &Pkt,
        nic: &LocalNic,
        ep: &Endpoint,
    ) -> Result<u16, Reason> {
        Self::check_packet(f, p, nic)?;
        check_endpoint(ep)?;
        self.server_port(p, ep)
    }

    fn check_packet(f: &[u8], p: &Pkt, nic: &LocalNic) -> Result<(), Reason> {
        Self::check_source(f, p, nic)?;
        if p.fragment {
            return Err(Reason::DropFragment);
        }
        if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
            return Err(Reason::DropEndpointProto);
        }
        Ok(())
    }

    fn server_port(&self, p: &Pkt, ep: &Endpoint) -> Result<u16, Reason> {
        let pt = self
            .ports
            .get(&PortKey {
                service_id: ep.service_id,
                client_port_be: p.dport,
                proto: p.proto,
                _pad: 0,
            })
            .ok_or(Reason::DropNoPortMapping)?;
        Ok(pt.server_port_be)
    }

    fn xdp(&mut self, ifindex: u32, f: &mut [u8]) -> Result<(Reason, Verdict), Reason> {
        let parsed = parse(f)?;
        let pass = (pass_reason(&parsed), Verdict::Pass);
        let Some(nic) = self.nics.get(&ifindex).copied() else {
            return Ok(pass);
        };
        let p = match parsed {
            Parsed::Ipv4(p) => p,
            Parsed::NonIpv4(et) => {
                if et == 0x0806u16.to_be() && self.arp_answer(f, &nic) {
                    return Ok((Reason::ArpReply, Verdict::Tx));
                }
                return Ok(pass);
            }
        };
        if in_snat_range(p.dst) {
            return Ok((Reason::PassToTc, Verdict::Pass));
        }
        let Some(ep) = self.endpoint(&nic, p.dst) else {
            return Ok(pass);
        };
        if p.proto == IPPROTO_ICMP && !p.fragment && icmp_type(&p) == 8 {
            Self::check_source(f, &p, &nic)?;
            self.echo_reply(f, &p);
            return Ok((Reason::IcmpEchoReply, Verdict::Tx));
        }
        if p.proto == IPPROTO_ICMP && !p.fragment && matches!(icmp_type(&p), 3 | 11) {
            Self::check_source(f, &p, &nic)?;
            check_endpoint(&ep)?;
            return Ok((Reason::PassToTc, Verdict::Pass));
        }
        self.check_forward(f, &p, &nic, &ep)?;
        Ok((Reason::PassToTc, Verdict::Pass))
    }

    fn tc(&mut self, ifindex: u32, f: &mut Vec<u8>, now: u64) -> Result<(Reason, Verdict), Reason> {
        let parsed = parse(f)?;
        // Replies to this node's SNAT address, before (and without) the NIC lookup.
        if let Parsed::Ipv4(p) = &parsed
            && in_snat_range(p.dst)
            && p.dst == self.node.snat_ip_be
        {
            if p.proto == IPPROTO_ICMP && !p.fragment && matches!(icmp_type(p), 3 | 11) {
                let out = self.reverse_error(f, p, ifindex, now)?;
                return Ok((Reason::RevIcmpError, Verdict::Redirect(out)));
            }
            let (r, out) = self.reverse(f, p, ifindex, now)?;
            return Ok((r, Verdict::Redirect(out)));
        }
        let pass = (pass_reason(&parsed), Verdict::Pass);
        let Some(nic) = self.nics.get(&ifindex).copied() else {
            return Ok(pass);
        };
        let p = match parsed {
            Parsed::Ipv4(p) => p,
            Parsed::NonIpv4(et) => {
                if et == 0x0806u16.to_be() && self.arp_answer(f, &nic) {
                    return Ok((Reason::ArpReply, Verdict::Tx));
                }
                return Ok(pass);
            }
        };
        if in_snat_range(p.dst) {
            // Another node's SNAT address: with an overlay, tunnelled untranslated to the
            // node that owns it (it alone holds the flow).
            if self.tunnel.ifindex != 0 {
                Self::check_source(f, &p, &nic)?;
                if !self.snat_owners.contains_key(&p.dst) {
                    return Err(Reason::DropSnatNoOwner);
                }
                return Ok((Reason::RevToOwner, Verdict::Redirect(self.tunnel.ifindex)));
            }
            if p.proto == IPPROTO_ICMP && !p.fragment && matches!(icmp_type(&p), 3 | 11) {
                let out = self.reverse_error(f, &p, ifindex, now)?;
                return Ok((Reason::RevIcmpError, Verdict::Redirect(out)));
            }
            let (r, out) = self.reverse(f, &p, ifindex, now)?;
            return Ok((r, Verdict::Redirect(out)));
        }
        let Some(ep) = self.endpoint(&nic, p.dst) else {
            return Ok(pass);
        };
        if p.proto == IPPROTO_ICMP && !p.fragment && icmp_type(&p) == 8 {
            Self::check_source(f, &p, &nic)?;
            self.echo_reply(f, &p);
            return Ok((Reason::IcmpEchoReply, Verdict::Tx));
        }
        if p.proto == IPPROTO_ICMP && !p.fragment && matches!(icmp_type(&p), 3 | 11) {
            let len = f.len() as u64;
            let r = Self::check_source(f, &p, &nic)
                .and_then(|()| check_endpoint(&ep))
                .and_then(|()| self.forward_error(f, &p, &nic, &ep, now));
            match r {
                Ok(_) => self.ep_count(ep.endpoint_id, len, 0),
                Err(_) => self.ep_drop(ep.endpoint_id),
            }
            return Ok((Reason::FwdIcmpError, Verdict::Redirect(r?)));
        }
        let r = self.forward(f, &p, &nic, &ep, ifindex, now);
        // Counted as it leaves (with what tcp_proxy inserted).
        let len = f.len() as u64;
        match r {
            Ok((reason, _)) => {
                self.ep_count(ep.endpoint_id, len, (reason == Reason::FwdNewFlow) as u64)
            }
            Err(_) => self.ep_drop(ep.endpoint_id),
        }
        let (reason, out) = r?;
        Ok((reason, Verdict::Redirect(out)))
    }

    fn allowed(&self, ep: &Endpoint, src: u32) -> bool {
        ep.flags & EP_SRC_WHITELIST == 0 || self.whitelisted(ep.endpoint_id, src)
    }

    /// Removes a flow and what it holds (its claim, its endpoint's live-flow slot).
    fn kill(&mut self, key: &FlowKey) {
        if let Some(e) = self.fwd.remove(key) {
            if self.rev.get(&e.rev).is_some_and(|r| r.owner == e.owner) {
                self.rev.remove(&e.rev);
            }
            *self.ep_live.entry(e.endpoint_id).or_default() -= 1;
        }
    }

    fn forward(
        &mut self,
        f: &mut Vec<u8>,
        p: &Pkt,
        nic: &LocalNic,
        ep: &Endpoint,
        ifindex: u32,
        now: u64,
    ) -> Result<(Reason, u32), Reason> {
        Self::check_packet(f, p, nic)?;
        check_endpoint(ep)?;
        let node = self.node;
        let key = FlowKey::new(nic.vpc_id, p.src, p.dst, p.sport, p.dport, p.proto);
        let syn = p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        // The fast path: the flow is of this endpoint instance and its epoch, and a remote
        // backend's flow still has its overlay device.
        let tunnel = self.tunnel;
        if let Some(e) = self.fwd.get_mut(&key)
            && e.epoch == ep.epoch
            && same_instance(e, ep)
            && !dead(e, now, &node.timeouts)
            && !syn_on_closing(e, syn)
            && (e.remote_node_be == 0 || tunnel.ifindex != 0 && tunnel.ifindex == e.out_ifindex)
        {
            if node.snat_ip_be == 0 {
                return Err(Reason::DropNodeNotConfigured);
            }
            if p.ttl <= 1 {
                return Err(Reason::DropTtlExceeded);
            }
            track(e, p, false, now);
            let (rev, out, mac, remote) = (e.rev, e.out_ifindex, e.backend_mac, e.remote_node_be);
            let proxied = e.pp_mode != 0 && p.proto == IPPROTO_TCP;
            rewrite(
                f,
                p,
                rev.snat_be,
                rev.backend_be,
                rev.snat_port_be,
                rev.backend_port_be,
                mac,
                node.vmac,
            );
            if proxied {
                self.proxy_forward(f, p, &key)?;
            }
            if remote != 0 {
                clamp_mss(f, p, overlay_mss(&tunnel));
            }
            return Ok((Reason::FwdEstablished, out));
        }
        let server_port = self.server_port(p, ep)?;
        let svc = *self
            .services
            .get(&ep.service_id)
            .ok_or(Reason::DropNoService)?;
        let (out, remote) = if svc.location == SVC_LOCAL {
            (svc.ifindex, 0)
        } else if tunnel.ifindex != 0 && svc.location == SVC_REMOTE && svc.remote_node_be != 0 {
            (tunnel.ifindex, svc.remote_node_be)
        } else {
            return Err(Reason::DropRemoteBackend);
        };
        if node.snat_ip_be == 0 {
            return Err(Reason::DropNodeNotConfigured);
        }
        if p.ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let allowed = self.allowed(ep, p.src);
        if let Some(e) = self.fwd.get_mut(&key) {
            let current =
                same_instance(e, ep) && !dead(e, now, &node.timeouts) && !syn_on_closing(e, syn);
            if current
                && allowed
                && e.rev.backend_be == svc.backend_ip_be
                && e.rev.backend_port_be == server_port
                && e.out_ifindex == out
            {
                e.epoch = ep.epoch;
                e.remote_node_be = remote;
                e.backend_vpc_id = svc.backend_vpc_id;
                e.backend_mac = svc.backend_mac;
                track(e, p, false, now);
                let rev = e.rev;
                let proxied = e.pp_mode != 0 && p.proto == IPPROTO_TCP;
                rewrite(
                    f,
                    p,
                    rev.snat_be,
                    rev.backend_be,
                    rev.snat_port_be,
                    rev.backend_port_be,
                    svc.backend_mac,
                    node.vmac,
                );
                if proxied {
                    self.proxy_forward(f, p, &key)?;
                }
                if remote != 0 {
                    clamp_mss(f, p, overlay_mss(&tunnel));
                }
                return Ok((Reason::FwdEstablished, out));
            }
            // Over, revoked or pointing elsewhere: it goes.
            self.kill(&key);
            if current && !allowed {
                return Err(Reason::DropFlowRevoked);
            }
        }
        if p.proto == IPPROTO_TCP && !syn {
            return Err(Reason::DropTcpNoFlow);
        }
        if !allowed {
            return Err(Reason::DropSourceWhitelist);
        }
        let mut pp = FlowEntry {
            endpoint_id: ep.endpoint_id,
            ..FlowEntry::default()
        };
        if p.proto == IPPROTO_TCP && svc.tcp_proxy != 0 {
            let seq = rd_be32(f, p.l4 + 4)?;
            self.proxy_open(&mut pp, svc.tcp_proxy, seq);
        }
        let live = self.ep_live.get(&ep.endpoint_id).copied().unwrap_or(0);
        if ep.max_flows != 0 && live >= i64::from(ep.max_flows) {
            return Err(Reason::DropEndpointFlowLimit);
        }
        self.owners += 1;
        let owner = flow_owner(now / NS_PER_SEC, self.owners, 0);
        let rev = self.claim(&key, owner, svc.backend_ip_be, server_port, now)?;
        *self.ep_live.entry(ep.endpoint_id).or_default() += 1;
        self.fwd.insert(
            key,
            FlowEntry {
                rev,
                owner,
                last_seen_ns: now,
                ct: if p.proto == IPPROTO_TCP { 0 } else { CT_F_UDP },
                endpoint_id: ep.endpoint_id,
                service_id: ep.service_id,
                out_ifindex: out,
                epoch: ep.epoch,
                generation: ep.generation,
                remote_node_be: remote,
                backend_vpc_id: svc.backend_vpc_id,
                consumer_ifindex: ifindex,
                backend_mac: svc.backend_mac,
                consumer_mac: nic.mac,
                pp_isn: pp.pp_isn,
                pp_len: pp.pp_len,
                pp_mode: pp.pp_mode,
                pp_sent: pp.pp_sent,
                pp_acked: pp.pp_acked,
                _pad: [0; 3],
            },
        );
        rewrite(
            f,
            p,
            rev.snat_be,
            rev.backend_be,
            rev.snat_port_be,
            rev.backend_port_be,
            svc.backend_mac,
            node.vmac,
        );
        if remote != 0 {
            clamp_mss(f, p, overlay_mss(&tunnel));
        }
        Ok((Reason::FwdNewFlow, out))
    }

    /// A SNAT port for a new flow: the first probed claim that is free, orphaned or held
    /// by a dead flow; claims younger than `CLAIM_GUARD_S` are left alone.
    fn claim(
        &mut self,
        key: &FlowKey,
        owner: u64,
        backend: u32,
        server_port: u16,
        now: u64,
    ) -> Result<RevKey, Reason> {
        let node = self.node;
        let (lo, hi) = (node.port_lo as u32, node.port_hi as u32);
        if hi < lo || lo == 0 {
            return Err(Reason::DropNodeNotConfigured);
        }
        let range = hi - lo + 1;
        let start = snat_port_start(key, backend, server_port);
        let value = RevEntry {
            owner,
            fwd: *key,
            _pad: [0; 4],
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
            if let Some(r) = self.rev.get(&rk).copied() {
                if owner_since_s(r.owner) + CLAIM_GUARD_S > now / NS_PER_SEC {
                    continue;
                }
                match self.fwd.get(&r.fwd) {
                    Some(e) if e.owner == r.owner && e.rev == rk => {
                        if !dead(e, now, &node.timeouts) {
                            continue;
                        }
                        self.kill(&r.fwd);
                    }
                    _ => {
                        self.rev.remove(&rk);
                    }
                }
            }
            self.rev.insert(rk, value);
            return Ok(rk);
        }
        Err(Reason::DropSnatExhausted)
    }

    /// The flow holding claim `rk` if it may take a reply on `ifindex`.
    fn check_reverse(
        &mut self,
        rk: &RevKey,
        rv: &RevEntry,
        ifindex: u32,
        now: u64,
    ) -> Result<FlowEntry, Reason> {
        let fe = *self.fwd.get(&rv.fwd).ok_or(Reason::DropNoReverseFlow)?;
        if fe.owner != rv.owner || fe.rev != *rk || dead(&fe, now, &self.node.timeouts) {
            return Err(Reason::DropNoReverseFlow);
        }
        // No overlay in the model: every reply arrives without a tunnel peer.
        if fe.out_ifindex != ifindex || fe.remote_node_be != 0 {
            return Err(Reason::DropReplyWrongNic);
        }
        let ep = *self
            .endpoints
            .get(&EndpointKey {
                vpc_id: rv.fwd.vpc_id,
                ip_be: rv.fwd.dst_be,
            })
            .ok_or(Reason::DropNotAccepted)?;
        if ep.flags & EP_TOMBSTONE != 0 {
            return Err(Reason::DropEndpointDeleted);
        }
        if ep.endpoint_id != fe.endpoint_id {
            return Err(Reason::DropNotAccepted);
        }
        if let Err(r) = check_endpoint(&ep) {
            self.ep_drop(ep.endpoint_id);
            return Err(r);
        }
        let still_allowed = || {
            self.allowed(&ep, rv.fwd.src_be)
                && self
                    .ports
                    .get(&PortKey {
                        service_id: fe.service_id,
                        client_port_be: rv.fwd.dport_be,
                        proto: rv.fwd.proto,
                        _pad: 0,
                    })
                    .is_some_and(|t| t.server_port_be == rk.backend_port_be)
                && self
                    .services
                    .get(&fe.service_id)
                    .is_some_and(|s| s.backend_ip_be == rk.backend_be)
        };
        if !same_instance(&fe, &ep) || ep.epoch != fe.epoch && !still_allowed() {
            self.ep_drop(ep.endpoint_id);
            return Err(Reason::DropFlowRevoked);
        }
        Ok(fe)
    }

    fn reverse(
        &mut self,
        f: &mut [u8],
        p: &Pkt,
        ifindex: u32,
        now: u64,
    ) -> Result<(Reason, u32), Reason> {
        if p.fragment {
            return Err(Reason::DropFragment);
        }
        if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
            return Err(Reason::DropNoReverseFlow);
        }
        let rk = RevKey::new(p.dst, p.src, p.dport, p.sport, p.proto);
        let rv = *self.rev.get(&rk).ok_or(Reason::DropNoReverseFlow)?;
        self.check_reverse(&rk, &rv, ifindex, now)?;
        if p.ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let len = f.len() as u64;
        let e = self.fwd.get_mut(&rv.fwd).ok_or(Reason::DropNoReverseFlow)?;
        track(e, p, true, now);
        let (id, out, mac) = (e.endpoint_id, e.consumer_ifindex, e.consumer_mac);
        let insert = if e.pp_mode != 0 && p.proto == IPPROTO_TCP {
            self.proxy_reverse(f, p, &rv.fwd)?;
            let e = self.fwd.get(&rv.fwd).ok_or(Reason::DropNoReverseFlow)?;
            e.pp_len + if toa_mode(e.pp_mode) { TOA_LEN } else { 0 }
        } else {
            0
        };
        self.ep_count(id, len, 0);
        rewrite(
            f,
            p,
            rv.fwd.dst_be,
            rv.fwd.src_be,
            rv.fwd.dport_be,
            rv.fwd.sport_be,
            mac,
            self.node.vmac,
        );
        // The client's segments must fit the path with what tcp_proxy inserts into them.
        if insert != 0 {
            clamp_mss(f, p, LOCAL_MSS - insert);
        }
        Ok((Reason::RevReply, out))
    }

    fn reverse_error(
        &mut self,
        f: &mut [u8],
        p: &Pkt,
        ifindex: u32,
        now: u64,
    ) -> Result<u32, Reason> {
        let q = parse_quoted(f, p, Reason::DropNoReverseFlow)?;
        if q.src != p.dst {
            return Err(Reason::DropNoReverseFlow);
        }
        let rk = RevKey::new(q.src, q.dst, q.sport, q.dport, q.proto);
        let rv = *self.rev.get(&rk).ok_or(Reason::DropNoReverseFlow)?;
        let fe = self.check_reverse(&rk, &rv, ifindex, now)?;
        if p.ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let (consumer, endpoint) = (rv.fwd.src_be, rv.fwd.dst_be);
        rewrite_error(
            f,
            p,
            &q,
            &ErrorRewrite {
                inner_src: consumer,
                inner_dst: endpoint,
                inner_sport: rv.fwd.sport_be,
                inner_dport: rv.fwd.dport_be,
                outer_src: endpoint,
                outer_dst: consumer,
                dst_mac: fe.consumer_mac,
                src_mac: self.node.vmac,
            },
        );
        self.ep_count(fe.endpoint_id, f.len() as u64, 0);
        Ok(fe.consumer_ifindex)
    }

    fn forward_error(
        &self,
        f: &mut [u8],
        p: &Pkt,
        nic: &LocalNic,
        ep: &Endpoint,
        now: u64,
    ) -> Result<u32, Reason> {
        let q = parse_quoted(f, p, Reason::DropIcmpNoFlow)?;
        if q.src != p.dst || q.dst != p.src {
            return Err(Reason::DropIcmpNoFlow);
        }
        let key = FlowKey::new(nic.vpc_id, q.dst, q.src, q.dport, q.sport, q.proto);
        let fe = *self.fwd.get(&key).ok_or(Reason::DropIcmpNoFlow)?;
        if fe.endpoint_id != ep.endpoint_id
            || fe.generation != ep.generation
            || dead(&fe, now, &self.node.timeouts)
        {
            return Err(Reason::DropIcmpNoFlow);
        }
        let backend_mac = self
            .services
            .get(&fe.service_id)
            .ok_or(Reason::DropNoService)?
            .backend_mac;
        if p.ttl <= 1 {
            return Err(Reason::DropTtlExceeded);
        }
        let rev = fe.rev;
        rewrite_error(
            f,
            p,
            &q,
            &ErrorRewrite {
                inner_src: rev.backend_be,
                inner_dst: rev.snat_be,
                inner_sport: rev.backend_port_be,
                inner_dport: rev.snat_port_be,
                outer_src: rev.snat_be,
                outer_dst: rev.backend_be,
                dst_mac: backend_mac,
                src_mac: self.node.vmac,
            },
        );
        Ok(fe.out_ifindex)
    }
}

/// Rewrites the 32-bit TCP field at `off` from `old` to `new` (host order), as the
/// kernel's `tcp_u32`: the checksum first, then the field, even when they are equal.
fn tcp_u32(f: &mut [u8], l4: usize, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    if !has(f, off, 4) {
        return Err(Reason::DropTruncL4);
    }
    let c = rd16(f, l4 + 16).unwrap_or(0);
    wr16(
        f,
        l4 + 16,
        csum::kernel_l4_replace(c, csum::diff32(old.to_be(), new.to_be()), false),
    );
    wr32(f, off, new.to_be());
    Ok(())
}

fn rd_be32(f: &[u8], at: usize) -> Result<u32, Reason> {
    rd32(f, at).map(u32::from_be).ok_or(Reason::DropTruncL4)
}

/// One's complement sum of `b` (an even length), as `bpf_csum_diff` returns it.
fn sum_bytes(b: &[u8]) -> u32 {
    b.chunks(2).fold(0u32, |s, w| {
        csum::add(
            s,
            u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32,
        )
    })
}

/// tcp_proxy, as `vpcep-ebpf/src/proxy.rs` does it.
impl Model {
    fn proxy_event(&mut self, mode: u8, e: ProxyEvent) {
        *self
            .proxy_events
            .entry(proxy_event_index(mode, e))
            .or_default() += 1;
    }

    fn proxy_template(&self, endpoint_id: u32) -> Option<ProxyTemplate> {
        (endpoint_id < MAX_ENDPOINTS).then(|| {
            self.proxy_templates
                .get(&endpoint_id)
                .copied()
                .unwrap_or_default()
        })
    }

    /// The tcp_proxy fields of a new TCP flow of a service with mode `tcp_proxy`.
    fn proxy_open(&mut self, fe: &mut FlowEntry, tcp_proxy: u8, syn_seq: u32) {
        fe.pp_mode = tcp_proxy;
        fe.pp_isn = syn_seq.wrapping_add(1);
        fe.pp_sent = 0;
        fe.pp_acked = 0;
        fe.pp_len = self
            .proxy_template(fe.endpoint_id)
            .map_or(0, |t| t.header_len(tcp_proxy));
        if proxy_header_mode(tcp_proxy) && fe.pp_len == 0 {
            self.proxy_event(tcp_proxy, ProxyEvent::NoTemplate);
        }
    }

    /// Consumer → backend on a tcp_proxy flow, after address translation (`p` holds the
    /// consumer's addresses): inserts what the segment carries, shifts its sequence number.
    fn proxy_forward(&mut self, f: &mut Vec<u8>, p: &Pkt, key: &FlowKey) -> Result<(), Reason> {
        let flags = p.tcp_flags;
        if flags & TCP_SYN != 0 {
            return Ok(());
        }
        let e = *self.fwd.get(key).ok_or(Reason::DropHelper)?;
        let mode = e.pp_mode;
        let (pos, len, sent, acked) = (e.pp_isn, e.pp_len, e.pp_sent, e.pp_acked);
        let l4 = p.l4;
        let seq = rd_be32(f, l4 + 4)?;
        let hl = (f[l4 + 12] >> 4) as usize * 4;
        let tot_len = u16::from_be_bytes([f[16], f[17]]) as usize;
        let l3_len = l4 - 14;
        if tot_len < l3_len + hl {
            return Err(Reason::DropBadTcp);
        }
        let payload = tot_len - l3_len - hl;
        let first_data = mode & TCP_PROXY_F_FIRST_DATA != 0;
        let mut hdr = false;
        if len != 0 && seq == pos && acked & PP_ACKED_HEADER == 0 && flags & TCP_RST == 0 {
            hdr = if payload > 0 {
                first_data || sent != PP_SENT_ALONE
            } else {
                !first_data
            };
        }
        let mut toa = toa_mode(mode) && acked & PP_ACKED_ANY == 0 && flags & TCP_RST == 0;
        // Test runs carry no GSO trains.
        if toa && (hl + TOA_LEN as usize > 60 || payload > PROXY_MAX_MOVED) {
            self.proxy_event(mode, ProxyEvent::ToaNoRoom);
            toa = false;
        }
        if hdr && payload > PROXY_MAX_MOVED {
            self.proxy_event(mode, ProxyEvent::DropTooBig);
            return Err(Reason::DropProxyInsert);
        }
        let new_seq = if hdr {
            seq
        } else if acked & PP_ACKED_HEADER != 0 {
            seq.wrapping_add(len as u32)
        } else {
            adjust_seq(seq, pos, len, sent != 0)
        };
        let new_sent = if payload > 0 && seq == pos {
            PP_SENT_DATA
        } else if hdr && sent == 0 {
            PP_SENT_ALONE
        } else {
            sent
        };
        if let Some(e) = self.fwd.get_mut(key) {
            e.pp_sent = new_sent;
        }
        if new_seq != seq {
            tcp_u32(f, l4, l4 + 4, seq, new_seq)?;
        }
        if !hdr && !toa {
            return Ok(());
        }
        let toa_len = if toa { TOA_LEN as usize } else { 0 };
        let hdr_len = if hdr { len as usize } else { 0 };
        self.proxy_insert(f, p, &e, toa_len, hdr_len, tot_len, hl)?;
        if toa {
            self.proxy_event(mode, ProxyEvent::ToaInserted);
        }
        if hdr {
            let ev = if sent == 0 {
                ProxyEvent::HeaderSent
            } else {
                ProxyEvent::HeaderResent
            };
            self.proxy_event(mode, ev);
        }
        Ok(())
    }

    /// Grows the segment by `toa_len + hdr_len` bytes behind its TCP header of `hl` bytes.
    #[allow(clippy::too_many_arguments)]
    fn proxy_insert(
        &self,
        f: &mut Vec<u8>,
        p: &Pkt,
        e: &FlowEntry,
        toa_len: usize,
        hdr_len: usize,
        tot_len: usize,
        hl: usize,
    ) -> Result<(), Reason> {
        let l4 = p.l4;
        let payload = tot_len.saturating_sub(l4 - 14 + hl);
        let grow = ((toa_len + hdr_len).wrapping_sub(1) & 0xff) + 1;
        let mut ins = Vec::with_capacity(grow);
        if toa_len != 0 {
            let kind = match self.node.toa_kind {
                0 => TOA_KIND_DEFAULT,
                k => k,
            };
            ins.extend_from_slice(&[kind, TOA_LEN as u8]);
            ins.extend_from_slice(&p.sport.to_ne_bytes());
            ins.extend_from_slice(&p.src.to_ne_bytes());
        }
        if hdr_len != 0 {
            let t = self
                .proxy_template(e.endpoint_id)
                .ok_or(Reason::DropProxyInsert)?;
            let tlv_len = if e.pp_mode & TCP_PROXY_MODE_MASK == TCP_PROXY_PROXY_VNI {
                t.tlv_len_vni
            } else {
                t.tlv_len
            };
            if PP2_FIXED_LEN + tlv_len as usize != hdr_len {
                return Err(Reason::DropProxyInsert);
            }
            ins.extend_from_slice(&pp2_fixed(tlv_len, p.src, p.dst, p.sport, p.dport));
            ins.extend_from_slice(&t.tlv);
        }
        ins.truncate(grow);
        if payload > PROXY_MAX_MOVED {
            return Err(Reason::DropProxyInsert);
        }
        let data_off = l4 + hl;
        let moved = if payload == 0 {
            Vec::new()
        } else {
            f.get(data_off..data_off + payload)
                .ok_or(Reason::DropHelper)?
                .to_vec()
        };
        f.resize(14 + tot_len + grow, 0);
        f[data_off + grow..data_off + grow + moved.len()].copy_from_slice(&moved);
        f[data_off..data_off + grow].copy_from_slice(&ins);
        // Checksums: the inserted bytes, the pseudo-header's length, the data offset, the
        // IPv4 total length, in the kernel's order.
        let mut c = rd16(f, l4 + 16).unwrap_or(0);
        c = csum::kernel_l4_replace(c, sum_bytes(&ins), false);
        let old_l4 = ((tot_len - (l4 - 14)) as u16).to_be();
        let new_l4 = ((tot_len + grow - (l4 - 14)) as u16).to_be();
        c = csum::kernel_l4_replace(c, csum::diff16(old_l4, new_l4), false);
        if toa_len != 0 {
            let old = [f[l4 + 12], f[l4 + 13]];
            let new = [old[0] + 0x20, old[1]];
            c = csum::kernel_l4_replace(
                c,
                csum::diff16(u16::from_ne_bytes(old), u16::from_ne_bytes(new)),
                false,
            );
            f[l4 + 12] = new[0];
        }
        wr16(f, l4 + 16, c);
        let old = [f[16], f[17]];
        let new = ((tot_len + grow) as u16).to_be_bytes();
        let d = csum::diff16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        let check = csum::apply(u16::from_ne_bytes([f[24], f[25]]), d).to_ne_bytes();
        f[16..18].copy_from_slice(&new);
        f[24..26].copy_from_slice(&check);
        Ok(())
    }

    /// Backend → consumer on a tcp_proxy flow: notes what the backend acknowledged, maps
    /// its acknowledgement number and SACK edges back into the client's sequence space.
    fn proxy_reverse(&mut self, f: &mut [u8], p: &Pkt, key: &FlowKey) -> Result<(), Reason> {
        if p.tcp_flags & TCP_ACK == 0 {
            return Ok(());
        }
        let e = *self.fwd.get(key).ok_or(Reason::DropNoReverseFlow)?;
        let (pos, len) = (e.pp_isn, e.pp_len);
        let l4 = p.l4;
        let ack = rd_be32(f, l4 + 8)?;
        let acked = e.pp_acked;
        let mut now = acked;
        if acked & PP_ACKED_ANY == 0 && seq_after(ack, pos) {
            now |= PP_ACKED_ANY;
        }
        if len != 0 && acked & PP_ACKED_HEADER == 0 && !seq_after(pos.wrapping_add(len as u32), ack)
        {
            now |= PP_ACKED_HEADER;
        }
        if let Some(e) = self.fwd.get_mut(key) {
            e.pp_acked = now;
        }
        if len == 0 {
            return Ok(());
        }
        let steady = now & PP_ACKED_HEADER != 0;
        let map = |v: u32| {
            if steady {
                v.wrapping_sub(len as u32)
            } else {
                unadjust_ack(v, pos, len)
            }
        };
        let client_ack = map(ack);
        if client_ack != ack {
            tcp_u32(f, l4, l4 + 8, ack, client_ack)?;
        }
        if p.tcp_flags & TCP_SYN != 0 || !has(f, l4, 24) {
            return Ok(());
        }
        let hl = (f[l4 + 12] >> 4) as usize * 4;
        let ts_only = hl == 32 && f[l4 + 20] == 1 && f[l4 + 21] == 1 && f[l4 + 22] == 8;
        if hl <= 20 || ts_only {
            return Ok(());
        }
        let (mut off, mut at, mut olen) = (20usize, 0usize, 0usize);
        for _ in 0..12 {
            if off + 2 > hl {
                break;
            }
            if !has(f, l4 + off, 2) {
                return Err(Reason::DropTruncL4);
            }
            let (kind, l) = (f[l4 + off], f[l4 + off + 1] as usize);
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
            let v = rd_be32(f, edge)?;
            tcp_u32(f, l4, edge, v, map(v))?;
            edge += 4;
        }
        self.proxy_event(e.pp_mode, ProxyEvent::SackAdjusted);
        Ok(())
    }
}
