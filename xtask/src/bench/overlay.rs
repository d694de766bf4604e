//! `cargo xtask bench overlay`: a consumer VM on node 1, the backend VM on node 2, the nodes
//! joined by an underlay veth (192.168.50.0/24, MTU 1500; VM MTU 1450 as on any VXLAN cloud
//! network), two ways on the same namespaces, in turns:
//!
//! * vxlan — plain kernel VXLAN (VNI 200, UDP 4790) routing 10.0.0.2 <-> 10.0.0.5, no
//!   translation;
//! * vpcep — endpoint 10.0.0.100 on node 1 whose service's backend is on node 2:
//!   translation and SNAT on node 1, the overlay device (external mode, UDP 4789) both ways.
//!
//! Load generator on CPU 0, receiver/server on CPU 1. Bounded in time; everything removed on
//! exit, also on failure and on Ctrl-C.
use std::path::Path;

use anyhow::Result;
use xtask::netns::{NetNs, Topology, VXLAN_IF};

use super::{
    common::{Dataplane, Length, Samples, TempDir, cell, check, guarded, nic_toml, ratio},
    traffic::{Servers, Target, Tools},
};

/// What both nodes' configurations share: the node section, the overlay and the SNAT owners.
fn node_toml(snat_ip: &str) -> String {
    format!(
        r#"[node]
snat_ip = "{snat_ip}"
port_range = [1024, 65535]
vmac = "02:fe:00:00:00:01"

[overlay]
device = "vx0"
inner_mtu = 1450

[[snat_owner]]
snat_ip = "198.19.128.10"
underlay_ip = "192.168.50.1"

[[snat_owner]]
snat_ip = "198.19.128.11"
underlay_ip = "192.168.50.2"

"#
    )
}

const N1_SERVICE: &str = r#"[[service]]
id = 3
backend_ip = "10.0.0.5"
backend_vpc = 200
remote_node = "192.168.50.2"
backend_mac = "02:00:00:00:00:05"
ports = [
  { client = 8080, server = 80, protocol = "TCP" },
  { client = 8082, server = 5201, protocol = "TCP" },
  { client = 5353, server = 53, protocol = "UDP" },
]

[[endpoint]]
id = 7
vpc = 101
ip = "10.0.0.100"
service = 3
accepted = true
"#;

const SPEC: [(&str, &str, &str); 3] = [
    ("udp_pps", "UDP 18-byte datagrams received", "pps"),
    ("cps", "TCP connections/s (1-byte req/resp)", "conn/s"),
    ("bulk1", "TCP bulk, 1 stream", "Gbit/s"),
];

pub fn run(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    guarded(|| bench(vpcep, load, len))
}

fn bench(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    let tmp = TempDir::new("ov")?;
    let (n1, n2) = topology()?;
    let (c, b) = (&n1.vms[0].ns, &n2.vms[0].ns);
    let n1_nic = nic_toml("tapc", 101, "10.0.0.2", "02:00:00:00:00:02");
    let n2_nic = nic_toml("tapb", 200, "10.0.0.5", "02:00:00:00:00:05");
    let n1_toml = node_toml("198.19.128.10") + &n1_nic + N1_SERVICE;
    std::fs::write(tmp.path("n1.toml"), n1_toml)?;
    std::fs::write(tmp.path("n2.toml"), node_toml("198.19.128.11") + &n2_nic)?;
    let total = (len.runs * 2 * (4 * len.secs + 12) + 60).min(3600);
    let _servers = Servers::start(b, load, &[80], Some(5201), total)?;
    let tools = Tools {
        client: c,
        server: b,
        load,
        secs: len.secs,
    };
    // VPCEP_BENCH_MODES="vpcep" (or "vxlan") runs one side only, e.g. under a profiler.
    let modes: Vec<&'static str> = match std::env::var("VPCEP_BENCH_MODES") {
        Ok(m) => ["vxlan", "vpcep"]
            .into_iter()
            .filter(|k| m.split_whitespace().any(|w| w == *k))
            .collect(),
        Err(_) => vec!["vxlan", "vpcep"],
    };
    let mut samples = Samples::default();
    for r in 1..=len.runs {
        for &m in &modes {
            check()?;
            println!(
                "run {r}/{}: {m} (UDP pps, connections/s, bulk; {} s each)",
                len.runs, len.secs
            );
            let mut dps = Vec::new();
            if m == "vpcep" {
                for (i, node) in [&n1.node, &n2.node].into_iter().enumerate() {
                    dps.push(dataplane(node, vpcep, &tmp, i + 1, total)?);
                }
            }
            for ns in [c, b] {
                ns.ip(&["neigh", "flush", "dev", "eth0"])?;
            }
            measure(&tools, m, &mut samples)?;
            for dp in dps {
                dp.stop()?;
            }
        }
    }
    report(&samples);
    Ok(())
}

fn dataplane(node: &NetNs, vpcep: &Path, tmp: &TempDir, n: usize, secs: u64) -> Result<Dataplane> {
    let config = tmp
        .path(&format!("n{n}.toml"))
        .to_string_lossy()
        .into_owned();
    let args = ["--config", &config, "--mode", "tc"];
    Dataplane::run_in(node, vpcep, &args, secs, tmp.path(&format!("run{n}.log")))
}

/// Node 1 with the consumer (`tapc`, 10.0.0.2) and node 2 with the backend (`tapb`,
/// 10.0.0.5), joined by the underlay veth `ul0`, each with the external-mode device and a
/// plain VXLAN device `vxp` to the other.
fn topology() -> Result<(Topology, Topology)> {
    let mut n1 = Topology::new()?;
    let mut n2 = Topology::new()?;
    n1.add_vm("tapc", "10.0.0.2/24", "02:00:00:00:00:02")?;
    n2.add_vm("tapb", "10.0.0.5/24", "02:00:00:00:00:05")?;
    println!(
        "topology: nodes {} (consumer 10.0.0.2) and {} (backend 10.0.0.5) on an underlay veth",
        n1.node.name(),
        n2.node.name()
    );
    n1.node.ip(&[
        "link",
        "add",
        "ul0",
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        n2.node.name(),
    ])?;
    for (i, (topo, tap, vm_ip, peer_vm)) in [
        (&n1, "tapc", "10.0.0.2", "10.0.0.5"),
        (&n2, "tapb", "10.0.0.5", "10.0.0.2"),
    ]
    .into_iter()
    .enumerate()
    {
        let (n, vm) = (&topo.node, &topo.vms[0].ns);
        let (me, other) = (i + 1, 2 - i);
        n.ip(&["addr", "add", &format!("192.168.50.{me}/24"), "dev", "ul0"])?;
        n.ip(&["link", "set", "ul0", "up"])?;
        n.ip(&[
            "link", "add", VXLAN_IF, "type", "vxlan", "dstport", "4789", "external",
        ])?;
        let remote = format!("192.168.50.{other}");
        n.ip(&[
            "link", "add", "vxp", "type", "vxlan", "id", "200", "dstport", "4790", "remote",
            &remote, "dev", "ul0",
        ])?;
        n.ip(&["addr", "add", &format!("10.9.0.{me}/24"), "dev", "vxp"])?;
        n.ip(&["link", "set", VXLAN_IF, "up"])?;
        n.ip(&["link", "set", "vxp", "up"])?;
        n.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        n.ip(&["addr", "add", "10.0.0.1/32", "dev", tap])?;
        n.exec(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{tap}.proxy_arp=1")],
        )?;
        n.ip(&["route", "add", &format!("{vm_ip}/32"), "dev", tap])?;
        let via = format!("10.9.0.{other}");
        n.ip(&[
            "route",
            "add",
            &format!("{peer_vm}/32"),
            "via",
            &via,
            "dev",
            "vxp",
        ])?;
        vm.ip(&["link", "set", "eth0", "mtu", "1450"])?;
        vm.ip(&["route", "add", "default", "via", "10.0.0.1"])?;
    }
    let c = &n1.vms[0].ns;
    c.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=10000 65000"],
    )?;
    Ok((n1, n2))
}

fn measure(t: &Tools, mode: &'static str, s: &mut Samples) -> Result<()> {
    let to = if mode == "vxlan" {
        Target::Backend
    } else {
        Target::Endpoint
    };
    s.push(mode, "udp_pps", t.udp_pps(&to.addr(53, 5353))?);
    s.push(mode, "cps", t.cps(&to.addr(80, 8080))?);
    s.push(mode, "bulk1", t.bulk(&to.addr(5201, 8082), None)?);
    Ok(())
}

fn report(s: &Samples) {
    println!();
    println!(
        "| measure (remote backend) | plain VXLAN routing | vpcep through the overlay | vpcep / plain |"
    );
    println!("|---|---:|---:|---:|");
    for (k, label, unit) in SPEC {
        let (vxlan, vpcep) = (s.median("vxlan", k), s.median("vpcep", k));
        println!(
            "| {label} ({unit}) | {} | {} | {:.3} |",
            cell(unit, vxlan),
            cell(unit, vpcep),
            ratio(vpcep, vxlan)
        );
    }
    let keys: Vec<&str> = SPEC.iter().map(|s| s.0).collect();
    s.print_every_run(&keys, &["vxlan", "vpcep"]);
}
