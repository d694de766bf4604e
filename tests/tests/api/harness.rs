//! Fixtures: a throwaway PostgreSQL server per test, a fresh SQLite file per test, an
//! in-process control plane on a loopback port, and HTTP clients that sign like the SDK.
use std::{ops::Deref, time::Duration};

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use vpcep::{
    api::{Config, Credentials, CredentialsFile, auth},
    server::Server,
    tls::client::ClientTls,
};
pub use vpcep_tests::harness::{ControlPlane, Db, Pki, Postgres, TempDir, test_config};

pub const OPERATOR_TOKEN: &str = "operator-secret";
pub const AGENT1_TOKEN: &str = "agent-node1-secret";

/// Tenants known to the credentials file: (ak, sk, project, domain).
pub const TENANTS: [(&str, &str, &str, &str); 3] = [
    (
        "AK-PROVIDER",
        "SK-provider",
        "proj-provider",
        "dom-provider",
    ),
    (
        "AK-CONSUMER",
        "SK-consumer",
        "proj-consumer",
        "proj-consumer",
    ),
    ("AK-OTHER", "SK-other", "proj-other", "dom-other"),
];

pub fn credentials() -> Credentials {
    let mut file = CredentialsFile {
        operator_tokens: vec![OPERATOR_TOKEN.to_owned()],
        ..Default::default()
    };
    for (ak, sk, p, d) in TENANTS {
        file.credentials.push(auth::AkSk {
            ak: ak.to_owned(),
            sk: sk.to_owned(),
            project_id: p.to_owned(),
            // The consumer relies on the default (domain = project).
            domain_id: (d != p).then(|| d.to_owned()),
        });
    }
    file.tokens.push(auth::TenantToken {
        token: "consumer-token".to_owned(),
        project_id: "proj-consumer".to_owned(),
        domain_id: None,
    });
    file.agents.push(auth::AgentToken {
        node: "node1".to_owned(),
        token: AGENT1_TOKEN.to_owned(),
    });
    Credentials::new(file)
}

/// One test's world: a control plane on its own database (`server`, `store`), and clients.
pub struct Env(ControlPlane, ClientTls);

impl Deref for Env {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.0
    }
}

impl Env {
    pub async fn new(db: Db) -> Self {
        Self::with_config(db, test_config()).await
    }

    pub async fn with_config(db: Db, config: Config) -> Self {
        Self(
            ControlPlane::start(db, credentials(), config).await,
            ClientTls::default(),
        )
    }

    /// Over HTTPS with mutual TLS for agents; the clients trust `pki`'s CA.
    pub async fn tls(db: Db, pki: &Pki) -> Self {
        let cp =
            ControlPlane::start_tls(db, credentials(), test_config(), pki.server_files()).await;
        Self(cp, pki.client())
    }

    /// A client of this server with `auth`, verifying its certificate when it has one.
    pub fn client(&self, auth: Auth, project: &str) -> Client {
        Client::with_tls(&self.server.url(), auth, project, &self.1)
    }

    /// Another API replica on the same database.
    pub async fn replica(&self, config: Config) -> Server {
        self.0.replica(credentials(), config).await
    }

    pub fn tenant(&self, i: usize) -> Client {
        let (ak, sk, p, _) = TENANTS[i];
        self.client(
            Auth::Signed {
                ak: ak.to_owned(),
                sk: sk.to_owned(),
            },
            p,
        )
    }

    pub fn provider(&self) -> Client {
        self.tenant(0)
    }

    pub fn consumer(&self) -> Client {
        self.tenant(1)
    }

    pub fn operator(&self) -> Client {
        self.client(Auth::Token(OPERATOR_TOKEN.to_owned()), "")
    }

    pub fn agent(&self) -> Client {
        self.client(Auth::Token(AGENT1_TOKEN.to_owned()), "")
    }
}

#[derive(Clone)]
pub enum Auth {
    Signed { ak: String, sk: String },
    Token(String),
    None,
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub auth: Auth,
    pub project: String,
    http: reqwest::Client,
}

/// Python's `quote(s, safe='~')`, as the SDK signer encodes.
const SDK_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn sdk_quote(s: &str) -> String {
    utf8_percent_encode(s, SDK_SET).to_string()
}

/// The SDK's SDK-HMAC-SHA256 signature, written from its signer (not the server's code):
/// returns (X-Sdk-Date, Authorization).
#[allow(clippy::too_many_arguments)] // one argument per input of the SDK's signer
pub fn sdk_sign(
    ak: &str,
    sk: &str,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: &[u8],
    date: &str,
) -> String {
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.contains('_'))
        .map(|(k, v)| (k.to_lowercase(), v.trim().to_owned()))
        .collect();
    signed.push(("x-sdk-date".to_owned(), date.to_owned()));
    signed.sort();
    let mut uri = path
        .split('/')
        .map(|seg| {
            let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            sdk_quote(&decoded)
        })
        .collect::<Vec<_>>()
        .join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    let mut q: Vec<(&str, &str)> = query.to_vec();
    q.sort();
    let cq = q
        .iter()
        .map(|(k, v)| format!("{}={}", sdk_quote(k), sdk_quote(v)))
        .collect::<Vec<_>>()
        .join("&");
    let ch = signed
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let body_hash = hex::encode(Sha256::digest(body));
    let canonical = format!("{method}\n{uri}\n{cq}\n{ch}\n{names}\n{body_hash}");
    let sts = format!(
        "SDK-HMAC-SHA256\n{date}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(sk.as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("SDK-HMAC-SHA256 Access={ak}, SignedHeaders={names}, Signature={sig}")
}

pub fn sdk_date() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// A response: status, headers and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            self.status.is_success(),
            "expected success, got {} {}",
            self.status,
            self.body
        );
        self.body
    }

    /// Asserts an error status and that the message names `field`.
    #[track_caller]
    pub fn err(self, status: u16, field: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let code = self.body["error_code"].as_str().unwrap_or_default();
        assert!(!code.is_empty(), "no error_code in {}", self.body);
        let msg = self.body["error_msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "error_msg {msg:?} does not name {field:?}"
        );
        self.body
    }
}

impl Client {
    pub fn new(base: &str, auth: Auth, project: &str) -> Self {
        Self::with_tls(base, auth, project, &ClientTls::default())
    }

    /// Over HTTPS, verifying the server as `tls` says (and presenting its certificate).
    pub fn with_tls(base: &str, auth: Auth, project: &str, tls: &ClientTls) -> Self {
        Self {
            base: base.to_owned(),
            auth,
            project: project.to_owned(),
            http: tls
                .builder()
                .unwrap()
                .pool_max_idle_per_host(16)
                .build()
                .unwrap(),
        }
    }

    /// The same client connecting from another loopback address (`127.0.0.2`, …: every
    /// 127/8 address is this host's), for limits kept per source address.
    pub fn with_source(mut self, ip: std::net::IpAddr) -> Self {
        self.http = ClientTls::default()
            .builder()
            .unwrap()
            .local_address(ip)
            .build()
            .unwrap();
        self
    }

    /// `/v1/{project}` + rest.
    pub fn v1(&self, rest: &str) -> String {
        format!("/v1/{}{rest}", self.project)
    }

    pub fn v2(&self, rest: &str) -> String {
        format!("/v2/{}{rest}", self.project)
    }

    /// Sends a request the way the SDK does (JSON content type even without a body,
    /// X-Project-Id, SDK-HMAC-SHA256 over content-type;host;user-agent;x-project-id;x-sdk-date).
    pub async fn raw(&self, method: &str, path_and_query: &str, body: Option<Vec<u8>>) -> Resp {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let pairs: Vec<(String, String)> = form_urlencoded_pairs(query);
        let pair_refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let host = self
            .base
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        let body = body.unwrap_or_default();
        let ct = if body.is_empty() {
            "application/json"
        } else {
            "application/json;charset=utf-8"
        };
        let ua = "huaweicloud-usdk-python/3.0";
        let mut req = self
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path_and_query}", self.base),
            )
            .header("Content-Type", ct)
            .header("User-Agent", ua)
            .body(body.clone());
        match &self.auth {
            Auth::Signed { ak, sk } => {
                let date = sdk_date();
                let authz = sdk_sign(
                    ak,
                    sk,
                    method,
                    path,
                    &pair_refs,
                    &[
                        ("Content-Type", ct),
                        ("Host", &host),
                        ("User-Agent", ua),
                        ("X-Project-Id", &self.project),
                    ],
                    &body,
                    &date,
                );
                req = req
                    .header("X-Project-Id", &self.project)
                    .header("X-Sdk-Date", date)
                    .header("Authorization", authz);
            }
            Auth::Token(t) => req = req.header("X-Auth-Token", t),
            Auth::None => {}
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.raw("POST", path, Some(serde_json::to_vec(&body).unwrap()))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.raw("PUT", path, Some(serde_json::to_vec(&body).unwrap()))
            .await
    }
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let d = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

/// Polls every 20 ms until `f` returns Some, or panics after 10 s.
pub async fn eventually<T, F, Fut>(f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    vpcep_tests::harness::poll(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "the condition",
        f,
    )
    .await
}
