//! `cargo xtask bench`: the traffic benchmarks in network namespaces ([`hooks`], [`e2e`],
//! [`overlay`], [`flood`]), each next to its baseline in the same run, and the ones that
//! are cargo tests or benches (dataplane, convergence, api).
mod common;
mod e2e;
mod flood;
mod hooks;
mod overlay;
mod traffic;

use std::{ops::RangeInclusive, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use self::common::Length;
use crate::{build, cargo, setup, sh, target_dir};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    Dataplane,
    Api,
    /// Bulk TCP with the TC or XDP program on a veth, next to plain routing.
    Hooks,
    /// API write → kernel maps of a real agent, and → the feed of 100 simulated agents.
    Convergence,
    /// Traffic through the endpoint in namespaces next to plain routing and nftables
    /// DNAT+SNAT: UDP pps, TCP connections/s, bulk (1 and 4 streams), RR latency.
    E2e,
    /// A backend on another node: through the overlay next to plain kernel VXLAN routing.
    Overlay,
    /// One tenant floods new flows; another tenant's connections/s and an established
    /// flow's throughput and RR p99, next to the same figures with no flood.
    Flood,
    /// dnsperf against the node resolver and against dnsmasq with the same records:
    /// local and forwarded names; freshness; the table at 100,000 names.
    Dns,
    All,
}

/// The length of the traffic benchmarks (hooks, e2e, overlay, flood), from the command
/// line; unset, each takes its environment variable or its default.
pub struct Options {
    pub runs: Option<u64>,
    pub secs: Option<u64>,
}

impl Options {
    /// Runs and seconds: the option, else `$<env>_RUNS` / `$<env>_SECS`, else the default.
    fn length(&self, env: Option<&str>, default: Length, limit: Length) -> Result<Length> {
        let pick = |opt: Option<u64>, var: &str, default: u64, max: u64| -> Result<u64> {
            let from_env = match env.map(|e| format!("{e}_{var}")) {
                Some(name) => match std::env::var(&name) {
                    Ok(s) => Some(s.parse().with_context(|| format!("{name}={s:?}"))?),
                    Err(_) => None,
                },
                None => None,
            };
            let v = opt.or(from_env).unwrap_or(default);
            in_range(&var.to_lowercase(), v, 1..=max)
        };
        Ok(Length {
            runs: pick(self.runs, "RUNS", default.runs, limit.runs)?,
            secs: pick(self.secs, "SECS", default.secs, limit.secs)?,
        })
    }
}

fn in_range(what: &str, v: u64, range: RangeInclusive<u64>) -> Result<u64> {
    if !range.contains(&v) {
        bail!("{what} must be in {range:?}");
    }
    Ok(v)
}

const fn len(runs: u64, secs: u64) -> Length {
    Length { runs, secs }
}

pub fn run(what: BenchKind, opts: &Options) -> Result<()> {
    setup::ensure()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load BPF programs and start PostgreSQL: run as root");
    }
    let want = |k: BenchKind| what == BenchKind::All || what == k;
    if want(BenchKind::Hooks) {
        println!("== hooks: bulk TCP through a routing namespace, per hook on the veth");
        let len = opts.length(None, len(3, 5), len(10, 60))?;
        build(false)?;
        hooks::run(&target_dir().join("release/vpcep"), len)?;
    }
    if want(BenchKind::E2e) {
        println!(
            "== e2e: consumer → endpoint → backend in namespaces; plain routing, nftables, vpcep"
        );
        let len = opts.length(Some("VPCEP_E2E"), len(3, 3), len(20, 60))?;
        let (vpcep, load) = build_with_load()?;
        e2e::run(&vpcep, &load, len)?;
    }
    if want(BenchKind::Overlay) {
        println!("== overlay: backend on another node; plain kernel VXLAN routing, vpcep");
        let len = opts.length(Some("VPCEP_E2E"), len(3, 3), len(20, 60))?;
        let (vpcep, load) = build_with_load()?;
        overlay::run(&vpcep, &load, len)?;
    }
    if want(BenchKind::Flood) {
        println!("== flood: tenant A floods its endpoint; tenant B's connections and flows");
        let len = opts.length(Some("VPCEP_FLOOD"), len(3, 3), len(10, 20))?;
        let (vpcep, load) = build_with_load()?;
        flood::run(&vpcep, &load, len)?;
    }
    if want(BenchKind::Dataplane) {
        println!("== dataplane: ns/packet, 10,000 endpoints and 1,000,000 flows loaded");
        // The no-op and floor programs are only in an object built with `bench`.
        sh(cargo()
            .args(["bench", "--package", "vpcep-tests", "--bench", "dataplane"])
            .args(["--features", "bench"]))?;
    }
    if want(BenchKind::Convergence) {
        println!(
            "== convergence: 1,000 API changes to the maps of a real agent and to 100 simulated agents"
        );
        report_test("agent", "_report")?;
    }
    if want(BenchKind::Dns) {
        println!(
            "== dns: dnsperf from a VM namespace, the node resolver next to dnsmasq (same records, same path)"
        );
        report_test("agent", "dns_report")?;
    }
    if want(BenchKind::Api) {
        println!(
            "== api: requests/s and latency over HTTP and HTTPS (same run, alternating), SQLite then PostgreSQL; TLS handshakes/s (load generator in-process)"
        );
        report_test("api", "bench_report")?;
    }
    Ok(())
}

/// An ignored report test of `vpcep-tests`, release build, its output shown.
fn report_test(test: &str, filter: &str) -> Result<()> {
    sh(cargo()
        .args([
            "test",
            "--release",
            // The workspace's feature resolution, as `cargo xtask test` builds: nothing to
            // rebuild after it.
            "--workspace",
            "--test",
            test,
        ])
        .args([filter, "--", "--ignored", "--nocapture", "--test-threads=1"]))
}

/// Release builds of `vpcep` and of the load generator `vpcep-load`; their paths.
fn build_with_load() -> Result<(PathBuf, PathBuf)> {
    build(false)?;
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "xtask",
        "--bin",
        "vpcep-load",
    ]))?;
    let target = target_dir();
    Ok((
        target.join("release/vpcep"),
        target.join("release/vpcep-load"),
    ))
}
