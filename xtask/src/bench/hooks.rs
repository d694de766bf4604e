//! `cargo xtask bench hooks`: bulk TCP through a node namespace with nothing, the vpcep TC
//! program, or the vpcep XDP program on the consumer-facing veth (unmanaged NIC: parse,
//! count, pass). iperf3, 5 s, 3 runs each by default; every namespace and process is
//! removed on exit, also on failure and on Ctrl-C.
use std::path::Path;

use anyhow::{Context as _, Result};
use xtask::netns::{NetNs, Topology};

use super::common::{Dataplane, Length, TempDir, check, guarded, iperf_gbps, spawn_quiet};

pub fn run(vpcep: &Path, len: Length) -> Result<()> {
    guarded(|| bench(vpcep, len))
}

fn bench(vpcep: &Path, len: Length) -> Result<()> {
    let tmp = TempDir::new("hk")?;
    let topo = topology()?;
    let (node, c, b) = (&topo.node, &topo.vms[0].ns, &topo.vms[1].ns);
    // Both the server and each data plane end on their own after the whole run.
    let total = 3 * len.runs * (len.secs + 2) + 30;
    let mut server = b.command("timeout");
    server.args([&total.to_string(), "iperf3", "-s", "-B", "10.2.0.2"]);
    let _server = spawn_quiet(server)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!("plain routing: {} Gbit/s", measure(c, len)?);
    for mode in ["tc", "xdp"] {
        let args = ["--iface", "vc", "--mode", mode];
        let dp = Dataplane::run_in(node, vpcep, &args, total, tmp.path("run.log"))?;
        println!("{mode} program on vc: {} Gbit/s", measure(c, len)?);
        dp.stop()?;
    }
    Ok(())
}

/// The node routing between the consumer (`vc`, 10.1.0.0/24) and the backend (`vb`,
/// 10.2.0.0/24).
fn topology() -> Result<Topology> {
    let mut topo = Topology::new()?;
    topo.add_vm("vc", "10.1.0.2/24", "02:00:00:01:00:02")?;
    topo.add_vm("vb", "10.2.0.2/24", "02:00:00:02:00:02")?;
    let n = &topo.node;
    n.ip(&["addr", "add", "10.1.0.1/24", "dev", "vc"])?;
    n.ip(&["addr", "add", "10.2.0.1/24", "dev", "vb"])?;
    for (vm, gw) in [(&topo.vms[0].ns, "10.1.0.1"), (&topo.vms[1].ns, "10.2.0.1")] {
        vm.ip(&["route", "add", "default", "via", gw])?;
    }
    n.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(topo)
}

/// `len.runs` iperf3 runs of `len.secs` seconds: each Gbit/s to 2 decimals, then a space.
fn measure(c: &NetNs, len: Length) -> Result<String> {
    let mut out = String::new();
    for _ in 0..len.runs {
        check()?;
        let run = c
            .command("iperf3")
            .args(["-c", "10.2.0.2", "-t", &len.secs.to_string(), "-J"])
            .output()
            .context("running iperf3")?;
        out += &format!("{:.2} ", iperf_gbps(&run.stdout));
    }
    Ok(out)
}
