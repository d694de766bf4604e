//! The API over HTTPS: tenants, the operator and agents end to end, agents by node
//! certificate (mutual TLS), the refusals and their reasons, and certificate rotation under
//! load.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use vpcep::{
    agent::feed_client::{FeedClient, Link},
    tls::{self, client::ClientTls},
};

use crate::{
    fixtures::{available_service, endpoint_body, service_body, whitelist, world},
    harness::{Auth, Db, Env, Pki},
};

fn link(tls: &ClientTls, token: Option<&str>) -> Link {
    Link {
        http: tls.builder().unwrap().build().unwrap(),
        token: token.map(str::to_owned),
        tls: Some(tls.clone()),
    }
}

/// Every error of a request, outermost first (where the TLS reason is).
async fn refusal(tls: &ClientTls, base: &str) -> String {
    let agent = FeedClient::with_link(link(tls, None), base);
    match agent.snapshot().await {
        Ok(_) => panic!("must be refused"),
        Err(e) => e.to_string(),
    }
}

/// Tenants (signed), the operator (token) and an agent (node certificate) over HTTPS, with
/// the server's certificate verified against the CA.
async fn https_end_to_end(db: Db) {
    let pki = Pki::new();
    let env = Env::tls(db, &pki).await;
    assert!(env.server.url().starts_with("https://"));
    let w = world(&env).await;
    let (p, c) = (env.provider(), env.consumer());
    let s = available_service(&p, service_body(&w)).await;
    let sid = s["id"].as_str().unwrap();
    whitelist(&p, sid, &["iam:domain::proj-consumer"]).await;
    let e = c
        .post(&c.v1("/vpc-endpoints"), endpoint_body(&w, sid))
        .await
        .ok();
    assert!(e["ip"].is_string(), "{e}");

    // The agent of node1, by its certificate alone: registers its node and reads the feed.
    let agent = link(&pki.node("node1", false), None);
    let feed = FeedClient::with_link(agent, &env.server.url());
    let node = feed.register_node("node1", "192.0.2.1").await.unwrap();
    assert_eq!(node["name"], "node1", "{node}");
    let snap = feed.snapshot().await.unwrap();
    assert!(snap.revision > 0);
    assert!(
        snap.objects.iter().any(|o| o.kind == "endpoint"),
        "the endpoint is in the agent's snapshot"
    );
    let mut watch = feed.watch(snap.revision).await.unwrap();
    c.delete(&c.v1(&format!("/vpc-endpoints/{}", e["id"].as_str().unwrap())))
        .await;
    let ev = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.is_some(), "the watch over TLS delivers the delete");
}

both!(https_end_to_end);

/// A node certificate names the node: it may change that node and no other; with neither a
/// certificate nor a token the agent is anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_is_the_node_identity() {
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let base = env.server.url();
    let node1 = FeedClient::with_link(link(&pki.node("node1", false), None), &base);
    node1.register_node("node1", "192.0.2.1").await.unwrap();
    let err = node1
        .register_node("node2", "192.0.2.2")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") && err.contains("own node"),
        "another node: {err}"
    );
    let anon = FeedClient::with_link(link(&pki.client(), None), &base);
    let err = anon.snapshot().await.unwrap_err().to_string();
    assert!(err.contains("401"), "no certificate, no token: {err}");
    // Agent tokens remain an option, over TLS.
    let by_token = FeedClient::with_link(
        link(&pki.client(), Some(crate::harness::AGENT1_TOKEN)),
        &base,
    );
    by_token.register_node("node1", "192.0.2.1").await.unwrap();
}

/// Refusals name their cause: a client that does not trust the server's CA, an expired node
/// certificate, a node certificate of another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_cause() {
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let url = env.server.url();

    let other = Pki::new();
    let wrong_ca = refusal(&other.client(), &url).await;
    assert!(
        wrong_ca.contains("UnknownIssuer") && wrong_ca.contains("not signed by a CA"),
        "{wrong_ca}"
    );

    // TLS 1.3: the server refuses after the client's handshake; the request alone may fail
    // as "connection was not ready" (as a CI run under load showed), so the agent asks a
    // connection of its own for the cause. Every attempt names it.
    for _ in 0..20 {
        let expired = refusal(&pki.node("node1", true), &url).await;
        assert!(
            expired.contains("CertificateExpired") && expired.contains("expired"),
            "{expired}"
        );
    }

    // Trusts the server, but its node certificate is signed by another CA.
    let mut foreign = other.node("node1", false);
    foreign.ca_file = Some(pki.ca_file());
    let foreign = refusal(&foreign, &url).await;
    assert!(
        foreign.contains("UnknownCA") || foreign.contains("BadCertificate"),
        "{foreign}"
    );

    // The agent checks its own certificate at start, with the exact reason.
    let now = chrono::Utc::now().timestamp();
    let e = pki
        .node("node1", true)
        .check_node_cert("node1", now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired at"), "{e}");
    let e = pki
        .node("node2", false)
        .check_node_cert("node1", now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is for node \"node2\", not \"node1\""), "{e}");
    pki.node("node1", false)
        .check_node_cert("node1", now)
        .unwrap();
}

/// TLS 1.2 still works (the minimum); a client limited to it gets an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_accepted() {
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let http = pki
        .client()
        .builder()
        .unwrap()
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/v1/", env.server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The serial of the certificate a new connection is served.
async fn served_serial(pki: &Pki, addr: std::net::SocketAddr) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::read_certs("CA", &pki.ca_file()).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let der = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls::cert_info(&der).unwrap().serial
}

/// The server's certificate is replaced five times (and once by a broken file) while
/// clients send requests on kept-alive connections and on new ones: no request fails, and
/// new connections get each new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load_fails_no_request() {
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let url = format!("{}/v1/", env.server.url());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for i in 0..4 {
        let (tls, url, stop, ok, failed) = (
            pki.client(),
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let kept = tls.builder().unwrap().build().unwrap();
            // Bounded: at most 20,000 requests per worker.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Odd workers open a new connection (a new handshake) every time.
                let http = if i % 2 == 1 {
                    tls.builder().unwrap().build().unwrap()
                } else {
                    kept.clone()
                };
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("status {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("{}", tls::chain(&e));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let addr = env.server.addr;
    let mut seen = vec![served_serial(&pki, addr).await];
    for round in 0..6 {
        if round == 3 {
            // Half-written during a rotation: the old certificate stays in use.
            std::fs::write(
                pki.dir.0.join("server.pem"),
                "-----BEGIN CERTIFICATE-----\n",
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(
                served_serial(&pki, addr).await,
                *seen.last().unwrap(),
                "a broken file keeps the previous certificate"
            );
        }
        let issued = pki.issue_server("server");
        let want =
            tls::cert_info(&tls::read_certs("new", &pki.dir.0.join("server.pem")).unwrap()[0])
                .unwrap()
                .serial;
        drop(issued);
        let got = crate::harness::eventually(|| {
            let want = want.clone();
            let pki = &pki;
            async move {
                let s = served_serial(pki, addr).await;
                (s == want).then_some(s)
            }
        })
        .await;
        seen.push(got);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests during {} swaps", seen.len() - 1);
    assert_eq!(
        failed, 0,
        "requests failed during the swaps ({ok} succeeded)"
    );
    assert!(ok > 0);
    seen.dedup();
    assert_eq!(seen.len(), 7, "every new certificate was served: {seen:?}");
}

/// Without the CA the clients refuse the server; tenants' signed requests over TLS work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_needs_the_ca() {
    let pki = Pki::new();
    let env = Env::tls(Db::Sqlite, &pki).await;
    let untrusting = refusal(&ClientTls::default(), &env.server.url()).await;
    assert!(untrusting.contains("UnknownIssuer"), "{untrusting}");
    let p = env.client(
        Auth::Signed {
            ak: "AK-PROVIDER".into(),
            sk: "SK-provider".into(),
        },
        "proj-provider",
    );
    let r = p.get(&p.v1("/vpc-endpoint-services")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
