//! API load generator (`cargo xtask bench api`, and the smoke test in tests/tests/api): starts
//! two in-process servers on the given database, one over plain HTTP and one over HTTPS
//! (mutual TLS offered, as a control plane with agents runs), prepares a provider/consumer
//! set-up, then measures signed reads and writes from concurrent clients over loopback,
//! alternating between the two so that both see the same machine and database; and the
//! TLS handshakes per second against plain TCP connects.
use std::{
    fmt,
    net::SocketAddr,
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

use crate::harness::{Pki, test_config};

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
    #[error("TLS client set-up failed")]
    Tls(#[from] vpcep::tls::TlsError),
    #[error("connecting to the server failed")]
    Connect(#[from] std::io::Error),
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

/// Reads and writes over one transport.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub reads: Stats,
    pub writes: Stats,
}

/// New connections per second from the clients: plain TCP connects, and full TLS
/// handshakes (no session resumption) to the HTTPS server.
#[derive(Debug, Clone, Default)]
pub struct Handshakes {
    pub tcp_per_sec: f64,
    pub tls_per_sec: f64,
    pub tls_version: String,
    pub errors: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub backend: String,
    pub concurrency: usize,
    pub plain: Transport,
    pub tls: Transport,
    pub handshakes: Handshakes,
}

impl Report {
    /// What TLS costs in reads/s, in percent of plain HTTP's (negative: TLS was faster).
    pub fn tls_read_cost(&self) -> f64 {
        100.0 * (1.0 - self.tls.reads.per_sec / self.plain.reads.per_sec.max(f64::MIN_POSITIVE))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, t) in [("http", &self.plain), ("https", &self.tls)] {
            for (kind, s) in [("reads", &t.reads), ("writes", &t.writes)] {
                writeln!(
                    f,
                    "{:<10} {:<5} {:<6} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} errors, {} clients)",
                    self.backend,
                    name,
                    kind,
                    s.per_sec,
                    s.p50.as_secs_f64() * 1e3,
                    s.p99.as_secs_f64() * 1e3,
                    s.requests,
                    s.errors,
                    self.concurrency,
                )?;
            }
        }
        let write_cost = 100.0
            * (1.0 - self.tls.writes.per_sec / self.plain.writes.per_sec.max(f64::MIN_POSITIVE));
        writeln!(
            f,
            "{:<10} TLS costs {:.1} % of reads/s and {:.1} % of writes/s (keep-alive; target: reads <= 10 %)",
            self.backend,
            self.tls_read_cost(),
            write_cost,
        )?;
        let h = &self.handshakes;
        writeln!(
            f,
            "{:<10} new connections: {:.0} full {} handshakes/s, {:.0} TCP connects/s ({} clients, {} errors)",
            self.backend, h.tls_per_sec, h.tls_version, h.tcp_per_sec, self.concurrency, h.errors,
        )
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
    let pki = Pki::new();
    let server = Server::start(store.clone(), credentials(), config.clone()).await?;
    let tls_server = Server::start_tls(store, credentials(), config, pki.server_files()).await?;
    let pool =
        |b: reqwest::ClientBuilder| b.pool_max_idle_per_host(opts.concurrency.max(1)).build();
    let (http, https) = (
        pool(reqwest::Client::builder())?,
        pool(pki.client().builder()?)?,
    );
    let client = |project: &str, tls: bool| {
        let s = if tls { &tls_server } else { &server };
        Client {
            http: if tls { https.clone() } else { http.clone() },
            base: s.url(),
            host: s.addr.to_string(),
            project: project.to_owned(),
        }
    };
    let (op, provider, consumer) = (
        client("", false),
        client("provider", false),
        client("consumer", false),
    );
    let over = |tls: bool| (client("provider", tls), client("consumer", tls));

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

    // Each transport's phases in short rounds, alternating, so that a change in the
    // machine's load during the run falls on both: two identical plain servers measured so
    // differ by up to 10 % with 2 rounds of 3 s (docs/benchmarks.md).
    const ROUNDS: u32 = 5;
    let round = opts.duration / ROUNDS;
    let (mut plain, mut tls) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        for (t, out) in [(false, &mut plain), (true, &mut tls)] {
            let (p, c) = over(t);
            out.reads
                .add(reads(opts, round, p, c, eps.clone(), sid.clone()).await?);
        }
    }
    for _ in 0..ROUNDS {
        for (t, out) in [(false, &mut plain), (true, &mut tls)] {
            let (_, c) = over(t);
            out.writes
                .add(writes(opts, round, c, ep_body.clone()).await?);
        }
    }
    let handshakes = handshakes(opts, tls_server.addr, &pki).await?;
    drop(tls_server);
    drop(server);
    Ok(Report {
        backend,
        concurrency: opts.concurrency,
        plain: plain.stats(),
        tls: tls.stats(),
        handshakes,
    })
}

/// Show endpoint, list endpoints (page of 10), show service.
async fn reads(
    opts: &BenchOptions,
    length: Duration,
    provider: Client,
    consumer: Client,
    eps: Arc<Vec<String>>,
    sid: String,
) -> Result<Sample, BenchError> {
    phase(opts, length, move |i: usize| {
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
    })
    .await
}

/// Create an endpoint (address assignment, quota and whitelist checks), delete it.
async fn writes(
    opts: &BenchOptions,
    length: Duration,
    consumer: Client,
    body: Arc<Value>,
) -> Result<Sample, BenchError> {
    phase(opts, length, move |_i: usize| {
        let (c, body) = (consumer.clone(), body.clone());
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
    })
    .await
}

/// TCP connects, then full TLS handshakes (a client config without resumption, so each
/// one costs the server its key exchange and signature), from `concurrency` clients for a
/// few seconds each; every connection is closed at once.
async fn handshakes(
    opts: &BenchOptions,
    addr: SocketAddr,
    pki: &Pki,
) -> Result<Handshakes, BenchError> {
    use rustls::{ClientConfig, RootCertStore, client::Resumption};
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let length = opts.duration.min(Duration::from_secs(3));
    let mut roots = RootCertStore::empty();
    let io = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    for cert in CertificateDer::pem_file_iter(pki.ca_file()).map_err(|e| io(&e))? {
        roots.add(cert.map_err(|e| io(&e))?).map_err(|e| io(&e))?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| io(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let version = Arc::new(std::sync::Mutex::new(String::new()));
    let count = |tls: bool| {
        let (connector, name, version) = (connector.clone(), name.clone(), version.clone());
        async move {
            let deadline = Instant::now() + length;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..opts.concurrency.max(1) {
                let (connector, name, version) = (connector.clone(), name.clone(), version.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut done, mut errors) = (0usize, 0usize);
                    while Instant::now() < deadline {
                        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                            errors += 1;
                            continue;
                        };
                        if !tls {
                            done += 1;
                            continue;
                        }
                        match connector.connect(name.clone(), tcp).await {
                            Ok(s) => {
                                done += 1;
                                if let Some(v) = s.get_ref().1.protocol_version()
                                    && let Ok(mut g) = version.lock()
                                {
                                    *g = format!("{v:?}");
                                }
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (done, errors)
                }));
            }
            let (mut done, mut errors) = (0, 0);
            for t in tasks {
                if let Ok((d, e)) = t.await {
                    done += d;
                    errors += e;
                }
            }
            (done as f64 / start.elapsed().as_secs_f64(), errors)
        }
    };
    let (tcp_per_sec, e1) = count(false).await;
    let (tls_per_sec, e2) = count(true).await;
    let tls_version = version.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(Handshakes {
        tcp_per_sec,
        tls_per_sec,
        tls_version,
        errors: e1 + e2,
    })
}

/// The latencies and errors of one or more runs of a phase, and the time they took.
#[derive(Debug, Default)]
struct Sample {
    lat: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    fn stats(mut self) -> Stats {
        self.lat.sort();
        let lat = &self.lat;
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            requests: lat.len(),
            errors: self.errors,
            per_sec: lat.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    reads: Sample,
    writes: Sample,
}

impl Samples {
    fn stats(self) -> Transport {
        Transport {
            reads: self.reads.stats(),
            writes: self.writes.stats(),
        }
    }
}

/// Runs `op` from `concurrency` workers for `length`; each call returns the statuses of
/// the requests it made, timed together and split evenly.
async fn phase<F, Fut>(opts: &BenchOptions, length: Duration, op: F) -> Result<Sample, BenchError>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<u16>, BenchError>> + Send,
{
    let start = Instant::now();
    let deadline = start + length;
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
    let mut sample = Sample::default();
    for t in tasks {
        if let Ok(r) = t.await {
            let (l, e) = r?;
            sample.lat.extend(l);
            sample.errors += e;
        }
    }
    sample.elapsed = start.elapsed();
    Ok(sample)
}
