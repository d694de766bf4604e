//! Strict bodies and paths: anything but a JSON object where an object is expected is refused
//! on every body route, the inventory refuses unknown fields (the VPCEP API ignores them, as
//! the reference does), malformed path ids get the JSON error shape, and an empty
//! `X-Auth-Token` counts as no token.
use serde_json::{Value, json};

use crate::{
    fixtures::*,
    harness::{Client, Db, Env},
};

both!(
    non_object_bodies,
    unknown_fields,
    malformed_path_ids,
    empty_auth_header
);

/// A route of the table with its placeholders filled in.
fn concrete(path: &str, service: &str, endpoint: &str) -> String {
    path.replace("{project_id}", "proj-provider")
        .replace("{vpc_endpoint_service_id}", service)
        .replace("{vpc_endpoint_id}", endpoint)
        .replace("{resource_type}", "endpoint")
        .replace("{resource_id}", endpoint)
        .replace("{permission_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{name}", "node1")
        .replace("{id}", &uuid::Uuid::new_v4().to_string())
}

async fn non_object_bodies(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let c = env.consumer();
    let op = env.operator();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let e = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, &sid))
        .await
        .ok();
    let eid = e["id"].as_str().unwrap().to_owned();

    let rev = env.store.current_revision().await.unwrap();
    // A quota override by position: refused, and the quotas stay the defaults.
    op.put("/inventory/quotas/proj-provider", json!([5, 7]))
        .await
        .err(400, "body");
    let q = op.get("/inventory/quotas/proj-provider").await.ok();
    assert_eq!(
        (q["endpoint_service"].as_i64(), q["endpoint"].as_i64()),
        (Some(20), Some(50))
    );
    // `[null, null]` on the consumer's endpoint and its policy: refused, nothing changed.
    let ep = c.v1(&format!("/vpc-endpoints/{eid}"));
    c.put(&ep, json!([null, null])).await.err(400, "body");
    c.put(&format!("{ep}/policy"), json!([null, null]))
        .await
        .err(400, "body");
    assert_eq!(
        env.store.current_revision().await.unwrap(),
        rev,
        "nothing written"
    );

    // Every body route, for every kind of non-object (the operator may call them all).
    let mut oper = env.operator();
    oper.project = "proj-provider".into();
    let mut routes = 0;
    for (method, path, op_id, _, body) in vpcep::api::routes::OPERATIONS {
        if !body {
            continue;
        }
        let url = concrete(path, &sid, &eid);
        for bad in ["[null,null]", "[]", "[5,7]", "5", "\"x\"", "null", "true"] {
            let r = oper
                .raw(&method.to_uppercase(), &url, Some(bad.as_bytes().to_vec()))
                .await;
            let b = r.err(400, "body");
            assert_eq!(b["error_code"], "VPCEP.0001", "{op_id} with {bad}: {b}");
        }
        routes += 1;
    }
    assert!(routes >= 20, "{routes} body routes");

    // Nested objects too: a port mapping, a tag or a whitelist entry given by position.
    let svc = p.v1("/vpc-endpoint-services");
    let mut b = service_body(&w);
    b["ports"] = json!([[9090, 90, "TCP"]]);
    p.post(&svc, b).await.err(400, "ports[0]");
    let mut b = service_body(&w);
    b["ports"] = json!([{"client_port": 9091, "server_port": 91}]);
    b["tags"] = json!([["k", "v"]]);
    p.post(&svc, b).await.err(400, "tags[0]");
    let perms = p.v1(&format!(
        "/vpc-endpoint-services/{sid}/permissions/batch-create"
    ));
    p.post(&perms, json!({"permissions": [["iam:domain::x", "d"]]}))
        .await
        .err(400, "permissions[0]");
    let l = p.get(&format!("{svc}?limit=100")).await.ok();
    assert_eq!(l["total_count"], 1, "only the first service exists: {l}");
}

async fn unknown_fields(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let op = env.operator();
    let p = env.provider();
    let count = |v: &Value, key: &str| v[key].as_array().unwrap().len();

    // The inventory refuses them, naming the field, and writes nothing.
    let vpcs = count(&op.get("/inventory/vpcs").await.ok(), "vpcs");
    op.post(
        "/inventory/vpcs",
        json!({"project_id": "proj-x", "cidr": "10.9.0.0/24", "colour": "red"}),
    )
    .await
    .err(400, "colour");
    assert_eq!(count(&op.get("/inventory/vpcs").await.ok(), "vpcs"), vpcs);
    op.post(
        "/inventory/subnets",
        json!({"vpc_id": w.provider_vpc, "cidr": "10.0.0.0/28", "zone": "a"}),
    )
    .await
    .err(400, "zone");
    op.post(
        "/inventory/ports",
        json!({"subnet_id": w.provider_subnet, "node": "node1", "ips": ["10.0.0.9"]}),
    )
    .await
    .err(400, "ips");
    op.put(
        "/inventory/nodes/node2",
        json!({"underlay_ip": "192.0.2.2", "snat_ip": "198.19.128.9"}),
    )
    .await
    .err(400, "snat_ip");
    op.put(
        "/inventory/nodes/node1/applied-revision",
        json!({"revision": 1, "at": "now"}),
    )
    .await
    .err(400, "at");
    op.put(
        "/inventory/quotas/proj-provider",
        json!({"endpoint": 3, "endpoints": 4}),
    )
    .await
    .err(400, "endpoints");
    let nodes = op.get("/inventory/nodes").await.ok();
    assert_eq!(count(&nodes, "nodes"), 1, "{nodes}");

    // The VPCEP API ignores them, as the reference does (clients send extras).
    let mut b = service_body(&w);
    b["future_field"] = json!(1);
    let s = p.post(&p.v1("/vpc-endpoint-services"), b).await.ok();
    let sid = s["id"].as_str().unwrap();
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{sid}")),
        json!({"description": "d", "future_field": true}),
    )
    .await
    .ok();
}

async fn malformed_path_ids(db: Db) {
    let env = Env::new(db).await;
    let p = env.provider();
    let op = env.operator();
    // Percent-decoded, these are not UTF-8: 404 in the JSON error shape, like any other
    // malformed id.
    for (c, method, path) in [
        (&p, "GET", p.v1("/vpc-endpoint-services/%FF")),
        (&p, "DELETE", p.v1("/vpc-endpoint-services/%FF%FE")),
        (&p, "GET", p.v1("/vpc-endpoints/%C3%28")),
        (&p, "GET", p.v1("/vpc-endpoint-services/%FF/connections")),
        (&op, "GET", "/inventory/vpcs/%FF".to_owned()),
        (&op, "DELETE", "/inventory/ports/%FF".to_owned()),
        (&op, "GET", "/inventory/nodes/%FF".to_owned()),
        (&op, "GET", "/%FF".to_owned()),
    ] {
        let r = c.raw(method, &path, None).await;
        let b = r.err(404, "not found");
        assert_eq!(b["error_code"], "VPCEP.0404", "{method} {path}");
    }
    let r = p
        .raw(
            "PUT",
            &p.v1("/vpc-endpoints/%FF"),
            Some(br#"{"whitelist": []}"#.to_vec()),
        )
        .await;
    assert_eq!(r.err(404, "not found")["error_code"], "VPCEP.0404");
}

async fn empty_auth_header(db: Db) {
    let env = Env::new(db).await;
    let http = reqwest::Client::new();
    let base = env.server.url();
    for path in ["/", "/v1", "/v2/", "/openapi.json"] {
        for token in ["", " "] {
            let r = http
                .get(format!("{base}{path}"))
                .header("X-Auth-Token", token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                200,
                "{path} with X-Auth-Token {token:?}"
            );
        }
    }
    // Elsewhere it is no credential at all: 401 as without the header.
    let anon = Client::new(&base, crate::harness::Auth::Token(String::new()), "");
    anon.get("/inventory/vpcs").await.err(401, "credentials");
    anon.get("/v1/proj-provider/vpc-endpoints")
        .await
        .err(401, "credentials");
}
