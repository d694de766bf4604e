//! `cargo xtask demo`: the whole story on one machine, driven through the `vpcep` CLI as a
//! user would drive it. A control plane on a fresh SQLite file, a node namespace with a
//! consumer VM and a backend VM (two VPCs, both 10.0.0.0/24), one agent, a small HTTP
//! service; then inventory, service, whitelist, endpoint, accept and reject, with the
//! expected outcome of each step checked so that CI catches a regression.
//!
//! Everything it creates carries this process's PID in its name and is removed by
//! [`Demo`]'s `Drop` (also on failure and on Ctrl-C), unless `--keep` hands it over to
//! `cargo xtask demo --stop`.
use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::netns::{NetNs, PREFIX, Topology};

use crate::{cargo, setup, sh, target_dir};

const NODE: &str = "node1";
const UNDERLAY_IP: &str = "192.0.2.1";
const CONSUMER_IP: &str = "10.0.0.2";
const BACKEND_IP: &str = "10.0.0.5";
const ENDPOINT_IP: &str = "10.0.0.100";
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

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

fn is_root() -> bool {
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
         rejected → refused) in {:.1} s after {:.0} s of setup and build",
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

/// A long-running child (control plane, agent, backend), output to a log file, in its own
/// process group so that Ctrl-C reaches the demo only and cleanup runs in order. Stopped by
/// its PID on drop unless released.
struct Proc {
    what: &'static str,
    /// What `--stop` calls it.
    tag: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn spawn(what: &'static str, tag: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Plain log files, without colour codes.
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        Ok(Self {
            what,
            tag,
            child: Some(child),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails when the process has already exited.
    fn alive(&mut self, log: &Path) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "the {} exited ({status}); its log ({}):\n{}",
                self.what,
                log.display(),
                tail(log, 20)
            );
        }
        Ok(())
    }

    /// Forget the child without stopping it (`--keep`).
    fn release(&mut self) {
        self.child = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(c.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) of one PID that this demo started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Everything the demo started or created. Fields are declared in the order they are torn
/// down: the agent before its pins, the VMs' processes before the namespaces, files last.
struct Demo {
    agent: Option<Proc>,
    /// Removing the pin directory releases the TC links, i.e. detaches the programs.
    pin_dir: PathBuf,
    backend: Option<Proc>,
    control_plane: Option<Proc>,
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

    fn topo(&self) -> Result<&Topology> {
        self.topo.as_ref().context("no topology yet")
    }

    fn consumer_ns(&self) -> Result<&NetNs> {
        Ok(&self.topo()?.vms[0].ns)
    }

    fn backend_ns(&self) -> Result<&NetNs> {
        Ok(&self.topo()?.vms[1].ns)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn story(&mut self, steps: &mut Steps) -> Result<()> {
        println!(
            "demo directory (configs, logs, database): {}",
            self.dir.display()
        );
        println!("vpcep is {}", self.bin.display());

        steps.next("Start the control plane on an embedded SQLite store");
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

    fn pin_dir_str(&self) -> String {
        self.pin_dir.display().to_string()
    }

    fn start_control_plane(&mut self) -> Result<()> {
        let port = free_port()?;
        self.url = format!("http://127.0.0.1:{port}");
        let (op, agent) = (secret(), secret());
        let (p_ak, p_sk, c_ak, c_sk) = (
            format!("AK-PROVIDER-{}", &secret()[..8]),
            secret(),
            format!("AK-CONSUMER-{}", &secret()[..8]),
            secret(),
        );
        fs::write(
            self.path("credentials.toml"),
            format!(
                r#"operator_tokens = ["{op}"]

[[credentials]]
ak = "{p_ak}"
sk = "{p_sk}"
project_id = "{PROVIDER_PROJECT}"

[[credentials]]
ak = "{c_ak}"
sk = "{c_sk}"
project_id = "{CONSUMER_PROJECT}"

[[agents]]
node = "{NODE}"
token = "{agent}"
"#
            ),
        )?;
        // The CLI's profiles: `--profile operator|provider|consumer` on every command.
        let url = &self.url;
        fs::write(
            self.path("cli.toml"),
            format!(
                r#"[profiles.operator]
url = "{url}"
token = "{op}"

[profiles.provider]
url = "{url}"
ak = "{p_ak}"
sk = "{p_sk}"
project_id = "{PROVIDER_PROJECT}"

[profiles.consumer]
url = "{url}"
ak = "{c_ak}"
sk = "{c_sk}"
project_id = "{CONSUMER_PROJECT}"
"#
            ),
        )?;
        fs::write(self.path("agent-token"), agent)?;
        let db = format!("sqlite://{}", self.path("vpcep.db").display());
        let creds = self.path("credentials.toml").display().to_string();
        let args = [
            "control-plane",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            &db,
            "--credentials",
            &creds,
        ];
        show_command("vpcep", &args);
        let log = self.path("control-plane.log");
        self.control_plane = Some(Proc::spawn(
            "control plane",
            "control-plane",
            Command::new(&self.bin).args(args),
            &log,
        )?);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let waited = wait_for("the control plane to listen", 20, || {
            if let Some(p) = self.control_plane.as_mut() {
                p.alive(&log)?;
            }
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        println!(
            "  control plane pid {} listening on {} after {waited:.1} s (log: {})",
            self.control_plane.as_ref().map_or(0, Proc::pid),
            self.url,
            log.display()
        );
        Ok(())
    }

    fn build_topology(&mut self) -> Result<()> {
        let pid = std::process::id();
        let (tapc, tapb) = (format!("tapc-{pid}"), format!("tapb-{pid}"));
        let topo = Topology::new()?;
        // Stored at once so that a failure below still removes what exists.
        let node = topo.node.name().to_owned();
        self.topo = Some(topo);
        let topo = self.topo.as_mut().context("topology")?;
        topo.add_vm(&tapc, &format!("{CONSUMER_IP}/24"), C_MAC)?;
        topo.add_vm(&tapb, &format!("{BACKEND_IP}/24"), B_MAC)?;
        // Replies to the SNAT range leave the backend through its gateway, which the node's
        // program answers. Only that range: nothing else (e.g. a DNS lookup) leaves the VM.
        topo.vms[1]
            .ns
            .ip(&["route", "add", SNAT_RANGE, "via", "10.0.0.1"])?;
        let (c, b) = (topo.vms[0].ns.name(), topo.vms[1].ns.name());
        println!("  node namespace      {node}");
        println!("  consumer VM         {c}: eth0 {CONSUMER_IP}/24 {C_MAC}, node end {tapc}");
        println!(
            "  backend VM          {b}: eth0 {BACKEND_IP}/24 {B_MAC}, node end {tapb}, {SNAT_RANGE} via 10.0.0.1"
        );
        Ok(())
    }

    fn start_backend(&mut self) -> Result<()> {
        let www = self.path("www");
        fs::create_dir_all(&www)?;
        fs::write(
            www.join("index.html"),
            "hello from the backend VM (provider VPC, 10.0.0.5)\n",
        )?;
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let www = www.display().to_string();
        let args = [
            "-u",
            "-m",
            "http.server",
            "80",
            "--bind",
            BACKEND_IP,
            "--directory",
            &www,
        ];
        let ns = self.backend_ns()?.name().to_owned();
        let mut shown = vec!["netns", "exec", &ns, "python3"];
        shown.extend_from_slice(&args);
        show_command("ip", &shown);
        let log = self.path("backend.log");
        let mut cmd = self.backend_ns()?.command(python);
        cmd.args(args);
        self.backend = Some(Proc::spawn(
            "backend HTTP server",
            "http.server",
            &mut cmd,
            &log,
        )?);
        let addr: SocketAddr = format!("{BACKEND_IP}:80").parse()?;
        // A bare connect inside the backend VM: http.server logs nothing for it.
        let waited = wait_for("the backend to listen", 10, || {
            if let Some(p) = self.backend.as_mut() {
                p.alive(&log)?;
            }
            self.backend_ns()?
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        println!(
            "  backend pid {} listening on {BACKEND_IP}:80 after {waited:.1} s (access log: {})",
            self.backend.as_ref().map_or(0, Proc::pid),
            log.display()
        );
        Ok(())
    }

    fn start_agent(&mut self) -> Result<()> {
        let pid = std::process::id();
        let token = fs::read_to_string(self.path("agent-token"))?;
        let node_ns = self.topo()?.node.name().to_owned();
        let metrics = free_port()?;
        let config = format!(
            r#"# The demo's node: the agent runs in the host namespace (where the control plane
# listens) and manages the VM NICs inside the node namespace.
node_name = "{NODE}"
underlay_ip = "{UNDERLAY_IP}"
control_plane = ["{url}"]
token = "{token}"
pin_dir = "{pins}"
metrics_address = "127.0.0.1:{metrics}"
resync_interval_ms = 5000
netns = "{node_ns}"

[[nic]]
iface = "tapc-{pid}"
port_id = "{cport}"

[[nic]]
iface = "tapb-{pid}"
port_id = "{bport}"
"#,
            url = self.url,
            pins = self.pin_dir.display(),
            cport = self.ids.consumer_port,
            bport = self.ids.backend_port,
        );
        let path = self.path("agent.toml");
        fs::write(&path, config)?;
        let path_s = path.display().to_string();
        let args = ["agent", "--config", &path_s];
        show_command("vpcep", &args);
        let log = self.path("agent.log");
        self.agent = Some(Proc::spawn(
            "agent",
            "agent",
            Command::new(&self.bin).args(args),
            &log,
        )?);
        // The views succeed once the agent has loaded the programs and pinned its maps.
        let pins = self.pin_dir_str();
        let waited = wait_for("the agent to pin its maps", 30, || {
            if let Some(p) = self.agent.as_mut() {
                p.alive(&log)?;
            }
            Ok(self
                .vpcep(&["dataplane", "endpoints", "--pin-dir", &pins])
                .output()
                .is_ok_and(|o| o.status.success()))
        })?;
        println!(
            "  agent pid {} has loaded the programs and pinned its maps in {} after {waited:.1} s \
             (metrics: http://127.0.0.1:{metrics}/metrics, log: {})",
            self.agent.as_ref().map_or(0, Proc::pid),
            self.pin_dir.display(),
            log.display()
        );
        Ok(())
    }

    fn inventory(&mut self) -> Result<()> {
        let ids = &self.ids;
        self.cli(&[
            "node",
            "register",
            "--profile",
            "operator",
            NODE,
            "--underlay-ip",
            UNDERLAY_IP,
        ])?;
        for (owner, name, vpc, subnet, port, ip, mac) in [
            (
                PROVIDER_PROJECT,
                "provider-vpc",
                &ids.provider_vpc,
                &ids.provider_subnet,
                &ids.backend_port,
                BACKEND_IP,
                B_MAC,
            ),
            (
                CONSUMER_PROJECT,
                "consumer-vpc",
                &ids.consumer_vpc,
                &ids.consumer_subnet,
                &ids.consumer_port,
                CONSUMER_IP,
                C_MAC,
            ),
        ] {
            self.cli(&[
                "vpc",
                "create",
                "--profile",
                "operator",
                "--owner",
                owner,
                "--cidr",
                "10.0.0.0/24",
                "--name",
                name,
                "--id",
                vpc,
            ])?;
            self.cli(&[
                "subnet",
                "create",
                "--profile",
                "operator",
                "--vpc-id",
                vpc,
                "--cidr",
                "10.0.0.0/24",
                "--id",
                subnet,
            ])?;
            self.cli(&[
                "port",
                "create",
                "--profile",
                "operator",
                "--subnet-id",
                subnet,
                "--node",
                NODE,
                "--ip",
                ip,
                "--mac",
                mac,
                "--id",
                port,
            ])?;
        }
        self.cli(&["vpc", "list", "--profile", "operator"])?;
        Ok(())
    }

    fn service(&mut self) -> Result<String> {
        let out = self.cli(&[
            "service",
            "create",
            "--profile",
            "provider",
            "--port-id",
            &self.ids.backend_port,
            "--vpc-id",
            &self.ids.provider_vpc,
            "--port",
            "8080:80",
            "--name",
            "web",
            "--approval",
            "true",
            "--wait",
        ])?;
        let service = field(&out, "id")?;
        self.cli(&[
            "permission",
            "add",
            "--profile",
            "provider",
            &service,
            CONSUMER_PROJECT,
        ])?;
        Ok(service)
    }

    fn endpoint(&mut self, service: &str) -> Result<String> {
        let out = self.cli(&[
            "endpoint",
            "create",
            "--profile",
            "consumer",
            "--service-id",
            service,
            "--vpc-id",
            &self.ids.consumer_vpc,
            "--subnet-id",
            &self.ids.consumer_subnet,
            "--port-ip",
            ENDPOINT_IP,
        ])?;
        let endpoint = field(&out, "id")?;
        let status = field(&out, "status")?;
        if status != "pendingAcceptance" {
            bail!("expected the new endpoint to be pendingAcceptance, it is {status}");
        }
        self.cli(&["connection", "list", "--profile", "provider", service])?;
        Ok(endpoint)
    }

    /// Waits until the agent has programmed the endpoint with this acceptance.
    fn wait_for_map(&mut self, accepted: bool) -> Result<()> {
        let pins = self.pin_dir_str();
        let log = self.path("agent.log");
        let state = if accepted { "accepted" } else { "not accepted" };
        let waited = wait_for(
            &format!("the agent to program the endpoint as {state}"),
            20,
            || {
                if let Some(p) = self.agent.as_mut() {
                    p.alive(&log)?;
                }
                let out = self
                    .vpcep(&["dataplane", "endpoints", "--pin-dir", &pins, "-o", "json"])
                    .output()?;
                let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                Ok(rows.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r["ip"] == ENDPOINT_IP && r["accepted"].as_bool() == Some(accepted)
                    })
                }))
            },
        )?;
        println!("  the agent programmed the endpoint as {state} within {waited:.1} s");
        Ok(())
    }

    /// A request from the consumer VM to the endpoint.
    fn curl(&self) -> Result<(bool, String)> {
        let ns = self.consumer_ns()?;
        let url = format!("http://{ENDPOINT_IP}:8080/");
        let mut shown: Vec<&str> = vec!["netns", "exec", ns.name()];
        shown.extend_from_slice(CURL);
        shown.push(&url);
        show_command("ip", &shown);
        let out = ns
            .command(CURL[0])
            .args(&CURL[1..])
            .arg(&url)
            .output()
            .context("running curl in the consumer VM")?;
        check_interrupted()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        print_indented(&text);
        if !out.status.success() {
            println!("  (curl exit status {})", out.status.code().unwrap_or(-1));
        }
        Ok((out.status.success(), text))
    }

    fn expect_refused(&self, state: &str) -> Result<()> {
        let (ok, text) = self.curl()?;
        if ok {
            bail!(
                "check failed: a request through the {state} endpoint succeeded, it must not:\n{text}"
            );
        }
        println!("  ✓ the {state} endpoint lets nothing through");
        Ok(())
    }

    fn expect_served(&self) -> Result<()> {
        let (ok, text) = self.curl()?;
        if !ok || !text.contains("hello from the backend") {
            bail!(
                "check failed: the request through the accepted endpoint did not succeed:\n{text}"
            );
        }
        // The backend sees the node's SNAT address, not the consumer's 10.0.0.2.
        let log = self.path("backend.log");
        let mut line = String::new();
        wait_for("the backend's access log line", 5, || {
            line = fs::read_to_string(&log)?
                .lines()
                .rev()
                .find(|l| l.contains("\"GET / "))
                .unwrap_or_default()
                .to_owned();
            Ok(!line.is_empty())
        })?;
        show_command("tail", &["-n", "1", &log.display().to_string()]);
        print_indented(&line);
        if !line.starts_with("198.19.") {
            bail!(
                "check failed: the backend saw the request from {}, not from a 198.19.128.0/17 SNAT address",
                line.split_whitespace().next().unwrap_or("?")
            );
        }
        println!(
            "  ✓ 200 through {ENDPOINT_IP}:8080; the backend saw source {}",
            line.split_whitespace().next().unwrap_or("?")
        );
        Ok(())
    }

    fn expect_counted(&self, table: &str) -> Result<()> {
        let out = self
            .vpcep(&[
                "dataplane",
                "endpoints",
                "--pin-dir",
                &self.pin_dir_str(),
                "-o",
                "json",
            ])
            .output()?;
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let counted = rows.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["ip"] == ENDPOINT_IP
                    && r["packets"].as_u64().unwrap_or(0) > 0
                    && r["new_flows"].as_u64().unwrap_or(0) > 0
            })
        });
        if !counted {
            bail!("check failed: the endpoint's counters show no packets or flows:\n{table}");
        }
        println!("  ✓ the endpoint's packets and flows are counted");
        Ok(())
    }

    /// The `vpcep` binary with the demo's profiles and none of the caller's VPCEP_*
    /// settings (environment credentials would override the profiles).
    fn vpcep(&self, args: &[&str]) -> Command {
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
    fn cli(&self, args: &[&str]) -> Result<String> {
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

    /// `--keep`: leave everything running, record it for `--stop` and say how to use it.
    fn keep(mut self) -> Result<()> {
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
        self.topo = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Prints a command line as a user would type it.
fn show_command(program: &str, args: &[&str]) {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'', '$', '*']) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("\n$ {program} {}", quoted.join(" "));
}

fn print_indented(text: &str) {
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = out.flush();
}

/// The value of a `FIELD VALUE` row of a `show`/`create` table.
fn field(table: &str, name: &str) -> Result<String> {
    table
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| parts.next().unwrap_or_default().to_owned())
        })
        .with_context(|| format!("no {name} in the output:\n{table}"))
}

/// Polls `ready` every 100 ms for at most `secs`, showing a dot per second; returns the
/// seconds waited.
fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> Result<bool>) -> Result<f64> {
    let start = Instant::now();
    let mut dots = 0;
    loop {
        check_interrupted()?;
        if ready()? {
            if dots > 0 {
                println!();
            }
            return Ok(start.elapsed().as_secs_f64());
        }
        let elapsed = start.elapsed();
        if elapsed > Duration::from_secs(secs) {
            if dots > 0 {
                println!();
            }
            bail!("timed out after {secs} s waiting for {what}");
        }
        if elapsed.as_secs() >= 1 && elapsed.as_secs() > dots {
            if dots == 0 {
                print!("  waiting for {what} ");
            }
            print!(".");
            let _ = std::io::stdout().flush();
            dots = elapsed.as_secs();
        }
        std::thread::sleep(Duration::from_millis(100));
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

fn stop_pid(pid: &str, tag: &str, dir: &Path) {
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
