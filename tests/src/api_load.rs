//! API load generator (`cargo xtask bench api`, and the smoke test in tests/tests/api): starts
//! an in-process server on the given database, prepares a provider/consumer set-up, then measures signed reads and writes from
//! concurrent clients over loopback HTTP in the same process.
use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use vpcep::{
    api::{
        Config, Credentials, CredentialsFile,
        auth::{self, AkSk},
    },
    server::{ServeError, Server},
    store::{Store, StoreError},
};

use crate::harness::test_config;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `sqlite://PATH` or `postgres://…` (a fresh database is best).
    pub db_url: String,
    /// Length of each phase (reads, then writes).
    pub duration: Duration,
    /// Concurrent clients.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    #[error("set-up request {what} failed with {status}: {body}")]
    Setup {
        what: &'static str,
        status: u16,
        body: String,
    },
}

/// Throughput and latency of one kind of request.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: usize,
    pub errors: usize,
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub backend: String,
    pub concurrency: usize,
    pub reads: Stats,
    pub writes: Stats,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in [("reads", &self.reads), ("writes", &self.writes)] {
            writeln!(
                f,
                "{:<10} {:<6} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} errors, {} clients)",
                self.backend,
                name,
                s.per_sec,
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.requests,
                s.errors,
                self.concurrency,
            )?;
        }
        Ok(())
    }
}

const OPERATOR: &str = "bench-operator";

fn credentials() -> Credentials {
    let mut file = CredentialsFile {
        operator_tokens: vec![OPERATOR.to_owned()],
        ..Default::default()
    };
    for p in ["provider", "consumer"] {
        file.credentials.push(AkSk {
            ak: format!("AK-{p}"),
            sk: format!("SK-{p}"),
            project_id: p.to_owned(),
            domain_id: None,
        });
    }
    Credentials::new(file)
}

/// A signing client for one project (or the operator when `project` is empty).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
    project: String,
}

impl Client {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), BenchError> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let method_v =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self
            .http
            .request(method_v, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(bytes.clone());
        if self.project.is_empty() {
            req = req.header("x-auth-token", OPERATOR);
        } else {
            let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
            let authz = auth::sign(
                &format!("AK-{}", self.project),
                &format!("SK-{}", self.project),
                method,
                raw_path,
                raw_query,
                &[
                    ("content-type", "application/json"),
                    ("host", &self.host),
                    ("x-project-id", &self.project),
                    ("x-sdk-date", &date),
                ],
                &bytes,
                &date,
            );
            req = req
                .header("x-project-id", &self.project)
                .header("x-sdk-date", date)
                .header("authorization", authz);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    async fn must(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Value, BenchError> {
        let body = (method != "GET" && method != "DELETE").then_some(body);
        let (status, v) = self.send(method, path, body.as_ref()).await?;
        if status >= 300 {
            return Err(BenchError::Setup {
                what,
                status,
                body: v.to_string(),
            });
        }
        Ok(v)
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

/// Runs the read phase then the write phase against `opts.db_url`.
pub async fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let store = Store::open(&opts.db_url, 100_000).await?;
    let backend = format!("{:?}", store.backend()).to_lowercase();
    let config = Config {
        quota_endpoints: 1_000_000,
        ..test_config()
    };
    let server = Server::start(store, credentials(), config).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency.max(1))
        .build()?;
    let client = |project: &str| Client {
        http: http.clone(),
        base: server.url(),
        host: server.addr.to_string(),
        project: project.to_owned(),
    };
    let (op, provider, consumer) = (client(""), client("provider"), client("consumer"));

    // Set-up: one node, provider VPC + backend NIC, consumer VPC with a /16 subnet.
    op.must(
        "node",
        "PUT",
        "/inventory/nodes/bench1",
        json!({"underlay_ip": "192.0.2.1"}),
    )
    .await?;
    let pv = op
        .must(
            "vpc",
            "POST",
            "/inventory/vpcs",
            json!({"project_id": "provider", "cidr": "10.0.0.0/16"}),
        )
        .await?;
    let ps = op
        .must(
            "subnet",
            "POST",
            "/inventory/subnets",
            json!({"vpc_id": id(&pv), "cidr": "10.0.0.0/24"}),
        )
        .await?;
    let port = op
        .must(
            "port",
            "POST",
            "/inventory/ports",
            json!({"subnet_id": id(&ps), "node": "bench1"}),
        )
        .await?;
    let cv = op
        .must(
            "vpc",
            "POST",
            "/inventory/vpcs",
            json!({"project_id": "consumer", "cidr": "10.0.0.0/16"}),
        )
        .await?;
    let cs = op
        .must(
            "subnet",
            "POST",
            "/inventory/subnets",
            json!({"vpc_id": id(&cv), "cidr": "10.0.0.0/16"}),
        )
        .await?;
    let svc = provider
        .must(
            "service",
            "POST",
            "/v1/provider/vpc-endpoint-services",
            json!({"port_id": id(&port), "vpc_id": id(&pv), "server_type": "VM", "approval_enabled": false,
                   "ports": [{"client_port": 8080, "server_port": 80, "protocol": "TCP"}]}),
        )
        .await?;
    let sid = id(&svc);
    provider
        .must(
            "whitelist",
            "POST",
            &format!("/v1/provider/vpc-endpoint-services/{sid}/permissions/action"),
            json!({"permissions": ["*"], "action": "add"}),
        )
        .await?;
    // Wait for the service to become available.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = provider
            .must(
                "show",
                "GET",
                &format!("/v1/provider/vpc-endpoint-services/{sid}"),
                Value::Null,
            )
            .await?;
        if s["status"] == "available" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ep_body =
        Arc::new(json!({"endpoint_service_id": sid, "vpc_id": id(&cv), "subnet_id": id(&cs)}));
    let mut eps = Vec::new();
    for _ in 0..20 {
        eps.push(id(&consumer
            .must(
                "endpoint",
                "POST",
                "/v1/consumer/vpc-endpoints",
                (*ep_body).clone(),
            )
            .await?));
    }
    let eps = Arc::new(eps);

    // Reads: show endpoint, list endpoints (page of 10), show service.
    let reads = phase(opts, {
        let consumer = consumer.clone();
        let provider = provider.clone();
        let eps = eps.clone();
        let sid = sid.clone();
        move |i: usize| {
            let (c, p, eps, sid) = (consumer.clone(), provider.clone(), eps.clone(), sid.clone());
            async move {
                let (status, _) = match i % 3 {
                    0 => {
                        c.send(
                            "GET",
                            &format!("/v1/consumer/vpc-endpoints/{}", eps[i % eps.len()]),
                            None,
                        )
                        .await?
                    }
                    1 => {
                        c.send("GET", "/v1/consumer/vpc-endpoints?limit=10", None)
                            .await?
                    }
                    _ => {
                        p.send(
                            "GET",
                            &format!("/v1/provider/vpc-endpoint-services/{sid}"),
                            None,
                        )
                        .await?
                    }
                };
                Ok(vec![status])
            }
        }
    })
    .await?;

    // Writes: create an endpoint (address assignment, quota and whitelist checks), delete it.
    let writes = phase(opts, {
        let consumer = consumer.clone();
        move |_i: usize| {
            let (c, body) = (consumer.clone(), ep_body.clone());
            async move {
                let (s1, e) = c
                    .send("POST", "/v1/consumer/vpc-endpoints", Some(&body))
                    .await?;
                let mut out = vec![s1];
                if s1 < 300 {
                    let (s2, _) = c
                        .send(
                            "DELETE",
                            &format!("/v1/consumer/vpc-endpoints/{}", id(&e)),
                            None,
                        )
                        .await?;
                    out.push(s2);
                }
                Ok(out)
            }
        }
    })
    .await?;
    drop(server);
    Ok(Report {
        backend,
        concurrency: opts.concurrency,
        reads,
        writes,
    })
}

/// Runs `op` from `concurrency` workers for `duration`; each call returns the statuses of
/// the requests it made, timed together and split evenly.
async fn phase<F, Fut>(opts: &BenchOptions, op: F) -> Result<Stats, BenchError>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<u16>, BenchError>> + Send,
{
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = Vec::new();
    for w in 0..opts.concurrency.max(1) {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = w;
            while Instant::now() < deadline {
                let t = Instant::now();
                let statuses = op(i).await?;
                let per = t.elapsed() / statuses.len().max(1) as u32;
                for s in statuses {
                    if s >= 300 {
                        errors += 1;
                    }
                    lat.push(per);
                }
                i += 1;
            }
            Ok::<_, BenchError>((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok(r) = t.await {
            let (l, e) = r?;
            lat.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Stats {
        requests: lat.len(),
        errors,
        per_sec: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}
