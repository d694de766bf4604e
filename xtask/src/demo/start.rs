//! Bringing the demo up: the control plane with its credentials and the CLI's profiles, the
//! node and VM namespaces, the backend's HTTP service and the agent.
use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use xtask::netns::Topology;

use super::{
    B_MAC, BACKEND_IP, C_MAC, CONSUMER_IP, CONSUMER_PROJECT, DNS_ADDRESS, Demo, NODE,
    PROVIDER_PROJECT, SNAT_RANGE, UNDERLAY_IP,
    proc::Proc,
    ui::{show_command, wait_for},
};

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Demo {
    /// A development CA, the control plane's certificate and the node's certificate, made
    /// the way an operator would (`vpcep pki`).
    fn make_pki(&self) -> Result<()> {
        let pki = self.path("pki").display().to_string();
        self.cli(&["pki", "init", "--dir", &pki])?;
        self.cli(&["pki", "node", NODE, "--dir", &pki])?;
        Ok(())
    }

    /// Records the control plane's loopback traffic for the check that no credential
    /// crosses it in clear.
    fn start_capture(&mut self, port: u16) -> Result<()> {
        let pcap = self.path("capture.pcap").display().to_string();
        let port = port.to_string();
        let args = ["-i", "lo", "-U", "-n", "-w", &pcap, "tcp", "port", &port];
        show_command("tcpdump", &args);
        let log = self.path("tcpdump.log");
        self.capture = Some(Proc::spawn(
            "capture",
            "tcpdump",
            Command::new("tcpdump").args(args),
            &log,
        )?);
        // tcpdump says "listening on lo" once it captures.
        wait_for("tcpdump to listen", 10, || {
            if let Some(p) = self.capture.as_mut() {
                p.alive(&log)?;
            }
            Ok(fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")))
        })?;
        Ok(())
    }

    pub(super) fn start_control_plane(&mut self) -> Result<()> {
        let port = free_port()?;
        self.url = format!("https://127.0.0.1:{port}");
        self.make_pki()?;
        self.write_credentials()?;
        self.start_capture(port)?;
        let db = format!("sqlite://{}", self.path("vpcep.db").display());
        let creds = self.path("credentials.toml").display().to_string();
        let (cert, key, ca) = (
            self.path("pki/server.pem").display().to_string(),
            self.path("pki/server-key.pem").display().to_string(),
            self.path("pki/ca.pem").display().to_string(),
        );
        let args = [
            "control-plane",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            &db,
            "--credentials",
            &creds,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ];
        show_command("vpcep", &args);
        let log = self.path("control-plane.log");
        self.control_plane = Some(Proc::spawn(
            "control plane",
            "control-plane",
            // Every request in the log: the last step checks that none carries a secret.
            Command::new(&self.bin)
                .args(args)
                .env("RUST_LOG", "info,vpcep=debug"),
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

    /// The control plane's credentials (operator token, the provider's and the consumer's
    /// AK/SK, an agent token the demo's agent does not need: it has its node certificate)
    /// and the CLI's profiles.
    fn write_credentials(&mut self) -> Result<()> {
        let (op, agent) = (secret(), secret());
        let (p_ak, p_sk, c_ak, c_sk) = (
            format!("AK-PROVIDER-{}", &secret()[..8]),
            secret(),
            format!("AK-CONSUMER-{}", &secret()[..8]),
            secret(),
        );
        xtask::write_private(
            &self.path("credentials.toml"),
            &format!(
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
        self.secrets = vec![op.clone(), agent.clone(), p_sk.clone(), c_sk.clone()];
        // The CLI's profiles: `--profile operator|provider|consumer` on every command.
        let url = &self.url;
        let ca = self.path("pki/ca.pem").display().to_string();
        xtask::write_private(
            &self.path("cli.toml"),
            &format!(
                r#"[profiles.operator]
url = "{url}"
ca_file = "{ca}"
token = "{op}"

[profiles.provider]
url = "{url}"
ca_file = "{ca}"
ak = "{p_ak}"
sk = "{p_sk}"
project_id = "{PROVIDER_PROJECT}"

[profiles.consumer]
url = "{url}"
ca_file = "{ca}"
ak = "{c_ak}"
sk = "{c_sk}"
project_id = "{CONSUMER_PROJECT}"
"#
            ),
        )?;
        Ok(())
    }

    pub(super) fn build_topology(&mut self) -> Result<()> {
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
        // Both VMs ask the node's resolver at the subnets' DNS address, through the gateway.
        for vm in &topo.vms {
            vm.ns
                .ip(&["route", "add", DNS_ADDRESS, "via", "10.0.0.1"])?;
        }
        let (c, b) = (topo.vms[0].ns.name(), topo.vms[1].ns.name());
        println!("  node namespace      {node}");
        println!("  consumer VM         {c}: eth0 {CONSUMER_IP}/24 {C_MAC}, node end {tapc}");
        println!(
            "  backend VM          {b}: eth0 {BACKEND_IP}/24 {B_MAC}, node end {tapb}, {SNAT_RANGE} via 10.0.0.1"
        );
        println!("  both VMs            {DNS_ADDRESS} (the node's resolver) via 10.0.0.1");
        Ok(())
    }

    pub(super) fn start_backend(&mut self) -> Result<()> {
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

    pub(super) fn start_agent(&mut self) -> Result<()> {
        let pid = std::process::id();
        let node_ns = self.topo()?.node.name().to_owned();
        let metrics = free_port()?;
        let config = format!(
            r#"# The demo's node: the agent runs in the host namespace (where the control plane
# listens) and manages the VM NICs inside the node namespace.
node_name = "{NODE}"
underlay_ip = "{UNDERLAY_IP}"
control_plane = ["{url}"]
# Mutual TLS: the control plane takes the node from this certificate.
ca_file = "{pki}/ca.pem"
cert_file = "{pki}/node-{NODE}.pem"
key_file = "{pki}/node-{NODE}-key.pem"
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
            pki = self.path("pki").display(),
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
            Command::new(&self.bin)
                .args(args)
                .env("RUST_LOG", "info,vpcep=debug"),
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
}
