//! Real traffic through the programs attached to the node end of a VM's veth, in network
//! namespaces this test creates (and removes, also on failure).
use std::{net::UdpSocket, time::Duration};

use vpcep::dataplane::{Dataplane, Mode};
use vpcep_common::stats::{Hook, Reason};
use vpcep_tests::{packets, raw, require_root};
use xtask::netns::Topology;

const VM_MAC: &str = "02:00:00:00:00:02";

fn traffic_is_counted(mode: Mode, hook: Hook) {
    require_root!();
    let mut topo = Topology::new().unwrap();
    topo.add_vm("tap0", "10.0.0.2/24", VM_MAC).unwrap();
    topo.node
        .ip(&["addr", "add", "10.0.0.1/24", "dev", "tap0"])
        .unwrap();
    let dp = topo
        .node
        .run(move || -> anyhow::Result<Dataplane> {
            let mut dp = Dataplane::load()?;
            dp.attach("tap0", mode)?;
            Ok(dp)
        })
        .unwrap()
        .unwrap();
    let vm = &topo.vms[0];

    // ICMP both ways works through the pass path (and ARP is resolved on the way).
    vm.ns
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1"])
        .unwrap();
    let ifindex = vm.ns.ifindex("eth0").unwrap();
    vm.ns
        .run(move || -> std::io::Result<()> {
            let sock = UdpSocket::bind("10.0.0.2:0")?;
            for i in 0..10u8 {
                sock.send_to(&[i; 32], "10.0.0.1:9999")?;
            }
            let mut dst = [0u8; 6];
            // The node end's MAC is irrelevant to the programs; broadcast keeps it simple.
            dst.copy_from_slice(&[0xff; 6]);
            for _ in 0..5 {
                let mut f = packets::non_ip(60);
                f[..6].copy_from_slice(&dst);
                raw::send_frame(ifindex, &f)?;
            }
            for _ in 0..4 {
                let mut f = packets::udp(1, 2, b"x")[..24].to_vec();
                f[..6].copy_from_slice(&dst);
                raw::send_frame(ifindex, &f)?;
            }
            // A SYN to a closed port: answered by RST, counted as TCP.
            let _ = std::net::TcpStream::connect_timeout(
                &"10.0.0.1:9".parse().map_err(std::io::Error::other)?,
                Duration::from_secs(2),
            );
            Ok(())
        })
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let stats = dp.stats().unwrap();
    let n = |r: Reason| stats.get(&(hook.name(), r.name())).map_or(0, |c| c.packets);
    assert!(n(Reason::PassOtherProto) >= 3, "icmp: {stats:?}");
    assert!(n(Reason::PassUdp) >= 10, "udp: {stats:?}");
    assert!(n(Reason::PassArp) >= 1, "arp: {stats:?}");
    assert!(n(Reason::PassNonIpv4) >= 5, "non-ip: {stats:?}");
    assert!(n(Reason::PassTcp) >= 1, "tcp: {stats:?}");
    assert_eq!(n(Reason::DropTruncIpv4), 4, "truncated: {stats:?}");
    // Bytes are counted too.
    let udp = stats[&(hook.name(), Reason::PassUdp.name())];
    assert!(udp.bytes >= 10 * (14 + 20 + 8 + 32), "udp bytes: {udp:?}");
    // Only this hook saw the packets.
    assert!(stats.keys().all(|(h, _)| *h == hook.name()), "{stats:?}");
}

#[test]
fn xdp_counts_real_traffic() {
    traffic_is_counted(Mode::Xdp, Hook::Xdp);
}

#[test]
fn tc_counts_real_traffic() {
    traffic_is_counted(Mode::Tc, Hook::TcIngress);
}

#[test]
fn namespaces_are_removed_when_the_topology_drops() {
    require_root!();
    let names: Vec<String> = {
        let mut topo = Topology::new().unwrap();
        topo.add_vm("tap0", "10.0.0.2/24", VM_MAC).unwrap();
        vec![
            topo.node.name().to_string(),
            topo.vms[0].ns.name().to_string(),
        ]
    };
    let list = xtask::netns::ip(&["netns", "list"]).unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.contains(&n), "{n} still present");
    }
}
