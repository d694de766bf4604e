//! The translating fast path through BPF_PROG_TEST_RUN: every verdict and drop reason of
//! the consumer → endpoint and backend → consumer paths, with exact output fields and
//! software-verified checksums.
use aya::programs::{TestRun, TestRunOptions};
use vpcep::dataplane::Dataplane;
use vpcep_common::{
    endpoint::*,
    stats::{Hook, Reason},
};
use vpcep_tests::{
    fastpath::*,
    packets::{verify_checksums, with_ip_options},
    require_root,
};

const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn count(dp: &Dataplane, hook: Hook, r: Reason) -> u64 {
    dp.stats()
        .unwrap()
        .get(&(hook.name(), r.name()))
        .map_or(0, |c| c.packets)
}

/// Runs a frame through TC and asserts the reason was counted once and the verdict.
fn tc(dp: &mut Dataplane, ifindex: u32, frame: &[u8], reason: Reason, verdict: u32) -> Vec<u8> {
    let before = count(dp, Hook::TcIngress, reason);
    let r = run_tc(dp, ifindex, frame);
    let after = count(dp, Hook::TcIngress, reason);
    let got: Vec<_> = dp.stats().unwrap().into_iter().collect();
    assert_eq!(
        after,
        before + 1,
        "{} not counted; counters {got:?}",
        reason.name()
    );
    assert_eq!(r.verdict, verdict, "verdict for {}", reason.name());
    if verdict != TC_SHOT {
        verify_checksums(&r.out).unwrap_or_else(|e| panic!("{}: {e}", reason.name()));
    }
    r.out
}

fn ip_of(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}
fn ihl(f: &[u8]) -> usize {
    (f[14] & 0x0f) as usize * 4
}

/// Consumer C's SYN to E:8080 and the translated frame.
fn open_flow(dp: &mut Dataplane, n: &Nics, sport: u16) -> Vec<u8> {
    let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, sport, 8080, SYN, b"");
    tc(dp, n.c, &syn, Reason::FwdNewFlow, TC_REDIRECT)
}

#[test]
fn consumer_to_endpoint_and_back() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        // New flow: dst → backend:80, src → SNAT:port, TTL-1, MACs rewritten.
        let out = open_flow(&mut dp, &n, 33000);
        assert_eq!(&out[0..6], &B_MAC);
        assert_eq!(&out[6..12], &VMAC);
        assert_eq!(out[22], 63, "ttl");
        assert_eq!(ip_of(&out, 26), SNAT_IP);
        assert_eq!(ip_of(&out, 30), B_IP);
        let snat_port = port_of(&out, 34);
        assert!((PORT_LO..=PORT_HI).contains(&snat_port));
        assert_eq!(port_of(&out, 36), 80);
        let key = FlowKey {
            vpc_id: 1,
            src_be: be(C_IP),
            dst_be: be(EP_IP),
            sport_be: 33000u16.to_be(),
            dport_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let flow = dp.flow(&key).unwrap().expect("forward entry");
        assert_eq!(flow.state(), CT_TCP_SYN_SENT);
        assert_eq!(flow.out_ifindex, n.b);
        assert_eq!(u16::from_be(flow.rev.snat_port_be), snat_port);
        assert_eq!(dp.rev(&flow.rev).unwrap().expect("reverse entry").fwd, key);

        // Reply SYN-ACK from the backend: back to E:8080 → C:33000, flow established.
        let synack = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, SYN | ACK, b"");
        let back = tc(&mut dp, n.b, &synack, Reason::RevReply, TC_REDIRECT);
        assert_eq!(&back[0..6], &C_MAC);
        assert_eq!(&back[6..12], &VMAC);
        assert_eq!(ip_of(&back, 26), EP_IP);
        assert_eq!(ip_of(&back, 30), C_IP);
        assert_eq!(port_of(&back, 34), 8080);
        assert_eq!(port_of(&back, 36), 33000);
        assert_eq!(dp.flow(&key).unwrap().unwrap().state(), CT_TCP_ESTABLISHED);

        // Established: same SNAT port, payload intact.
        let data = tcp(
            C_MAC,
            VMAC,
            C_IP,
            EP_IP,
            33000,
            8080,
            ACK,
            b"GET / HTTP/1.0\r\n\r\n",
        );
        let out = tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        assert_eq!(port_of(&out, 34), snat_port);
        assert!(out.ends_with(b"GET / HTTP/1.0\r\n\r\n"));
        let c = dp.endpoint_counters(7).unwrap();
        assert_eq!((c.packets, c.new_flows, c.drops), (3, 1, 0), "{c:?}");

        // RST closes the flow; a new SYN on the same tuple starts a new one.
        let rst = tcp(C_MAC, VMAC, C_IP, EP_IP, 33000, 8080, RST, b"");
        tc(&mut dp, n.c, &rst, Reason::FwdEstablished, TC_REDIRECT);
        assert_eq!(dp.flow(&key).unwrap().unwrap().state(), CT_TCP_CLOSING);
        open_flow(&mut dp, &n, 33000);

        // Nothing may come in uninvited: no flow for this SNAT port.
        let stray = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, 12345, SYN, b"");
        tc(&mut dp, n.b, &stray, Reason::DropNoReverseFlow, TC_SHOT);
        // A reply for the flow arriving on another NIC is refused.
        let wrong = tcp(X_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, ACK, b"");
        tc(&mut dp, n.x, &wrong, Reason::DropReplyWrongNic, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn udp_and_zero_checksum() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 40001, 5353, b"query");
        let out = tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(port_of(&out, 36), 53);
        assert_ne!(port_of(&out, 40), 0, "checksum kept");
        let snat_port = port_of(&out, 34);
        let a = udp(B_MAC, VMAC, B_IP, SNAT_IP, 53, snat_port, b"answer");
        let back = tc(&mut dp, n.b, &a, Reason::RevReply, TC_REDIRECT);
        assert_eq!((port_of(&back, 34), port_of(&back, 36)), (5353, 40001));
        // A zero UDP checksum ("none") stays zero.
        let mut z = udp(C_MAC, VMAC, C_IP, EP_IP, 40002, 5353, b"nocsum");
        z[40] = 0;
        z[41] = 0;
        let out = tc(&mut dp, n.c, &z, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(port_of(&out, 40), 0);
        // UDP to a TCP-only client port has no mapping.
        let u = udp(C_MAC, VMAC, C_IP, EP_IP, 40003, 8080, b"x");
        tc(&mut dp, n.c, &u, Reason::DropNoPortMapping, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn every_drop_reason_of_the_consumer_path() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let syn = |src_mac, src, dst, dport| tcp(src_mac, VMAC, src, dst, 34000, dport, SYN, b"");
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_IP, 9999),
            Reason::DropNoPortMapping,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_PENDING, 8080),
            Reason::DropNotAccepted,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_UNPERMITTED, 8080),
            Reason::DropNotPermitted,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, [10, 0, 0, 77], EP_IP, 8080),
            Reason::DropSpoofedIp,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(X_MAC, C_IP, EP_IP, 8080),
            Reason::DropSpoofedMac,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_WHITELISTED, 8080),
            Reason::DropSourceWhitelist,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.x,
            &syn(X_MAC, X_IP, EP_WHITELISTED, 8080),
            Reason::FwdNewFlow,
            TC_REDIRECT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_NO_SERVICE, 8080),
            Reason::DropNoService,
            TC_SHOT,
        );
        tc(
            &mut dp,
            n.c,
            &syn(C_MAC, C_IP, EP_REMOTE, 8080),
            Reason::DropRemoteBackend,
            TC_SHOT,
        );
        let ack = tcp(C_MAC, VMAC, C_IP, EP_IP, 34001, 8080, ACK, b"");
        tc(&mut dp, n.c, &ack, Reason::DropTcpNoFlow, TC_SHOT);
        let mut ttl1 = syn(C_MAC, C_IP, EP_IP, 8080);
        ttl1[22] = 1;
        vpcep_tests::packets::fix_ip_checksum(&mut ttl1);
        tc(&mut dp, n.c, &ttl1, Reason::DropTtlExceeded, TC_SHOT);
        let mut frag = syn(C_MAC, C_IP, EP_IP, 8080);
        frag[20] = 0x20;
        vpcep_tests::packets::fix_ip_checksum(&mut frag);
        tc(&mut dp, n.c, &frag, Reason::DropFragment, TC_SHOT);
        let mut gre = syn(C_MAC, C_IP, EP_IP, 8080);
        gre[23] = 47;
        vpcep_tests::packets::fix_ip_checksum(&mut gre);
        tc(&mut dp, n.c, &gre, Reason::DropEndpointProto, TC_SHOT);
        // IP options are skipped correctly and preserved.
        let opt = with_ip_options(&syn(C_MAC, C_IP, EP_IP, 8080), &[1, 1, 1, 0]);
        let out = tc(&mut dp, n.c, &opt, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(ihl(&out), 24);
        assert_eq!(port_of(&out, 14 + 24 + 2), 80);
        // Drops are counted per endpoint too.
        assert!(dp.endpoint_counters(7).unwrap().drops >= 4);
        // Traffic that is not for an endpoint passes untouched.
        let other = syn(C_MAC, C_IP, [10, 0, 0, 9], 8080);
        assert_eq!(tc(&mut dp, n.c, &other, Reason::PassTcp, TC_OK), other);
        // An unmanaged NIC (loopback here) is not translated.
        let on_lo = syn(C_MAC, C_IP, EP_IP, 8080);
        assert_eq!(tc(&mut dp, 1, &on_lo, Reason::PassTcp, TC_OK), on_lo);
    })
    .unwrap();
}

#[test]
fn rejecting_cuts_established_flows_both_ways() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let out = open_flow(&mut dp, &n, 35000);
        let snat_port = port_of(&out, 34);
        let ep = Endpoint {
            endpoint_id: 7,
            service_id: 3,
            marker_id: 1007,
            flags: EP_PERMITTED,
            epoch: 0,
            generation: 1,
            ..Endpoint::default()
        };
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 35000, 8080, ACK, b"more");
        tc(&mut dp, n.c, &data, Reason::DropNotAccepted, TC_SHOT);
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, ACK, b"data");
        tc(&mut dp, n.b, &reply, Reason::DropNotAccepted, TC_SHOT);
        // Accepted again but the owner's permission revoked.
        dp.set_endpoint(
            ep_key(EP_IP),
            Endpoint {
                flags: EP_ACCEPTED,
                ..ep
            },
        )
        .unwrap();
        tc(&mut dp, n.b, &reply, Reason::DropNotPermitted, TC_SHOT);
        // Restored: the same flow carries traffic again.
        dp.set_endpoint(
            ep_key(EP_IP),
            Endpoint {
                flags: EP_ACCEPTED | EP_PERMITTED,
                ..ep
            },
        )
        .unwrap();
        tc(&mut dp, n.b, &reply, Reason::RevReply, TC_REDIRECT);
        // Endpoint deleted: its flow's replies are dropped.
        dp.remove_endpoint(&ep_key(EP_IP)).unwrap();
        tc(&mut dp, n.b, &reply, Reason::DropNotAccepted, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn service_changes_reach_established_flows_through_the_epoch() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let key = FlowKey::new(
            1,
            be(C_IP),
            be(EP_IP),
            36000u16.to_be(),
            8080u16.to_be(),
            IPPROTO_TCP,
        );
        open_flow(&mut dp, &n, 36000);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 36000, 8080, ACK, b"x");
        let out = tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        assert_eq!(port_of(&out, 36), 80);
        let entry = dp.flow(&key).unwrap().unwrap();
        assert_eq!((entry.epoch, entry.backend_mac), (0, B_MAC));
        let ep = |epoch| Endpoint {
            endpoint_id: 7,
            service_id: 3,
            marker_id: 1007,
            flags: EP_ACCEPTED | EP_PERMITTED,
            epoch,
            generation: 1,
            ..Endpoint::default()
        };
        let to = |p: u16| PortTarget {
            server_port_be: p.to_be(),
            _pad: 0,
        };
        // Mapping changed but the epoch not (the agent always changes both): the flow
        // keeps the backend port it was resolved to.
        dp.set_port(port(3, 8080, IPPROTO_TCP), to(81)).unwrap();
        let out = tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        assert_eq!(port_of(&out, 36), 80);
        // New epoch: the next packet is checked against the mapping, which now points
        // elsewhere, so the TCP flow is over.
        dp.set_endpoint(ep_key(EP_IP), ep(1)).unwrap();
        tc(&mut dp, n.c, &data, Reason::DropTcpNoFlow, TC_SHOT);
        // A UDP flow whose mapping moves is re-created toward the new server port.
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 40010, 5353, b"q");
        let out = tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(port_of(&out, 36), 53);
        dp.set_port(port(3, 5353, IPPROTO_UDP), to(54)).unwrap();
        dp.set_endpoint(ep_key(EP_IP), ep(2)).unwrap();
        let out = tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(port_of(&out, 36), 54);
        // A new epoch with the same backend (say, another mapping added) keeps the flow and
        // refreshes what it caches: a changed backend MAC is used at once.
        let udp_key = FlowKey::new(
            1,
            be(C_IP),
            be(EP_IP),
            40010u16.to_be(),
            5353u16.to_be(),
            IPPROTO_UDP,
        );
        let snat_before = dp.flow(&udp_key).unwrap().unwrap().rev;
        let mut svc = dp
            .services()
            .unwrap()
            .into_iter()
            .find(|(id, _)| *id == 3)
            .unwrap()
            .1;
        svc.backend_mac = X_MAC;
        dp.set_service(3, svc).unwrap();
        dp.set_endpoint(ep_key(EP_IP), ep(3)).unwrap();
        let out = tc(&mut dp, n.c, &q, Reason::FwdEstablished, TC_REDIRECT);
        assert_eq!(&out[0..6], &X_MAC);
        let entry = dp.flow(&udp_key).unwrap().unwrap();
        assert_eq!((entry.epoch, entry.backend_mac), (3, X_MAC));
        assert_eq!(entry.rev, snat_before, "same SNAT port");
        // A removed mapping (with the new epoch the agent writes after removing it) cuts
        // the flows that used it.
        dp.remove_port(&port(3, 5353, IPPROTO_UDP)).unwrap();
        dp.set_endpoint(ep_key(EP_IP), ep(4)).unwrap();
        tc(&mut dp, n.c, &q, Reason::DropNoPortMapping, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn arp_and_echo_are_answered() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        for target in [EP_IP, GW_IP] {
            let mut req = vpcep_tests::packets::arp_request(target);
            req[6..12].copy_from_slice(&C_MAC);
            req[22..28].copy_from_slice(&C_MAC);
            req[28..32].copy_from_slice(&C_IP);
            let rep = tc(&mut dp, n.c, &req, Reason::ArpReply, TC_REDIRECT);
            assert_eq!(&rep[0..6], &C_MAC);
            assert_eq!(&rep[6..12], &VMAC);
            assert_eq!(&rep[20..22], &[0, 2], "op reply");
            assert_eq!(&rep[22..28], &VMAC, "sender hw");
            assert_eq!(&rep[28..32], &target, "sender ip");
            assert_eq!(&rep[32..38], &C_MAC);
            assert_eq!(&rep[38..42], &C_IP);
            let x = run_xdp(&mut dp, n.c, &req);
            assert_eq!((x.verdict, x.out), (XDP_TX, rep));
        }
        let other = vpcep_tests::packets::arp_request([10, 0, 0, 50]);
        tc(&mut dp, n.c, &other, Reason::PassArp, TC_OK);
        // The other VPC (backend's) has no endpoint at that address.
        let mut req = vpcep_tests::packets::arp_request(EP_IP);
        req[6..12].copy_from_slice(&B_MAC);
        tc(&mut dp, n.b, &req, Reason::PassArp, TC_OK);

        let ping = icmp_echo(C_MAC, C_IP, EP_IP);
        let pong = tc(&mut dp, n.c, &ping, Reason::IcmpEchoReply, TC_REDIRECT);
        assert_eq!(&pong[0..6], &C_MAC);
        assert_eq!(ip_of(&pong, 26), EP_IP);
        assert_eq!(ip_of(&pong, 30), C_IP);
        assert_eq!(pong[34], 0, "echo reply");
        let icmp = &pong[34..];
        assert_eq!(
            vpcep_tests::packets::ones_complement_sum(icmp),
            0xffff,
            "icmp checksum"
        );
        assert_eq!(pong[pong.len() - 14..], *b"hello endpoint");
    })
    .unwrap();
}

#[test]
fn icmp_frag_needed_from_backend_reaches_consumer_translated() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let sent = open_flow(&mut dp, &n, 36000);
        let snat_port = port_of(&sent, 34);
        let err = icmp_frag_needed(B_MAC, B_IP, SNAT_IP, &sent, 1400);
        let out = tc(&mut dp, n.b, &err, Reason::RevIcmpError, TC_REDIRECT);
        assert_eq!(&out[0..6], &C_MAC);
        assert_eq!(ip_of(&out, 26), EP_IP, "outer src");
        assert_eq!(ip_of(&out, 30), C_IP, "outer dst");
        assert_eq!((out[34], out[35]), (3, 4), "frag needed");
        assert_eq!(port_of(&out, 40), 1400, "mtu");
        let inner = 42;
        assert_eq!(ip_of(&out, inner + 12), C_IP, "inner src");
        assert_eq!(ip_of(&out, inner + 16), EP_IP, "inner dst");
        assert_eq!(port_of(&out, inner + 20), 36000);
        assert_eq!(port_of(&out, inner + 22), 8080);
        let sum = vpcep_tests::packets::ones_complement_sum;
        assert_eq!(sum(&out[inner..inner + 20]), 0xffff, "inner ip checksum");
        assert_eq!(sum(&out[34..]), 0xffff, "icmp checksum");
        let _ = snat_port;
        // An error about a flow that does not exist is dropped.
        let mut bogus = sent.clone();
        bogus[34..36].copy_from_slice(&1u16.to_be_bytes());
        let err = icmp_frag_needed(B_MAC, B_IP, SNAT_IP, &bogus, 1400);
        tc(&mut dp, n.b, &err, Reason::DropNoReverseFlow, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn snat_ports_never_collide_and_exhaustion_is_counted() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        // Two ports only; a SYN flow dies after 2 s (aged below relative to the clock).
        let mut dp = scenario(&n, PORT_LO, PORT_LO + 1);
        let mut cfg = node(PORT_LO, PORT_LO + 1);
        cfg.timeouts.tcp_syn = 2;
        dp.set_node(cfg).unwrap();
        let a = open_flow(&mut dp, &n, 37000);
        let b = open_flow(&mut dp, &n, 37001);
        assert_ne!(
            port_of(&a, 34),
            port_of(&b, 34),
            "distinct SNAT ports to one backend"
        );
        let c = tcp(C_MAC, VMAC, C_IP, EP_IP, 37002, 8080, SYN, b"");
        tc(&mut dp, n.c, &c, Reason::DropSnatExhausted, TC_SHOT);
        // A port whose flow is gone is reused.
        let key = FlowKey {
            vpc_id: 1,
            src_be: be(C_IP),
            dst_be: be(EP_IP),
            sport_be: 37000u16.to_be(),
            dport_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        age_flow(&mut dp, &key, 3);
        let out = tc(&mut dp, n.c, &c, Reason::FwdNewFlow, TC_REDIRECT);
        assert_eq!(port_of(&out, 34), port_of(&a, 34));
        assert!(dp.flow(&key).unwrap().is_none(), "the dead holder is gone");
    })
    .unwrap();
}

#[test]
fn node_without_snat_address_translates_nothing() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        dp.set_node(NodeConfig {
            snat_ip_be: 0,
            ..node(PORT_LO, PORT_HI)
        })
        .unwrap();
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 38000, 8080, SYN, b"");
        tc(&mut dp, n.c, &syn, Reason::DropNodeNotConfigured, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn xdp_answers_and_drops_early_and_leaves_translation_to_tc() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let xdp = |dp: &mut Dataplane, ifx, f: &[u8], r: Reason, v: u32| {
            let before = count(dp, Hook::Xdp, r);
            let out = run_xdp(dp, ifx, f);
            let stats: Vec<_> = dp.stats().unwrap().into_iter().collect();
            assert_eq!(out.verdict, v, "{} {stats:?}", r.name());
            assert_eq!(count(dp, Hook::Xdp, r), before + 1, "{}", r.name());
            out.out
        };
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 39000, 8080, SYN, b"");
        assert_eq!(xdp(&mut dp, n.c, &syn, Reason::PassToTc, XDP_PASS), syn);
        let pend = tcp(C_MAC, VMAC, C_IP, EP_PENDING, 39000, 8080, SYN, b"");
        xdp(&mut dp, n.c, &pend, Reason::DropNotAccepted, XDP_DROP);
        let spoof = tcp(C_MAC, VMAC, [10, 0, 0, 66], EP_IP, 39000, 8080, SYN, b"");
        xdp(&mut dp, n.c, &spoof, Reason::DropSpoofedIp, XDP_DROP);
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, 40000, ACK, b"");
        xdp(&mut dp, n.b, &reply, Reason::PassToTc, XDP_PASS);
        let ping = icmp_echo(C_MAC, C_IP, EP_IP);
        let pong = xdp(&mut dp, n.c, &ping, Reason::IcmpEchoReply, XDP_TX);
        verify_checksums(&pong).unwrap();
    })
    .unwrap();
}

#[test]
fn icmp_error_from_consumer_reaches_backend_translated() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 41000, 5353, b"query");
        let out = tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        let snat_port = port_of(&out, 34);
        let a = udp(B_MAC, VMAC, B_IP, SNAT_IP, 53, snat_port, b"late answer");
        let delivered = tc(&mut dp, n.b, &a, Reason::RevReply, TC_REDIRECT);
        // The consumer's socket is gone: port unreachable about what it received.
        let mut err = icmp_frag_needed(C_MAC, C_IP, EP_IP, &delivered, 0);
        err[35] = 3; // code: port unreachable
        err[36..40].fill(0); // no next-hop MTU
        let ic = 34;
        err[ic + 2..ic + 4].fill(0);
        let c = !vpcep_tests::packets::ones_complement_sum(&err[ic..]);
        err[ic + 2..ic + 4].copy_from_slice(&c.to_be_bytes());
        let fwd = tc(&mut dp, n.c, &err, Reason::FwdIcmpError, TC_REDIRECT);
        assert_eq!(&fwd[0..6], &B_MAC);
        assert_eq!(ip_of(&fwd, 26), SNAT_IP, "outer src");
        assert_eq!(ip_of(&fwd, 30), B_IP, "outer dst");
        let inner = 42;
        assert_eq!(ip_of(&fwd, inner + 12), B_IP, "inner src");
        assert_eq!(ip_of(&fwd, inner + 16), SNAT_IP, "inner dst");
        assert_eq!(port_of(&fwd, inner + 20), 53);
        assert_eq!(port_of(&fwd, inner + 22), snat_port);
        let sum = vpcep_tests::packets::ones_complement_sum;
        assert_eq!(sum(&fwd[inner..inner + 20]), 0xffff, "inner ip checksum");
        assert_eq!(sum(&fwd[34..]), 0xffff, "icmp checksum");
        // About a flow that does not exist: dropped.
        let mut stray = delivered.clone();
        stray[36..38].copy_from_slice(&1u16.to_be_bytes());
        let err = icmp_frag_needed(C_MAC, C_IP, EP_IP, &stray, 1400);
        tc(&mut dp, n.c, &err, Reason::DropIcmpNoFlow, TC_SHOT);
    })
    .unwrap();
}

/// C's SYN to `dst`:8080 carrying an MSS option.
fn syn_with_mss(dst: [u8; 4], sport: u16, mss: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(C_MAC, VMAC)
        .ipv4(C_IP, dst, 64)
        .tcp(sport, 8080, 1000, 65535)
        .syn()
        .options_raw(&[2, 4, (mss >> 8) as u8, mss as u8])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, b"").unwrap();
    out
}

#[test]
fn remote_backend_goes_through_the_overlay() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| remote_through_overlay(&n)).unwrap();
}

fn remote_through_overlay(n: &Nics) {
    let mut dp = scenario(n, PORT_LO, PORT_HI);
    // No overlay yet: counted drop, as before.
    tc(
        &mut dp,
        n.c,
        &syn_with_mss(EP_REMOTE, 5000, 1460),
        Reason::DropRemoteBackend,
        TC_SHOT,
    );
    // x0 plays the VXLAN device.
    dp.set_tunnel(TunnelConfig {
        ifindex: n.x,
        inner_mtu: 1450,
        _pad: [0; 2],
    })
    .unwrap();
    let out = tc(
        &mut dp,
        n.c,
        &syn_with_mss(EP_REMOTE, 5000, 1460),
        Reason::FwdNewFlow,
        TC_REDIRECT,
    );
    let l4 = 14 + ihl(&out);
    assert_eq!(ip_of(&out, 30), B_IP);
    assert_eq!(ip_of(&out, 26), SNAT_IP);
    assert_eq!(port_of(&out, l4 + 2), 80);
    assert_eq!(out[0..6], B_MAC);
    assert_eq!(out[6..12], VMAC);
    assert_eq!(
        &out[l4 + 20..l4 + 24],
        &[2, 4, 0x05, 0x82],
        "MSS clamped to 1410"
    );
    // The flow leaves through the overlay device.
    let key = FlowKey {
        vpc_id: 1,
        src_be: be(C_IP),
        dst_be: be(EP_REMOTE),
        sport_be: 5000u16.to_be(),
        dport_be: 8080u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    assert_eq!(dp.flow(&key).unwrap().unwrap().out_ifindex, n.x);
    // A smaller MSS is left alone (checksum still verified by `tc`).
    let out = tc(
        &mut dp,
        n.c,
        &syn_with_mss(EP_REMOTE, 5001, 1200),
        Reason::FwdNewFlow,
        TC_REDIRECT,
    );
    let l4 = 14 + ihl(&out);
    assert_eq!(&out[l4 + 22..l4 + 24], &1200u16.to_be_bytes());
    // Established packets keep going through the overlay.
    let ack = tcp(C_MAC, VMAC, C_IP, EP_REMOTE, 5000, 8080, ACK, b"data");
    tc(&mut dp, n.c, &ack, Reason::FwdEstablished, TC_REDIRECT);
    // Its replies come only through the overlay program: the same reply through the VM-NIC
    // program, even on the overlay device itself, is refused.
    let snat_port = u16::from_be(dp.flow(&key).unwrap().unwrap().rev.snat_port_be);
    let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, ACK, b"");
    tc(&mut dp, n.x, &reply, Reason::DropReplyWrongNic, TC_SHOT);
    // A local service's flow is not clamped.
    let out = tc(
        &mut dp,
        n.c,
        &syn_with_mss(EP_IP, 5002, 1460),
        Reason::FwdNewFlow,
        TC_REDIRECT,
    );
    let l4 = 14 + ihl(&out);
    assert_eq!(&out[l4 + 22..l4 + 24], &1460u16.to_be_bytes());

    // Backend side: a reply to another node's SNAT address goes, untranslated, to the node
    // that owns it; to an address no node owns it is dropped; a spoofed source too.
    let other = [198, 19, 128, 20];
    dp.set_snat_owner(be(other), be([192, 168, 50, 1])).unwrap();
    let reply = tcp(B_MAC, VMAC, B_IP, other, 80, 40001, SYN | ACK, b"");
    let out = tc(&mut dp, n.b, &reply, Reason::RevToOwner, TC_REDIRECT);
    assert_eq!(out, reply, "tunnelled untranslated");
    let nobody = tcp(B_MAC, VMAC, B_IP, [198, 19, 128, 21], 80, 40001, ACK, b"");
    tc(&mut dp, n.b, &nobody, Reason::DropSnatNoOwner, TC_SHOT);
    let spoofed = tcp(B_MAC, VMAC, X_IP, other, 80, 40001, ACK, b"");
    tc(&mut dp, n.b, &spoofed, Reason::DropSpoofedIp, TC_SHOT);
    // This node's own SNAT address still takes the local reverse path.
    let stray = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, 40999, ACK, b"");
    tc(&mut dp, n.b, &stray, Reason::DropNoReverseFlow, TC_SHOT);

    // The VXLAN-device program refuses a packet without tunnel metadata.
    let before = count(&dp, Hook::TcIngress, Reason::DropTunnelBad);
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&n.x.to_ne_bytes());
    let mut buf = vec![0u8; reply.len() + 64];
    let res = dp
        .tc_tunnel()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&reply),
            data_out: Some(&mut buf),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(res.return_value, TC_SHOT);
    assert_eq!(
        count(&dp, Hook::TcIngress, Reason::DropTunnelBad),
        before + 1
    );
}

/// `vpcep dataplane run --config`: a remote service, the overlay device, SNAT owners and the
/// local addresses derived from the NICs land in the maps; bad overlay input names its field.
#[test]
fn map_config_with_overlay() {
    use vpcep::dataplane::config::MapConfig;
    require_root!();
    let (ns, n) = namespace();
    let dir = std::env::temp_dir().join(format!("vpcep-mapcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = r#"
[node]
snat_ip = "198.19.128.10"
vmac = "02:fe:00:00:00:01"

[overlay]
device = "x0"

[[snat_owner]]
snat_ip = "198.19.128.11"
underlay_ip = "192.168.50.2"

[[nic]]
iface = "c0"
vpc = 101
ip = "10.0.0.2"
mac = "02:00:00:00:00:02"
gateway = "10.0.0.1"

[[service]]
id = 3
backend_ip = "10.0.0.5"
backend_vpc = 200
remote_node = "192.168.50.2"
backend_mac = "02:00:00:00:00:05"
ports = [{ client = 8080, server = 80, protocol = "TCP" }]

[[endpoint]]
id = 7
vpc = 101
ip = "10.0.0.100"
service = 3
accepted = true
"#;
    let load = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        MapConfig::load(&p).unwrap()
    };
    let cfgs = [
        load("good.toml", good),
        load(
            "both.toml",
            &good.replace(
                "remote_node = \"192.168.50.2\"",
                "remote_node = \"192.168.50.2\"\nbackend_iface = \"b0\"",
            ),
        ),
        load(
            "nodev.toml",
            &good.replace("device = \"x0\"", "device = \"nope0\""),
        ),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    let (c, x) = (n.c, n.x);
    ns.run(move || {
        let mut dp = Dataplane::load().unwrap();
        cfgs[0].apply(&mut dp).unwrap();
        assert_eq!(cfgs[0].interfaces(), vec!["c0".to_string()]);
        assert_eq!(
            dp.tunnel().unwrap(),
            TunnelConfig {
                ifindex: x,
                inner_mtu: 1450,
                _pad: [0; 2]
            }
        );
        let svc = dp.services().unwrap();
        assert_eq!(svc.len(), 1);
        assert_eq!(svc[0].1.location, SVC_REMOTE);
        assert_eq!(svc[0].1.remote_node_be, be([192, 168, 50, 2]));
        assert_eq!(
            dp.local_addrs().unwrap(),
            vec![(
                EndpointKey {
                    vpc_id: 101,
                    ip_be: be(C_IP)
                },
                LocalAddr {
                    ifindex: c,
                    mac: C_MAC,
                    _pad: [0; 2]
                }
            )]
        );
        assert_eq!(
            dp.snat_owners().unwrap(),
            vec![(be([198, 19, 128, 11]), be([192, 168, 50, 2]))]
        );
        for (cfg, field) in [
            (&cfgs[1], "service[0].backend_iface"),
            (&cfgs[2], "overlay.device"),
        ] {
            let e = cfg.apply(&mut Dataplane::load().unwrap()).unwrap_err();
            assert!(e.to_string().starts_with(field), "{e}");
        }
    })
    .unwrap();
}
