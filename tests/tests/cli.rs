//! The `vpcep` command-line tool, end to end: the real binary as a child process against a
//! real in-process control plane on a loopback port with a fresh SQLite file per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use vpcep::{
    api::{Credentials, CredentialsFile, auth},
    server::Server,
};
use vpcep_tests::{
    harness::{
        ChildGuard, TempDir,
        control_plane::{sqlite_url, start_server},
        poll, spawn_guarded, test_config,
    },
    vpcep_bin,
};

const OPERATOR: &str = "operator-secret";
const CONSUMER_TOKEN: &str = "consumer-token";

fn credentials() -> Credentials {
    let aksk = |ak: &str, sk: &str, p: &str| auth::AkSk {
        ak: ak.into(),
        sk: sk.into(),
        project_id: p.into(),
        domain_id: None,
    };
    Credentials::new(CredentialsFile {
        operator_tokens: vec![OPERATOR.into()],
        credentials: vec![
            aksk("AK-PROVIDER", "SK-provider", "proj-provider"),
            aksk("AK-CONSUMER", "SK-consumer", "proj-consumer"),
        ],
        tokens: vec![auth::TenantToken {
            token: CONSUMER_TOKEN.into(),
            project_id: "proj-consumer".into(),
            domain_id: None,
        }],
        agents: vec![],
    })
}

/// One test's world: a control plane on a fresh database, and a HOME of its own so that no
/// profile file of the machine is read.
struct World {
    server: Server,
    home: TempDir,
    _db: TempDir,
}

/// What a `vpcep` run printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the exit status and that stderr names the API error code.
    #[track_caller]
    fn fails(&self, code: i32, error_code: &str) {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(error_code),
            "stderr does not name {error_code}: {}",
            self.stderr
        );
    }
}

/// A spawned `vpcep`, killed by PID when dropped before it exits (even when the test fails).
/// Its stdout and stderr go to files, so that waiting for it needs no thread per pipe.
struct Child {
    guard: ChildGuard,
    out: TempDir,
}

impl Child {
    async fn finish(mut self) -> Run {
        let guard = &mut self.guard;
        let status = poll(
            Duration::from_secs(60),
            Duration::from_millis(10),
            "vpcep to finish",
            || {
                let status = guard.try_wait().unwrap();
                async move { status }
            },
        )
        .await;
        let read = |name: &str| {
            String::from_utf8_lossy(&std::fs::read(self.out.0.join(name)).unwrap()).into_owned()
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }
}

#[derive(Clone, Copy)]
enum Who {
    Operator,
    Provider,
    Consumer,
    /// The consumer through its tenant token instead of AK/SK.
    ConsumerToken,
    Nobody,
}

impl World {
    async fn new() -> Self {
        let db = TempDir::new("cli");
        let server = start_server(&sqlite_url(&db.0), credentials(), test_config()).await;
        Self {
            server,
            home: TempDir::new("cli"),
            _db: db,
        }
    }

    fn env(&self, who: Who) -> Vec<(&'static str, String)> {
        let mut env = vec![("VPCEP_URL", self.server.url())];
        let mut add = |k: &'static str, v: &str| env.push((k, v.to_owned()));
        match who {
            Who::Operator => add("VPCEP_TOKEN", OPERATOR),
            Who::Provider => {
                add("VPCEP_AK", "AK-PROVIDER");
                add("VPCEP_SK", "SK-provider");
                add("VPCEP_PROJECT_ID", "proj-provider");
            }
            Who::Consumer => {
                add("VPCEP_AK", "AK-CONSUMER");
                add("VPCEP_SK", "SK-consumer");
                add("VPCEP_PROJECT_ID", "proj-consumer");
            }
            Who::ConsumerToken => {
                add("VPCEP_TOKEN", CONSUMER_TOKEN);
                add("VPCEP_PROJECT_ID", "proj-consumer");
            }
            Who::Nobody => {}
        }
        env
    }

    fn spawn_with(&self, env: &[(&str, String)], args: &[&str]) -> Child {
        let out = TempDir::new("cli-out");
        let file = |name: &str| std::fs::File::create(out.0.join(name)).unwrap();
        let guard = spawn_guarded(
            std::process::Command::new(vpcep_bin())
                .args(args)
                .env_clear()
                .env("HOME", &self.home.0)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .stdout(file("stdout"))
                .stderr(file("stderr")),
        );
        Child { guard, out }
    }

    fn spawn(&self, who: Who, args: &[&str]) -> Child {
        self.spawn_with(&self.env(who), args)
    }

    async fn run(&self, who: Who, args: &[&str]) -> Run {
        self.spawn(who, args).finish().await
    }

    async fn run_with(&self, env: &[(&str, String)], args: &[&str]) -> Run {
        self.spawn_with(env, args).finish().await
    }

    /// Runs with `-o json` and returns the parsed output.
    async fn json(&self, who: Who, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        self.run(who, &a).await.json()
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
        .to_owned()
}

/// The inventory for the story: a node, a provider VPC with a backend NIC, a consumer VPC.
/// Returns (provider vpc, provider port, consumer vpc, consumer subnet).
async fn inventory(w: &World) -> (String, String, String, String) {
    use Who::Operator as Op;
    let node = w
        .json(
            Op,
            &["node", "register", "node1", "--underlay-ip", "10.255.0.1"],
        )
        .await;
    assert!(node["snat_ip"].as_str().unwrap().starts_with("198.19."));
    let pvpc = w
        .json(
            Op,
            &[
                "vpc",
                "create",
                "--owner",
                "proj-provider",
                "--cidr",
                "10.0.0.0/16",
            ],
        )
        .await;
    let pvpc = s(&pvpc, "id");
    let psub = w
        .json(
            Op,
            &[
                "subnet",
                "create",
                "--vpc-id",
                &pvpc,
                "--cidr",
                "10.0.1.0/24",
            ],
        )
        .await;
    let port = w
        .json(
            Op,
            &[
                "port",
                "create",
                "--subnet-id",
                &s(&psub, "id"),
                "--node",
                "node1",
            ],
        )
        .await;
    let cvpc = w
        .json(
            Op,
            &[
                "vpc",
                "create",
                "--owner",
                "proj-consumer",
                "--cidr",
                "10.1.0.0/16",
                "--name",
                "consumer",
            ],
        )
        .await;
    let cvpc = s(&cvpc, "id");
    let csub = w
        .json(
            Op,
            &[
                "subnet",
                "create",
                "--vpc-id",
                &cvpc,
                "--cidr",
                "10.1.1.0/24",
                "--dns-address",
                "10.1.1.1",
            ],
        )
        .await;
    assert_eq!(
        s(&csub, "dns_address"),
        "10.1.1.1",
        "the subnet's DNS address"
    );
    (pvpc, s(&port, "id"), cvpc, s(&csub, "id"))
}

/// Polls the provider's pending connections until one shows up; returns its id.
async fn pending_connection(w: &World, sid: &str) -> String {
    for _ in 0..200 {
        let conns = w
            .json(
                Who::Provider,
                &["connection", "list", sid, "--status", "pendingAcceptance"],
            )
            .await;
        if let Some(c) = conns.as_array().unwrap().first() {
            return s(c, "id");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending connection appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_consumer_story() {
    use Who::{Consumer, Operator, Provider};
    let w = World::new().await;
    let (pvpc, port, cvpc, csub) = inventory(&w).await;

    // Inventory tables have headers and rows.
    let vpcs = w.run(Operator, &["vpc", "list"]).await;
    let header = vpcs.ok().stdout.lines().next().unwrap().to_owned();
    assert!(
        header.starts_with("ID") && header.contains("CIDR"),
        "{header}"
    );
    assert!(vpcs.stdout.contains(&pvpc) && vpcs.stdout.contains(&cvpc));
    let only = w
        .json(Operator, &["vpc", "ls", "--owner", "proj-consumer"])
        .await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    let nics = w.json(Operator, &["nic", "list", "--node", "node1"]).await;
    assert_eq!(s(&nics[0], "id"), port);

    // The provider creates a service (AK/SK signed) and waits for it to become available.
    let svc = w
        .json(
            Provider,
            &[
                "service",
                "create",
                "--port-id",
                &port,
                "--vpc-id",
                &pvpc,
                "--port",
                "80:8080",
                "--port",
                "53/udp",
                "--name",
                "web",
                "--tag",
                "env=prod",
                "--private-dns-name",
                "API.example.internal",
                "--wait",
            ],
        )
        .await;
    assert_eq!(s(&svc, "status"), "available");
    assert_eq!(s(&svc, "private_dns_name"), "api.example.internal");
    let sid = s(&svc, "id");
    let name = s(&svc, "service_name");
    let table = w.run(Provider, &["service", "list"]).await;
    let mut lines = table.ok().stdout.lines();
    let header = lines.next().unwrap();
    for h in ["ID", "NAME", "STATUS", "PORTS"] {
        assert!(header.contains(h), "{header}");
    }
    let row = lines.next().unwrap();
    assert!(
        row.contains(&sid) && row.contains("80:8080/TCP,53:53/UDP") && row.contains("available"),
        "{row}"
    );
    // Show by full name resolves through describe.
    assert_eq!(
        s(&w.json(Provider, &["svc", "show", &name]).await, "id"),
        sid
    );
    let shown = w.run(Provider, &["service", "show", &sid]).await;
    assert!(shown.ok().stdout.starts_with("FIELD"), "{}", shown.stdout);

    // The consumer cannot see it until whitelisted.
    w.run(Consumer, &["service", "show", &sid])
        .await
        .fails(3, "VPCEP.0404");
    w.run(Provider, &["permission", "add", &sid, "proj-consumer"])
        .await
        .ok();
    let perms = w.json(Provider, &["perm", "list", &sid]).await;
    assert_eq!(s(&perms[0], "permission"), "iam:domain::proj-consumer");
    let public = w.json(Consumer, &["service", "public"]).await;
    assert_eq!(s(&public[0], "id"), sid);
    let table = w.run(Consumer, &["service", "public"]).await;
    let row = table.ok().stdout.lines().nth(1).unwrap().to_owned();
    assert!(
        row.contains(&sid) && row.contains("  80/TCP,53/UDP  "),
        "{row}"
    );
    // The consumer is shown the client side of the ports, none of the provider's network, nor
    // its project (here also its domain: the credentials give it none of its own).
    for by in [&sid, &name] {
        let shown = w.run(Consumer, &["service", "show", by]).await;
        let out = &shown.ok().stdout;
        let ports = out.lines().find(|l| l.starts_with("ports")).unwrap();
        assert!(ports.ends_with("  80/TCP,53/UDP"), "{ports}");
        for secret in [&pvpc, &port, "proj-provider", "env", "10.0.1."] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
    }

    // The consumer connects with --wait; the endpoint waits for acceptance.
    let waiting = w.spawn(
        Consumer,
        &[
            "endpoint",
            "create",
            "--service-id",
            &sid,
            "--vpc-id",
            &cvpc,
            "--subnet-id",
            &csub,
            "--whitelist",
            "10.1.1.0/24",
            "--enable-dns",
            "--wait",
            "--timeout",
            "60",
            "-o",
            "json",
        ],
    );
    let eid = pending_connection(&w, &sid).await;
    let accepted = w.run(Provider, &["connection", "accept", &sid, &eid]).await;
    assert!(accepted.ok().stdout.contains("accepted"));
    let ep = waiting.finish().await.json();
    assert_eq!(
        (s(&ep, "id"), s(&ep, "status")),
        (eid.clone(), "accepted".to_owned())
    );
    assert_eq!(ep["whitelist"][0], "10.1.1.0/24");
    // Accepted with DNS on: its names (docs/api.md, internal domain names).
    assert_eq!(
        ep["dns_names"],
        serde_json::json!([
            format!("{eid}.vpcep.local-1.internal"),
            format!("web.{sid}.vpcep.local-1.internal"),
            "api.example.internal"
        ])
    );

    // Reject: the endpoint says so, and waiting for acceptance fails at once.
    w.run(Provider, &["conn", "reject", &sid, &eid]).await.ok();
    let ep = w.json(Consumer, &["endpoint", "show", &eid]).await;
    assert_eq!(s(&ep, "status"), "rejected");
    assert_eq!(
        ep["dns_names"],
        serde_json::json!([]),
        "no names once rejected"
    );
    // A name that is not one: exit 1 naming the field.
    let r = w
        .run(
            Provider,
            &["service", "update", &sid, "--private-dns-name", "no_name"],
        )
        .await;
    r.fails(1, "VPCEP.0002");
    assert!(r.stderr.contains("private_dns_name"), "{}", r.stderr);
    let r = w
        .run(Consumer, &["endpoint", "wait", &eid, "--timeout", "5"])
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("rejected"), "{}", r.stderr);
    w.run(Provider, &["connection", "accept", &sid, &eid])
        .await
        .ok();
    let ep = w
        .json(Consumer, &["ep", "wait", &eid, "--timeout", "5"])
        .await;
    assert_eq!(s(&ep, "status"), "accepted");

    // Whitelist update.
    let ep = w
        .json(
            Consumer,
            &["endpoint", "whitelist", &eid, "192.168.0.0/24", "10.1.1.7"],
        )
        .await;
    assert_eq!(ep["whitelist"].as_array().unwrap().len(), 2);
    assert_eq!(ep["enable_whitelist"], true);
    let ep = w.json(Consumer, &["endpoint", "whitelist", &eid]).await;
    assert_eq!(ep["enable_whitelist"], false);

    // Tags.
    w.run(
        Provider,
        &["tag", "add", "service", &sid, "team=net", "tier"],
    )
    .await
    .ok();
    let tags = w.json(Provider, &["tag", "list", "service", &sid]).await;
    assert_eq!(tags.as_array().unwrap().len(), 3, "{tags}");
    w.run(
        Provider,
        &["tag", "remove", "service", &sid, "env", "team=other"],
    )
    .await
    .ok();
    let tags = w.json(Provider, &["tag", "ls", "svc", &sid]).await;
    let keys: Vec<&str> = tags
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["team", "tier"]);
    let project = w.run(Provider, &["tag", "list", "service"]).await;
    assert!(project.ok().stdout.starts_with("KEY"), "{}", project.stdout);
    w.run(Consumer, &["tag", "add", "endpoint", &eid, "app=db"])
        .await
        .ok();
    assert_eq!(
        w.json(Consumer, &["tag", "list", "endpoint", &eid]).await[0]["value"],
        "db"
    );

    // Quotas: the tenant's usage, and an operator override that then refuses a create.
    let q = w.json(Consumer, &["quota", "show"]).await;
    let ep_quota = q
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "endpoint")
        .unwrap()
        .clone();
    assert_eq!(
        (ep_quota["used"].as_i64(), ep_quota["quota"].as_i64()),
        (Some(1), Some(50))
    );
    let set = w
        .json(
            Operator,
            &["quota", "set", "proj-consumer", "--endpoints", "1"],
        )
        .await;
    assert_eq!(set[0]["endpoint"], 1);
    assert_eq!(
        w.json(Operator, &["quota", "get", "proj-consumer"]).await[0]["endpoint"],
        1
    );
    // The API request rate of another project's credentials.
    let rate = [
        "quota",
        "set",
        "proj-rated",
        "--api-rate-per-second",
        "20",
        "--api-rate-burst",
        "40",
    ];
    let set = w.json(Operator, &rate).await;
    assert_eq!(
        (
            set[0]["api_rate_per_second"].as_i64(),
            set[0]["api_rate_burst"].as_i64()
        ),
        (Some(20), Some(40))
    );
    let table = w.run(Operator, &["quota", "get", "proj-rated"]).await;
    let out = &table.ok().stdout;
    assert!(out.contains("API_RATE") && out.contains("40"), "{out}");
    w.run(
        Consumer,
        &[
            "ep",
            "create",
            "--service-id",
            &sid,
            "--vpc-id",
            &cvpc,
            "--subnet-id",
            &csub,
        ],
    )
    .await
    .fails(1, "VPCEP.0004");

    // Update and rename.
    let upd = w
        .json(
            Provider,
            &[
                "service",
                "update",
                &sid,
                "--approval",
                "false",
                "--port",
                "443:8443",
            ],
        )
        .await;
    assert_eq!(upd["approval_enabled"], false);
    assert_eq!(upd["ports"][0]["client_port"], 443);
    // Connection limits: the region default on create, set by update; out of range is the
    // API's 400 naming the field (exit 1), not a number is a usage error (exit 2).
    assert_eq!(upd["max_connections"], 3000);
    let upd = w
        .json(
            Provider,
            &[
                "service",
                "update",
                &sid,
                "--max-connections",
                "100",
                "--max-new-connections-per-second",
                "20",
            ],
        )
        .await;
    assert_eq!(
        (
            &upd["max_connections"],
            &upd["max_new_connections_per_second"]
        ),
        (&json!(100), &json!(20))
    );
    let r = w
        .run(
            Provider,
            &["service", "update", &sid, "--max-connections", "3000000"],
        )
        .await;
    r.fails(1, "VPCEP.0002");
    assert!(r.stderr.contains("max_connections"), "{}", r.stderr);
    let r = w
        .run(
            Provider,
            &["service", "update", &sid, "--max-connections", "-1"],
        )
        .await;
    assert_eq!(r.code, 2, "{r:?}");
    let r = w.json(Provider, &["service", "rename", &sid, "web2"]).await;
    assert!(s(&r, "endpoint_service_name").contains(".web2."));

    // Deleting a service with an accepted endpoint conflicts (exit 5); the consumer deletes first.
    w.run(Provider, &["service", "delete", &sid])
        .await
        .fails(5, "VPCEP.0409");
    w.run(Consumer, &["endpoint", "delete", &eid]).await.ok();
    w.run(Consumer, &["endpoint", "show", &eid])
        .await
        .fails(3, "VPCEP.0404");
    // An endpoint's own, lower limit.
    let lim = w
        .json(
            Consumer,
            &[
                "endpoint",
                "create",
                "--service-id",
                &sid,
                "--vpc-id",
                &cvpc,
                "--subnet-id",
                &csub,
                "--max-connections",
                "7",
            ],
        )
        .await;
    assert_eq!(lim["max_connections"], 7, "{lim}");
    w.run(Consumer, &["endpoint", "delete", &s(&lim, "id")])
        .await
        .ok();
    let gone = w.run(Provider, &["service", "rm", &sid]).await;
    assert!(gone.ok().stdout.contains("deleted"));
    assert_eq!(
        w.json(Provider, &["service", "list"]).await,
        Value::Array(vec![])
    );

    // The inventory can be torn down in order; the node refuses while it has NICs.
    w.run(Operator, &["node", "delete", "node1"])
        .await
        .fails(5, "VPCEP.0409");
    w.run(Operator, &["port", "delete", &port]).await.ok();
    w.run(Operator, &["node", "delete", "node1"]).await.ok();
    assert_eq!(
        w.json(Operator, &["node", "list"]).await,
        Value::Array(vec![])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_errors_and_exit_codes() {
    let w = World::new().await;
    // A token works as well as AK/SK.
    assert_eq!(
        w.json(Who::ConsumerToken, &["endpoint", "list"]).await,
        Value::Array(vec![])
    );
    // Signed queries with characters that need encoding verify too.
    let r = w
        .json(Who::Provider, &["service", "list", "--name", "a b~,/+é"])
        .await;
    assert_eq!(r, Value::Array(vec![]));
    // A wrong secret key: the signature is refused.
    let mut env = w.env(Who::Provider);
    env.retain(|(k, _)| *k != "VPCEP_SK");
    env.push(("VPCEP_SK", "wrong".into()));
    w.run_with(&env, &["service", "list"])
        .await
        .fails(4, "VPCEP.0401");
    // An unknown token, and no credentials at all.
    let env = vec![
        ("VPCEP_URL", w.server.url()),
        ("VPCEP_TOKEN", "nope".to_owned()),
        ("VPCEP_PROJECT_ID", "proj-provider".to_owned()),
    ];
    w.run_with(&env, &["service", "list"])
        .await
        .fails(4, "VPCEP.0401");
    let mut env = w.env(Who::Nobody);
    env.push(("VPCEP_PROJECT_ID", "proj-provider".to_owned()));
    w.run_with(&env, &["service", "list"])
        .await
        .fails(4, "VPCEP.0401");
    // Another tenant's project: forbidden.
    w.run(
        Who::Consumer,
        &["service", "list", "--project-id", "proj-provider"],
    )
    .await
    .fails(4, "VPCEP.0403");
    // A tenant on the operator's inventory.
    w.run(Who::Provider, &["vpc", "list"])
        .await
        .fails(4, "VPCEP.0403");
    // Unknown ids.
    let id = uuid::Uuid::new_v4().to_string();
    w.run(Who::Provider, &["service", "show", &id])
        .await
        .fails(3, "VPCEP.0404");
    w.run(Who::Operator, &["node", "show", "nope"])
        .await
        .fails(3, "VPCEP.0404");
    // Validation errors name the field.
    w.run(
        Who::Operator,
        &["vpc", "create", "--owner", "p", "--cidr", "bad"],
    )
    .await
    .fails(1, "cidr");
    // Usage errors: clap's, and ours.
    let r = w.run(Who::Provider, &["service", "list", "--bogus"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    // A region default out of range stops the control plane before it serves.
    let r = w
        .run(
            Who::Operator,
            &["control-plane", "--default-max-connections", "3000000"],
        )
        .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--default-max-connections"),
        "{}",
        r.stderr
    );
    let r = w
        .run(
            Who::Provider,
            &[
                "service",
                "create",
                "--port-id",
                &id,
                "--vpc-id",
                &id,
                "--port",
                "80:x",
            ],
        )
        .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("port mapping"), "{}", r.stderr);
    // Bad configuration: exit 64.
    let r = w
        .run_with(
            &[("VPCEP_PROJECT_ID", "p".to_owned())],
            &["service", "list"],
        )
        .await;
    assert_eq!(r.code, 64, "{r:?}");
    let r = w
        .run(
            Who::Provider,
            &[
                "service",
                "list",
                "--config-file",
                "/nonexistent/vpcep.toml",
            ],
        )
        .await;
    assert_eq!(r.code, 64, "{r:?}");
    let r = w
        .run(Who::Provider, &["service", "list", "--profile", "missing"])
        .await;
    assert_eq!(r.code, 64, "{r:?}");
    // Nothing listens: a network error is exit 1.
    let env = vec![
        ("VPCEP_URL", "http://127.0.0.1:9".to_owned()),
        ("VPCEP_TOKEN", OPERATOR.to_owned()),
    ];
    let r = w.run_with(&env, &["node", "list"]).await;
    assert_eq!(r.code, 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_file_is_honoured() {
    let w = World::new().await;
    let dir = w.home.0.join(".config/vpcep");
    std::fs::create_dir_all(&dir).unwrap();
    let url = w.server.url();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "default_profile = \"admin\"\n\n\
             [profiles.admin]\nurl = \"{url}\"\ntoken = \"{OPERATOR}\"\n\n\
             [profiles.provider]\nurl = \"{url}\"\nak = \"AK-PROVIDER\"\nsk = \"SK-provider\"\n\
             project_id = \"proj-provider\"\n\n\
             [profiles.broken]\nurl = \"{url}\"\nak = \"AK-PROVIDER\"\nsk = \"bad\"\n\
             project_id = \"proj-provider\"\n"
        ),
    )
    .unwrap();
    // The default profile (operator token) from ~/.config/vpcep/config.toml.
    w.run_with(
        &[],
        &["node", "register", "n1", "--underlay-ip", "10.0.0.9"],
    )
    .await
    .ok();
    assert_eq!(
        w.json(Who::Nobody, &["node", "list"]).await[0]["name"],
        "n1"
    );
    // A named profile with AK/SK, by flag and by environment.
    let r = w.run_with(
        &[],
        &["--profile", "provider", "service", "list", "-o", "json"],
    );
    let r = r.await;
    assert_eq!(r.code, 2, "global options go after the verb: {r:?}");
    assert_eq!(
        w.json(Who::Nobody, &["service", "list", "--profile", "provider"])
            .await,
        Value::Array(vec![])
    );
    w.run_with(&[("VPCEP_PROFILE", "provider".into())], &["quota", "show"])
        .await
        .ok();
    w.run_with(&[], &["service", "list", "--profile", "broken"])
        .await
        .fails(4, "VPCEP.0401");
    // The environment wins over the profile's credentials.
    let env = vec![
        ("VPCEP_PROFILE", "broken".to_owned()),
        ("VPCEP_AK", "AK-PROVIDER".to_owned()),
        ("VPCEP_SK", "SK-provider".to_owned()),
    ];
    w.run_with(&env, &["service", "list"]).await.ok();
    // An explicit file elsewhere, and a broken one.
    let other = w.home.0.join("other.toml");
    std::fs::write(
        &other,
        format!("[profiles.default]\nurl = \"{url}\"\ntoken = \"{OPERATOR}\"\n"),
    )
    .unwrap();
    w.run_with(
        &[("VPCEP_CONFIG", other.display().to_string())],
        &["node", "list"],
    )
    .await
    .ok();
    std::fs::write(&other, "[profiles.default]\nurl = 1\n").unwrap();
    let r = w
        .run_with(
            &[],
            &["node", "list", "--config-file", other.to_str().unwrap()],
        )
        .await;
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("other.toml"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_generate() {
    let w = World::new().await;
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef vpcep"),
        ("fish", "complete -c vpcep"),
    ] {
        let r = w.run_with(&[], &["completions", shell]).await;
        r.ok();
        assert!(
            r.stdout.contains(marker),
            "{shell}: {}",
            &r.stdout[..r.stdout.len().min(300)]
        );
        assert!(r.stdout.contains("endpoint") && r.stdout.contains("control-plane"));
    }
    let r = w.run_with(&[], &["completions", "tcsh"]).await;
    assert_eq!(r.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_in_use_is_named() {
    let w = World::new().await;
    // AK/SK and a token both exported: AK/SK wins, and the 403 says so.
    let mut env = w.env(Who::Provider);
    env.push(("VPCEP_TOKEN", OPERATOR.to_owned()));
    let r = w.run_with(&env, &["vpc", "list"]).await;
    r.fails(4, "VPCEP.0403");
    assert!(
        r.stderr
            .contains("signed with AK \"AK-PROVIDER\" from VPCEP_AK/VPCEP_SK")
            && r.stderr.contains("the token from VPCEP_TOKEN is not used"),
        "{}",
        r.stderr
    );
    // -v names the credential and each request line before anything is sent.
    let r = w.run_with(&env, &["vpc", "list", "-v"]).await;
    r.fails(4, "VPCEP.0403");
    let url = w.server.url();
    assert!(
        r.stderr
            .contains("credentials: signed with AK \"AK-PROVIDER\"")
            && r.stderr.contains(&format!("> GET {url}/inventory/vpcs"))
            && r.stderr.contains("< 403"),
        "{}",
        r.stderr
    );
    let r = w.run(Who::Operator, &["node", "list", "--verbose"]).await;
    r.ok();
    assert!(
        r.stderr
            .contains("credentials: X-Auth-Token from VPCEP_TOKEN"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(OPERATOR),
        "a token is never printed: {}",
        r.stderr
    );
    // An unknown token and no credentials at all: the 401 says which.
    let env = vec![
        ("VPCEP_URL", url.clone()),
        ("VPCEP_TOKEN", "nope".to_owned()),
    ];
    let r = w.run_with(&env, &["node", "list"]).await;
    r.fails(4, "X-Auth-Token from VPCEP_TOKEN");
    let r = w.run(Who::Nobody, &["node", "list"]).await;
    r.fails(4, "no credentials sent");
    // A profile's credential is named with the profile and its file.
    let file = w.home.0.join("cli.toml");
    std::fs::write(
        &file,
        format!("[profiles.ops]\nurl = \"{url}\"\ntoken = \"wrong\"\n"),
    )
    .unwrap();
    let env = vec![("VPCEP_CONFIG", file.display().to_string())];
    let r = w
        .run_with(&env, &["node", "list", "--profile", "ops"])
        .await;
    r.fails(
        4,
        &format!("X-Auth-Token from profile \"ops\" of {}", file.display()),
    );
}

/// A `vpcep control-plane` process with its stdout and stderr in files.
struct ControlPlaneProcess {
    guard: Option<ChildGuard>,
    out: TempDir,
}

impl ControlPlaneProcess {
    fn spawn(args: &[&str]) -> Self {
        let out = TempDir::new("cp-out");
        let file = |name: &str| std::fs::File::create(out.0.join(name)).unwrap();
        let guard = spawn_guarded(
            std::process::Command::new(vpcep_bin())
                .arg("control-plane")
                .args(args)
                .env_remove("RUST_LOG")
                .env_remove("NO_COLOR")
                .env_remove("VPCEP_LOG_FORMAT")
                .stdin(Stdio::null())
                .stdout(file("stdout"))
                .stderr(file("stderr")),
        )
        .with_grace(Duration::from_secs(10));
        Self {
            guard: Some(guard),
            out,
        }
    }

    fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.out.0.join(name)).unwrap()).into_owned()
    }

    /// Waits for the "control plane listening" line on stderr; returns the address it logs.
    async fn listening(&mut self) -> std::net::SocketAddr {
        let out = self.out.0.clone();
        let guard = self.guard.as_mut().unwrap();
        poll(
            Duration::from_secs(60),
            Duration::from_millis(20),
            "the control plane's listening line",
            || {
                let stderr = std::fs::read_to_string(out.join("stderr")).unwrap();
                if let Some(status) = guard.try_wait().unwrap() {
                    panic!("the control plane exited ({status}): {stderr}");
                }
                let addr = stderr
                    .lines()
                    .find(|l| l.contains("control plane listening"))
                    .map(logged_addr);
                async move { addr }
            },
        )
        .await
    }

    /// Stops it with SIGTERM and waits for the exit.
    fn stop(&mut self) {
        let _ = self.guard.take().unwrap().stop();
    }
}

/// The `addr` field of a text or JSON log line.
fn logged_addr(line: &str) -> std::net::SocketAddr {
    let value = match serde_json::from_str::<Value>(line) {
        Ok(v) => v["fields"]["addr"].as_str().unwrap().to_owned(),
        Err(_) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_owned(),
    };
    value.parse().unwrap_or_else(|e| panic!("{value:?}: {e}"))
}

/// `GET /` of a server at `addr` answers 200.
async fn answers(addr: std::net::SocketAddr) {
    let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status(), 200, "GET / on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_creates_the_database_folder_and_logs_its_port() {
    let dir = TempDir::new("cp-db");
    let db = dir.0.join("missing/dir/vpcep.db");
    let url = format!("sqlite://{}", db.display());
    let mut cp = ControlPlaneProcess::spawn(&["--listen", "127.0.0.1:0", "--db", &url]);
    let addr = cp.listening().await;
    assert_ne!(
        addr.port(),
        0,
        "the bound port is logged, not the requested 0"
    );
    answers(addr).await;
    assert!(db.exists(), "{} was not created", db.display());
    cp.stop();
    // Text logs on stderr, without colour codes when stderr is not a terminal.
    let stderr = cp.read("stderr");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI codes in a piped log: {stderr:?}"
    );
    assert!(cp.read("stdout").is_empty(), "logs belong on stderr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_names_a_database_folder_it_cannot_create() {
    let dir = TempDir::new("cp-db");
    // A file where the folder should be: no user can create a folder under it.
    std::fs::write(dir.0.join("file"), "").unwrap();
    let url = format!("sqlite://{}/file/sub/vpcep.db", dir.0.display());
    let mut cp = ControlPlaneProcess::spawn(&["--listen", "127.0.0.1:0", "--db", &url]);
    let status = cp.guard.take().unwrap().wait().unwrap();
    assert!(!status.success());
    let stderr = cp.read("stderr");
    let folder = format!("{}/file/sub", dir.0.display());
    assert!(
        stderr.contains(&format!("cannot create the database folder {folder}"))
            && stderr.contains(&format!("mkdir -p {folder}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_logs_json_lines() {
    let dir = TempDir::new("cp-db");
    let url = sqlite_url(&dir.0);
    let mut cp = ControlPlaneProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--db",
        &url,
        "--log-format",
        "json",
    ]);
    let addr = cp.listening().await;
    answers(addr).await;
    cp.stop();
    let stderr = cp.read("stderr");
    let lines: Vec<&str> = stderr.lines().collect();
    // The warning about the missing credentials file, listening, shutting down.
    assert!(lines.len() >= 3, "{stderr}");
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

/// `vpcep pki` makes the CA and certificates; the CLI verifies the API's certificate against
/// `--ca-file` (or VPCEP_CA_FILE, or the profile's `ca_file`), refuses it without, and
/// `--insecure` skips the check with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verifies_the_servers_certificate() {
    let pki = TempDir::new("cli-pki");
    let dir = pki.0.display().to_string();
    let home = TempDir::new("cli");
    let none = World {
        server: start_server(
            &sqlite_url(&TempDir::new("cli").0),
            Credentials::default(),
            test_config(),
        )
        .await,
        home,
        _db: TempDir::new("cli"),
    };
    let made = none.run_with(&[], &["pki", "init", "--dir", &dir]).await;
    made.ok();
    for f in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"] {
        assert!(made.stdout.contains(f), "{}", made.stdout);
    }
    none.run_with(&[], &["pki", "node", "node1", "--dir", &dir])
        .await
        .ok();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(pki.0.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys are owner-only: {mode:o}");

    let db = TempDir::new("cli");
    let store = vpcep::store::Store::open(&sqlite_url(&db.0), 100)
        .await
        .unwrap();
    let server = Server::start_tls(
        store,
        credentials(),
        test_config(),
        vpcep::tls::server::TlsFiles {
            cert: pki.0.join("server.pem"),
            key: pki.0.join("server-key.pem"),
            client_ca: Some(pki.0.join("ca.pem")),
        },
    )
    .await
    .unwrap();
    assert!(server.url().starts_with("https://"));
    let w = World {
        server,
        home: TempDir::new("cli"),
        _db: db,
    };
    let ca = pki.0.join("ca.pem").display().to_string();
    let refused = w.run(Who::Operator, &["node", "list"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("UnknownIssuer") && refused.stderr.contains("--ca-file"),
        "names the cause and the fix: {}",
        refused.stderr
    );
    w.run(Who::Operator, &["node", "list", "--ca-file", &ca])
        .await
        .ok();
    let mut env = w.env(Who::Operator);
    env.push(("VPCEP_CA_FILE", ca.clone()));
    w.run_with(&env, &["node", "list"]).await.ok();
    let insecure = w.run(Who::Operator, &["node", "list", "--insecure"]).await;
    insecure.ok();
    assert!(
        insecure.stderr.contains("--insecure"),
        "{}",
        insecure.stderr
    );
    // The profile's ca_file.
    let cfg = w.home.0.join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.default]\nurl = \"{}\"\ntoken = \"{OPERATOR}\"\nca_file = \"{ca}\"\n",
            w.server.url()
        ),
    )
    .unwrap();
    let env = vec![("VPCEP_CONFIG", cfg.display().to_string())];
    w.run_with(&env, &["node", "list"]).await.ok();
}

/// Plain HTTP is for loopback development: it says so in the log, and a non-loopback
/// address without TLS is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_refuses_plain_http_off_loopback() {
    let dir = TempDir::new("cp-db");
    let url = sqlite_url(&dir.0);
    let mut cp = ControlPlaneProcess::spawn(&["--listen", "0.0.0.0:0", "--db", &url]);
    let status = cp.guard.take().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(64));
    let stderr = cp.read("stderr");
    assert!(
        stderr.contains("plain HTTP on 0.0.0.0:0") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    let mut cp = ControlPlaneProcess::spawn(&["--listen", "127.0.0.1:0", "--db", &url]);
    cp.listening().await;
    cp.stop();
    let stderr = cp.read("stderr");
    assert!(stderr.contains("PLAIN HTTP"), "{stderr}");
}

/// `vpcep credentials` makes tokens and their hashed forms; the control plane takes hashed
/// tokens from its credentials file, refuses a file open to other users or with a malformed
/// hash (naming the entry), and the audit trail names the token by its id, never by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_tokens_in_a_private_credentials_file() {
    let w = World {
        server: start_server(
            &sqlite_url(&TempDir::new("cli").0),
            Credentials::default(),
            test_config(),
        )
        .await,
        home: TempDir::new("cli"),
        _db: TempDir::new("cli"),
    };
    // new-token: `token = "…"`, `stored = "sha256:…"`, `id = "token:…"`.
    let made = w.run_with(&[], &["credentials", "new-token"]).await;
    made.ok();
    let field = |name: &str| {
        let line = made
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {}", made.stdout));
        line.split('"').nth(1).unwrap().to_owned()
    };
    let (op, op_stored, op_id) = (field("token "), field("stored "), field("id "));
    assert_eq!(op.len(), 64);
    assert!(op_stored.starts_with("sha256:") && !op_stored.contains(&op));
    assert_eq!(op_id, vpcep::api::auth::token_id(&op));
    // hash-token reads the token from stdin, so that it stays out of argv.
    let tenant = "tenant-token-0123456789abcdef";
    let mut child = std::process::Command::new(vpcep_bin())
        .args(["credentials", "hash-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{tenant}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let tenant_stored = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(tenant_stored.starts_with("sha256:") && !tenant_stored.contains(tenant));

    let dir = TempDir::new("cp-creds");
    let creds = dir.0.join("credentials.toml");
    let write = |text: String, mode: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&creds, text).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let good = format!(
        "operator_tokens = [\"{op_stored}\"]\n\n[[tokens]]\ntoken = \"{tenant_stored}\"\nproject_id = \"proj-hashed\"\n"
    );
    let url = sqlite_url(&dir.0);
    let creds_arg = creds.display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--db",
        &url,
        "--credentials",
        &creds_arg,
    ];
    let refused = |cp: &mut ControlPlaneProcess| {
        let status = cp.guard.take().unwrap().wait().unwrap();
        assert_eq!(status.code(), Some(64));
        cp.read("stderr")
    };
    // Readable by others: refused, with the mode and the fix.
    write(good.clone(), 0o644);
    let stderr = refused(&mut ControlPlaneProcess::spawn(&args));
    assert!(
        stderr.contains("open to other users (mode 0644)") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // A malformed hash would never match: refused, naming the entry.
    write(good.replace(&tenant_stored, "sha256:zz:00"), 0o600);
    let stderr = refused(&mut ControlPlaneProcess::spawn(&args));
    assert!(
        stderr.contains("tokens[0].token") && stderr.contains("salt"),
        "{stderr}"
    );

    write(good, 0o640);
    let mut cp = ControlPlaneProcess::spawn(&args);
    let addr = cp.listening().await;
    let env = |token: &str, project: Option<&str>| {
        let mut e = vec![
            ("VPCEP_URL", format!("http://{addr}")),
            ("VPCEP_TOKEN", token.to_owned()),
        ];
        if let Some(p) = project {
            e.push(("VPCEP_PROJECT_ID", p.to_owned()));
        }
        e
    };
    let operator = env(&op, None);
    w.run_with(
        &operator,
        &["node", "register", "node-h", "--underlay-ip", "192.0.2.7"],
    )
    .await
    .ok();
    // The stored form is no token.
    w.run_with(&env(&op_stored, None), &["node", "list"])
        .await
        .fails(4, "unknown token");
    let tenant_env = env(tenant, Some("proj-hashed"));
    w.run_with(&tenant_env, &["quota", "show"]).await.ok();

    // The audit trail: the write, by the operator's token id.
    let mut a = vec!["audit", "list", "--all", "--since", "1h", "-o", "json"];
    let all = w.run_with(&operator, &a).await.json();
    let put = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "inventory_put_node")
        .unwrap_or_else(|| panic!("no node registration in {all}"));
    assert_eq!(put["actor"], "operator");
    assert_eq!(put["credential_id"], op_id.as_str());
    assert_eq!(put["resources"], json!(["node/node-h"]));
    assert!(!all.to_string().contains(&op));
    // A tenant lists its own project's (none: it wrote nothing), and not every project's.
    a.retain(|x| *x != "--all");
    assert_eq!(w.run_with(&tenant_env, &a).await.json(), json!([]));
    w.run_with(&tenant_env, &["audit", "list", "--all"])
        .await
        .fails(4, "");
    let bad = w
        .run_with(&operator, &["audit", "list", "--since", "yesterday"])
        .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--since"), "{}", bad.stderr);
    cp.stop();
    let log = cp.read("stderr");
    for secret in [op.as_str(), tenant] {
        assert!(!log.contains(secret), "a token in the log: {log}");
    }
}

/// The id in a command's `-o json` answer.
fn id_of(r: &Run) -> String {
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// No secret in the control plane's log at TRACE level (every crate), in the CLI's output,
/// in error answers, in the feed or in the audit trail, after a run that uses every kind of
/// credential, correct and wrong, over TLS with a node certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_answers_or_the_feed() {
    use vpcep_tests::harness::pki::Pki;
    let pki = Pki::new();
    let (op, tenant_token, agent_token) = (
        "redact-operator-7f3a9c",
        "redact-tenant-token-51be",
        "redact-agent-token-c04d",
    );
    let (ak, sk, wrong_sk) = ("AK-REDACT", "redact-sk-0e6b92d1", "redact-wrong-sk-9a71c3");
    let dir = TempDir::new("cp-redact");
    let creds = dir.0.join("credentials.toml");
    xtask::write_private(
        &creds,
        &format!(
            "operator_tokens = [\"{op}\"]\n\n[[credentials]]\nak = \"{ak}\"\nsk = \"{sk}\"\nproject_id = \"proj-r\"\n\n[[tokens]]\ntoken = \"{tenant_token}\"\nproject_id = \"proj-r\"\n\n[[agents]]\nnode = \"node-r\"\ntoken = \"{agent_token}\"\n"
        ),
    )
    .unwrap();
    let files = pki.server_files();
    let node = pki.node("node-r", false);
    let node_key = std::fs::read_to_string(node.key_file.as_ref().unwrap()).unwrap();
    // The key's base64 body, line by line.
    let key_lines: Vec<String> = node_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect();
    assert!(!key_lines.is_empty());
    let (url, creds_s, cert, key, ca) = (
        sqlite_url(&dir.0),
        creds.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
        pki.ca_file().display().to_string(),
    );
    let out = TempDir::new("cp-out");
    let file = |name: &str| std::fs::File::create(out.0.join(name)).unwrap();
    let guard = spawn_guarded(
        std::process::Command::new(vpcep_bin())
            .args(["control-plane", "--listen", "127.0.0.1:0", "--db", &url])
            .args([
                "--credentials",
                &creds_s,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ])
            .args(["--client-ca", &ca])
            .env("RUST_LOG", "trace")
            .env_remove("VPCEP_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(file("stdout"))
            .stderr(file("stderr")),
    )
    .with_grace(Duration::from_secs(10));
    let mut cp = ControlPlaneProcess {
        guard: Some(guard),
        out,
    };
    let addr = cp.listening().await;
    let base = format!("https://localhost:{}", addr.port());

    let w = World {
        server: start_server(
            &sqlite_url(&TempDir::new("cli").0),
            Credentials::default(),
            test_config(),
        )
        .await,
        home: TempDir::new("cli"),
        _db: TempDir::new("cli"),
    };
    let env = |creds: &[(&'static str, &str)]| {
        let mut e = vec![("VPCEP_URL", base.clone()), ("VPCEP_CA_FILE", ca.clone())];
        e.extend(creds.iter().map(|(k, v)| (*k, (*v).to_owned())));
        e
    };
    let operator = env(&[("VPCEP_TOKEN", op)]);
    let signed = env(&[
        ("VPCEP_AK", ak),
        ("VPCEP_SK", sk),
        ("VPCEP_PROJECT_ID", "proj-r"),
    ]);
    let mut seen = String::new();
    let mut run = async |e: &[(&str, String)], args: &[&str], ok: bool| {
        let mut a = args.to_vec();
        a.push("-v");
        let r = w.run_with(e, &a).await;
        assert_eq!(r.code == 0, ok, "{args:?}: {}", r.stderr);
        seen.push_str(&r.stdout);
        seen.push_str(&r.stderr);
        r
    };
    run(
        &operator,
        &["node", "register", "node-r", "--underlay-ip", "192.0.2.9"],
        true,
    )
    .await;
    let vpc = id_of(
        &run(
            &operator,
            &[
                "vpc",
                "create",
                "--owner",
                "proj-r",
                "--cidr",
                "10.9.0.0/24",
                "-o",
                "json",
            ],
            true,
        )
        .await,
    );
    let subnet = id_of(
        &run(
            &operator,
            &[
                "subnet",
                "create",
                "--vpc-id",
                &vpc,
                "--cidr",
                "10.9.0.0/24",
                "-o",
                "json",
            ],
            true,
        )
        .await,
    );
    let nic = id_of(
        &run(
            &operator,
            &[
                "port",
                "create",
                "--subnet-id",
                &subnet,
                "--node",
                "node-r",
                "-o",
                "json",
            ],
            true,
        )
        .await,
    );
    // Signed writes, good and refused; a wrong SK; unknown and tenant tokens.
    run(
        &signed,
        &[
            "service",
            "create",
            "--port-id",
            &nic,
            "--vpc-id",
            &vpc,
            "--port",
            "80:8080",
        ],
        true,
    )
    .await;
    run(
        &signed,
        &[
            "service",
            "create",
            "--port-id",
            &nic,
            "--vpc-id",
            &vpc,
            "--port",
            "99999",
        ],
        false,
    )
    .await;
    let wrong = env(&[
        ("VPCEP_AK", ak),
        ("VPCEP_SK", wrong_sk),
        ("VPCEP_PROJECT_ID", "proj-r"),
    ]);
    run(&wrong, &["service", "list"], false).await;
    let unknown = env(&[("VPCEP_TOKEN", "redact-unknown-token-77d1")]);
    run(&unknown, &["node", "list"], false).await;
    let tenant = env(&[
        ("VPCEP_TOKEN", tenant_token),
        ("VPCEP_PROJECT_ID", "proj-r"),
    ]);
    run(&tenant, &["service", "list"], true).await;
    run(&tenant, &["node", "list"], false).await;

    // The agent: by its token and by its certificate; the feed and the audit as answered.
    let http = node.builder().unwrap().build().unwrap();
    let snap = http
        .get(format!("{base}/feed/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(snap.status(), 200);
    seen.push_str(&snap.text().await.unwrap());
    let by_token = pki.client().builder().unwrap().build().unwrap();
    let r = by_token
        .put(format!("{base}/inventory/nodes/node-r/applied-revision"))
        .header("x-auth-token", agent_token)
        .json(&json!({"revision": 1}))
        .send()
        .await
        .unwrap();
    seen.push_str(&r.text().await.unwrap());
    let audit = by_token
        .get(format!("{base}/inventory/audit-records?limit=1000"))
        .header("x-auth-token", op)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("service_create") || audit.contains("create_endpoint_service"));
    seen.push_str(&audit);
    cp.stop();
    let log = cp.read("stderr");
    // The log is a real trace: TLS, HTTP and the server's requests are in it.
    assert!(log.lines().count() > 200, "{log}");
    assert!(log.contains("TRACE"), "not a trace");
    assert!(log.contains("status=401"), "failures are logged");
    let mut secrets = vec![
        op,
        tenant_token,
        agent_token,
        sk,
        wrong_sk,
        "redact-unknown-token-77d1",
    ];
    secrets.extend(key_lines.iter().map(String::as_str));
    for (what, text) in [("log", &log), ("answers and CLI output", &seen)] {
        for s in &secrets {
            assert!(!text.contains(s), "{s:?} in the {what}");
        }
    }
}
