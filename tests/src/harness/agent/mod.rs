//! The agent tests' world: an in-process control plane over mutual TLS on a fresh SQLite
//! file with token-authenticated JSON calls, the API objects and namespaces of the design's
//! first topology, the agent's configuration (its node certificate, or its token where the
//! control plane is plain HTTP), traffic through the endpoint, and readers of the agent's
//! pinned maps.
use std::{
    path::Path,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use vpcep::{
    api::{AppState, Credentials, CredentialsFile, auth},
    server::app,
    store::Store,
};
use xtask::netns::Topology;

use super::{ChildGuard, ControlPlane, Db, Pki, eventually, spawn_guarded, test_config};

mod maps;
mod traffic;

pub use maps::*;
pub use traffic::*;

pub const OPERATOR: &str = "op-token";
pub const PROVIDER: &str = "provider-token";
pub const CONSUMER: &str = "consumer-token";
pub const AGENT: &str = "agent-token";
pub const NODE: &str = "node1";
pub const C_MAC: &str = "02:00:00:00:00:02";
pub const B_MAC: &str = "02:00:00:00:00:05";

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

/// The nodes with a certificate from the agent tests' CA (and a token each as well).
const CERT_NODES: [&str; 4] = ["node1", "node2", "node3", "node4"];

/// The CA of each HTTPS control plane of this process, by URL, for the clients that the
/// helpers below make from a URL alone; weak, so the files go with the control plane.
static CAS: Mutex<Vec<(String, Weak<Pki>)>> = Mutex::new(Vec::new());

/// The PKI of the control plane at `base`, while it runs.
pub fn pki_of(base: &str) -> Option<Arc<Pki>> {
    let mut cas = CAS.lock().unwrap();
    cas.retain(|(_, w)| w.strong_count() > 0);
    cas.iter()
        .rev()
        .find(|(url, _)| url == base)
        .and_then(|(_, w)| w.upgrade())
}

/// The control plane, in process, on a fresh SQLite file, over mutual TLS: its own CA, a
/// server certificate and node certificates for node1–node4; tenant and operator tokens as
/// before.
pub async fn control_plane() -> ControlPlane {
    let pki = Pki::new();
    for node in CERT_NODES {
        pki.node(node, false);
    }
    let cp = ControlPlane::start_mtls(Db::Sqlite, credentials(), test_config(), pki).await;
    if let Some(pki) = &cp.pki {
        CAS.lock()
            .unwrap()
            .push((cp.server.url(), Arc::downgrade(pki)));
    }
    cp
}

/// As [`control_plane`] over plain HTTP (agents by token), for the benchmarks whose
/// baseline figures were measured so.
pub async fn control_plane_plain() -> ControlPlane {
    ControlPlane::start(Db::Sqlite, credentials(), test_config()).await
}

impl ControlPlane {
    pub fn client(&self, token: &str) -> Api {
        api(&self.server.url(), token)
    }
}

/// A token client of `base`, trusting its CA when it is one of [`control_plane`]'s.
pub fn api(base: &str, token: &str) -> Api {
    let http = match pki_of(base) {
        Some(pki) => pki.client().builder().unwrap().build().unwrap(),
        None => reqwest::Client::new(),
    };
    Api {
        base: base.to_owned(),
        token: token.to_owned(),
        http,
    }
}

/// How the agent of `node` authenticates to the first of `urls` that is one of
/// [`control_plane`]'s, as agent configuration lines: the CA, and the node's certificate
/// and key; else (plain HTTP) its token.
pub fn agent_auth(urls: &[String], node: &str, token: &str) -> String {
    let pki = urls.iter().find_map(|u| pki_of(u));
    match pki {
        Some(pki) if CERT_NODES.contains(&node) => {
            let dir = &pki.dir.0;
            format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                pki.ca_file().display(),
                dir.join(format!("node-{node}.pem")).display(),
                dir.join(format!("node-{node}-key.pem")).display(),
            )
        }
        Some(pki) => format!(
            "ca_file = \"{}\"\ntoken = \"{token}\"\n",
            pki.ca_file().display()
        ),
        None => format!("token = \"{token}\"\n"),
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
        let config = test_config();
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

/// The inventory and API objects of the scenario.
pub struct World {
    pub consumer_vpc: String,
    pub provider_vpc: String,
    pub consumer_subnet: String,
    pub consumer_port: String,
    pub backend_port: String,
    pub service: String,
}

impl World {
    /// The request body of the consumer's endpoint 10.0.0.100 to the world's service.
    pub fn endpoint_body(&self) -> Value {
        json!({
            "endpoint_service_id": self.service,
            "vpc_id": self.consumer_vpc,
            "subnet_id": self.consumer_subnet,
            "port_ip": "10.0.0.100",
        })
    }

    /// Creates that endpoint through `consumer`; returns the API's answer.
    pub async fn create_endpoint(&self, consumer: &Api) -> Value {
        consumer
            .ok(
                Method::POST,
                "/v1/proj-consumer/vpc-endpoints",
                Some(self.endpoint_body()),
            )
            .await
    }
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

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Operator: a VPC of `project` and a subnet, both 10.0.0.0/24; returns their ids.
pub async fn vpc_with_subnet(op: &Api, project: &str) -> (String, String) {
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
    (id(&vpc), id(&subnet))
}

/// Operator: a NIC in `subnet` on `node`; returns its id.
pub async fn add_port(op: &Api, subnet: &str, node: &str, ip: &str, mac: &str) -> String {
    let port = op
        .ok(
            Method::POST,
            "/inventory/ports",
            Some(json!({"subnet_id": subnet, "node": node, "ip": ip, "mac": mac})),
        )
        .await;
    id(&port)
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
        let (vpc, subnet) = vpc_with_subnet(&op, project).await;
        let port = if consumer_port || project != "proj-consumer" {
            add_port(&op, &subnet, NODE, ip, mac).await
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        ids.push((vpc, subnet, port));
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
    pin_dir: &Path,
    metrics: u16,
) -> String {
    format!(
        r#"
node_name = "{NODE}"
underlay_ip = "192.0.2.1"
control_plane = {urls:?}
{}pin_dir = "{}"
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
        agent_auth(urls, NODE, AGENT),
        pin_dir.display(),
        topo.node.name(),
        w.consumer_port,
        w.consumer_subnet,
        w.backend_port,
    )
}

/// `vpcep agent --config FILE` with extra arguments (e.g. `--reload`), output discarded.
pub fn spawn_agent(config: &Path, args: &[&str]) -> ChildGuard {
    spawn_guarded(
        std::process::Command::new(crate::vpcep_bin())
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}
