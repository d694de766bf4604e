//! The measures the e2e and overlay benchmarks take between a consumer VM (10.0.0.2, load on
//! CPU 0) and a backend VM (10.0.0.5, receivers and servers on CPU 1), each bounded in time.
use std::{path::Path, thread, time::Duration};

use anyhow::{Context as _, Result};
use xtask::{child::ChildGuard, netns::NetNs};

use super::common::{iperf_gbps, last_json, num, one_shot, pinned, spawn_piped, spawn_quiet};

const BACKEND: &str = "10.0.0.5";
const ENDPOINT: &str = "10.0.0.100";

/// Where the consumer sends: straight to the backend (the baselines) or to the endpoint.
#[derive(Clone, Copy)]
pub enum Target {
    Backend,
    Endpoint,
}

impl Target {
    /// `ip:port`: the backend's server port, or the endpoint's client port.
    pub fn addr(self, server: u16, client: u16) -> String {
        match self {
            Target::Backend => format!("{BACKEND}:{server}"),
            Target::Endpoint => format!("{ENDPOINT}:{client}"),
        }
    }
}

/// The backend's servers for the whole run: `vpcep-load tcp-server` on each TCP port and
/// an iperf3 server; every one ends on its own after `secs`, or by its PID on drop.
pub struct Servers {
    _guards: Vec<ChildGuard>,
}

/// More backend servers (`vpcep-load` subcommand and extra arguments per port), for as long.
pub fn more_servers(
    b: &NetNs,
    load: &Path,
    servers: &[(u16, &str, &[&str])],
    secs: u64,
) -> Result<Vec<ChildGuard>> {
    let (load, total) = (load.to_string_lossy(), secs.to_string());
    let mut out = Vec::new();
    for (port, sub, extra) in servers {
        let mut cmd = pinned(b, 1, &load);
        cmd.arg(sub).arg(format!("{BACKEND}:{port}")).arg(&total);
        cmd.args(*extra);
        out.push(spawn_quiet(cmd)?);
    }
    thread::sleep(Duration::from_millis(300));
    Ok(out)
}

impl Servers {
    pub fn start(
        b: &NetNs,
        load: &Path,
        tcp: &[u16],
        iperf: Option<u16>,
        secs: u64,
    ) -> Result<Self> {
        let (load, total) = (load.to_string_lossy(), secs.to_string());
        let mut servers = Vec::new();
        for port in tcp {
            let mut cmd = pinned(b, 1, &load);
            cmd.args(["tcp-server", &format!("{BACKEND}:{port}"), &total]);
            servers.push(spawn_quiet(cmd)?);
        }
        if let Some(port) = iperf {
            let mut cmd = pinned(b, 1, "timeout");
            cmd.args([
                &total,
                "iperf3",
                "-s",
                "-B",
                BACKEND,
                "-p",
                &port.to_string(),
            ]);
            servers.push(spawn_quiet(cmd)?);
        }
        thread::sleep(Duration::from_millis(500));
        Ok(Self { _guards: servers })
    }
}

/// The load tools between the two VMs.
pub struct Tools<'a> {
    pub client: &'a NetNs,
    pub server: &'a NetNs,
    pub load: &'a Path,
    pub secs: u64,
}

impl Tools<'_> {
    fn load(&self, ns: &NetNs, cpu: u8, args: &[&str]) -> std::process::Command {
        let mut cmd = pinned(ns, cpu, &self.load.to_string_lossy());
        cmd.args(args);
        cmd
    }

    /// 18-byte datagrams from one sending thread, counted at the backend's port 53.
    pub fn udp_pps(&self, to: &str) -> Result<f64> {
        let sink_secs = (self.secs + 3).to_string();
        let sink = spawn_piped(self.load(
            self.server,
            1,
            &["udp-sink", &format!("{BACKEND}:53"), &sink_secs],
        ))?;
        thread::sleep(Duration::from_millis(300));
        one_shot(self.load(
            self.client,
            0,
            &["udp-blast", to, &self.secs.to_string(), "18"],
        ))?;
        let out = sink.wait_output()?;
        let v = last_json(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
        num(&v, "pps")
    }

    /// TCP connections/s, 2 client threads, 1-byte request and answer.
    pub fn cps(&self, to: &str) -> Result<f64> {
        let v = one_shot(self.load(self.client, 0, &["cps", to, &self.secs.to_string(), "2"]))?;
        num(&v, "cps")
    }

    /// iperf3 bulk (`streams`: `-P`), Gbit/s received to 3 decimals; 0 if iperf3 failed.
    pub fn bulk(&self, to: &str, streams: Option<u32>) -> Result<f64> {
        let (ip, port) = to.split_once(':').context("ip:port")?;
        let mut cmd = pinned(self.client, 0, "iperf3");
        cmd.args(["-c", ip, "-p", port, "-t", &self.secs.to_string()]);
        if let Some(p) = streams {
            cmd.args(["-P", &p.to_string()]);
        }
        cmd.args(["-A", "0", "-J"]);
        let out = cmd.output().context("running iperf3")?;
        Ok((iperf_gbps(&out.stdout) * 1000.0).round() / 1000.0)
    }

    /// One stream written by `vpcep-load bulk` to a `tcp-sink`: Gbit/s acknowledged.
    pub fn load_bulk(&self, to: &str) -> Result<f64> {
        let v = one_shot(self.load(self.client, 0, &["bulk", to, &self.secs.to_string()]))?;
        num(&v, "gbps")
    }

    /// 1-byte ping-pong on one connection: p50 and p99 in µs.
    pub fn rr(&self, to: &str) -> Result<(f64, f64)> {
        let v = one_shot(self.load(self.client, 0, &["rr", to, &self.secs.to_string()]))?;
        Ok((num(&v, "p50_us")?, num(&v, "p99_us")?))
    }
}
