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
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::netns::{ChildGuard, NetNs, Topology};

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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

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

pub fn run(vpcep: &Path, load: &Path) -> Result<()> {
    let runs = env_num("VPCEP_FLOOD_RUNS", 3, 1..=10)?;
    let secs = env_num("VPCEP_FLOOD_SECS", 3, 1..=20)?;
    watch_signals(true);
    let r = bench(vpcep, load, runs, secs);
    watch_signals(false);
    r
}

fn bench(vpcep: &Path, load: &Path, runs: u64, secs: u64) -> Result<()> {
    let tmp = TempDir::new()?;
    // Declared first so it is dropped last, after every process running inside it.
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
    let config = tmp.path("dataplane.toml");
    std::fs::write(&config, dataplane_toml())?;

    // Upper bound of the whole run; every process started below ends by then on its own.
    let per_phase = 3 * secs + 4;
    let total = (runs * Flood::ALL.len() as u64 * per_phase + 60).to_string();
    let load_s = load.to_string_lossy().into_owned();
    let mut servers = Vec::new();
    for (mode, port) in [("tcp-server", 80), ("tcp-server", 81), ("tcp-sink", 82)] {
        let bind = format!("10.0.0.5:{port}");
        servers.push(spawn_quiet(pinned(s, 1, &load_s, &[mode, &bind, &total]))?);
    }

    let log_path = tmp.path("dataplane.log");
    let log = File::create(&log_path)?;
    // At nice -20 too: creating the preallocated conntrack tables is slow on a busy CPU.
    let mut dp_cmd = topo.node.command("nice");
    dp_cmd
        .args(["-n", "-20", "taskset", "-c", "0"])
        .arg(vpcep)
        .args(["dataplane", "run", "--mode", "tc", "--duration", &total])
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut dataplane = ChildGuard::from(dp_cmd.spawn().context("starting vpcep dataplane run")?);
    wait_for(&log_path, "attached", &mut dataplane)?;
    println!(
        "data plane attached; A's endpoint: max_flows {A_MAX_FLOWS}, new_flows_per_sec \
         {A_NEW_FLOWS_PER_SEC}; B's endpoint: no limits"
    );

    let mut held = Held::open(b, &load_s, &total)?;
    // Warm-up on the held flows (not counted): congestion window, caches.
    held.cmd("bulk 1")?;
    held.cmd("rr 1")?;

    let mut samples: Vec<(Flood, Sample)> = Vec::new();
    let mut lost_during: Vec<String> = Vec::new();
    for r in 1..=runs {
        for flood in Flood::ALL {
            check()?;
            println!(
                "run {r}/{runs}: {} (B connections/s, bulk, RR; {secs} s each)",
                flood.label()
            );
            let mut smp = Sample::default();
            let flooder = match flood.sender() {
                None => None,
                Some((to, rate, src)) => {
                    let dur = (RAMP + Duration::from_secs(3 * secs) + Duration::from_millis(1500))
                        .as_secs_f64();
                    let g = spawn_piped(pinned(
                        a,
                        0,
                        &load_s,
                        &[
                            "syn-flood",
                            &to,
                            &format!("{dur:.1}"),
                            &rate.to_string(),
                            src,
                        ],
                    ))?;
                    std::thread::sleep(RAMP);
                    Some(g)
                }
            };
            let c = one_shot(pinned(
                b,
                1,
                &load_s,
                &[
                    "cps",
                    &format!("10.0.0.100:{CPS_PORT}"),
                    &secs.to_string(),
                    "2",
                ],
            ))?;
            smp.cps = num(&c, "cps")?;
            smp.cps_failed = num(&c, "failed")?;
            let bulk = held.cmd(&format!("bulk {secs}"))?;
            let rr = held.cmd(&format!("rr {secs}"))?;
            for (what, v) in [("bulk", &bulk), ("rr", &rr)] {
                if let Some(e) = v.get("error") {
                    lost_during.push(format!("run {r}, {}, {what}: {e}", flood.label()));
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
            samples.push((flood, smp));
            // Let queues drain before the next case (A's half-open flows stay, as in life).
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let lost = held.finish()?;
    dataplane.signal_and_wait(libc::SIGINT, Duration::from_secs(5))?;
    let counters = last_counters(&std::fs::read_to_string(&log_path)?);
    drop(servers);

    report(&samples, lost, &lost_during, &counters);
    Ok(())
}

fn dataplane_toml() -> String {
    let nic = |iface: &str, vpc: u32, ip: &str, mac: &str| {
        format!(
            "[[nic]]\niface = \"{iface}\"\nvpc = {vpc}\nip = \"{ip}\"\nmac = \"{mac}\"\n\
             gateway = \"10.0.0.1\"\n\n"
        )
    };
    let mut t = String::from(
        "[node]\nsnat_ip = \"198.19.128.10\"\nport_range = [1024, 65535]\n\
         vmac = \"02:fe:00:00:00:01\"\n\n",
    );
    t += &nic("tapa", 1, "10.0.0.2", "02:00:00:00:0a:02");
    t += &nic("tapb", 2, "10.0.0.2", "02:00:00:00:0b:02");
    t += &nic("taps", 3, "10.0.0.5", "02:00:00:00:00:05");
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

fn spawn_quiet(mut cmd: Command) -> Result<ChildGuard> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting vpcep-load")?;
    Ok(child.into())
}

fn spawn_piped(mut cmd: Command) -> Result<ChildGuard> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vpcep-load")?;
    Ok(child.into())
}

/// Runs a bounded vpcep-load mode and returns its JSON line.
fn one_shot(mut cmd: Command) -> Result<Value> {
    let out = cmd.output().context("running vpcep-load")?;
    if !out.status.success() {
        bail!(
            "vpcep-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    last_json(&out.stdout)
}

fn last_json(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("vpcep-load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no {key:?} in {v}"))
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

fn report(
    samples: &[(Flood, Sample)],
    lost: u64,
    lost_during: &[String],
    counters: &[(String, u64)],
) {
    let of = |f: Flood, g: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|(k, _)| *k == f)
            .map(|(_, s)| g(s))
            .collect()
    };
    type Get = fn(&Sample) -> f64;
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
    let fmt = |unit: &str, x: f64| {
        if unit == "Gbit/s" {
            format!("{x:.2}")
        } else if unit == "us" {
            format!("{x:.1}")
        } else {
            thousands(x)
        }
    };
    println!();
    println!(
        "| measure | CPU 0 idle | no flood (A busy on lo) | SYN flood, max rate | ratio \
         | 100 flows/ms | ratio | target | met |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for (label, unit, get, target) in rows {
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn env_num(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    let v = match std::env::var(name) {
        Ok(s) => s.parse().with_context(|| format!("{name}={s:?}"))?,
        Err(_) => default,
    };
    if !range.contains(&v) {
        bail!("{name} must be in {range:?}");
    }
    Ok(v)
}

/// Polls the data plane's log until it contains `needle` (loading can take a while on a
/// busy machine: the verifier runs for every program).
fn wait_for(path: &Path, needle: &str, dp: &mut ChildGuard) -> Result<()> {
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Some(status) = dp.try_wait()? {
            bail!("vpcep dataplane run exited ({status}):\n{text}");
        }
        if start.elapsed() > limit {
            bail!("no {needle:?} from the data plane in {limit:?}:\n{text}");
        }
        check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C or SIGTERM during the benchmark: the steps stop at the next check (each is
/// bounded to seconds) and the guards remove every namespace and process; a second signal
/// ends the process at once. A handler rather than a blocked mask: children would inherit
/// the mask (and `vpcep dataplane run` could not be stopped with SIGINT), while handlers
/// are reset by exec.
fn watch_signals(on: bool) {
    extern "C" fn on_signal(sig: libc::c_int) {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(128 + sig) };
        }
        let msg = b"signal: stopping the flood benchmark and cleaning up\n";
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    let handler = if on {
        on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
    } else {
        libc::SIG_DFL
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches an atomic and async-signal-safe calls.
        unsafe { libc::signal(sig, handler) };
    }
}

fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A directory for the run's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("vpcep-flood-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(min(&[]), 0.0);
    }

    #[test]
    fn the_config_gives_only_a_limits() {
        let t = dataplane_toml();
        assert_eq!(t.matches("max_flows = 3000").count(), 1);
        assert_eq!(t.matches("[[endpoint]]").count(), 2);
    }
}
