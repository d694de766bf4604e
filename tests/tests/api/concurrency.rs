//! Parallel writes: quotas, port clashes and address assignment hold under concurrency (checks
//! and writes are in one serialized transaction).
use std::collections::BTreeSet;

use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(parallel_creates, parallel_addresses);

async fn parallel_creates(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let op = env.operator();
    op.put(
        "/inventory/quotas/proj-provider",
        json!({"endpoint_service": 3}),
    )
    .await
    .ok();
    let p = env.provider();
    // 12 distinct-port creates on a second and third backend race for a quota of 3.
    let b2 = port(&op, &w.provider_subnet, None).await;
    let b3 = port(&op, &w.provider_subnet, None).await;
    let mut tasks = Vec::new();
    for i in 0..12u16 {
        let p = p.clone();
        let mut b = service_body(&w);
        b["port_id"] = if i % 2 == 0 {
            b2["id"].clone()
        } else {
            b3["id"].clone()
        };
        b["ports"] = json!([{"client_port": 100 + i, "server_port": 100 + i, "protocol": "TCP"}]);
        tasks.push(tokio::spawn(async move {
            p.post(&p.v1("/vpc-endpoint-services"), b)
                .await
                .status
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 400), "{codes:?}");
    assert_eq!(
        p.get(&p.v1("/vpc-endpoint-services")).await.ok()["total_count"],
        3
    );

    // Clashing mappings on one backend: exactly one wins.
    op.put(
        "/inventory/quotas/proj-provider",
        json!({"endpoint_service": 20}),
    )
    .await
    .ok();
    let mut tasks = Vec::new();
    for i in 0..8u16 {
        let p = p.clone();
        let mut b = service_body(&w);
        b["ports"] = json!([{"client_port": 7000, "server_port": 7100 + i, "protocol": "TCP"}]);
        tasks.push(tokio::spawn(async move {
            p.post(&p.v1("/vpc-endpoint-services"), b)
                .await
                .status
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 7, "{codes:?}");

    // Endpoints racing for one port_ip: one gets it.
    let l = p
        .get(&p.v1("/vpc-endpoint-services?status=available&limit=1"))
        .await;
    let _ = l;
    let s = available_service(&p, {
        let mut b = service_body(&w);
        b["ports"] = json!([{"client_port": 9999, "server_port": 9999, "protocol": "UDP"}]);
        b["port_id"] = b2["id"].clone();
        b
    })
    .await;
    whitelist(&p, s["id"].as_str().unwrap(), &["*"]).await;
    let c = env.consumer();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        let mut b = endpoint_body(&w, s["id"].as_str().unwrap());
        b["port_ip"] = json!("10.0.0.77");
        tasks.push(tokio::spawn(async move {
            c.post(&c.v1("/vpc-endpoints"), b).await.status.as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
}

/// NICs and endpoints created at once in one small subnet get distinct addresses, never the
/// gateway, until it is full; freed addresses are handed out again, lowest first.
async fn parallel_addresses(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let op = env.operator();
    let p = env.provider();
    let c = env.consumer();
    let mut b = service_body(&w);
    b["approval_enabled"] = json!(false);
    let s = available_service(&p, b).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    whitelist(&p, &sid, &["*"]).await;
    let vpc_id = vpc(&op, "proj-consumer", "10.9.0.0/24").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Hosts .1-.14 with the gateway in the middle: 13 free addresses for 16 creates.
    let sub = op
        .post(
            "/inventory/subnets",
            json!({"vpc_id": vpc_id, "cidr": "10.9.0.0/28", "gateway_ip": "10.9.0.7"}),
        )
        .await
        .ok();
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let ep_body = json!({"endpoint_service_id": sid, "vpc_id": vpc_id, "subnet_id": sub_id});
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (c, op) = (c.clone(), op.clone());
        let (ep_body, sub_id) = (ep_body.clone(), sub_id.clone());
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                let r = op
                    .post(
                        "/inventory/ports",
                        json!({"subnet_id": sub_id, "node": "node1"}),
                    )
                    .await;
                ("port", r.status.as_u16(), r.body)
            } else {
                let r = c.post(&c.v1("/vpc-endpoints"), ep_body).await;
                ("endpoint", r.status.as_u16(), r.body)
            }
        }));
    }
    let mut held = Vec::new();
    let mut full = 0;
    for t in tasks {
        let (kind, code, body) = t.await.unwrap();
        match code {
            200 | 201 => held.push((
                body["ip"].as_str().unwrap().to_owned(),
                kind,
                body["id"].as_str().unwrap().to_owned(),
            )),
            409 => {
                assert!(body.to_string().contains("no free address"), "{body}");
                full += 1;
            }
            _ => panic!("{kind}: {code} {body}"),
        }
    }
    assert_eq!(full, 3);
    let ips: BTreeSet<&str> = held.iter().map(|(ip, _, _)| ip.as_str()).collect();
    let want: BTreeSet<String> = (1..=14)
        .filter(|h| *h != 7)
        .map(|h| format!("10.9.0.{h}"))
        .collect();
    assert_eq!(
        ips,
        want.iter().map(String::as_str).collect(),
        "distinct, gateway excluded"
    );

    // Free the highest endpoint address and the lowest NIC address: the lower comes back first.
    let ep = held
        .iter()
        .filter(|(_, k, _)| *k == "endpoint")
        .max_by_key(|(ip, _, _)| ip.rsplit('.').next().unwrap().parse::<u8>().unwrap())
        .unwrap();
    let nic = held
        .iter()
        .filter(|(_, k, _)| *k == "port")
        .min_by_key(|(ip, _, _)| ip.rsplit('.').next().unwrap().parse::<u8>().unwrap())
        .unwrap();
    c.delete(&c.v1(&format!("/vpc-endpoints/{}", ep.2)))
        .await
        .ok();
    op.delete(&format!("/inventory/ports/{}", nic.2)).await.ok();
    let e = c.post(&c.v1("/vpc-endpoints"), ep_body.clone()).await.ok();
    assert_eq!(e["ip"], nic.0.as_str());
    let n = op
        .post(
            "/inventory/ports",
            json!({"subnet_id": sub_id, "node": "node1"}),
        )
        .await
        .ok();
    assert_eq!(n["ip"], ep.0.as_str());
    c.post(&c.v1("/vpc-endpoints"), ep_body)
        .await
        .err(409, "no free address");
    // A freed address can also be asked for by name.
    c.delete(&c.v1(&format!("/vpc-endpoints/{}", e["id"].as_str().unwrap())))
        .await
        .ok();
    let mut b = json!({"endpoint_service_id": sid, "vpc_id": vpc_id, "subnet_id": sub_id});
    b["port_ip"] = json!(nic.0);
    let e = c.post(&c.v1("/vpc-endpoints"), b.clone()).await.ok();
    assert_eq!(e["ip"], nic.0.as_str());
    c.post(&c.v1("/vpc-endpoints"), b)
        .await
        .err(409, "already in use");
}
