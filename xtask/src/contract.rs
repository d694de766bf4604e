//! The API contract stage: schemathesis (pinned, from PyPI, in its own virtualenv) runs every
//! check against a real control plane (the release binary, a temporary SQLite file, operator
//! and tenant credentials, a seeded inventory), once as the tenant and once as the operator.
//! Bounded examples per operation and a fixed seed keep it reproducible; any failure fails
//! the stage. The exclusions are listed in docs/development.md with their reasons.
use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::child::ChildGuard;

use crate::{sh, target_dir};

/// The pinned schemathesis.
pub const PACKAGE: &str = "schemathesis==4.32.5";
/// Test cases per operation and run.
const MAX_EXAMPLES: &str = "15";
const SEED: &str = "20261202";
const TENANT_PROJECT: &str = "proj-contract";
/// The endless NDJSON stream: a request never ends, so it cannot be fuzzed.
const EXCLUDED_OPERATIONS: &[&str] = &["feed_watch"];

/// The schemathesis executable of the virtualenv.
pub fn executable() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/vpcep/schemathesis-venv/bin/schemathesis")
}

/// Installs the pinned schemathesis into its virtualenv unless it is there.
pub fn ensure_installed() -> Result<()> {
    let exe = executable();
    let version = PACKAGE.rsplit("==").next().unwrap_or_default();
    let ok = Command::new(&exe)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version));
    if ok {
        return Ok(());
    }
    let venv = exe
        .parent()
        .and_then(Path::parent)
        .context("venv path")?
        .to_path_buf();
    println!(
        "setup: installing {PACKAGE} into {} for the API contract stage",
        venv.display()
    );
    sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    sh(Command::new(venv.join("bin/pip")).args(["install", "-q", PACKAGE]))
}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Runs the stage.
pub fn stage() -> Result<()> {
    ensure_installed()?;
    let bin = target_dir().join("release/vpcep");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with cargo build --release",
            bin.display()
        );
    }
    let dir = Scratch(std::env::temp_dir().join(format!("vpcep-contract-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let (operator, tenant) = (secret(), secret());
    xtask::write_private(
        &dir.0.join("credentials.toml"),
        &format!(
            "operator_tokens = [\"{operator}\"]\n\n[[tokens]]\ntoken = \"{tenant}\"\nproject_id = \"{TENANT_PROJECT}\"\n"
        ),
    )?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let log = fs::File::create(dir.0.join("control-plane.log"))?;
    let child = Command::new(&bin)
        .arg("control-plane")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // A fuzzer sends thousands of requests and bad credentials on purpose: the rate limits
        // and the authentication back-off (tests/api/rate_limits.rs) would answer 429 to most.
        .args([
            "--rate-limit-per-second",
            "0",
            "--auth-failures-before-backoff",
            "0",
        ])
        .arg("--db")
        .arg(format!("sqlite://{}", dir.0.join("vpcep.db").display()))
        .arg("--credentials")
        .arg(dir.0.join("credentials.toml"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the control plane")?;
    let _server = ChildGuard::from(child).with_grace(Duration::from_secs(5));
    wait_listening(port)?;
    let inventory = seed(&url, &operator)?;
    let result = [("tenant", &tenant), ("operator", &operator)]
        .into_iter()
        .try_for_each(|(who, token)| {
            let ids = service_and_endpoint(&url, &operator, &inventory)?;
            run(&dir.0, &url, who, token, &ids)
        });
    if result.is_err() {
        let log = fs::read_to_string(dir.0.join("control-plane.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("control plane log (last lines):");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    result
}

fn wait_listening(port: u16) -> Result<()> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the control plane did not listen on {addr}")
}

/// One JSON request with the operator token; its answer.
fn curl(url: &str, token: &str, method: &str, path: &str, body: &str) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-X", method])
        .args(["-H", &format!("X-Auth-Token: {token}")])
        .args(["-H", "Content-Type: application/json", "--data", body])
        .arg(format!("{url}{path}"))
        .stderr(Stdio::inherit())
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "seeding {method} {path}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The ids the tenant's resources are made of.
struct Inventory {
    vpc: String,
    subnet: String,
    port: String,
}

/// The inventory the tenant's operations need: a node, the tenant's VPC, subnet and a NIC.
fn seed(url: &str, token: &str) -> Result<Inventory> {
    curl(
        url,
        token,
        "PUT",
        "/inventory/nodes/node1",
        r#"{"underlay_ip": "192.0.2.1"}"#,
    )?;
    let vpc = curl(
        url,
        token,
        "POST",
        "/inventory/vpcs",
        &format!(r#"{{"project_id": "{TENANT_PROJECT}", "cidr": "10.0.0.0/16"}}"#),
    )?;
    let subnet = curl(
        url,
        token,
        "POST",
        "/inventory/subnets",
        &format!(r#"{{"vpc_id": {}, "cidr": "10.0.0.0/24"}}"#, vpc["id"]),
    )?;
    let port = curl(
        url,
        token,
        "POST",
        "/inventory/ports",
        &format!(r#"{{"subnet_id": {}, "node": "node1"}}"#, subnet["id"]),
    )?;
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_owned();
    Ok(Inventory {
        vpc: id(&vpc),
        subnet: id(&subnet),
        port: id(&port),
    })
}

/// A service of the tenant and an endpoint of it, whose ids the run puts in the paths that
/// name a service or an endpoint, so that those operations reach their rules rather than
/// answering 404 to made-up ids. Made before each run: a run may delete them.
fn service_and_endpoint(url: &str, token: &str, inv: &Inventory) -> Result<(String, String)> {
    let v1 = format!("/v1/{TENANT_PROJECT}");
    let service = curl(
        url,
        token,
        "POST",
        &format!("{v1}/vpc-endpoint-services"),
        &format!(
            r#"{{"port_id": "{}", "vpc_id": "{}", "server_type": "VM", "approval_enabled": false,
                "ports": [{{"client_port": 80, "server_port": 8080}}]}}"#,
            inv.port, inv.vpc
        ),
    )?;
    let sid = service["id"].as_str().unwrap_or_default().to_owned();
    let endpoint = curl(
        url,
        token,
        "POST",
        &format!("{v1}/vpc-endpoints"),
        &format!(
            r#"{{"endpoint_service_id": "{sid}", "vpc_id": "{}", "subnet_id": "{}"}}"#,
            inv.vpc, inv.subnet
        ),
    )?;
    let eid = endpoint["id"].as_str().unwrap_or_default().to_owned();
    Ok((sid, eid))
}

/// One schemathesis run with one identity.
fn run(dir: &Path, url: &str, who: &str, token: &str, ids: &(String, String)) -> Result<()> {
    let (service, endpoint) = ids;
    let config = dir.join(format!("schemathesis-{who}.toml"));
    // Schema-valid bodies can still break rules a schema cannot state (references to
    // inventory that must exist, unique keys, quotas, a permission_type that must match the
    // string): those answer 400, which positive_data_acceptance is told to expect.
    fs::write(
        &config,
        format!(
            "[parameters]\n\"path.project_id\" = \"{TENANT_PROJECT}\"\n\
             \"path.vpc_endpoint_service_id\" = \"{service}\"\n\
             \"path.vpc_endpoint_id\" = \"{endpoint}\"\n\n\
             [generation]\n\
             with-security-parameters = false\n\n\
             [checks.positive_data_acceptance]\n\
             expected-statuses = [\"2xx\", \"400\", \"401\", \"403\", \"404\", \"409\"]\n"
        ),
    )?;
    let t = Instant::now();
    let mut cmd = Command::new(executable());
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{url}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
        ])
        // One worker: hypothesis describing its strategies from several threads at once hits
        // a CPython 3.11 AST error ("recursion depth mismatch") that ends the run.
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["-H", &format!("X-Auth-Token: {token}")]);
    for op in EXCLUDED_OPERATIONS {
        cmd.args(["--exclude-operation-id", op]);
    }
    let mut child = cmd
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("running schemathesis")?;
    // Echoed as it comes, and kept for the authentication check below.
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            output.push(line);
        }
    }
    let status = child.wait()?;
    println!(
        "schemathesis as the {who}: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("schemathesis found failures as the {who} ({status})");
    }
    let refused = auth_refused(&output);
    // A tenant's token is refused on the operator's routes, and only there; the operator's
    // token is accepted everywhere. Anything else means the cases never got past the
    // authentication, so the run tested nothing behind it.
    let unexpected: Vec<&String> = refused
        .iter()
        .filter(|op| who == "operator" || !(op.contains(" /inventory/") || op.contains(" /feed/")))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "schemathesis as the {who}: only 401/403 answers from {} operations: {unexpected:?}",
            unexpected.len()
        );
    }
    Ok(())
}

/// The operations schemathesis lists under "Authentication failed" (`  - GET /path`).
fn auth_refused(output: &[String]) -> Vec<String> {
    let mut ops = Vec::new();
    let mut inside = false;
    for line in output {
        if line.starts_with("Authentication failed") {
            inside = true;
        } else if inside {
            match line.trim_start().strip_prefix("- ") {
                Some(op) => ops.push(op.trim().to_owned()),
                // The list ends at the hint after it; headings and blank lines come before.
                None if line.contains('💡') => inside = false,
                None => {}
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_refused_operations() {
        let out: Vec<String> = [
            "Authentication failed: 2 operations returned only 401/403 responses",
            "",
            "401 Unauthorized (2 operations):",
            "  - GET /inventory/nodes",
            "  - POST /v1/{project_id}/vpc-endpoints",
            "",
            "💡 Ensure valid authentication credentials are set via `--auth` or `-H`",
            "  - GET /not/in/the/list",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            super::auth_refused(&out),
            [
                "GET /inventory/nodes",
                "POST /v1/{project_id}/vpc-endpoints"
            ]
        );
    }
}
