//! Remote backends through the VXLAN overlay, with real traffic: three node namespaces on
//! an underlay bridge, consumers on nodes 1 and 2 (each 10.0.0.2 in its own VPC), the
//! backend on node 3 (10.0.0.5, a third VPC — all three 10.0.0.0/24). The maps are filled
//! directly here, as an agent would; each node has its own maps and SNAT address.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use vpcep::dataplane::{Dataplane, Mode};
use vpcep_common::{endpoint::*, stats::Reason};
use vpcep_tests::{
    fastpath::{be, set_web_ports},
    packets, require_root,
};
use xtask::netns::{Cluster, NetNs, VXLAN_IF};

const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const VMAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];
const EP: [u8; 4] = [10, 0, 0, 100];
/// VNIs: consumer VPCs on nodes 1 and 2, provider VPC on node 3.
const VNI_C1: u32 = 101;
const VNI_C2: u32 = 102;
const VNI_B: u32 = 200;
const BIG: usize = 8 << 20;

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn snat(i: usize) -> [u8; 4] {
    [198, 19, 128, 10 + i as u8]
}

fn underlay(i: usize) -> [u8; 4] {
    [192, 168, 50, 1 + i as u8]
}

struct World {
    cluster: Cluster,
    dps: Vec<Dataplane>,
}

/// Loads and attaches the programs in node `i` (TC on its VM NIC, the tunnel program on
/// its VXLAN device) and fills what every node has: node config, overlay, SNAT owners.
fn node_dp(c: &Cluster, i: usize, vm_if: &str) -> Dataplane {
    let vm_if = vm_if.to_owned();
    let ifx = c.nodes[i].node.ifindex(VXLAN_IF).unwrap();
    let mut dp = c.nodes[i]
        .node
        .run(move || -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load()?;
            dp.attach(&vm_if, Mode::Tc)?;
            dp.attach_tunnel(VXLAN_IF)?;
            Ok(dp)
        })
        .unwrap()
        .unwrap();
    dp.set_node(NodeConfig {
        snat_ip_be: be(snat(i)),
        port_lo: 20000,
        port_hi: 60000,
        vmac: VMAC,
        toa_kind: 0,
        _pad: 0,
        timeouts: Timeouts::default(),
    })
    .unwrap();
    dp.set_tunnel(TunnelConfig {
        ifindex: ifx,
        inner_mtu: 1500 - VXLAN_OVERHEAD,
        _pad: [0; 2],
    })
    .unwrap();
    for n in 0..3 {
        dp.set_snat_owner(be(snat(n)), be(underlay(n))).unwrap();
    }
    dp
}

fn local_nic(vpc_id: u32, ip: [u8; 4], mac: [u8; 6]) -> LocalNic {
    LocalNic {
        vpc_id,
        ip_be: be(ip),
        gateway_be: be([10, 0, 0, 1]),
        mac,
        _pad: [0; 2],
    }
}

fn set_endpoint(dp: &mut Dataplane, vni: u32, id: u32, accepted: bool) {
    let flags = EP_PERMITTED | if accepted { EP_ACCEPTED } else { 0 };
    dp.set_endpoint(
        EndpointKey {
            vpc_id: vni,
            ip_be: be(EP),
        },
        Endpoint {
            endpoint_id: id,
            service_id: 3,
            marker_id: 1000 + id,
            flags,
            epoch: 0,
            generation: 1,
            ..Endpoint::default()
        },
    )
    .unwrap();
}

fn world(offload: bool) -> World {
    world_in_mode(offload, TCP_PROXY_CLOSE)
}

/// The world with the consumers' service in mode `tcp_proxy` (each endpoint's template
/// on its node).
fn world_in_mode(offload: bool, tcp_proxy: u8) -> World {
    let mut cluster = Cluster::new(3).unwrap();
    for (i, (ip, mac)) in [
        ("10.0.0.2/24", C_MAC),
        ("10.0.0.2/24", C_MAC),
        ("10.0.0.5/24", B_MAC),
    ]
    .into_iter()
    .enumerate()
    {
        let host_if = if i < 2 { "tapc" } else { "tapb" };
        let vm = cluster.nodes[i].add_vm(host_if, ip, &mac_str(mac)).unwrap();
        vm.ns
            .ip(&["route", "add", "default", "via", "10.0.0.1"])
            .unwrap();
        if !offload {
            vm.ns.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
        }
    }
    if !offload {
        for n in &cluster.nodes {
            n.node.exec("ethtool", &["-K", "ul0", "tx", "off"]).unwrap();
        }
    }
    let mut dps = Vec::new();
    for (i, vni) in [VNI_C1, VNI_C2].into_iter().enumerate() {
        let mut dp = node_dp(&cluster, i, "tapc");
        let tapc = cluster.nodes[i].node.ifindex("tapc").unwrap();
        dp.set_local_nic(tapc, local_nic(vni, [10, 0, 0, 2], C_MAC))
            .unwrap();
        dp.set_service(
            3,
            Service {
                backend_ip_be: be([10, 0, 0, 5]),
                backend_vpc_id: VNI_B,
                ifindex: 0,
                remote_node_be: be(underlay(2)),
                backend_mac: B_MAC,
                location: SVC_REMOTE,
                tcp_proxy,
            },
        )
        .unwrap();
        set_web_ports(&mut dp, 3);
        let id = 7 + i as u32;
        let t = ProxyTemplate::new(
            &format!("endpoint-{id}"),
            1000 + id,
            &format!("vpc-{vni}"),
            vni,
        );
        dp.set_proxy_template(id, t.unwrap()).unwrap();
        set_endpoint(&mut dp, vni, id, true);
        dps.push(dp);
    }
    let mut dp = node_dp(&cluster, 2, "tapb");
    let tapb = cluster.nodes[2].node.ifindex("tapb").unwrap();
    dp.set_local_nic(tapb, local_nic(VNI_B, [10, 0, 0, 5], B_MAC))
        .unwrap();
    dp.set_local_addr(
        EndpointKey {
            vpc_id: VNI_B,
            ip_be: be([10, 0, 0, 5]),
        },
        LocalAddr {
            ifindex: tapb,
            mac: B_MAC,
            _pad: [0; 2],
        },
    )
    .unwrap();
    dps.push(dp);
    World { cluster, dps }
}

/// Runs `f` on a thread of its own inside namespace `ns` (for servers that outlive a call).
fn spawn_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    vpcep_tests::spawn_in(ns.name(), f)
}

/// The backend: TCP on :80 (a request for `/big` gets BIG bytes, anything else a short
/// body) recording each peer, and a UDP echo on :53; both until `stop` or 60 s.
fn backend(w: &World, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<SocketAddr>>> {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let name = w.cluster.nodes[2].vms[0].ns.name();
    let p = peers.clone();
    vpcep_tests::tcp_server(name, "10.0.0.5:80", stop.clone(), 60, move |mut c, peer| {
        p.lock().unwrap().push(peer);
        let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        let body: Vec<u8> = if buf[..n].starts_with(b"GET /big") {
            (0..BIG).map(|i| (i % 251) as u8).collect()
        } else {
            b"hello".to_vec()
        };
        let _ = c.write_all(&body);
    });
    vpcep_tests::udp_echo_server(name, "10.0.0.5:53", stop, 60);
    peers
}

fn get(ns: &NetNs, path: &'static str) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    spawn_in(ns, move || {
        let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
}

/// A datagram of `len` bytes to the endpoint and its echo (a few tries).
fn udp_echo(ns: &NetNs, len: usize) -> bool {
    ns.run(move || {
        let s = UdpSocket::bind("10.0.0.2:0").unwrap();
        s.connect("10.0.0.100:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let mut buf = vec![0u8; 4096];
        (0..3).any(|_| {
            let _ = s.send(&msg);
            matches!(s.recv(&mut buf), Ok(n) if buf[..n] == msg[..])
        })
    })
    .unwrap()
}

/// `Ip: FragCreates` and `Ip: ReasmReqds` of a namespace.
fn frag_counters(ns: &NetNs) -> (u64, u64) {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap())
        .unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let field = |want: &str| -> u64 {
        let i = names.split_whitespace().position(|n| n == want).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    (field("FragCreates"), field("ReasmReqds"))
}

fn count(dp: &Dataplane, r: Reason) -> u64 {
    dp.stats()
        .unwrap()
        .get(&("tc-ingress", r.name()))
        .map_or(0, |c| c.packets)
}

#[test]
fn two_consumer_nodes_one_backend_node() {
    require_root!();
    let w = world(true);
    let stop = Arc::new(AtomicBool::new(false));
    let peers = backend(&w, stop.clone());
    let c1 = &w.cluster.nodes[0].vms[0].ns;
    let c2 = &w.cluster.nodes[1].vms[0].ns;
    let b = &w.cluster.nodes[2].vms[0].ns;
    let before: Vec<_> = w
        .cluster
        .nodes
        .iter()
        .map(|n| frag_counters(&n.node))
        .collect();
    let b_before = frag_counters(b);

    // A large transfer to both consumers at once, and UDP alongside.
    let (g1, g2) = (get(c1, "/big"), get(c2, "/big"));
    assert!(udp_echo(c1, 100), "UDP from node 1");
    assert!(udp_echo(c2, 100), "UDP from node 2");
    for (n, g) in [(1, g1), (2, g2)] {
        let resp = g
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("consumer {n}: {e}"));
        assert_eq!(resp.len(), BIG, "consumer {n} got {} bytes", resp.len());
        assert!(
            resp.iter().enumerate().all(|(i, x)| *x == (i % 251) as u8),
            "consumer {n}: body corrupted"
        );
    }
    // The backend saw each consumer node's SNAT address.
    let seen: std::collections::BTreeSet<_> = peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| match p {
            SocketAddr::V4(a) => a.ip().octets(),
            SocketAddr::V6(_) => panic!("v6 peer"),
        })
        .collect();
    assert_eq!(seen, [snat(0), snat(1)].into_iter().collect());
    // MSS clamping: no TCP segment needed fragmenting, on the underlay or in the VM.
    for (i, n) in w.cluster.nodes.iter().enumerate() {
        assert_eq!(
            frag_counters(&n.node),
            before[i],
            "fragments on node {}",
            i + 1
        );
    }
    assert_eq!(frag_counters(b), b_before, "the backend reassembled");
    // A datagram as large as the VM's MTU allows still arrives whole (the underlay
    // fragments and reassembles it; the VMs never see a fragment).
    assert!(
        udp_echo(c1, 1472),
        "a 1472-byte datagram through the overlay"
    );
    assert!(frag_counters(&w.cluster.nodes[0].node).0 > before[0].0);
    assert_eq!(frag_counters(b).1, b_before.1);

    let (d1, d3) = (&w.dps[0], &w.dps[2]);
    assert!(count(d1, Reason::FwdNewFlow) >= 2);
    assert!(
        count(d1, Reason::RevReply) > 0,
        "replies translated on node 1"
    );
    assert!(count(d3, Reason::TunnelDeliver) > 0);
    assert!(count(d3, Reason::RevToOwner) > 0);
    assert!(w.dps[1].endpoint_counters(8).unwrap().bytes as usize > BIG);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn reject_cuts_flows_on_both_consumer_nodes() {
    require_root!();
    let mut w = world(true);
    let stop = Arc::new(AtomicBool::new(false));
    backend(&w, stop.clone());
    let socks: Vec<UdpSocket> = (0..2)
        .map(|i| {
            w.cluster.nodes[i].vms[0]
                .ns
                .run(|| {
                    let s = UdpSocket::bind("10.0.0.2:0").unwrap();
                    s.connect("10.0.0.100:5353").unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    s
                })
                .unwrap()
        })
        .collect();
    let ping = |s: &UdpSocket| {
        let mut buf = [0u8; 16];
        (0..3).any(|_| {
            let _ = s.send(b"ping");
            matches!(s.recv(&mut buf), Ok(4))
        })
    };
    assert!(socks.iter().all(ping), "flows before the rejection");
    for (i, vni) in [VNI_C1, VNI_C2].into_iter().enumerate() {
        set_endpoint(&mut w.dps[i], vni, 7 + i as u32, false);
    }
    assert!(!socks.iter().any(ping), "a flow survived the rejection");
    for i in 0..2 {
        assert!(count(&w.dps[i], Reason::DropNotAccepted) > 0);
    }
    stop.store(true, Ordering::Relaxed);
}

/// A VXLAN packet sent from node 1's underlay address to node 3, as another node would.
fn vxlan_to_node3(w: &World, vni: u32, inner: Vec<u8>) {
    vxlan(w, 0, 2, vni, inner);
}

/// A VXLAN packet from node `from`'s underlay address to node `to`.
fn vxlan(w: &World, from: usize, to: usize, vni: u32, inner: Vec<u8>) {
    let (src, dst) = (underlay(from), underlay(to));
    w.cluster.nodes[from]
        .node
        .run(move || {
            let s = UdpSocket::bind((std::net::Ipv4Addr::from(src), 0)).unwrap();
            let mut pkt = vec![0x08, 0, 0, 0];
            pkt.extend_from_slice(&(vni << 8).to_be_bytes());
            pkt.extend_from_slice(&inner);
            s.send_to(&pkt, (std::net::Ipv4Addr::from(dst), 4789))
                .unwrap();
        })
        .unwrap();
}

fn wait_count(dp: &Dataplane, r: Reason, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while count(dp, r) < want {
        assert!(Instant::now() < deadline, "{} not counted", r.name());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_overlay_accepts_only_what_the_owning_node_sends() {
    require_root!();
    let mut w = world(true);
    let stop = Arc::new(AtomicBool::new(false));
    backend(&w, stop.clone());
    let udp_frame = |src: [u8; 4], dst: [u8; 4]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(VMAC, B_MAC)
            .ipv4(src, dst, 64)
            .udp(40000, 53)
            .write(&mut out, b"x")
            .unwrap();
        out
    };
    // Node 1 may speak for its own SNAT address, not for node 2's.
    vxlan(&w, 0, 2, VNI_B, udp_frame(snat(1), [10, 0, 0, 5]));
    wait_count(&w.dps[2], Reason::DropTunnelNotOwner, 1);
    assert_eq!(count(&w.dps[2], Reason::TunnelDeliver), 0);
    vxlan(&w, 0, 2, VNI_B, udp_frame(snat(0), [10, 0, 0, 5]));
    wait_count(&w.dps[2], Reason::TunnelDeliver, 1);

    // A live flow from node 1's consumer; an ICMP error about it through the tunnel is
    // taken only from the backend itself, not from another VM of the backend's node.
    let c1 = &w.cluster.nodes[0].vms[0].ns;
    assert!(udp_echo(c1, 100), "UDP from node 1");
    let (_, f) = w.dps[0]
        .flows()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.proto == IPPROTO_UDP)
        .expect("the UDP flow");
    let quoted = {
        let mut q = Vec::new();
        etherparse::PacketBuilder::ethernet2(B_MAC, VMAC)
            .ipv4(snat(0), [10, 0, 0, 5], 64)
            .udp(u16::from_be(f.rev.snat_port_be), 53)
            .write(&mut q, b"")
            .unwrap();
        q
    };
    let error_from = |src: [u8; 4]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(B_MAC, VMAC)
            .ipv4(src, snat(0), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, &quoted[14..])
            .unwrap();
        out
    };
    vxlan(&w, 2, 0, VNI_B, error_from([10, 0, 0, 9]));
    wait_count(&w.dps[0], Reason::DropTunnelWrongPeer, 1);
    assert_eq!(count(&w.dps[0], Reason::RevIcmpError), 0);
    vxlan(&w, 2, 0, VNI_B, error_from([10, 0, 0, 5]));
    wait_count(&w.dps[0], Reason::RevIcmpError, 1);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn unknown_vni_or_snat_address_from_the_tunnel_is_dropped_and_counted() {
    require_root!();
    let w = world(true);
    let d3 = &w.dps[2];
    let frame = |src: [u8; 4], dst: [u8; 4]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(VMAC, B_MAC)
            .ipv4(src, dst, 64)
            .udp(40000, 53)
            .write(&mut out, b"x")
            .unwrap();
        out
    };
    let wait = |r: Reason, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while count(d3, r) < want {
            assert!(Instant::now() < deadline, "{} not counted", r.name());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Unknown VNI: no local VM (99, 10.0.0.5).
    vxlan_to_node3(&w, 99, frame(snat(0), [10, 0, 0, 5]));
    wait(Reason::DropTunnelUnknownDst, 1);
    // A SNAT address that is not node 3's.
    vxlan_to_node3(&w, VNI_B, frame([10, 0, 0, 9], [198, 19, 128, 99]));
    wait(Reason::DropTunnelUnknownSnat, 1);
    // Node 3's own SNAT address with no flow behind it.
    vxlan_to_node3(&w, VNI_B, frame([10, 0, 0, 9], snat(2)));
    wait(Reason::DropNoReverseFlow, 1);
    // Not from a SNAT address: only translated traffic rides the overlay.
    vxlan_to_node3(&w, VNI_B, frame([10, 0, 0, 9], [10, 0, 0, 5]));
    wait(Reason::DropTunnelUnknownDst, 2);
    assert_eq!(count(d3, Reason::TunnelDeliver), 0);
}

/// Frames on node 3's underlay port during a transfer, with every sender's checksum
/// offload off: outer IPv4 and UDP checksums and the inner packet's verify in software.
#[test]
fn underlay_checksums_verify_in_software() {
    require_root!();
    let w = world(false);
    let stop = Arc::new(AtomicBool::new(false));
    backend(&w, stop.clone());
    let cap = vpcep_tests::capture(w.cluster.nodes[2].node.name(), 3, 5000);
    let body = get(&w.cluster.nodes[0].vms[0].ns, "/big")
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), BIG);
    let frames = cap.recv_timeout(Duration::from_secs(10)).unwrap();
    // VXLAN from node 1: outer UDP to 4789; inner frame after 14 + 20 + 8 + 8 bytes.
    let vxlan: Vec<_> = frames
        .iter()
        .filter(|f| f.len() > 50 + 34 && f[23] == 17 && f[36..38] == 4789u16.to_be_bytes())
        .collect();
    assert!(vxlan.len() > 10, "{} VXLAN frames captured", vxlan.len());
    for f in &vxlan {
        packets::verify_checksums(f).unwrap_or_else(|e| panic!("outer: {e}"));
        assert_ne!(f[40..42], [0, 0], "outer UDP checksum present");
        packets::verify_checksums(&f[50..]).unwrap_or_else(|e| panic!("inner: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
}

/// A consumer's ICMP error about a flow to a remote backend travels the overlay to that
/// backend, translated: the consumer closes its socket before the reply comes, so its own
/// kernel answers the reply with port unreachable, and the backend's kernel sees that error
/// quoting its own datagram (10.0.0.5:53 → node 1's SNAT address and port).
#[test]
fn a_consumers_icmp_error_reaches_the_remote_backend() {
    require_root!();
    let w = world(true);
    let b = w.cluster.nodes[2].vms[0].ns.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let backend = vpcep_tests::spawn_in(&b, move || {
        // SAFETY: a raw ICMP socket of our own, read with a timeout, closed below.
        let icmp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(
            icmp >= 0,
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt with a valid timeval on our socket.
        unsafe {
            libc::setsockopt(
                icmp,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let s = UdpSocket::bind("10.0.0.5:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        let (_, peer) = s.recv_from(&mut buf).unwrap();
        // By now the consumer's socket is closed.
        std::thread::sleep(Duration::from_millis(300));
        s.send_to(b"late reply", peer).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut quoted = None;
        while quoted.is_none() && Instant::now() < deadline {
            // SAFETY: recv into our buffer of its length.
            let n = unsafe { libc::recv(icmp, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 28 {
                continue;
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let (ty, code) = (buf[ihl], buf[ihl + 1]);
            let inner = &buf[ihl + 8..n as usize];
            if ty == 3 && code == 3 && inner.len() >= 28 {
                let iihl = usize::from(inner[0] & 0x0f) * 4;
                let src: [u8; 4] = inner[12..16].try_into().unwrap();
                let dst: [u8; 4] = inner[16..20].try_into().unwrap();
                let sport = u16::from_be_bytes([inner[iihl], inner[iihl + 1]]);
                let dport = u16::from_be_bytes([inner[iihl + 2], inner[iihl + 3]]);
                quoted = Some(((src, sport), (dst, dport), peer));
            }
        }
        // SAFETY: closing the socket opened above.
        unsafe { libc::close(icmp) };
        quoted
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    w.cluster.nodes[0].vms[0]
        .ns
        .run(|| {
            let s = UdpSocket::bind("10.0.0.2:0").unwrap();
            s.send_to(b"ask", "10.0.0.100:5353").unwrap();
            // Closed at once: the reply finds no socket.
        })
        .unwrap();
    let quoted = backend.join().unwrap();
    let Some(((src, sport), (dst, dport), peer)) = quoted else {
        panic!(
            "no port-unreachable reached the backend (node 1 fwd_icmp_error {})",
            count(&w.dps[0], Reason::FwdIcmpError)
        );
    };
    assert_eq!((src, sport), ([10, 0, 0, 5], 53), "the quoted source");
    let SocketAddr::V4(peer) = peer else {
        panic!("v6 peer")
    };
    assert_eq!(
        (dst, dport),
        (snat(0), peer.port()),
        "the quoted destination"
    );
    assert_eq!(*peer.ip(), std::net::Ipv4Addr::from(snat(0)));
    assert!(count(&w.dps[0], Reason::FwdIcmpError) >= 1);
    assert!(count(&w.dps[2], Reason::TunnelDeliver) >= 2);
}

/// tcp_proxy through the overlay: consumers on nodes 1 and 2 (both 10.0.0.2, VPCs 101 and
/// 102) reach the backend on node 3, which decodes each PROXY header with the `ppp` crate
/// and checks a 2 MB stream each way; the SYN-ACK's MSS is clamped for the overlay and the
/// header, so nothing fragments.
#[test]
fn proxy_header_through_the_overlay() {
    require_root!();
    for offload in [true, false] {
        let w = world_in_mode(offload, TCP_PROXY_PROXY_VNI);
        let stop = Arc::new(AtomicBool::new(false));
        // The record goes out before the download, and the test waits for it: the
        // client can finish reading before the server's thread runs again.
        let (seen_tx, seen) = std::sync::mpsc::channel();
        const N: usize = 2 << 20;
        vpcep_tests::tcp_server(
            w.cluster.nodes[2].vms[0].ns.name(),
            "10.0.0.5:80",
            stop.clone(),
            60,
            move |mut c, _| {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut fixed = [0u8; 16];
                c.read_exact(&mut fixed).unwrap();
                let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
                let mut h = fixed.to_vec();
                h.resize(16 + len, 0);
                c.read_exact(&mut h[16..]).unwrap();
                let hdr = ppp::v2::Header::try_from(&h[..]).unwrap();
                let src = match hdr.addresses {
                    ppp::v2::Addresses::IPv4(a) => (a.source_address.octets(), a.source_port),
                    other => panic!("{other:?}"),
                };
                let tlvs: Vec<(u8, Vec<u8>)> = hdr
                    .tlvs()
                    .map(|t| t.unwrap())
                    .filter(|t| t.kind == PP2_TYPE_VPCEP)
                    .map(|t| (t.value[0], t.value[1..].to_vec()))
                    .collect();
                let mut up = vec![0u8; N];
                c.read_exact(&mut up).unwrap();
                let intact = up.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8);
                let _ = seen_tx.send((src, tlvs, intact));
                let down: Vec<u8> = (0..N).map(|i| (i % 241) as u8).collect();
                c.write_all(&down).unwrap();
            },
        );
        let before: Vec<_> = w
            .cluster
            .nodes
            .iter()
            .map(|n| frag_counters(&n.node))
            .collect();
        for node in 0..2 {
            let ns = &w.cluster.nodes[node].vms[0].ns;
            let port = ns
                .run(|| {
                    let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let up: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
                    s.write_all(&up).unwrap();
                    let mut down = vec![0u8; N];
                    s.read_exact(&mut down).unwrap();
                    assert!(down.iter().enumerate().all(|(i, b)| *b == (i % 241) as u8));
                    s.local_addr().unwrap().port()
                })
                .unwrap();
            let (src, tlvs, intact) = seen
                .recv_timeout(Duration::from_secs(10))
                .expect("the backend's record");
            assert!(intact, "offload {offload} node {node}: upload corrupted");
            assert_eq!(src, ([10, 0, 0, 2], port));
            let (id, vni) = (7 + node as u32, [VNI_C1, VNI_C2][node]);
            assert_eq!(
                tlvs,
                vec![
                    (PP2_VPCEP_ENDPOINT_ID, format!("endpoint-{id}").into_bytes()),
                    (PP2_VPCEP_MARKER_ID, (1000 + id).to_be_bytes().to_vec()),
                    (PP2_VPCEP_VPC_ID, format!("vpc-{vni}").into_bytes()),
                    (PP2_VPCEP_VNI, vni.to_be_bytes().to_vec()),
                ]
            );
        }
        for (i, n) in w.cluster.nodes.iter().enumerate() {
            assert_eq!(
                frag_counters(&n.node),
                before[i],
                "fragments on node {}",
                i + 1
            );
        }
        stop.store(true, Ordering::Relaxed);
    }
}
