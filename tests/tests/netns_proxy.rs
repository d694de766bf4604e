//! tcp_proxy with real traffic: two consumers in overlapping VPCs (both 10.0.0.2, VPCs 1
//! and 4) reach one backend (10.0.0.5, VPC 2) through their endpoints (10.0.0.100 each).
//! The backend runs haproxy from Debian with `accept-proxy`, which answers with the source
//! and destination it read from the PROXY header, and a Rust server that decodes the header
//! and its TLVs with the `ppp` crate. TOA is read by the backend's kernel (a sock_ops probe
//! on the backend server's cgroup) and from a capture at the backend.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ppp::v2;
use sha2::{Digest, Sha256};
use vpcep::dataplane::{Dataplane, Mode};
use vpcep_common::{endpoint::*, stats::ProxyEvent};
use vpcep_tests::{
    fastpath::{be, set_web_ports},
    harness::{TempDir, process::spawn_guarded},
    require_root,
};
use xtask::netns::Topology;

const A_MAC: &str = "02:00:00:00:00:02";
const B_MAC: &str = "02:00:00:00:00:03";
const S_MAC: &str = "02:00:00:00:00:05";
const VMAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];
const EP_A: &str = "5f0c1d4e-0a1b-4c2d-8e3f-000000000007";
const EP_B: &str = "5f0c1d4e-0a1b-4c2d-8e3f-000000000008";
const VPC_A: &str = "9a8b7c6d-1111-4222-8333-0000000000a1";
const VPC_B: &str = "9a8b7c6d-1111-4222-8333-0000000000a4";

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

/// The topology with service 3 in mode `tcp_proxy`; `offload` = the consumers' checksum
/// offload (CHECKSUM_PARTIAL) on.
fn world(tcp_proxy: u8, offload: bool) -> World {
    let mut topo = Topology::new().unwrap();
    topo.add_vm("tapa", "10.0.0.2/24", A_MAC).unwrap();
    topo.add_vm("tapb", "10.0.0.2/24", B_MAC).unwrap();
    topo.add_vm("taps", "10.0.0.5/24", S_MAC).unwrap();
    topo.vms[2]
        .ns
        .ip(&["route", "add", "default", "via", "10.0.0.1"])
        .unwrap();
    if !offload {
        for vm in &topo.vms[..2] {
            vm.ns.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
        }
    }
    let ifs: Vec<u32> = ["tapa", "tapb", "taps"]
        .iter()
        .map(|n| topo.node.ifindex(n).unwrap())
        .collect();
    let mut dp = topo
        .node
        .run(|| -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load()?;
            for n in ["tapa", "tapb", "taps"] {
                dp.attach(n, Mode::Tc)?;
            }
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
    dp.set_local_nic(ifs[0], nic(1, [10, 0, 0, 2], A_MAC))
        .unwrap();
    dp.set_local_nic(ifs[1], nic(4, [10, 0, 0, 2], B_MAC))
        .unwrap();
    dp.set_local_nic(ifs[2], nic(2, [10, 0, 0, 5], S_MAC))
        .unwrap();
    dp.set_service(
        3,
        Service {
            backend_ip_be: be([10, 0, 0, 5]),
            backend_vpc_id: 2,
            ifindex: ifs[2],
            remote_node_be: 0,
            backend_mac: mac(S_MAC),
            location: SVC_LOCAL,
            tcp_proxy,
        },
    )
    .unwrap();
    set_web_ports(&mut dp, 3);
    // haproxy's port, and the banner server's.
    for (client, server) in [(8081u16, 81u16), (2222, 22)] {
        dp.set_port(
            vpcep_tests::fastpath::port(3, client, IPPROTO_TCP),
            PortTarget {
                server_port_be: server.to_be(),
                _pad: 0,
            },
        )
        .unwrap();
    }
    for (vpc, id, marker, ep, vpc_id) in [(1, 7, 1007, EP_A, VPC_A), (4, 8, 1008, EP_B, VPC_B)] {
        dp.set_proxy_template(id, ProxyTemplate::new(ep, marker, vpc_id, vpc).unwrap())
            .unwrap();
        dp.set_endpoint(
            EndpointKey {
                vpc_id: vpc,
                ip_be: be([10, 0, 0, 100]),
            },
            Endpoint {
                endpoint_id: id,
                service_id: 3,
                marker_id: marker,
                flags: EP_PERMITTED | EP_ACCEPTED,
                epoch: 0,
                generation: 1,
                ..Endpoint::default()
            },
        )
        .unwrap();
    }
    World { topo, dp }
}

/// What the Rust backend read from a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    src: SocketAddr,
    dst: SocketAddr,
    endpoint_id: String,
    marker_id: u32,
    vpc_id: String,
    vni: Option<u32>,
}

/// Reads and decodes a PROXY v2 header from `s` with the `ppp` crate.
fn read_header(s: &mut TcpStream) -> Result<Seen, String> {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut all = fixed.to_vec();
    all.resize(16 + len, 0);
    s.read_exact(&mut all[16..]).map_err(|e| e.to_string())?;
    let h = v2::Header::try_from(&all[..]).map_err(|e| format!("{e:?}"))?;
    let (src, dst) = match h.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port)),
            SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port)),
        ),
        other => return Err(format!("addresses {other:?}")),
    };
    let mut seen = Seen {
        src,
        dst,
        endpoint_id: String::new(),
        marker_id: 0,
        vpc_id: String::new(),
        vni: None,
    };
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| format!("{e:?}"))?;
        if tlv.kind != PP2_TYPE_VPCEP {
            continue;
        }
        let (sub, v) = tlv.value.split_first().ok_or("empty vpcep TLV")?;
        match *sub {
            PP2_VPCEP_ENDPOINT_ID => seen.endpoint_id = String::from_utf8_lossy(v).into(),
            PP2_VPCEP_MARKER_ID => seen.marker_id = u32::from_be_bytes(v.try_into().unwrap()),
            PP2_VPCEP_VPC_ID => seen.vpc_id = String::from_utf8_lossy(v).into(),
            PP2_VPCEP_VNI => seen.vni = Some(u32::from_be_bytes(v.try_into().unwrap())),
            other => return Err(format!("unknown subtype {other}")),
        }
    }
    Ok(seen)
}

/// The Rust backend on 10.0.0.5:80: per connection, decodes the header, then reads
/// `upload` bytes (hashing them), then writes `download` bytes of [`pattern`]; reports what
/// it saw and the upload's hash.
fn ppp_backend(
    w: &World,
    stop: Arc<AtomicBool>,
    upload: usize,
    download: usize,
) -> mpsc::Receiver<Result<(Seen, [u8; 32]), String>> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    vpcep_tests::tcp_server(
        w.topo.vms[2].ns.name(),
        "10.0.0.5:80",
        stop,
        120,
        move |mut s, _peer| {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let r = (|| {
                let seen = read_header(&mut s)?;
                let mut h = Sha256::new();
                let mut left = upload;
                let mut buf = vec![0u8; 65536];
                while left > 0 {
                    let n = s
                        .read(&mut buf[..left.min(65536)])
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err(format!("upload ended {left} bytes short"));
                    }
                    h.update(&buf[..n]);
                    left -= n;
                }
                write_pattern(&mut s, download).map_err(|e| e.to_string())?;
                Ok((seen, h.finalize().into()))
            })();
            let _ = tx.lock().unwrap().send(r);
        },
    );
    rx
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Writes `n` bytes of [`pattern`].
fn write_pattern(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut off = 0;
    while off < n {
        let k = (n - off).min(buf.len());
        for (i, b) in buf[..k].iter_mut().enumerate() {
            *b = pattern(off + i);
        }
        s.write_all(&buf[..k])?;
        off += k;
    }
    Ok(())
}

/// The hash of `n` bytes of [`pattern`].
fn pattern_hash(n: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 65536];
    let mut off = 0;
    while off < n {
        let k = (n - off).min(buf.len());
        for (i, b) in buf[..k].iter_mut().enumerate() {
            *b = pattern(off + i);
        }
        h.update(&buf[..k]);
        off += k;
    }
    h.finalize().into()
}

/// From consumer `vm` to the endpoint: connects, writes `first` as the first write (its
/// size shapes the first segment), then the rest of `upload` bytes of [`pattern`], and
/// reads `download` bytes; returns its local port and the download's hash.
fn client(
    w: &World,
    vm: usize,
    first: usize,
    upload: usize,
    download: usize,
) -> Result<(u16, [u8; 32]), String> {
    w.topo.vms[vm]
        .ns
        .run(move || -> Result<(u16, [u8; 32]), String> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let port = s.local_addr().map_err(|e| e.to_string())?.port();
            let mut all = vec![0u8; upload];
            for (i, b) in all.iter_mut().enumerate() {
                *b = pattern(i);
            }
            let first = first.min(upload);
            s.write_all(&all[..first]).map_err(|e| e.to_string())?;
            let mut reader = s.try_clone().map_err(|e| e.to_string())?;
            let rd = std::thread::spawn(move || -> Result<[u8; 32], String> {
                let mut h = Sha256::new();
                let mut left = download;
                let mut buf = vec![0u8; 65536];
                while left > 0 {
                    let n = reader
                        .read(&mut buf[..left.min(65536)])
                        .map_err(|e| format!("download: {e} with {left} bytes left"))?;
                    if n == 0 {
                        return Err(format!("download ended {left} bytes short"));
                    }
                    h.update(&buf[..n]);
                    left -= n;
                }
                Ok(h.finalize().into())
            });
            s.write_all(&all[first..]).map_err(|e| e.to_string())?;
            let hash = rd.join().map_err(|_| "reader panicked".to_string())??;
            Ok((port, hash))
        })
        .unwrap()
}

fn expect_seen(seen: &Seen, vm: usize, port: u16, vni: bool) {
    let (ep, marker, vpc, n) = if vm == 0 {
        (EP_A, 1007, VPC_A, 1)
    } else {
        (EP_B, 1008, VPC_B, 4)
    };
    assert_eq!(
        *seen,
        Seen {
            src: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port)),
            dst: "10.0.0.100:8080".parse().unwrap(),
            endpoint_id: ep.into(),
            marker_id: marker,
            vpc_id: vpc.into(),
            vni: vni.then_some(n),
        }
    );
}

/// Every header mode and placement, both consumers: the backend decodes their own
/// address, endpoint id, marker id and VPC (and VNI for proxy_vni), and the stream
/// around the header is intact both ways.
fn header_modes(offload: bool) {
    require_root!();
    for mode in [
        TCP_PROXY_PROXY_OPEN,
        TCP_PROXY_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
        TCP_PROXY_OPEN,
        TCP_PROXY_PROXY_VNI,
        TCP_PROXY_PROXY_VNI | TCP_PROXY_F_FIRST_DATA,
    ] {
        let w = world(mode, offload);
        let stop = Arc::new(AtomicBool::new(false));
        let (up, down) = (300_000, 200_000);
        let rx = ppp_backend(&w, stop.clone(), up, down);
        for vm in [0, 1] {
            let (port, hash) = client(&w, vm, 100, up, down)
                .unwrap_or_else(|e| panic!("mode {mode:#x} consumer {vm}: {e}"));
            assert_eq!(
                hash,
                pattern_hash(down),
                "mode {mode:#x}: download corrupted"
            );
            let (seen, up_hash) = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap_or_else(|e| panic!("mode {mode:#x} consumer {vm}: backend: {e}"));
            assert_eq!(
                up_hash,
                pattern_hash(up),
                "mode {mode:#x}: upload corrupted"
            );
            expect_seen(
                &seen,
                vm,
                port,
                mode & TCP_PROXY_MODE_MASK == TCP_PROXY_PROXY_VNI,
            );
        }
        assert_eq!(w.dp.proxy_event(mode, ProxyEvent::HeaderSent).unwrap(), 2);
        stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn proxy_header_modes_with_offload() {
    header_modes(true);
}

#[test]
fn proxy_header_modes_without_offload() {
    header_modes(false);
}

/// haproxy with `accept-proxy` in the backend namespace; it answers each HTTP request with
/// the client and destination addresses it took from the PROXY header.
fn haproxy(w: &World, dir: &TempDir) -> vpcep_tests::harness::process::ChildGuard {
    let mut cmd = haproxy_command(w, dir, true);
    let g = spawn_guarded(&mut cmd);
    wait_haproxy(w);
    g
}

/// haproxy's command line: an HTTP frontend on 10.0.0.5:81 that answers with the source and
/// destination it saw (from the PROXY header with `accept_proxy`, from the socket without).
fn haproxy_command(w: &World, dir: &TempDir, accept_proxy: bool) -> std::process::Command {
    let cfg = dir.0.join("haproxy.cfg");
    let bind = if accept_proxy { " accept-proxy" } else { "" };
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 10.0.0.5:81{bind}\n  http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port] %[dst]:%[dst_port]\\n\"\n"
        ),
    )
    .unwrap();
    let mut cmd = w.topo.vms[2].ns.command("haproxy");
    cmd.args(["-db", "-f"]).arg(&cfg);
    cmd
}

fn wait_haproxy(w: &World) {
    vpcep_tests::harness::wait::wait_for(10, "haproxy listening", || {
        w.topo.vms[2]
            .ns
            .exec("ss", &["-ltn", "sport = :81"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(":81"))
            .unwrap_or(false)
    });
}

fn http_get(w: &World, vm: usize) -> (u16, String) {
    w.topo.vms[vm]
        .ns
        .run(|| {
            let addr: SocketAddr = "10.0.0.100:8081".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let port = s.local_addr().unwrap().port();
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            (port, out)
        })
        .unwrap()
}

#[test]
fn haproxy_reads_the_consumers_address() {
    require_root!();
    for mode in [
        TCP_PROXY_PROXY_OPEN,
        TCP_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
        TCP_PROXY_PROXY_VNI,
    ] {
        let w = world(mode, true);
        let dir = TempDir::new("haproxy");
        let _h = haproxy(&w, &dir);
        for vm in [0, 1] {
            let (port, resp) = http_get(&w, vm);
            assert!(
                resp.contains(&format!("10.0.0.2:{port} 10.0.0.100:8081")),
                "mode {mode:#x} consumer {vm}: {resp}"
            );
        }
    }
}

/// A server that speaks first (SSH, SMTP, MySQL): with the header on the handshake's ACK
/// the banner arrives; placed on first data, neither side would ever send.
#[test]
fn server_first_protocol_gets_its_banner() {
    require_root!();
    for (mode, works) in [
        (TCP_PROXY_PROXY_OPEN, true),
        (TCP_PROXY_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA, false),
    ] {
        let w = world(mode, true);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        vpcep_tests::tcp_server(
            w.topo.vms[2].ns.name(),
            "10.0.0.5:22",
            stop.clone(),
            30,
            move |mut s, _| {
                let r = read_header(&mut s);
                if r.is_ok() {
                    let _ = s.write_all(b"SSH-2.0-vpcep-test\r\n");
                }
                let _ = tx.lock().unwrap().send(r);
            },
        );
        let got = w.topo.vms[0]
            .ns
            .run(|| {
                let addr: SocketAddr = "10.0.0.100:2222".parse().unwrap();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = [0u8; 64];
                s.read(&mut buf).map(|n| buf[..n].to_vec()).ok()
            })
            .unwrap();
        if works {
            assert_eq!(got.as_deref(), Some(&b"SSH-2.0-vpcep-test\r\n"[..]));
            assert!(rx.recv_timeout(Duration::from_secs(2)).unwrap().is_ok());
        } else {
            assert!(
                got.as_ref().is_none_or(|g| g.is_empty()),
                "mode {mode:#x}: {got:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
    }
}

/// First segments of one byte, of a whole MSS and of a GSO train (offload on): the header
/// goes before each exactly once.
#[test]
fn first_segment_sizes() {
    require_root!();
    for mode in [
        TCP_PROXY_PROXY_OPEN,
        TCP_PROXY_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
    ] {
        let w = world(mode, true);
        let stop = Arc::new(AtomicBool::new(false));
        let (up, down) = (200_000, 10_000);
        let rx = ppp_backend(&w, stop.clone(), up, down);
        for first in [1, 1300, 65_000] {
            let (port, hash) = client(&w, 0, first, up, down)
                .unwrap_or_else(|e| panic!("mode {mode:#x} first {first}: {e}"));
            assert_eq!(hash, pattern_hash(down));
            let (seen, up_hash) = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap_or_else(|e| panic!("mode {mode:#x} first {first}: backend: {e}"));
            assert_eq!(up_hash, pattern_hash(up), "mode {mode:#x} first {first}");
            expect_seen(&seen, 0, port, false);
        }
        stop.store(true, Ordering::Relaxed);
    }
}

/// Impairs the backend's link both ways (this kernel has no netem). Backend → node:
/// nftables in the backend's egress hook drops 1 % of the packets at random, duplicates
/// 1 % and sends a random quarter through a slow HTB class, so that they overtake each
/// other. Node → backend (packets the program redirected, which netfilter's egress hook
/// does not see): the node end's HTB picks the slow class for a random quarter with a
/// classic BPF classifier, the backend's ingress hook drops 1 %, and the consumer's
/// segments are duplicated (1 %) as they leave it.
fn impair(w: &World) {
    let htb = |ns: &xtask::netns::NetNs, dev: &str| {
        let tc = |args: &str| ns.exec("tc", &args.split(' ').collect::<Vec<_>>()).unwrap();
        tc(&format!(
            "qdisc add dev {dev} root handle 1: htb default 10"
        ));
        tc(&format!(
            "class add dev {dev} parent 1: classid 1:10 htb rate 10gbit"
        ));
        tc(&format!(
            "class add dev {dev} parent 1: classid 1:20 htb rate 300mbit ceil 300mbit"
        ));
    };
    let nft = |ns: &xtask::netns::NetNs, hook: &str, dev: &str, rules: &[String]| {
        let run = |args: &[&str]| ns.exec("nft", args).unwrap();
        run(&["add", "table", "netdev", "vpcepimp"]);
        let h = format!("{{ type filter hook {hook} device {dev} priority 0 ; }}");
        run(&["add", "chain", "netdev", "vpcepimp", hook, &h]);
        for r in rules {
            let mut a = vec!["add", "rule", "netdev", "vpcepimp", hook];
            a.extend(r.split(' '));
            run(&a);
        }
    };
    let backend = &w.topo.vms[2].ns;
    htb(backend, "eth0");
    nft(
        backend,
        "egress",
        "eth0",
        &[
            "numgen random mod 100 == 0 counter drop".into(),
            "numgen random mod 100 == 0 counter dup to eth0".into(),
            "numgen random mod 4 == 0 counter meta priority set 1:20".into(),
        ],
    );
    nft(
        backend,
        "ingress",
        "eth0",
        &["numgen random mod 100 == 0 counter drop".into()],
    );
    htb(&w.topo.node, "taps");
    // ld rand; and #3; jeq #0 → 1:20, else 1:10.
    w.topo
        .node
        .exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                "taps",
                "parent",
                "1:",
                "bpf",
                "bytecode",
                "5,32 0 0 4294963256,84 0 0 3,21 0 1 0,6 0 0 65568,6 0 0 65552",
            ],
        )
        .unwrap();
    for vm in &w.topo.vms[..2] {
        nft(
            &vm.ns,
            "egress",
            "eth0",
            &["numgen random mod 100 == 0 counter dup to eth0".into()],
        );
    }
}

/// Packets the slow class of `dev` in `ns` sent.
fn slow_class_packets(ns: &xtask::netns::NetNs, dev: &str) -> u64 {
    let o = ns
        .exec(
            "tc",
            &["-s", "class", "show", "dev", dev, "classid", "1:20"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.split(" pkt")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The packet counts of the impairment rules, per direction: every one must have acted.
fn impaired(w: &World) -> Vec<u64> {
    let mut out = Vec::new();
    for ns in [&w.topo.vms[2].ns, &w.topo.vms[1].ns] {
        let o = ns
            .exec("nft", &["list", "table", "netdev", "vpcepimp"])
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        for w in text.split("counter packets ").skip(1) {
            out.push(w.split(' ').next().unwrap().parse().unwrap());
        }
    }
    out
}

/// Drops, once, the first segment to the backend that carries payload (the header segment
/// in first-ACK placement, the first data in first-data placement).
fn drop_first_payload(w: &World, quota: &str) {
    let ns = &w.topo.vms[2].ns;
    ns.exec("nft", &["add", "table", "inet", "vpcept"]).unwrap();
    ns.exec(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "vpcept",
            "in",
            "{ type filter hook input priority 0 ; }",
        ],
    )
    .unwrap();
    ns.exec(
        "nft",
        &[
            "add", "rule", "inet", "vpcept", "in", "tcp", "dport", "80", "ip", "length", ">", "80",
            "quota", "until", quota, "bytes", "counter", "drop",
        ],
    )
    .unwrap();
}

/// 100 MB each way through a lossy, reordering, duplicating link with SACK on; the hashes
/// match at both ends.
#[test]
fn stream_integrity_under_loss() {
    require_root!();
    for mode in [
        TCP_PROXY_PROXY_OPEN,
        TCP_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
    ] {
        let w = world(mode, true);
        impair(&w);
        let stop = Arc::new(AtomicBool::new(false));
        let size = 100 << 20;
        let rx = ppp_backend(&w, stop.clone(), size, size);
        let t = Instant::now();
        let (port, hash) =
            client(&w, 1, 1000, size, size).unwrap_or_else(|e| panic!("mode {mode:#x}: {e}"));
        assert_eq!(
            hash,
            pattern_hash(size),
            "mode {mode:#x}: download corrupted"
        );
        let (seen, up) = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(up, pattern_hash(size), "mode {mode:#x}: upload corrupted");
        expect_seen(&seen, 1, port, false);
        assert!(w.dp.proxy_event(mode, ProxyEvent::SackAdjusted).unwrap() > 0);
        // Dropped, duplicated, slowed (backend egress); dropped (backend ingress);
        // duplicated (consumer egress); slowed (node end, backend egress).
        let mut counts = impaired(&w);
        counts.push(slow_class_packets(&w.topo.node, "taps"));
        counts.push(slow_class_packets(&w.topo.vms[2].ns, "eth0"));
        assert!(
            counts.len() == 7 && counts.iter().all(|c| *c > 0),
            "{counts:?}"
        );
        eprintln!(
            "mode {mode:#x}: 2 × 100 MB in {:?}; impairments: {counts:?}",
            t.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
    }
}

/// The segment carrying the header is lost once: its retransmission carries it again,
/// and the backend reads it exactly once.
#[test]
fn lost_header_segment_is_sent_again() {
    require_root!();
    for mode in [
        TCP_PROXY_PROXY_OPEN,
        TCP_PROXY_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
    ] {
        let w = world(mode, true);
        // More than the first such segment, less than it and the next (the quota counts
        // the bytes of matching packets, and breaks once they reach it).
        drop_first_payload(
            &w,
            if mode & TCP_PROXY_F_FIRST_DATA != 0 {
                "1000"
            } else {
                "400"
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let rx = ppp_backend(&w, stop.clone(), 50_000, 50_000);
        let (port, hash) =
            client(&w, 0, 500, 50_000, 50_000).unwrap_or_else(|e| panic!("mode {mode:#x}: {e}"));
        assert_eq!(hash, pattern_hash(50_000));
        let (seen, up) = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(up, pattern_hash(50_000), "mode {mode:#x}");
        expect_seen(&seen, 0, port, false);
        let out = w.topo.vms[2]
            .ns
            .exec("nft", &["list", "table", "inet", "vpcept"])
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(w.dp.proxy_event(mode, ProxyEvent::HeaderResent).unwrap() >= 1);
        assert!(listing.contains("packets 1 "), "{listing}");
        stop.store(true, Ordering::Relaxed);
    }
}

/// TOA (toa_open, open): the handshake-completing ACK reaching the backend carries option
/// 254 with the consumer's own port and address; close adds nothing.
#[test]
fn toa_on_the_handshake_ack() {
    require_root!();
    for (mode, want) in [
        (TCP_PROXY_TOA_OPEN, true),
        (TCP_PROXY_OPEN, true),
        (TCP_PROXY_CLOSE, false),
    ] {
        let w = world(mode, true);
        let stop = Arc::new(AtomicBool::new(false));
        let rx = if mode == TCP_PROXY_TOA_OPEN || mode == TCP_PROXY_CLOSE {
            // No header: a plain server.
            let (tx, rx) = mpsc::channel();
            let tx = Mutex::new(tx);
            vpcep_tests::tcp_server(
                w.topo.vms[2].ns.name(),
                "10.0.0.5:80",
                stop.clone(),
                30,
                move |mut s, _| {
                    let mut buf = vec![0u8; 1000];
                    let ok = s.read_exact(&mut buf).is_ok()
                        && buf.iter().enumerate().all(|(i, b)| *b == pattern(i));
                    let _ = s.write_all(&[1u8; 1000]);
                    let _ = tx.lock().unwrap().send(ok);
                },
            );
            Some(rx)
        } else {
            let _ = ppp_backend(&w, stop.clone(), 1000, 1000);
            None
        };
        let cap = vpcep_tests::capture(w.topo.vms[2].ns.name(), 3, 200);
        let port = w.topo.vms[1]
            .ns
            .run(|| {
                let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let data: Vec<u8> = (0..1000).map(pattern).collect();
                s.write_all(&data).unwrap();
                let mut buf = vec![0u8; 1000];
                let _ = s.read_exact(&mut buf);
                s.local_addr().unwrap().port()
            })
            .unwrap();
        if let Some(rx) = rx {
            assert!(
                rx.recv_timeout(Duration::from_secs(5)).unwrap(),
                "mode {mode:#x}"
            );
        }
        let frames = cap.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut toa = Vec::new();
        for f in &frames {
            if f.len() < 14 + 20 + 20 || f[14 + 9] != 6 {
                continue;
            }
            let ihl = (f[14] & 0xf) as usize * 4;
            let t = &f[14 + ihl..];
            let flags = t[13];
            let hl = (t[12] >> 4) as usize * 4;
            let mut i = 20;
            while i + 1 < hl {
                match t[i] {
                    0 => break,
                    1 => i += 1,
                    k => {
                        let l = t[i + 1] as usize;
                        if k == TOA_KIND_DEFAULT && l == 8 {
                            let p = u16::from_be_bytes([t[i + 2], t[i + 3]]);
                            let ip = Ipv4Addr::new(t[i + 4], t[i + 5], t[i + 6], t[i + 7]);
                            toa.push((flags, p, ip));
                        }
                        if l < 2 {
                            break;
                        }
                        i += l;
                    }
                }
            }
        }
        if want {
            assert!(
                toa.iter().any(|(f, p, ip)| *f & 0x12 == 0x10
                    && *p == port
                    && *ip == Ipv4Addr::new(10, 0, 0, 2)),
                "mode {mode:#x}: no TOA on the ACK: {toa:?}"
            );
            assert!(w.dp.proxy_event(mode, ProxyEvent::ToaInserted).unwrap() >= 1);
        } else {
            assert!(toa.is_empty(), "{toa:?}");
        }
        stop.store(true, Ordering::Relaxed);
    }
}

/// A bulk writer for 3 s (128 KB writes, GSO trains) into a sink that reads the header and
/// discards the rest: the stream keeps moving, nothing is dropped.
#[test]
fn bulk_into_a_sink_keeps_moving() {
    require_root!();
    let w = world(TCP_PROXY_PROXY_OPEN, true);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    vpcep_tests::tcp_server(
        w.topo.vms[2].ns.name(),
        "10.0.0.5:80",
        stop.clone(),
        30,
        move |mut s, _| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let h = read_header(&mut s);
            let mut total = 0u64;
            let mut first_bad = None;
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if first_bad.is_none()
                    && let Some(i) =
                        (0..n).find(|i| buf[*i] != pattern((total as usize + i) % (128 * 1024)))
                {
                    first_bad = Some(total + i as u64);
                }
                total += n as u64;
            }
            assert_eq!(
                first_bad, None,
                "stream differs from byte {first_bad:?} of {total}"
            );
            let _ = tx.lock().unwrap().send((h, total));
        },
    );
    let written = w.topo.vms[0]
        .ns
        .run(|| {
            let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let buf: Vec<u8> = (0..128 * 1024).map(pattern).collect();
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < Duration::from_secs(3) {
                if let Err(e) = s.write_all(&buf) {
                    return Err(format!("after {n} bytes: {e}"));
                }
                n += buf.len() as u64;
            }
            Ok(n)
        })
        .unwrap();
    let stats = w.dp.stats().unwrap();
    let events: Vec<_> = ProxyEvent::ALL
        .iter()
        .map(|e| {
            (
                e.name(),
                w.dp.proxy_event(TCP_PROXY_PROXY_OPEN, *e).unwrap(),
            )
        })
        .collect();
    let written = written.unwrap_or_else(|e| panic!("{e}; {stats:?}; {events:?}"));
    let (h, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h.unwrap();
    assert_eq!(got, written, "{stats:?}");
    stop.store(true, Ordering::Relaxed);
}

/// A consumer that sends a PROXY header of its own gains nothing: the backend reads ours
/// first, and the forged one after it as plain data.
#[test]
fn a_consumers_own_header_is_just_data() {
    require_root!();
    let w = world(TCP_PROXY_PROXY_OPEN, true);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut forged = PP2_SIGNATURE.to_vec();
    forged.extend_from_slice(&[0x21, 0x11, 0, 12, 6, 6, 6, 6, 10, 0, 0, 5, 0, 1, 0, 80]);
    let want = forged.clone();
    vpcep_tests::tcp_server(
        w.topo.vms[2].ns.name(),
        "10.0.0.5:80",
        stop.clone(),
        30,
        move |mut s, _| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let h = read_header(&mut s);
            let mut rest = vec![0u8; want.len()];
            let ok = s.read_exact(&mut rest).is_ok() && rest == want;
            let _ = s.write_all(b"k");
            let _ = tx.lock().unwrap().send((h, ok));
        },
    );
    let port = w.topo.vms[0]
        .ns
        .run(move || {
            let addr: SocketAddr = "10.0.0.100:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&forged).unwrap();
            let mut k = [0u8; 1];
            s.read_exact(&mut k).unwrap();
            s.local_addr().unwrap().port()
        })
        .unwrap();
    let (h, ok) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    expect_seen(&h.unwrap(), 0, port, false);
    assert!(ok, "the forged header follows ours, byte for byte");
    stop.store(true, Ordering::Relaxed);
}

/// The TOA probe (`vpcep-ebpf/src/toa_probe.rs`) on a cgroup (v2) of its own, which the
/// backend server is started in; the server is stopped and the cgroup removed on drop.
struct ToaProbe {
    child: Option<vpcep_tests::harness::process::ChildGuard>,
    ebpf: aya::Ebpf,
    cgroup: std::path::PathBuf,
    mount: Option<TempDir>,
}

impl ToaProbe {
    /// Loads the probe looking for option `kind` and attaches it to a new cgroup.
    fn new(kind: u8) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let found = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
        });
        // No cgroup2 hierarchy mounted (a guest): mount one of our own.
        let (root, mount) = match found {
            Some(r) => (r, None),
            None => {
                let d = TempDir::new("cgroup2");
                let path = std::ffi::CString::new(d.0.to_str().unwrap()).unwrap();
                // SAFETY: valid NUL-terminated strings; no data argument.
                let rc = unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        path.as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                assert_eq!(rc, 0, "mount cgroup2: {}", std::io::Error::last_os_error());
                (d.0.clone(), Some(d))
            }
        };
        let cgroup = root.join(format!(
            "vpcep-toa-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&cgroup).unwrap();
        let mut ebpf = aya::EbpfLoader::new()
            .load(vpcep::dataplane::toa_probe_object())
            .unwrap();
        let mut k: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(ebpf.map_mut("TOA_PROBE_KIND").unwrap()).unwrap();
        k.set(0, kind as u32, 0).unwrap();
        let prog: &mut aya::programs::SockOps = ebpf
            .program_mut("vpcep_toa_probe")
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().unwrap();
        prog.attach(
            std::fs::File::open(&cgroup).unwrap(),
            aya::programs::CgroupAttachMode::Single,
        )
        .unwrap();
        Self {
            child: None,
            ebpf,
            cgroup,
            mount,
        }
    }

    /// Starts `cmd` inside the probe's cgroup: it joins before it execs, so its listening
    /// socket (and every connection it accepts) belongs to the cgroup.
    fn spawn(&mut self, mut cmd: std::process::Command) {
        use std::os::unix::{ffi::OsStrExt, process::CommandExt};
        let procs = std::ffi::CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .unwrap();
        // SAFETY: the hook only makes async-signal-safe calls (open, write, close).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, c"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        self.child = Some(spawn_guarded(&mut cmd));
    }

    /// What the backend's kernel saw: (remote address of the socket, the TOA option's port
    /// and address, or None when the ACK carried none).
    fn seen(&self) -> Vec<(SocketAddrV4, Option<(u16, Ipv4Addr)>)> {
        let m: aya::maps::HashMap<_, u64, [u8; 8]> =
            aya::maps::HashMap::try_from(self.ebpf.map("TOA_PROBE_SEEN").unwrap()).unwrap();
        let mut out: Vec<_> = m
            .iter()
            .map(|r| {
                let (k, v) = r.unwrap();
                // sock_ops gives the address in network order and the port in network order
                // in the upper half.
                let ip = Ipv4Addr::from(u32::from_be((k >> 32) as u32));
                let port = u32::from_be(k as u32) as u16;
                let toa = (v[1] == 8).then(|| {
                    (
                        u16::from_be_bytes([v[2], v[3]]),
                        Ipv4Addr::new(v[4], v[5], v[6], v[7]),
                    )
                });
                (SocketAddrV4::new(ip, port), toa)
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for ToaProbe {
    fn drop(&mut self) {
        // The server first: a cgroup with a process in it cannot be removed.
        drop(self.child.take());
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(d) = &self.mount {
            let path = std::ffi::CString::new(d.0.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path we mounted.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// TOA as the backend's own kernel receives it: the probe on the backend server's cgroup
/// reads the option on the ACK that completes each handshake, where `toa.ko` reads it
/// (`tcp_v4_syn_recv_sock`). Both overlapping consumers; the default kind, and a node's own
/// `toa_kind` (200) in `open` mode; `close` and `proxy_open` add nothing.
#[test]
fn toa_read_by_the_backends_kernel() {
    require_root!();
    for (mode, node_kind) in [
        (TCP_PROXY_TOA_OPEN, 0u8),
        (TCP_PROXY_OPEN, 200),
        (TCP_PROXY_PROXY_OPEN, 0),
        (TCP_PROXY_CLOSE, 0),
    ] {
        let mut w = world(mode, true);
        if node_kind != 0 {
            w.dp.set_node(NodeConfig {
                snat_ip_be: be([198, 19, 128, 10]),
                port_lo: 20000,
                port_hi: 60000,
                vmac: VMAC,
                toa_kind: node_kind,
                _pad: 0,
                timeouts: Timeouts::default(),
            })
            .unwrap();
        }
        let kind = if node_kind == 0 {
            TOA_KIND_DEFAULT
        } else {
            node_kind
        };
        let header = mode != TCP_PROXY_TOA_OPEN && mode != TCP_PROXY_CLOSE;
        let toa = mode & TCP_PROXY_MODE_MASK == TCP_PROXY_TOA_OPEN
            || mode & TCP_PROXY_MODE_MASK == TCP_PROXY_OPEN;
        let dir = TempDir::new("haproxy-toa");
        let mut probe = ToaProbe::new(kind);
        probe.spawn(haproxy_command(&w, &dir, header));
        wait_haproxy(&w);
        let mut want = Vec::new();
        let mut sources = Vec::new();
        for vm in [0, 1] {
            let (port, resp) = http_get(&w, vm);
            let body = resp.rsplit("\r\n\r\n").next().unwrap_or_default();
            let src = body
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if header {
                assert_eq!(src, format!("10.0.0.2:{port}"), "mode {mode:#x}: {resp}");
            } else {
                sources.push(
                    src.parse::<SocketAddrV4>()
                        .unwrap_or_else(|e| panic!("{resp}: {e}")),
                );
            }
            want.push(toa.then_some((port, Ipv4Addr::new(10, 0, 0, 2))));
        }
        let seen = probe.seen();
        assert_eq!(
            seen.len(),
            2,
            "mode {mode:#x}: one record per connection: {seen:?}"
        );
        for (remote, _) in &seen {
            assert!(
                remote.ip().octets()[..2] == [198, 19],
                "mode {mode:#x}: the backend's peer is the SNAT address: {seen:?}"
            );
        }
        if !header {
            // haproxy read its peer from the same sockets.
            let mut peers: Vec<SocketAddrV4> = seen.iter().map(|(r, _)| *r).collect();
            peers.sort();
            sources.sort();
            assert_eq!(peers, sources, "mode {mode:#x}");
        }
        let mut got: Vec<_> = seen.iter().map(|(_, t)| *t).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "mode {mode:#x} kind {kind}: {seen:?}");
    }
}
