//! Endpoint names through the node resolver: `dig` from the VMs of two VPCs with the same
//! 10.0.0.0/24 and the same DNS address, a real agent, and dnsmasq as the upstream in a
//! namespace of its own.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::json;
use vpcep_tests::harness::{TempDir, agent::*, eventually};
use xtask::netns::{NetNs, Topology};

use crate::{AgentTask, Scene, blocking};

pub(super) const DNS: &str = "169.254.169.253";
pub(super) const UPSTREAM: &str = "198.51.100.2";
/// The forwarded names dnsmasq serves: one address, and 40 (over 512 bytes of answer).
pub(super) const FORWARDED: &str = "forwarded.example";
pub(super) const BIG: &str = "big.example";

/// dnsmasq answering from a hosts file, reached from the node over a veth of its own.
pub(super) struct Upstream {
    pub dnsmasq: Option<xtask::netns::ChildGuard>,
    _ns: NetNs,
    _dir: TempDir,
}

/// dnsmasq in a namespace of its own at 198.51.100.2, with `extra` hosts lines.
pub(super) fn upstream_with(node: &NetNs, extra: &str) -> Upstream {
    let ns = NetNs::new("dnsup").unwrap();
    node.ip(&[
        "link",
        "add",
        "dnsup",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .unwrap();
    node.ip(&["addr", "add", "198.51.100.1/30", "dev", "dnsup"])
        .unwrap();
    node.ip(&["link", "set", "dnsup", "up"]).unwrap();
    ns.ip(&["addr", "add", "198.51.100.2/30", "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let dir = TempDir::new("dnsmasq");
    let mut hosts = format!("203.0.113.7 {FORWARDED}\n");
    for i in 1..=40 {
        hosts.push_str(&format!("198.18.0.{i} {BIG}\n"));
    }
    hosts.push_str(extra);
    let file = dir.0.join("hosts");
    std::fs::write(&file, hosts).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dnsmasq = ns
        .spawn(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                &format!("--addn-hosts={}", file.display()),
                &format!("--pid-file={}", dir.0.join("pid").display()),
                &format!("--listen-address={UPSTREAM}"),
                "--bind-interfaces",
                "--cache-size=0",
            ],
        )
        .unwrap();
    Upstream {
        dnsmasq: Some(dnsmasq),
        _ns: ns,
        _dir: dir,
    }
}

pub(super) fn upstream(node: &NetNs) -> Upstream {
    upstream_with(node, "")
}

/// What `dig` printed: the header's status and flags, and the answers' data.
#[derive(Debug, Default)]
pub(super) struct Dig {
    pub status: String,
    pub flags: String,
    pub answers: Vec<String>,
}

fn parse_dig(text: &str) -> Option<Dig> {
    let status = text.split("status: ").nth(1)?.split(',').next()?.to_owned();
    let flags = text
        .split(";; flags: ")
        .nth(1)?
        .split(';')
        .next()?
        .to_owned();
    let answers = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|s| {
            s.lines()
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(Dig {
        status,
        flags,
        answers,
    })
}

/// `dig @169.254.169.253 ARGS` in VM `vm` (0 = the consumer's, 1 = the provider's); `None`
/// when no answer came.
pub(super) async fn dig(topo: &Arc<Topology>, vm: usize, args: &[&str]) -> Option<Dig> {
    let topo = topo.clone();
    let mut a = vec![format!("@{DNS}"), "+time=1".into(), "+tries=1".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    blocking(move || {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = topo.vms[vm].ns.command("dig").args(&args).output().ok()?;
        parse_dig(&String::from_utf8_lossy(&out.stdout))
    })
    .await
}

/// Polls `dig NAME` from `vm` every 20 ms until `f` holds; returns how long it took.
pub(super) async fn until(
    topo: &Arc<Topology>,
    vm: usize,
    name: &str,
    what: &str,
    f: impl Fn(&Dig) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < Duration::from_secs(15) {
        last = dig(topo, vm, &[name]).await;
        if last.as_ref().is_some_and(&f) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node = topo.node.name().to_owned();
    let state = blocking(move || {
        let run = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &node])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        format!("{}{}", run(&["ip", "-br", "addr"]), run(&["ss", "-uanp"]))
    })
    .await;
    panic!("{what}: not within 15 s; dig {name} last said {last:?}; node:\n{state}");
}

pub(super) fn answers(ip: &'static str) -> impl Fn(&Dig) -> bool {
    move |d| d.status == "NOERROR" && d.answers == [ip]
}

pub(super) fn nxdomain(d: &Dig) -> bool {
    d.status == "NXDOMAIN" && d.answers.is_empty()
}

pub(super) async fn dns_names(s: &Scene, project: &str, token: &str, ep: &str) -> Vec<String> {
    let e =
        s.cp.client(token)
            .ok(
                Method::GET,
                &format!("/v1/{project}/vpc-endpoints/{ep}"),
                None,
            )
            .await;
    let names: Vec<String> = serde_json::from_value(e["dns_names"].clone()).unwrap();
    names
}

/// The value of the first metrics line starting with `line_start`; 0 when absent or while
/// the agent is not serving its metrics (a restart).
pub(super) async fn metric(port: u16, line_start: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// An A query for `name` (id 1).
fn query_bytes(name: &str) -> Vec<u8> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let mut m = Message::new();
    m.set_id(1).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `bytes` to the resolver from VM `vm` over UDP; returns the reply, if one came
/// within 500 ms.
async fn raw_query(topo: &Arc<Topology>, vm: usize, bytes: Vec<u8>) -> Option<Vec<u8>> {
    let topo = topo.clone();
    blocking(move || {
        topo.vms[vm]
            .ns
            .run(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                s.send_to(&bytes, (DNS, 53)).ok()?;
                let mut buf = [0u8; 1500];
                let n = s.recv(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            })
            .ok()
            .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_names_resolve_in_their_vpc_only() {
    vpcep_tests::require_root!();
    let topo = topology();
    // The consumer's VM reaches the DNS address through its gateway as the provider's does.
    topo.vms[0]
        .ns
        .ip(&["route", "add", "default", "via", "10.0.0.1"])
        .unwrap();
    let mut up = upstream(&topo.node);
    let tables =
        format!("\n[dns]\nupstreams = [\"{UPSTREAM}\"]\nupstream_timeout_ms = 500\nttl = 5\n");
    let mut s = Scene::start_with("dns", json!({"enable_dns": true}), "", &tables, topo).await;
    let topo = s.topo.clone();
    let consumer = s.cp.client(CONSUMER);
    let provider = s.cp.client(PROVIDER);

    // The consumer endpoint's names: from the endpoint id and from the service.
    let names = dns_names(&s, "proj-consumer", CONSUMER, &s.ep).await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with(&s.ep), "{names:?}");
    let t = until(
        &topo,
        0,
        &names[0],
        "the endpoint name answered",
        answers("10.0.0.100"),
    )
    .await;
    println!("dns: first answer {t:?} after the agent saw the endpoint");
    let d = dig(&topo, 0, &[&names[1]]).await.unwrap();
    assert_eq!(d.answers, ["10.0.0.100"]);
    assert!(d.flags.contains("aa"), "{d:?}");
    let d = dig(&topo, 0, &["+tcp", &names[0]]).await.unwrap();
    assert_eq!(d.answers, ["10.0.0.100"], "over TCP");

    // The provider's VPC (same CIDR, same DNS address) does not see the consumer's names.
    for n in &names {
        let d = dig(&topo, 1, &[n]).await.unwrap();
        assert!(nxdomain(&d), "{n} from the other VPC: {d:?}");
    }

    // Huawei's rule: one endpoint of the service per VPC with the domain name.
    let mut second = s.w.endpoint_body();
    second["port_ip"] = json!("10.0.0.120");
    second["enable_dns"] = json!(true);
    let (status, body) = consumer
        .call(
            Method::POST,
            "/v1/proj-consumer/vpc-endpoints",
            Some(second),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("enable_dns"), "{body}");

    // The provider's own endpoint in its VPC, and its private DNS name: the same name
    // answers in each VPC with that VPC's endpoint.
    let op = s.cp.client(OPERATOR);
    let port = op
        .ok(
            Method::GET,
            &format!("/inventory/ports/{}", s.w.backend_port),
            None,
        )
        .await;
    let pep = provider
        .ok(
            Method::POST,
            "/v1/proj-provider/vpc-endpoints",
            Some(json!({
                "endpoint_service_id": s.w.service,
                "vpc_id": s.w.provider_vpc,
                "subnet_id": port["subnet_id"],
                "port_ip": "10.0.0.101",
                "enable_dns": true,
            })),
        )
        .await;
    let pep = pep["id"].as_str().unwrap().to_owned();
    s.connection(&pep, "receive").await;
    provider
        .ok(
            Method::PUT,
            &format!("/v1/proj-provider/vpc-endpoint-services/{}", s.w.service),
            Some(json!({"private_dns_name": "api.example.internal"})),
        )
        .await;
    let t = until(
        &topo,
        0,
        "api.example.internal",
        "the provider's name, consumer VPC",
        answers("10.0.0.100"),
    )
    .await;
    println!("dns: private_dns_name answered {t:?} after the update");
    until(
        &topo,
        1,
        "api.example.internal",
        "the provider's name, provider VPC",
        answers("10.0.0.101"),
    )
    .await;
    let pnames = dns_names(&s, "proj-provider", PROVIDER, &pep).await;
    assert!(
        nxdomain(&dig(&topo, 0, &[&pnames[0]]).await.unwrap()),
        "{pnames:?}"
    );
    // A name under the zone that nobody has is NXDOMAIN, not forwarded.
    let zone = names[0].split_once('.').unwrap().1.to_owned();
    let d = dig(&topo, 0, &[&format!("nobody.{zone}")]).await.unwrap();
    assert!(nxdomain(&d), "{d:?}");

    // Other names go to the upstream; a large answer sets TC over UDP and comes whole over TCP.
    let d = dig(&topo, 0, &[FORWARDED]).await.unwrap();
    assert_eq!(d.answers, ["203.0.113.7"], "{d:?}");
    let d = dig(&topo, 1, &["+noedns", "+ignore", BIG]).await.unwrap();
    assert!(d.flags.split_whitespace().any(|f| f == "tc"), "{d:?}");
    let d = dig(&topo, 1, &["+tcp", BIG]).await.unwrap();
    assert_eq!(d.answers.len(), 40, "{d:?}");

    // Reject: the name goes; accept again: it is back; delete: gone for good.
    s.connection(&s.ep.clone(), "reject").await;
    let t = until(&topo, 0, &names[0], "gone after reject", nxdomain).await;
    println!("dns: name gone {t:?} after the reject");
    s.connection(&s.ep.clone(), "receive").await;
    let t = until(
        &topo,
        0,
        &names[0],
        "back after accept",
        answers("10.0.0.100"),
    )
    .await;
    println!("dns: name back {t:?} after the accept");

    // Malformed queries: too short is dropped; a header without its question gets
    // FORMERR; the resolver goes on serving.
    assert_eq!(raw_query(&topo, 0, vec![1, 2, 3]).await, None);
    let bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63];
    let r = raw_query(&topo, 0, bad).await.expect("FORMERR");
    assert_eq!((r[0], r[1], r[3] & 0x0f), (0xab, 0xcd, 1), "{r:?}");
    assert_eq!(
        dig(&topo, 0, &[&names[0]]).await.unwrap().answers,
        ["10.0.0.100"]
    );

    // A VM flooding the resolver (20,000 queries as fast as it can, over the NIC's 1,024/s)
    // is cut off at its budget; the other VPC's VM is answered meanwhile.
    let flooder = {
        let topo = topo.clone();
        let name = names[0].clone();
        tokio::task::spawn_blocking(move || {
            topo.vms[1].ns.run(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let q = query_bytes(&name);
                let t0 = Instant::now();
                for _ in 0..20_000 {
                    if t0.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                    let _ = s.send_to(&q, (DNS, 53));
                }
            })
        })
    };
    for _ in 0..5 {
        let d = dig(&topo, 0, &[&names[0]]).await.unwrap();
        assert_eq!(
            d.answers,
            ["10.0.0.100"],
            "answered during the other VM's flood"
        );
    }
    flooder.await.unwrap().unwrap();
    let pv_limited = format!(
        "vpcep_dns_rate_limited_total{{vpc=\"{}\"}}",
        s.w.provider_vpc
    );
    let limited = metric(s.metrics, &pv_limited).await;
    assert!(
        limited > 1000,
        "the flood counted as rate-limited: {limited}"
    );
    let cv_limited = format!(
        "vpcep_dns_rate_limited_total{{vpc=\"{}\"}}",
        s.w.consumer_vpc
    );
    assert_eq!(metric(s.metrics, &cv_limited).await, 0);

    // The counters, per VPC.
    let cv = format!("{{vpc=\"{}\"}}", s.w.consumer_vpc);
    let pv = format!("{{vpc=\"{}\"}}", s.w.provider_vpc);
    assert!(metric(s.metrics, &format!("vpcep_dns_queries_total{cv}")).await >= 10);
    assert!(metric(s.metrics, &format!("vpcep_dns_answers_total{cv}")).await >= 5);
    assert!(metric(s.metrics, &format!("vpcep_dns_nxdomain_total{pv}")).await >= 2);
    assert!(metric(s.metrics, &format!("vpcep_dns_forwarded_total{pv}")).await >= 2);
    assert!(metric(s.metrics, &format!("vpcep_dns_malformed_total{cv}")).await >= 2);

    // A restart of the agent: DNS is out for about as long as the agent takes to start
    // and read the feed.
    let cfg = s.agent_config.clone();
    let stop_at = Instant::now();
    s.agent.take().unwrap().stop().await;
    let stopped = stop_at.elapsed();
    let start_at = Instant::now();
    s.agent = Some(AgentTask::start(cfg.clone()));
    // The agent's own restart time (its maps applied, as its metrics say) next to the
    // time DNS answers again.
    let (mut applied, mut back) = (None, None);
    while (applied.is_none() || back.is_none()) && start_at.elapsed() < Duration::from_secs(15) {
        if applied.is_none() && metric(s.metrics, "vpcep_agent_applied_revision ").await > 0 {
            applied = Some(start_at.elapsed());
        }
        if back.is_none()
            && dig(&topo, 0, &[&names[0]])
                .await
                .is_some_and(|d| answers("10.0.0.100")(&d))
        {
            back = Some(start_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (applied, back) = (applied.expect("maps applied"), back.expect("DNS back"));
    println!(
        "dns: agent stop took {stopped:?}; after the new agent started: maps applied {applied:?}, DNS answering {back:?}"
    );

    // Without upstreams other names are refused.
    let mut alone = cfg.clone();
    alone.dns.upstreams.clear();
    s.agent.take().unwrap().stop().await;
    s.agent = Some(AgentTask::start(alone));
    until(
        &topo,
        0,
        &names[0],
        "answered without upstreams",
        answers("10.0.0.100"),
    )
    .await;
    let d = dig(&topo, 0, &[FORWARDED]).await.unwrap();
    assert_eq!(d.status, "REFUSED", "{d:?}");
    assert!(metric(s.metrics, &format!("vpcep_dns_refused_total{cv}")).await >= 1);
    s.agent.take().unwrap().stop().await;
    s.agent = Some(AgentTask::start(cfg));
    until(
        &topo,
        0,
        &names[0],
        "answered with upstreams again",
        answers("10.0.0.100"),
    )
    .await;

    // Delete: the name goes.
    consumer
        .ok(
            Method::DELETE,
            &format!("/v1/proj-consumer/vpc-endpoints/{}", s.ep),
            None,
        )
        .await;
    let t = until(&topo, 0, &names[0], "gone after delete", nxdomain).await;
    println!("dns: name gone {t:?} after the delete");

    // The upstream gone: SERVFAIL, counted.
    drop(up.dnsmasq.take());
    let before = metric(s.metrics, &format!("vpcep_dns_upstream_failures_total{cv}")).await;
    let d = dig(&topo, 0, &["+time=3", FORWARDED]).await.unwrap();
    assert_eq!(d.status, "SERVFAIL", "{d:?}");
    eventually(5, "the upstream failure counted", || async {
        (metric(s.metrics, &format!("vpcep_dns_upstream_failures_total{cv}")).await > before)
            .then_some(())
    })
    .await;
    s.stop().await;
}
