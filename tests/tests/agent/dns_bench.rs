//! `cargo xtask bench dns`: `dnsperf` from a VM namespace against the node resolver of a
//! real agent, and in the same run against dnsmasq serving the same records at the same
//! address through the same NIC and program; local names and forwarded names (both
//! forward to the same upstream dnsmasq, neither caches). Also: how soon an API change
//! is answered, and the resolver's memory and rebuild time at 100,000 names.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use serde_json::json;
use vpcep::agent::{desired::FeedState, dns::DnsView};
use vpcep_tests::harness::{TempDir, agent::*};
use xtask::netns::Topology;

use super::dns::{DNS, UPSTREAM, answers, dns_names, until, upstream_with};
use crate::{AgentTask, Scene, blocking};

/// Forwarded names the upstream serves.
const FORWARDED_NAMES: usize = 1000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, Default)]
struct Perf {
    qps: f64,
    lost: u64,
    completed: u64,
    /// The server's CPU time (user + system, its thread or process) per answered query:
    /// on two cores dnsperf's own core is the limit, so this says which server has room.
    cpu_us: f64,
}

/// The server under test, for its CPU time: the agent's resolver thread, or dnsmasq.
#[derive(Clone, Copy)]
enum Server {
    Resolver,
    Dnsmasq(u32),
}

/// user + system clock ticks of `/proc/.../stat`.
fn ticks(stat: &str) -> Option<u64> {
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl Server {
    fn cpu_ticks(self) -> u64 {
        match self {
            Self::Dnsmasq(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| ticks(&s))
                .unwrap_or(0),
            Self::Resolver => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "vpcep-dns")
                })
                .filter_map(|t| ticks(&std::fs::read_to_string(t.path().join("stat")).ok()?))
                .sum(),
        }
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// One server's figures in one round: rates, and (p50, p99) µs at the fixed load.
struct Round {
    server: &'static str,
    local: Perf,
    fwd: Perf,
    lat_local: (f64, f64),
    lat_fwd: (f64, f64),
}

/// dnsperf's summary: queries per second and lost queries.
fn parse_perf(text: &str) -> Option<Perf> {
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))?
            .split(':')
            .nth(1)?
            .split_whitespace()
            .next()
    };
    Some(Perf {
        qps: field("Queries per second")?.parse().ok()?,
        lost: field("Queries lost")?.parse().ok()?,
        completed: field("Queries completed")?.parse().ok()?,
        cpu_us: 0.0,
    })
}

/// `dnsperf` in VM C against the DNS address: `secs` at full rate (up to 100 outstanding).
async fn rate(topo: &Arc<Topology>, server: Server, file: &str, secs: u64) -> Perf {
    let topo = topo.clone();
    let file = file.to_owned();
    let before = server.cpu_ticks();
    let mut p = blocking(move || {
        let out = topo.vms[0]
            .ns
            .command("dnsperf")
            .args([
                "-s",
                DNS,
                "-d",
                &file,
                "-l",
                &secs.to_string(),
                "-q",
                "100",
                "-t",
                "2",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        parse_perf(&text).unwrap_or_else(|| panic!("dnsperf said:\n{text}"))
    })
    .await;
    let cpu_s = server.cpu_ticks().saturating_sub(before) as f64 / clock_ticks_per_sec();
    p.cpu_us = cpu_s * 1e6 / p.completed.max(1) as f64;
    p
}

/// Latency at a fixed load (`qps` for `secs`): dnsperf reports each query (`-v`); the
/// 50th and 99th percentiles in µs.
async fn latency(topo: &Arc<Topology>, file: &str, qps: u64, secs: u64) -> (f64, f64) {
    let topo = topo.clone();
    let file = file.to_owned();
    blocking(move || {
        let out = topo.vms[0]
            .ns
            .command("dnsperf")
            .args([
                "-s",
                DNS,
                "-d",
                &file,
                "-l",
                &secs.to_string(),
                "-v",
                "-t",
                "2",
            ])
            .args(["-Q", &qps.to_string()])
            .output()
            .unwrap();
        // "> NOERROR name A 0.000123"
        let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("> NOERROR"))
            .filter_map(|l| l.split_whitespace().last()?.parse().ok())
            .collect();
        assert!(v.len() > 100, "dnsperf -v reported {} answers", v.len());
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] * 1e6;
        (pct(0.50), pct(0.99))
    })
    .await
}

/// dnsmasq on the DNS address in the node namespace, with the same local names and the
/// same upstream, no cache.
fn baseline(
    topo: &Topology,
    hosts: &std::path::Path,
    dir: &std::path::Path,
) -> xtask::netns::ChildGuard {
    // dnsmasq answers through the routing table (not the NIC's device).
    topo.node
        .ip(&["route", "replace", "10.0.0.2/32", "dev", "tapc"])
        .unwrap();
    topo.node
        .spawn(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                &format!("--addn-hosts={}", hosts.display()),
                &format!("--pid-file={}", dir.join("baseline.pid").display()),
                &format!("--listen-address={DNS}"),
                "--bind-interfaces",
                &format!("--server={UPSTREAM}"),
                "--cache-size=0",
                "--dns-forward-max=1000",
            ],
        )
        .unwrap()
}

/// One A query for `name` as bytes.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// From VM C, queries `name` every 2 ms until the answer's NXDOMAIN-ness is `gone`;
/// how long that took.
async fn seen(topo: &Arc<Topology>, name: &str, gone: bool) -> Duration {
    let topo = topo.clone();
    let name = name.to_owned();
    blocking(move || {
        topo.vms[0]
            .ns
            .run(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let t0 = Instant::now();
                let mut id = 0u16;
                while t0.elapsed() < Duration::from_secs(10) {
                    id = id.wrapping_add(1);
                    s.send_to(&query(&name, id), (DNS, 53)).unwrap();
                    let mut buf = [0u8; 1500];
                    if let Ok(n) = s.recv(&mut buf)
                        && let Ok(m) = Message::from_vec(&buf[..n])
                        && m.id() == id
                        && m.answers().is_empty() == gone
                    {
                        return t0.elapsed();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                panic!("{name}: no change within 10 s");
            })
            .unwrap()
    })
    .await
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The resolver's table at `n` names (one per endpoint, 1,000 endpoints per VPC): its
/// memory (RSS growth while it is built) and build time (paid on every feed change).
fn table_at(n: usize) -> (f64, Duration, usize) {
    let mut state = FeedState::new();
    for v in 0..n.div_ceil(1000) {
        state.apply("vpc", &format!("vpc-{v}"), "put", json!({"vni": 100 + v}));
    }
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        state.apply(
            "endpoint",
            &id,
            "put",
            json!({
                "project_id": "p", "domain_id": "d", "service_id": "s", "status": "accepted",
                "vpc_id": format!("vpc-{}", i / 1000), "ip": ip, "marker_id": i,
                "whitelist": [], "enable_whitelist": false,
                "dns_names": [format!("{id}.vpcep.local-1.internal")],
            }),
        );
    }
    let before = rss_kib();
    let t0 = Instant::now();
    let view = DnsView::build(&state, &[]);
    let took = t0.elapsed();
    let mib = (rss_kib().saturating_sub(before)) as f64 / 1024.0;
    let names = view.len();
    drop(view);
    (mib, took, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo xtask bench dns"]
async fn dns_report() {
    vpcep_tests::require_root!();
    let secs = env("VPCEP_DNS_SECS", 5);
    let rounds = env("VPCEP_DNS_ROUNDS", 2);
    let lat_qps = env("VPCEP_DNS_LATENCY_QPS", 5000);
    let topo = topology();
    topo.vms[0]
        .ns
        .ip(&["route", "add", "default", "via", "10.0.0.1"])
        .unwrap();
    let mut forwarded_hosts = String::new();
    for i in 0..FORWARDED_NAMES {
        forwarded_hosts.push_str(&format!("203.0.113.{} f{i}.example\n", i % 250 + 1));
    }
    let _up = upstream_with(&topo.node, &forwarded_hosts);
    // No per-NIC query budget: the bench measures the resolver, not its limit.
    let tables = format!("\n[dns]\nupstreams = [\"{UPSTREAM}\"]\nqueries_per_second = 0\n");
    let mut s = Scene::start_with("dnsb", json!({"enable_dns": true}), "", &tables, topo).await;
    let topo = s.topo.clone();
    // The agent as a node runs it (not the tests' 300 ms resync and 200 ms collection),
    // so that its other threads load the machine as little in the resolver's rounds as
    // in dnsmasq's, when it is stopped.
    s.agent.take().unwrap().stop().await;
    s.agent_config.resync_interval = Duration::from_secs(30);
    s.agent_config.gc_interval = Duration::from_secs(10);
    s.agent = Some(AgentTask::start(s.agent_config.clone()));
    let names = dns_names(&s, "proj-consumer", CONSUMER, &s.ep).await;
    until(
        &topo,
        0,
        &names[0],
        "the name answered",
        answers("10.0.0.100"),
    )
    .await;

    let dir = TempDir::new("dns-bench");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let local_file = dir.0.join("local.txt");
    let fwd_file = dir.0.join("forwarded.txt");
    let hosts = dir.0.join("hosts");
    std::fs::write(
        &local_file,
        names.iter().map(|n| format!("{n} A\n")).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &fwd_file,
        (0..FORWARDED_NAMES)
            .map(|i| format!("f{i}.example A\n"))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &hosts,
        names
            .iter()
            .map(|n| format!("10.0.0.100 {n}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (local_file, fwd_file) = (
        local_file.display().to_string(),
        fwd_file.display().to_string(),
    );

    // Alternating rounds: vpcep's resolver, then dnsmasq (the agent stopped, its program
    // and DNS_NICS left in place, so the path to the server is the same).
    let mut results: Vec<Round> = Vec::new();
    for _ in 0..rounds {
        for server in ["vpcep", "dnsmasq"] {
            let (guard, who) = if server == "dnsmasq" {
                s.agent.take().unwrap().stop().await;
                let g = baseline(&topo, &hosts, &dir.0);
                until(
                    &topo,
                    0,
                    &names[0],
                    "dnsmasq answering",
                    answers("10.0.0.100"),
                )
                .await;
                let pid = g.id().unwrap();
                (Some(g), Server::Dnsmasq(pid))
            } else {
                if s.agent.is_none() {
                    s.agent = Some(AgentTask::start(s.agent_config.clone()));
                    until(
                        &topo,
                        0,
                        &names[0],
                        "the resolver answering",
                        answers("10.0.0.100"),
                    )
                    .await;
                }
                (None, Server::Resolver)
            };
            let local = rate(&topo, who, &local_file, secs).await;
            let fwd = rate(&topo, who, &fwd_file, secs).await;
            let lat_local = latency(&topo, &local_file, lat_qps, 2).await;
            let lat_fwd = latency(&topo, &fwd_file, lat_qps, 2).await;
            println!(
                "  {server:<8} local {:>7.0} q/s {:.2} CPU µs/q (lost {}), forwarded {:>6.0} q/s {:.2} CPU µs/q (lost {}); at {lat_qps} q/s p50/p99 local {:.0}/{:.0} µs, forwarded {:.0}/{:.0} µs",
                local.qps,
                local.cpu_us,
                local.lost,
                fwd.qps,
                fwd.cpu_us,
                fwd.lost,
                lat_local.0,
                lat_local.1,
                lat_fwd.0,
                lat_fwd.1
            );
            results.push(Round {
                server,
                local,
                fwd,
                lat_local,
                lat_fwd,
            });
            drop(guard);
        }
    }
    let mean = |who: &str, f: &dyn Fn(&Round) -> f64| {
        let v: Vec<f64> = results.iter().filter(|r| r.server == who).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!("\ndns: dnsperf from a VM namespace, {rounds} alternating rounds of {secs} s, means");
    println!(
        "  {:<22} {:>12} {:>12} {:>8}",
        "", "vpcep", "dnsmasq", "ratio"
    );
    type Row<'a> = (&'a str, &'a dyn Fn(&Round) -> f64);
    let rows: [Row; 10] = [
        ("local q/s", &|r| r.local.qps),
        ("local CPU µs/query", &|r| r.local.cpu_us),
        ("local q per CPU-s", &|r| 1e6 / r.local.cpu_us.max(1e-3)),
        ("forwarded q/s", &|r| r.fwd.qps),
        ("forwarded CPU µs/q", &|r| r.fwd.cpu_us),
        ("forwarded q per CPU-s", &|r| 1e6 / r.fwd.cpu_us.max(1e-3)),
        ("local p50 µs", &|r| r.lat_local.0),
        ("local p99 µs", &|r| r.lat_local.1),
        ("forwarded p50 µs", &|r| r.lat_fwd.0),
        ("forwarded p99 µs", &|r| r.lat_fwd.1),
    ];
    for (label, f) in rows {
        let (a, b) = (mean("vpcep", f), mean("dnsmasq", f));
        println!("  {label:<22} {a:>12.1} {b:>12.1} {:>8.2}", a / b);
    }
    println!(
        "  (target: local rate ratio ≥ 1.00; with dnsperf's core the limit, the server's capacity is its queries per CPU-second)"
    );

    // Freshness: an accept or reject answered by the node's resolver.
    if s.agent.is_none() {
        s.agent = Some(AgentTask::start(s.agent_config.clone()));
        until(
            &topo,
            0,
            &names[0],
            "the resolver answering",
            answers("10.0.0.100"),
        )
        .await;
    }
    let mut took = Vec::new();
    for i in 0..env("VPCEP_DNS_CHANGES", 20) {
        let gone = i % 2 == 0;
        let ep = s.ep.clone();
        s.connection(&ep, if gone { "reject" } else { "receive" })
            .await;
        took.push(seen(&topo, &names[0], gone).await);
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\ndns freshness: API answered → the node answers the change, {} changes: p50 {:.1} ms, max {:.1} ms (target ≤ 1000 ms)",
        took.len(),
        ms(took[took.len() / 2]),
        ms(took[took.len() - 1])
    );
    s.stop().await;

    let (mib, build, n) = table_at(100_000);
    println!(
        "dns table: {n} names in {} VPCs: {mib:.1} MiB (RSS growth while built), built in {:.1} ms (on every feed change)",
        100_000 / 1000,
        ms(build)
    );
}
