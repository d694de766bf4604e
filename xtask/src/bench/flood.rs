//! `cargo xtask bench flood`: one tenant floods its endpoint with new flows while another
//! tenant's new connections per second and an established flow's throughput and RR
//! latency are measured, each next to the same figure with no flood, in one run.
//!
//! A node namespace runs `vpcep dataplane run --config`. Tenants A (VPC 1) and B (VPC 2)
//! each have a VM at 10.0.0.2 and an endpoint 10.0.0.100 to one service whose backend VM
//! (10.0.0.5, VPC 3) runs the servers. A's endpoint has the limits an operator would set;
//! B's has none. A sends half-open SYNs from its own address with rotating source ports
//! and drops the SYN-ACKs (nftables), either as fast as it can or 100 new flows per ms.
//! B keeps two connections open for the whole run (bulk and 1-byte ping-pong), so the
//! flows measured during a flood are flows established before it.
//!
//! Placement (docs/benchmarks.md): B's load generators and the servers on CPU 1, the
//! flood and the data-plane process on CPU 0, all at nice -20, so that the flood competes
//! with B in the data plane and the backend rather than for B's CPU. The baseline keeps
//! CPU 0 just as busy (A's sender aimed at its own loopback); a case with CPU 0 idle is
//! printed too.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::{
    child::ChildGuard,
    netns::{NetNs, Topology},
};

use super::common::{
    Dataplane, Length, TempDir, check, guarded, last_json, max, median, min, nic_toml, num,
    one_shot, spawn_piped, spawn_quiet, thousands,
};

/// A's endpoint: the connection limit of a basic endpoint and a new-flow rate to match.
const A_MAX_FLOWS: u32 = 3000;
const A_NEW_FLOWS_PER_SEC: u32 = 1000;
/// The second flood mode: 100 spoofed-port flows per millisecond.
const PACED_RATE: u64 = 100_000;
/// Servers in the backend: connections/s (echo), ping-pong (echo), bulk (sink).
const CPS_PORT: u16 = 8080;
const RR_PORT: u16 = 8081;
const BULK_PORT: u16 = 8082;
/// Time the flood runs before measuring starts, to fill A's flow quota.
const RAMP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flood {
    /// Nothing on CPU 0.
    Idle,
    /// The baseline: A's sender as busy as in a flood, but towards its own loopback, so
    /// that CPU 0 is as loaded as during a flood and only the data plane's share differs.
    /// (In a VM an idle vCPU slows its sibling's wake-ups: against `Idle`, B *gains* from
    /// a flood on this machine.)
    None,
    Max,
    Paced,
}

impl Flood {
    const ALL: [Flood; 4] = [Flood::Idle, Flood::None, Flood::Max, Flood::Paced];

    fn label(self) -> &'static str {
        match self {
            Flood::Idle => "no flood, CPU 0 idle",
            Flood::None => "no flood, A busy on lo",
            Flood::Max => "SYN flood, max rate",
            Flood::Paced => "100 flows/ms",
        }
    }

    /// `vpcep-load syn-flood` target, SYNs/s (0 = as fast as it can) and source.
    fn sender(self) -> Option<(String, u64, &'static str)> {
        let ep = format!("10.0.0.100:{CPS_PORT}");
        match self {
            Flood::Idle => None,
            Flood::None => Some(("127.0.0.1:9".to_string(), 0, "127.0.0.1")),
            Flood::Max => Some((ep, 0, "10.0.0.2")),
            Flood::Paced => Some((ep, PACED_RATE, "10.0.0.2")),
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    cps: f64,
    cps_failed: f64,
    bulk_gbps: f64,
    rr_p99_us: f64,
    flood_pps: f64,
}

pub fn run(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    guarded(|| bench(vpcep, load, len))
}

fn bench(vpcep: &Path, load: &Path, len: Length) -> Result<()> {
    let Length { runs, secs } = len;
    let tmp = TempDir::new("flood")?;
    // Declared first so it is dropped last, after every process running inside it.
    let topo = topology(&tmp)?;
    let (a, b, s) = (&topo.vms[0].ns, &topo.vms[1].ns, &topo.vms[2].ns);
    // Upper bound of the whole run; every process started below ends by then on its own.
    let per_phase = 3 * secs + 4;
    let total = (runs * Flood::ALL.len() as u64 * per_phase + 60).to_string();
    let load_s = load.to_string_lossy().into_owned();
    let mut servers = Vec::new();
    for (mode, port) in [("tcp-server", 80), ("tcp-server", 81), ("tcp-sink", 82)] {
        let bind = format!("10.0.0.5:{port}");
        servers.push(spawn_quiet(pinned(s, 1, &load_s, &[mode, &bind, &total]))?);
    }
    // At nice -20 too: creating the preallocated conntrack tables is slow on a busy CPU.
    let mut dp_cmd = topo.node.command("nice");
    dp_cmd
        .args(["-n", "-20", "taskset", "-c", "0"])
        .arg(vpcep)
        .args(["dataplane", "run", "--mode", "tc", "--duration", &total])
        .arg("--config")
        .arg(tmp.path("dataplane.toml"));
    let dataplane = Dataplane::start(dp_cmd, tmp.path("dataplane.log"))?;
    println!(
        "data plane attached; A's endpoint: max_flows {A_MAX_FLOWS}, new_flows_per_sec \
         {A_NEW_FLOWS_PER_SEC}; B's endpoint: no limits"
    );

    let mut held = Held::open(b, &load_s, &total)?;
    // Warm-up on the held flows (not counted): congestion window, caches.
    held.cmd("bulk 1")?;
    held.cmd("rr 1")?;

    let case = Case {
        a,
        b,
        load: &load_s,
        secs,
    };
    let mut samples: Vec<(Flood, Sample)> = Vec::new();
    let mut lost_during: Vec<String> = Vec::new();
    for r in 1..=runs {
        for flood in Flood::ALL {
            check()?;
            println!(
                "run {r}/{runs}: {} (B connections/s, bulk, RR; {secs} s each)",
                flood.label()
            );
            let (smp, lost) = case.measure(flood, &mut held)?;
            lost_during.extend(lost.into_iter().map(|l| format!("run {r}, {l}")));
            samples.push((flood, smp));
            // Let queues drain before the next case (A's half-open flows stay, as in life).
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let lost = held.finish()?;
    let log = dataplane.log.clone();
    dataplane.stop()?;
    let counters = last_counters(&std::fs::read_to_string(&log)?);
    drop(servers);

    report(&samples, lost, &lost_during, &counters);
    Ok(())
}

/// The node with tenant A's and tenant B's VMs (both 10.0.0.2) and the backend (10.0.0.5);
/// A drops its SYN-ACKs. Writes the data plane's configuration into `tmp`.
fn topology(tmp: &TempDir) -> Result<Topology> {
    let mut topo = Topology::new()?;
    topo.add_vm("tapa", "10.0.0.2/24", "02:00:00:00:0a:02")?;
    topo.add_vm("tapb", "10.0.0.2/24", "02:00:00:00:0b:02")?;
    topo.add_vm("taps", "10.0.0.5/24", "02:00:00:00:00:05")?;
    let (a, b, s) = (&topo.vms[0].ns, &topo.vms[1].ns, &topo.vms[2].ns);
    println!(
        "topology: node {}, tenant A {} and tenant B {} (both 10.0.0.2), backend {} (10.0.0.5)",
        topo.node.name(),
        a.name(),
        b.name(),
        s.name()
    );
    // The backend reaches the SNAT address through its gateway, which the node answers.
    s.ip(&["route", "add", "default", "via", "10.0.0.1"])?;
    // A's host must not answer the SYN-ACKs with RST: its flows stay half-open.
    let nft = tmp.path("a.nft");
    std::fs::write(
        &nft,
        format!(
            "table ip vpcep_flood {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             ip saddr 10.0.0.100 tcp sport {CPS_PORT} drop\n  }}\n}}\n"
        ),
    )?;
    a.exec("nft", &["-f", &nft.to_string_lossy()])?;
    b.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=10000 65000"],
    )?;
    std::fs::write(tmp.path("dataplane.toml"), dataplane_toml())?;
    Ok(topo)
}

/// What one case of a run needs: the two tenants' VMs and the load generator.
struct Case<'a> {
    a: &'a NetNs,
    b: &'a NetNs,
    load: &'a str,
    secs: u64,
}

impl Case<'_> {
    /// B's figures under `flood`, and the held flows lost meanwhile.
    fn measure(&self, flood: Flood, held: &mut Held) -> Result<(Sample, Vec<String>)> {
        let secs = self.secs;
        let mut smp = Sample::default();
        let flooder = match flood.sender() {
            None => None,
            Some((to, rate, src)) => {
                let dur = (RAMP + Duration::from_secs(3 * secs) + Duration::from_millis(1500))
                    .as_secs_f64();
                let dur = format!("{dur:.1}");
                let args = ["syn-flood", &to, &dur, &rate.to_string(), src];
                let g = spawn_piped(pinned(self.a, 0, self.load, &args))?;
                std::thread::sleep(RAMP);
                Some(g)
            }
        };
        let to = format!("10.0.0.100:{CPS_PORT}");
        let args = ["cps", &to, &secs.to_string(), "2"];
        let c = one_shot(pinned(self.b, 1, self.load, &args))?;
        smp.cps = num(&c, "cps")?;
        smp.cps_failed = num(&c, "failed")?;
        let bulk = held.cmd(&format!("bulk {secs}"))?;
        let rr = held.cmd(&format!("rr {secs}"))?;
        let mut lost = Vec::new();
        for (what, v) in [("bulk", &bulk), ("rr", &rr)] {
            if let Some(e) = v.get("error") {
                lost.push(format!("{}, {what}: {e}", flood.label()));
            }
        }
        smp.bulk_gbps = bulk.get("gbps").and_then(Value::as_f64).unwrap_or(0.0);
        smp.rr_p99_us = rr.get("p99_us").and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(g) = flooder {
            let out = g.wait_output()?;
            let v = last_json(&out.stdout)
                .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
            smp.flood_pps = num(&v, "pps")?;
        }
        Ok((smp, lost))
    }
}

fn dataplane_toml() -> String {
    let mut t = String::from(
        "[node]\nsnat_ip = \"198.19.128.10\"\nport_range = [1024, 65535]\n\
         vmac = \"02:fe:00:00:00:01\"\n\n",
    );
    t += &nic_toml("tapa", 1, "10.0.0.2", "02:00:00:00:0a:02");
    t += &nic_toml("tapb", 2, "10.0.0.2", "02:00:00:00:0b:02");
    t += &nic_toml("taps", 3, "10.0.0.5", "02:00:00:00:00:05");
    t += &format!(
        "[[service]]\nid = 3\nbackend_ip = \"10.0.0.5\"\nbackend_vpc = 3\n\
         backend_iface = \"taps\"\nbackend_mac = \"02:00:00:00:00:05\"\nports = [\n\
         {{ client = {CPS_PORT}, server = 80, protocol = \"TCP\" }},\n\
         {{ client = {RR_PORT}, server = 81, protocol = \"TCP\" }},\n\
         {{ client = {BULK_PORT}, server = 82, protocol = \"TCP\" }},\n]\n\n"
    );
    t += &format!(
        "[[endpoint]]\nid = 1\nvpc = 1\nip = \"10.0.0.100\"\nservice = 3\naccepted = true\n\
         max_flows = {A_MAX_FLOWS}\nnew_flows_per_sec = {A_NEW_FLOWS_PER_SEC}\n\n"
    );
    t += "[[endpoint]]\nid = 2\nvpc = 2\nip = \"10.0.0.100\"\nservice = 3\naccepted = true\n";
    t
}

/// `nice -n -20 taskset -c CPU vpcep-load ARGS` in `ns`.
fn pinned(ns: &NetNs, cpu: u8, load: &str, args: &[&str]) -> Command {
    let mut c = ns.command("nice");
    c.args(["-n", "-20", "taskset", "-c", &cpu.to_string(), load])
        .args(args);
    c
}

/// B's two held connections (`vpcep-load established`), driven over its stdin/stdout.
struct Held {
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    child: ChildGuard,
}

impl Held {
    fn open(b: &NetNs, load: &str, total: &str) -> Result<Self> {
        let mut cmd = pinned(
            b,
            1,
            load,
            &[
                "established",
                &format!("10.0.0.100:{BULK_PORT}"),
                total,
                &format!("10.0.0.100:{RR_PORT}"),
            ],
        );
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting vpcep-load established")?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let child = ChildGuard::from(child);
        let mut h = Self {
            stdin,
            stdout: BufReader::new(stdout.context("no stdout")?),
            child,
        };
        let ready = h.line()?;
        if ready.get("ready").is_none() {
            bail!("vpcep-load established: {ready}");
        }
        Ok(h)
    }

    fn line(&mut self) -> Result<Value> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("vpcep-load established exited");
        }
        serde_json::from_str(&l).with_context(|| format!("parsing {l:?}"))
    }

    /// Sends one command (its window bounds the answer's wait) and returns the answer.
    fn cmd(&mut self, c: &str) -> Result<Value> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{c}")?;
        stdin.flush()?;
        self.line()
    }

    /// Ends the run (EOF) and returns how many held flows were lost.
    fn finish(mut self) -> Result<u64> {
        drop(self.stdin.take());
        let v = self.line()?;
        let _ = self.child.wait_output();
        v.get("lost")
            .and_then(Value::as_u64)
            .with_context(|| format!("no \"lost\" in {v}"))
    }
}

/// The last counter table `vpcep dataplane run` printed: (reason, packets) summed over hooks.
fn last_counters(log: &str) -> Vec<(String, u64)> {
    let lines: Vec<&str> = log.lines().collect();
    let Some(start) = lines.iter().rposition(|l| l.starts_with("hook ")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = Vec::new();
    for l in &lines[start + 1..] {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [_, reason, packets, _] = f[..] else {
            break;
        };
        let Ok(p) = packets.parse::<u64>() else {
            break;
        };
        match out.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += p,
            None => out.push((reason.to_string(), p)),
        }
    }
    out
}

type Get = fn(&Sample) -> f64;

/// The table, the lost flows, the data plane's counters with their checks, and every run.
fn report(
    samples: &[(Flood, Sample)],
    lost: u64,
    lost_during: &[String],
    counters: &[(String, u64)],
) {
    // measure, unit, getter, target ratio (flood / no flood, higher is better)
    let rows: [(&str, &str, Get, Option<f64>); 5] = [
        ("B new TCP connections/s", "conn/s", |s| s.cps, Some(0.90)),
        ("B connection failures", "count", |s| s.cps_failed, None),
        (
            "established flow, bulk",
            "Gbit/s",
            |s| s.bulk_gbps,
            Some(0.95),
        ),
        (
            "established flow, 1-byte RR p99",
            "us",
            |s| s.rr_p99_us,
            None,
        ),
        (
            "A's SYNs sent (to lo without flood)",
            "pps",
            |s| s.flood_pps,
            None,
        ),
    ];
    println!();
    println!(
        "| measure | CPU 0 idle | no flood (A busy on lo) | SYN flood, max rate | ratio \
         | 100 flows/ms | ratio | target | met |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for (label, unit, get, target) in rows {
        table_row(samples, label, unit, get, target);
    }
    println!(
        "| established flows lost (bulk + RR, whole run) | | | | | | | 0 | {} |",
        if lost == 0 { "yes" } else { "**no**" }
    );
    println!();
    println!(
        "medians of the runs (min–max); ratio = median with flood / median without flood \
         (A busy on lo)"
    );
    for l in lost_during {
        println!("lost: {l}");
    }
    print_counters(counters);
    print_every_run(samples);
}

/// One measure's row: each case's median (min–max), the ratios to no flood, the target.
fn table_row(samples: &[(Flood, Sample)], label: &str, unit: &str, get: Get, target: Option<f64>) {
    let of = |f: Flood, g: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|(k, _)| *k == f)
            .map(|(_, s)| g(s))
            .collect()
    };
    let fmt = |unit: &str, x: f64| {
        if unit == "Gbit/s" {
            format!("{x:.2}")
        } else if unit == "us" {
            format!("{x:.1}")
        } else {
            thousands(x)
        }
    };
    let cell = |f: Flood| {
        let v = of(f, get);
        if f == Flood::Idle && unit == "pps" {
            return "—".to_string();
        }
        format!(
            "{} ({}–{})",
            fmt(unit, median(&v)),
            fmt(unit, min(&v)),
            fmt(unit, max(&v))
        )
    };
    let base = median(&of(Flood::None, get));
    let ratio = |f: Flood| {
        let m = median(&of(f, get));
        if base > 0.0 { m / base } else { 0.0 }
    };
    let (rm, rp) = if unit == "pps" || unit == "count" {
        (String::new(), String::new())
    } else {
        (
            format!("{:.3}", ratio(Flood::Max)),
            format!("{:.3}", ratio(Flood::Paced)),
        )
    };
    let (t, met) = match target {
        Some(t) => (
            format!("≥ {t:.2}×"),
            if ratio(Flood::Max) >= t && ratio(Flood::Paced) >= t {
                "yes"
            } else {
                "**no**"
            },
        ),
        None => (String::new(), ""),
    };
    println!(
        "| {label} ({unit}) | {} | {} | {} | {rm} | {} | {rp} | {t} | {met} |",
        cell(Flood::Idle),
        cell(Flood::None),
        cell(Flood::Max),
        cell(Flood::Paced)
    );
}

/// The data plane's counters at the end, with the checks that read them.
fn print_counters(counters: &[(String, u64)]) {
    println!();
    println!("data-plane counters at the end (packets, all hooks):");
    let get = |r: &str| counters.iter().find(|(k, _)| k == r).map_or(0, |(_, n)| *n);
    for (reason, n) in counters {
        println!("  {reason:<28} {n:>14}");
    }
    for r in ["drop_snat_exhausted", "drop_ct_full"] {
        let n = get(r);
        println!(
            "check: {r} = {n} ({})",
            if n == 0 { "ok" } else { "**not 0**" }
        );
    }
    let limited = get("drop_endpoint_flow_limit") + get("drop_endpoint_rate_limit");
    println!(
        "check: A's flood stopped by its endpoint's limits: {} packets ({})",
        thousands(limited as f64),
        if limited > 0 { "ok" } else { "**none**" }
    );
}

/// Every run's figures, a line per case.
fn print_every_run(samples: &[(Flood, Sample)]) {
    println!();
    println!("every run:");
    for f in Flood::ALL {
        let line: Vec<String> = samples
            .iter()
            .filter(|(k, _)| *k == f)
            .map(|(_, s)| {
                format!(
                    "cps {:.0} fail {:.0} bulk {:.2} p99 {:.1}{}",
                    s.cps,
                    s.cps_failed,
                    s.bulk_gbps,
                    s.rr_p99_us,
                    if f == Flood::Idle {
                        String::new()
                    } else {
                        format!(" flood {:.0}", s.flood_pps)
                    }
                )
            })
            .collect();
        println!("  {:<24} {}", f.label(), line.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_counter_table_summed_over_hooks() {
        let log = "attached to tapa (Tc); Ctrl-C detaches\n\
                   hook         reason                    packets          bytes\n\
                   tc-ingress   fwd_new_flow                    1             60\n\n\
                   hook         reason                    packets          bytes\n\
                   tc-ingress   fwd_new_flow                    5            300\n\
                   xdp          fwd_new_flow                    2            120\n\
                   tc-ingress   drop_endpoint_flow_limit        7            420\n\n\
                   detached from tapa\n";
        assert_eq!(
            last_counters(log),
            vec![
                ("fwd_new_flow".to_string(), 7),
                ("drop_endpoint_flow_limit".to_string(), 7)
            ]
        );
        assert!(last_counters("").is_empty());
    }

    #[test]
    fn the_config_gives_only_a_limits() {
        let t = dataplane_toml();
        assert_eq!(t.matches("max_flows = 3000").count(), 1);
        assert_eq!(t.matches("[[endpoint]]").count(), 2);
    }
}
