//! What a consumer sees of a provider: no call a consumer can make (whitelisted or not)
//! answers with the provider's backend address, NIC or LB id, VPC, project, tags,
//! description or server ports. The owner and the operator still see everything.
use serde_json::{Value, json};

use crate::{
    fixtures::{port, subnet, vpc, whitelist},
    harness::{Client, Db, Env, Resp},
};

both!(consumer_sees_no_provider_network, owner_sees_everything);

const PROVIDER_CIDR: &str = "172.31.7.0/24";
const VM_IP: &str = "172.31.7.41";
const LB_IP: &str = "172.31.7.42";
/// The LB service's address, set explicitly.
const LB_SERVICE_IP: &str = "172.31.7.99";
const TAG_KEY: &str = "provsecretkey";
const TAG_VALUE: &str = "provsecretvalue";
const DESCRIPTION: &str = "provider secret description";
const SERVER_PORTS: [u16; 2] = [47913, 47914];

/// The provider's side: two services (a VM NIC and an LB backend) with tags and a
/// description, both whitelisted for the consumer; and the consumer's VPC.
struct Provider {
    services: Vec<Value>,
    /// Strings that must never reach a consumer.
    secrets: Vec<String>,
    consumer_vpc: String,
    consumer_subnet: String,
}

async fn provider(env: &Env) -> Provider {
    let op = env.operator();
    crate::fixtures::node1(&op).await;
    let pv = vpc(&op, "proj-provider", PROVIDER_CIDR).await;
    let pv = pv["id"].as_str().unwrap().to_owned();
    let ps = subnet(&op, &pv, PROVIDER_CIDR).await;
    let ps = ps["id"].as_str().unwrap().to_owned();
    let vm = port(&op, &ps, Some(VM_IP)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lb = port(&op, &ps, Some(LB_IP)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cv = vpc(&op, "proj-consumer", "10.20.0.0/24").await;
    let cv = cv["id"].as_str().unwrap().to_owned();
    let cs = subnet(&op, &cv, "10.20.0.0/24").await;
    let p = env.provider();
    let common = |port_id: &str, server_type: &str, client: u16, server: u16| {
        json!({
            "port_id": port_id,
            "vpc_id": pv,
            "server_type": server_type,
            "service_name": server_type.to_lowercase(),
            "ports": [{"client_port": client, "server_port": server, "protocol": "TCP"}],
            "tags": [{"key": TAG_KEY, "value": TAG_VALUE}],
            "description": DESCRIPTION,
        })
    };
    let vm_body = common(&vm, "VM", 8080, SERVER_PORTS[0]);
    let mut lb_body = common(&lb, "LB", 8443, SERVER_PORTS[1]);
    lb_body["ip"] = json!(LB_SERVICE_IP);
    lb_body["approval_enabled"] = json!(false);
    let mut services = Vec::new();
    for body in [vm_body, lb_body] {
        let s = crate::fixtures::available_service(&p, body).await;
        whitelist(
            &p,
            s["id"].as_str().unwrap(),
            &["iam:domain::proj-consumer"],
        )
        .await;
        services.push(s);
    }
    Provider {
        services,
        secrets: vec![
            VM_IP.to_owned(),
            LB_IP.to_owned(),
            LB_SERVICE_IP.to_owned(),
            "172.31.7.".to_owned(),
            vm,
            lb,
            pv,
            ps,
            "proj-provider".to_owned(),
            TAG_KEY.to_owned(),
            TAG_VALUE.to_owned(),
            DESCRIPTION.to_owned(),
            "server_port".to_owned(),
        ],
        consumer_vpc: cv,
        consumer_subnet: cs["id"].as_str().unwrap().to_owned(),
    }
}

/// Whether a number equal to one of the provider's server ports appears anywhere in `v`.
fn has_server_port(v: &Value) -> bool {
    match v {
        Value::Number(n) => n
            .as_u64()
            .is_some_and(|n| SERVER_PORTS.iter().any(|p| u64::from(*p) == n)),
        Value::Array(a) => a.iter().any(has_server_port),
        Value::Object(m) => m.values().any(has_server_port),
        _ => false,
    }
}

/// Asserts that no secret of the provider is in the raw text of a response.
#[track_caller]
fn clean(what: &str, secrets: &[String], r: &Resp) {
    let text = r.body.to_string();
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} ({}) shows the provider's {s:?}: {text}",
            r.status
        );
    }
    assert!(
        !has_server_port(&r.body),
        "{what} shows a server port: {text}"
    );
}

/// A plausible body for each operation that takes one (made-up values otherwise).
fn body_for(op: &str, w: &Provider, sid: &str) -> Value {
    match op {
        "create_endpoint" => json!({
            "endpoint_service_id": sid,
            "vpc_id": w.consumer_vpc,
            "subnet_id": w.consumer_subnet,
        }),
        "update_endpoint_service" => json!({"description": "x"}),
        "update_endpoint_service_name" => json!({"endpoint_service_name": "x"}),
        "accept_or_reject_endpoint" => json!({"action": "receive", "endpoints": []}),
        "add_or_remove_service_permissions" => {
            json!({"permissions": ["*"], "action": "add"})
        }
        "batch_add_or_remove_resource_instance" => {
            json!({"action": "create", "tags": [{"key": "k", "value": "v"}]})
        }
        "list_resource_instances" => json!({"action": "filter"}),
        "update_endpoint_white" => json!({"whitelist": ["10.20.0.0/24"]}),
        "update_endpoint_policy" => json!({"policy_document": {"Version": "5.0"}}),
        "update_endpoint_routetable" => json!({"routetables": []}),
        "upgrade_endpoint" => json!({"action": "upgrade"}),
        _ => json!({}),
    }
}

/// Every tenant operation of the route table, as `who` (deletes last), with each of the
/// provider's services and `who`'s endpoint in the path; plus the lists' filters.
async fn walk(who: &Client, w: &Provider, eid: &str) {
    let mut ops: Vec<_> = vpcep::api::openapi::OPERATIONS
        .iter()
        // The inventory and the feed refuse tenants; the OpenAPI document holds no data.
        .filter(|(_, path, ..)| {
            !path.starts_with("/inventory")
                && !path.starts_with("/feed")
                && *path != "/openapi.json"
        })
        .collect();
    ops.sort_by_key(|(method, ..)| *method == "delete");
    let fake = uuid::Uuid::new_v4().to_string();
    for (method, path, op, _, has_body) in ops {
        for s in &w.services {
            let sid = s["id"].as_str().unwrap();
            for (rtype, rid) in [("endpoint_service", sid), ("endpoint", eid)] {
                let concrete = path
                    .replace("{project_id}", &who.project)
                    .replace("{version}", "v1")
                    .replace("{vpc_endpoint_service_id}", sid)
                    .replace("{vpc_endpoint_id}", eid)
                    .replace("{resource_type}", rtype)
                    .replace("{resource_id}", rid)
                    .replace("{permission_id}", &fake);
                let body = has_body.then(|| serde_json::to_vec(&body_for(op, w, sid)).unwrap());
                let r = who.raw(&method.to_uppercase(), &concrete, body).await;
                clean(&format!("{method} {concrete}"), &w.secrets, &r);
            }
        }
    }
    let name = |s: &Value| s["service_name"].as_str().unwrap().to_owned();
    for s in &w.services {
        let sid = s["id"].as_str().unwrap();
        for q in [
            format!("/vpc-endpoint-services?id={sid}"),
            format!("/vpc-endpoint-services?endpoint_service_name={}", name(s)),
            format!("/vpc-endpoint-services/describe?id={sid}"),
            format!(
                "/vpc-endpoint-services/describe?endpoint_service_name={}",
                name(s)
            ),
            format!("/vpc-endpoint-services/public?id={sid}"),
            format!(
                "/vpc-endpoint-services/public?endpoint_service_name={}",
                name(s)
            ),
            format!("/vpc-endpoints?endpoint_service_name={}", name(s)),
        ] {
            let r = who.get(&who.v1(&q)).await;
            clean(&format!("GET {q}"), &w.secrets, &r);
        }
    }
}

async fn consumer_sees_no_provider_network(db: Db) {
    let env = Env::new(db).await;
    let w = provider(&env).await;
    let c = env.consumer();
    // The consumer connects to both services; the provider accepts the one with approval.
    let mut eids = Vec::new();
    for s in &w.services {
        let r = c
            .post(
                &c.v1("/vpc-endpoints"),
                body_for("create_endpoint", &w, s["id"].as_str().unwrap()),
            )
            .await;
        clean("create endpoint", &w.secrets, &r);
        eids.push(r.ok()["id"].as_str().unwrap().to_owned());
    }
    let p = env.provider();
    let vm_sid = w.services[0]["id"].as_str().unwrap();
    p.post(
        &p.v1(&format!(
            "/vpc-endpoint-services/{vm_sid}/connections/action"
        )),
        json!({"action": "receive", "endpoints": [eids[0]]}),
    )
    .await
    .ok();

    // Every call, as the whitelisted consumer (with its endpoint) and as a tenant that is
    // not whitelisted (with a made-up endpoint id).
    walk(&c, &w, &eids[0]).await;
    walk(&env.tenant(2), &w, &uuid::Uuid::new_v4().to_string()).await;

    // What the consumer is shown: enough to connect, in the consumer view.
    for s in &w.services {
        let sid = s["id"].as_str().unwrap();
        let shown = c
            .get(&c.v1(&format!("/vpc-endpoint-services/{sid}")))
            .await
            .ok();
        assert_eq!(shown["id"], sid);
        assert_eq!(shown["service_name"], s["service_name"]);
        assert_eq!(shown["service_type"], "interface");
        assert_eq!(shown["status"], "available");
        assert_eq!(shown["approval_enabled"], s["approval_enabled"]);
        assert_eq!(shown["owner"], "dom-provider");
        assert_eq!(
            shown["ports"],
            json!([{"client_port": s["ports"][0]["client_port"], "protocol": "TCP"}])
        );
        let d = c
            .get(&c.v1(&format!("/vpc-endpoint-services/describe?id={sid}")))
            .await
            .ok();
        assert_eq!(d["id"], sid);
        assert_eq!(d["ports"], shown["ports"]);
    }
    let public = c.get(&c.v1("/vpc-endpoint-services/public")).await.ok();
    assert_eq!(public["total_count"], 2);
    assert_eq!(
        public["endpoint_services"][0]["ports"][0]
            .as_object()
            .unwrap()
            .len(),
        2
    );
}

async fn owner_sees_everything(db: Db) {
    let env = Env::new(db).await;
    let w = provider(&env).await;
    let p = env.provider();
    let mut op_for_consumer = env.operator();
    op_for_consumer.project = "proj-consumer".into();
    let mut op_for_provider = env.operator();
    op_for_provider.project = "proj-provider".into();
    for s in &w.services {
        let sid = s["id"].as_str().unwrap();
        // The owner; the operator, for the provider's project and for the consumer's.
        for who in [&p, &op_for_provider, &op_for_consumer] {
            let shown = who
                .get(&who.v1(&format!("/vpc-endpoint-services/{sid}")))
                .await
                .ok();
            let text = shown.to_string();
            for field in [
                "port_id",
                "vpc_id",
                "ip",
                "project_id",
                "tags",
                "description",
            ] {
                assert_eq!(shown[field], s[field], "{field}: {text}");
            }
            assert!(has_server_port(&shown), "{text}");
            assert!(text.contains(TAG_VALUE) && text.contains("172.31.7."));
        }
    }
    let l = p.get(&p.v1("/vpc-endpoint-services")).await.ok();
    assert_eq!(l["total_count"], 2);
    for s in l["endpoint_services"].as_array().unwrap() {
        assert_eq!(s["project_id"], "proj-provider");
        assert_eq!(s["description"], DESCRIPTION);
        assert!(has_server_port(s), "{s}");
    }
}
