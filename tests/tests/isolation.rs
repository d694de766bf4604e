//! Tenant isolation in the fast path through BPF_PROG_TEST_RUN: revocations reach
//! established flows at their next packet in both directions, a deleted endpoint fails
//! closed, per-endpoint limits refuse only new flows, a full table evicts no live flow, and
//! the agent's GC never removes a flow newer than its listing.
use vpcep::dataplane::Dataplane;
use vpcep_common::{
    endpoint::*,
    maps::MAX_FLOWS,
    stats::{Hook, Reason},
};
use vpcep_tests::{fastpath::*, packets::verify_checksums, require_root};

const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;

fn count(dp: &Dataplane, r: Reason) -> u64 {
    dp.stats()
        .unwrap()
        .get(&(Hook::TcIngress.name(), r.name()))
        .map_or(0, |c| c.packets)
}

/// Runs a frame through TC; asserts its reason was counted once and the verdict.
fn tc(dp: &mut Dataplane, ifindex: u32, frame: &[u8], reason: Reason, verdict: u32) -> Vec<u8> {
    let before = count(dp, reason);
    let r = run_tc(dp, ifindex, frame);
    let got: Vec<_> = dp.stats().unwrap().into_iter().collect();
    assert_eq!(
        count(dp, reason),
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

/// A TCP flow from `mac`/`ip` on `nic` to `ep` opened and answered; returns its SNAT port.
fn established(dp: &mut Dataplane, n: &Nics, consumer: Consumer, ep: [u8; 4], sport: u16) -> u16 {
    let (nic, mac, ip) = match consumer {
        Consumer::C => (n.c, C_MAC, C_IP),
        Consumer::X => (n.x, X_MAC, X_IP),
    };
    let syn = tcp(mac, VMAC, ip, ep, sport, 8080, SYN, b"");
    let out = tc(dp, nic, &syn, Reason::FwdNewFlow, TC_REDIRECT);
    let snat = port_of(&out, 34);
    let synack = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, SYN | ACK, b"");
    tc(dp, n.b, &synack, Reason::RevReply, TC_REDIRECT);
    snat
}

/// The scenario's consumer VMs.
#[derive(Clone, Copy)]
enum Consumer {
    C,
    X,
}

fn endpoint(dp: &mut Dataplane, ip: [u8; 4]) -> Endpoint {
    dp.endpoints()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == ep_key(ip))
        .map(|(_, e)| e)
        .unwrap()
}

#[test]
fn whitelist_revocations_cut_established_flows_both_ways() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        // X is whitelisted on endpoint 10; its flow is up.
        let snat = established(&mut dp, &n, Consumer::X, EP_WHITELISTED, 41000);
        let data = tcp(X_MAC, VMAC, X_IP, EP_WHITELISTED, 41000, 8080, ACK, b"a");
        tc(&mut dp, n.x, &data, Reason::FwdEstablished, TC_REDIRECT);
        // Its CIDR is removed (the agent changes the epoch with it): the next packet of
        // the flow is refused in either direction, and the flow is gone.
        dp.disallow_source(10, be(X_IP), 32).unwrap();
        let mut ep = endpoint(&mut dp, EP_WHITELISTED);
        ep.epoch += 1;
        dp.set_endpoint(ep_key(EP_WHITELISTED), ep).unwrap();
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::DropFlowRevoked, TC_SHOT);
        tc(&mut dp, n.x, &data, Reason::DropFlowRevoked, TC_SHOT);
        let key = flow_key(X_IP, EP_WHITELISTED, 41000, 8080, IPPROTO_TCP);
        assert!(dp.flow(&key).unwrap().is_none(), "revoked flow removed");
        tc(&mut dp, n.x, &data, Reason::DropTcpNoFlow, TC_SHOT);

        // Turning a whitelist on (without C in it) cuts C's flow on endpoint 7 alike.
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 41001);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 41001, 8080, ACK, b"a");
        tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        let mut ep = endpoint(&mut dp, EP_IP);
        ep.flags |= EP_SRC_WHITELIST;
        ep.epoch += 1;
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::DropFlowRevoked, TC_SHOT);
        tc(&mut dp, n.c, &data, Reason::DropFlowRevoked, TC_SHOT);
        // A flow the whitelist still allows survives the same kind of change.
        dp.allow_source(7, be(C_IP), 32).unwrap();
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 41002);
        ep.epoch += 1;
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::RevReply, TC_REDIRECT);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 41002, 8080, ACK, b"a");
        tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
    })
    .unwrap();
}

#[test]
fn reaccepting_or_recreating_an_endpoint_does_not_resurrect_old_flows() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 42000);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 42000, 8080, ACK, b"a");
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        // Rejected: cut both ways.
        let mut ep = endpoint(&mut dp, EP_IP);
        let accepted = ep;
        ep.flags &= !EP_ACCEPTED;
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        tc(&mut dp, n.c, &data, Reason::DropNotAccepted, TC_SHOT);
        tc(&mut dp, n.b, &reply, Reason::DropNotAccepted, TC_SHOT);
        // Accepted again: a new generation, so the old flow stays dead both ways.
        let mut again = accepted;
        again.generation += 1;
        dp.set_endpoint(ep_key(EP_IP), again).unwrap();
        tc(&mut dp, n.b, &reply, Reason::DropFlowRevoked, TC_SHOT);
        tc(&mut dp, n.c, &data, Reason::DropTcpNoFlow, TC_SHOT);
        // New connections work.
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 42001);

        // Deleted and recreated at the same VPC and address (another id, as the agent
        // assigns it): the old flow does not pass the new endpoint.
        dp.remove_endpoint(&ep_key(EP_IP)).unwrap();
        let recreated = Endpoint {
            endpoint_id: 20,
            generation: 77,
            ..again
        };
        dp.set_endpoint(ep_key(EP_IP), recreated).unwrap();
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 42001, 8080, ACK, b"a");
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::DropNotAccepted, TC_SHOT);
        tc(&mut dp, n.c, &data, Reason::DropTcpNoFlow, TC_SHOT);
        // Even with the same id (the agent reuses ids) the generation tells them apart.
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 42002);
        let same_id = Endpoint {
            generation: 78,
            ..recreated
        };
        dp.set_endpoint(ep_key(EP_IP), same_id).unwrap();
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::DropFlowRevoked, TC_SHOT);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 42002, 8080, ACK, b"a");
        tc(&mut dp, n.c, &data, Reason::DropTcpNoFlow, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn deleted_endpoint_fails_closed() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 43000);
        // The agent replaces a deleted endpoint with a tombstone for a grace period.
        dp.set_endpoint(
            ep_key(EP_IP),
            Endpoint {
                flags: EP_TOMBSTONE,
                ..Endpoint::default()
            },
        )
        .unwrap();
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 43001, 8080, SYN, b"");
        tc(&mut dp, n.c, &syn, Reason::DropEndpointDeleted, TC_SHOT);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 43000, 8080, ACK, b"a");
        tc(&mut dp, n.c, &data, Reason::DropEndpointDeleted, TC_SHOT);
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 43002, 5353, b"q");
        tc(&mut dp, n.c, &q, Reason::DropEndpointDeleted, TC_SHOT);
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::DropEndpointDeleted, TC_SHOT);
    })
    .unwrap();
}

#[test]
fn endpoint_limits_refuse_new_flows_only() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let mut ep = endpoint(&mut dp, EP_IP);
        ep.max_flows = 2;
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        established(&mut dp, &n, Consumer::C, EP_IP, 44000);
        established(&mut dp, &n, Consumer::C, EP_IP, 44001);
        assert_eq!(dp.endpoint_flows(7).unwrap().live, 2);
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 44002, 8080, SYN, b"");
        tc(&mut dp, n.c, &syn, Reason::DropEndpointFlowLimit, TC_SHOT);
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 44003, 5353, b"q");
        tc(&mut dp, n.c, &q, Reason::DropEndpointFlowLimit, TC_SHOT);
        // The established ones go on.
        for sport in [44000, 44001] {
            let data = tcp(C_MAC, VMAC, C_IP, EP_IP, sport, 8080, ACK, b"a");
            tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        }
        // Another endpoint of the same service is not affected.
        established(&mut dp, &n, Consumer::X, EP_WHITELISTED, 44004);
        // A flow that goes (flushed by the agent) gives its slot back.
        let key = flow_key(C_IP, EP_IP, 44000, 8080, IPPROTO_TCP);
        assert_eq!(dp.gc(GC_FLUSH, &[key], &[]).unwrap(), (1, 0));
        assert_eq!(dp.endpoint_flows(7).unwrap().live, 1);
        tc(&mut dp, n.c, &syn, Reason::FwdNewFlow, TC_REDIRECT);

        // New flows per second.
        ep.max_flows = 0;
        ep.new_flows_per_sec = 3;
        dp.set_endpoint(ep_key(EP_IP), ep).unwrap();
        let (mut ok, mut refused) = (0, 0);
        for sport in 45000..45010 {
            let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, sport, 8080, SYN, b"");
            match run_tc(&mut dp, n.c, &syn).verdict {
                TC_REDIRECT => ok += 1,
                TC_SHOT => refused += 1,
                v => panic!("verdict {v}"),
            }
        }
        // Ten SYNs in well under a second: three pass (six if a second began meanwhile).
        assert!((3..=6).contains(&ok), "{ok} passed");
        assert!(count(&dp, Reason::DropEndpointRateLimit) >= refused && refused >= 4);
    })
    .unwrap();
}

#[test]
fn full_table_refuses_new_flows_and_evicts_none() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let snat = established(&mut dp, &n, Consumer::C, EP_IP, 46000);
        // Fill the port claims to capacity with claims of other (made-up) backends.
        let mut inserted = 0u32;
        for i in 0..MAX_FLOWS {
            let rk = RevKey::new(
                be(SNAT_IP),
                be([10, 9, (i >> 16) as u8, (i >> 8) as u8]),
                (i as u16).to_be(),
                80u16.to_be(),
                IPPROTO_TCP,
            );
            let v = RevEntry {
                owner: 1,
                fwd: FlowKey::default(),
                _pad: [0; 4],
            };
            if dp.insert_rev(rk, v).is_err() {
                break;
            }
            inserted += 1;
        }
        assert!(inserted >= MAX_FLOWS - 2, "{inserted} inserted");
        // The live flow keeps its claim and works both ways.
        let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat, ACK, b"r");
        tc(&mut dp, n.b, &reply, Reason::RevReply, TC_REDIRECT);
        let data = tcp(C_MAC, VMAC, C_IP, EP_IP, 46000, 8080, ACK, b"a");
        tc(&mut dp, n.c, &data, Reason::FwdEstablished, TC_REDIRECT);
        // A new flow is refused and counted, and gives back its endpoint slot.
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 46001, 8080, SYN, b"");
        tc(&mut dp, n.c, &syn, Reason::DropCtFull, TC_SHOT);
        assert_eq!(dp.endpoint_flows(7).unwrap().live, 1);
    })
    .unwrap();
}

#[test]
fn gc_removes_dead_flows_but_never_a_newer_one() {
    require_root!();
    let (ns, n) = namespace();
    ns.run(|| {
        let mut dp = scenario(&n, PORT_LO, PORT_HI);
        let mut cfg = node(PORT_LO, PORT_HI);
        cfg.timeouts.udp = 2;
        dp.set_node(cfg).unwrap();
        let q = udp(C_MAC, VMAC, C_IP, EP_IP, 47000, 5353, b"q");
        tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        let key = flow_key(C_IP, EP_IP, 47000, 5353, IPPROTO_UDP);
        let old = dp.flow(&key).unwrap().unwrap();
        // Live: GC leaves it alone.
        assert_eq!(dp.gc(GC_EXPIRED, &[key], &[]).unwrap(), (0, 0));
        // The agent lists it as expired...
        age_flow(&mut dp, &key, 3);
        let listed = dp.flows().unwrap();
        assert_eq!(listed.len(), 1);
        // ...but before its GC runs, the consumer reuses the tuple: a new flow.
        let out = tc(&mut dp, n.c, &q, Reason::FwdNewFlow, TC_REDIRECT);
        let new = dp.flow(&key).unwrap().unwrap();
        assert_ne!(new.owner, old.owner);
        // The GC of the stale listing removes nothing of the new flow.
        let stale: Vec<FlowKey> = listed.iter().map(|(k, _)| *k).collect();
        assert_eq!(dp.gc(GC_EXPIRED, &stale, &[]).unwrap(), (0, 0));
        assert_eq!(dp.gc(GC_ORPHAN_CLAIMS, &[], &[old.rev]).unwrap().0, 0);
        assert_eq!(dp.flow(&key).unwrap().map(|e| e.owner), Some(new.owner));
        let snat = port_of(&out, 34);
        let reply = udp(B_MAC, VMAC, B_IP, SNAT_IP, 53, snat, b"r");
        tc(&mut dp, n.b, &reply, Reason::RevReply, TC_REDIRECT);
        // Once it is dead, GC removes it and its claim and gives back its slot.
        age_flow(&mut dp, &key, 3);
        assert_eq!(dp.gc(GC_EXPIRED, &[key], &[]).unwrap(), (1, 0));
        assert!(dp.flow(&key).unwrap().is_none());
        assert!(dp.rev(&new.rev).unwrap().is_none());
        assert_eq!(dp.endpoint_flows(7).unwrap().live, 0);
        // A claim nobody holds (its flow vanished) is released once past its guard.
        let rk = RevKey::new(
            be(SNAT_IP),
            be(B_IP),
            40500u16.to_be(),
            53u16.to_be(),
            IPPROTO_UDP,
        );
        let orphan = RevEntry {
            owner: flow_owner(0, 1, 0),
            fwd: key,
            _pad: [0; 4],
        };
        dp.insert_rev(rk, orphan).unwrap();
        assert_eq!(dp.gc(GC_ORPHAN_CLAIMS, &[], &[rk]).unwrap(), (1, 0));
        assert!(dp.rev(&rk).unwrap().is_none());
    })
    .unwrap();
}
