//! Endpoint services: operations, rules and lifecycle.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env, eventually, test_config},
};

both!(
    failed_when_backend_is_gone,
    service_operations,
    service_rules,
    backend_lifecycle,
    versions_and_openapi
);

async fn service_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["approval_enabled"], true, "approval defaults to true");
    assert_eq!(s["service_type"], "interface");
    assert_eq!(s["tcp_proxy"], "close");
    assert_eq!(s["ip"], "10.0.0.5");
    assert_eq!(s["service_name"], format!("local-1.web.{id}"));
    uuid::Uuid::parse_str(&id).unwrap();

    // A second one without a name: `<region>.<id>`.
    let mut b = service_body(&w);
    b.as_object_mut().unwrap().remove("service_name");
    b["ports"] = json!([{"client_port": 9000, "server_port": 9000, "protocol": "TCP"}]);
    b["approval_enabled"] = json!(false);
    let s2 = available_service(&p, b).await;
    let id2 = s2["id"].as_str().unwrap().to_owned();
    assert_eq!(s2["service_name"], format!("local-1.{id2}"));

    // List: filters, sort, paging.
    let l = p.get(&p.v1("/vpc-endpoint-services")).await.ok();
    assert_eq!(l["total_count"], 2);
    assert_eq!(
        l["endpoint_services"][0]["id"], id2,
        "default sort is newest first"
    );
    assert_eq!(l["endpoint_services"][0]["connection_count"], 0);
    let l = p
        .get(&p.v1("/vpc-endpoint-services?sort_key=create_at&sort_dir=asc&limit=1"))
        .await
        .ok();
    assert_eq!(l["endpoint_services"].as_array().unwrap().len(), 1);
    assert_eq!(l["endpoint_services"][0]["id"], id);
    assert_eq!(l["total_count"], 2);
    let l = p
        .get(&p.v1("/vpc-endpoint-services?limit=1&offset=1&sort_dir=asc"))
        .await
        .ok();
    assert_eq!(l["endpoint_services"][0]["id"], id2);
    let l = p
        .get(&p.v1("/vpc-endpoint-services?endpoint_service_name=WEB"))
        .await
        .ok();
    assert_eq!(l["total_count"], 1, "name filter is case-insensitive fuzzy");
    let l = p
        .get(&p.v1(&format!("/vpc-endpoint-services?id={id2}&status=available")))
        .await
        .ok();
    assert_eq!(l["total_count"], 1);
    p.get(&p.v1("/vpc-endpoint-services?limit=1001"))
        .await
        .err(400, "limit");
    p.get(&p.v1("/vpc-endpoint-services?sort_key=name"))
        .await
        .err(400, "sort_key");
    p.get(&p.v1("/vpc-endpoint-services?sort_dir=up"))
        .await
        .err(400, "sort_dir");

    // Show; malformed and unknown ids are 404.
    let sh = p
        .get(&p.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .ok();
    assert_eq!(sh["ports"].as_array().unwrap().len(), 2);
    p.get(&p.v1("/vpc-endpoint-services/not-a-uuid"))
        .await
        .err(404, "not found");
    p.get(&p.v1(&format!("/vpc-endpoint-services/{}", uuid::Uuid::new_v4())))
        .await
        .err(404, "not found");
    p.delete(&p.v1("/vpc-endpoint-services/%7Bx%7D"))
        .await
        .err(404, "not found");

    // Update replaces the port list; other fields.
    let u = p
        .put(
            &p.v1(&format!("/vpc-endpoint-services/{id}")),
            json!({"ports": [{"client_port": 8443, "server_port": 443, "protocol": "TCP"}],
                   "approval_enabled": false, "tcp_proxy": "toa_open", "description": "web tier",
                   "service_name": "web2"}),
        )
        .await
        .ok();
    assert_eq!(
        u["ports"],
        json!([{"client_port": 8443, "server_port": 443, "protocol": "TCP"}])
    );
    assert_eq!(u["approval_enabled"], false);
    assert_eq!(u["tcp_proxy"], "toa_open");
    assert_eq!(u["description"], "web tier");
    assert_eq!(u["service_name"], format!("local-1.web2.{id}"));

    // Rename.
    let r = p
        .put(
            &p.v1(&format!("/vpc-endpoint-services/{id}/name")),
            json!({"endpoint_service_name": "renamed"}),
        )
        .await
        .ok();
    assert_eq!(r["endpoint_service_name"], format!("local-1.renamed.{id}"));
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{id}/name")),
        json!({"endpoint_service_name": "bad name!"}),
    )
    .await
    .err(400, "endpoint_service_name");

    // Describe: exactly one of name or id.
    let d = p
        .get(&p.v1(&format!(
            "/vpc-endpoint-services/describe?endpoint_service_name=local-1.renamed.{id}"
        )))
        .await
        .ok();
    assert_eq!(d["id"], id);
    assert_eq!(d["is_charge"], false);
    p.get(&p.v1("/vpc-endpoint-services/describe"))
        .await
        .err(400, "endpoint_service_name");
    p.get(&p.v1(&format!(
        "/vpc-endpoint-services/describe?id={id}&endpoint_service_name=x"
    )))
    .await
    .err(400, "endpoint_service_name");

    // Public: whitelisted for everyone → listed to other tenants, not to the owner.
    whitelist(&p, &id2, &["*"]).await;
    let c = env.consumer();
    let pub_ = c.get(&c.v1("/vpc-endpoint-services/public")).await.ok();
    assert_eq!(pub_["total_count"], 1);
    assert_eq!(pub_["endpoint_services"][0]["id"], id2);
    assert_eq!(pub_["endpoint_services"][0]["owner"], "dom-provider");
    assert_eq!(
        p.get(&p.v1("/vpc-endpoint-services/public")).await.ok()["total_count"],
        0
    );
    let inv = env.operator().get("/inventory/public-services").await.ok();
    assert_eq!(inv["endpoint_services"].as_array().unwrap().len(), 1);

    // Delete.
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .ok();
    p.get(&p.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .err(404, "not found");
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .err(404, "not found");
}

async fn service_rules(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let path = p.v1("/vpc-endpoint-services");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut b = service_body(&w);
        f(&mut b);
        b
    };
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            with(&|b| b["service_name"] = json!("x".repeat(17))),
            400,
            "service_name",
        ),
        (
            with(&|b| b["service_name"] = json!("a.b")),
            400,
            "service_name",
        ),
        (
            with(&|b| b["ports"][0]["client_port"] = json!(0)),
            400,
            "ports[0].client_port",
        ),
        (
            with(&|b| b["ports"][0]["server_port"] = json!(65536)),
            400,
            "ports[0].server_port",
        ),
        (
            with(&|b| b["ports"][1]["protocol"] = json!("ICMP")),
            400,
            "ports[1].protocol",
        ),
        (
            with(&|b| b["ports"][1] = b["ports"][0].clone()),
            400,
            "ports[1]",
        ),
        (with(&|b| b["ports"] = json!([])), 400, "ports"),
        (
            with(&|b| {
                b["ports"] = json!(
                    (1..=201)
                        .map(|i| json!({"client_port": i, "server_port": i, "protocol": "TCP"}))
                        .collect::<Vec<_>>()
                )
            }),
            400,
            "ports",
        ),
        (
            with(&|b| b["server_type"] = json!("VPS")),
            400,
            "server_type",
        ),
        (with(&|b| b["tcp_proxy"] = json!("maybe")), 400, "tcp_proxy"),
        (
            with(&|b| b["service_type"] = json!("gateway")),
            400,
            "service_type",
        ),
        (
            with(&|b| b["description"] = json!("<script>")),
            400,
            "description",
        ),
        (
            with(&|b| b["tags"] = json!([{"key": "a=b", "value": "x"}])),
            400,
            "tags[0].key",
        ),
        (
            with(&|b| b["tags"] = json!([{"key": "k".repeat(37), "value": "x"}])),
            400,
            "tags[0].key",
        ),
        (
            with(&|b| b["tags"] = json!([{"key": "k", "value": "v".repeat(44)}])),
            400,
            "tags[0].value",
        ),
        (
            with(&|b| b["tags"] = json!([{"key": "k", "value": "a|b"}])),
            400,
            "tags[0].value",
        ),
        (
            with(&|b| b["tags"] = json!([{"key": " k", "value": ""}])),
            400,
            "tags[0].key",
        ),
        (
            with(&|b| {
                b["tags"] = json!(
                    (0..21)
                        .map(|i| json!({"key": format!("k{i}"), "value": ""}))
                        .collect::<Vec<_>>()
                )
            }),
            400,
            "tags",
        ),
        (
            with(&|b| b["port_id"] = json!(uuid::Uuid::new_v4().to_string())),
            400,
            "port_id",
        ),
        (
            with(&|b| b["vpc_id"] = json!(w.consumer_vpc)),
            400,
            "vpc_id",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("ports");
            }),
            400,
            "ports",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("port_id");
            }),
            400,
            "port_id",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("vpc_id");
            }),
            400,
            "vpc_id",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("server_type");
            }),
            400,
            "server_type",
        ),
        (
            with(&|b| b["approval_enabled"] = json!("yes")),
            400,
            "approval_enabled",
        ),
        (
            with(&|b| b["ports"][0]["client_port"] = json!("80")),
            400,
            "ports[0].client_port",
        ),
    ];
    for (body, status, field) in cases {
        let r = p.post(&path, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body} → {}", r.body);
        r.err(status, field);
    }
    // The boundary values pass: 16-char name, 36/43-char tags, 20 tags, 200 mappings.
    let ok = with(&|b| {
        b["service_name"] = json!("a-b_C".repeat(3) + "d");
        b["tags"] = json!(
            (0..20)
                .map(|i| json!({"key": format!("{i:0>36}"), "value": "v".repeat(43)}))
                .collect::<Vec<_>>()
        );
        b["ports"] = json!(
            (1..=200)
                .map(|i| json!({"client_port": i, "server_port": i, "protocol": "UDP"}))
                .collect::<Vec<_>>()
        );
    });
    let s = p.post(&path, ok).await.ok();
    assert_eq!(s["tags"].as_array().unwrap().len(), 20);
    p.delete(&p.v1(&format!(
        "/vpc-endpoint-services/{}",
        s["id"].as_str().unwrap()
    )))
    .await
    .ok();

    // Provider VPC overlapping the SNAT range.
    let op = env.operator();
    let bad_vpc = vpc(&op, "proj-provider", "198.19.0.0/16").await;
    let bad_sub = subnet(&op, bad_vpc["id"].as_str().unwrap(), "198.19.200.0/24").await;
    let bad_port = port(&op, bad_sub["id"].as_str().unwrap(), None).await;
    p.post(
        &path,
        with(&|b| {
            b["vpc_id"] = bad_vpc["id"].clone();
            b["port_id"] = bad_port["id"].clone();
        }),
    )
    .await
    .err(400, "198.19.128.0/17");

    // Services sharing a backend: no client or server port clash per protocol, at most 5.
    let base = |c: u16, s: u16, proto: &str| {
        with(&|b| {
            b["ports"] = json!([{"client_port": c, "server_port": s, "protocol": proto}]);
        })
    };
    p.post(&path, base(1000, 2000, "TCP")).await.ok();
    p.post(&path, base(1000, 2001, "TCP"))
        .await
        .err(409, "client_port 1000");
    p.post(&path, base(1001, 2000, "TCP"))
        .await
        .err(409, "server_port 2000");
    p.post(&path, base(1000, 2000, "UDP")).await.ok();
    p.post(&path, base(1002, 2002, "TCP")).await.ok();
    p.post(&path, base(1003, 2003, "TCP")).await.ok();
    p.post(&path, base(1004, 2004, "TCP")).await.ok();
    p.post(&path, base(1005, 2005, "TCP"))
        .await
        .err(400, "port_id");
    // Nothing was written by the failures.
    let l = p.get(&path).await.ok();
    assert_eq!(l["total_count"], 5);
    // Update is checked the same way.
    let first = l["endpoint_services"][4]["id"].as_str().unwrap().to_owned();
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{first}")),
        json!({"ports": [{"client_port": 1002, "server_port": 7000, "protocol": "TCP"}]}),
    )
    .await
    .err(409, "client_port 1002");
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{first}")),
        json!({"tcp_proxy": "nope"}),
    )
    .await
    .err(400, "tcp_proxy");
}

async fn backend_lifecycle(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let op = env.operator();
    let s = available_service(&p, service_body(&w)).await;
    let id = s["id"].as_str().unwrap().to_owned();
    let show = |p: crate::harness::Client, id: String| async move {
        p.get(&p.v1(&format!("/vpc-endpoint-services/{id}")))
            .await
            .ok()
    };
    // The backend NIC disappears: suspended. It comes back: available again.
    op.delete(&format!("/inventory/ports/{}", w.backend_port))
        .await
        .ok();
    assert_eq!(show(p.clone(), id.clone()).await["status"], "suspended");
    op.post(
        "/inventory/ports",
        json!({"id": w.backend_port, "subnet_id": w.provider_subnet, "node": "node1", "ip": "10.0.0.5"}),
    )
    .await
    .ok();
    assert_eq!(show(p.clone(), id.clone()).await["status"], "available");
    // Suspended, then re-associated with another backend of the same type.
    op.delete(&format!("/inventory/ports/{}", w.backend_port))
        .await
        .ok();
    assert_eq!(show(p.clone(), id.clone()).await["status"], "suspended");
    let np = port(&op, &w.provider_subnet, None).await;
    let u = p
        .put(
            &p.v1(&format!("/vpc-endpoint-services/{id}")),
            json!({"port_id": np["id"]}),
        )
        .await
        .ok();
    assert_eq!(u["status"], "available");
    assert_eq!(u["port_id"], np["id"]);
    assert_eq!(u["ip"], np["ip"]);
    // The creating → available step also happens for services created while the server
    // runs; a service is never left in creating.
    eventually(|| {
        let p = p.clone();
        async move {
            let l = p
                .get(&p.v1("/vpc-endpoint-services?status=creating"))
                .await
                .ok();
            (l["total_count"] == 0).then_some(())
        }
    })
    .await;
}

async fn versions_and_openapi(db: Db) {
    let env = Env::new(db).await;
    let anon = crate::harness::Client::new(&env.server.url(), crate::harness::Auth::None, "");
    let v = anon.get("/").await.ok();
    assert_eq!(v["versions"][0]["id"], "v1");
    let v1 = anon.get("/v1").await.ok();
    assert_eq!(v1["version"]["id"], "v1");
    // The links of the version list resolve.
    let v2 = anon
        .get(v["versions"][1]["links"][0]["href"].as_str().unwrap())
        .await
        .ok();
    assert_eq!(v2["version"]["id"], "v2");
    anon.get("/v3").await.err(404, "not found");
    let doc = anon.get("/openapi.json").await.ok();
    assert_eq!(doc["openapi"], "3.1.0");
    // Request and response schemas come from the handlers' types.
    let create = &doc["paths"]["/v1/{project_id}/vpc-endpoint-services"]["post"];
    let body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let body = &doc["components"]["schemas"][body_ref.rsplit('/').next().unwrap()];
    for field in [
        "port_id",
        "vpc_id",
        "server_type",
        "ports",
        "approval_enabled",
        "tcp_proxy",
    ] {
        assert!(
            body["properties"][field].is_object(),
            "create service body lacks {field}: {body}"
        );
    }
    let ok_ref = create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let svc = &doc["components"]["schemas"][ok_ref.rsplit('/').next().unwrap()];
    for field in ["id", "service_name", "status", "ports", "approval_enabled"] {
        assert!(
            svc["properties"][field].is_object(),
            "service lacks {field}: {svc}"
        );
    }
    // Every documented operation is routed: a request with made-up ids reaches a handler
    // (never the router's 404 or 405).
    let mut op = env.operator();
    op.project = "proj-provider".into();
    let fake = uuid::Uuid::new_v4().to_string();
    let mut count = 0;
    for (method, path, ..) in vpcep::api::openapi::OPERATIONS {
        let concrete = path
            .replace("{project_id}", "proj-provider")
            .replace("{resource_type}", "endpoint")
            .replace("{version}", "v1")
            .replace("{name}", "node9")
            .replace("/{", "/")
            .replace('}', "");
        let concrete: String = concrete
            .split('/')
            .map(|s| {
                if s.ends_with("_id") || s == "id" || s == "resource_id" {
                    fake.as_str()
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        if *path == "/feed/watch" {
            continue;
        }
        let body = (*method == "post" || *method == "put").then(|| b"{}".to_vec());
        let r = op.raw(&method.to_uppercase(), &concrete, body).await;
        assert_ne!(r.status.as_u16(), 405, "{method} {concrete}");
        assert_ne!(
            r.body["error_msg"], "resource not found",
            "{method} {concrete} is not routed"
        );
        assert!(r.status.as_u16() < 500, "{method} {concrete}: {}", r.body);
        count += 1;
    }
    assert!(count >= 55);
    let paths = doc["paths"].as_object().unwrap();
    let ops: usize = paths.values().map(|m| m.as_object().unwrap().len()).sum();
    assert_eq!(ops, vpcep::api::openapi::OPERATIONS.len());
}

/// A service left in `creating` whose NIC is gone by the time it is activated (here: across a
/// restart) ends `failed`, not stuck.
async fn failed_when_backend_is_gone(db: Db) {
    use vpcep::domain::{Service, ServiceStatus};

    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    // Put it back to `creating` with a backend that does not exist, as a crash between the
    // two steps would leave it.
    let mut tx = env.store.write().await.unwrap();
    let mut stored: Service = tx.get(s["id"].as_str().unwrap()).await.unwrap().unwrap();
    stored.status = ServiceStatus::Creating;
    stored.port_id = uuid::Uuid::new_v4().to_string();
    tx.put(&stored).await.unwrap();
    tx.commit().await.unwrap();
    // A (re)started server finishes it.
    let b = env.replica(test_config()).await;
    let via_b = crate::harness::Client::new(&b.url(), p.auth.clone(), &p.project);
    let id = stored.id.clone();
    eventually(|| {
        let c = via_b.clone();
        let id = id.clone();
        async move {
            let s = c
                .get(&c.v1(&format!("/vpc-endpoint-services/{id}")))
                .await
                .ok();
            (s["status"] == "failed").then_some(())
        }
    })
    .await;
    // LB backends are accepted like VM ones.
    let mut lb = service_body(&w);
    lb["server_type"] = json!("LB");
    lb["ports"] = json!([{"client_port": 443, "server_port": 8443, "protocol": "TCP"}]);
    assert_eq!(available_service(&p, lb).await["server_type"], "LB");
}
