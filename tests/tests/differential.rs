//! Differential test: random map contents and random packets (valid and malformed) through
//! the kernel programs (BPF_PROG_TEST_RUN) and through the reference model in
//! `vpcep_common::model`; verdicts, counted reasons, output bytes, conntrack state,
//! per-endpoint counters and tcp_proxy events must be identical; tcp_proxy flows get
//! segments around their correction position.
//!
//! `VPCEP_DIFF_SEED` picks the seed (printed on failure) and `VPCEP_DIFF_PACKETS` the
//! number of packets (default 100,000).
use std::collections::BTreeMap;

use vpcep::dataplane::Dataplane;
use vpcep_common::{
    endpoint::*,
    model::{Model, Verdict},
    stats::{Hook, ProxyEvent, Reason, proxy_event_index},
};
use vpcep_tests::{
    fastpath::{Nics, be, namespace, run_xdp, try_run_tc},
    monotonic_ns, require_root,
};

/// SplitMix64: small, seedable, good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

const MACS: [[u8; 6]; 4] = [
    [2, 0, 0, 0, 0, 2],
    [2, 0, 0, 0, 0, 3],
    [2, 0, 0, 0, 0, 5],
    [2, 0, 0, 0, 0, 9],
];
const IPS: [[u8; 4]; 5] = [
    [10, 0, 0, 2],
    [10, 0, 0, 3],
    [10, 0, 0, 5],
    [10, 0, 0, 1],
    [10, 1, 0, 7],
];
const EP_IPS: [[u8; 4]; 4] = [
    [10, 0, 0, 100],
    [10, 0, 0, 101],
    [10, 0, 0, 102],
    [10, 0, 0, 103],
];
const PORTS: [u16; 5] = [53, 80, 5353, 8080, 443];

fn random_model(rng: &mut Rng, nics: &Nics, round: u32) -> Model {
    let mut m = Model::default();
    let lo = 1024 + rng.below(50_000) as u16;
    let span = rng.pick(&[1u16, 2, 3, 8, 1000]);
    m.node = NodeConfig {
        snat_ip_be: if rng.chance(3) {
            0
        } else {
            be([198, 19, 128 + rng.below(100) as u8, 10])
        },
        port_lo: lo,
        port_hi: lo + span - 1,
        vmac: if rng.chance(3) {
            [0; 6]
        } else {
            [2, 0xfe, 0, 0, 0, 1]
        },
        toa_kind: rng.pick(&[0u8, 0, 200, 254]),
        _pad: 0,
        timeouts: Timeouts {
            tcp_syn: 1 + rng.below(100) as u32,
            tcp_established: 1 + rng.below(100) as u32,
            tcp_closing: 1 + rng.below(100) as u32,
            udp: 1 + rng.below(100) as u32,
        },
    };
    // An overlay device (any ifindex: the test run does not follow the redirect) with an
    // inner MTU that clamps some MSS options, or none.
    for third in [10u8, 11, 12] {
        if rng.chance(50) {
            m.snat_owners
                .insert(be([198, 19, 128, third]), be([192, 168, 50, third]));
        }
    }
    if rng.chance(60) {
        m.tunnel = TunnelConfig {
            ifindex: rng.pick(&[nics.x, 999]),
            inner_mtu: rng.pick(&[1450u16, 1400, 8950, 500]),
            _pad: [0; 2],
        };
    }
    for (i, ifx) in [nics.c, nics.x, nics.b].into_iter().enumerate() {
        if rng.chance(90) {
            m.nics.insert(
                ifx,
                LocalNic {
                    vpc_id: if i == 2 {
                        2
                    } else if rng.chance(90) {
                        1
                    } else {
                        2
                    },
                    ip_be: be(IPS[i.min(2)]),
                    gateway_be: if rng.chance(80) { be([10, 0, 0, 1]) } else { 0 },
                    mac: MACS[i],
                    _pad: [0; 2],
                },
            );
        }
    }
    for svc in 1..=4u32 {
        if rng.chance(85) {
            m.services.insert(
                svc,
                Service {
                    backend_ip_be: be(rng.pick(&[IPS[2], IPS[2], IPS[4]])),
                    backend_vpc_id: 2,
                    ifindex: rng.pick(&[nics.b, nics.b, nics.b, nics.x]),
                    remote_node_be: rng.pick(&[0, be([192, 168, 50, 3]), be([192, 168, 50, 3])]),
                    backend_mac: MACS[2],
                    location: if rng.chance(75) {
                        SVC_LOCAL
                    } else {
                        SVC_REMOTE
                    },
                    tcp_proxy: random_tcp_proxy(rng),
                },
            );
        }
        if rng.chance(80) {
            for (client, server, proto) in [(8080u16, 80u16, IPPROTO_TCP), (5353, 53, IPPROTO_UDP)]
            {
                m.ports.insert(
                    PortKey {
                        service_id: svc,
                        client_port_be: client.to_be(),
                        proto,
                        _pad: 0,
                    },
                    PortTarget {
                        server_port_be: server.to_be(),
                        _pad: 0,
                    },
                );
            }
        }
        for _ in 0..rng.below(3) {
            m.ports.insert(
                PortKey {
                    service_id: svc,
                    client_port_be: rng.pick(&PORTS).to_be(),
                    proto: rng.pick(&[IPPROTO_TCP, IPPROTO_UDP]),
                    _pad: 0,
                },
                PortTarget {
                    server_port_be: rng.pick(&PORTS).to_be(),
                    _pad: 0,
                },
            );
        }
    }
    for (k, ip) in EP_IPS.iter().enumerate() {
        if rng.chance(85) {
            let id = round * 8 + k as u32;
            let flags = rng.below(8) as u32
                | if rng.chance(5) { EP_TOMBSTONE } else { 0 }
                | if rng.chance(60) {
                    EP_ACCEPTED | EP_PERMITTED
                } else {
                    0
                };
            m.endpoints.insert(
                EndpointKey {
                    vpc_id: if rng.chance(90) { 1 } else { 2 },
                    ip_be: be(*ip),
                },
                Endpoint {
                    endpoint_id: id,
                    service_id: if rng.chance(90) {
                        1 + rng.below(2) as u32
                    } else {
                        1 + rng.below(5) as u32
                    },
                    marker_id: id,
                    flags,
                    epoch: rng.below(3) as u32,
                    generation: 1 + rng.below(2) as u32,
                    max_flows: if rng.chance(20) {
                        1 + rng.below(3) as u32
                    } else {
                        0
                    },
                    new_flows_per_sec: 0,
                },
            );
            if rng.chance(85) {
                m.proxy_templates.insert(id, random_template(rng, id));
            }
            for _ in 0..rng.below(3) {
                let len = rng.pick(&[0u32, 8, 24, 30, 32]);
                let net = u32::from_be_bytes(rng.pick(&IPS))
                    & if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let rule = (id, net.to_be(), len);
                if !m.whitelist.contains(&rule) {
                    m.whitelist.push(rule);
                }
            }
        }
    }
    m
}

/// A `tcp_proxy` byte: mostly `close`, else any mode in either header placement.
fn random_tcp_proxy(rng: &mut Rng) -> u8 {
    if rng.chance(40) {
        return TCP_PROXY_CLOSE;
    }
    let placement = if rng.chance(30) {
        TCP_PROXY_F_FIRST_DATA
    } else {
        0
    };
    rng.pick(&TCP_PROXY_ACTIVE_MODES) | placement
}

/// PROXY header TLVs with ids of random lengths (every NOOP padding case).
fn random_template(rng: &mut Rng, id: u32) -> ProxyTemplate {
    let ep = format!("endpoint-{id}-{}", "x".repeat(rng.below(40) as usize));
    let vpc = format!("vpc-{}", "y".repeat(rng.below(40) as usize));
    ProxyTemplate::new(&ep, 1000 + id, &vpc, rng.next() as u32 & 0xff_ffff).unwrap()
}

fn load(dp: &mut Dataplane, m: &Model) {
    dp.set_node(m.node).unwrap();
    dp.set_tunnel(m.tunnel).unwrap();
    for (k, v) in &m.snat_owners {
        dp.set_snat_owner(*k, *v).unwrap();
    }
    for (k, v) in &m.nics {
        dp.set_local_nic(*k, *v).unwrap();
    }
    for (k, v) in &m.services {
        dp.set_service(*k, *v).unwrap();
    }
    for (k, v) in &m.ports {
        dp.set_port(*k, *v).unwrap();
    }
    for (id, net, len) in &m.whitelist {
        dp.allow_source(*id, *net, *len).unwrap();
    }
    for (id, t) in &m.proxy_templates {
        dp.set_proxy_template(*id, *t).unwrap();
    }
    for (k, v) in &m.endpoints {
        dp.set_endpoint(*k, *v).unwrap();
    }
}

fn unload(dp: &mut Dataplane, m: &Model) {
    for k in m.snat_owners.keys() {
        dp.remove_snat_owner(*k).unwrap();
    }
    for k in m.nics.keys() {
        dp.remove_local_nic(*k).unwrap();
    }
    for k in m.services.keys() {
        dp.remove_service(*k).unwrap();
    }
    for k in m.ports.keys() {
        dp.remove_port(k).unwrap();
    }
    for (id, net, len) in &m.whitelist {
        dp.disallow_source(*id, *net, *len).unwrap();
    }
    for k in m.endpoints.keys() {
        dp.remove_endpoint(k).unwrap();
    }
    for id in m.proxy_templates.keys() {
        dp.set_proxy_template(*id, ProxyTemplate::default())
            .unwrap();
    }
    for (k, _) in dp.flows().unwrap() {
        dp.remove_flow(&k).unwrap();
    }
    for (k, _) in dp.revs().unwrap() {
        dp.remove_rev(&k).unwrap();
    }
}

fn eth(f: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], et: u16) {
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&et.to_be_bytes());
}

/// An IPv4 frame with random header details; `l4` is the L4 header + payload.
fn ipv4(rng: &mut Rng, smac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    eth(&mut f, [2, 0xfe, 0, 0, 0, 1], smac, 0x0800);
    let opts = if rng.chance(10) {
        4 * rng.below(11) as usize
    } else {
        0
    };
    let ihl = 20 + opts;
    let tot = (ihl + l4.len()) as u16;
    let frags: u16 = if rng.chance(5) {
        rng.pick(&[0x2000, 0x0010, 0x4000, 0x2010])
    } else {
        0x4000
    };
    let ttl = if rng.chance(5) {
        rng.pick(&[0, 1, 2])
    } else {
        64
    };
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&(rng.next() as u16).to_be_bytes());
    f.extend_from_slice(&frags.to_be_bytes());
    f.push(ttl);
    f.push(proto);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend(std::iter::repeat_n(1u8, opts));
    let c = !vpcep_tests::packets::ones_complement_sum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

fn tcp_l4(rng: &mut Rng, sport: u16, dport: u16) -> Vec<u8> {
    let flags = rng.pick(&[0x02u8, 0x02, 0x10, 0x12, 0x11, 0x04, 0x18, 0x01, 0x00, 0x14]);
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = if rng.chance(3) { 0x40 } else { 0x50 };
    t[13] = flags;
    t[16..18].copy_from_slice(&(rng.next() as u16).to_be_bytes());
    if rng.chance(40) {
        // An MSS option first, as stacks send it on SYNs (the overlay clamps it).
        t[12] = 0x60;
        let mss = rng.pick(&[536u16, 1360, 1460, 8960, 65495]);
        t.extend_from_slice(&[2, 4]);
        t.extend_from_slice(&mss.to_be_bytes());
    }
    let n = rng.below(40) as usize;
    t.extend((0..n).map(|_| rng.next() as u8));
    t
}

/// A TCP segment of a tcp_proxy flow `e`, around its correction position: the client's
/// (sequence numbers at, next to and far past the position; payloads from none to more
/// than the kernel moves; the option space empty, usual or full) or the backend's
/// (acknowledgements and SACK edges around the header; MSS on a SYN-ACK). Payloads stay
/// small enough that the grown frame fits the test device's MTU.
fn proxy_tcp_l4(rng: &mut Rng, sport: u16, dport: u16, e: &FlowEntry, backend: bool) -> Vec<u8> {
    let (pos, len) = (e.pp_isn, e.pp_len as u32);
    let near = |rng: &mut Rng| -> u32 {
        match rng.below(12) {
            0..=3 => pos,
            4 => pos.wrapping_sub(1),
            5 => pos.wrapping_add(1),
            6 => pos.wrapping_add(len),
            7 => pos.wrapping_add(len.saturating_sub(1 + rng.below(4) as u32)),
            8 => pos.wrapping_add(len + rng.below(3000) as u32),
            9 => pos.wrapping_add(0x8000_0000 + rng.below(100) as u32),
            10 => pos.wrapping_sub(rng.below(100) as u32),
            _ => rng.next() as u32,
        }
    };
    let flags = if backend {
        rng.pick(&[0x10u8, 0x10, 0x18, 0x12, 0x11, 0x14, 0x00])
    } else {
        rng.pick(&[0x10u8, 0x10, 0x18, 0x18, 0x11, 0x04, 0x02, 0x00])
    };
    let (seq, ack) = if backend {
        (rng.next() as u32, near(rng))
    } else {
        (near(rng), rng.next() as u32)
    };
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[13] = flags;
    t[16..18].copy_from_slice(&(rng.next() as u16).to_be_bytes());
    let ts = |t: &mut Vec<u8>, rng: &mut Rng| {
        t.extend_from_slice(&[1, 1, 8, 10]);
        t.extend((0..8).map(|_| rng.next() as u8));
    };
    match rng.below(6) {
        0 => {}
        1 => ts(&mut t, rng),
        2 => {
            t.extend_from_slice(&[2, 4]);
            t.extend_from_slice(&rng.pick(&[536u16, 1460, 8960]).to_be_bytes());
        }
        3 if backend => {
            // SACK blocks (after timestamps, or alone), edges around the header.
            let most = if rng.chance(50) { 3 } else { 4 };
            let blocks = 1 + rng.below(most) as usize;
            if blocks < 4 && rng.chance(50) {
                ts(&mut t, rng);
            }
            t.extend_from_slice(&[1, 1, 5, 2 + 8 * blocks as u8]);
            for _ in 0..2 * blocks {
                let v = near(rng);
                t.extend_from_slice(&v.to_be_bytes());
            }
        }
        3 | 4 => {
            // The option space full, or all but 4 bytes of it.
            let n = rng.pick(&[36usize, 40]);
            ts(&mut t, rng);
            t.extend(std::iter::repeat_n(1u8, n - 12));
        }
        _ => {
            // Odd options: EOL, a bad length, a SACK cut short.
            let o = rng.pick(&[[0u8, 0, 0, 0], [5, 1, 0, 0], [5, 10, 0, 0], [1, 5, 18, 0]]);
            t.extend_from_slice(&o);
        }
    }
    while !t.len().is_multiple_of(4) {
        t.push(1);
    }
    t[12] = ((t.len() / 4) as u8) << 4;
    let n = if backend {
        rng.pick(&[0usize, 0, 0, 1, 100])
    } else {
        rng.pick(&[0usize, 0, 1, 1, 10, 100, 1000, 1100, 2001, 2100])
    };
    t.extend((0..n).map(|_| rng.next() as u8));
    t
}

fn udp_l4(rng: &mut Rng, sport: u16, dport: u16) -> Vec<u8> {
    let n = rng.below(40) as usize;
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
    let c = if rng.chance(15) { 0 } else { rng.next() as u16 };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u.extend((0..n).map(|_| rng.next() as u8));
    u
}

/// One random frame and the NIC it arrives on.
fn packet(rng: &mut Rng, m: &Model, nics: &Nics) -> (u32, Vec<u8>) {
    let consumers = [(nics.c, MACS[0], IPS[0]), (nics.x, MACS[1], IPS[1])];
    let (cif, cmac, cip) = rng.pick(&consumers);
    let proxied: Vec<_> = m
        .fwd
        .iter()
        .filter(|(k, e)| k.proto == IPPROTO_TCP && e.pp_mode != 0)
        .collect();
    if !proxied.is_empty() && rng.chance(25) {
        // A tcp_proxy flow's segments, both ways, on the NICs they belong to.
        let (k, e) = proxied[rng.below(proxied.len() as u64) as usize];
        let src = k.src_be.to_ne_bytes();
        if rng.chance(65) {
            let (sport, dport) = (u16::from_be(k.sport_be), u16::from_be(k.dport_be));
            let smac = if src == IPS[1] { MACS[1] } else { MACS[0] };
            let l4 = proxy_tcp_l4(rng, sport, dport, e, false);
            let ifx = if src == IPS[1] { nics.x } else { nics.c };
            return (
                ifx,
                ipv4(rng, smac, src, k.dst_be.to_ne_bytes(), k.proto, &l4),
            );
        }
        let rk = e.rev;
        let (bp, sp) = (
            u16::from_be(rk.backend_port_be),
            u16::from_be(rk.snat_port_be),
        );
        let l4 = proxy_tcp_l4(rng, bp, sp, e, true);
        let (b, snat) = (rk.backend_be.to_ne_bytes(), rk.snat_be.to_ne_bytes());
        // (A flow to a remote backend points at the overlay, perhaps a made-up ifindex.)
        let ifx = if [nics.b, nics.x].contains(&e.out_ifindex) {
            e.out_ifindex
        } else {
            nics.b
        };
        return (ifx, ipv4(rng, MACS[2], b, snat, k.proto, &l4));
    }
    let kind = rng.below(100);
    let mut f = if kind < 4 && !m.fwd.is_empty() {
        // A consumer's ICMP error about a reply it got on a live flow.
        let (k, _) = m
            .fwd
            .iter()
            .nth(rng.below(m.fwd.len() as u64) as usize)
            .unwrap();
        let (src, ep) = (k.src_be.to_ne_bytes(), k.dst_be.to_ne_bytes());
        let (sport, dport) = (u16::from_be(k.sport_be), u16::from_be(k.dport_be));
        let smac = if src == IPS[1] { MACS[1] } else { MACS[0] };
        let reply_l4 = if k.proto == IPPROTO_TCP {
            tcp_l4(rng, dport, sport)
        } else {
            udp_l4(rng, dport, sport)
        };
        let reply = ipv4(rng, [2, 0xfe, 0, 0, 0, 1], ep, src, k.proto, &reply_l4);
        let mut i = vec![3u8, rng.pick(&[3u8, 4, 1]), 0, 0, 0, 0, 5, 0x78];
        i.extend_from_slice(&reply[14..14 + 28.min(reply.len() - 14)]);
        let c = !vpcep_tests::packets::ones_complement_sum(&i);
        i[2..4].copy_from_slice(&c.to_be_bytes());
        let f = ipv4(rng, smac, src, ep, IPPROTO_ICMP, &i);
        let ifx = if src == IPS[1] { nics.x } else { nics.c };
        return (ifx, f);
    } else if kind < 15 && !m.fwd.is_empty() {
        // More of a live flow from its consumer.
        let (k, e) = m
            .fwd
            .iter()
            .nth(rng.below(m.fwd.len() as u64) as usize)
            .unwrap();
        let (sport, dport) = (u16::from_be(k.sport_be), u16::from_be(k.dport_be));
        let src = k.src_be.to_ne_bytes();
        let smac = if src == IPS[1] { MACS[1] } else { MACS[0] };
        let l4 = if k.proto == IPPROTO_TCP && e.pp_mode != 0 && rng.chance(80) {
            proxy_tcp_l4(rng, sport, dport, e, false)
        } else if k.proto == IPPROTO_TCP {
            tcp_l4(rng, sport, dport)
        } else {
            udp_l4(rng, sport, dport)
        };
        let f = ipv4(rng, smac, src, k.dst_be.to_ne_bytes(), k.proto, &l4);
        let ifx = if src == IPS[1] { nics.x } else { nics.c };
        return (ifx, f);
    } else if kind < 45 {
        // Consumer → endpoint (or near miss).
        let smac = if rng.chance(95) {
            cmac
        } else {
            rng.pick(&MACS)
        };
        let src = if rng.chance(95) { cip } else { rng.pick(&IPS) };
        let dst = if rng.chance(90) {
            rng.pick(&EP_IPS)
        } else {
            rng.pick(&IPS)
        };
        let sport = 30000 + rng.below(4) as u16;
        let dport = if rng.chance(70) {
            rng.pick(&[8080, 5353])
        } else {
            rng.pick(&PORTS)
        };
        match rng.below(10) {
            0..=5 => {
                let l4 = tcp_l4(rng, sport, dport);
                ipv4(rng, smac, src, dst, IPPROTO_TCP, &l4)
            }
            6..=8 => {
                let l4 = udp_l4(rng, sport, dport);
                ipv4(rng, smac, src, dst, IPPROTO_UDP, &l4)
            }
            _ => {
                let mut i = vec![rng.pick(&[8u8, 0, 3, 13]), 0, 0, 0, 0, 1, 0, 1];
                i.extend_from_slice(b"ping");
                let c = !vpcep_tests::packets::ones_complement_sum(&i);
                i[2..4].copy_from_slice(&c.to_be_bytes());
                ipv4(rng, smac, src, dst, IPPROTO_ICMP, &i)
            }
        }
    } else if kind < 70 && !m.rev.is_empty() {
        // Backend reply (or ICMP error) for a live flow, mostly on the right NIC.
        let (rk, _) = m
            .rev
            .iter()
            .nth(rng.below(m.rev.len() as u64) as usize)
            .unwrap();
        let ifx = if rng.chance(90) { nics.b } else { nics.x };
        let src = rk.backend_be.to_ne_bytes();
        let dst = rk.snat_be.to_ne_bytes();
        let (bp, sp) = (
            u16::from_be(rk.backend_port_be),
            u16::from_be(rk.snat_port_be),
        );
        if rng.chance(15) {
            // Fragmentation needed, quoting the packet the backend received.
            let inner_l4 = if rk.proto == IPPROTO_TCP {
                tcp_l4(rng, sp, bp)
            } else {
                udp_l4(rng, sp, bp)
            };
            let inner = ipv4(rng, MACS[2], dst, src, rk.proto, &inner_l4);
            let mut i = vec![3u8, 4, 0, 0, 0, 0, 5, 0x78];
            i.extend_from_slice(&inner[14..14 + 28.min(inner.len() - 14)]);
            let c = !vpcep_tests::packets::ones_complement_sum(&i);
            i[2..4].copy_from_slice(&c.to_be_bytes());
            return (ifx, ipv4(rng, MACS[2], src, dst, IPPROTO_ICMP, &i));
        }
        let proxied = m
            .rev
            .get(rk)
            .and_then(|rv| m.fwd.get(&rv.fwd))
            .filter(|e| rk.proto == IPPROTO_TCP && e.pp_mode != 0);
        let l4 = match proxied {
            Some(e) if rng.chance(80) => proxy_tcp_l4(rng, bp, sp, e, true),
            _ if rk.proto == IPPROTO_TCP => tcp_l4(rng, bp, sp),
            _ => udp_l4(rng, bp, sp),
        };
        ipv4(rng, MACS[2], src, dst, rk.proto, &l4)
    } else if kind < 78 {
        // ARP.
        let mut f = Vec::new();
        eth(&mut f, [0xff; 6], cmac, 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, rng.pick(&[1u8, 1, 2])]);
        f.extend_from_slice(&cmac);
        f.extend_from_slice(&cip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&rng.pick(&[EP_IPS[0], EP_IPS[1], [10, 0, 0, 1], [10, 0, 0, 50]]));
        f
    } else if kind < 85 {
        // Stray traffic to the SNAT range.
        let dport = rng.below(65535) as u16;
        let l4 = tcp_l4(rng, 80, dport);
        let proto = rng.pick(&[IPPROTO_TCP, 47]);
        let dst = rng.pick(&[[198, 19, 128, 10], [198, 19, 128, 11], [198, 19, 128, 12]]);
        let f = ipv4(rng, MACS[2], IPS[2], dst, proto, &l4);
        // From the backend's own NIC too: to a node's SNAT address, or another node's.
        if rng.chance(50) {
            return (nics.b, f);
        }
        f
    } else if kind < 92 {
        // Random garbage in an IPv4 frame.
        let mut f = Vec::new();
        eth(&mut f, [2, 0xfe, 0, 0, 0, 1], cmac, 0x0800);
        let n = 20 + rng.below(60) as usize;
        f.extend((0..n).map(|_| rng.next() as u8));
        if rng.chance(50) {
            f[14] = 0x40 | (f[14] & 0x0f);
        }
        f
    } else {
        // Non-IPv4.
        let mut f = Vec::new();
        eth(
            &mut f,
            [2, 0xfe, 0, 0, 0, 1],
            cmac,
            rng.pick(&[0x86dd, 0x8100, 0x88b5]),
        );
        f.extend((0..40).map(|_| rng.next() as u8));
        f
    };
    if rng.chance(5) && f.len() > 15 {
        let cut = 14 + rng.below((f.len() - 14) as u64) as usize;
        f.truncate(cut);
    }
    let ifx = if rng.chance(3) { 1 } else { cif };
    (ifx, f)
}

/// The kernel's tcp_proxy event counters, by `proxy_event_index`.
fn proxy_events(dp: &Dataplane) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for m in TCP_PROXY_ACTIVE_MODES {
        for e in ProxyEvent::ALL {
            out.insert(proxy_event_index(m, e), dp.proxy_event(m, e).unwrap());
        }
    }
    out
}

/// Compares conntrack state up to owner ids (the kernel's come from per-CPU counters):
/// each side's claims must name owners their flows hold, and the rest must be equal.
fn same_flows(dp: &mut Dataplane, m: &Model) -> Result<(), String> {
    fn normalised(
        fwd: &BTreeMap<FlowKey, FlowEntry>,
        rev: &BTreeMap<RevKey, RevEntry>,
    ) -> (
        BTreeMap<FlowKey, FlowEntry>,
        BTreeMap<RevKey, (FlowKey, bool)>,
    ) {
        let f = fwd
            .iter()
            .map(|(k, e)| {
                let mut e = *e;
                e.last_seen_ns = 0;
                e.owner = 0;
                (*k, e)
            })
            .collect();
        let r = rev
            .iter()
            .map(|(rk, rv)| {
                let held = fwd
                    .get(&rv.fwd)
                    .is_some_and(|e| e.owner == rv.owner && e.rev == *rk);
                (*rk, (rv.fwd, held))
            })
            .collect();
        (f, r)
    }
    let kf: BTreeMap<_, _> = dp.flows().unwrap().into_iter().collect();
    let kr: BTreeMap<_, _> = dp.revs().unwrap().into_iter().collect();
    let (kernel_fwd, kernel_rev) = normalised(&kf, &kr);
    let (model_fwd, model_rev) = normalised(&m.fwd, &m.rev);
    if kernel_fwd != model_fwd {
        return Err(format!(
            "forward conntrack differs:\n kernel {kernel_fwd:?}\n model  {model_fwd:?}"
        ));
    }
    if kernel_rev != model_rev {
        return Err(format!(
            "port claims differ:\n kernel {kernel_rev:?}\n model  {model_rev:?}"
        ));
    }
    for (id, live) in &m.ep_live {
        let got = dp.endpoint_flows(*id).unwrap().live as i64;
        if got != *live {
            return Err(format!(
                "endpoint {id}: kernel counts {got} live flows, model {live}"
            ));
        }
    }
    Ok(())
}

/// Ages flow `k` past any timeout and its claim past the claim guard, in both (relative to
/// the clock, so that it holds on a machine that booted a moment ago).
fn age(dp: &mut Dataplane, m: &mut Model, k: &FlowKey) {
    let now = monotonic_ns();
    let seen = now.saturating_sub(100_000 * 1_000_000_000);
    let since = |owner: u64| owner & 0xffff_ffff;
    let e = m.fwd.get_mut(k).unwrap();
    e.last_seen_ns = seen;
    if let Some(r) = m.rev.get_mut(&e.rev).filter(|r| r.owner == e.owner) {
        r.owner = since(r.owner);
    }
    e.owner = since(e.owner);
    let mut ke = dp.flow(k).unwrap().unwrap();
    if let Some(mut r) = dp.rev(&ke.rev).unwrap().filter(|r| r.owner == ke.owner) {
        r.owner = since(r.owner);
        dp.insert_rev(ke.rev, r).unwrap();
    }
    ke.owner = since(ke.owner);
    ke.last_seen_ns = seen;
    dp.insert_flow(*k, ke).unwrap();
}

#[test]
fn kernel_matches_reference_model() {
    require_root!();
    let seed: u64 = std::env::var("VPCEP_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234);
    let total: u64 = std::env::var("VPCEP_DIFF_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let per_round = 500;
    let (ns, nics) = namespace();
    ns.run(|| {
        let mut rng = Rng(seed);
        let mut dp = Dataplane::load().unwrap();
        let mut run = 0u64;
        let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut round = 0u32;
        let mut skipped = 0u64;
        let mut refused = Vec::new();
        let mut proxy_totals: BTreeMap<u32, u64> = BTreeMap::new();
        while run < total {
            let mut m = random_model(&mut rng, &nics, round);
            load(&mut dp, &m);
            let events_before = proxy_events(&dp);
            for i in 0..per_round {
                if i % 50 == 49 && !m.fwd.is_empty() {
                    // Age a flow past its timeout, in both.
                    let k = *m.fwd.keys().nth(rng.below(m.fwd.len() as u64) as usize).unwrap();
                    age(&mut dp, &mut m, &k);
                }
                if i % 50 == 24 && !m.endpoints.is_empty() {
                    // A service change as the agent makes it: new epoch on an endpoint, and
                    // perhaps a port mapping pointing elsewhere or removed, in both.
                    let k = *m.endpoints.keys().nth(rng.below(m.endpoints.len() as u64) as usize).unwrap();
                    let ep = m.endpoints.get_mut(&k).unwrap();
                    ep.epoch = ep.epoch.wrapping_add(1);
                    if rng.chance(25) {
                        // Re-accepted (or deleted and recreated): a new instance.
                        ep.generation = ep.generation.wrapping_add(1);
                    }
                    dp.set_endpoint(k, *ep).unwrap();
                    let svc = ep.service_id;
                    if let Some((pk, pt)) = m.ports.iter_mut().find(|(pk, _)| pk.service_id == svc) {
                        if rng.chance(33) {
                            pt.server_port_be = (u16::from_be(pt.server_port_be) ^ 1).to_be();
                            dp.set_port(*pk, *pt).unwrap();
                        } else if rng.chance(50) {
                            let pk = *pk;
                            m.ports.remove(&pk);
                            dp.remove_port(&pk).unwrap();
                        }
                    }
                }
                if i % 50 == 37 {
                    // tcp_proxy changes as the agent makes them: a service's mode (new
                    // flows only) or an endpoint's template (another header length), in both.
                    if rng.chance(50) && !m.services.is_empty() {
                        let k = *m.services.keys().nth(rng.below(m.services.len() as u64) as usize).unwrap();
                        let svc = m.services.get_mut(&k).unwrap();
                        svc.tcp_proxy = random_tcp_proxy(&mut rng);
                        dp.set_service(k, *svc).unwrap();
                    } else if let Some(id) = m.endpoints.values().map(|e| e.endpoint_id).nth(rng.below(4) as usize) {
                        let t = random_template(&mut rng, id);
                        m.proxy_templates.insert(id, t);
                        dp.set_proxy_template(id, t).unwrap();
                    }
                }
                let (ifx, frame) = packet(&mut rng, &m, &nics);
                let xdp = rng.chance(20);
                let ctx = format!("seed {seed} round {round} packet {i} ifindex {ifx} xdp {xdp} frame {frame:02x?}");
                // The skb test run refuses IPv4 frames without a whole IPv4 header.
                if !xdp && frame.len() < 34 && frame[12..14] == [8, 0] {
                    continue;
                }
                let now = monotonic_ns();
                let saved = m.clone();
                let want = if xdp { m.xdp_ingress(ifx, &frame) } else { m.tc_ingress(ifx, &frame, now) };
                let hook = if xdp { Hook::Xdp } else { Hook::TcIngress };
                let before = dp.counter(hook, want.reason).unwrap().packets;
                let got = if xdp {
                    run_xdp(&mut dp, ifx, &frame)
                } else {
                    match try_run_tc(&mut dp, ifx, &frame) {
                        Ok(r) => r,
                        Err(e) => {
                            // Refused by the skb test harness before the program ran.
                            if refused.len() < 3 {
                                refused.push(format!("{e:?}: {frame:02x?}"));
                            }
                            skipped += 1;
                            m = saved;
                            continue;
                        }
                    }
                };
                let after = dp.counter(hook, want.reason).unwrap().packets;
                let verdict = match (xdp, got.verdict) {
                    (true, 1) | (false, 2) => Verdict::Drop,
                    (true, 2) | (false, 0) => Verdict::Pass,
                    (true, 3) => Verdict::Tx,
                    (false, 7) => match want.verdict {
                        Verdict::Redirect(_) | Verdict::Tx => want.verdict,
                        _ => Verdict::Redirect(u32::MAX),
                    },
                    _ => panic!("{ctx}: unexpected return {}", got.verdict),
                };
                assert_eq!(verdict, want.verdict, "{ctx}: verdict (model reason {})", want.reason.name());
                assert_eq!(after, before + 1, "{ctx}: kernel did not count {}", want.reason.name());
                assert_eq!(got.out, want.frame, "{ctx}: output bytes ({})", want.reason.name());
                *reasons.entry(want.reason.name()).or_default() += 1;
                run += 1;
                if i % 100 == 99 {
                    same_flows(&mut dp, &m).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                }
            }
            same_flows(&mut dp, &m).unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            for (id, want) in &m.ep_stats {
                let got = dp.endpoint_counters(*id).unwrap();
                assert_eq!(got, *want, "seed {seed} round {round}: endpoint {id} counters");
            }
            let events_after = proxy_events(&dp);
            for (i, after) in &events_after {
                let got = after - events_before[i];
                let want = m.proxy_events.get(i).copied().unwrap_or(0);
                assert_eq!(got, want, "seed {seed} round {round}: tcp_proxy event slot {i}");
                *proxy_totals.entry(*i).or_default() += got;
            }
            unload(&mut dp, &m);
            round += 1;
        }
        println!("{run} packets in {round} rounds, zero mismatches; {skipped} refused by the test harness, e.g. {refused:?}; by reason:");
        assert!(skipped * 100 < run, "too many frames refused by the test harness");
        for (r, n) in &reasons {
            println!("  {r:<24} {n}");
        }
        println!("tcp_proxy events (all modes):");
        for e in ProxyEvent::ALL {
            let n: u64 = TCP_PROXY_ACTIVE_MODES
                .iter()
                .map(|m| proxy_totals.get(&proxy_event_index(*m, e)).copied().unwrap_or(0))
                .sum();
            println!("  {:<24} {n}", e.name());
            // Every event is reached by a run of the default length.
            assert!(total < 50_000 || n > 0, "tcp_proxy never reached {}", e.name());
        }
        // The generator must reach the interesting paths, or the comparison proves little.
        for r in [
            Reason::FwdNewFlow,
            Reason::FwdEstablished,
            Reason::RevReply,
            Reason::ArpReply,
            Reason::DropNotAccepted,
            Reason::DropTcpNoFlow,
            Reason::DropNoReverseFlow,
        ] {
            assert!(reasons.get(r.name()).copied().unwrap_or(0) > 0, "never reached {}", r.name());
        }
        // Rarer paths, reached by a run of the default length (short runs, as in the qemu
        // stages, prove the comparison rather than the coverage).
        if total < 50_000 {
            return;
        }
        for r in [
            Reason::RevIcmpError,
            Reason::FwdIcmpError,
            Reason::IcmpEchoReply,
            Reason::DropSnatExhausted,
            Reason::DropSourceWhitelist,
            Reason::DropEndpointDeleted,
            Reason::DropEndpointFlowLimit,
            Reason::DropFlowRevoked,
            Reason::RevToOwner,
            Reason::DropSnatNoOwner,
            Reason::DropRemoteBackend,
            Reason::DropProxyInsert,
        ] {
            assert!(reasons.get(r.name()).copied().unwrap_or(0) > 0, "never reached {}", r.name());
        }
    })
    .unwrap();
}
