//! `cargo xtask bench dataplane`: ns/packet of the TC and XDP programs through
//! BPF_PROG_TEST_RUN, with 10,000 endpoints and 1,000,000 conntrack entries loaded, next
//! to a no-op program on the same hook measured in the same run.
//!
//! Paths that leave the packet unchanged run with `repeat` = 1,000,000 in one call. A
//! test run rewrites the same buffer on every repeat, so a translated packet would take
//! another path on its second pass; translating paths are therefore timed as 1,000,000
//! single runs (repeat = 1), each on a fresh copy of the packet, and compared with the
//! no-op timed the same way (the per-run timer overhead is in both).
use std::time::Instant;

use aya::programs::{TestRun, TestRunOptions};
use vpcep::dataplane::Dataplane;
use vpcep_common::{
    endpoint::*,
    maps,
    stats::{Hook, Reason},
};
use vpcep_tests::{delete_namespace_on_signal, fastpath::*, monotonic_ns};

const ENDPOINTS: u32 = 10_000;
/// Conntrack entries loaded before measuring (`VPCEP_BENCH_FLOWS` overrides, to compare).
fn flows() -> u32 {
    std::env::var("VPCEP_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}
const RUNS: u32 = 1_000_000;
// Enough backends that 1e6 new flows fill each one's SNAT port space only to ~50%.
const BACKENDS: u32 = 32;

enum Prog {
    Tc(&'static str),
    Xdp(&'static str),
}

fn ctx_for(prog: &Prog, ifindex: u32, len: usize) -> Vec<u8> {
    match prog {
        Prog::Tc(_) => {
            let mut c = vec![0u8; 192];
            c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            c
        }
        Prog::Xdp(_) => {
            let mut c = vec![0u8; 24];
            c[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
            c[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            c
        }
    }
}

/// One test run; returns the kernel's ns/run and the return value.
fn run(dp: &mut Dataplane, prog: &Prog, ifindex: u32, frame: &[u8], repeat: u32) -> (f64, u32) {
    let ctx = ctx_for(prog, ifindex, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    };
    let r = match prog {
        Prog::Tc(name) => dp.tc_named(name).unwrap().test_run(opts),
        Prog::Xdp(name) => dp.xdp_named(name).unwrap().test_run(opts),
    }
    .unwrap();
    (r.duration.as_nanos() as f64, r.return_value)
}

/// Kernel ns/run over `RUNS` single runs, the frame for run `i` from `frame(i)`: the mean
/// and the median (the mean also carries the rare runs an interrupt lands in).
fn singles(
    dp: &mut Dataplane,
    prog: &Prog,
    ifindex: u32,
    mut frame: impl FnMut(u32) -> Vec<u8>,
) -> (f64, f64) {
    let mut v: Vec<f64> = (0..RUNS)
        .map(|i| run(dp, prog, ifindex, &frame(i), 1).0)
        .collect();
    let mean = v.iter().sum::<f64>() / RUNS as f64;
    v.sort_by(f64::total_cmp);
    (mean, v[v.len() / 2])
}

/// ns/packet of one measurement: a repeat run gives one figure, single runs a mean and
/// a median.
#[derive(Clone, Copy)]
struct Ns {
    mean: f64,
    median: Option<f64>,
}

impl Ns {
    fn repeat(v: f64) -> Self {
        Self {
            mean: v,
            median: None,
        }
    }

    fn singles((mean, median): (f64, f64)) -> Self {
        Self {
            mean,
            median: Some(median),
        }
    }
}

enum Target {
    /// At most this many ns above the no-op measured the same way.
    OverNoop(f64),
    /// At most this many ns.
    Absolute(f64),
}

struct Row {
    name: String,
    ns: Ns,
    base: Ns,
    target: Option<Target>,
}

impl Row {
    fn new(name: &str, ns: Ns, base: Ns) -> Self {
        Self {
            name: name.to_owned(),
            ns,
            base,
            target: None,
        }
    }

    fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("".to_owned(), |v| format!("{v:.1}"));
        let dmed = self.ns.median.zip(self.base.median).map(|(a, b)| a - b);
        write!(
            f,
            "{:<54} {:>8.1} {:>8} {:>+9.1} {:>9}",
            self.name,
            self.ns.mean,
            opt(self.ns.median),
            self.ns.mean - self.base.mean,
            dmed.map_or("".to_owned(), |d| format!("{d:+.1}")),
        )?;
        // Met only if both the mean and the median meet it.
        let (limit, values) = match self.target {
            None => return Ok(()),
            Some(Target::OverNoop(n)) => (
                format!("≤ no-op + {n}"),
                [Some(self.ns.mean - self.base.mean), dmed],
            ),
            Some(Target::Absolute(n)) => (format!("≤ {n}"), [Some(self.ns.mean), self.ns.median]),
        };
        let bound = match self.target {
            Some(Target::OverNoop(n) | Target::Absolute(n)) => n,
            None => 0.0,
        };
        let met = values.iter().flatten().all(|v| *v <= bound);
        write!(f, "  {limit}: {}", if met { "met" } else { "NOT met" })
    }
}

fn ep_ip(k: u32) -> [u8; 4] {
    [10, 1, (k / 256) as u8, (k % 256) as u8]
}

fn backend_ip(b: u32) -> [u8; 4] {
    [10, 2, 0, 10 + b as u8]
}

/// A TCP segment with explicit sequence and acknowledgement numbers.
#[allow(clippy::too_many_arguments)]
fn seg(
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(smac, VMAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65535);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// The endpoint of the tcp_proxy rows: its own service, `proxy_open`, same backend.
const PROXY_EP: [u8; 4] = [10, 0, 0, 120];

fn count(dp: &Dataplane, r: Reason) -> u64 {
    dp.counter(Hook::TcIngress, r).unwrap().packets
}

fn bench(n: &Nics) {
    let mut dp = scenario(n, 1024, 65535);
    let t = Instant::now();
    for b in 0..BACKENDS {
        dp.set_service(
            100 + b,
            Service {
                backend_ip_be: be(backend_ip(b)),
                backend_vpc_id: 2,
                ifindex: n.b,
                remote_node_be: 0,
                backend_mac: B_MAC,
                location: SVC_LOCAL,
                tcp_proxy: TCP_PROXY_CLOSE,
            },
        )
        .unwrap();
        dp.set_port(
            port(100 + b, 8080, IPPROTO_TCP),
            PortTarget {
                server_port_be: 80u16.to_be(),
                _pad: 0,
            },
        )
        .unwrap();
    }
    for k in 0..ENDPOINTS {
        dp.set_endpoint(
            ep_key(ep_ip(k)),
            Endpoint {
                endpoint_id: 100 + k,
                service_id: 100 + k % BACKENDS,
                marker_id: k,
                flags: EP_ACCEPTED | EP_PERMITTED,
                epoch: 0,
                ..Endpoint::default()
            },
        )
        .unwrap();
    }
    let now = monotonic_ns();
    let total_flows = flows();
    for i in 0..total_flows {
        let k = i % ENDPOINTS;
        let key = FlowKey {
            vpc_id: 1,
            src_be: be([10, 0, (i >> 16) as u8 + 10, 2]),
            dst_be: be(ep_ip(k)),
            sport_be: (i as u16).to_be(),
            dport_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let rev = RevKey {
            snat_be: be(SNAT_IP),
            backend_be: be([10, 3, (i >> 16) as u8, 1]),
            snat_port_be: (i as u16).to_be(),
            backend_port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        dp.insert_flow(
            key,
            FlowEntry {
                rev,
                owner: i as u64 + 1,
                last_seen_ns: now,
                ct: CT_F_ESTABLISHED,
                endpoint_id: 100 + k,
                service_id: 100 + k % BACKENDS,
                out_ifindex: n.b,
                epoch: 0,
                generation: 0,
                remote_node_be: 0,
                backend_vpc_id: 2,
                consumer_ifindex: n.c,
                backend_mac: B_MAC,
                consumer_mac: C_MAC,
                pp_isn: 0,
                pp_len: 0,
                pp_mode: 0,
                pp_sent: 0,
                pp_acked: 0,
                _pad: [0; 3],
            },
        )
        .unwrap();
        dp.insert_rev(
            rev,
            RevEntry {
                owner: i as u64 + 1,
                fwd: key,
                _pad: [0; 4],
            },
        )
        .unwrap();
    }
    println!(
        "loaded {ENDPOINTS} endpoints and {total_flows} flows ({} conntrack entries) in {:.1} s",
        2 * total_flows,
        t.elapsed().as_secs_f64()
    );

    // The measured flow, established through the programs themselves.
    let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 33000, 8080, SYN, b"");
    let out = run_tc(&mut dp, n.c, &syn).out;
    let snat_port = u16::from_be_bytes([out[34], out[35]]);
    run_tc(
        &mut dp,
        n.b,
        &tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, SYN | ACK, b""),
    );
    let fwd = tcp(C_MAC, VMAC, C_IP, EP_IP, 33000, 8080, ACK, &[0x55; 64]);
    let reply = tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, ACK, &[0x55; 64]);
    let other = tcp(
        C_MAC,
        VMAC,
        C_IP,
        [10, 0, 0, 9],
        33000,
        8080,
        ACK,
        &[0x55; 64],
    );
    let pending = tcp(C_MAC, VMAC, C_IP, EP_PENDING, 33000, 8080, SYN, b"");

    // A proxy_open flow (header on the first ACK), established through the programs:
    // its data segments are after the correction position, so each gets its sequence
    // number shifted, and each reply its acknowledgement number.
    let mut psvc = dp
        .services()
        .unwrap()
        .into_iter()
        .find(|(i, _)| *i == 3)
        .unwrap()
        .1;
    psvc.tcp_proxy = TCP_PROXY_PROXY_OPEN;
    dp.set_service(60, psvc).unwrap();
    dp.set_port(
        port(60, 8080, IPPROTO_TCP),
        PortTarget {
            server_port_be: 80u16.to_be(),
            _pad: 0,
        },
    )
    .unwrap();
    let tmpl = ProxyTemplate::new("5f0c1d4e-0a1b-4c2d-8e3f-000000000060", 60, "vpc-1", 1).unwrap();
    dp.set_proxy_template(60, tmpl).unwrap();
    dp.set_endpoint(
        ep_key(PROXY_EP),
        Endpoint {
            endpoint_id: 60,
            service_id: 60,
            marker_id: 60,
            flags: EP_ACCEPTED | EP_PERMITTED,
            ..Endpoint::default()
        },
    )
    .unwrap();
    let hl = tmpl.header_len(TCP_PROXY_PROXY_OPEN) as u32;
    let out = run_tc(
        &mut dp,
        n.c,
        &seg(C_MAC, C_IP, PROXY_EP, 33001, 8080, 1000, 0, SYN, b""),
    )
    .out;
    let psnat = u16::from_be_bytes([out[34], out[35]]);
    run_tc(
        &mut dp,
        n.b,
        &seg(B_MAC, B_IP, SNAT_IP, 80, psnat, 7000, 1001, SYN | ACK, b""),
    );
    let hdr = run_tc(
        &mut dp,
        n.c,
        &seg(C_MAC, C_IP, PROXY_EP, 33001, 8080, 1001, 7001, ACK, b""),
    );
    assert_eq!(
        hdr.out.len(),
        54 + hl as usize,
        "the header went on the first ACK"
    );
    let pfwd = seg(
        C_MAC,
        C_IP,
        PROXY_EP,
        33001,
        8080,
        5001,
        7001,
        ACK,
        &[0x55; 64],
    );
    let preply = seg(
        B_MAC,
        B_IP,
        SNAT_IP,
        80,
        psnat,
        7001,
        5001 + hl,
        ACK,
        &[0x55; 64],
    );
    // The same segments on the close flow, for the same comparison.
    let cfwd = seg(
        C_MAC,
        C_IP,
        EP_IP,
        33000,
        8080,
        5001,
        7001,
        ACK,
        &[0x55; 64],
    );

    let noop_tc = Prog::Tc(maps::PROG_NOOP_TC);
    let tc = Prog::Tc(maps::PROG_TC_INGRESS);
    let floor_est = Prog::Tc(maps::PROG_FLOOR_ESTABLISHED);
    let floor_new = Prog::Tc(maps::PROG_FLOOR_NEW_FLOW);
    let noop_xdp = Prog::Xdp(maps::PROG_NOOP_XDP);
    let xdp = Prog::Xdp(maps::PROG_XDP);
    let rep = 1_000_000;

    let mut rows: Vec<Row> = Vec::new();
    // Repeat mode: unchanged packets.
    let base = Ns::repeat(run(&mut dp, &noop_tc, n.c, &other, rep).0);
    rows.push(Row::new("tc  no-op (repeat 1e6)", base, base));
    let c0 = count(&dp, Reason::PassTcp);
    let v = Ns::repeat(run(&mut dp, &tc, n.c, &other, rep).0);
    assert_eq!(count(&dp, Reason::PassTcp) - c0, rep as u64);
    rows.push(Row::new(
        "tc  non-endpoint pass-through (repeat 1e6)",
        v,
        base,
    ));
    let c0 = count(&dp, Reason::DropNotAccepted);
    let v = Ns::repeat(run(&mut dp, &tc, n.c, &pending, rep).0);
    assert_eq!(count(&dp, Reason::DropNotAccepted) - c0, rep as u64);
    rows.push(Row::new("tc  dropped not-accepted (repeat 1e6)", v, base));
    let v = Ns::repeat(run(&mut dp, &floor_est, n.c, &fwd, rep).0);
    rows.push(Row::new(
        "tc  floor: established-flow map+helper work (repeat)",
        v,
        base,
    ));

    // Single runs: translating paths.
    let base1 = Ns::singles(singles(&mut dp, &noop_tc, n.c, |_| fwd.clone()));
    rows.push(Row::new("tc  no-op (1e6 single runs)", base1, base1));
    let v = Ns::singles(singles(&mut dp, &tc, n.c, |_| other.clone()));
    rows.push(Row::new(
        "tc  non-endpoint pass-through (1e6 single runs)",
        v,
        base1,
    ));
    let v = Ns::singles(singles(&mut dp, &floor_est, n.c, |_| fwd.clone()));
    rows.push(Row::new(
        "tc  floor: established-flow map+helper work (singles)",
        v,
        base1,
    ));
    let c0 = count(&dp, Reason::FwdEstablished);
    let v = Ns::singles(singles(&mut dp, &tc, n.c, |_| fwd.clone()));
    assert_eq!(
        count(&dp, Reason::FwdEstablished) - c0,
        RUNS as u64,
        "established path not taken"
    );
    rows.push(
        Row::new("tc  established consumer → backend", v, base1).target(Target::OverNoop(40.0)),
    );
    let c0 = count(&dp, Reason::RevReply);
    let v = Ns::singles(singles(&mut dp, &tc, n.b, |_| reply.clone()));
    assert_eq!(
        count(&dp, Reason::RevReply) - c0,
        RUNS as u64,
        "reply path not taken"
    );
    rows.push(
        Row::new("tc  established reply backend → consumer", v, base1)
            .target(Target::OverNoop(40.0)),
    );
    // tcp_proxy: the established-packet cost of a proxy_open flow against close, both ways.
    let vc = Ns::singles(singles(&mut dp, &tc, n.c, |_| cfwd.clone()));
    rows.push(Row::new(
        "tc  established consumer → backend, close",
        vc,
        base1,
    ));
    let shifted = run_tc(&mut dp, n.c, &pfwd).out;
    assert_eq!(
        u32::from_be_bytes(shifted[38..42].try_into().unwrap()),
        5001 + hl,
        "proxy_open sequence adjustment not taken"
    );
    let vp = Ns::singles(singles(&mut dp, &tc, n.c, |_| pfwd.clone()));
    rows.push(Row::new(
        "tc  established consumer → backend, proxy_open",
        vp,
        vc,
    ));
    let vr = Ns::singles(singles(&mut dp, &tc, n.b, |_| preply.clone()));
    rows.push(Row::new(
        "tc  established reply backend → consumer, proxy_open",
        vr,
        v,
    ));
    // New flows, twice: the first million take conntrack elements the kernel has never
    // touched (on a VM whose memory the host backs lazily, each fresh page costs a host
    // fault); the second million reuse elements, as a node in steady state does.
    for (round, label) in [(0u32, "first use of map memory"), (1, "steady state")] {
        if round == 1 {
            // Steady state: earlier flows have gone idle, so their SNAT ports and
            // conntrack elements are reused (a zero SYN timeout makes them idle now).
            let mut node = node(1024, 65535);
            node.timeouts.tcp_syn = 0;
            dp.set_node(node).unwrap();
            // A full table refuses new flows rather than evict: the agent's collector frees
            // idle flows' elements, here as on a node between two of its sweeps.
            let t = Instant::now();
            let (live, removed) =
                vpcep::agent::sync::gc_conntrack(&mut dp, &node.timeouts).unwrap();
            eprintln!(
                "collector: {removed} idle flows and claims removed, {live} live, in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        let c0 = count(&dp, Reason::FwdNewFlow);
        let v = Ns::singles(singles(&mut dp, &tc, n.c, |i| {
            let k = i % ENDPOINTS;
            let sport = 1024 + (round * (RUNS / ENDPOINTS + 1) + i / ENDPOINTS) as u16;
            tcp(C_MAC, VMAC, C_IP, ep_ip(k), sport, 8080, SYN, b"")
        }));
        let new = count(&dp, Reason::FwdNewFlow) - c0;
        let drops: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| count(&dp, **r) > 0)
            .map(|r| format!("{r:?} {}", count(&dp, *r)))
            .collect();
        if new < RUNS as u64 * 99 / 100 {
            let (f, r) = (dp.flows().unwrap().len(), dp.revs().unwrap().len());
            panic!(
                "only {new} of {RUNS} SYNs created flows; drops so far: {drops:?}; \
                 {f} forward and {r} reverse entries"
            );
        }
        rows.push(
            Row::new(&format!("tc  new TCP flow (SYN), {label}"), v, base1)
                .target(Target::Absolute(400.0)),
        );
    }
    // The floor for new flows: fresh keys into the same two maps, after the collector has
    // freed the second round's (idle) flows so that its inserts find room, as the rounds did.
    let mut idle = node(1024, 65535);
    idle.timeouts.tcp_syn = 0;
    vpcep::agent::sync::gc_conntrack(&mut dp, &idle.timeouts).unwrap();
    let v = Ns::singles(singles(&mut dp, &floor_new, n.c, |_| fwd.clone()));
    rows.push(Row::new("tc  floor: new-flow map work (singles)", v, base1));
    let v = Ns::repeat(run(&mut dp, &floor_new, n.c, &fwd, rep).0);
    rows.push(Row::new(
        "tc  floor: new-flow map work (repeat 1e6)",
        v,
        base,
    ));

    let xbase = Ns::repeat(run(&mut dp, &noop_xdp, n.c, &other, rep).0);
    rows.push(Row::new("xdp no-op (repeat 1e6)", xbase, xbase));
    let v = Ns::repeat(run(&mut dp, &xdp, n.c, &other, rep).0);
    rows.push(Row::new(
        "xdp non-endpoint pass-through (repeat 1e6)",
        v,
        xbase,
    ));
    let v = Ns::repeat(run(&mut dp, &xdp, n.c, &pending, rep).0);
    rows.push(Row::new("xdp dropped not-accepted (repeat 1e6)", v, xbase));
    let v = Ns::repeat(run(&mut dp, &xdp, n.c, &fwd, rep).0);
    rows.push(Row::new(
        "xdp endpoint early checks, pass to TC (repeat 1e6)",
        v,
        xbase,
    ));

    println!(
        "\n{:<54} {:>8} {:>8} {:>9} {:>9}  target",
        "case", "mean", "median", "Δmean", "Δmedian"
    );
    for r in &rows {
        println!("{r}");
    }
    let flows = dp.flows().map(|f| f.len()).unwrap_or(0);
    println!(
        "\nconntrack forward entries after the run: {flows} (capacity {})",
        maps::MAX_FLOWS
    );
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the dataplane benchmark loads BPF programs: run as root (cargo xtask bench dataplane)"
        );
        std::process::exit(1);
    }
    let (ns, nics) = namespace();
    delete_namespace_on_signal(ns.name());
    let result = ns.run(|| bench(&nics));
    // Remove the namespace before exiting (exit skips destructors).
    drop(ns);
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
