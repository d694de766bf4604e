//! Whitelist entries and connections.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(permission_operations, connection_operations);

async fn permission_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let base = p.v1(&format!("/vpc-endpoint-services/{sid}/permissions"));

    let r = p
        .post(
            &format!("{base}/action"),
            json!({"permissions": ["iam:domain::abc", "iam:domain::def"], "permission_type": "domainId", "action": "add"}),
        )
        .await
        .ok();
    assert_eq!(
        r["permissions"],
        json!(["iam:domain::abc", "iam:domain::def"])
    );
    assert_eq!(r["permission_type"], "domainId");
    // Adding again is idempotent; remove.
    p.post(
        &format!("{base}/action"),
        json!({"permissions": ["iam:domain::abc"], "action": "add"}),
    )
    .await
    .ok();
    let r = p
        .post(
            &format!("{base}/action"),
            json!({"permissions": ["iam:domain::abc"], "action": "remove"}),
        )
        .await
        .ok();
    assert_eq!(r["permissions"], json!(["iam:domain::def"]));
    for (bad, field) in [
        (
            json!({"permissions": ["domain::x"], "action": "add"}),
            "permissions[0]",
        ),
        (
            json!({"permissions": ["iam:domain::a/b"], "action": "add"}),
            "permissions[0]",
        ),
        (
            json!({"permissions": [format!("iam:domain::{}", "a".repeat(65))], "action": "add"}),
            "permissions[0]",
        ),
        (
            json!({"permissions": ["iam:domain::x"], "action": "grant"}),
            "action",
        ),
        (json!({"permissions": ["iam:domain::x"]}), "action"),
        (
            json!({"permissions": ["iam:domain::x"], "action": "add", "permission_type": "orgPath"}),
            "permissions[0]",
        ),
        (
            json!({"permissions": ["iam:domain::x"], "action": "add", "permission_type": "bogus"}),
            "permission_type",
        ),
        // Checked even when there is no permission to check it against.
        (
            json!({"permissions": [], "action": "add", "permission_type": "AAA"}),
            "permission_type",
        ),
    ] {
        p.post(&format!("{base}/action"), bad).await.err(400, field);
    }
    p.post(
        &format!("{base}/batch-create"),
        json!({"permissions": [], "permission_type": "AAA"}),
    )
    .await
    .err(400, "permission_type");
    p.post(
        &format!("{base}/action"),
        json!({"permissions": ["organizations:orgPath::o-1/r-2"], "permission_type": "orgPath", "action": "add"}),
    )
    .await
    .ok();

    // Batch create with descriptions, list with filter/paging, describe, batch delete.
    let r = p
        .post(
            &format!("{base}/batch-create"),
            json!({"permissions": [
                {"permission": "iam:domain::ghi", "description": "team ghi"},
                {"permission": "*", "description": "everyone"}]}),
        )
        .await
        .ok();
    let created = r["permissions"].as_array().unwrap().clone();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["description"], "team ghi");
    p.post(
        &format!("{base}/batch-create"),
        json!({"permissions": [{"permission": "x", "description": ""}]}),
    )
    .await
    .err(400, "permissions[0].permission");
    p.post(
        &format!("{base}/batch-create"),
        json!({"permissions": [{"permission": "iam:domain::q", "description": "<b>"}]}),
    )
    .await
    .err(400, "permissions[0].description");
    let l = p.get(&base).await.ok();
    assert_eq!(l["total_count"], 4);
    let l = p.get(&format!("{base}?permission=GHI")).await.ok();
    assert_eq!(l["total_count"], 1);
    let l = p.get(&format!("{base}?limit=2&sort_dir=asc")).await.ok();
    assert_eq!(l["permissions"].as_array().unwrap().len(), 2);
    assert_eq!(l["permissions"][0]["permission"], "iam:domain::def");
    p.get(&format!("{base}?limit=501")).await.err(400, "limit");
    let pid = created[0]["id"].as_str().unwrap();
    let r = p
        .put(
            &format!("{base}/{pid}"),
            json!({"permission": {"description": "renamed"}}),
        )
        .await
        .ok();
    assert_eq!(r["permissions"][0]["description"], "renamed");
    p.put(&format!("{base}/{pid}"), json!({"permission": {}}))
        .await
        .err(400, "permission.description");
    p.put(
        &format!("{base}/{}", uuid::Uuid::new_v4()),
        json!({"permission": {"description": "x"}}),
    )
    .await
    .err(404, "not found");
    let r = p
        .post(
            &format!("{base}/batch-delete"),
            json!({"permissions": [{"id": pid}]}),
        )
        .await
        .ok();
    assert_eq!(r["permissions"][0]["id"], pid);
    p.post(
        &format!("{base}/batch-delete"),
        json!({"permissions": [{"id": pid}]}),
    )
    .await
    .err(400, "permissions[0].id");
    assert_eq!(p.get(&base).await.ok()["total_count"], 3);
}

async fn connection_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let c = env.consumer();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let e1 = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, &sid))
        .await
        .ok();
    let e2 = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, &sid))
        .await
        .ok();
    let conns = p.v1(&format!("/vpc-endpoint-services/{sid}/connections"));

    let l = p.get(&conns).await.ok();
    assert_eq!(l["total_count"], 2);
    assert_eq!(l["connections"][0]["domain_id"], "proj-consumer");
    assert_eq!(l["connections"][0]["status"], "pendingAcceptance");
    let l = p
        .get(&format!("{conns}?marker_id={}", e1["marker_id"]))
        .await
        .ok();
    assert_eq!(l["connections"][0]["id"], e1["id"]);
    p.get(&format!("{conns}?marker_id=abc"))
        .await
        .err(400, "marker_id");
    let l = p
        .get(&format!("{conns}?id={}", e2["id"].as_str().unwrap()))
        .await
        .ok();
    assert_eq!(l["total_count"], 1);

    // receive / reject and back.
    let act = format!("{conns}/action");
    let r = p
        .post(&act, json!({"action": "receive", "endpoints": [e1["id"]]}))
        .await
        .ok();
    assert_eq!(r["connections"][0]["status"], "accepted");
    let shown = c
        .get(&c.v1(&format!("/vpc-endpoints/{}", e1["id"].as_str().unwrap())))
        .await
        .ok();
    assert_eq!(shown["status"], "accepted");
    assert_eq!(shown["active_status"], json!(["active"]));
    let r = p
        .post(&act, json!({"action": "reject", "endpoints": [e1["id"]]}))
        .await
        .ok();
    assert_eq!(r["connections"][0]["status"], "rejected");
    p.post(&act, json!({"action": "receive", "endpoints": [e1["id"]]}))
        .await
        .ok();
    p.post(&act, json!({"action": "accept", "endpoints": [e1["id"]]}))
        .await
        .err(400, "action");
    p.post(&act, json!({"action": "receive", "endpoints": []}))
        .await
        .err(400, "endpoints");
    p.post(
        &act,
        json!({"action": "receive", "endpoints": [uuid::Uuid::new_v4().to_string()]}),
    )
    .await
    .err(400, "endpoints[0]");
    let l = p.get(&format!("{conns}?status=accepted")).await.ok();
    assert_eq!(l["total_count"], 1);
    // The consumer cannot act on the provider's connections.
    let cc = c.v1(&format!("/vpc-endpoint-services/{sid}/connections/action"));
    c.post(&cc, json!({"action": "receive", "endpoints": [e2["id"]]}))
        .await
        .err(404, "not found");

    // Descriptions.
    let r = p
        .put(
            &format!("{conns}/description"),
            json!({"connections": [{"id": e2["id"], "description": "billing"}]}),
        )
        .await
        .ok();
    assert_eq!(r["connections"][0]["description"], "billing");
    p.put(
        &format!("{conns}/description"),
        json!({"connections": [{"id": e2["id"], "description": "<x>"}]}),
    )
    .await
    .err(400, "connections[0].description");
    p.put(
        &format!("{conns}/description"),
        json!({"connections": [{"id": e2["id"]}]}),
    )
    .await
    .err(400, "connections[0].description");
    let l = p
        .get(&format!("{conns}?id={}", e2["id"].as_str().unwrap()))
        .await
        .ok();
    assert_eq!(l["connections"][0]["description"], "billing");

    // The service has an accepted connection: it cannot be deleted until rejected.
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .err(409, "accepted");
    p.post(&act, json!({"action": "reject", "endpoints": [e1["id"]]}))
        .await
        .ok();
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .ok();
    let shown = c
        .get(&c.v1(&format!("/vpc-endpoints/{}", e2["id"].as_str().unwrap())))
        .await
        .ok();
    assert_eq!(
        shown["status"], "failed",
        "a pending endpoint loses its service"
    );
}
