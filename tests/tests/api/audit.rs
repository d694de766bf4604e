//! The audit trail: every write (tenant, operator, agent; committed or refused) is recorded
//! with its actor, credential id, source, action, resources, result and request id, and
//! never a secret; tenants read their own project's, the operator filters; retention prunes.
use serde_json::{Value, json};
use vpcep::{api::Config, store::AuditRecord};

use crate::{
    fixtures::*,
    harness::{AGENT1_TOKEN, Db, Env, OPERATOR_TOKEN, TENANTS, test_config},
};

both!(
    audit_records_every_write,
    audit_records_failed_writes,
    audit_tenant_sees_own_project_only,
    audit_operator_filters,
    audit_retention_prunes
);

async fn all(env: &Env) -> Vec<Value> {
    let r = env
        .operator()
        .get("/inventory/audit-records?limit=1000")
        .await
        .ok();
    r["audit_records"].as_array().unwrap().clone()
}

/// The record of the action `action` (the last one).
fn find<'a>(recs: &'a [Value], action: &str) -> &'a Value {
    recs.iter()
        .rev()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {recs:#?}"))
}

fn assert_no_secret(recs: &[Value]) {
    let text = serde_json::to_string(recs).unwrap();
    for (_, sk, ..) in TENANTS {
        assert!(!text.contains(sk), "an SK in the audit: {text}");
    }
    for t in [
        OPERATOR_TOKEN,
        AGENT1_TOKEN,
        "consumer-token",
        "SDK-HMAC",
        "Signature",
    ] {
        assert!(!text.contains(t), "{t} in the audit: {text}");
    }
}

async fn audit_records_every_write(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let (p, c, op, ag) = (env.provider(), env.consumer(), env.operator(), env.agent());
    let mut b = service_body(&w);
    b["approval_enabled"] = json!(true);
    let s = available_service(&p, b).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let svc = |rest: &str| p.v1(&format!("/vpc-endpoint-services/{sid}{rest}"));
    p.put(&svc(""), json!({"description": "d"})).await.ok();
    p.put(&svc("/name"), json!({"endpoint_service_name": "web2"}))
        .await
        .ok();
    whitelist(&p, &sid, &["*"]).await;
    p.post(
        &p.v1(&format!("/endpoint_service/{sid}/tags/action")),
        json!({"action": "create", "tags": [{"key": "env", "value": "prod"}]}),
    )
    .await
    .ok();
    let e = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, &sid))
        .await
        .ok();
    let eid = e["id"].as_str().unwrap().to_owned();
    p.post(
        &svc("/connections/action"),
        json!({"action": "receive", "endpoints": [eid]}),
    )
    .await
    .ok();
    p.post(
        &svc("/connections/action"),
        json!({"action": "reject", "endpoints": [eid]}),
    )
    .await
    .ok();
    c.delete(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    op.put(
        "/inventory/quotas/proj-other",
        json!({"endpoint_service": 3}),
    )
    .await
    .ok();
    // The agent registers its own node again.
    ag.put(
        "/inventory/nodes/node1",
        json!({"underlay_ip": "192.0.2.1"}),
    )
    .await
    .ok();
    p.delete(&svc("")).await.ok();

    let recs = all(&env).await;
    assert_no_secret(&recs);
    for (action, actor, cred, project, resource) in [
        (
            "inventory_create_vpc",
            "operator",
            "token:",
            "proj-consumer",
            format!("vpc/{}", w.consumer_vpc),
        ),
        (
            "inventory_create_subnet",
            "operator",
            "token:",
            "proj-consumer",
            format!("subnet/{}", w.consumer_subnet),
        ),
        (
            "inventory_create_port",
            "operator",
            "token:",
            "proj-provider",
            format!("port/{}", w.backend_port),
        ),
        (
            "create_endpoint_service",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            format!("endpoint_service/{sid}"),
        ),
        (
            "update_endpoint_service",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            format!("endpoint_service/{sid}"),
        ),
        (
            "update_endpoint_service_name",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            format!("endpoint_service/{sid}"),
        ),
        (
            "add_or_remove_service_permissions",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            String::new(),
        ),
        (
            "batch_add_or_remove_resource_instance",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            String::new(),
        ),
        (
            "create_endpoint",
            "tenant:proj-consumer",
            "AK-CONSUMER",
            "proj-consumer",
            format!("endpoint/{eid}"),
        ),
        (
            "accept_or_reject_endpoint",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            format!("endpoint/{eid}"),
        ),
        (
            "delete_endpoint",
            "tenant:proj-consumer",
            "AK-CONSUMER",
            "proj-consumer",
            format!("endpoint/{eid}"),
        ),
        (
            "inventory_put_quota",
            "operator",
            "token:",
            "proj-other",
            String::new(),
        ),
        (
            "delete_endpoint_service",
            "tenant:proj-provider",
            "AK-PROVIDER",
            "proj-provider",
            format!("endpoint_service/{sid}"),
        ),
    ] {
        let r = find(&recs, action);
        assert_eq!(r["actor"], actor, "{r}");
        assert!(
            r["credential_id"].as_str().unwrap().starts_with(cred),
            "{r}"
        );
        assert_eq!(r["project_id"], project, "{r}");
        assert_eq!(r["result"], "ok", "{r}");
        assert!(r["status"].as_u64().unwrap() < 300, "{r}");
        assert!(
            r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
        assert_eq!(r["request_id"].as_str().unwrap().len(), 32, "{r}");
        let res = r["resources"].as_array().unwrap();
        if resource.is_empty() {
            assert!(!res.is_empty(), "{r}");
        } else {
            assert!(res.contains(&json!(resource)), "{r}");
        }
    }
    let node = recs
        .iter()
        .rev()
        .find(|r| r["action"] == "inventory_put_node")
        .unwrap();
    assert_eq!(node["actor"], "agent:node1");
    assert!(
        node["credential_id"]
            .as_str()
            .unwrap()
            .starts_with("token:")
    );
    assert_eq!(node["resources"], json!(["node/node1"]));
    let first = recs
        .iter()
        .find(|r| r["action"] == "inventory_put_node")
        .unwrap();
    assert_eq!(first["actor"], "operator");
    // Creates answer 201, deletes 204: the record has the answered status.
    assert_eq!(find(&recs, "inventory_create_vpc")["status"], 201);
    assert_eq!(find(&recs, "delete_endpoint")["status"], 204);
    // Reads are not audited.
    assert!(
        recs.iter()
            .all(|r| !r["action"].as_str().unwrap().starts_with("list_"))
    );
    // The feed carries nothing of the audit.
    let snap = op.get("/feed/snapshot").await.ok();
    assert!(
        snap["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["kind"] != "audit")
    );
}

async fn audit_records_failed_writes(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let (p, c, ag) = (env.provider(), env.consumer(), env.agent());
    // 400: a bad body.
    let mut b = service_body(&w);
    b["server_type"] = json!("nope");
    p.post(&p.v1("/vpc-endpoint-services"), b)
        .await
        .err(400, "server_type");
    // 404: an unknown service.
    let missing = uuid::Uuid::new_v4().to_string();
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{missing}")))
        .await
        .err(404, "not found");
    // 403: a tenant on the inventory, an agent on another node, a tenant on another project.
    c.post(
        "/inventory/vpcs",
        json!({"project_id": "proj-consumer", "cidr": "10.9.0.0/24"}),
    )
    .await
    .err(403, "operator");
    ag.put(
        "/inventory/nodes/node2",
        json!({"underlay_ip": "192.0.2.2"}),
    )
    .await
    .err(403, "own node");
    c.post(&p.v1("/vpc-endpoint-services"), service_body(&w))
        .await
        .err(403, "project");

    let recs = all(&env).await;
    assert_no_secret(&recs);
    let r = find(&recs, "create_endpoint_service");
    assert_eq!(
        (r["result"].clone(), r["status"].clone()),
        (json!("failed"), json!(400)),
        "{r}"
    );
    assert_eq!(r["actor"], "tenant:proj-provider");
    assert_eq!(r["credential_id"], "AK-PROVIDER");
    assert_eq!(r["resources"], json!([]));
    let r = find(&recs, "delete_endpoint_service");
    assert_eq!(
        (r["result"].clone(), r["status"].clone()),
        (json!("failed"), json!(404)),
        "{r}"
    );
    assert_eq!(r["project_id"], "proj-provider");
    let r = find(&recs, "inventory_create_vpc");
    assert_eq!(
        (r["result"].clone(), r["status"].clone()),
        (json!("failed"), json!(403)),
        "{r}"
    );
    assert_eq!(r["actor"], "tenant:proj-consumer");
    let r = find(&recs, "inventory_put_node");
    assert_eq!(
        (r["result"].clone(), r["status"].clone()),
        (json!("failed"), json!(403)),
        "{r}"
    );
    assert_eq!(r["actor"], "agent:node1");
    // Refused by authentication before routing: recorded by method and path.
    let r = find(&recs, "POST /v1/proj-provider/vpc-endpoint-services");
    assert_eq!(
        (r["result"].clone(), r["status"].clone()),
        (json!("failed"), json!(403)),
        "{r}"
    );
    // Nothing of a failed write changed anything.
    assert_eq!(
        p.get(&p.v1("/vpc-endpoint-services")).await.ok()["total_count"],
        0
    );
}

async fn audit_tenant_sees_own_project_only(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let (p, c) = (env.provider(), env.consumer());
    available_service(&p, service_body(&w)).await;
    let own = p.get(&p.v1("/audit-records")).await.ok();
    let own = own["audit_records"].as_array().unwrap();
    assert!(own.iter().any(|r| r["action"] == "create_endpoint_service"));
    assert!(own.iter().all(|r| r["project_id"] == "proj-provider"));
    assert_no_secret(own);
    // The consumer has none of its own, and cannot read the provider's.
    let theirs = c.get(&c.v1("/audit-records")).await.ok();
    assert!(
        theirs["audit_records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["project_id"] == "proj-consumer")
    );
    c.get(&p.v1("/audit-records")).await.err(403, "project");
    // Nor the operator's list.
    c.get("/inventory/audit-records").await.err(403, "operator");
    // Bad query values are 400s naming the field.
    p.get(&p.v1("/audit-records?since=yesterday"))
        .await
        .err(400, "since");
    p.get(&p.v1("/audit-records?limit=0"))
        .await
        .err(400, "limit");
    p.get(&p.v1("/audit-records?limit=x"))
        .await
        .err(400, "limit");
}

async fn audit_operator_filters(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let (p, op) = (env.provider(), env.operator());
    available_service(&p, service_body(&w)).await;
    let recs = all(&env).await;
    let mid = find(&recs, "create_endpoint_service")["at"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = op
        .get("/inventory/audit-records?project_id=proj-consumer")
        .await
        .ok();
    let cons = r["audit_records"].as_array().unwrap();
    assert!(!cons.is_empty());
    assert!(cons.iter().all(|r| r["project_id"] == "proj-consumer"));
    let r = op
        .get(&format!(
            "/inventory/audit-records?project_id=proj-provider&since={}",
            mid.replace('+', "%2B")
        ))
        .await
        .ok();
    let since = r["audit_records"].as_array().unwrap();
    assert!(!since.is_empty());
    assert!(
        since.iter().all(
            |r| r["project_id"] == "proj-provider" && r["at"].as_str().unwrap() >= mid.as_str()
        )
    );
    // The provider's VPC was created before: not in the page since.
    assert!(since.iter().all(|r| r["action"] != "inventory_create_vpc"));
    let r = op.get("/inventory/audit-records?limit=1").await.ok();
    assert_eq!(r["audit_records"].as_array().unwrap().len(), 1);
    op.get("/inventory/audit-records?since=2026-13-01")
        .await
        .err(400, "since");
}

async fn audit_retention_prunes(db: Db) {
    let env = Env::with_config(
        db,
        Config {
            audit_retain_days: 30,
            ..test_config()
        },
    )
    .await;
    let old = AuditRecord {
        request_id: "old".into(),
        at: "2000-01-01T00:00:00.000000Z".into(),
        project_id: "proj-provider".into(),
        actor: "operator".into(),
        action: "inventory_create_vpc".into(),
        result: "ok".into(),
        status: 201,
        ..Default::default()
    };
    env.store.audit(&old).await.unwrap();
    assert!(all(&env).await.iter().any(|r| r["request_id"] == "old"));
    // The next write prunes what is older than the retention.
    node1(&env.operator()).await;
    let recs = all(&env).await;
    assert!(recs.iter().all(|r| r["request_id"] != "old"), "{recs:#?}");
    assert!(recs.iter().any(|r| r["action"] == "inventory_put_node"));
}
