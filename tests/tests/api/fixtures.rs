//! Inventory set-up shared by the scenarios: the design's first topology (provider and consumer
//! VPCs both 10.0.0.0/24 — overlapping on purpose — a node and a backend NIC).
use serde_json::{Value, json};

use crate::harness::{Client, Env};

pub struct World {
    pub provider_vpc: String,
    pub provider_subnet: String,
    pub backend_port: String,
    pub consumer_vpc: String,
    pub consumer_subnet: String,
}

pub async fn vpc(op: &Client, project: &str, cidr: &str) -> Value {
    op.post(
        "/inventory/vpcs",
        json!({"project_id": project, "cidr": cidr}),
    )
    .await
    .ok()
}

pub async fn subnet(op: &Client, vpc: &str, cidr: &str) -> Value {
    op.post("/inventory/subnets", json!({"vpc_id": vpc, "cidr": cidr}))
        .await
        .ok()
}

pub async fn port(op: &Client, subnet: &str, ip: Option<&str>) -> Value {
    let mut b = json!({"subnet_id": subnet, "node": "node1"});
    if let Some(ip) = ip {
        b["ip"] = json!(ip);
    }
    op.post("/inventory/ports", b).await.ok()
}

/// The node every fixture NIC is on.
pub async fn node1(op: &Client) {
    op.put(
        "/inventory/nodes/node1",
        json!({"underlay_ip": "192.0.2.1"}),
    )
    .await
    .ok();
}

pub async fn world(env: &Env) -> World {
    let op = env.operator();
    node1(&op).await;
    let pv = vpc(&op, "proj-provider", "10.0.0.0/24").await;
    let ps = subnet(&op, pv["id"].as_str().unwrap(), "10.0.0.0/24").await;
    let bp = port(&op, ps["id"].as_str().unwrap(), Some("10.0.0.5")).await;
    let cv = vpc(&op, "proj-consumer", "10.0.0.0/24").await;
    let cs = subnet(&op, cv["id"].as_str().unwrap(), "10.0.0.0/24").await;
    World {
        provider_vpc: pv["id"].as_str().unwrap().to_owned(),
        provider_subnet: ps["id"].as_str().unwrap().to_owned(),
        backend_port: bp["id"].as_str().unwrap().to_owned(),
        consumer_vpc: cv["id"].as_str().unwrap().to_owned(),
        consumer_subnet: cs["id"].as_str().unwrap().to_owned(),
    }
}

/// The design's service: 8080→80/TCP and 5353→53/UDP.
pub fn service_body(w: &World) -> Value {
    json!({
        "port_id": w.backend_port,
        "vpc_id": w.provider_vpc,
        "server_type": "VM",
        "service_name": "web",
        "ports": [
            {"client_port": 8080, "server_port": 80, "protocol": "TCP"},
            {"client_port": 5353, "server_port": 53, "protocol": "UDP"},
        ],
    })
}

/// Creates a service and waits until it is available.
pub async fn available_service(c: &Client, body: Value) -> Value {
    let s = c.post(&c.v1("/vpc-endpoint-services"), body).await.ok();
    assert_eq!(s["status"], "creating");
    let id = s["id"].as_str().unwrap().to_owned();
    crate::harness::eventually(|| {
        let c = c.clone();
        let id = id.clone();
        async move {
            let s = c
                .get(&c.v1(&format!("/vpc-endpoint-services/{id}")))
                .await
                .ok();
            (s["status"] == "available").then_some(s)
        }
    })
    .await
}

pub async fn whitelist(c: &Client, service: &str, perms: &[&str]) {
    c.post(
        &c.v1(&format!(
            "/vpc-endpoint-services/{service}/permissions/action"
        )),
        json!({"permissions": perms, "action": "add"}),
    )
    .await
    .ok();
}

pub fn endpoint_body(w: &World, service: &str) -> Value {
    json!({
        "endpoint_service_id": service,
        "vpc_id": w.consumer_vpc,
        "subnet_id": w.consumer_subnet,
    })
}
