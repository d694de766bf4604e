//! The inventory API: VPCs (VNI), subnets, NICs, nodes (SNAT address, applied revision).
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(inventory_operations);

async fn inventory_operations(db: Db) {
    let env = Env::new(db).await;
    let op = env.operator();
    let v1 = vpc(&op, "p1", "10.0.0.0/16").await;
    let v2 = vpc(&op, "p2", "10.0.0.0/16").await;
    assert_eq!(v1["vni"], 1);
    assert_eq!(v2["vni"], 2);
    let v3 = op
        .post(
            "/inventory/vpcs",
            json!({"project_id": "p1", "cidr": "172.16.0.0/12", "vni": 16777215}),
        )
        .await
        .ok();
    assert_eq!(v3["vni"], 16777215);
    op.post(
        "/inventory/vpcs",
        json!({"project_id": "p1", "cidr": "172.16.0.0/12", "vni": 2}),
    )
    .await
    .err(409, "vni");
    op.post(
        "/inventory/vpcs",
        json!({"project_id": "p1", "cidr": "172.16.0.0/12", "vni": 16777216}),
    )
    .await
    .err(400, "vni");
    op.post(
        "/inventory/vpcs",
        json!({"project_id": "p1", "cidr": "10.0.0.0/40"}),
    )
    .await
    .err(400, "cidr");
    op.post("/inventory/vpcs", json!({"cidr": "10.0.0.0/24"}))
        .await
        .err(400, "project_id");
    op.post(
        "/inventory/vpcs",
        json!({"id": v1["id"], "project_id": "p1", "cidr": "10.0.0.0/24"}),
    )
    .await
    .err(409, "id");
    assert_eq!(
        op.get("/inventory/vpcs").await.ok()["vpcs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    op.get(&format!("/inventory/vpcs/{}", v1["id"].as_str().unwrap()))
        .await
        .ok();
    op.get("/inventory/vpcs/nope").await.err(404, "not found");

    // Subnets: inside the VPC, no overlap, gateway defaults to the first host.
    let vid = v1["id"].as_str().unwrap();
    let s = subnet(&op, vid, "10.0.1.0/24").await;
    assert_eq!(s["gateway_ip"], "10.0.1.1");
    assert_eq!(
        s["dns_address"], "169.254.169.253",
        "the default DNS address"
    );
    // The DNS address: the gateway, or an address outside the subnet; nothing else.
    for bad in [
        "10.0.2.7",
        "10.0.2.0",
        "10.0.2.255",
        "127.0.0.53",
        "224.0.0.1",
        "0.0.0.0",
        "x",
    ] {
        op.post(
            "/inventory/subnets",
            json!({"vpc_id": vid, "cidr": "10.0.2.0/24", "dns_address": bad}),
        )
        .await
        .err(400, "dns_address");
    }
    for (cidr, dns) in [("10.0.2.0/26", "10.0.2.1"), ("10.0.2.64/26", "192.0.2.53")] {
        let s = op
            .post(
                "/inventory/subnets",
                json!({"vpc_id": vid, "cidr": cidr, "dns_address": dns}),
            )
            .await
            .ok();
        assert_eq!(s["dns_address"], dns);
        op.delete(&format!("/inventory/subnets/{}", s["id"].as_str().unwrap()))
            .await
            .ok();
    }
    op.post(
        "/inventory/subnets",
        json!({"vpc_id": vid, "cidr": "10.0.1.128/25"}),
    )
    .await
    .err(409, "cidr");
    op.post(
        "/inventory/subnets",
        json!({"vpc_id": vid, "cidr": "10.1.0.0/24"}),
    )
    .await
    .err(400, "cidr");
    op.post(
        "/inventory/subnets",
        json!({"vpc_id": vid, "cidr": "10.0.2.0/24", "gateway_ip": "10.0.3.1"}),
    )
    .await
    .err(400, "gateway_ip");
    op.post(
        "/inventory/subnets",
        json!({"vpc_id": uuid::Uuid::new_v4().to_string(), "cidr": "10.0.2.0/24"}),
    )
    .await
    .err(400, "vpc_id");

    // Nodes: SNAT addresses from 198.19.128.0/17, stable across updates.
    let n1 = op
        .put(
            "/inventory/nodes/node1",
            json!({"underlay_ip": "192.0.2.1"}),
        )
        .await
        .ok();
    let n2 = op
        .put(
            "/inventory/nodes/node2",
            json!({"underlay_ip": "192.0.2.2"}),
        )
        .await
        .ok();
    assert_eq!(n1["snat_ip"], "198.19.128.1");
    assert_eq!(n2["snat_ip"], "198.19.128.2");
    let n1b = op
        .put(
            "/inventory/nodes/node1",
            json!({"underlay_ip": "192.0.2.11"}),
        )
        .await
        .ok();
    assert_eq!(n1b["snat_ip"], "198.19.128.1");
    assert_eq!(n1b["underlay_ip"], "192.0.2.11");
    op.put("/inventory/nodes/node3", json!({"underlay_ip": "x"}))
        .await
        .err(400, "underlay_ip");
    op.put(
        "/inventory/nodes/bad%20name",
        json!({"underlay_ip": "192.0.2.3"}),
    )
    .await
    .err(400, "name");

    // Ports: the agent registers NICs on its own node only.
    let sid = s["id"].as_str().unwrap();
    let a = env.agent();
    let p1 = a
        .post(
            "/inventory/ports",
            json!({"subnet_id": sid, "node": "node1"}),
        )
        .await
        .ok();
    assert_eq!(p1["ip"], "10.0.1.2");
    assert_eq!(p1["vpc_id"], vid);
    assert!(p1["mac"].as_str().unwrap().starts_with("fa:16:3e:"));
    a.post(
        "/inventory/ports",
        json!({"subnet_id": sid, "node": "node2"}),
    )
    .await
    .err(403, "own node");
    op.post(
        "/inventory/ports",
        json!({"subnet_id": sid, "node": "node9"}),
    )
    .await
    .err(400, "node");
    op.post(
        "/inventory/ports",
        json!({"subnet_id": sid, "node": "node2", "ip": "10.0.1.2"}),
    )
    .await
    .err(409, "ip");
    op.post(
        "/inventory/ports",
        json!({"subnet_id": sid, "node": "node2", "mac": "zz"}),
    )
    .await
    .err(400, "mac");
    let p2 = op
        .post("/inventory/ports", json!({"subnet_id": sid, "node": "node2", "ip": "10.0.1.50", "mac": "02:00:00:00:00:01"}))
        .await
        .ok();
    assert_eq!(p2["mac"], "02:00:00:00:00:01");
    assert_eq!(
        op.get("/inventory/ports").await.ok()["ports"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    a.delete(&format!("/inventory/ports/{}", p2["id"].as_str().unwrap()))
        .await
        .err(403, "own node");
    op.delete("/inventory/nodes/node1").await.err(409, "ports");
    a.delete(&format!("/inventory/ports/{}", p1["id"].as_str().unwrap()))
        .await
        .ok();

    // Applied revisions reported by agents are visible per node.
    a.put(
        "/inventory/nodes/node1/applied-revision",
        json!({"revision": 7}),
    )
    .await
    .ok();
    a.put(
        "/inventory/nodes/node2/applied-revision",
        json!({"revision": 7}),
    )
    .await
    .err(403, "own node");
    a.put(
        "/inventory/nodes/node1/applied-revision",
        json!({"revision": "x"}),
    )
    .await
    .err(400, "revision");
    let nodes = op.get("/inventory/nodes").await.ok();
    let n1 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node1")
        .unwrap()
        .clone();
    assert_eq!(n1["applied_revision"], 7);
    assert_eq!(
        op.get("/inventory/nodes/node1").await.ok()["applied_revision"],
        7
    );
    op.get("/inventory/nodes/node9").await.err(404, "not found");
    op.delete("/inventory/nodes/node1").await.ok();
}
