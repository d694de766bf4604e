//! Real traffic through an endpoint: consumer C and backend B in overlapping 10.0.0.0/24
//! VPCs, each a namespace joined to the node namespace by a veth whose node end carries
//! the TC program. Run with the consumer's checksum offload on and off.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use vpcep::dataplane::{Dataplane, Mode};
use vpcep_common::{endpoint::*, stats::Reason};
use vpcep_tests::{
    fastpath::{be, set_web_ports},
    packets, require_root,
};
use xtask::netns::Topology;

const C_MAC: &str = "02:00:00:00:00:02";
const B_MAC: &str = "02:00:00:00:00:05";
const VMAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];
const TRANSFER: usize = 8 << 20;

struct World {
    topo: Topology,
    dp: Dataplane,
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn world(accepted: bool, offload: bool) -> World {
    let mut topo = Topology::new().unwrap();
    topo.add_vm("tapc", "10.0.0.2/24", C_MAC).unwrap();
    topo.add_vm("tapb", "10.0.0.5/24", B_MAC).unwrap();
    // The backend reaches 198.19.128.0/17 through its gateway, which the node answers.
    topo.vms[1]
        .ns
        .ip(&["route", "add", "default", "via", "10.0.0.1"])
        .unwrap();
    if !offload {
        topo.vms[0]
            .ns
            .exec("ethtool", &["-K", "eth0", "tx", "off"])
            .unwrap();
    }
    let c_if = topo.node.ifindex("tapc").unwrap();
    let b_if = topo.node.ifindex("tapb").unwrap();
    let mut dp = topo
        .node
        .run(|| -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load()?;
            dp.attach("tapc", Mode::Tc)?;
            dp.attach("tapb", Mode::Tc)?;
            Ok(dp)
        })
        .unwrap()
        .unwrap();
    dp.set_node(NodeConfig {
        snat_ip_be: be([198, 19, 128, 10]),
        port_lo: 20000,
        port_hi: 60000,
        vmac: VMAC,
        toa_kind: 0,
        _pad: 0,
        timeouts: Timeouts::default(),
    })
    .unwrap();
    let nic = |vpc_id, ip, m| LocalNic {
        vpc_id,
        ip_be: be(ip),
        gateway_be: be([10, 0, 0, 1]),
        mac: mac(m),
        _pad: [0; 2],
    };
    dp.set_local_nic(c_if, nic(1, [10, 0, 0, 2], C_MAC))
        .unwrap();
    dp.set_local_nic(b_if, nic(2, [10, 0, 0, 5], B_MAC))
        .unwrap();
    dp.set_service(
        3,
        Service {
            backend_ip_be: be([10, 0, 0, 5]),
            backend_vpc_id: 2,
            ifindex: b_if,
            remote_node_be: 0,
            backend_mac: mac(B_MAC),
            location: SVC_LOCAL,
            tcp_proxy: TCP_PROXY_CLOSE,
        },
    )
    .unwrap();
    set_web_ports(&mut dp, 3);
    set_accepted(&mut dp, accepted);
    World { topo, dp }
}

fn set_accepted(dp: &mut Dataplane, accepted: bool) {
    let flags = EP_PERMITTED | if accepted { EP_ACCEPTED } else { 0 };
    dp.set_endpoint(
        EndpointKey {
            vpc_id: 1,
            ip_be: be([10, 0, 0, 100]),
        },
        Endpoint {
            endpoint_id: 7,
            service_id: 3,
            marker_id: 1007,
            flags,
            epoch: 0,
            generation: 1,
            ..Endpoint::default()
        },
    )
    .unwrap();
}

/// Starts a TCP server in the backend: answers one HTTP request with `TRANSFER` bytes and
/// reports the peer address it saw.
fn backend_http(w: &World) -> mpsc::Receiver<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let path = format!("/run/netns/{}", w.topo.vms[1].ns.name());
    std::thread::spawn(move || {
        vpcep_tests::enter_netns(&path);
        let l = TcpListener::bind("10.0.0.5:80").unwrap();
        ready_tx.send(()).unwrap();
        if let Ok((mut s, peer)) = l.accept() {
            let _ = tx.send(peer);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body: Vec<u8> = (0..TRANSFER).map(|i| (i % 251) as u8).collect();
            let _ = s.write_all(
                format!("HTTP/1.0 200 OK\r\nContent-Length: {TRANSFER}\r\n\r\n").as_bytes(),
            );
            let _ = s.write_all(&body);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    rx
}

fn http_get(w: &World) -> std::io::Result<Vec<u8>> {
    w.topo.vms[0]
        .ns
        .run(|| -> std::io::Result<Vec<u8>> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })
        .unwrap()
}

/// Captures frames arriving at the backend's eth0 for `secs` (bounded), on a raw socket.
fn capture(w: &World, secs: u64) -> mpsc::Receiver<Vec<Vec<u8>>> {
    vpcep_tests::capture(w.topo.vms[1].ns.name(), secs, 20000)
}

/// A TCP/UDP checksum is right either fully, or — when the sender offloads it
/// (CHECKSUM_PARTIAL) — as the folded pseudo-header sum of the translated addresses.
fn checksum_ok(f: &[u8]) -> bool {
    if packets::verify_checksums(f).is_ok() {
        return true;
    }
    let ip = &f[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let proto = ip[9];
    let off = if proto == 6 { 16 } else { 6 };
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&((tot - ihl) as u16).to_be_bytes());
    let want = packets::ones_complement_sum(&pseudo);
    u16::from_be_bytes([ip[ihl + off], ip[ihl + off + 1]]) == want
}

fn tcp_through_endpoint(offload: bool) {
    require_root!();
    let w = world(true, offload);
    let peer = backend_http(&w);
    let cap = capture(&w, 4);
    let resp = http_get(&w).unwrap();
    let body_at = resp.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
    let body = &resp[body_at..];
    assert_eq!(body.len(), TRANSFER);
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "body corrupted"
    );
    let peer = peer.recv_timeout(Duration::from_secs(2)).unwrap();
    let SocketAddr::V4(p) = peer else {
        panic!("v6 peer")
    };
    assert!(
        in_snat_range(u32::from_ne_bytes(p.ip().octets())),
        "backend saw {peer}"
    );
    let frames = cap.recv_timeout(Duration::from_secs(10)).unwrap();
    let from_snat: Vec<_> = frames
        .iter()
        .filter(|f| f.len() > 34 && f[26..30] == [198, 19, 128, 10])
        .collect();
    assert!(!from_snat.is_empty(), "no translated frames captured");
    let bad = from_snat.iter().filter(|f| !checksum_ok(f)).count();
    assert_eq!(
        bad,
        0,
        "{bad} of {} captured frames have bad checksums",
        from_snat.len()
    );
    if !offload {
        assert!(
            from_snat
                .iter()
                .all(|f| packets::verify_checksums(f).is_ok())
        );
    }
    let stats = w.dp.stats().unwrap();
    assert!(stats.contains_key(&("tc-ingress", Reason::FwdNewFlow.name())));
    assert!(stats.contains_key(&("tc-ingress", Reason::RevReply.name())));
    let c = w.dp.endpoint_counters(7).unwrap();
    assert_eq!(c.new_flows, 1);
    assert!(c.bytes as usize > TRANSFER);
}

#[test]
fn tcp_bulk_through_endpoint_with_offload() {
    tcp_through_endpoint(true);
}

#[test]
fn tcp_bulk_through_endpoint_without_offload() {
    tcp_through_endpoint(false);
}

#[test]
fn udp_request_response_and_ping() {
    require_root!();
    let w = world(true, true);
    let (tx, rx) = mpsc::channel();
    let path = format!("/run/netns/{}", w.topo.vms[1].ns.name());
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        vpcep_tests::enter_netns(&path);
        let s = UdpSocket::bind("10.0.0.5:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], peer);
            let _ = tx.send(peer);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let answer = w.topo.vms[0]
        .ns
        .run(|| -> std::io::Result<Vec<u8>> {
            let s = UdpSocket::bind("10.0.0.2:0")?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(b"dns?", "10.0.0.100:5353")?;
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf)?;
            assert_eq!(from.to_string(), "10.0.0.100:5353");
            Ok(buf[..n].to_vec())
        })
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"dns?");
    let peer = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(peer.to_string().starts_with("198.19.128.10:"), "{peer}");
    w.topo.vms[0]
        .ns
        .exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.0.0.100"])
        .unwrap();
}

#[test]
fn pending_endpoint_passes_nothing_and_accept_opens_it() {
    require_root!();
    let mut w = world(false, true);
    let _peer = backend_http(&w);
    assert!(
        http_get(&w).is_err(),
        "pending endpoint let a connection through"
    );
    set_accepted(&mut w.dp, true);
    let resp = http_get(&w).unwrap();
    assert!(resp.starts_with(b"HTTP/1.0 200 OK"));
}

#[test]
fn rejecting_mid_transfer_cuts_it() {
    require_root!();
    let mut w = world(true, true);
    let _peer = backend_http(&w);
    let (tx, rx) = mpsc::channel();
    vpcep_tests::spawn_in(w.topo.vms[0].ns.name(), move || {
        let r = (|| -> std::io::Result<usize> {
            let mut s = TcpStream::connect("10.0.0.100:8080")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut total = 0;
            let mut buf = vec![0u8; 65536];
            // Read slowly so the transfer is still running when the endpoint is rejected.
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n;
                std::thread::sleep(Duration::from_millis(20));
            }
        })();
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(300));
    set_accepted(&mut w.dp, false);
    let r = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    // A read timeout (Err) also means the transfer was cut.
    if let Ok(n) = r {
        assert!(n < TRANSFER, "transfer completed despite the rejection");
    }
    let stats = w.dp.stats().unwrap();
    assert!(
        stats.contains_key(&("tc-ingress", Reason::DropNotAccepted.name())),
        "{stats:?}"
    );
}

#[test]
fn fragmentation_needed_from_backend_reaches_consumer_and_sets_path_mtu() {
    use std::os::fd::AsRawFd;
    require_root!();
    let w = world(true, true);
    // Backend side: capture the translated datagram as it arrives.
    let (ready_tx, ready_rx) = mpsc::channel();
    let capture = vpcep_tests::spawn_in(w.topo.vms[1].ns.name(), move || -> Option<Vec<u8>> {
        // SAFETY: raw socket calls with valid buffers; fd closed below.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                (libc::ETH_P_IP as u16).to_be() as i32,
            );
            assert!(fd >= 0);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            ready_tx.send(()).unwrap();
            let mut buf = vec![0u8; 2048];
            let mut found = None;
            for _ in 0..25 {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                // An IPv4 UDP datagram from the SNAT address to the backend's port 53.
                if n >= 28
                    && buf[9] == 17
                    && buf[12..16] == [198, 19, 128, 10]
                    && buf[22..24] == [0, 53]
                {
                    found = Some(buf[..28].to_vec());
                    break;
                }
            }
            libc::close(fd);
            found
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // Consumer side: a connected UDP socket with path-MTU discovery on.
    let (sock_tx, sock_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let consumer = vpcep_tests::spawn_in(w.topo.vms[0].ns.name(), move || -> i32 {
        let s = UdpSocket::bind("10.0.0.2:0").unwrap();
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const on).cast(),
                4,
            );
        }
        s.connect("10.0.0.100:5353").unwrap();
        s.send(&[7u8; 1200]).unwrap();
        sock_tx.send(()).unwrap();
        // Wait for the error to be sent, then read the path MTU the kernel learned.
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        let mut mtu: libc::c_int = 0;
        let mut len = 4u32;
        for _ in 0..20 {
            // SAFETY: valid out pointers.
            unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU,
                    (&raw mut mtu).cast(),
                    &mut len,
                );
            }
            if mtu == 1400 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        mtu
    });
    sock_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let quoted = capture
        .join()
        .unwrap()
        .expect("translated datagram not seen at the backend");
    // Backend side: the router/host says "fragmentation needed, MTU 1400" to the sender.
    let sent = vpcep_tests::spawn_in(w.topo.vms[1].ns.name(), move || -> std::io::Result<()> {
        let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&1400u16.to_be_bytes());
        icmp.extend_from_slice(&quoted);
        let c = !packets::ones_complement_sum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: raw ICMP socket; valid buffers; fd closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes([198, 19, 128, 10]);
            let rc = libc::sendto(
                fd,
                icmp.as_ptr().cast(),
                icmp.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc < 0 { Err(err) } else { Ok(()) }
        }
    });
    sent.join().unwrap().unwrap();
    done_tx.send(()).unwrap();
    let mtu = consumer.join().unwrap();
    assert_eq!(mtu, 1400, "consumer's path MTU to the endpoint");
    let stats = w.dp.stats().unwrap();
    assert!(
        stats.contains_key(&("tc-ingress", Reason::RevIcmpError.name())),
        "{stats:?}"
    );
}
