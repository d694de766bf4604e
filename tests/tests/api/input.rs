//! Bad input: malformed JSON, wrong types, unknown enums, missing fields, empty and oversized
//! bodies — each a clear 4xx, never a 5xx, and nothing written.
use serde_json::json;
use vpcep::api::Config;

use crate::{
    fixtures::*,
    harness::{Db, Env, test_config},
};

both!(bad_input);

async fn bad_input(db: Db) {
    let config = Config {
        max_body: 64 * 1024,
        ..test_config()
    };
    let env = Env::with_config(db, config).await;
    let w = world(&env).await;
    let p = env.provider();
    let svc = p.v1("/vpc-endpoint-services");
    let rev_before = env.store.current_revision().await.unwrap();

    let r = p.raw("POST", &svc, Some(b"{\"port_id\": ".to_vec())).await;
    r.err(400, "JSON");
    let r = p.raw("POST", &svc, Some(b"[1,2]".to_vec())).await;
    r.err(400, "JSON");
    let r = p.raw("POST", &svc, Some(b"not json".to_vec())).await;
    r.err(400, "JSON");
    // Empty bodies on operations that need one (the SDK sends Content-Length: 0).
    p.raw("POST", &svc, None).await.err(400, "body");
    p.raw(
        "PUT",
        &p.v1(&format!("/vpc-endpoint-services/{}", uuid::Uuid::new_v4())),
        None,
    )
    .await
    .err(400, "body");
    p.raw("POST", &p.v1("/vpc-endpoints"), Some(b"  ".to_vec()))
        .await
        .err(400, "body");
    // Wrong types name the field path.
    let mut b = service_body(&w);
    b["ports"][1]["server_port"] = json!([1]);
    p.post(&svc, b).await.err(400, "ports[1].server_port");
    let mut b = service_body(&w);
    b["tags"] = json!({"key": "v"});
    p.post(&svc, b).await.err(400, "tags");
    let mut b = service_body(&w);
    b["server_type"] = json!(5);
    p.post(&svc, b).await.err(400, "server_type");
    // Oversized: 413.
    let mut b = service_body(&w);
    b["description"] = json!("x".repeat(100 * 1024));
    let r = p.post(&svc, b).await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.body);
    assert_eq!(r.body["error_code"], "VPCEP.0413");
    // Token-authenticated oversized bodies too (not buffered by the signature check).
    let op = env.operator();
    let r = op
        .post(
            "/inventory/vpcs",
            json!({"project_id": "x".repeat(100 * 1024), "cidr": "10.0.0.0/24"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.body);
    // Unknown fields are ignored (clients send extras).
    let mut b = service_body(&w);
    b["future_field"] = json!(1);
    b["ports"] = json!([{"client_port": 1, "server_port": 1, "protocol": "TCP"}]);
    let s = p.post(&svc, b).await.ok();
    p.delete(&p.v1(&format!(
        "/vpc-endpoint-services/{}",
        s["id"].as_str().unwrap()
    )))
    .await
    .ok();
    // Unknown routes and methods.
    p.get(&p.v1("/nothing-here")).await.err(404, "not found");
    p.raw("PATCH", &svc, Some(b"{}".to_vec()))
        .await
        .err(405, "method");
    // Only the create and delete above were written (2 revisions, plus the activation
    // step that may or may not have run before the delete).
    let rev_after = env.store.current_revision().await.unwrap();
    assert!(rev_after - rev_before <= 3, "{rev_before} → {rev_after}");
}
