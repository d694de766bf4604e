//! `--keep` and `--stop`: handing everything the demo started over to a later
//! `cargo xtask demo --stop`, and removing it then.
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::netns::{NetNs, PREFIX};

use super::{
    DIR_PREFIX, Demo, ENDPOINT_IP, STATE, is_root,
    proc::{Proc, terminate},
};

impl Demo {
    /// `--keep`: leave everything running, record it for `--stop` and say how to use it.
    pub(super) fn keep(mut self) -> Result<()> {
        let topo = self.topo.take().context("topology")?;
        let mut state = String::new();
        // Stopped in this order: the agent before the control plane it follows.
        for p in [&self.agent, &self.backend, &self.control_plane]
            .into_iter()
            .flatten()
        {
            writeln!(state, "pid {} {}", p.pid(), p.tag)?;
        }
        for vm in &topo.vms {
            writeln!(state, "netns {}", vm.ns.name())?;
        }
        writeln!(state, "netns {}", topo.node.name())?;
        writeln!(state, "pin_dir {}", self.pin_dir.display())?;
        fs::write(self.path(STATE), state)?;

        let (consumer, backend, node) = (
            topo.vms[0].ns.name().to_owned(),
            topo.vms[1].ns.name().to_owned(),
            topo.node.name().to_owned(),
        );
        let pid = |p: &Option<Proc>| p.as_ref().map_or(0, Proc::pid);
        let (cp, ag, be) = (
            pid(&self.control_plane),
            pid(&self.agent),
            pid(&self.backend),
        );
        // The namespaces and processes outlive this process now; `--stop` removes them.
        std::mem::forget(topo);
        for p in [&mut self.control_plane, &mut self.agent, &mut self.backend]
            .into_iter()
            .flatten()
        {
            p.release();
        }
        let bin_dir = self
            .bin
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        println!(
            r#"
Everything is still running (--keep):
  control plane  pid {cp}  {url}  log {dir}/control-plane.log
  agent          pid {ag}  config {dir}/agent.toml  log {dir}/agent.log
  backend HTTP   pid {be}  in {backend}  access log {dir}/backend.log
  namespaces     node {node}, consumer VM {consumer}, backend VM {backend}
  pinned maps    {pins}

Try it by hand:
  unset VPCEP_URL VPCEP_AK VPCEP_SK VPCEP_TOKEN VPCEP_PROJECT_ID VPCEP_PROFILE
  export VPCEP_CONFIG={dir}/cli.toml PATH={bin_dir}:$PATH
  vpcep connection list --profile provider {service}
  vpcep connection accept --profile provider {service} {endpoint}
  vpcep endpoint list --profile consumer
  ip netns exec {consumer} curl -sS -m 3 http://{ENDPOINT_IP}:8080/
  tail -n 3 {dir}/backend.log
  vpcep dataplane endpoints --pin-dir {pins}
  vpcep dataplane flows --pin-dir {pins}

Stop it all (kills the PIDs above, deletes the namespaces, the pins and {dir}):
  cargo xtask demo --stop"#,
            url = self.url,
            service = self.service,
            endpoint = self.endpoint,
            dir = self.dir.display(),
            pins = self.pin_dir.display(),
        );
        self.kept = true;
        Ok(())
    }
}

/// `cargo xtask demo --stop`: removes what `--keep` runs left behind, as their state files
/// list it. A PID is killed only while its command line still names the demo's directory.
pub fn stop() -> Result<()> {
    if !is_root() {
        bail!("stopping the demo deletes network namespaces: run as root");
    }
    let mut found = 0;
    for entry in fs::read_dir(std::env::temp_dir())? {
        let dir = entry?.path();
        let is_demo = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        let Ok(state) = fs::read_to_string(dir.join(STATE)) else {
            continue;
        };
        if !is_demo {
            continue;
        }
        found += 1;
        println!("stopping the demo in {}", dir.display());
        let mut namespaces = Vec::new();
        for line in state.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["pid", pid, tag] => stop_pid(pid, tag, &dir),
                ["netns", name] if name.starts_with(PREFIX) => namespaces.push(name.to_string()),
                ["pin_dir", path] if path.starts_with("/sys/fs/bpf/vpcep-demo-") => {
                    println!("  removing {path}");
                    let _ = fs::remove_dir_all(path);
                }
                _ => {}
            }
        }
        for name in namespaces {
            println!("  deleting namespace {name}");
            drop(NetNs::adopt(name));
        }
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if found == 0 {
        println!(
            "no demo left running (nothing under {}/{DIR_PREFIX}*)",
            std::env::temp_dir().display()
        );
    }
    Ok(())
}

pub(super) fn stop_pid(pid: &str, tag: &str, dir: &Path) {
    let Ok(n) = pid.parse::<u32>() else { return };
    // Each process was started with a path inside the demo directory (credentials, config,
    // web root): a reused PID does not have it.
    let cmdline = fs::read(format!("/proc/{n}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&dir.display().to_string()) {
        println!("  pid {n} ({tag}) is gone");
        return;
    }
    println!("  stopping pid {n} ({tag})");
    terminate(n);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{n}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{n}")).exists() {
        // SAFETY: kill(2) of the PID the demo recorded, still running what it started.
        if let Ok(p) = i32::try_from(n) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}
