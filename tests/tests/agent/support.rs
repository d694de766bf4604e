//! Minimal fixtures for the agent scenarios: an in-process control plane on a fresh SQLite
//! file, token-authenticated JSON calls, the namespaces of the design's first topology, a
//! unique bpffs pin directory, and readers of the agent's pinned maps.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use reqwest::Method;
use serde_json::{Value, json};
use vpcep::{
    api::{AppState, Config, Credentials, CredentialsFile, auth},
    server::{Server, app},
    store::Store,
};
use vpcep_common::{
    endpoint::{Endpoint, EndpointKey, PortKey, PortTarget, Service},
    maps,
};
use xtask::netns::Topology;

pub const OPERATOR: &str = "op-token";
pub const PROVIDER: &str = "provider-token";
pub const CONSUMER: &str = "consumer-token";
pub const AGENT: &str = "agent-token";
pub const NODE: &str = "node1";
pub const C_MAC: &str = "02:00:00:00:00:02";
pub const B_MAC: &str = "02:00:00:00:00:05";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(base: &std::path::Path, tag: &str) -> Self {
        let p = base.join(format!("vpcep-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Under bpffs, removing the link pins releases the attachments too.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn credentials() -> Credentials {
    let mut f = CredentialsFile {
        operator_tokens: vec![OPERATOR.to_owned()],
        ..Default::default()
    };
    for (token, project) in [(PROVIDER, "proj-provider"), (CONSUMER, "proj-consumer")] {
        f.tokens.push(auth::TenantToken {
            token: token.to_owned(),
            project_id: project.to_owned(),
            domain_id: None,
        });
    }
    f.agents.push(auth::AgentToken {
        node: NODE.to_owned(),
        token: AGENT.to_owned(),
    });
    // More nodes, for the overlay scenarios: node2, node3, … with token agent-token-nodeN.
    for n in 2..=4 {
        f.agents.push(auth::AgentToken {
            node: format!("node{n}"),
            token: format!("{AGENT}-node{n}"),
        });
    }
    Credentials::new(f)
}

/// The control plane, in process, on a fresh SQLite file.
pub struct ControlPlane {
    pub server: Server,
    _dir: TempDir,
}

impl ControlPlane {
    pub async fn start() -> Self {
        let dir = TempDir::new(&std::env::temp_dir(), "agent-cp");
        let url = format!("sqlite://{}", dir.0.join("vpcep.db").display());
        let config = Config::default();
        let store = Store::open(&url, config.feed_retain).await.unwrap();
        let server = Server::start(store, credentials(), config).await.unwrap();
        Self { server, _dir: dir }
    }

    pub fn client(&self, token: &str) -> Api {
        api(&self.server.url(), token)
    }
}

pub fn api(base: &str, token: &str) -> Api {
    Api {
        base: base.to_owned(),
        token: token.to_owned(),
        http: reqwest::Client::new(),
    }
}

/// A control plane on a chosen loopback port over a given database, so that it can be
/// stopped and started again at the same address. Stopped on drop.
pub struct PortServer {
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PortServer {
    pub async fn start(port: u16, db_url: &str) -> Self {
        let config = Config::default();
        let store = Store::open(db_url, config.feed_retain).await.unwrap();
        let state = AppState::new(store, credentials(), config);
        let shutdown = state.shutdown.clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut rx = shutdown.subscribe();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app(state))
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Stops serving; open feed streams end, as when the process exits.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Sends a JSON request; returns (status, body or Null).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The inventory and API objects of the scenario.
pub struct World {
    pub consumer_vpc: String,
    pub provider_vpc: String,
    pub consumer_subnet: String,
    pub consumer_port: String,
    pub backend_port: String,
    pub service: String,
}

/// Operator: node, VPCs (both 10.0.0.0/24), subnets, the two NICs; provider: the service
/// (8080→80/TCP, 5353→53/UDP) whitelisted for the consumer's domain.
pub async fn world(base: &str) -> World {
    world_with(base, true).await
}

/// As [`world`]; without `consumer_port` the consumer's NIC is left for the agent to
/// register (under a fresh id).
pub async fn world_with(base: &str, consumer_port: bool) -> World {
    let mut w = inventory(base, consumer_port).await;
    let prov = api(base, PROVIDER);
    let svc = prov
        .ok(
            Method::POST,
            "/v1/proj-provider/vpc-endpoint-services",
            Some(json!({
                "port_id": w.backend_port,
                "vpc_id": w.provider_vpc,
                "server_type": "VM",
                "service_name": "web",
                "ports": [
                    {"client_port": 8080, "server_port": 80, "protocol": "TCP"},
                    {"client_port": 5353, "server_port": 53, "protocol": "UDP"},
                ],
            })),
        )
        .await;
    let service = svc["id"].as_str().unwrap().to_owned();
    eventually(10, "the service to become available", || {
        let prov = prov.clone();
        let path = format!("/v1/proj-provider/vpc-endpoint-services/{service}");
        async move {
            let s = prov.ok(Method::GET, &path, None).await;
            (s["status"] == "available").then_some(())
        }
    })
    .await;
    prov.ok(
        Method::POST,
        &format!("/v1/proj-provider/vpc-endpoint-services/{service}/permissions/action"),
        Some(json!({"permissions": ["iam:domain::proj-consumer"], "action": "add"})),
    )
    .await;
    w.service = service;
    w
}

/// The operator's part of [`world_with`]: node, VPCs, subnets and NICs; `service` is empty.
pub async fn inventory(base: &str, consumer_port: bool) -> World {
    let op = api(base, OPERATOR);
    op.ok(
        Method::PUT,
        &format!("/inventory/nodes/{NODE}"),
        Some(json!({"underlay_ip": "192.0.2.1"})),
    )
    .await;
    let mut ids = Vec::new();
    for (project, ip, mac) in [
        ("proj-consumer", "10.0.0.2", C_MAC),
        ("proj-provider", "10.0.0.5", B_MAC),
    ] {
        let vpc = op
            .ok(
                Method::POST,
                "/inventory/vpcs",
                Some(json!({"project_id": project, "cidr": "10.0.0.0/24"})),
            )
            .await;
        let subnet = op
            .ok(
                Method::POST,
                "/inventory/subnets",
                Some(json!({"vpc_id": vpc["id"], "cidr": "10.0.0.0/24"})),
            )
            .await;
        let port = if consumer_port || project != "proj-consumer" {
            let port = op
                .ok(
                    Method::POST,
                    "/inventory/ports",
                    Some(json!({"subnet_id": subnet["id"], "node": NODE, "ip": ip, "mac": mac})),
                )
                .await;
            port["id"].as_str().unwrap().to_owned()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        ids.push((
            vpc["id"].as_str().unwrap().to_owned(),
            subnet["id"].as_str().unwrap().to_owned(),
            port,
        ));
    }
    World {
        consumer_vpc: ids[0].0.clone(),
        provider_vpc: ids[1].0.clone(),
        consumer_subnet: ids[0].1.clone(),
        consumer_port: ids[0].2.clone(),
        backend_port: ids[1].2.clone(),
        service: String::new(),
    }
}

/// Node namespace with consumer VM C (10.0.0.2 on `tapc`) and backend VM B (10.0.0.5 on
/// `tapb`); B routes through its gateway, which the node answers.
pub fn topology() -> Topology {
    let mut topo = Topology::new().unwrap();
    topo.add_vm("tapc", "10.0.0.2/24", C_MAC).unwrap();
    topo.add_vm("tapb", "10.0.0.5/24", B_MAC).unwrap();
    topo.vms[1]
        .ns
        .ip(&["route", "add", "default", "via", "10.0.0.1"])
        .unwrap();
    topo
}

/// The agent's configuration file text for this world.
pub fn agent_toml(
    urls: &[String],
    topo: &Topology,
    w: &World,
    pin_dir: &std::path::Path,
    metrics: u16,
) -> String {
    format!(
        r#"
node_name = "{NODE}"
underlay_ip = "192.0.2.1"
control_plane = {urls:?}
token = "{AGENT}"
pin_dir = "{}"
metrics_address = "127.0.0.1:{metrics}"
resync_interval_ms = 300
netns = "{}"

# Short timeouts so that the tests see idle flows collected.
[conntrack]
tcp_syn = 3
tcp_established = 6
tcp_closing = 2
udp = 3
gc_interval_ms = 200

[[nic]]
iface = "tapc"
port_id = "{}"
# Registered by the agent when the inventory lacks it.
subnet_id = "{}"
ip = "10.0.0.2"
mac = "{C_MAC}"

[[nic]]
iface = "tapb"
port_id = "{}"
"#,
        pin_dir.display(),
        topo.node.name(),
        w.consumer_port,
        w.consumer_subnet,
        w.backend_port,
    )
}

/// A TCP server in the backend VM answering each request with a short body, until the
/// returned flag is set or 120 s pass.
pub fn backend_server(topo: &Topology) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = format!("/run/netns/{}", topo.vms[1].ns.name());
    let flag = stop.clone();
    std::thread::spawn(move || {
        vpcep_tests::enter_netns(&path);
        let l = TcpListener::bind("10.0.0.5:80").unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).unwrap_or(0);
                    if buf[..n].starts_with(b"GET /stream") {
                        let flag = flag.clone();
                        std::thread::spawn(move || stream_to(s, &flag));
                    } else {
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    stop
}

/// An endless body, 16 KiB every 5 ms, until a write fails or stalls for 2 s, the flag is
/// set or 30 s pass.
fn stream_to(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
    let chunk = [b'x'; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if s.write_all(&chunk).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A transfer from the backend's stream through the endpoint, read in the consumer VM: the
/// bytes received so far, and a flag set when the transfer ends (no data for 1 s, an error
/// or the end of the stream; at most 30 s).
pub struct Transfer {
    pub bytes: Arc<std::sync::atomic::AtomicU64>,
    pub ended: Arc<AtomicBool>,
}

pub fn consumer_transfer(topo: &Topology) -> Transfer {
    consumer_transfer_in(&topo.vms[0].ns)
}

/// As [`consumer_transfer`], from the consumer VM namespace `ns`.
pub fn consumer_transfer_in(ns: &xtask::netns::NetNs) -> Transfer {
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ended = Arc::new(AtomicBool::new(false));
    let (b, e) = (bytes.clone(), ended.clone());
    vpcep_tests::spawn_in(ns.name(), move || {
        let run = || -> std::io::Result<()> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET /stream HTTP/1.0\r\n\r\n")?;
            let mut buf = vec![0u8; 64 * 1024];
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                b.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        };
        let _ = run();
        e.store(true, Ordering::Relaxed);
    });
    Transfer { bytes, ended }
}

/// A UDP echo server on the backend's 10.0.0.5:53, until the flag is set or 120 s pass.
pub fn backend_udp_echo(topo: &Topology) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    vpcep_tests::udp_echo_server(topo.vms[1].ns.name(), "10.0.0.5:53", stop.clone(), 120);
    stop
}

/// A UDP socket in the consumer VM connected to the endpoint's 10.0.0.100:5353: one
/// 5-tuple, so one conntrack entry across [`udp_ping`] calls.
pub fn consumer_udp(topo: &Topology) -> UdpSocket {
    topo.vms[0]
        .ns
        .run(|| {
            let s = UdpSocket::bind("10.0.0.2:0").unwrap();
            s.connect("10.0.0.100:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .unwrap()
}

/// Whether an echo comes back through the endpoint (a few tries).
pub fn udp_ping(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    for i in 0..3u8 {
        let _ = s.send(&[b'p', i]);
        if let Ok(n) = s.recv(&mut buf)
            && buf[..n] == [b'p', i]
        {
            return true;
        }
    }
    false
}

/// One HTTP request from the consumer VM to the endpoint (10.0.0.100:8080).
pub fn http_get(topo: &Topology, timeout: Duration) -> std::io::Result<Vec<u8>> {
    topo.vms[0]
        .ns
        .run(|| -> std::io::Result<Vec<u8>> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })
        .unwrap()
}

fn pinned(pin_dir: &std::path::Path, name: &str) -> MapData {
    MapData::from_pin(pin_dir.join(name)).unwrap()
}

/// The agent's pinned `ENDPOINTS` map, read as an outsider would.
pub fn endpoints(pin_dir: &std::path::Path) -> Vec<(EndpointKey, Endpoint)> {
    let m: HashMap<MapData, EndpointKey, Endpoint> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::ENDPOINTS))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

pub fn remove_endpoint(pin_dir: &std::path::Path, key: &EndpointKey) {
    let mut m: HashMap<MapData, EndpointKey, Endpoint> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::ENDPOINTS))).unwrap();
    m.remove(key).unwrap();
}

pub fn services(pin_dir: &std::path::Path) -> Vec<(u32, Service)> {
    let m: HashMap<MapData, u32, Service> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::SERVICES))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

pub fn ports(pin_dir: &std::path::Path) -> Vec<(PortKey, PortTarget)> {
    let m: HashMap<MapData, PortKey, PortTarget> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::PORT_MAP))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

/// Entries in the forward and reverse conntrack maps.
pub fn conntrack_len(pin_dir: &std::path::Path) -> (usize, usize) {
    use vpcep_common::endpoint::{FlowEntry, FlowKey, RevEntry, RevKey};
    let f: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, maps::CT_FWD))).unwrap();
    let r: HashMap<MapData, RevKey, RevEntry> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, maps::CT_REV))).unwrap();
    (f.keys().count(), r.keys().count())
}

/// The agent's pinned `SNAT_OWNERS` map.
pub fn snat_owners(pin_dir: &std::path::Path) -> Vec<(u32, u32)> {
    let m: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::SNAT_OWNERS))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

/// A `vpcep agent` process, killed with SIGKILL (by PID) and reaped on drop.
pub struct AgentProcess(std::process::Child);

impl AgentProcess {
    /// `vpcep agent --config FILE` with extra arguments (e.g. `--reload`).
    pub fn spawn_with(config: &std::path::Path, args: &[&str]) -> Self {
        let child = std::process::Command::new(vpcep_tests::vpcep_bin())
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    pub fn kill9(mut self) {
        // SAFETY: kill(2) of our own child's PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
