//! Endpoints: visibility through the whitelist, address assignment, marker ids, whitelist,
//! policy, route tables, delete, and what they pin in the inventory.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Db, Env},
};

both!(endpoint_operations, vpc_references);

async fn endpoint_operations(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let c = env.consumer();
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let eps = c.v1("/vpc-endpoints");

    // Not whitelisted: the service does not exist for the consumer.
    c.post(&eps, endpoint_body(&w, &sid))
        .await
        .err(404, "endpoint service");
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let e1 = c.post(&eps, endpoint_body(&w, &sid)).await.ok();
    assert_eq!(e1["status"], "pendingAcceptance");
    assert_eq!(e1["ip"], "10.0.0.2", "first free host after the gateway");
    assert_eq!(e1["endpoint_service_name"], s["service_name"]);
    uuid::Uuid::parse_str(e1["id"].as_str().unwrap()).unwrap();

    // port_ip honoured, validated, unique.
    let mut b = endpoint_body(&w, &sid);
    b["port_ip"] = json!("10.0.0.100");
    let e2 = c.post(&eps, b.clone()).await.ok();
    assert_eq!(e2["ip"], "10.0.0.100");
    c.post(&eps, b.clone()).await.err(409, "10.0.0.100");
    b["port_ip"] = json!("10.0.1.7");
    c.post(&eps, b.clone()).await.err(400, "port_ip");
    b["port_ip"] = json!("10.0.0.1");
    c.post(&eps, b.clone()).await.err(409, "port_ip");
    b["port_ip"] = json!("10.0.0.255");
    c.post(&eps, b.clone()).await.err(400, "port_ip");
    b["port_ip"] = json!("nonsense");
    c.post(&eps, b).await.err(400, "port_ip");
    assert_ne!(e1["marker_id"], e2["marker_id"]);
    assert!(e1["marker_id"].is_i64());

    // Other field rules.
    let mut b = endpoint_body(&w, &sid);
    b.as_object_mut().unwrap().remove("subnet_id");
    c.post(&eps, b).await.err(400, "subnet_id");
    let mut b = endpoint_body(&w, &sid);
    b["vpc_id"] = json!(w.provider_vpc);
    c.post(&eps, b).await.err(400, "vpc_id");
    let mut b = endpoint_body(&w, &sid);
    b["subnet_id"] = json!(w.provider_subnet);
    c.post(&eps, b).await.err(400, "subnet_id");
    let mut b = endpoint_body(&w, &sid);
    b["whitelist"] = json!(["10.0.0.0/33"]);
    c.post(&eps, b).await.err(400, "whitelist[0]");
    let mut b = endpoint_body(&w, &sid);
    b["endpoint_service_id"] = json!("x");
    c.post(&eps, b).await.err(400, "endpoint_service_id");
    let mut b = endpoint_body(&w, &sid);
    b["policy_statement"] = json!([{"Effect": "Maybe", "Action": ["*"], "Resource": ["*"]}]);
    c.post(&eps, b).await.err(400, "policy_statement[0].Effect");

    // Approval off → accepted at once; whitelist `*` lets anyone in.
    p.put(
        &p.v1(&format!("/vpc-endpoint-services/{sid}")),
        json!({"approval_enabled": false}),
    )
    .await
    .ok();
    let mut b = endpoint_body(&w, &sid);
    b["whitelist"] = json!(["10.0.0.0/24", "192.168.1.1"]);
    b["enable_dns"] = json!(true);
    b["tags"] = json!([{"key": "team", "value": "a"}]);
    b["description"] = json!("db access");
    let e3 = c.post(&eps, b).await.ok();
    assert_eq!(e3["status"], "accepted");
    assert_eq!(e3["enable_whitelist"], true);
    assert_eq!(e3["dns_names"].as_array().unwrap().len(), 2);
    let e3id = e3["id"].as_str().unwrap().to_owned();

    // List, filters, show.
    let l = c.get(&eps).await.ok();
    assert_eq!(l["total_count"], 3);
    let l = c
        .get(&c.v1(&format!("/vpc-endpoints?id={e3id}")))
        .await
        .ok();
    assert_eq!(l["endpoints"][0]["id"], e3id);
    let l = c
        .get(&c.v1(&format!("/vpc-endpoints?vpc_id={}&limit=2", w.consumer_vpc)))
        .await
        .ok();
    assert_eq!(l["endpoints"].as_array().unwrap().len(), 2);
    let l = c
        .get(&c.v1("/vpc-endpoints?endpoint_service_name=nomatch"))
        .await
        .ok();
    assert_eq!(l["total_count"], 0);
    c.get(&c.v1(&format!("/vpc-endpoints/{e3id}"))).await.ok();
    c.get(&c.v1("/vpc-endpoints/zzz"))
        .await
        .err(404, "not found");
    p.get(&p.v1(&format!("/vpc-endpoints/{e3id}")))
        .await
        .err(404, "not found");

    // Whitelist update, policy, route tables.
    let u = c
        .put(
            &c.v1(&format!("/vpc-endpoints/{e3id}")),
            json!({"whitelist": ["10.0.0.9"], "enable_whitelist": false}),
        )
        .await
        .ok();
    assert_eq!(u["whitelist"], json!(["10.0.0.9"]));
    assert_eq!(u["enable_whitelist"], false);
    c.put(
        &c.v1(&format!("/vpc-endpoints/{e3id}")),
        json!({"whitelist": ["x"]}),
    )
    .await
    .err(400, "whitelist[0]");
    let pol = json!([{"Effect": "Allow", "Action": ["obs:*"], "Resource": ["*"]}]);
    let u = c
        .put(
            &c.v1(&format!("/vpc-endpoints/{e3id}/policy")),
            json!({"policy_statement": pol, "policy_document": {"Version": "1"}}),
        )
        .await
        .ok();
    assert_eq!(u["policy_statement"], pol);
    assert_eq!(u["policy_document"]["Version"], "1");
    let u = c
        .delete(&c.v1(&format!("/vpc-endpoints/{e3id}/policy")))
        .await
        .ok();
    assert_eq!(u["policy_statement"], json!([]));
    let rt = uuid::Uuid::new_v4().to_string();
    let u = c
        .put(
            &c.v1(&format!("/vpc-endpoints/{e3id}/routetables")),
            json!({"routetables": [rt]}),
        )
        .await
        .ok();
    assert_eq!(u["routetables"], json!([rt]));
    c.put(
        &c.v1(&format!("/vpc-endpoints/{e3id}/routetables")),
        json!({"routetables": ["nope"]}),
    )
    .await
    .err(400, "routetables[0]");

    // v2 endpoint upgrade.
    c.post(
        &c.v2(&format!("/vpc-endpoints/{e3id}/upgrade")),
        json!({"action": "upgrade"}),
    )
    .await
    .ok();
    c.post(
        &c.v2(&format!("/vpc-endpoints/{e3id}/upgrade")),
        json!({"action": "sideways"}),
    )
    .await
    .err(400, "action");

    // Delete frees the address.
    c.delete(&c.v1(&format!("/vpc-endpoints/{}", e1["id"].as_str().unwrap())))
        .await
        .ok();
    let e4 = c.post(&eps, endpoint_body(&w, &sid)).await.ok();
    assert_eq!(e4["ip"], "10.0.0.2");
    c.delete(&c.v1(&format!("/vpc-endpoints/{}", uuid::Uuid::new_v4())))
        .await
        .err(404, "not found");
}

async fn vpc_references(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let c = env.consumer();
    let op = env.operator();
    let mut b = service_body(&w);
    b["approval_enabled"] = json!(false);
    let s = available_service(&p, b).await;
    let sid = s["id"].as_str().unwrap();
    whitelist(&p, sid, &["*"]).await;
    let e = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, sid))
        .await
        .ok();
    let eid = e["id"].as_str().unwrap();
    // The consumer subnet and VPC are pinned by the endpoint.
    op.delete(&format!("/inventory/subnets/{}", w.consumer_subnet))
        .await
        .err(409, "endpoints");
    op.delete(&format!("/inventory/vpcs/{}", w.consumer_vpc))
        .await
        .err(409, "subnets");
    // An accepted endpoint pins the service.
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .err(409, "accepted");
    c.delete(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    op.delete(&format!("/inventory/subnets/{}", w.consumer_subnet))
        .await
        .ok();
    op.delete(&format!("/inventory/vpcs/{}", w.consumer_vpc))
        .await
        .ok();
    // The provider VPC is pinned by the service and the NIC.
    op.delete(&format!("/inventory/vpcs/{}", w.provider_vpc))
        .await
        .err(409, "VPC is still used");
    p.delete(&p.v1(&format!("/vpc-endpoint-services/{sid}")))
        .await
        .ok();
    op.delete(&format!("/inventory/ports/{}", w.backend_port))
        .await
        .ok();
    op.delete(&format!("/inventory/subnets/{}", w.provider_subnet))
        .await
        .ok();
    op.delete(&format!("/inventory/vpcs/{}", w.provider_vpc))
        .await
        .ok();
    op.get(&format!("/inventory/vpcs/{}", w.provider_vpc))
        .await
        .err(404, "not found");
}
