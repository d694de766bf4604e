//! `/openapi.json` tells the truth: every operation's real answer validates against the
//! schema the served document gives for its status; request schemas state the server's rules
//! (a body the schema refuses gets a 400 naming the field, one it accepts passes them);
//! statuses, security and the OpenAPI 3.1 keywords are consistent.
use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    fixtures::*,
    harness::{Auth, Client, Db, Env, Resp},
};

both!(real_responses_match, request_schemas_state_the_rules);

/// The served document and validators built from it.
struct Doc {
    doc: Value,
    covered: BTreeSet<String>,
}

impl Doc {
    async fn served(env: &Env) -> Self {
        let anon = Client::new(&env.server.url(), Auth::None, "");
        Self {
            doc: anon.get("/openapi.json").await.ok(),
            covered: BTreeSet::new(),
        }
    }

    fn op(&self, method: &str, template: &str) -> &Value {
        let o = &self.doc["paths"][template][method];
        assert!(o.is_object(), "{method} {template} is not documented");
        o
    }

    /// Errors of `instance` against `schema` (a schema of the document, `$ref`s resolved in
    /// it), formats checked.
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
        v.iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Asserts that `r` is a success the document declares for the operation, with a body
    /// its schema accepts (or no body for 204).
    #[track_caller]
    fn check(&mut self, method: &str, template: &str, r: Resp) -> Value {
        let op = self.op(method, template).clone();
        let status = r.status.as_u16();
        assert!(
            r.status.is_success(),
            "{method} {template}: {status} {}",
            r.body
        );
        let declared = &op["responses"][status.to_string()];
        assert!(
            declared.is_object(),
            "{method} {template} answered {status}, not documented"
        );
        if status == 204 {
            assert!(declared.get("content").is_none(), "{method} {template}");
            assert_eq!(r.body, Value::Null, "{method} {template}: 204 with a body");
        } else {
            let schema = &declared["content"]["application/json"]["schema"];
            let errors = self.errors(schema, &r.body);
            assert!(
                errors.is_empty(),
                "{method} {template}: the answer does not match its schema: {errors:#?}\n{}",
                r.body
            );
        }
        self.covered
            .insert(op["operationId"].as_str().unwrap().to_owned());
        r.body
    }

    /// The request schema of an operation.
    fn request(&self, method: &str, template: &str) -> Value {
        self.op(method, template)["requestBody"]["content"]["application/json"]["schema"].clone()
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Calls every operation (but the endless feed watch) and checks each real answer against
/// the document.
async fn real_responses_match(db: Db) {
    let env = Env::new(db).await;
    let mut d = Doc::served(&env).await;
    document_shape(&d.doc);
    inventory_tour(&env, &mut d).await;
    tenant_tour(&env, &mut d).await;
    let all: BTreeSet<String> = vpcep::api::routes::OPERATIONS
        .iter()
        .map(|(_, _, op, ..)| (*op).to_owned())
        .filter(|op| op != "feed_watch")
        .collect();
    let missing: Vec<&String> = all.difference(&d.covered).collect();
    assert!(missing.is_empty(), "operations not checked: {missing:?}");
}

/// OpenAPI 3.1 throughout, anonymous routes marked, statuses as the handlers answer.
fn document_shape(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    let text = doc.to_string();
    assert!(
        !text.contains("\"nullable\""),
        "3.0's nullable in a 3.1 document"
    );
    assert!(!text.contains("#/$defs") && !text.contains("#/definitions"));
    // Every reference resolves.
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "{target}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, o) in item.as_object().unwrap() {
            let anonymous =
                ["/", "/{version}", "/openapi.json", "/metrics"].contains(&path.as_str());
            assert_eq!(
                o.get("security") == Some(&json!([])),
                anonymous,
                "{method} {path}: security"
            );
            let r = o["responses"].as_object().unwrap();
            assert!(r.contains_key("default"), "{method} {path}");
            assert!(
                r["429"]["headers"]["Retry-After"].is_object(),
                "{method} {path}: 429 and its Retry-After"
            );
            assert!(
                r.keys().any(|k| k.starts_with('2')),
                "{method} {path} has no success"
            );
        }
    }
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with('2'))
            .cloned()
            .collect()
    };
    for p in ["/inventory/vpcs", "/inventory/subnets", "/inventory/ports"] {
        assert_eq!(statuses(p, "post"), ["201"], "{p}");
    }
    for (p, m) in [
        (
            "/v2/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/upgrade",
            "post",
        ),
        (
            "/v1/{project_id}/{resource_type}/{resource_id}/tags/action",
            "post",
        ),
        ("/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}", "delete"),
    ] {
        assert_eq!(statuses(p, m), ["204"], "{m} {p}");
    }
}

async fn inventory_tour(env: &Env, d: &mut Doc) {
    let op = env.operator();
    let anon = Client::new(&env.server.url(), Auth::None, "");
    d.check("get", "/", anon.get("/").await);
    d.check("get", "/{version}", anon.get("/v2").await);
    d.check("get", "/openapi.json", anon.get("/openapi.json").await);
    // Text, not JSON: its media type is the one declared.
    let m = reqwest::get(format!("{}/metrics", env.server.url()))
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let media = m.headers()["content-type"].to_str().unwrap().to_owned();
    let content = &d.op("get", "/metrics")["responses"]["200"]["content"];
    assert!(content[&media].is_object(), "{media} not in {content}");
    assert!(m.text().await.unwrap().contains("vpcep_api_requests_total"));
    d.covered.insert("metrics".to_owned());
    let node = d.check(
        "put",
        "/inventory/nodes/{name}",
        op.put(
            "/inventory/nodes/node1",
            json!({"underlay_ip": "192.0.2.1"}),
        )
        .await,
    );
    assert_eq!(node["applied_revision"], 0);
    d.check(
        "put",
        "/inventory/nodes/{name}/applied-revision",
        op.put(
            "/inventory/nodes/node1/applied-revision",
            json!({"revision": 1}),
        )
        .await,
    );
    d.check(
        "get",
        "/inventory/nodes/{name}",
        op.get("/inventory/nodes/node1").await,
    );
    d.check("get", "/inventory/nodes", op.get("/inventory/nodes").await);
    let vpc = d.check(
        "post",
        "/inventory/vpcs",
        op.post(
            "/inventory/vpcs",
            json!({"project_id": "proj-x", "cidr": "10.7.0.0/24"}),
        )
        .await,
    );
    let subnet = d.check(
        "post",
        "/inventory/subnets",
        op.post(
            "/inventory/subnets",
            json!({"vpc_id": id(&vpc), "cidr": "10.7.0.0/25"}),
        )
        .await,
    );
    let port = d.check(
        "post",
        "/inventory/ports",
        op.post(
            "/inventory/ports",
            json!({"subnet_id": id(&subnet), "node": "node1"}),
        )
        .await,
    );
    d.check("get", "/inventory/vpcs", op.get("/inventory/vpcs").await);
    d.check(
        "get",
        "/inventory/subnets",
        op.get("/inventory/subnets").await,
    );
    d.check("get", "/inventory/ports", op.get("/inventory/ports").await);
    for (kind, v) in [("vpcs", &vpc), ("subnets", &subnet), ("ports", &port)] {
        let path = format!("/inventory/{kind}/{}", id(v));
        d.check(
            "get",
            &format!("/inventory/{kind}/{{id}}"),
            op.get(&path).await,
        );
    }
    for (kind, v) in [("ports", &port), ("subnets", &subnet), ("vpcs", &vpc)] {
        let path = format!("/inventory/{kind}/{}", id(v));
        d.check(
            "delete",
            &format!("/inventory/{kind}/{{id}}"),
            op.delete(&path).await,
        );
    }
    op.put(
        "/inventory/nodes/node9",
        json!({"underlay_ip": "192.0.2.9"}),
    )
    .await
    .ok();
    d.check(
        "delete",
        "/inventory/nodes/{name}",
        op.delete("/inventory/nodes/node9").await,
    );
    let q = "/inventory/quotas/{project_id}";
    d.check(
        "put",
        q,
        op.put("/inventory/quotas/proj-x", json!({"endpoint": 7}))
            .await,
    );
    d.check("get", q, op.get("/inventory/quotas/proj-x").await);
    d.check("get", "/feed/snapshot", op.get("/feed/snapshot").await);
}

/// The VPCEP API, as provider and consumer.
async fn tenant_tour(env: &Env, d: &mut Doc) {
    let w = world(env).await;
    let (p, c) = (env.provider(), env.consumer());
    let svcs = "/v1/{project_id}/vpc-endpoint-services";
    let svc = "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}";
    let mut body = service_body(&w);
    body["tags"] = json!([{"key": "env", "value": "prod"}]);
    let created = d.check(
        "post",
        svcs,
        p.post(&p.v1("/vpc-endpoint-services"), body).await,
    );
    let sid = id(&created);
    let path = p.v1(&format!("/vpc-endpoint-services/{sid}"));
    crate::harness::eventually(|| {
        let (p, path) = (p.clone(), path.clone());
        async move { (p.get(&path).await.ok()["status"] == "available").then_some(()) }
    })
    .await;
    d.check("get", svc, p.get(&path).await);
    let at = |rest: &str| p.v1(&format!("/vpc-endpoint-services/{sid}{rest}"));
    d.check("get", svcs, p.get(&p.v1("/vpc-endpoint-services")).await);
    d.check(
        "put",
        svc,
        p.put(&at(""), json!({"description": "web"})).await,
    );
    d.check(
        "put",
        &format!("{svc}/name"),
        p.put(&at("/name"), json!({"endpoint_service_name": "web2"}))
            .await,
    );
    d.check(
        "get",
        &format!("{svcs}/describe"),
        p.get(&p.v1(&format!("/vpc-endpoint-services/describe?id={sid}")))
            .await,
    );
    let perms = format!("{svc}/permissions");
    d.check(
        "post",
        &format!("{perms}/action"),
        p.post(
            &at("/permissions/action"),
            json!({"permissions": ["iam:domain::proj-consumer"], "action": "add"}),
        )
        .await,
    );
    let added = d.check(
        "post",
        &format!("{perms}/batch-create"),
        p.post(
            &at("/permissions/batch-create"),
            json!({"permissions": [{"permission": "iam:domain::other", "description": "d"}]}),
        )
        .await,
    );
    let pid = id(&added["permissions"][0]);
    d.check("get", &perms, p.get(&at("/permissions")).await);
    d.check(
        "put",
        &format!("{perms}/{{permission_id}}"),
        p.put(
            &at(&format!("/permissions/{pid}")),
            json!({"permission": {"description": "e"}}),
        )
        .await,
    );
    d.check(
        "post",
        &format!("{perms}/batch-delete"),
        p.post(
            &at("/permissions/batch-delete"),
            json!({"permissions": [{"id": pid}]}),
        )
        .await,
    );
    d.check(
        "get",
        &format!("{svcs}/public"),
        c.get(&c.v1("/vpc-endpoint-services/public")).await,
    );
    consumer_tour(env, d, &w, &sid).await;
    d.check(
        "post",
        "/v2/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/upgrade",
        p.raw(
            "POST",
            &p.v2(&format!("/vpc-endpoint-services/{sid}/upgrade")),
            None,
        )
        .await,
    );
    d.check(
        "post",
        "/v2/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/add-server-resources",
        p.post(
            &p.v2(&format!(
                "/vpc-endpoint-services/{sid}/add-server-resources"
            )),
            json!({"server_resources": [{"resource_id": w.backend_port}]}),
        )
        .await,
    );
    let tags = "/v1/{project_id}/{resource_type}";
    d.check(
        "get",
        &format!("{tags}/tags"),
        p.get(&p.v1("/endpoint_service/tags")).await,
    );
    for action in ["filter", "count"] {
        d.check(
            "post",
            &format!("{tags}/resource_instances/action"),
            p.post(
                &p.v1("/endpoint_service/resource_instances/action"),
                json!({"action": action, "tags": [{"key": "env", "values": ["prod"]}]}),
            )
            .await,
        );
    }
    d.check(
        "post",
        &format!("{tags}/{{resource_id}}/tags/action"),
        p.post(
            &p.v1(&format!("/endpoint_service/{sid}/tags/action")),
            json!({"action": "delete", "tags": [{"key": "env"}]}),
        )
        .await,
    );
    d.check(
        "get",
        "/v1/{project_id}/quotas",
        p.get(&p.v1("/quotas")).await,
    );
    d.check(
        "get",
        "/inventory/public-services",
        env.operator().get("/inventory/public-services").await,
    );
    d.check("delete", svc, p.delete(&at("")).await);
    let audit = d.check(
        "get",
        "/v1/{project_id}/audit-records",
        p.get(&p.v1("/audit-records")).await,
    );
    assert!(!audit["audit_records"].as_array().unwrap().is_empty());
    let audit = d.check(
        "get",
        "/inventory/audit-records",
        env.operator()
            .get("/inventory/audit-records?project_id=proj-provider&since=2000-01-01T00:00:00Z")
            .await,
    );
    assert!(!audit["audit_records"].as_array().unwrap().is_empty());
}

async fn consumer_tour(env: &Env, d: &mut Doc, w: &World, sid: &str) {
    let (p, c) = (env.provider(), env.consumer());
    let eps = "/v1/{project_id}/vpc-endpoints";
    let ep = "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}";
    let mut b = endpoint_body(w, sid);
    b["max_connections"] = json!(10);
    let e = d.check("post", eps, c.post(&c.v1("/vpc-endpoints"), b).await);
    let eid = id(&e);
    let at = |rest: &str| c.v1(&format!("/vpc-endpoints/{eid}{rest}"));
    d.check("get", ep, c.get(&at("")).await);
    d.check("get", eps, c.get(&c.v1("/vpc-endpoints")).await);
    d.check(
        "put",
        ep,
        c.put(
            &at(""),
            json!({"whitelist": ["10.1.0.0/16"], "enable_whitelist": true}),
        )
        .await,
    );
    let pol = json!([{"Effect": "Allow", "Action": ["obs:*"], "Resource": ["*"]}]);
    d.check(
        "put",
        &format!("{ep}/policy"),
        c.put(&at("/policy"), json!({"policy_statement": pol}))
            .await,
    );
    d.check(
        "delete",
        &format!("{ep}/policy"),
        c.delete(&at("/policy")).await,
    );
    d.check(
        "put",
        &format!("{ep}/routetables"),
        c.put(
            &at("/routetables"),
            json!({"routetables": [uuid::Uuid::new_v4().to_string()]}),
        )
        .await,
    );
    d.check(
        "post",
        "/v2/{project_id}/vpc-endpoints/{vpc_endpoint_id}/upgrade",
        c.post(
            &c.v2(&format!("/vpc-endpoints/{eid}/upgrade")),
            json!({"action": "upgrade"}),
        )
        .await,
    );
    let conns = "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/connections";
    let at_s = |rest: &str| p.v1(&format!("/vpc-endpoint-services/{sid}/connections{rest}"));
    d.check("get", conns, p.get(&at_s("")).await);
    d.check(
        "post",
        &format!("{conns}/action"),
        p.post(
            &at_s("/action"),
            json!({"action": "receive", "endpoints": [eid]}),
        )
        .await,
    );
    d.check(
        "put",
        &format!("{conns}/description"),
        p.put(
            &at_s("/description"),
            json!({"connections": [{"id": eid, "description": "ok"}]}),
        )
        .await,
    );
    d.check(
        "post",
        &format!("{conns}/action"),
        p.post(
            &at_s("/action"),
            json!({"action": "reject", "endpoints": [eid]}),
        )
        .await,
    );
    d.check("delete", ep, c.delete(&at("")).await);
}

/// Bodies the request schema refuses get a 400 naming the field; the valid variant passes.
async fn request_schemas_state_the_rules(db: Db) {
    let env = Env::new(db).await;
    let d = Doc::served(&env).await;
    let w = world(&env).await;
    let p = env.provider();
    let svcs = "/v1/{project_id}/vpc-endpoint-services";
    let create = d.request("post", svcs);
    let body = |f: &dyn Fn(&mut Value)| {
        let mut b = service_body(&w);
        b["ports"] = json!([{"client_port": 7000, "server_port": 70}]);
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "port_id",
            body(&|b| drop(b.as_object_mut().unwrap().remove("port_id"))),
        ),
        ("port_id", body(&|b| b["port_id"] = json!("not-a-uuid"))),
        ("vpc_id", body(&|b| b["vpc_id"] = json!(null))),
        ("server_type", body(&|b| b["server_type"] = json!("BM"))),
        (
            "service_type",
            body(&|b| b["service_type"] = json!("other")),
        ),
        ("tcp_proxy", body(&|b| b["tcp_proxy"] = json!("half_open"))),
        ("ip_version", body(&|b| b["ip_version"] = json!("ipv6"))),
        ("ip", body(&|b| b["ip"] = json!("10.0.0.256"))),
        (
            "service_name",
            body(&|b| b["service_name"] = json!("x".repeat(17))),
        ),
        ("service_name", body(&|b| b["service_name"] = json!("a b"))),
        ("description", body(&|b| b["description"] = json!("<b>"))),
        (
            "description",
            body(&|b| b["description"] = json!("d".repeat(513))),
        ),
        ("ports", body(&|b| b["ports"] = json!([]))),
        (
            "ports[0].client_port",
            body(&|b| b["ports"][0]["client_port"] = json!(0)),
        ),
        (
            "ports[0].server_port",
            body(&|b| b["ports"][0]["server_port"] = json!(65536)),
        ),
        (
            "ports[0].server_port",
            body(&|b| b["ports"][0]["server_port"] = json!(7.5)),
        ),
        (
            "ports[0].protocol",
            body(&|b| b["ports"][0]["protocol"] = json!("SCTP")),
        ),
        (
            "tags[0].key",
            body(&|b| b["tags"] = json!([{"key": "a=b"}])),
        ),
        ("tags[0].key", body(&|b| b["tags"] = json!([{"key": " k"}]))),
        (
            "tags[0].value",
            body(&|b| b["tags"] = json!([{"key": "k", "value": "v".repeat(44)}])),
        ),
        (
            "max_connections",
            body(&|b| b["max_connections"] = json!(-1)),
        ),
        (
            "max_connections",
            body(&|b| b["max_connections"] = json!(2_097_153)),
        ),
        (
            "max_new_connections_per_second",
            body(&|b| b["max_new_connections_per_second"] = json!(1_000_001)),
        ),
    ];
    for (field, b) in &cases {
        assert!(
            !d.errors(&create, b).is_empty(),
            "the schema accepts what the server refuses ({field}): {b}"
        );
        p.post(&p.v1("/vpc-endpoint-services"), b.clone())
            .await
            .err(400, field);
    }
    // The valid variant, with integral floats (JSON Schema's integers) and every optional
    // field: accepted by both.
    let good = body(&|b| {
        b["ports"] = json!([{"client_port": 7000.0, "server_port": 70, "protocol": "UDP"}]);
        b["max_connections"] = json!(100.0);
        b["service_name"] = json!("web_2-b");
        b["tcp_proxy"] = json!("proxy_open");
        b["tags"] = json!([{"key": "k k", "value": ""}]);
        b["description"] = json!("a description");
        b["ip"] = json!("10.0.0.5");
        b["approval_enabled"] = json!(null);
    });
    let errors = d.errors(&create, &good);
    assert!(errors.is_empty(), "{errors:?}");
    let s = p.post(&p.v1("/vpc-endpoint-services"), good).await.ok();
    assert_eq!(s["max_connections"], 100);
    assert_eq!(s["ports"][0]["client_port"], 7000);

    inventory_rules(&env, &d, &w).await;
    query_rules(&env, &d).await;
}

/// The query parameters of the lists: a value the document refuses (past a bound, outside
/// an enum) gets 400 naming the parameter, the bounds and enum values themselves pass, and a
/// string filter that matches nothing gives an empty page.
async fn query_rules(env: &Env, d: &Doc) {
    let p = env.provider();
    for (template, rest) in [
        (
            "/v1/{project_id}/vpc-endpoint-services",
            "/vpc-endpoint-services",
        ),
        ("/v1/{project_id}/vpc-endpoints", "/vpc-endpoints"),
    ] {
        let params = d.op("get", template)["parameters"].as_array().unwrap();
        let query: Vec<&Value> = params.iter().filter(|q| q["in"] == "query").collect();
        let names: BTreeSet<&str> = query.iter().map(|q| q["name"].as_str().unwrap()).collect();
        for n in ["limit", "offset", "sort_key", "sort_dir", "id"] {
            assert!(names.contains(n), "{template}: {n} is not documented");
        }
        let path = |q: &str| format!("{}?{q}", p.v1(rest));
        for q in query {
            let name = q["name"].as_str().unwrap();
            let schema = &q["schema"];
            if let Some(max) = schema["maximum"].as_u64().filter(|m| *m < u64::MAX) {
                p.get(&path(&format!("{name}={max}"))).await.ok();
                let past = max + 1;
                p.get(&path(&format!("{name}={past}"))).await.err(400, name);
            }
            if schema["minimum"].as_i64() == Some(0) {
                p.get(&path(&format!("{name}=0"))).await.ok();
                p.get(&path(&format!("{name}=-1"))).await.err(400, name);
            }
            if let Some(values) = schema["enum"].as_array() {
                for v in values {
                    p.get(&path(&format!("{name}={}", v.as_str().unwrap())))
                        .await
                        .ok();
                }
                p.get(&path(&format!("{name}=bogus"))).await.err(400, name);
            }
            if schema["type"] == "string" {
                let page = p.get(&path(&format!("{name}=matches-nothing"))).await.ok();
                assert_eq!(page["total_count"], 0, "{template}?{name}: {page}");
            }
        }
    }
}

async fn inventory_rules(env: &Env, d: &Doc, w: &World) {
    let op = env.operator();
    let cases = [
        (
            "/inventory/vpcs",
            json!({"project_id": "p", "cidr": "10.0.0.0/31"}),
            "cidr",
        ),
        (
            "/inventory/vpcs",
            json!({"project_id": "p", "cidr": "10.0.0.0/8", "vni": 0}),
            "vni",
        ),
        (
            "/inventory/vpcs",
            json!({"project_id": "", "cidr": "10.0.0.0/8"}),
            "project_id",
        ),
        (
            "/inventory/vpcs",
            json!({"cidr": "10.0.0.0/8", "extra": 1}),
            "extra",
        ),
        (
            "/inventory/subnets",
            json!({"vpc_id": w.provider_vpc, "cidr": "10.0.0.0"}),
            "cidr",
        ),
        (
            "/inventory/ports",
            json!({"subnet_id": w.provider_subnet, "node": "node1", "mac": "zz:00:00:00:00:00"}),
            "mac",
        ),
        (
            "/inventory/ports",
            json!({"subnet_id": w.provider_subnet, "node": "node1", "ip": "10.0.0"}),
            "ip",
        ),
    ];
    for (path, b, field) in cases {
        let schema = d.request("post", path);
        assert!(
            !d.errors(&schema, &b).is_empty(),
            "{path}: schema accepts {b}"
        );
        op.post(path, b).await.err(400, field);
    }
    let node = d.request("put", "/inventory/nodes/{name}");
    let bad = json!({"underlay_ip": "192.0.2"});
    assert!(!d.errors(&node, &bad).is_empty());
    op.put("/inventory/nodes/node1", bad)
        .await
        .err(400, "underlay_ip");
    let quota = d.request("put", "/inventory/quotas/{project_id}");
    let bad = json!({"endpoint": 100_001});
    assert!(!d.errors(&quota, &bad).is_empty());
    op.put("/inventory/quotas/proj-x", bad)
        .await
        .err(400, "endpoint");
    // Integral floats are integers on both sides.
    let good = json!({"endpoint": 12.0});
    assert!(d.errors(&quota, &good).is_empty());
    let q = op.put("/inventory/quotas/proj-x", good).await.ok();
    assert_eq!(q["endpoint"], 12);
    for field in ["api_rate_per_second", "api_rate_burst"] {
        let bad = json!({field: 1_000_001});
        assert!(!d.errors(&quota, &bad).is_empty(), "{field}");
        op.put("/inventory/quotas/proj-x", bad)
            .await
            .err(400, field);
        let good = json!({field: 1_000_000});
        assert!(d.errors(&quota, &good).is_empty(), "{field}");
        op.put("/inventory/quotas/proj-x", good).await.ok();
    }
}
