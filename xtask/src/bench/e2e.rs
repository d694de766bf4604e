//! `cargo xtask bench e2e`: traffic from a consumer VM namespace through a node namespace to
//! a backend VM namespace (both VMs in 10.0.0.0/24), three ways on the same veths, in turns:
//!
//! * plain — the node routes 10.0.0.2 <-> 10.0.0.5 (host routes, proxy ARP), no
//!   translation;
//! * nft — nftables DNAT 10.0.0.100:port -> 10.0.0.5:port plus SNAT to 198.19.128.10, with
//!   conntrack;
//! * vpcep — the vpcep TC program on tapc/tapb doing the same translation.
//!
//! In the vpcep turn, tcp_proxy is measured too: the same service twice, `close` (endpoint
//! 10.0.0.100) against `proxy_open` (10.0.0.101, header on the first ACK), one bulk stream
//! (`vpcep-load bulk` to a sink), connections/s and RR latency, the backends reading the
//! PROXY header first where there is one.
//!
//! Load generator on CPU 0, receiver/server on CPU 1. Every measurement is bounded in time;
//! every namespace and process is removed on exit, also on failure and on Ctrl-C.
use std::path::Path;

use anyhow::Result;
use xtask::netns::{NetNs, Topology};

use super::{
    common::{Dataplane, Length, Samples, TempDir, cell, check, guarded, nic_toml, ratio},
    traffic::{Servers, Target, Tools, more_servers},
};

const MODES: [&str; 3] = ["plain", "nft", "vpcep"];

const NODE_TOML: &str = r#"[node]
snat_ip = "198.19.128.10"
port_range = [1024, 65535]
vmac = "02:fe:00:00:00:01"

"#;

const SERVICE_TOML: &str = r#"[[service]]
id = 3
backend_ip = "10.0.0.5"
backend_vpc = 2
backend_iface = "tapb"
backend_mac = "02:00:00:00:00:05"
ports = [
  { client = 8080, server = 80, protocol = "TCP" },
  { client = 8081, server = 81, protocol = "TCP" },
  { client = 8082, server = 5201, protocol = "TCP" },
  { client = 8083, server = 182, protocol = "TCP" },
  { client = 5353, server = 53, protocol = "UDP" },
]

[[service]]
id = 4
backend_ip = "10.0.0.5"
backend_vpc = 2
backend_iface = "tapb"
backend_mac = "02:00:00:00:00:05"
tcp_proxy = "proxy_open"
ports = [
  { client = 8080, server = 180, protocol = "TCP" },
  { client = 8081, server = 181, protocol = "TCP" },
  { client = 8083, server = 182, protocol = "TCP" },
]

[[endpoint]]
id = 7
vpc = 1
ip = "10.0.0.100"
service = 3
accepted = true

[[endpoint]]
id = 8
vpc = 1
ip = "10.0.0.101"
service = 4
accepted = true
"#;

/// The data plane's maps: both NICs, the service and the endpoint.
fn vpcep_toml() -> String {
    let mut t = String::from(NODE_TOML);
    t += &nic_toml("tapc", 1, "10.0.0.2", "02:00:00:00:00:02");
    t += &nic_toml("tapb", 2, "10.0.0.5", "02:00:00:00:00:05");
    t + SERVICE_TOML
}

const NFT_CONF: &str = r#"table ip vpcep_bench {
  chain pre {
    type nat hook prerouting priority dstnat;
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8080 dnat to 10.0.0.5:80
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8081 dnat to 10.0.0.5:81
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8082 dnat to 10.0.0.5:5201
    iifname "tapc" ip daddr 10.0.0.100 udp dport 5353 dnat to 10.0.0.5:53
  }
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "tapb" ip saddr 10.0.0.2 snat to 198.19.128.10
  }
}
"#;

/// key, label, unit, higher is better, target ratio for vpcep
type Spec = (&'static str, &'static str, &'static str, bool, Option<f64>);
const SPEC: [Spec; 6] = [
    (
        "udp_pps",
        "UDP 18-byte datagrams received",
        "pps",
        true,
        Some(0.97),
    ),
    (
        "cps",
        "TCP connections/s (1-byte req/resp)",
        "conn/s",
        true,
        Some(0.95),
    ),
    ("bulk1", "TCP bulk, 1 stream", "Gbit/s", true, Some(0.97)),
    ("bulk4", "TCP bulk, 4 streams", "Gbit/s", true, Some(0.97)),
    ("rr_p50", "1-byte RR latency p50", "us", false, None),
    ("rr_p99", "1-byte RR latency p99", "us", false, Some(1.03)),
];

/// tcp_proxy: key (suffix `_close` / `_proxy`), label, unit, higher is better, target ratio
/// proxy_open / close.
const PROXY_SPEC: [Spec; 3] = [
    ("px_bulk", "TCP bulk, 1 stream", "Gbit/s", true, Some(0.95)),
    ("px_cps", "TCP connections/s", "conn/s", true, Some(0.90)),
    ("px_rr_p99", "1-byte RR latency p99", "us", false, None),
];

pub fn run(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    guarded(|| bench(vpcep, load, len))
}

fn bench(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    let tmp = TempDir::new("e2e")?;
    let topo = topology()?;
    let (node, c, b) = (&topo.node, &topo.vms[0].ns, &topo.vms[1].ns);
    std::fs::write(tmp.path("vpcep.toml"), vpcep_toml())?;
    std::fs::write(tmp.path("nft.conf"), NFT_CONF)?;
    // Servers in the backend, on CPU 1, for the whole run (bounded).
    let total = (len.runs * 3 * (12 * len.secs + 12) + 60).min(3600);
    let _servers = Servers::start(b, load, &[80, 81], Some(5201), total)?;
    let proxy: &[&str] = &["proxy"];
    let _more = more_servers(
        b,
        load,
        &[
            (180, "tcp-server", proxy),
            (181, "tcp-server", proxy),
            (182, "tcp-sink", &[]),
        ],
        total,
    )?;
    let tools = Tools {
        client: c,
        server: b,
        load,
        secs: len.secs,
    };
    let mut samples = Samples::default();
    for r in 1..=len.runs {
        for m in MODES {
            check()?;
            println!(
                "run {r}/{}: {m} (UDP pps, connections/s, bulk 1 and 4 streams, RR latency; {} s each)",
                len.runs, len.secs
            );
            let dp = mode_on(m, node, vpcep, &tmp, total)?;
            for ns in [c, b] {
                ns.ip(&["neigh", "flush", "dev", "eth0"])?;
            }
            measure(&tools, m, &mut samples)?;
            mode_off(m, node, dp)?;
        }
    }
    report(&samples);
    Ok(())
}

/// The node with the consumer (`tapc`, 10.0.0.2) and the backend (`tapb`, 10.0.0.5),
/// routed by the node (host routes, proxy ARP).
fn topology() -> Result<Topology> {
    let mut topo = Topology::new()?;
    topo.add_vm("tapc", "10.0.0.2/24", "02:00:00:00:00:02")?;
    topo.add_vm("tapb", "10.0.0.5/24", "02:00:00:00:00:05")?;
    let (n, c, b) = (&topo.node, &topo.vms[0].ns, &topo.vms[1].ns);
    println!(
        "topology: namespaces {} (node), {} (consumer 10.0.0.2), {} (backend 10.0.0.5)",
        n.name(),
        c.name(),
        b.name()
    );
    for i in ["tapc", "tapb"] {
        n.ip(&["addr", "add", "10.0.0.1/32", "dev", i])?;
    }
    for vm in [c, b] {
        vm.ip(&["route", "add", "default", "via", "10.0.0.1"])?;
    }
    for (ip, dev) in [
        ("10.0.0.2", "tapc"),
        ("10.0.0.5", "tapb"),
        ("10.0.0.100", "tapb"),
    ] {
        n.ip(&["route", "add", &format!("{ip}/32"), "dev", dev])?;
    }
    n.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    for i in ["tapc", "tapb"] {
        n.exec(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{i}.proxy_arp=1")],
        )?;
    }
    c.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=10000 65000"],
    )?;
    Ok(topo)
}

fn mode_on(
    mode: &str,
    node: &NetNs,
    vpcep: &Path,
    tmp: &TempDir,
    secs: u64,
) -> Result<Option<Dataplane>> {
    match mode {
        "nft" => {
            node.exec("nft", &["-f", &tmp.path("nft.conf").to_string_lossy()])?;
            node.ip(&["neigh", "add", "proxy", "10.0.0.100", "dev", "tapc"])?;
            Ok(None)
        }
        "vpcep" => {
            let config = tmp.path("vpcep.toml").to_string_lossy().into_owned();
            let args = ["--config", &config, "--mode", "tc"];
            Dataplane::run_in(node, vpcep, &args, secs, tmp.path("run.log")).map(Some)
        }
        _ => Ok(None),
    }
}

fn mode_off(mode: &str, node: &NetNs, dp: Option<Dataplane>) -> Result<()> {
    if mode == "nft" {
        node.exec("nft", &["delete", "table", "ip", "vpcep_bench"])?;
        node.ip(&["neigh", "del", "proxy", "10.0.0.100", "dev", "tapc"])?;
    }
    match dp {
        Some(dp) => dp.stop(),
        None => Ok(()),
    }
}

fn measure(t: &Tools, mode: &'static str, s: &mut Samples) -> Result<()> {
    let to = if mode == "plain" {
        Target::Backend
    } else {
        Target::Endpoint
    };
    s.push(mode, "udp_pps", t.udp_pps(&to.addr(53, 5353))?);
    s.push(mode, "cps", t.cps(&to.addr(80, 8080))?);
    let bulk = to.addr(5201, 8082);
    s.push(mode, "bulk1", t.bulk(&bulk, Some(1))?);
    s.push(mode, "bulk4", t.bulk(&bulk, Some(4))?);
    let (p50, p99) = t.rr(&to.addr(81, 8081))?;
    s.push(mode, "rr_p50", p50);
    s.push(mode, "rr_p99", p99);
    if mode == "vpcep" {
        // tcp_proxy on the same data plane. Bulk in ABBA order (close, proxy_open,
        // proxy_open, close): a drift of the machine's speed within the run falls on both.
        let (close, proxy) = (("10.0.0.100", "close"), ("10.0.0.101", "proxy"));
        for (ep, m) in [close, proxy, proxy, close] {
            s.push(m, "px_bulk", t.load_bulk(&format!("{ep}:8083"))?);
        }
        for (ep, m) in [close, proxy] {
            s.push(m, "px_cps", t.cps(&format!("{ep}:8080"))?);
            s.push(m, "px_rr_p99", t.rr(&format!("{ep}:8081"))?.1);
        }
    }
    Ok(())
}

fn report(s: &Samples) {
    println!();
    println!("| measure | plain | nftables | vpcep | nft / plain | vpcep / plain | target | met |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for (k, label, unit, up, tgt) in SPEC {
        let med = |m: &str| s.median(m, k);
        let r = |m: &str| ratio(med(m), med("plain"));
        let (t, met) = match tgt {
            None => (String::new(), ""),
            Some(tgt) if up => (format!("≥ {tgt:.2}×"), met(r("vpcep") >= tgt)),
            Some(tgt) => (format!("≤ {tgt:.2}×"), met(r("vpcep") <= tgt)),
        };
        println!(
            "| {label} ({unit}) | {} | {} | {} | {:.3} | {:.3} | {t} | {met} |",
            cell(unit, med("plain")),
            cell(unit, med("nft")),
            cell(unit, med("vpcep")),
            r("nft"),
            r("vpcep")
        );
    }
    let keys: Vec<&str> = SPEC.iter().map(|s| s.0).collect();
    s.print_every_run(&keys, &MODES);
    println!();
    println!(
        "tcp_proxy, same data plane and run: `close` against `proxy_open` (header on the first ACK)"
    );
    println!();
    println!(
        "(the ratio is the median of the pairs' ratios, each pair measured back to back; bulk \
         has two pairs per run, in ABBA order)"
    );
    println!();
    println!("| measure | close | proxy_open | proxy_open / close | target | met |");
    println!("|---|---:|---:|---:|---|---|");
    for (k, label, unit, up, tgt) in PROXY_SPEC {
        let (c, p) = (s.median("close", k), s.median("proxy", k));
        let pairs: Vec<f64> = s
            .of("close", k)
            .iter()
            .zip(s.of("proxy", k))
            .map(|(c, p)| ratio(p, *c))
            .collect();
        let r = super::common::median(&pairs);
        let (t, ok) = match tgt {
            None => (String::new(), ""),
            Some(tgt) if up => (format!("≥ {tgt:.2}×"), met(r >= tgt)),
            Some(tgt) => (format!("≤ {tgt:.2}×"), met(r <= tgt)),
        };
        println!(
            "| {label} ({unit}) | {} | {} | {r:.3} | {t} | {ok} |",
            cell(unit, c),
            cell(unit, p)
        );
    }
    let keys: Vec<&str> = PROXY_SPEC.iter().map(|s| s.0).collect();
    s.print_every_run(&keys, &["close", "proxy"]);
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}
