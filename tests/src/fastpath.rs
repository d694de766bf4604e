//! A fast-path fixture: dummy NICs in a namespace (so BPF_PROG_TEST_RUN can name them by
//! ifindex), the design's scenario in the maps, and helpers to run frames through it.
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use vpcep::dataplane::Dataplane;
use vpcep_common::endpoint::*;
use xtask::netns::NetNs;

pub const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const X_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
pub const VMAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x01];
pub const C_IP: [u8; 4] = [10, 0, 0, 2];
pub const X_IP: [u8; 4] = [10, 0, 0, 3];
pub const B_IP: [u8; 4] = [10, 0, 0, 5];
pub const GW_IP: [u8; 4] = [10, 0, 0, 1];
pub const EP_IP: [u8; 4] = [10, 0, 0, 100];
pub const EP_PENDING: [u8; 4] = [10, 0, 0, 101];
pub const EP_UNPERMITTED: [u8; 4] = [10, 0, 0, 102];
pub const EP_WHITELISTED: [u8; 4] = [10, 0, 0, 103];
pub const EP_NO_SERVICE: [u8; 4] = [10, 0, 0, 104];
pub const EP_REMOTE: [u8; 4] = [10, 0, 0, 105];
pub const SNAT_IP: [u8; 4] = [198, 19, 128, 10];
pub const PORT_LO: u16 = 40000;
pub const PORT_HI: u16 = 40999;

pub fn be(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

/// The ifindexes of the dummy NICs.
pub struct Nics {
    pub c: u32,
    pub x: u32,
    pub b: u32,
}

/// Creates the namespace with NICs c0, x0, b0 (veth; this kernel has no dummy driver).
pub fn namespace() -> (NetNs, Nics) {
    let ns = NetNs::new("fastpath").unwrap();
    for d in ["c0", "x0", "b0"] {
        let peer = format!("{d}p");
        ns.ip(&["link", "add", d, "type", "veth", "peer", "name", &peer])
            .unwrap();
        ns.ip(&["link", "set", d, "up"]).unwrap();
    }
    let nics = Nics {
        c: ns.ifindex("c0").unwrap(),
        x: ns.ifindex("x0").unwrap(),
        b: ns.ifindex("b0").unwrap(),
    };
    (ns, nics)
}

pub fn node(port_lo: u16, port_hi: u16) -> NodeConfig {
    NodeConfig {
        snat_ip_be: be(SNAT_IP),
        port_lo,
        port_hi,
        vmac: VMAC,
        toa_kind: 0,
        _pad: 0,
        timeouts: Timeouts::default(),
    }
}

pub fn ep_key(ip: [u8; 4]) -> EndpointKey {
    EndpointKey {
        vpc_id: 1,
        ip_be: be(ip),
    }
}

/// Loads the programs and fills the maps with the scenario: consumers C and X in VPC 1,
/// backend B in VPC 2 (same 10.0.0.0/24), endpoints in VPC 1 in every state.
pub fn scenario(nics: &Nics, port_lo: u16, port_hi: u16) -> Dataplane {
    let mut dp = Dataplane::load().unwrap();
    fill(&mut dp, nics, port_lo, port_hi);
    dp
}

/// Writes the scenario of [`scenario`] into an already loaded data plane.
pub fn fill(dp: &mut Dataplane, nics: &Nics, port_lo: u16, port_hi: u16) {
    dp.set_node(node(port_lo, port_hi)).unwrap();
    let nic = |vpc_id, ip, mac| LocalNic {
        vpc_id,
        ip_be: be(ip),
        gateway_be: be(GW_IP),
        mac,
        _pad: [0; 2],
    };
    dp.set_local_nic(nics.c, nic(1, C_IP, C_MAC)).unwrap();
    dp.set_local_nic(nics.x, nic(1, X_IP, X_MAC)).unwrap();
    dp.set_local_nic(nics.b, nic(2, B_IP, B_MAC)).unwrap();
    let ep = |id, svc, flags| Endpoint {
        endpoint_id: id,
        service_id: svc,
        marker_id: 1000 + id,
        flags,
        epoch: 0,
        generation: 1,
        max_flows: 0,
        new_flows_per_sec: 0,
    };
    let ok = EP_ACCEPTED | EP_PERMITTED;
    dp.set_endpoint(ep_key(EP_IP), ep(7, 3, ok)).unwrap();
    dp.set_endpoint(ep_key(EP_PENDING), ep(8, 3, EP_PERMITTED))
        .unwrap();
    dp.set_endpoint(ep_key(EP_UNPERMITTED), ep(9, 3, EP_ACCEPTED))
        .unwrap();
    dp.set_endpoint(ep_key(EP_WHITELISTED), ep(10, 3, ok | EP_SRC_WHITELIST))
        .unwrap();
    dp.allow_source(10, be(X_IP), 32).unwrap();
    dp.set_endpoint(ep_key(EP_NO_SERVICE), ep(11, 4, ok))
        .unwrap();
    dp.set_endpoint(ep_key(EP_REMOTE), ep(12, 5, ok)).unwrap();
    for svc in [3, 4, 5] {
        dp.set_port(
            port(svc, 8080, IPPROTO_TCP),
            PortTarget {
                server_port_be: 80u16.to_be(),
                _pad: 0,
            },
        )
        .unwrap();
        dp.set_port(
            port(svc, 5353, IPPROTO_UDP),
            PortTarget {
                server_port_be: 53u16.to_be(),
                _pad: 0,
            },
        )
        .unwrap();
    }
    let local = Service {
        backend_ip_be: be(B_IP),
        backend_vpc_id: 2,
        ifindex: nics.b,
        remote_node_be: 0,
        backend_mac: B_MAC,
        location: SVC_LOCAL,
        tcp_proxy: TCP_PROXY_CLOSE,
    };
    dp.set_service(3, local).unwrap();
    dp.set_service(
        5,
        Service {
            location: SVC_REMOTE,
            ifindex: 0,
            remote_node_be: be([192, 168, 50, 2]),
            ..local
        },
    )
    .unwrap();
}

pub fn port(service_id: u32, client_port: u16, proto: u8) -> PortKey {
    PortKey {
        service_id,
        client_port_be: client_port.to_be(),
        proto,
        _pad: 0,
    }
}

/// The ports of the namespace tests' service `service_id`: 8080→80/TCP and 5353→53/UDP.
pub fn set_web_ports(dp: &mut Dataplane, service_id: u32) {
    for (client, server, proto) in [(8080u16, 80u16, IPPROTO_TCP), (5353, 53, IPPROTO_UDP)] {
        dp.set_port(
            port(service_id, client, proto),
            PortTarget {
                server_port_be: server.to_be(),
                _pad: 0,
            },
        )
        .unwrap();
    }
}

/// The big-endian 16-bit field (a port) at byte `at` of frame `f`.
pub fn port_of(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// TCP flags for [`tcp`].
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

#[allow(clippy::too_many_arguments)]
pub fn tcp(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(1);
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn udp(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn icmp_echo(smac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, VMAC)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(9, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"hello endpoint").unwrap();
    out
}

/// ICMP destination unreachable / fragmentation needed (MTU `mtu`) from `src` to `dst`,
/// quoting the first 28 bytes of `quoted` (an Ethernet frame).
pub fn icmp_frag_needed(
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    quoted: &[u8],
    mtu: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, VMAC)
        .ipv4(src, dst, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ));
    let inner = &quoted[14..14 + 28];
    let mut out = Vec::new();
    b.write(&mut out, inner).unwrap();
    out
}

/// The forward conntrack key of `src:sport` in VPC 1 to `dst:dport`.
pub fn flow_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(1, be(src), be(dst), sport.to_be(), dport.to_be(), proto)
}

/// Makes flow `key` look idle for `secs` seconds, its port claim as old (the CPU-safe
/// claim protocol never takes over a claim younger than `CLAIM_GUARD_S`). Relative to
/// the clock, so it holds on a machine that booted a moment ago (given `secs` of uptime).
pub fn age_flow(dp: &mut Dataplane, key: &FlowKey, secs: u64) {
    let now = crate::monotonic_ns();
    let back = secs * 1_000_000_000;
    assert!(now > back, "uptime shorter than {secs} s");
    let mut f = dp.flow(key).unwrap().expect("flow to age");
    let mut claim = dp.rev(&f.rev).unwrap().expect("its claim");
    // Only the claim's second changes: owner ids stay unique, as the protocol needs.
    let owner = ((now - back) / 1_000_000_000) << 32 | (f.owner & 0xffff_ffff);
    f.owner = owner;
    f.last_seen_ns = now - back;
    claim.owner = owner;
    dp.insert_rev(f.rev, claim).unwrap();
    dp.insert_flow(*key, f).unwrap();
}

/// Result of one run through a program.
pub struct Run {
    pub verdict: u32,
    pub out: Vec<u8>,
}

/// Runs `frame` through the TC program as if it arrived on `ifindex`.
pub fn run_tc(dp: &mut Dataplane, ifindex: u32, frame: &[u8]) -> Run {
    try_run_tc(dp, ifindex, frame).unwrap()
}

/// As [`run_tc`], but returns the kernel's refusal (the skb test run rejects some
/// malformed frames before the program sees them).
pub fn try_run_tc(
    dp: &mut Dataplane,
    ifindex: u32,
    frame: &[u8],
) -> Result<Run, aya::programs::ProgramError> {
    // struct __sk_buff: ifindex at byte 40; every other field zero.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let res = dp.tc_ingress().unwrap().test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(Run {
        verdict: res.return_value,
        out,
    })
}

/// Runs `frame` through the XDP program as if it arrived on `ifindex`.
pub fn run_xdp(dp: &mut Dataplane, ifindex: u32, frame: &[u8]) -> Run {
    // struct xdp_md: data_end (= frame length) at byte 4, ingress_ifindex at byte 12.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let res = dp
        .xdp()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .unwrap();
    out.truncate(res.data_size_out as usize);
    Run {
        verdict: res.return_value,
        out,
    }
}
