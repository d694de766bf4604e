//! `cargo xtask demo`: the whole story on one machine, driven through the `vpcep` CLI as a
//! user would drive it. A control plane on a fresh SQLite file, a node namespace with a
//! consumer VM and a backend VM (two VPCs, both 10.0.0.0/24), one agent, a small HTTP
//! service; then inventory, service, whitelist, endpoint, accept and reject, with the
//! expected outcome of each step checked so that CI catches a regression.
//!
//! Everything it creates carries this process's PID in its name and is removed by
//! [`Demo`]'s `Drop` (also on failure and on Ctrl-C), unless `--keep` hands it over to
//! `cargo xtask demo --stop`.
//!
//! Modules by concern: [`start`] brings up the control plane, the topology, the backend and
//! the agent; [`commands`] is what the operator, the provider and the consumer type;
//! [`checks`] verifies each outcome; [`keep`] hands everything over to `--stop`; [`proc`]
//! guards the long-running children; [`ui`] prints.
mod checks;
mod commands;
mod keep;
mod proc;
mod start;
mod ui;

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use xtask::netns::{NetNs, Topology};

pub use self::keep::stop;
use self::{
    proc::Proc,
    ui::{print_indented, show_command, tail},
};
use crate::{cargo, setup, sh, target_dir};

const NODE: &str = "node1";
const UNDERLAY_IP: &str = "192.0.2.1";
const CONSUMER_IP: &str = "10.0.0.2";
const BACKEND_IP: &str = "10.0.0.5";
const ENDPOINT_IP: &str = "10.0.0.100";
/// The subnets' DNS address (the inventory's default), where the node's resolver answers.
const DNS_ADDRESS: &str = "169.254.169.253";
const C_MAC: &str = "02:00:00:00:00:02";
const B_MAC: &str = "02:00:00:00:00:05";
const SNAT_RANGE: &str = "198.19.128.0/17";
const PROVIDER_PROJECT: &str = "proj-provider";
const CONSUMER_PROJECT: &str = "proj-consumer";
/// Every request of the demo: a dropped SYN fails within a second.
const CURL: &[&str] = &["curl", "-sS", "--connect-timeout", "1", "-m", "3"];
/// Name of the file under the demo directory that `--stop` reads.
const STATE: &str = "state";
const DIR_PREFIX: &str = "vpcep-demo-";

pub struct Options {
    /// Leave everything running for `--stop`.
    pub keep: bool,
    /// Release build (the default); `cargo xtask test` uses the debug build it already has.
    pub release: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag that every step checks; the error that follows unwinds through the
/// guards, which clean up. Children in our process group get the signal too and end.
fn install_sigint_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub(super) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    install_sigint_handler();
    if !is_root() {
        bail!("the demo creates network namespaces and loads BPF programs: run as root");
    }
    let mut steps = Steps::default();

    steps.next("Install what is missing (skips what is there)");
    setup::ensure()?;
    setup::ensure_bpffs()?;

    steps.next(if opts.release {
        "Build the vpcep binary (release, eBPF object embedded)"
    } else {
        "Build the vpcep binary (debug, eBPF object embedded)"
    });
    let mut build = cargo();
    build.args(["build", "--package", "vpcep-userspace", "--bin", "vpcep"]);
    if opts.release {
        build.arg("--release");
    }
    sh(&mut build)?;
    let bin = target_dir()
        .join(if opts.release { "release" } else { "debug" })
        .join("vpcep");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    check_interrupted()?;

    let built = Instant::now();
    let mut demo = Demo::new(bin)?;
    if let Err(e) = demo.story(&mut steps) {
        // The directory goes with the cleanup: show the logs while they exist.
        if !INTERRUPTED.load(Ordering::SeqCst) {
            demo.print_logs();
        }
        return Err(e);
    }
    println!(
        "\ndemo: every check held (pending → refused, accepted → 200 from a 198.19 source, \
         its name answered in its VPC only, rejected → refused) in {:.1} s after {:.0} s of setup and build",
        built.elapsed().as_secs_f64(),
        built.duration_since(started).as_secs_f64()
    );
    if opts.keep {
        demo.keep()?;
    }
    Ok(())
}

/// Numbered step headers.
#[derive(Default)]
struct Steps(u32);

impl Steps {
    fn next(&mut self, what: &str) {
        self.0 += 1;
        println!("\n=== {}. {what}", self.0);
    }
}

/// Everything the demo started or created. Fields are declared in the order they are torn
/// down: the agent before its pins, the VMs' processes before the namespaces, files last.
struct Demo {
    agent: Option<Proc>,
    /// Removing the pin directory releases the TC links, i.e. detaches the programs.
    pin_dir: PathBuf,
    backend: Option<Proc>,
    control_plane: Option<Proc>,
    /// tcpdump on the control plane's port (stopped before the capture is read).
    capture: Option<Proc>,
    /// The credentials' secrets, which the capture must not contain.
    secrets: Vec<String>,
    topo: Option<Topology>,
    dir: PathBuf,
    kept: bool,
    bin: PathBuf,
    url: String,
    ids: Ids,
    /// The service and endpoint, once created (for `--keep`'s instructions).
    service: String,
    endpoint: String,
}

/// Ids of the inventory, chosen up front so that the agent's configuration can name its
/// NICs before the operator registers them.
struct Ids {
    provider_vpc: String,
    provider_subnet: String,
    backend_port: String,
    consumer_vpc: String,
    consumer_subnet: String,
    consumer_port: String,
}

impl Ids {
    fn new() -> Self {
        let id = || uuid::Uuid::new_v4().to_string();
        Self {
            provider_vpc: id(),
            provider_subnet: id(),
            backend_port: id(),
            consumer_vpc: id(),
            consumer_subnet: id(),
            consumer_port: id(),
        }
    }
}

impl Demo {
    fn new(bin: PathBuf) -> Result<Self> {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}"));
        // The directory holds credentials: owner only.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            agent: None,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{DIR_PREFIX}{pid}")),
            backend: None,
            control_plane: None,
            capture: None,
            secrets: Vec::new(),
            topo: None,
            dir,
            kept: false,
            bin,
            url: String::new(),
            ids: Ids::new(),
            service: String::new(),
            endpoint: String::new(),
        })
    }

    pub(super) fn topo(&self) -> Result<&Topology> {
        self.topo.as_ref().context("no topology yet")
    }

    pub(super) fn consumer_ns(&self) -> Result<&NetNs> {
        Ok(&self.topo()?.vms[0].ns)
    }

    pub(super) fn backend_ns(&self) -> Result<&NetNs> {
        Ok(&self.topo()?.vms[1].ns)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn story(&mut self, steps: &mut Steps) -> Result<()> {
        println!(
            "demo directory (configs, logs, database): {}",
            self.dir.display()
        );
        println!("vpcep is {}", self.bin.display());

        steps.next(
            "Start the control plane on an embedded SQLite store, over HTTPS with a development CA",
        );
        self.start_control_plane()?;

        steps.next("Build the topology: node namespace, consumer VM and backend VM");
        self.build_topology()?;

        steps.next("Start the backend's HTTP service (python3 -m http.server, log captured)");
        self.start_backend()?;

        steps.next("Start the node agent");
        self.start_agent()?;

        steps.next("Operator: register the node and the inventory (two VPCs, both 10.0.0.0/24)");
        self.inventory()?;

        steps.next(
            "Provider: create the endpoint service (approval required), whitelist the consumer",
        );
        let service = self.service()?;

        steps.next("Consumer: create the endpoint; it waits for the provider's acceptance");
        let endpoint = self.endpoint(&service)?;
        (self.service, self.endpoint) = (service.clone(), endpoint.clone());
        self.wait_for_map(false)?;
        self.cli(&["dataplane", "endpoints", "--pin-dir", &self.pin_dir_str()])?;
        self.expect_refused("pending")?;

        steps.next("Provider: accept the connection");
        self.cli(&[
            "connection",
            "accept",
            "--profile",
            "provider",
            &service,
            &endpoint,
        ])?;
        self.cli(&["endpoint", "list", "--profile", "consumer"])?;
        self.wait_for_map(true)?;
        self.expect_served()?;

        steps.next("Consumer: the endpoint's domain names, answered by the node in its VPC only");
        self.expect_names(&endpoint)?;

        steps.next("Counters of the node, from the maps the agent pinned");
        let eps = self.cli(&["dataplane", "endpoints", "--pin-dir", &self.pin_dir_str()])?;
        self.cli(&["dataplane", "stats", "--pin-dir", &self.pin_dir_str()])?;
        self.expect_counted(&eps)?;

        steps.next("Provider: reject the connection");
        self.cli(&[
            "connection",
            "reject",
            "--profile",
            "provider",
            &service,
            &endpoint,
        ])?;
        self.wait_for_map(false)?;
        self.expect_refused("rejected")?;

        steps.next("Check the capture of the control plane's port: no credential in clear");
        self.expect_no_secret_on_the_wire()?;
        Ok(())
    }

    fn print_logs(&self) {
        for name in ["control-plane.log", "agent.log", "backend.log"] {
            let path = self.path(name);
            if path.exists() {
                println!("\n--- last lines of {}:", path.display());
                print_indented(&tail(&path, 15));
            }
        }
    }

    pub(super) fn pin_dir_str(&self) -> String {
        self.pin_dir.display().to_string()
    }

    /// The `vpcep` binary with the demo's profiles and none of the caller's VPCEP_*
    /// settings (environment credentials would override the profiles).
    pub(super) fn vpcep(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("VPCEP_CONFIG", self.path("cli.toml"));
        for v in [
            "VPCEP_URL",
            "VPCEP_AK",
            "VPCEP_SK",
            "VPCEP_TOKEN",
            "VPCEP_PROJECT_ID",
            "VPCEP_PROFILE",
        ] {
            cmd.env_remove(v);
        }
        cmd
    }

    /// Runs one CLI command, showing it and what it printed; fails on non-zero exit.
    pub(super) fn cli(&self, args: &[&str]) -> Result<String> {
        check_interrupted()?;
        show_command("vpcep", args);
        let out = self.vpcep(args).output().context("running the vpcep CLI")?;
        check_interrupted()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print_indented(&stdout);
        if !out.status.success() {
            bail!(
                "`vpcep {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        println!(
            "\ncleaning up: stopping the processes the demo started, deleting its namespaces, pins and files"
        );
        // In declaration order; each guard stops its own process by PID.
        self.agent = None;
        let _ = fs::remove_dir_all(&self.pin_dir);
        self.backend = None;
        self.control_plane = None;
        self.capture = None;
        self.topo = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}
