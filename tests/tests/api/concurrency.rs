//! Parallel writes: quotas and port clashes hold under concurrency (checks and writes are in
//! one serialized transaction).
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(parallel_creates);

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
