//! The provider/consumer story of the reference documents, end to end.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(provider_consumer_story);

async fn provider_consumer_story(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let provider = env.provider();
    let consumer = env.consumer();

    // 1. The provider creates a service with approval (the default).
    let s = available_service(&provider, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["approval_enabled"], true);

    // 2. Before the whitelist, the consumer cannot see or use it.
    consumer
        .get(&consumer.v1(&format!("/vpc-endpoint-services/describe?id={sid}")))
        .await
        .err(404, "not found");
    consumer
        .post(&consumer.v1("/vpc-endpoints"), endpoint_body(&w, &sid))
        .await
        .err(404, "endpoint service");

    // 3. The provider whitelists the consumer's domain (= its project id by default).
    provider
        .post(
            &provider.v1(&format!("/vpc-endpoint-services/{sid}/permissions/batch-create")),
            json!({"permissions": [{"permission": "iam:domain::proj-consumer", "description": "tenant B"}]}),
        )
        .await
        .ok();
    let d = consumer
        .get(&consumer.v1(&format!(
            "/vpc-endpoint-services/describe?endpoint_service_name={}",
            s["service_name"].as_str().unwrap()
        )))
        .await
        .ok();
    assert_eq!(d["id"], sid);

    // 4. The consumer creates an endpoint: pending acceptance, an address in its subnet.
    let mut body = endpoint_body(&w, &sid);
    body["port_ip"] = json!("10.0.0.100");
    let e = consumer
        .post(&consumer.v1("/vpc-endpoints"), body)
        .await
        .ok();
    let eid = e["id"].as_str().unwrap().to_owned();
    assert_eq!(e["status"], "pendingAcceptance");
    assert_eq!(e["ip"], "10.0.0.100");

    // 5. The provider sees the connection and accepts it.
    let conns = provider.v1(&format!("/vpc-endpoint-services/{sid}/connections"));
    let l = provider.get(&conns).await.ok();
    assert_eq!(l["connections"][0]["id"], eid);
    assert_eq!(l["connections"][0]["marker_id"], e["marker_id"]);
    provider
        .post(
            &format!("{conns}/action"),
            json!({"action": "receive", "endpoints": [eid]}),
        )
        .await
        .ok();
    let shown = consumer
        .get(&consumer.v1(&format!("/vpc-endpoints/{eid}")))
        .await
        .ok();
    assert_eq!(shown["status"], "accepted");
    let l = provider
        .get(&provider.v1("/vpc-endpoint-services"))
        .await
        .ok();
    assert_eq!(l["endpoint_services"][0]["connection_count"], 1);

    // 6. The agent's feed carries the accepted endpoint and the whitelist.
    let snap = env.agent().get("/feed/snapshot").await.ok();
    let objs = snap["objects"].as_array().unwrap();
    assert!(
        objs.iter().any(|o| o["kind"] == "endpoint"
            && o["id"] == eid
            && o["object"]["status"] == "accepted")
    );
    assert!(
        objs.iter().any(|o| o["kind"] == "permission"
            && o["object"]["permission"] == "iam:domain::proj-consumer")
    );

    // 7. Rejects it (cuts it off), then accepts again.
    provider
        .post(
            &format!("{conns}/action"),
            json!({"action": "reject", "endpoints": [eid]}),
        )
        .await
        .ok();
    assert_eq!(
        consumer
            .get(&consumer.v1(&format!("/vpc-endpoints/{eid}")))
            .await
            .ok()["status"],
        "rejected"
    );
    provider
        .post(
            &format!("{conns}/action"),
            json!({"action": "receive", "endpoints": [eid]}),
        )
        .await
        .ok();

    // 8. Both sides tag their resources.
    provider
        .post(
            &provider.v1(&format!("/endpoint_service/{sid}/tags/action")),
            json!({"action": "create", "tags": [{"key": "app", "value": "web"}]}),
        )
        .await
        .ok();
    consumer
        .post(
            &consumer.v1(&format!("/endpoint/{eid}/tags/action")),
            json!({"action": "create", "tags": [{"key": "app", "value": "client"}]}),
        )
        .await
        .ok();
    let t = consumer.get(&consumer.v1("/endpoint/tags")).await.ok();
    assert_eq!(t["tags"], json!([{"key": "app", "values": ["client"]}]));

    // 9. Quotas show what each side uses.
    let q = provider.get(&provider.v1("/quotas")).await.ok();
    assert_eq!(q["quotas"]["resources"][0]["used"], 1);
    let q = consumer
        .get(&consumer.v1("/quotas?type=endpoint"))
        .await
        .ok();
    assert_eq!(
        q["quotas"]["resources"][0],
        json!({"type": "endpoint", "used": 1, "quota": 50})
    );

    // 10. The service cannot go while the endpoint is accepted; the consumer deletes it,
    // then the provider deletes the service.
    provider
        .delete(&provider.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .err(409, "accepted");
    consumer
        .delete(&consumer.v1(&format!("/vpc-endpoints/{eid}")))
        .await
        .ok();
    provider
        .delete(&provider.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .ok();
    assert_eq!(
        provider
            .get(&provider.v1("/vpc-endpoint-services"))
            .await
            .ok()["total_count"],
        0
    );
    assert_eq!(
        consumer.get(&consumer.v1("/vpc-endpoints")).await.ok()["total_count"],
        0
    );
    let q = consumer
        .get(&consumer.v1("/quotas?type=endpoint"))
        .await
        .ok();
    assert_eq!(q["quotas"]["resources"][0]["used"], 0);
}
