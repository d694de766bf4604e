//! Internal domain names: the names an endpoint gets, when it has them, Huawei's one-per-VPC
//! rule, and a provider's private DNS name with the operator's suffix rule.
use serde_json::{Value, json};
use vpcep::ops::config::Config;

use crate::{
    fixtures::*,
    harness::{Db, Env, test_config},
};

both!(endpoint_domain_names, private_dns_names);

fn config() -> Config {
    Config {
        dns_zone: Some("vpcep.test-1.internal".into()),
        private_dns_suffixes: vec!["example.internal".into()],
        ..test_config()
    }
}

fn names(e: &Value) -> Vec<String> {
    e["dns_names"]
        .as_array()
        .unwrap_or_else(|| panic!("no dns_names in {e}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

async fn endpoint_domain_names(db: Db) {
    let env = Env::with_config(db, config()).await;
    let w = world(&env).await;
    let (p, c, op) = (env.provider(), env.consumer(), env.operator());
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let eps = c.v1("/vpc-endpoints");
    let mut b = endpoint_body(&w, &sid);
    b["enable_dns"] = json!(true);

    // Pending acceptance: no names yet.
    let e = c.post(&eps, b.clone()).await.ok();
    assert_eq!(e["status"], "pendingAcceptance");
    assert_eq!(e["enable_dns"], true);
    assert!(names(&e).is_empty(), "{e}");
    let eid = e["id"].as_str().unwrap().to_owned();

    // Huawei's rule: one endpoint per service and VPC with the domain name.
    let body = c.post(&eps, b.clone()).await.err(409, "enable_dns");
    assert!(body["error_msg"].as_str().unwrap().contains(&eid), "{body}");
    // Without the domain name, or in another VPC, it is fine.
    let plain = c.post(&eps, endpoint_body(&w, &sid)).await.ok();
    assert!(names(&plain).is_empty());
    let v2 = vpc(&op, "proj-consumer", "10.0.0.0/24").await;
    let s2 = subnet(&op, v2["id"].as_str().unwrap(), "10.0.0.0/24").await;
    let mut b2 = b.clone();
    b2["vpc_id"] = v2["id"].clone();
    b2["subnet_id"] = s2["id"].clone();
    let other_vpc = c.post(&eps, b2).await.ok();
    let other_id = other_vpc["id"].as_str().unwrap().to_owned();

    // Accepted: the names appear, in show, list and the provider's connection list.
    let act = p.v1(&format!("/vpc-endpoint-services/{sid}/connections/action"));
    p.post(
        &act,
        json!({"action": "receive", "endpoints": [eid, other_id]}),
    )
    .await
    .ok();
    let want = vec![
        format!("{eid}.vpcep.test-1.internal"),
        format!("web.{sid}.vpcep.test-1.internal"),
    ];
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(shown["status"], "accepted");
    assert_eq!(names(&shown), want);
    let l = c.get(&c.v1(&format!("/vpc-endpoints?id={eid}"))).await.ok();
    assert_eq!(names(&l["endpoints"][0]), want);
    let other = c
        .get(&c.v1(&format!("/vpc-endpoints/{other_id}")))
        .await
        .ok();
    assert_eq!(
        names(&other)[0],
        format!("{other_id}.vpcep.test-1.internal")
    );
    assert_eq!(names(&other)[1], want[1], "same service, same service name");

    // The feed carries them to the agents.
    let feed = env.agent().get("/feed/snapshot").await.ok();
    let fe = feed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "endpoint" && o["id"] == eid.as_str())
        .unwrap_or_else(|| panic!("endpoint not in the feed: {feed}"));
    assert_eq!(names(&fe["object"]), want);

    // Renaming the service renames its names.
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{sid}")),
        json!({"service_name": "Shop_API"}),
    )
    .await
    .ok();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(
        names(&shown)[1],
        format!("shop-api.{sid}.vpcep.test-1.internal")
    );

    // Rejected: gone; accepted again: back.
    p.post(&act, json!({"action": "reject", "endpoints": [eid]}))
        .await
        .ok();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(shown["status"], "rejected");
    assert!(names(&shown).is_empty(), "{shown}");
    p.post(&act, json!({"action": "receive", "endpoints": [eid]}))
        .await
        .ok();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(names(&shown).len(), 2);

    // Deleted: the VPC's slot is free again, and the new endpoint gets its own names.
    c.delete(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    let again = c.post(&eps, b).await.ok();
    let aid = again["id"].as_str().unwrap();
    p.post(&act, json!({"action": "receive", "endpoints": [aid]}))
        .await
        .ok();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{aid}"))).await.ok();
    assert_eq!(names(&shown)[0], format!("{aid}.vpcep.test-1.internal"));
}

async fn private_dns_names(db: Db) {
    let env = Env::with_config(db, config()).await;
    let w = world(&env).await;
    let (p, c) = (env.provider(), env.consumer());
    let svcs = p.v1("/vpc-endpoint-services");

    // Syntax, the generated zone, the operator's suffixes: 400 naming the field.
    for bad in [
        "api",
        "api..example.internal",
        "-api.example.internal",
        "api_1.example.internal",
        "x.vpcep.test-1.internal",
        "api.example.com",
        "example.internal",
    ] {
        let mut b = service_body(&w);
        b["private_dns_name"] = json!(bad);
        p.post(&svcs, b).await.err(400, "private_dns_name");
    }
    let mut b = service_body(&w);
    b["private_dns_name"] = json!("API.Example.Internal.");
    let s = available_service(&p, b).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s["private_dns_name"], "api.example.internal",
        "lowercased, no dot"
    );

    // Another service cannot take the same name: 409.
    let mut b = service_body(&w);
    b["ports"] = json!([{"client_port": 9000, "server_port": 9000, "protocol": "TCP"}]);
    b["private_dns_name"] = json!("api.example.internal");
    p.post(&svcs, b.clone()).await.err(409, "private_dns_name");
    b["private_dns_name"] = json!("db.example.internal");
    let s2 = available_service(&p, b).await;
    let s2id = s2["id"].as_str().unwrap().to_owned();
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{s2id}")),
        json!({"private_dns_name": "api.example.internal"}),
    )
    .await
    .err(409, "private_dns_name");

    // An accepted endpoint with DNS on answers to it too.
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{sid}")),
        json!({"approval_enabled": false}),
    )
    .await
    .ok();
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let mut b = endpoint_body(&w, &sid);
    b["enable_dns"] = json!(true);
    let e = c.post(&c.v1("/vpc-endpoints"), b).await.ok();
    assert_eq!(e["status"], "accepted");
    let eid = e["id"].as_str().unwrap().to_owned();
    assert_eq!(names(&e).len(), 3, "{e}");
    assert_eq!(names(&e)[2], "api.example.internal");

    // Changing it changes the endpoint's names; "" removes it.
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{sid}")),
        json!({"private_dns_name": "shop.example.internal"}),
    )
    .await
    .ok();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(names(&shown)[2], "shop.example.internal");
    let s = p
        .put(
            &p.v1(&format!("/vpc-endpoint-services/{sid}")),
            json!({"private_dns_name": ""}),
        )
        .await
        .ok();
    assert!(s["private_dns_name"].is_null(), "{s}");
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(names(&shown).len(), 2);
    // The freed name can be taken by the other service now.
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{s2id}")),
        json!({"private_dns_name": "api.example.internal"}),
    )
    .await
    .ok();
}
