//! Tags, quotas and the v2 service calls.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(tag_operations, quota_operations, v2_service_calls);

async fn tag_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let mut b = service_body(&w);
    b["tags"] = json!([{"key": "env", "value": "prod"}]);
    let s1 = available_service(&p, b).await;
    let s1id = s1["id"].as_str().unwrap().to_owned();
    let mut b = service_body(&w);
    b["ports"] = json!([{"client_port": 1, "server_port": 1, "protocol": "TCP"}]);
    b["service_name"] = json!("other");
    let s2 = available_service(&p, b).await;
    let s2id = s2["id"].as_str().unwrap().to_owned();
    let act = |id: &str| p.v1(&format!("/endpoint_service/{id}/tags/action"));

    p.post(
        &act(&s2id),
        json!({"action": "create", "tags": [{"key": "env", "value": "dev"}, {"key": "team", "value": "x"}]}),
    )
    .await
    .ok();
    // create overwrites the value of an existing key.
    p.post(
        &act(&s1id),
        json!({"action": "create", "tags": [{"key": "env", "value": "staging"}]}),
    )
    .await
    .ok();
    let shown = p
        .get(&p.v1(&format!("/vpc-endpoint-services/{s1id}")))
        .await
        .ok();
    assert_eq!(shown["tags"], json!([{"key": "env", "value": "staging"}]));
    // Rules.
    p.post(
        &act(&s1id),
        json!({"action": "create", "tags": [{"key": "a*b", "value": ""}]}),
    )
    .await
    .err(400, "tags[0].key");
    p.post(
        &act(&s1id),
        json!({"action": "create", "tags": [{"value": "x"}]}),
    )
    .await
    .err(400, "tags[0].key");
    p.post(&act(&s1id), json!({"action": "upsert", "tags": []}))
        .await
        .err(400, "action");
    let many: Vec<_> = (0..20)
        .map(|i| json!({"key": format!("k{i}"), "value": ""}))
        .collect();
    p.post(&act(&s1id), json!({"action": "create", "tags": many}))
        .await
        .err(400, "20");
    p.post(
        &act(&uuid::Uuid::new_v4().to_string()),
        json!({"action": "create", "tags": []}),
    )
    .await
    .err(404, "not found");
    p.post(
        &p.v1(&format!("/bogus/{s1id}/tags/action")),
        json!({"action": "create", "tags": []}),
    )
    .await
    .err(404, "not found");

    // Project tag list.
    let t = p.get(&p.v1("/endpoint_service/tags")).await.ok();
    assert_eq!(
        t["tags"],
        json!([{"key": "env", "values": ["dev", "staging"]}, {"key": "team", "values": ["x"]}])
    );
    // Filter and count.
    let f = p.v1("/endpoint_service/resource_instances/action");
    let r = p
        .post(
            &f,
            json!({"action": "filter", "tags": [{"key": "env", "values": ["dev"]}]}),
        )
        .await
        .ok();
    assert_eq!(r["total_count"], 1);
    assert_eq!(r["resources"][0]["resource_id"], s2id);
    assert_eq!(r["resources"][0]["tags"].as_array().unwrap().len(), 2);
    let r = p
        .post(
            &f,
            json!({"action": "count", "tags": [{"key": "env", "values": []}]}),
        )
        .await
        .ok();
    assert_eq!(r["total_count"], 2);
    assert!(r.get("resources").is_none());
    let r = p
        .post(
            &f,
            json!({"action": "filter", "not_tags_any": [{"key": "team", "values": []}]}),
        )
        .await
        .ok();
    assert_eq!(r["resources"][0]["resource_id"], s1id);
    let r = p
        .post(&f, json!({"action": "filter", "tags_any": [{"key": "team", "values": ["y"]}, {"key": "env", "values": ["staging"]}]}))
        .await
        .ok();
    assert_eq!(r["total_count"], 1);
    let r = p
        .post(&f, json!({"action": "filter", "matches": [{"key": "resource_name", "value": "OTHER"}], "limit": "10", "offset": "0"}))
        .await
        .ok();
    assert_eq!(r["resources"][0]["resource_id"], s2id);
    let r = p
        .post(&f, json!({"action": "filter", "limit": "1", "offset": "1"}))
        .await
        .ok();
    assert_eq!(r["resources"].as_array().unwrap().len(), 1);
    assert_eq!(r["total_count"], 2);
    p.post(&f, json!({"action": "filter", "limit": 10}))
        .await
        .err(400, "limit");
    p.post(&f, json!({"action": "filter", "limit": "ten"}))
        .await
        .err(400, "limit");
    p.post(&f, json!({"action": "list"}))
        .await
        .err(400, "action");

    // Delete by key, and by key+value only when it matches.
    p.post(
        &act(&s2id),
        json!({"action": "delete", "tags": [{"key": "env", "value": "nope"}]}),
    )
    .await
    .ok();
    p.post(
        &act(&s2id),
        json!({"action": "delete", "tags": [{"key": "team"}]}),
    )
    .await
    .ok();
    let shown = p
        .get(&p.v1(&format!("/vpc-endpoint-services/{s2id}")))
        .await
        .ok();
    assert_eq!(shown["tags"], json!([{"key": "env", "value": "dev"}]));
    let r = p
        .post(&f, json!({"action": "filter", "without_any_tag": true}))
        .await
        .ok();
    assert_eq!(r["total_count"], 0);

    // Endpoints have tags too.
    whitelist(&p, &s1id, &["*"]).await;
    let c = env.consumer();
    let e = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, &s1id))
        .await
        .ok();
    let eid = e["id"].as_str().unwrap();
    c.post(
        &c.v1(&format!("/endpoint/{eid}/tags/action")),
        json!({"action": "create", "tags": [{"key": "owner", "value": "me"}]}),
    )
    .await
    .ok();
    let t = c.get(&c.v1("/endpoint/tags")).await.ok();
    assert_eq!(t["tags"], json!([{"key": "owner", "values": ["me"]}]));
    let r = c
        .post(
            &c.v1("/endpoint/resource_instances/action"),
            json!({"action": "count"}),
        )
        .await
        .ok();
    assert_eq!(r["total_count"], 1);
    // A provider cannot tag the consumer's endpoint.
    p.post(
        &p.v1(&format!("/endpoint/{eid}/tags/action")),
        json!({"action": "create", "tags": [{"key": "x", "value": ""}]}),
    )
    .await
    .err(404, "not found");
}

async fn quota_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let q = p.get(&p.v1("/quotas")).await.ok();
    assert_eq!(
        q["quotas"]["resources"],
        json!([{"type": "endpoint_service", "used": 0, "quota": 20},
               {"type": "endpoint", "used": 0, "quota": 50}])
    );
    let q = p.get(&p.v1("/quotas?type=endpoint")).await.ok();
    assert_eq!(q["quotas"]["resources"].as_array().unwrap().len(), 1);
    p.get(&p.v1("/quotas?type=vpc")).await.err(400, "type");
    // The operator lowers the quota; creates beyond it fail and write nothing.
    let op = env.operator();
    op.put(
        "/inventory/quotas/proj-provider",
        json!({"endpoint_service": 2}),
    )
    .await
    .ok();
    assert_eq!(
        op.get("/inventory/quotas/proj-provider").await.ok()["endpoint_service"],
        2
    );
    op.put("/inventory/quotas/proj-provider", json!({"endpoint": -1}))
        .await
        .err(400, "endpoint");
    op.put(
        "/inventory/quotas/proj-provider",
        json!({"endpoint_service": 2}),
    )
    .await
    .ok();
    for i in 0..2u16 {
        let mut b = service_body(&w);
        b["ports"] = json!([{"client_port": 100 + i, "server_port": 100 + i, "protocol": "TCP"}]);
        p.post(&p.v1("/vpc-endpoint-services"), b).await.ok();
    }
    let mut b = service_body(&w);
    b["ports"] = json!([{"client_port": 300, "server_port": 300, "protocol": "TCP"}]);
    p.post(&p.v1("/vpc-endpoint-services"), b)
        .await
        .err(400, "quota");
    let q = p.get(&p.v1("/quotas?type=endpoint_service")).await.ok();
    assert_eq!(
        q["quotas"]["resources"][0],
        json!({"type": "endpoint_service", "used": 2, "quota": 2})
    );
}

async fn v2_service_calls(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap();
    let rid = uuid::Uuid::new_v4().to_string();
    let r = p
        .post(
            &p.v2(&format!(
                "/vpc-endpoint-services/{sid}/add-server-resources"
            )),
            json!({"server_resources": [{"resource_id": rid, "availability_zone_id": "az1"}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    p.post(
        &p.v2(&format!(
            "/vpc-endpoint-services/{sid}/add-server-resources"
        )),
        json!({"server_resources": [{"availability_zone_id": "az1"}]}),
    )
    .await
    .err(400, "server_resources[0].resource_id");
    // upgrade has no body at all (Content-Length: 0), as the SDK sends it.
    let r = p
        .raw(
            "POST",
            &p.v2(&format!("/vpc-endpoint-services/{sid}/upgrade")),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    p.raw(
        "POST",
        &p.v2(&format!(
            "/vpc-endpoint-services/{}/upgrade",
            uuid::Uuid::new_v4()
        )),
        None,
    )
    .await
    .err(404, "not found");
}
