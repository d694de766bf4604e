//! Network namespaces, veth pairs and child processes for tests, each behind a guard that
//! removes it in `Drop`, also when the test fails.
//!
//! Names are unique per process and call (`vpcep-<pid>-<seq>-<role>`) so parallel tests and
//! concurrent runs never collide; interfaces live inside those namespaces, so their short
//! fixed names (`tap0`, `eth0`) cannot collide either.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, bail};

pub use crate::child::ChildGuard;

/// Prefix of every namespace this project creates.
pub const PREFIX: &str = "vpcep-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A uniquely named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `vpcep-<pid>-<seq>-<role>` with loopback up.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self::create(name)
    }

    /// Creates a namespace with exactly this name (for `cargo xtask netns create`).
    pub fn create(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes over an existing namespace (for `cargo xtask netns destroy`).
    pub fn adopt(name: String) -> Self {
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a command inside the namespace and returns its output, failing on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{program} {} in {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Starts a long-running command in the namespace; it is killed (by PID) on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(ChildGuard::from(child))
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink calls made
    /// there belong to the namespace. The calling thread is not affected.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns into {path}: {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
        })
    }

    /// Index of an interface inside this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let name = std::ffi::CString::new(iface)?;
        let idx = self.run(move || {
            // SAFETY: valid NUL-terminated string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })?;
        if idx == 0 {
            bail!("no interface {iface} in {}", self.name);
        }
        Ok(idx)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also removes every veth end inside it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// One VM: a namespace joined to the node namespace by a veth pair whose node end plays
/// the tap device.
#[derive(Debug)]
pub struct Vm {
    pub ns: NetNs,
    /// Interface name of the node end (in the node namespace).
    pub host_if: String,
    pub ip: String,
    pub mac: String,
}

/// A node namespace and its VMs; dropping it removes everything.
#[derive(Debug)]
pub struct Topology {
    // VMs first: fields drop in declaration order.
    pub vms: Vec<Vm>,
    pub node: NetNs,
}

impl Topology {
    /// A node namespace with no VMs.
    pub fn new() -> Result<Self> {
        Ok(Self {
            vms: Vec::new(),
            node: NetNs::new("node")?,
        })
    }

    /// Adds a VM with `eth0` = `ip_cidr` (e.g. "10.0.0.2/24") and MAC `mac`; its node end is
    /// `host_if` (≤ 15 chars), up, with no address.
    pub fn add_vm(&mut self, host_if: &str, ip_cidr: &str, mac: &str) -> Result<&Vm> {
        let ns = NetNs::new("vm")?;
        self.node.ip(&[
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        ns.ip(&["link", "set", "eth0", "address", mac])?;
        ns.ip(&["addr", "add", ip_cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.node.ip(&["link", "set", host_if, "up"])?;
        let ip = ip_cidr.split('/').next().unwrap_or(ip_cidr).to_string();
        self.vms.push(Vm {
            ns,
            host_if: host_if.to_string(),
            ip,
            mac: mac.to_string(),
        });
        self.vms.last().context("vm just pushed")
    }
}

/// Nodes joined by an underlay network: a bridge in a namespace of its own, each node
/// attached to it by a veth (`ul0` in the node, 192.168.50.<i+1>/24) and carrying a VXLAN
/// device `vx0` in external (collect-metadata) mode on UDP 4789. Dropping it removes
/// everything.
#[derive(Debug)]
pub struct Cluster {
    // Nodes (and their VMs) first: fields drop in declaration order.
    pub nodes: Vec<Topology>,
    pub underlay: NetNs,
}

/// The VXLAN device every [`Cluster`] node has.
pub const VXLAN_IF: &str = "vx0";

impl Cluster {
    pub fn new(n: usize) -> Result<Self> {
        let underlay = NetNs::new("underlay")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let node = Topology::new()?;
            let port = format!("ul{i}");
            underlay.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "ul0",
                "netns",
                node.node.name(),
            ])?;
            underlay.ip(&["link", "set", &port, "master", "br0", "up"])?;
            node.node.ip(&[
                "addr",
                "add",
                &format!("{}/24", Self::underlay_ip(i)),
                "dev",
                "ul0",
            ])?;
            node.node.ip(&["link", "set", "ul0", "up"])?;
            node.node.ip(&[
                "link", "add", VXLAN_IF, "type", "vxlan", "dstport", "4789", "external",
            ])?;
            node.node.ip(&["link", "set", VXLAN_IF, "up"])?;
            nodes.push(node);
        }
        Ok(Self { nodes, underlay })
    }

    /// Underlay address of node `i`.
    pub fn underlay_ip(i: usize) -> String {
        format!("192.168.50.{}", i + 1)
    }
}
