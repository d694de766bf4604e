//! The fast path under CPU races: several threads run BPF_PROG_TEST_RUN on one set of
//! maps (pinned, each thread with its own loaded programs) so that both CPUs open, refresh,
//! take over and close flows at once. Ports are forced to collide; afterwards (and during)
//! no SNAT port may be held by two live flows, no reply may reach another consumer, and no
//! TCP state update of either direction may be lost.
use std::{
    sync::{
        Arc, Barrier,
        atomic::Ordering::{Acquire, Release},
    },
    time::{Duration, Instant},
};

use vpcep::dataplane::Dataplane;
use vpcep_common::endpoint::*;
use vpcep_tests::{fastpath::*, harness::TempDir, monotonic_ns, require_root, spawn_in};

const TC_REDIRECT: u32 = 7;

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity act
    // on the set we own and on this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// Every live flow holds its claim, and no two live flows hold one claim.
fn claims_are_exclusive(dp: &mut Dataplane, t: &Timeouts) {
    let now = monotonic_ns();
    let flows = dp.flows().unwrap();
    let mut held = std::collections::HashMap::new();
    for (k, e) in &flows {
        if e.dead(now, t) {
            continue;
        }
        let claim = dp.rev(&e.rev).unwrap().expect("a live flow's claim");
        assert_eq!(
            (claim.owner, claim.fwd),
            (e.owner, *k),
            "claim {:?} names another flow",
            e.rev
        );
        if let Some(other) = held.insert(e.rev, *k) {
            panic!("port claim {:?} held by {other:?} and {k:?}", e.rev);
        }
    }
}

#[test]
fn no_port_is_shared_and_no_reply_misdelivered_under_contention() {
    require_root!();
    let (ns, n) = namespace();
    let pins = TempDir::bpffs("contention");
    // Sixteen SNAT ports for four threads' flows; a UDP flow dies after 1 s idle, so ports
    // keep changing hands between the threads' flows.
    let mut cfg = node(PORT_LO, PORT_LO + 15);
    cfg.timeouts.udp = 1;
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        fill(&mut dp, &n, PORT_LO, PORT_LO + 15);
        dp.set_node(cfg).unwrap();
    })
    .unwrap();
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let dir = pins.0.clone();
            let barrier = barrier.clone();
            let (nic, mac, ip) = if t % 2 == 0 {
                (n.c, C_MAC, C_IP)
            } else {
                (n.x, X_MAC, X_IP)
            };
            let b = n.b;
            spawn_in(ns.name(), move || {
                let mut dp = Dataplane::load_pinned(&dir).unwrap();
                run_tc(&mut dp, nic, &udp(mac, VMAC, ip, EP_IP, 1, 5353, b""));
                barrier.wait();
                let (mut opened, mut replies, mut wrong) = (0u64, 0u64, Vec::new());
                let first = 20000 + t as u16 * 2000;
                // 5 s, up to 20 s on a slow (emulated) CPU until the thread has its share.
                let (t0, short, long) = (
                    Instant::now(),
                    Duration::from_secs(5),
                    Duration::from_secs(20),
                );
                // The thread's live flows: each new one that gets a port joins, the oldest
                // is abandoned (and dies 1 s later, freeing its port for a takeover).
                let mut live: std::collections::VecDeque<u16> = Default::default();
                let mut i = 0u32;
                while i < 10_000_000
                    && (t0.elapsed() < short
                        || t0.elapsed() < long && (opened < 15 || replies < 4000))
                {
                    i += 1;
                    let new = first + (i % 2000) as u16;
                    let mut tries: Vec<u16> = live.iter().copied().collect();
                    tries.push(new);
                    for sport in tries {
                        let q = udp(mac, VMAC, ip, EP_IP, sport, 5353, b"q");
                        let r = run_tc(&mut dp, nic, &q);
                        if r.verdict != TC_REDIRECT {
                            continue;
                        }
                        if sport == new {
                            opened += 1;
                            live.push_back(new);
                            if live.len() > 2 {
                                live.pop_front();
                            }
                        }
                        // The flow was alive this instant: a reply on its port is its own.
                        let snat = port_of(&r.out, 34);
                        let reply = udp(B_MAC, VMAC, B_IP, SNAT_IP, 53, snat, b"r");
                        let back = run_tc(&mut dp, b, &reply);
                        if back.verdict == TC_REDIRECT {
                            replies += 1;
                            let to = (back.out[30..34].to_vec(), port_of(&back.out, 36));
                            if to != (ip.to_vec(), sport) && wrong.len() < 5 {
                                wrong.push(format!("reply for {ip:?}:{sport} went to {to:?}"));
                            }
                        }
                    }
                }
                (opened, replies, wrong)
            })
        })
        .collect();
    let mut total = (0, 0);
    for h in handles {
        let (opened, replies, wrong) = h.join().unwrap();
        assert!(wrong.is_empty(), "misdelivered: {wrong:?}");
        total.0 += opened;
        total.1 += replies;
    }
    println!("{} flows opened, {} replies delivered", total.0, total.1);
    // Sixteen ports, each held at least 1 s and then taken over: tens of takeovers.
    assert!(
        total.0 > 40 && total.1 > 10_000,
        "too little contention to prove anything: {total:?}"
    );
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        claims_are_exclusive(&mut dp, &cfg.timeouts);
        let stats: Vec<_> = dp
            .stats()
            .unwrap()
            .into_iter()
            .map(|(k, c)| (k.1, c.packets))
            .collect();
        println!("counters: {stats:?}");
        assert!(dp.flows().unwrap().len() <= 16);
    })
    .unwrap();
}

#[test]
fn tcp_state_updates_from_both_directions_are_not_lost() {
    require_root!();
    let (ns, n) = namespace();
    let pins = TempDir::bpffs("tcpstate");
    let flows = 4000u16;
    let snat: Vec<u16> = ns
        .run(|| {
            let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
            fill(&mut dp, &n, 20000, 60000);
            (0..flows)
                .map(|i| {
                    let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 30000 + i, 8080, SYN, b"");
                    let out = run_tc(&mut dp, n.c, &syn).out;
                    let p = port_of(&out, 34);
                    let synack = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, p, SYN | ACK, b"");
                    assert_eq!(run_tc(&mut dp, n.b, &synack).verdict, TC_REDIRECT);
                    p
                })
                .collect()
        })
        .unwrap();
    let snat = Arc::new(snat);
    let barrier = Arc::new(Barrier::new(2));
    // One thread closes every flow from the consumer, the other from the backend, in the
    // same order and at the same time: each flow's two FINs race.
    let (c, b) = (n.c, n.b);
    let handles: Vec<_> = [false, true]
        .into_iter()
        .map(|from_backend| {
            let (dir, snat, barrier) = (pins.0.clone(), snat.clone(), barrier.clone());
            spawn_in(ns.name(), move || {
                let mut dp = Dataplane::load_pinned(&dir).unwrap();
                let frames: Vec<(u32, Vec<u8>)> = (0..flows)
                    .map(|i| {
                        if from_backend {
                            let p = snat[i as usize];
                            (b, tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, p, FIN | ACK, b""))
                        } else {
                            let f = tcp(C_MAC, VMAC, C_IP, EP_IP, 30000 + i, 8080, FIN | ACK, b"");
                            (c, f)
                        }
                    })
                    .collect();
                barrier.wait();
                for (nic, f) in &frames {
                    assert_eq!(run_tc(&mut dp, *nic, f).verdict, TC_REDIRECT);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        let all = dp.flows().unwrap();
        assert_eq!(all.len(), flows as usize);
        let open: Vec<_> = all
            .iter()
            .filter(|(_, e)| e.state() != CT_TCP_CLOSING)
            .map(|(k, e)| (u16::from_be(k.sport_be), e.ct))
            .collect();
        assert!(
            open.is_empty(),
            "{} flows lost a FIN: {:?}",
            open.len(),
            &open[..open.len().min(5)]
        );
    })
    .unwrap();
}

/// Which of `cfgs` translated frame `out` (source MAC, SNAT address and port all from it).
fn config_of(out: &[u8], cfgs: [&NodeConfig; 2]) -> Option<usize> {
    let (mac, ip, port) = (&out[6..12], &out[26..30], port_of(out, 34));
    cfgs.iter().position(|cfg| {
        mac == cfg.vmac
            && ip == cfg.snat_ip_be.to_ne_bytes()
            && (cfg.port_lo..=cfg.port_hi).contains(&port)
    })
}

#[test]
fn node_configuration_is_never_read_half_written() {
    require_root!();
    let (ns, n) = namespace();
    let pins = TempDir::bpffs("nodecfg");
    // Two configurations that differ in every field a new flow uses.
    let a = node(40000, 40999);
    let mut b = node(50000, 50999);
    b.snat_ip_be = be([198, 19, 128, 20]);
    b.vmac = [0x02, 0xfe, 0, 0, 0, 0x02];
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        fill(&mut dp, &n, 40000, 40999);
    })
    .unwrap();
    // Both start the clock once loaded (loading verifies the programs, which takes a
    // while on a busy machine).
    let start = Arc::new(Barrier::new(2));
    let dir = pins.0.clone();
    let go = start.clone();
    // The writer switches until the reader is done (or 15 s, should the reader fail).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_w = done.clone();
    let writer = spawn_in(ns.name(), move || {
        let mut dp = Dataplane::load_pinned(&dir).unwrap();
        go.wait();
        let (mut switches, t0) = (0u64, Instant::now());
        while !done_w.load(Acquire) && t0.elapsed() < Duration::from_secs(15) {
            dp.set_node(if switches.is_multiple_of(2) { b } else { a })
                .unwrap();
            switches += 1;
        }
        switches
    });
    let dir = pins.0.clone();
    let c = n.c;
    let reader = spawn_in(ns.name(), move || {
        let mut dp = Dataplane::load_pinned(&dir).unwrap();
        run_tc(&mut dp, c, &udp(C_MAC, VMAC, C_IP, EP_IP, 1, 5353, b""));
        start.wait();
        // 4 s, up to 12 s on a slow (emulated) CPU until 20,000 flows were translated.
        let t0 = Instant::now();
        let more = |n: u64| t0.elapsed() < Duration::from_secs(12) && n < 20_000;
        let (mut seen, mut torn) = ([0u64; 2], Vec::new());
        let mut i = 0u32;
        while t0.elapsed() < Duration::from_secs(4) || more(seen[0] + seen[1] + torn.len() as u64) {
            i += 1;
            let sport = 1024 + (i % 60000) as u16;
            let q = udp(C_MAC, VMAC, C_IP, EP_IP, sport, 5353, b"q");
            let r = run_tc(&mut dp, c, &q);
            if r.verdict != TC_REDIRECT {
                continue;
            }
            if (seen[0] + seen[1]) % 500 == 499 {
                // Free the ports for more new flows.
                vpcep::agent::sync::flush_flows(&mut dp, &Default::default()).unwrap();
            }
            let which = config_of(&r.out, [&a, &b]);
            match which {
                Some(w) => seen[w] += 1,
                // Source MAC to SNAT port, as translated.
                None => torn.push(r.out[6..36].to_vec()),
            }
        }
        done.store(true, Release);
        (seen, torn)
    });
    let switches = writer.join().unwrap();
    let (seen, torn) = reader.join().unwrap();
    println!(
        "{switches} switches; flows translated with A {} and B {} times",
        seen[0], seen[1]
    );
    let (n_torn, first) = (torn.len(), &torn[..torn.len().min(5)]);
    assert!(
        n_torn == 0,
        "half-written configuration used by {n_torn} flows: {first:?}"
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both configurations used: {seen:?}"
    );
}

#[test]
fn a_dead_holders_port_is_taken_by_one_flow_only() {
    require_root!();
    let (ns, n) = namespace();
    let pins = TempDir::bpffs("takeover");
    // Two SNAT ports; SYN flows die after 2 s (each worker ages its own each round).
    let mut cfg = node(PORT_LO, PORT_LO + 1);
    cfg.timeouts.tcp_syn = 2;
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        fill(&mut dp, &n, PORT_LO, PORT_LO + 1);
        dp.set_node(cfg).unwrap();
    })
    .unwrap();
    // Bounded by the count and by time (an emulated CPU is slow).
    let rounds = 10_000u64;
    let meet = Meet::new();
    let workers: Vec<_> = [(n.c, C_MAC, C_IP), (n.x, X_MAC, X_IP)]
        .into_iter()
        .enumerate()
        .map(|(t, (nic, mac, ip))| {
            let (dir, meet) = (pins.0.clone(), meet.clone());
            spawn_in(ns.name(), move || {
                pin_to(t);
                let mut dp = Dataplane::load_pinned(&dir).unwrap();
                run_tc(&mut dp, nic, &tcp(mac, VMAC, ip, EP_IP, 1, 8080, ACK, b""));
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut ports = Vec::new();
                for r in 1..=rounds {
                    // Once both sent the round before, each ages its flow of it past its
                    // timeout (claim too): at the next meeting both ports have a dead
                    // holder.
                    if Instant::now() > deadline || !meet.arrive(t, 2 * r - 1) {
                        break;
                    }
                    let sport = 20000 + r as u16;
                    let k = flow_key(ip, EP_IP, sport - 1, 8080, IPPROTO_TCP);
                    if dp.flow(&k).unwrap().is_some() {
                        age_flow(&mut dp, &k, 3);
                    }
                    if !meet.arrive(t, 2 * r) {
                        break;
                    }
                    let syn = tcp(mac, VMAC, ip, EP_IP, sport, 8080, SYN, b"");
                    let out = run_tc(&mut dp, nic, &syn);
                    let port = (out.verdict == TC_REDIRECT).then(|| port_of(&out.out, 34));
                    ports.push((r, port));
                }
                meet.end();
                ports
            })
        })
        .collect();
    let got: Vec<Vec<(u64, Option<u16>)>> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    let rounds = got[0].len().min(got[1].len());
    ns.run(|| {
        let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
        claims_are_exclusive(&mut dp, &cfg.timeouts);
    })
    .unwrap();
    let mut shared = Vec::new();
    let mut taken = 0;
    for (a, b) in got[0].iter().zip(&got[1]) {
        assert_eq!(a.0, b.0);
        taken += a.1.is_some() as u32 + b.1.is_some() as u32;
        if a.1.is_some() && a.1 == b.1 {
            shared.push((a.0, a.1));
        }
    }
    println!("{rounds} rounds, {taken} ports taken over");
    assert!(
        shared.is_empty(),
        "one SNAT port given to both CPUs' flows in {} of {rounds} rounds: {:?}",
        shared.len(),
        &shared[..shared.len().min(5)]
    );
    assert!(
        taken as usize > rounds && rounds >= 1000,
        "too few takeovers to prove anything: {taken} in {rounds} rounds"
    );
}

/// Two workers that meet at every step: each publishes the step it reached and spins
/// until the other reached it too, so both leave within a few hundred nanoseconds and no
/// third thread needs their CPUs in between. Either one ending (its deadline) stops both.
struct Meet {
    at: [std::sync::atomic::AtomicU64; 2],
    stop: std::sync::atomic::AtomicBool,
}

impl Meet {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            at: [0.into(), 0.into()],
            stop: false.into(),
        })
    }

    /// Worker `me` reached `step`; false once the other stopped.
    fn arrive(&self, me: usize, step: u64) -> bool {
        use std::sync::atomic::Ordering::{Acquire, Release};
        self.at[me].store(step, Release);
        while self.at[1 - me].load(Acquire) < step {
            if self.stop.load(Acquire) {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    }

    fn end(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A start offset for step `i` in nanoseconds, -`w`..=`w` (xorshift of the step): the two
/// directions' paths reach the state update at different depths, so one side waits a
/// varying moment before it sends, and some steps line both updates up.
fn offset_ns(i: u64, w: i64) -> i64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % (2 * w as u64 + 1)) as i64 - w
}

fn spin_for(ns: i64) {
    let until = Instant::now() + Duration::from_nanos(ns.max(0) as u64);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Loads the scenario into the maps pinned at `dir` and opens `flows` established TCP
/// flows from C (client ports from 30000); their SNAT ports.
fn established(dir: &std::path::Path, n: &Nics, flows: u16) -> Vec<u16> {
    let mut dp = Dataplane::load_pinned(dir).unwrap();
    fill(&mut dp, n, 20000, 60000);
    (0..flows)
        .map(|i| {
            let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 30000 + i, 8080, SYN, b"");
            let out = run_tc(&mut dp, n.c, &syn);
            assert_eq!(out.verdict, TC_REDIRECT, "SYN of flow {i}");
            let p = port_of(&out.out, 34);
            let synack = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, p, SYN | ACK, b"");
            let back = run_tc(&mut dp, n.b, &synack).verdict;
            assert_eq!(back, TC_REDIRECT, "SYN-ACK of flow {i}");
            p
        })
        .collect()
}

#[test]
fn fins_from_both_sides_at_once_close_the_flow() {
    require_root!();
    let (ns, n) = namespace();
    let pins = TempDir::bpffs("fins");
    // Established flows, then their two FINs at once, one flow after the other: bounded
    // by the count and by time (an emulated CPU is slow).
    let flows = 10_000u16;
    let snat = ns.run(|| established(&pins.0, &n, flows)).unwrap();
    let snat = Arc::new(snat);
    let meet = Meet::new();
    let start = Arc::new(Barrier::new(2));
    let workers: Vec<_> = [false, true]
        .into_iter()
        .enumerate()
        .map(|(t, from_backend)| {
            let (dir, meet, snat, start) =
                (pins.0.clone(), meet.clone(), snat.clone(), start.clone());
            let (c, b) = (n.c, n.b);
            spawn_in(ns.name(), move || {
                pin_to(t);
                let mut dp = Dataplane::load_pinned(&dir).unwrap();
                let frames: Vec<(u32, Vec<u8>)> = (0..flows)
                    .map(|i| {
                        if from_backend {
                            let p = snat[i as usize];
                            (b, tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, p, FIN | ACK, b""))
                        } else {
                            let f = tcp(C_MAC, VMAC, C_IP, EP_IP, 30000 + i, 8080, FIN | ACK, b"");
                            (c, f)
                        }
                    })
                    .collect();
                start.wait();
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut sent = 0u64;
                for (i, (nic, f)) in frames.iter().enumerate() {
                    let step = i as u64 + 1;
                    if Instant::now() > deadline || !meet.arrive(t, step) {
                        break;
                    }
                    let o = offset_ns(step, 20_000);
                    spin_for(if from_backend { -o } else { o });
                    assert_eq!(run_tc(&mut dp, *nic, f).verdict, TC_REDIRECT);
                    sent += 1;
                }
                meet.end();
                sent
            })
        })
        .collect();
    let sent: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // A flow both sides sent their FIN for must be closing.
    let both = sent[0].min(sent[1]) as u16;
    let started = Instant::now();
    let lost = ns
        .run(|| {
            let mut dp = Dataplane::load_pinned(&pins.0).unwrap();
            (0..both)
                .filter_map(|i| {
                    let key = flow_key(C_IP, EP_IP, 30000 + i, 8080, IPPROTO_TCP);
                    let e = dp.flow(&key).unwrap().unwrap();
                    (e.state() != CT_TCP_CLOSING).then_some((i, e.ct))
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    println!(
        "{both} flows closed from both sides at once ({sent:?} FINs sent), checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "a FIN of one side lost in {} of {both} flows: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        both > 1000,
        "too few flows closed to prove anything: {both}"
    );
}
