//! Request limits: per-credential rate limits (429 with `Retry-After`, the others unaffected),
//! the per-project rate override of the inventory quotas, the back-off of failed
//! authentication per source address and per access key, and the `/metrics` counters.
use std::{net::IpAddr, time::Duration};

use serde_json::{Value, json};
use vpcep::api::{Config, RequestLimits};

use crate::harness::{Auth, Client, Db, Env, Resp, TENANTS, test_config};

both!(
    credentials_have_their_own_buckets,
    project_override_sets_the_rate
);

/// Small limits so that a test reaches them in a few requests. The back-off starts at 3 s,
/// which leaves a test that much time between a failure and the refusal it checks.
fn limits(rate: u32, burst: u32, failures: u32) -> Config {
    Config {
        limits: RequestLimits {
            rate_limit_per_second: rate,
            rate_limit_burst: burst,
            auth_failures_before_backoff: failures,
            auth_backoff_initial_secs: 3,
            auth_backoff_max_secs: 30,
            ..RequestLimits::off()
        },
        ..test_config()
    }
}

/// Asserts a 429 with `msg` and the error body; returns its `Retry-After`.
#[track_caller]
fn refused(r: Resp, msg: &str) -> u64 {
    assert_eq!(r.status.as_u16(), 429, "{}", r.body);
    assert_eq!(r.body["error_code"], "VPCEP.0429", "{}", r.body);
    let m = r.body["error_msg"].as_str().unwrap();
    assert!(m.contains(msg) && m.contains("retry after"), "{m}");
    assert!(r.headers.contains_key("x-request-id"));
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// GETs `path` until the bucket refuses; asserts that at least `burst` were served first,
/// and no more than the bucket can have refilled at one request a second meanwhile (so a
/// slow machine cannot fail it). Returns the refusal's `Retry-After`.
async fn drain(c: &Client, path: &str, burst: u64) -> u64 {
    let started = std::time::Instant::now();
    for served in 0..burst + 20 {
        let r = c.get(path).await;
        if r.status.as_u16() == 429 {
            let most = burst + started.elapsed().as_secs() + 1;
            assert!(
                (burst..=most).contains(&served),
                "{served} served, burst {burst}"
            );
            return refused(r, "rate limit");
        }
        r.ok();
    }
    panic!("never refused");
}

async fn wait(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `/metrics` (anonymous: one scrape, one request of the address's bucket).
async fn scrape(env: &Env) -> String {
    let r = reqwest::get(format!("{}/metrics", env.server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels) of a scrape.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

async fn audit_count(env: &Env) -> usize {
    let all = env
        .operator()
        .get("/inventory/audit-records?limit=1000")
        .await
        .ok();
    all["audit_records"].as_array().unwrap().len()
}

/// Beyond its burst a tenant credential gets 429 with `Retry-After` and the error body,
/// and is served again after waiting it out; the other credentials, anonymous callers and
/// the operator go on meanwhile.
async fn credentials_have_their_own_buckets(db: Db) {
    let env = Env::with_config(db, limits(1, 3, 0)).await;
    let (p, c) = (env.provider(), env.consumer());
    let list = p.v1("/vpc-endpoint-services");
    let secs = drain(&p, &list, 3).await;
    assert_eq!(secs, 1, "one request a second");
    // A refused write is answered before any work and leaves no audit record (the bucket
    // refills one a second: another may be due, so drain again first).
    let before = audit_count(&env).await;
    drain(&p, &list, 0).await;
    let r = p.post(&list, json!({})).await;
    if r.status.as_u16() == 429 {
        refused(r, "rate limit");
        assert_eq!(audit_count(&env).await, before);
    }

    // Meanwhile: another project, and another credential of one project, have their own.
    let cl = c.v1("/vpc-endpoint-services");
    drain(&c, &cl, 3).await;
    let token = env.client(Auth::Token("consumer-token".into()), "proj-consumer");
    token.get(&cl).await.ok();
    // Anonymous callers are kept per source address; the operator has no limit here.
    Client::new(&env.server.url(), Auth::None, "")
        .get("/")
        .await
        .ok();
    for _ in 0..20 {
        env.operator().get("/inventory/nodes").await.ok();
    }

    wait(secs).await;
    p.get(&list).await.ok();
    let m = scrape(&env).await;
    let rate = sample(&m, "vpcep_api_rate_limited_total{kind=\"rate\"}");
    assert!(rate >= 3, "{rate}");
    assert_eq!(
        sample(&m, "vpcep_api_rate_limited_total{kind=\"auth_backoff\"}"),
        0
    );
    assert!(sample(&m, "vpcep_api_requests_total{class=\"4xx\"}") >= rate);
    assert!(sample(&m, "vpcep_api_requests_total{class=\"2xx\"}") >= 10);
}

/// The operator raises, lowers and lifts one project's rate through the inventory quotas;
/// the others keep the defaults; a bad value is a 400 naming the field.
async fn project_override_sets_the_rate(db: Db) {
    let env = Env::with_config(db, limits(1, 2, 0)).await;
    let op = env.operator();
    let (p, c) = (env.provider(), env.consumer());
    let q = "/inventory/quotas/proj-provider";
    let list = p.v1("/vpc-endpoint-services");
    let shown = op.get(q).await.ok();
    assert_eq!(
        (&shown["api_rate_per_second"], &shown["api_rate_burst"]),
        (&json!(1), &json!(2)),
        "the defaults: {shown}"
    );
    drain(&p, &list, 2).await;

    // Raised: at once on this server, with a bucket of the new size.
    let v = op
        .put(
            q,
            json!({"api_rate_per_second": 1000, "api_rate_burst": 10}),
        )
        .await
        .ok();
    assert_eq!(
        v,
        json!({"project_id": "proj-provider", "endpoint_service": 20, "endpoint": 50,
               "api_rate_per_second": 1000, "api_rate_burst": 10})
    );
    for _ in 0..10 {
        p.get(&list).await.ok();
    }
    // Lowered.
    op.put(q, json!({"api_rate_per_second": 1, "api_rate_burst": 1}))
        .await
        .ok();
    drain(&p, &list, 1).await;
    // Lifted: 0 is no limit.
    let v = op.put(q, json!({"api_rate_per_second": 0})).await.ok();
    assert_eq!(
        (&v["api_rate_per_second"], &v["api_rate_burst"]),
        (&json!(0), &json!(0))
    );
    for _ in 0..30 {
        p.get(&list).await.ok();
    }
    // The other project keeps the defaults.
    drain(&c, &c.v1("/vpc-endpoint-services"), 2).await;

    // Out of range, negative, not an integer: 400 naming the field, nothing changed.
    for (field, bad) in [
        ("api_rate_per_second", json!(-1)),
        ("api_rate_per_second", json!(1_000_001)),
        ("api_rate_burst", json!(1_000_001)),
        ("api_rate_burst", json!("5")),
        ("api_rate_burst", json!(2.5)),
    ] {
        op.put(q, json!({ field: bad })).await.err(400, field);
    }
    assert_eq!(op.get(q).await.ok()["api_rate_per_second"], 0);
    for _ in 0..5 {
        p.get(&list).await.ok();
    }
    // The existing fields as before; a put is the whole override, so the rate is the
    // default again.
    let v = op.put(q, json!({"endpoint": 3})).await.ok();
    assert_eq!(
        v,
        json!({"project_id": "proj-provider", "endpoint_service": 20, "endpoint": 3,
               "api_rate_per_second": 1, "api_rate_burst": 2})
    );
    // Rate alone: the default burst.
    let v = op.put(q, json!({"api_rate_per_second": 7})).await.ok();
    assert_eq!(
        (&v["api_rate_per_second"], &v["api_rate_burst"]),
        (&json!(7), &json!(2))
    );
}

/// Bad tokens from one address back it off: its next attempts, a valid token included, are
/// 429 until Retry-After has passed; other addresses and anonymous calls go on. The delay
/// doubles with each further failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_back_off_the_source() {
    let env = Env::with_config(Db::Sqlite, limits(0, 0, 3)).await;
    let url = env.server.url();
    let bad = Client::new(&url, Auth::Token("guess".into()), "");
    let good = env.client(Auth::Token("consumer-token".into()), "proj-consumer");
    let path = good.v1("/vpc-endpoint-services");
    for _ in 0..3 {
        bad.get(&path).await.err(401, "unknown token");
    }
    let secs = refused(good.get(&path).await, "failed authentication");
    assert!((1..=3).contains(&secs), "the first back-off is 3 s: {secs}");
    refused(bad.get(&path).await, "failed authentication");
    // Not an attempt: no credentials.
    Client::new(&url, Auth::None, "")
        .get("/openapi.json")
        .await
        .ok();
    // Another address is not backed off.
    good.clone()
        .with_source(ip("127.0.0.2"))
        .get(&path)
        .await
        .ok();

    wait(secs).await;
    good.get(&path).await.ok();
    // The success did not clear the address's failures: the next one doubles the delay.
    bad.get(&path).await.err(401, "unknown token");
    let secs = refused(good.get(&path).await, "failed authentication");
    assert!(
        (4..=6).contains(&secs),
        "the second back-off is 6 s: {secs}"
    );

    let m = scrape(&env).await;
    let failures = "vpcep_api_auth_failures_total{reason=\"unknown_token\"}";
    assert_eq!(sample(&m, failures), 4);
    assert_eq!(
        sample(&m, "vpcep_api_rate_limited_total{kind=\"auth_backoff\"}"),
        3
    );
}

/// A client signing as tenant `i` with a wrong secret, from `source`.
fn wrong_secret(env: &Env, i: usize, source: &str) -> Client {
    let (ak, _, project, _) = TENANTS[i];
    env.client(
        Auth::Signed {
            ak: ak.to_owned(),
            sk: "not-the-secret".to_owned(),
        },
        project,
    )
    .with_source(ip(source))
}

/// Bad signatures for one access key, from addresses that each stay below the source
/// threshold, back off the key: a valid signature from a new address is refused, the
/// owner's address it succeeded from is still served (and its success clears the key).
/// A loop from one address backs off both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_back_off_the_key() {
    let env = Env::with_config(Db::Sqlite, limits(0, 0, 3)).await;
    let owner = env.tenant(2);
    let path = owner.v1("/vpc-endpoint-services");
    owner.get(&path).await.ok();
    for src in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        wrong_secret(&env, 2, src)
            .get(&path)
            .await
            .err(401, "signature does not match");
    }
    let elsewhere = owner.clone().with_source(ip("127.0.0.6"));
    refused(elsewhere.get(&path).await, "failed authentication");
    // Only that key: another tenant from the same address is served.
    let provider = env.provider().with_source(ip("127.0.0.6"));
    provider
        .get(&provider.v1("/vpc-endpoint-services"))
        .await
        .ok();
    // The owner's own address is still checked; its success clears the key.
    owner.get(&path).await.ok();
    elsewhere.get(&path).await.ok();

    // A bad-signature loop from one address.
    let looping = wrong_secret(&env, 2, "127.0.0.7");
    for _ in 0..3 {
        looping
            .get(&path)
            .await
            .err(401, "signature does not match");
    }
    for _ in 0..3 {
        refused(looping.get(&path).await, "failed authentication");
    }
    // An unknown key counts for the address only.
    let nobody = env
        .client(
            Auth::Signed {
                ak: "AK-NOBODY".into(),
                sk: "x".into(),
            },
            "proj-nobody",
        )
        .with_source(ip("127.0.0.8"));
    nobody
        .get("/v1/proj-nobody/vpc-endpoints")
        .await
        .err(401, "unknown access key");

    let m = scrape(&env).await;
    for (reason, n) in [
        ("bad_signature", 6),
        ("unknown_access_key", 1),
        ("unknown_token", 0),
    ] {
        let series = format!("vpcep_api_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&m, &series), n, "{reason}");
    }
    assert_eq!(
        sample(&m, "vpcep_api_rate_limited_total{kind=\"auth_backoff\"}"),
        4
    );
}

/// The production defaults leave normal use alone: a burst of a hundred from one
/// credential, all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_a_burst_of_a_hundred() {
    let env = Env::with_config(Db::Sqlite, Config::default()).await;
    let p = env.provider();
    let list = p.v1("/vpc-endpoint-services");
    for _ in 0..100 {
        p.get(&list).await.ok();
    }
    let v: Value = env
        .operator()
        .get("/inventory/quotas/proj-provider")
        .await
        .ok();
    assert_eq!(
        (&v["api_rate_per_second"], &v["api_rate_burst"]),
        (&json!(50), &json!(100))
    );
}

/// The header limits docs/api.md states (hyper's defaults): more than 100 header fields, or
/// a head well beyond the 408 KiB read buffer, is a 431 from the HTTP layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_are_the_documented_ones() {
    let env = Env::new(Db::Sqlite).await;
    let url = format!("{}/openapi.json", env.server.url());
    let http = reqwest::Client::new();
    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..90 {
        many.insert(
            reqwest::header::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            "1".parse().unwrap(),
        );
    }
    let r = http.get(&url).headers(many.clone()).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "90 fields and reqwest's own are within 100"
    );
    for i in 90..110 {
        many.insert(
            reqwest::header::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            "1".parse().unwrap(),
        );
    }
    let r = http.get(&url).headers(many).send().await.unwrap();
    assert_eq!(r.status(), 431);
    // The read buffer is checked between reads, so the bound is not exact: well below it
    // passes, well above it does not.
    for (kib, status) in [(64, 200), (1024, 431)] {
        let big = "a".repeat(kib * 1024);
        let r = http.get(&url).header("x-big", big).send().await.unwrap();
        assert_eq!(r.status(), status, "a {kib} KiB header");
    }
}
