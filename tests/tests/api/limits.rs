//! Per-endpoint connection limits (extension fields): the region default, validation, the
//! endpoint's own limit, responses, the change feed, and the one-time fill of services stored
//! before limits existed.
use serde_json::{Value, json};
use vpcep::{api::Config, domain as model, server::fill_service_limits, store::Store};

use crate::{
    fixtures::*,
    harness::{Db, Env, Postgres, TempDir, test_config},
};

both!(connection_limits, limits_filled_once_for_old_services);

/// The stored document of an object, as the agents' feed snapshot serves it.
async fn feed_object(env: &Env, kind: &str, id: &str) -> Value {
    let snap = env.agent().get("/feed/snapshot").await.ok();
    snap["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["id"] == id)
        .map(|o| o["object"].clone())
        .unwrap_or_else(|| panic!("no {kind} {id} in the snapshot"))
}

async fn connection_limits(db: Db) {
    let config = Config {
        default_max_connections: 1234,
        default_max_new_connections_per_second: 77,
        ..test_config()
    };
    let env = Env::with_config(db, config).await;
    let w = world(&env).await;
    let p = env.provider();
    let svc_path = p.v1("/vpc-endpoint-services");

    // Out of range, negative, not an integer: 400 naming the field, nothing written.
    let rev = env.store.current_revision().await.unwrap();
    for (field, bad) in [
        ("max_connections", json!(-1)),
        ("max_connections", json!(2_097_153)),
        ("max_connections", json!(1u64 << 40)),
        ("max_connections", json!("10")),
        ("max_new_connections_per_second", json!(1_000_001)),
        ("max_new_connections_per_second", json!(-5)),
    ] {
        let mut b = service_body(&w);
        b[field] = bad;
        p.post(&svc_path, b).await.err(400, field);
    }
    assert_eq!(env.store.current_revision().await.unwrap(), rev);

    // Without limits: the region's default; both always in the response.
    let s = available_service(&p, service_body(&w)).await;
    assert_eq!(s["max_connections"], 1234, "{s}");
    assert_eq!(s["max_new_connections_per_second"], 77);
    let sid = s["id"].as_str().unwrap().to_owned();
    let one = p.v1(&format!("/vpc-endpoint-services/{sid}"));
    // Update: one field at a time; an out-of-range update changes nothing.
    let u = p.put(&one, json!({"max_connections": 2})).await.ok();
    assert_eq!(
        (&u["max_connections"], &u["max_new_connections_per_second"]),
        (&json!(2), &json!(77))
    );
    p.put(&one, json!({"max_new_connections_per_second": 1_000_001}))
        .await
        .err(400, "max_new_connections_per_second");
    let got = p.get(&one).await.ok();
    assert_eq!(got["max_connections"], 2);
    assert_eq!(got["max_new_connections_per_second"], 77);
    // In the change feed, as stored.
    let doc = feed_object(&env, "endpoint_service", &sid).await;
    assert_eq!(doc["max_connections"], 2, "{doc}");
    assert_eq!(doc["max_new_connections_per_second"], 77);

    // Explicit values on create, 0 = no limit.
    let mut b = service_body(&w);
    b["service_name"] = json!("web2");
    b["ports"] = json!([{"client_port": 9090, "server_port": 90, "protocol": "TCP"}]);
    b["max_connections"] = json!(0);
    b["max_new_connections_per_second"] = json!(500);
    let s2 = p.post(&svc_path, b).await.ok();
    assert_eq!(s2["max_connections"], 0);
    assert_eq!(s2["max_new_connections_per_second"], 500);

    // The consumer's own limit on an endpoint.
    whitelist(&p, &sid, &["iam:domain::proj-consumer"]).await;
    let c = env.consumer();
    let ep_path = c.v1("/vpc-endpoints");
    for (field, bad) in [
        ("max_connections", json!(-2)),
        ("max_connections", json!(3_000_000)),
        ("max_new_connections_per_second", json!(true)),
    ] {
        let mut b = endpoint_body(&w, &sid);
        b[field] = bad;
        c.post(&ep_path, b).await.err(400, field);
    }
    // Not set: not in the response (the service's apply).
    let plain = c.post(&ep_path, endpoint_body(&w, &sid)).await.ok();
    assert!(plain.get("max_connections").is_none(), "{plain}");
    let mut b = endpoint_body(&w, &sid);
    b["max_connections"] = json!(1);
    b["max_new_connections_per_second"] = json!(10);
    let e = c.post(&ep_path, b).await.ok();
    assert_eq!(e["max_connections"], 1, "{e}");
    assert_eq!(e["max_new_connections_per_second"], 10);
    let eid = e["id"].as_str().unwrap();
    let shown = c.get(&c.v1(&format!("/vpc-endpoints/{eid}"))).await.ok();
    assert_eq!(shown["max_connections"], 1);
    let doc = feed_object(&env, "endpoint", eid).await;
    assert_eq!(
        (
            &doc["max_connections"],
            &doc["max_new_connections_per_second"]
        ),
        (&json!(1), &json!(10))
    );
}

/// A service as stored before limits existed (no limit fields).
fn old_service(id: &str) -> model::Service {
    let doc = json!({
        "id": id, "project_id": "proj-provider", "domain_id": "proj-provider",
        "port_id": uuid::Uuid::new_v4().to_string(), "vpc_id": uuid::Uuid::new_v4().to_string(),
        "service_name": "local-1.old", "server_type": "VM", "service_type": "interface",
        "approval_enabled": true, "status": "available", "ip": "10.0.0.5",
        "ports": [{"client_port": 80, "server_port": 80, "protocol": "TCP"}],
        "tcp_proxy": "close", "tags": [], "description": "", "enable_policy": false,
        "ip_version": "ipv4", "created_at": "", "updated_at": "", "created_rev": 1,
        "updated_rev": 1,
    });
    serde_json::from_value(doc).unwrap()
}

async fn limits_filled_once_for_old_services(db: Db) {
    let dir = TempDir::new("api-limits");
    let pg = (db == Db::Postgres).then(Postgres::start);
    let url = match &pg {
        Some(pg) => pg.url(),
        None => format!("sqlite://{}", dir.0.join("vpcep.db").display()),
    };
    let config = Config {
        default_max_connections: 42,
        ..test_config()
    };
    let store = Store::open(&url, config.feed_retain).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let old = old_service(&id);
    assert_eq!(old.max_connections, None);
    let mut tx = store.write().await.unwrap();
    tx.put(&old).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(fill_service_limits(&store, &config).await.unwrap(), 1);
    let s: model::Service = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (s.max_connections, s.max_new_connections_per_second),
        (Some(42), Some(0))
    );
    // Once per database: a later start (another default) changes nothing, and a service
    // created meanwhile keeps what it has.
    let other = Config {
        default_max_connections: 7,
        ..test_config()
    };
    let rev = store.current_revision().await.unwrap();
    assert_eq!(fill_service_limits(&store, &other).await.unwrap(), 0);
    assert_eq!(store.current_revision().await.unwrap(), rev);
    let s: model::Service = store.get(&id).await.unwrap().unwrap();
    assert_eq!(s.max_connections, Some(42));
}
