//! Authentication: SDK-HMAC-SHA256 as the SDK signs, tokens, agent tokens, project checks.
use serde_json::json;

use crate::{
    fixtures::*,
    harness::{Auth, Client, Db, Env, sdk_date, sdk_sign},
};

both!(signatures, tokens_and_scopes, tenant_isolation);

/// The test signer reproduces the official SDK signer's output (huaweicloudsdkcore 3.1.219).
#[test]
fn test_signer_matches_the_sdk() {
    let a = sdk_sign(
        "AK-PROVIDER",
        "SK-provider",
        "GET",
        "/v1/proj-provider/vpc-endpoint-services",
        &[
            ("limit", "10"),
            ("endpoint_service_name", "a b,c~"),
            ("offset", "0"),
        ],
        &[
            ("Content-Type", "application/json"),
            ("X-Project-Id", "proj-provider"),
            ("User-Agent", "huaweicloud-usdk-python/3.0"),
            ("Host", "127.0.0.1:8080"),
        ],
        b"",
        "20261123T123323Z",
    );
    assert_eq!(
        a,
        "SDK-HMAC-SHA256 Access=AK-PROVIDER, \
         SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, \
         Signature=8462f3059f4b90da9dfc02d74e139b14ae052a931af4b3f41f393dbc0bd0ce8e"
    );
}

async fn signatures(db: Db) {
    let env = Env::new(db).await;
    let p = env.provider();
    // Signed, with query parameters that need encoding (space, comma).
    p.get(&p.v1("/vpc-endpoint-services?limit=5&endpoint_service_name=a%20b,c&offset=0"))
        .await
        .ok();
    // No credentials.
    let anon = Client::new(&env.server.url(), Auth::None, "proj-provider");
    anon.get(&anon.v1("/vpc-endpoints"))
        .await
        .err(401, "credentials");
    // Wrong secret.
    let bad = Client::new(
        &env.server.url(),
        Auth::Signed {
            ak: "AK-PROVIDER".into(),
            sk: "wrong".into(),
        },
        "proj-provider",
    );
    bad.get(&bad.v1("/vpc-endpoints"))
        .await
        .err(401, "signature");
    // Unknown AK.
    let unknown = Client::new(
        &env.server.url(),
        Auth::Signed {
            ak: "AK-NOPE".into(),
            sk: "x".into(),
        },
        "proj-provider",
    );
    unknown
        .get(&unknown.v1("/vpc-endpoints"))
        .await
        .err(401, "access key");
    // A path project the credentials do not own.
    let mut other = env.provider();
    other.project = "proj-consumer".into();
    other
        .get(&other.v1("/vpc-endpoints"))
        .await
        .err(403, "proj-consumer");

    // Tampering: a body different from the signed one, and a stale date.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/proj-provider/vpc-endpoints", env.server.url());
    let host = env.server.url().trim_start_matches("http://").to_owned();
    let date = sdk_date();
    let headers = [
        ("Content-Type", "application/json"),
        ("Host", host.as_str()),
        ("X-Project-Id", "proj-provider"),
    ];
    let signed = sdk_sign(
        "AK-PROVIDER",
        "SK-provider",
        "POST",
        "/v1/proj-provider/vpc-endpoints",
        &[],
        &headers,
        b"{}",
        &date,
    );
    let r = http
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-Project-Id", "proj-provider")
        .header("X-Sdk-Date", &date)
        .header("Authorization", &signed)
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let old = "20200101T000000Z";
    let signed = sdk_sign(
        "AK-PROVIDER",
        "SK-provider",
        "GET",
        "/v1/proj-provider/vpc-endpoints",
        &[],
        &headers,
        b"",
        old,
    );
    let r = http
        .get(&url)
        .header("Content-Type", "application/json")
        .header("X-Project-Id", "proj-provider")
        .header("X-Sdk-Date", old)
        .header("Authorization", &signed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error_msg"].as_str().unwrap().contains("X-Sdk-Date"));
    // Not a signature scheme we know.
    let r = http
        .get(&url)
        .header("Authorization", "Bearer x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn tokens_and_scopes(db: Db) {
    let env = Env::new(db).await;
    let tok = Client::new(
        &env.server.url(),
        Auth::Token("consumer-token".into()),
        "proj-consumer",
    );
    tok.get(&tok.v1("/vpc-endpoints")).await.ok();
    let badtok = Client::new(
        &env.server.url(),
        Auth::Token("nope".into()),
        "proj-consumer",
    );
    badtok
        .get(&badtok.v1("/vpc-endpoints"))
        .await
        .err(401, "token");
    // Tenants cannot use the inventory or the feed.
    let p = env.provider();
    p.get("/inventory/vpcs").await.err(403, "scope");
    p.get("/feed/snapshot").await.err(403, "scope");
    // Agents cannot use the tenant API, may read the inventory, and may only write their node.
    let a = env.agent();
    let mut a_t = a.clone();
    a_t.project = "proj-provider".into();
    a_t.get(&a_t.v1("/vpc-endpoints")).await.err(403, "agent");
    a.get("/inventory/vpcs").await.ok();
    a.put(
        "/inventory/nodes/node1",
        json!({"underlay_ip": "192.0.2.1"}),
    )
    .await
    .ok();
    a.put(
        "/inventory/nodes/node2",
        json!({"underlay_ip": "192.0.2.2"}),
    )
    .await
    .err(403, "own node");
    a.post(
        "/inventory/vpcs",
        json!({"project_id": "x", "cidr": "10.0.0.0/24"}),
    )
    .await
    .err(403, "operator");
    // The operator acts for any project; anonymous callers get nothing but versions.
    let mut op = env.operator();
    op.project = "proj-provider".into();
    op.get(&op.v1("/vpc-endpoint-services")).await.ok();
    let anon = Client::new(&env.server.url(), Auth::None, "");
    anon.get("/").await.ok();
    anon.get("/inventory/nodes").await.err(401, "credentials");
}

async fn tenant_isolation(db: Db) {
    let env = Env::new(db).await;
    let w = world(&env).await;
    let p = env.provider();
    let s = available_service(&p, service_body(&w)).await;
    let id = s["id"].as_str().unwrap();
    // Another tenant sees nothing, can change nothing: 404, never 403 (no existence leak).
    let o = env.tenant(2);
    o.get(&o.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .err(404, "not found");
    o.delete(&o.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .err(404, "not found");
    o.post(
        &o.v1(&format!("/vpc-endpoint-services/{id}/permissions/action")),
        json!({"permissions": ["*"], "action": "add"}),
    )
    .await
    .err(404, "not found");
    assert_eq!(
        o.get(&o.v1("/vpc-endpoint-services")).await.ok()["total_count"],
        0
    );
    // Whitelisted: visible (show and describe), still not changeable.
    whitelist(&p, id, &["iam:domain::dom-other"]).await;
    o.get(&o.v1(&format!("/vpc-endpoint-services/{id}")))
        .await
        .ok();
    o.get(&o.v1(&format!("/vpc-endpoint-services/describe?id={id}")))
        .await
        .ok();
    o.put(
        &o.v1(&format!("/vpc-endpoint-services/{id}")),
        json!({"description": "x"}),
    )
    .await
    .err(404, "not found");
}
