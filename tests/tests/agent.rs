//! The node agent end to end: a real control plane in process, the agent's data-plane
//! thread inside a node namespace, the real kernel programs, and traffic between VM
//! namespaces through an endpoint created, accepted, rejected and deleted over the API.
mod agent {
    mod bench;
    mod dns;
    mod dns_bench;
}

use std::{sync::atomic::Ordering, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use vpcep::agent::{AgentConfig, run};
use vpcep_common::endpoint::{EP_ACCEPTED, EP_PERMITTED, EP_SRC_WHITELIST};
use vpcep_tests::{
    harness::{ControlPlane, Pki, TempDir, agent::*, eventually, free_port, spawn_guarded},
    require_root,
};

/// Stops the in-process agent (and waits for its data-plane thread) when dropped.
struct AgentTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl AgentTask {
    fn start(cfg: AgentConfig) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            run(cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("agent did not stop")
                .unwrap();
        }
    }
}

impl Drop for AgentTask {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The `vpcep` binary as a tenant (token and project) or the operator would run it, with a
/// HOME of its own so that no profile of the machine is read; returns its `-o json` output.
async fn cli(
    base: &str,
    token: &str,
    project: &str,
    home: &std::path::Path,
    args: &[&str],
) -> Value {
    let mut cmd = std::process::Command::new(vpcep_tests::vpcep_bin());
    cmd.args(args)
        .args(["-o", "json"])
        .env("VPCEP_URL", base)
        .env("VPCEP_TOKEN", token)
        .env("VPCEP_PROJECT_ID", project)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("VPCEP_AK")
        .env_remove("VPCEP_SK")
        .env_remove("VPCEP_PROFILE")
        .env_remove("VPCEP_CONFIG");
    match pki_of(base) {
        Some(pki) => cmd.env("VPCEP_CA_FILE", pki.ca_file()),
        None => cmd.env_remove("VPCEP_CA_FILE"),
    };
    let out = blocking(move || cmd.output().unwrap()).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "vpcep {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("vpcep {args:?}: not JSON ({e}): {stdout}"))
}

/// The tenant's story through the `vpcep` CLI, and what the kernel does at each step: the
/// provider creates and whitelists a service, the consumer an endpoint; pending, nothing
/// passes; accepted, a request succeeds; rejected, a running transfer is cut; accepted
/// again, it works; the whitelist entry removed, the flow is cut; the endpoint deleted, its
/// map entries and flows are gone. Along the way: NIC registration by the agent, control-
/// plane URL rotation, drift repair, metrics and conntrack collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_story_through_the_agent_and_kernel() {
    require_root!();
    let topo = std::sync::Arc::new(topology());
    let cp = control_plane().await;
    let base = cp.server.url();
    // The consumer's NIC is not in the inventory: the agent registers it.
    let w = inventory(&base, false).await;
    let home = TempDir::new("agent-cli-home");
    let provider = |args: Vec<String>| {
        let (base, home) = (base.clone(), home.0.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&base, PROVIDER, "proj-provider", &home, &args).await
        }
    };
    let consumer = |args: Vec<String>| {
        let (base, home) = (base.clone(), home.0.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&base, CONSUMER, "proj-consumer", &home, &args).await
        }
    };
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let svc = provider(argv(&[
        "service",
        "create",
        "--port-id",
        &w.backend_port,
        "--vpc-id",
        &w.provider_vpc,
        "--port",
        "8080:80",
        "--port",
        "5353:53/udp",
        "--name",
        "web",
        "--wait",
    ]))
    .await;
    assert_eq!(svc["status"], "available", "{svc}");
    let sid = svc["id"].as_str().unwrap().to_owned();
    provider(argv(&["permission", "add", &sid, "proj-consumer"])).await;
    let pins = TempDir::bpffs("agent-test");
    let metrics_port = free_port();
    // A dead control-plane URL first: the agent moves on to the next one.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let cfg = AgentConfig::parse(&agent_toml(
        &[dead, cp.server.url()],
        &topo,
        &w,
        &pins.0,
        metrics_port,
    ))
    .unwrap();
    let stop_backend = backend_server(&topo);
    let stop_udp = backend_udp_echo(&topo);

    // The consumer's endpoint, pending acceptance (the service has approval on).
    let ep = consumer(argv(&[
        "endpoint",
        "create",
        "--service-id",
        &sid,
        "--vpc-id",
        &w.consumer_vpc,
        "--subnet-id",
        &w.consumer_subnet,
        "--port-ip",
        "10.0.0.100",
    ]))
    .await;
    assert_eq!(ep["status"], "pendingAcceptance", "{ep}");
    let ep_id = ep["id"].as_str().unwrap().to_owned();

    let agent = AgentTask::start(cfg);
    let pin_dir = pins.0.clone();
    let flags = |want: u32| {
        let pin_dir = pin_dir.clone();
        move || {
            let pin_dir = pin_dir.clone();
            async move {
                let eps = endpoints(&pin_dir);
                (eps.len() == 1 && eps[0].1.flags & (EP_ACCEPTED | EP_PERMITTED) == want)
                    .then(|| eps[0])
            }
        }
    };
    // Wait for the maps to exist before reading them.
    eventually(20, "the agent's pinned maps", || {
        let p = pin_dir.join(vpcep_common::maps::ENDPOINTS);
        async move { p.exists().then_some(()) }
    })
    .await;
    let (key, entry) = eventually(20, "the pending endpoint in the map", flags(EP_PERMITTED)).await;
    assert_eq!(services(&pin_dir).len(), 1);
    assert_eq!(ports(&pin_dir).len(), 2);
    let owners = snat_owners(&pin_dir);
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].1, u32::from_ne_bytes([192, 0, 2, 1]));

    // The agent reports what it applied.
    let op = cp.client(OPERATOR);
    eventually(10, "the applied revision", || {
        let op = op.clone();
        async move {
            let n = op
                .ok(Method::GET, &format!("/inventory/nodes/{NODE}"), None)
                .await;
            (n["applied_revision"].as_i64().unwrap_or(0) > 0).then_some(())
        }
    })
    .await;

    let port = op
        .ok(
            Method::GET,
            &format!("/inventory/ports/{}", w.consumer_port),
            None,
        )
        .await;
    assert_eq!(
        (port["node"].as_str(), port["ip"].as_str()),
        (Some(NODE), Some("10.0.0.2"))
    );

    // Pending: nothing passes.
    let t = topo.clone();
    assert!(
        blocking(move || http_get(&t, Duration::from_millis(700)))
            .await
            .is_err(),
        "a pending endpoint let a connection through"
    );

    // Accept → a request succeeds.
    provider(argv(&["connection", "accept", &sid, &ep_id])).await;
    eventually(10, "the accepted flag", flags(EP_ACCEPTED | EP_PERMITTED)).await;
    let t = topo.clone();
    let body = blocking(move || http_get(&t, Duration::from_secs(2)))
        .await
        .expect("request through the accepted endpoint");
    assert!(
        body.ends_with(b"hello"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    // An established UDP flow, to be cut by the rejection.
    let t = topo.clone();
    let udp = std::sync::Arc::new(blocking(move || consumer_udp(&t)).await);
    let u = udp.clone();
    assert!(
        blocking(move || udp_ping(&u)).await,
        "UDP through the endpoint"
    );

    // A running TCP transfer, to be cut by the rejection too.
    let transfer = consumer_transfer(&topo);
    let b = transfer.bytes.clone();
    eventually(10, "the transfer to run", move || {
        let b = b.clone();
        async move { (b.load(Ordering::Relaxed) > 256 * 1024).then_some(()) }
    })
    .await;
    assert!(
        !transfer.ended.load(Ordering::Relaxed),
        "the transfer ended early"
    );

    // Reject → the established flows and new connections are cut.
    provider(argv(&["connection", "reject", &sid, &ep_id])).await;
    eventually(10, "the rejection", flags(EP_PERMITTED)).await;
    let e = transfer.ended.clone();
    eventually(5, "the running transfer to be cut", move || {
        let e = e.clone();
        async move { e.load(Ordering::Relaxed).then_some(()) }
    })
    .await;
    let u = udp.clone();
    assert!(
        !blocking(move || udp_ping(&u)).await,
        "the established UDP flow survived the rejection"
    );
    let t = topo.clone();
    assert!(
        blocking(move || http_get(&t, Duration::from_millis(700)))
            .await
            .is_err(),
        "a rejected endpoint let a connection through"
    );

    // Accept again, then delete the entry behind the agent's back: it comes back.
    provider(argv(&["connection", "accept", &sid, &ep_id])).await;
    eventually(
        10,
        "the accepted flag again",
        flags(EP_ACCEPTED | EP_PERMITTED),
    )
    .await;
    remove_endpoint(&pin_dir, &key);
    assert!(endpoints(&pin_dir).is_empty());
    let (k2, e2) = eventually(10, "drift repair", flags(EP_ACCEPTED | EP_PERMITTED)).await;
    assert_eq!(k2, key);
    assert_eq!(
        e2.endpoint_id, entry.endpoint_id,
        "the endpoint keeps its id"
    );
    let t = topo.clone();
    blocking(move || http_get(&t, Duration::from_secs(2)))
        .await
        .expect("request after drift repair");

    // Metrics: the endpoint counted packets, both NICs are attached.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("vpcep_nic_attached{iface=\"tapc\""), "{text}");
    eventually(5, "no revision lag in the metrics", || async move {
        let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("vpcep_agent_revision_lag 0").then_some(())
    })
    .await;
    let packets: u64 = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "vpcep_endpoint_packets_total{{endpoint=\"{ep_id}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(packets > 0, "{text}");

    // Removing the consumer's domain from the whitelist cuts the flow; adding it back
    // restores it.
    for (act, want, ok) in [
        ("remove", EP_ACCEPTED, false),
        ("add", EP_ACCEPTED | EP_PERMITTED, true),
    ] {
        provider(argv(&["permission", act, &sid, "proj-consumer"])).await;
        eventually(10, "the whitelist change", flags(want)).await;
        let u = udp.clone();
        assert_eq!(
            blocking(move || udp_ping(&u)).await,
            ok,
            "UDP after whitelist {act}"
        );
    }

    // Idle flows are collected (timeouts of 2-6 s in this configuration), both directions.
    assert!(conntrack_len(&pin_dir).0 > 0, "no flows were tracked");
    let p = pin_dir.clone();
    eventually(15, "idle conntrack entries to be collected", move || {
        let p = p.clone();
        async move { (conntrack_len(&p) == (0, 0)).then_some(()) }
    })
    .await;

    // Delete the endpoint while a flow is live → its entries (and the service's) and its
    // flows are gone at once, not only after their idle timeout; its address is left as a
    // tombstone (fails closed).
    let u = udp.clone();
    assert!(
        blocking(move || udp_ping(&u)).await,
        "UDP before the delete"
    );
    assert_eq!(conntrack_len(&pin_dir), (1, 1));
    consumer(argv(&["endpoint", "delete", &ep_id])).await;
    let p = pin_dir.clone();
    // 2 s: less than the 3 s idle timeout of the flow just used.
    eventually(2, "the endpoint's entries and flows to go", move || {
        let p = p.clone();
        async move {
            let eps = endpoints(&p);
            (eps.len() == 1
                && eps[0].1.flags == vpcep_common::endpoint::EP_TOMBSTONE
                && services(&p).is_empty()
                && ports(&p).is_empty()
                && conntrack_len(&p) == (0, 0))
                .then_some(())
        }
    })
    .await;

    agent.stop().await;
    stop_backend.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_udp.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_bad_config_names_the_field() {
    let err = AgentConfig::parse(
        r#"
node_name = "node1"
underlay_ip = "not-an-ip"
control_plane = ["http://127.0.0.1:1"]
token = "t"
"#,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("underlay_ip:"), "{err}");
}

/// The real agent over mutual TLS, refused and refusing with the cause named: a node
/// certificate for another node or an expired one stop it at start (exit 64, the file and
/// the reason on stderr); a control-plane certificate its CA did not sign, or a node
/// certificate from a CA the control plane does not trust, keep it retrying with the reason
/// in its log and without the endpoint in its maps. Then the right files: it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refusals_name_their_cause() {
    require_root!();
    let topo = topology();
    let cp = control_plane().await;
    let base = cp.server.url();
    let w = world(&base).await;
    w.create_endpoint(&cp.client(CONSUMER)).await;
    let pki = cp.pki.clone().unwrap();
    pki.node(NODE, true);
    let foreign = Pki::new();
    foreign.node(NODE, false);
    let (ours, theirs) = (
        pki.dir.0.display().to_string(),
        foreign.dir.0.display().to_string(),
    );
    let pins = TempDir::bpffs("agent-mtls");
    let dir = TempDir::new("agent-mtls");
    let good = agent_toml(std::slice::from_ref(&base), &topo, &w, &pins.0, free_port());
    let start = |tag: &str, text: String| {
        let (cfg, log) = (
            dir.0.join(format!("{tag}.toml")),
            dir.0.join(format!("{tag}.log")),
        );
        std::fs::write(&cfg, text).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = spawn_guarded(
            std::process::Command::new(vpcep_tests::vpcep_bin())
                .arg("agent")
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        );
        (child, log)
    };
    let read = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();
    let no_endpoint =
        || !pins.0.join(vpcep_common::maps::ENDPOINTS).exists() || endpoints(&pins.0).is_empty();

    // Checked at start, before the kernel is touched.
    let own_cert = format!("{ours}/node-{NODE}");
    for (tag, cert, want) in [
        (
            "other-node",
            format!("{ours}/node-node2"),
            "is for node \"node2\", not \"node1\"",
        ),
        ("expired", format!("{own_cert}-expired"), "expired at"),
    ] {
        let (mut child, log) = start(tag, good.replace(&own_cert, &cert));
        let mut status = None;
        for _ in 0..300 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let err = read(&log);
        assert_eq!(status.and_then(|s| s.code()), Some(64), "{tag}: {err}");
        assert!(
            err.contains("cert_file") && err.contains(want),
            "{tag}: {err}"
        );
    }

    // Refused on the wire: the agent keeps retrying and says why.
    let server_ca = pki.ca_file().display().to_string();
    for (tag, text, want) in [
        (
            "wrong-ca",
            good.replace(&server_ca, &foreign.ca_file().display().to_string()),
            "check ca_file",
        ),
        (
            "foreign-node-ca",
            good.replace(&own_cert, &format!("{theirs}/node-{NODE}")),
            "the control plane refused this client's certificate",
        ),
    ] {
        let (child, log) = start(tag, text);
        eventually(90, &format!("{tag}: the cause in the agent's log"), || {
            let text = read(&log);
            async move { text.contains(want).then_some(()) }
        })
        .await;
        assert!(no_endpoint(), "{tag}: a refused agent programs nothing");
        drop(child);
    }

    // The same configuration with its own files: served.
    let (child, log) = start("good", good.clone());
    eventually(
        90,
        "the endpoint in the maps of the agent with its certificate",
        || {
            let ok = !no_endpoint();
            async move { ok.then_some(()) }
        },
    )
    .await;
    let text = read(&log);
    assert!(!text.contains("unreachable"), "{text}");
    drop(child);
}

/// Waits for a started agent to serve metrics. Generous: under an emulated CPU (the qemu
/// stages) loading the programs takes tens of seconds.
async fn metrics_up(port: u16) {
    eventually(90, "the agent's metrics", || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

/// cls_bpf filters (netlink attachments) at TC ingress of `iface` in `ns`.
fn netlink_filters(ns: &xtask::netns::NetNs, iface: &str) -> usize {
    let out = ns
        .exec("tc", &["filter", "show", "dev", iface, "ingress"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains("handle"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_kill_9() {
    kill_9_and_reload_keep_the_stream(None).await;
}

/// Where TCX is missing (Linux < 6.6) the agent attaches through netlink cls_bpf: a filter
/// outlives the process, so each restart must find it and replace it in place (one filter
/// per NIC, however many restarts) without a gap in traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_kill_9_on_netlink_tc() {
    kill_9_and_reload_keep_the_stream(Some("netlink")).await;
}

/// A UDP stream through the endpoint across ten kill -9 restarts and a `--reload` loses no
/// packet; with `tc_attach` given, each NIC carries exactly one netlink filter throughout.
async fn kill_9_and_reload_keep_the_stream(tc_attach: Option<&str>) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };

    require_root!();
    let topo = Arc::new(topology());
    let cp = control_plane().await;
    let w = world(&cp.server.url()).await;
    let pins = TempDir::bpffs("agent-kill");
    let cfg_dir = TempDir::new("agent-kill-cfg");
    let cons = cp.client(CONSUMER);
    let ep = w.create_endpoint(&cons).await;
    cp.client(PROVIDER)
        .ok(
            Method::POST,
            &format!(
                "/v1/proj-provider/vpc-endpoint-services/{}/connections/action",
                w.service
            ),
            Some(json!({"action": "receive", "endpoints": [ep["id"]]})),
        )
        .await;
    let start = |i: usize, args: &[&str]| {
        let port = free_port();
        let path = cfg_dir.0.join(format!("agent-{i}.toml"));
        let mut text = agent_toml(&[cp.server.url()], &topo, &w, &pins.0, port);
        if let Some(mode) = tc_attach {
            text = format!("tc_attach = \"{mode}\"\n{text}");
        }
        std::fs::write(&path, text).unwrap();
        (spawn_agent(&path, args), port)
    };
    let filters_ok = || {
        if tc_attach == Some("netlink") {
            for nic in ["tapc", "tapb"] {
                assert_eq!(
                    netlink_filters(&topo.node, nic),
                    1,
                    "netlink filters on {nic}"
                );
            }
        }
    };
    let (mut agent, port) = start(0, &[]);
    metrics_up(port).await;
    let pin_dir = pins.0.clone();
    eventually(20, "the accepted endpoint in the map", move || {
        let p = pin_dir.clone();
        async move {
            let p = p.join(vpcep_common::maps::ENDPOINTS);
            (p.exists() && {
                let eps = endpoints(p.parent().unwrap());
                eps.len() == 1 && eps[0].1.flags & EP_ACCEPTED != 0
            })
            .then_some(())
        }
    })
    .await;

    // Sink in the backend: counts distinct sequence numbers.
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = {
        let stop = stop.clone();
        let received = received.clone();
        let path = format!("/run/netns/{}", topo.vms[1].ns.name());
        std::thread::spawn(move || {
            vpcep_tests::enter_netns(&path);
            let s = std::net::UdpSocket::bind("10.0.0.5:53").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            // A deep receive buffer: a sink starved of CPU (an agent loading its programs
            // under an emulated CPU) must not drop at its own socket.
            let size: libc::c_int = 16 << 20;
            // SAFETY: setsockopt on our socket with a valid int.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            ready_tx.send(()).unwrap();
            let mut seen = std::collections::HashSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            let mut buf = [0u8; 64];
            while std::time::Instant::now() < deadline {
                match s.recv(&mut buf) {
                    Ok(n) if n >= 8 => {
                        seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                        received.store(seen.len() as u64, Ordering::Relaxed);
                    }
                    _ if stop.load(Ordering::Relaxed) => break,
                    _ => {}
                }
            }
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // Sender in the consumer: ~2,000 packets/s in bursts of 10, bounded in count and time.
    let sent = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sent = sent.clone();
        let sending = sending.clone();
        let path = format!("/run/netns/{}", topo.vms[0].ns.name());
        std::thread::spawn(move || {
            vpcep_tests::enter_netns(&path);
            let s = std::net::UdpSocket::bind("10.0.0.2:0").unwrap();
            s.connect("10.0.0.100:5353").unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut seq = 0u64;
            while sending.load(Ordering::Relaxed)
                && seq < 200_000
                && std::time::Instant::now() < deadline
            {
                for _ in 0..10 {
                    let mut p = [0u8; 32];
                    p[..8].copy_from_slice(&seq.to_be_bytes());
                    if s.send(&p).is_ok() {
                        seq += 1;
                    }
                }
                sent.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The stream flows before the first kill.
    eventually(10, "packets at the backend", || {
        let r = received.clone();
        async move { (r.load(Ordering::Relaxed) > 100).then_some(()) }
    })
    .await;
    filters_ok();
    // VPCEP_AGENT_KILLS lowers the count where each start is slow (the qemu stages).
    let kills: usize = std::env::var("VPCEP_AGENT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for i in 1..=kills {
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(agent); // SIGKILL by PID, reaped
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a, port) = start(i, &[]);
        agent = a;
        metrics_up(port).await;
    }
    // Two interface polls: a restarted agent that re-attached would show by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    filters_ok();
    // `--reload` swaps the newly loaded programs in place of the attached ones.
    drop(agent); // SIGKILL by PID, reaped
    let (a, port) = start(kills + 1, &["--reload"]);
    agent = a;
    metrics_up(port).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    filters_ok();
    sending.store(false, Ordering::Relaxed);
    sender.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    eventually(30, "the last packets", || {
        let r = received.clone();
        async move { (r.load(Ordering::Relaxed) >= total).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    eprintln!(
        "UDP stream across {kills} agent kills and a --reload (tc_attach {tc_attach:?}): sent {total}, received {}",
        received.load(Ordering::Relaxed)
    );
    assert_eq!(received.load(Ordering::Relaxed), total, "packets lost");
    assert!(total > 1000, "the stream was too short: {total}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_continues_while_the_control_plane_is_down() {
    require_root!();
    let topo = std::sync::Arc::new(topology());
    let dir = TempDir::new("agent-outage");
    let db = format!("sqlite://{}", dir.0.join("vpcep.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = PortServer::start(port, &db).await;
    let w = world(&base).await;
    let ep = w.create_endpoint(&api(&base, CONSUMER)).await;
    let action = format!(
        "/v1/proj-provider/vpc-endpoint-services/{}/connections/action",
        w.service
    );
    api(&base, PROVIDER)
        .ok(
            Method::POST,
            &action,
            Some(json!({"action": "receive", "endpoints": [ep["id"]]})),
        )
        .await;
    let pins = TempDir::bpffs("agent-outage");
    let cfg = AgentConfig::parse(&agent_toml(
        std::slice::from_ref(&base),
        &topo,
        &w,
        &pins.0,
        free_port(),
    ))
    .unwrap();
    let stop_udp = backend_udp_echo(&topo);
    let stop_tcp = backend_server(&topo);
    let agent = AgentTask::start(cfg);
    let pin_dir = pins.0.clone();
    let accepted = move |want: u32| {
        let pin_dir = pin_dir.clone();
        move || {
            let p = pin_dir.clone();
            async move {
                let path = p.join(vpcep_common::maps::ENDPOINTS);
                (path.exists() && {
                    let eps = endpoints(&p);
                    eps.len() == 1 && eps[0].1.flags & EP_ACCEPTED == want
                })
                .then_some(())
            }
        }
    };
    eventually(20, "the accepted endpoint", accepted(EP_ACCEPTED)).await;
    let t = topo.clone();
    let udp = std::sync::Arc::new(blocking(move || consumer_udp(&t)).await);
    let u = udp.clone();
    assert!(
        blocking(move || udp_ping(&u)).await,
        "UDP before the outage"
    );

    // The control plane goes away: the established flow and new flows keep working.
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let u = udp.clone();
    assert!(
        blocking(move || udp_ping(&u)).await,
        "UDP during the outage"
    );
    let t = topo.clone();
    blocking(move || http_get(&t, Duration::from_secs(2)))
        .await
        .expect("a new TCP flow during the outage");

    // It comes back at the same address; a change made then reaches the kernel.
    let _server = PortServer::start(port, &db).await;
    api(&base, PROVIDER)
        .ok(
            Method::POST,
            &action,
            Some(json!({"action": "reject", "endpoints": [ep["id"]]})),
        )
        .await;
    eventually(20, "the rejection after the outage", accepted(0)).await;
    let u = udp.clone();
    assert!(
        !blocking(move || udp_ping(&u)).await,
        "UDP after the rejection"
    );

    // --reload puts the newly loaded program into the pinned links; traffic flows after it.
    api(&base, PROVIDER)
        .ok(
            Method::POST,
            &action,
            Some(json!({"action": "receive", "endpoints": [ep["id"]]})),
        )
        .await;
    eventually(20, "the accepted endpoint again", accepted(EP_ACCEPTED)).await;
    agent.stop().await;
    // The program running on tapc (TCX on this kernel).
    let node_ns = format!("/run/netns/{}", topo.node.name());
    let running = move || {
        let ns = node_ns.clone();
        std::thread::spawn(move || {
            vpcep_tests::enter_netns(&ns);
            aya::programs::SchedClassifier::query_tcx("tapc", aya::programs::TcAttachType::Ingress)
                .unwrap()
                .1
                .iter()
                .map(|p| p.id())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    };
    let before = running();
    assert_eq!(before.len(), 1, "one program on tapc: {before:?}");
    let mut cfg = AgentConfig::parse(&agent_toml(
        std::slice::from_ref(&base),
        &topo,
        &w,
        &pins.0,
        free_port(),
    ))
    .unwrap();
    cfg.reload = true;
    let agent = AgentTask::start(cfg);
    // The pinned link now runs the newly loaded program: still one, another id.
    eventually(20, "the new program in the link", || {
        let changed = running().len() == 1 && running() != before;
        async move { changed.then_some(()) }
    })
    .await;
    let t = topo.clone();
    blocking(move || http_get(&t, Duration::from_secs(2)))
        .await
        .expect("a TCP flow after --reload");

    agent.stop().await;
    stop_udp.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_tcp.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_are_attached_as_they_appear_and_released_when_they_go() {
    require_root!();
    let mut topo = xtask::netns::Topology::new().unwrap();
    let pins = TempDir::bpffs("agent-nics");
    let metrics_port = free_port();
    // No control plane at all: attachment does not depend on it.
    let cfg = AgentConfig::parse(&format!(
        r#"
node_name = "{NODE}"
underlay_ip = "192.0.2.1"
control_plane = ["http://127.0.0.1:{}"]
token = "t"
pin_dir = "{}"
metrics_address = "127.0.0.1:{metrics_port}"
netns = "{}"
[[nic]]
iface = "tapc"
port_id = "p-c"
"#,
        free_port(),
        pins.0.display(),
        topo.node.name(),
    ))
    .unwrap();
    let agent = AgentTask::start(cfg);
    let attached = |up: u8| {
        let line = format!("vpcep_nic_attached{{iface=\"tapc\",port_id=\"p-c\"}} {up}");
        move || {
            let line = line.clone();
            async move {
                let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                text.contains(&line).then_some(())
            }
        }
    };
    let link_pins = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().count())
            .unwrap_or(0)
    };
    eventually(20, "the NIC reported as not attached", attached(0)).await;
    assert_eq!(link_pins(pins.0.join("links")), 0);

    topo.add_vm("tapc", "10.0.0.2/24", C_MAC).unwrap();
    eventually(10, "the NIC attached", attached(1)).await;
    assert_eq!(link_pins(pins.0.join("links")), 1);

    // Removing the VM removes its veth pair: the agent lets go of the link.
    drop(topo.vms.pop());
    eventually(10, "the NIC released", attached(0)).await;
    let links = pins.0.join("links");
    eventually(5, "the link pin removed", move || {
        let n = link_pins(links.clone());
        async move { (n == 0).then_some(()) }
    })
    .await;
    agent.stop().await;
}

// Isolation under revocations: one node, one agent, one endpoint at 10.0.0.100, a TCP echo
// backend; each scenario revokes something and checks the established flow at its next
// packet.

/// A TCP echo server on the backend's 10.0.0.5:80, until the flag is set or 60 s pass.
fn backend_echo(topo: &xtask::netns::Topology) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::{
        io::{Read, Write},
        sync::{Arc, atomic::AtomicBool},
        time::Instant,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    vpcep_tests::spawn_in(topo.vms[1].ns.name(), move || {
        let l = std::net::TcpListener::bind("10.0.0.5:80").unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 64];
                        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                            match s.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    stop
}

/// A TCP connection from the consumer VM to the endpoint's 10.0.0.100:8080.
async fn echo_connect(
    topo: &std::sync::Arc<xtask::netns::Topology>,
    timeout: Duration,
) -> std::io::Result<std::sync::Arc<std::net::TcpStream>> {
    let t = topo.clone();
    blocking(move || {
        t.vms[0]
            .ns
            .run(move || {
                let addr: std::net::SocketAddr = "10.0.0.100:8080".parse().unwrap();
                std::net::TcpStream::connect_timeout(&addr, timeout)
            })
            .unwrap()
    })
    .await
    .map(std::sync::Arc::new)
}

/// Sends one byte on the connection; whether anything comes back within `timeout`.
async fn echo_once(s: &std::sync::Arc<std::net::TcpStream>, b: u8, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let s = s.clone();
    blocking(move || {
        let mut r = &*s;
        if r.write_all(&[b]).is_err() {
            return false;
        }
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 8];
        matches!(r.read(&mut buf), Ok(n) if n > 0)
    })
    .await
}

/// The packets the kernel counted with `reason`, over all hooks, from the agent's metrics.
async fn dropped(metrics: u16, reason: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    let tag = format!("reason=\"{reason}\"}}");
    text.lines()
        .filter(|l| l.starts_with("vpcep_packets_total{") && l.contains(&tag))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the metrics count `reason` more than `before`.
async fn counted(metrics: u16, reason: &'static str, before: u64) {
    eventually(5, reason, || async move {
        (dropped(metrics, reason).await > before).then_some(())
    })
    .await;
}

/// The live (not tombstoned) entry at the endpoint's address, if any.
fn live_entry(pins: &std::path::Path) -> Option<vpcep_common::endpoint::Endpoint> {
    use vpcep_common::endpoint::EP_TOMBSTONE;
    endpoints(pins)
        .into_iter()
        .find(|(k, e)| {
            k.ip_be == u32::from_ne_bytes([10, 0, 0, 100]) && e.flags & EP_TOMBSTONE == 0
        })
        .map(|(_, e)| e)
}

/// The scenario's node: control plane, world, the accepted endpoint, the agent, the echo
/// backend. Stopped and removed on drop (agent first).
struct Scene {
    agent: Option<AgentTask>,
    /// What the agent was started with (a test may restart it).
    agent_config: AgentConfig,
    stop_echo: std::sync::Arc<std::sync::atomic::AtomicBool>,
    topo: std::sync::Arc<xtask::netns::Topology>,
    pins: TempDir,
    metrics: u16,
    w: World,
    ep: String,
    cp: ControlPlane,
}

impl Scene {
    /// `endpoint` holds extra fields of the endpoint's create request; `toml` extra
    /// top-level agent settings.
    async fn start(tag: &str, endpoint: Value, toml: &str) -> Self {
        Self::start_with(tag, endpoint, toml, "", topology()).await
    }

    /// As [`Scene::start`], with `tables` appended to the agent's configuration and the
    /// VMs of `topo`.
    async fn start_with(
        tag: &str,
        endpoint: Value,
        toml: &str,
        tables: &str,
        topo: xtask::netns::Topology,
    ) -> Self {
        let topo = std::sync::Arc::new(topo);
        let cp = control_plane().await;
        let w = world(&cp.server.url()).await;
        let pins = TempDir::bpffs(tag);
        let metrics = free_port();
        let text = agent_toml(&[cp.server.url()], &topo, &w, &pins.0, metrics).replacen(
            "netns = ",
            &format!("{toml}\nnetns = "),
            1,
        ) + tables;
        let cfg = AgentConfig::parse(&text).unwrap();
        let stop_echo = backend_echo(&topo);
        let mut s = Self {
            agent: None,
            agent_config: cfg.clone(),
            stop_echo,
            topo,
            pins,
            metrics,
            w,
            ep: String::new(),
            cp,
        };
        s.ep = s.create_endpoint(endpoint).await;
        s.agent = Some(AgentTask::start(cfg));
        let p = s.pins.0.clone();
        eventually(20, "the accepted endpoint in the map", move || {
            let p = p.clone();
            async move {
                p.join(vpcep_common::maps::ENDPOINTS)
                    .exists()
                    .then_some(())?;
                live_entry(&p)
                    .filter(|e| {
                        e.flags & (EP_ACCEPTED | EP_PERMITTED) == EP_ACCEPTED | EP_PERMITTED
                    })
                    .map(|_| ())
            }
        })
        .await;
        s
    }

    /// Creates an endpoint at 10.0.0.100 and accepts it; returns its id.
    async fn create_endpoint(&self, extra: Value) -> String {
        let mut body = self.w.endpoint_body();
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        let ep = self
            .cp
            .client(CONSUMER)
            .ok(Method::POST, "/v1/proj-consumer/vpc-endpoints", Some(body))
            .await;
        let id = ep["id"].as_str().unwrap().to_owned();
        self.connection(&id, "receive").await;
        id
    }

    async fn connection(&self, ep: &str, action: &str) {
        self.cp
            .client(PROVIDER)
            .ok(
                Method::POST,
                &format!(
                    "/v1/proj-provider/vpc-endpoint-services/{}/connections/action",
                    self.w.service
                ),
                Some(json!({"action": action, "endpoints": [ep]})),
            )
            .await;
    }

    /// Waits until the live entry satisfies `f`; returns it.
    async fn entry(
        &self,
        what: &str,
        f: impl Fn(&vpcep_common::endpoint::Endpoint) -> bool,
    ) -> vpcep_common::endpoint::Endpoint {
        let f = &f;
        eventually(10, what, || {
            let p = self.pins.0.clone();
            async move { live_entry(&p).filter(f) }
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.stop_echo.store(true, Ordering::Relaxed);
    }
}

const USABLE: u32 = EP_ACCEPTED | EP_PERMITTED;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_flow_stays_dead_after_re_accept() {
    require_root!();
    let s = Scene::start("agent-reaccept", json!({}), "").await;
    let conn = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(
        echo_once(&conn, b'a', Duration::from_secs(2)).await,
        "echo before the rejection"
    );
    let gen0 = s.entry("the endpoint", |_| true).await.generation;

    s.connection(&s.ep, "reject").await;
    s.entry("the rejection", |e| e.flags & USABLE == EP_PERMITTED)
        .await;
    assert!(
        !echo_once(&conn, b'b', Duration::from_millis(700)).await,
        "the established flow survived the rejection"
    );
    let before = dropped(s.metrics, "drop_tcp_no_flow").await;
    s.connection(&s.ep, "receive").await;
    let e = s
        .entry("the re-acceptance", |e| e.flags & USABLE == USABLE)
        .await;
    assert_ne!(e.generation, gen0, "re-accepted with the old generation");
    // Neither the byte sent while rejected (retransmitted) nor a new one gets through.
    assert!(
        !echo_once(&conn, b'c', Duration::from_millis(1500)).await,
        "the old flow came back after re-accept"
    );
    counted(s.metrics, "drop_tcp_no_flow", before).await;
    // A new connection is a new flow of the new generation.
    let fresh = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(
        echo_once(&fresh, b'd', Duration::from_secs(2)).await,
        "a new connection after re-accept"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_endpoint_does_not_inherit_old_flows() {
    require_root!();
    let s = Scene::start("agent-recreate", json!({}), "").await;
    let conn = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(
        echo_once(&conn, b'a', Duration::from_secs(2)).await,
        "echo before the delete"
    );
    let old = s.entry("the endpoint", |_| true).await;

    s.cp.client(CONSUMER)
        .ok(
            Method::DELETE,
            &format!("/v1/proj-consumer/vpc-endpoints/{}", s.ep),
            None,
        )
        .await;
    let p = s.pins.0.clone();
    eventually(10, "the endpoint to go", move || {
        let p = p.clone();
        async move { live_entry(&p).is_none().then_some(()) }
    })
    .await;
    // The same VPC and address, a new endpoint.
    let ep2 = s.create_endpoint(json!({})).await;
    assert_ne!(ep2, s.ep);
    let new = s
        .entry("the new endpoint", |e| {
            e.marker_id != old.marker_id && e.flags & USABLE == USABLE
        })
        .await;
    assert_ne!(new.generation, old.generation);
    assert_ne!(new.endpoint_id, old.endpoint_id);
    assert!(
        !echo_once(&conn, b'b', Duration::from_millis(1500)).await,
        "a flow of the deleted endpoint passed through the new one"
    );
    let fresh = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(
        echo_once(&fresh, b'c', Duration::from_secs(2)).await,
        "a new connection to the new endpoint"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_the_source_whitelist_cuts_the_established_flow() {
    require_root!();
    let s = Scene::start("agent-whitelist", json!({}), "").await;
    let path = format!("/v1/proj-consumer/vpc-endpoints/{}", s.ep);
    let cons = s.cp.client(CONSUMER);
    let conn = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(
        echo_once(&conn, b'a', Duration::from_secs(2)).await,
        "echo without a whitelist"
    );
    let e0 = s.entry("the endpoint", |_| true).await;

    // Turned on with the consumer's address in it: re-checked, and kept.
    cons.ok(
        Method::PUT,
        &path,
        Some(json!({"whitelist": ["10.0.0.2/32", "10.0.0.64/26"], "enable_whitelist": true})),
    )
    .await;
    let e1 = s
        .entry("the whitelist on", |e| e.flags & EP_SRC_WHITELIST != 0)
        .await;
    assert_ne!(
        e1.epoch, e0.epoch,
        "turning the whitelist on kept the epoch"
    );
    assert_eq!(e1.generation, e0.generation);
    assert!(
        echo_once(&conn, b'b', Duration::from_secs(2)).await,
        "an allowed flow was cut"
    );

    // The consumer's CIDR removed: cut at its next packet.
    let before = dropped(s.metrics, "drop_flow_revoked").await;
    cons.ok(
        Method::PUT,
        &path,
        Some(json!({"whitelist": ["10.0.0.64/26"]})),
    )
    .await;
    let e2 = s
        .entry("the narrowed whitelist", |e| e.epoch != e1.epoch)
        .await;
    assert_eq!(
        e2.generation, e0.generation,
        "the whitelist is not a new instance"
    );
    assert!(
        !echo_once(&conn, b'c', Duration::from_millis(1500)).await,
        "the flow survived the removal of its source CIDR"
    );
    counted(s.metrics, "drop_flow_revoked", before).await;
    assert!(
        echo_connect(&s.topo, Duration::from_millis(700))
            .await
            .is_err(),
        "a new connection from a removed source"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoint_fails_closed_for_its_grace_period() {
    use vpcep_common::endpoint::EP_TOMBSTONE;
    require_root!();
    // Long enough to outlast the first agent; the restarted one has a short one.
    let mut s = Scene::start("agent-tombstone", json!({}), "tombstone_secs = 60").await;
    let key = endpoints(&s.pins.0)[0].0;
    s.cp.client(CONSUMER)
        .ok(
            Method::DELETE,
            &format!("/v1/proj-consumer/vpc-endpoints/{}", s.ep),
            None,
        )
        .await;
    let pins = s.pins.0.clone();
    let tombstone = move || {
        let p = pins.clone();
        move || {
            let p = p.clone();
            async move {
                let eps = endpoints(&p);
                (eps.len() == 1 && eps[0].0 == key && eps[0].1.flags == EP_TOMBSTONE)
                    .then(|| eps[0].1)
            }
        }
    };
    let t = eventually(10, "the tombstone", tombstone()).await;
    assert_eq!(
        t,
        vpcep_common::endpoint::Endpoint {
            flags: EP_TOMBSTONE,
            ..Default::default()
        }
    );
    // A packet to the address is dropped and counted, not handed to the node's stack.
    let before = dropped(s.metrics, "drop_endpoint_deleted").await;
    assert!(
        echo_connect(&s.topo, Duration::from_millis(700))
            .await
            .is_err()
    );
    counted(s.metrics, "drop_endpoint_deleted", before).await;

    // A restarted agent keeps the tombstone it finds, for a grace period of its own.
    if let Some(a) = s.agent.take() {
        a.stop().await;
    }
    let text = agent_toml(&[s.cp.server.url()], &s.topo, &s.w, &s.pins.0, s.metrics).replacen(
        "netns = ",
        "tombstone_secs = 3\nnetns = ",
        1,
    );
    let restarted = std::time::Instant::now();
    s.agent = Some(AgentTask::start(AgentConfig::parse(&text).unwrap()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eventually(1, "the tombstone after the restart", tombstone()).await;
    // Then it goes.
    let p = s.pins.0.clone();
    eventually(10, "the tombstone to expire", move || {
        let p = p.clone();
        async move { endpoints(&p).is_empty().then_some(()) }
    })
    .await;
    assert!(
        restarted.elapsed() >= Duration::from_secs(3),
        "the tombstone went before its grace period"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_through_the_api_limits_live_flows() {
    require_root!();
    let s = Scene::start("agent-limit", json!({}), "").await;
    s.cp.client(PROVIDER)
        .ok(
            Method::PUT,
            &format!("/v1/proj-provider/vpc-endpoint-services/{}", s.w.service),
            Some(json!({"max_connections": 2})),
        )
        .await;
    let e = s.entry("the limit in the map", |e| e.max_flows == 2).await;
    assert_eq!(e.new_flows_per_sec, 0);
    let c1 = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    let c2 = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(echo_once(&c1, b'a', Duration::from_secs(2)).await);
    assert!(echo_once(&c2, b'b', Duration::from_secs(2)).await);
    let before = dropped(s.metrics, "drop_endpoint_flow_limit").await;
    assert!(
        echo_connect(&s.topo, Duration::from_millis(1000))
            .await
            .is_err(),
        "a third concurrent connection over max_connections = 2"
    );
    counted(s.metrics, "drop_endpoint_flow_limit", before).await;
    // The two live flows are untouched.
    assert!(echo_once(&c1, b'c', Duration::from_secs(2)).await);
    s.stop().await;
}

/// Reads one PROXY v2 header from `s` with the `ppp` crate: the source address, and the
/// vpcep TLVs by subtype.
fn read_proxy_header(
    s: &mut std::net::TcpStream,
) -> (
    std::net::SocketAddr,
    std::collections::BTreeMap<u8, Vec<u8>>,
) {
    use std::io::Read;
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut all = fixed.to_vec();
    all.resize(16 + len, 0);
    s.read_exact(&mut all[16..]).unwrap();
    let h = ppp::v2::Header::try_from(&all[..]).unwrap();
    let src = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            std::net::SocketAddr::V4(std::net::SocketAddrV4::new(a.source_address, a.source_port))
        }
        other => panic!("{other:?}"),
    };
    let tlvs = h
        .tlvs()
        .map(|t| t.unwrap())
        .filter(|t| t.kind == vpcep_common::endpoint::PP2_TYPE_VPCEP)
        .map(|t| (t.value[0], t.value[1..].to_vec()))
        .collect();
    (src, tlvs)
}

/// tcp_proxy from the API to the backend: the provider sets `proxy_vni`; the agent writes
/// the mode and the endpoint's template; a new connection's backend (the echo server, whose
/// answer begins with the header it received) reads the consumer's address, the endpoint's
/// id, marker id, VPC and VNI. A connection opened before the change keeps its mode: its
/// stream gets no header. Then toa_open, open, proxy_open and close, each through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_through_the_api_and_agent() {
    use std::io::{Read, Write};
    use vpcep_common::endpoint::*;
    require_root!();
    let s = Scene::start("agent-proxy", json!({}), "").await;
    let before = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    assert!(echo_once(&before, b'a', Duration::from_secs(2)).await);
    let old = s.entry("the endpoint", |_| true).await.epoch;
    s.cp.client(PROVIDER)
        .ok(
            Method::PUT,
            &format!("/v1/proj-provider/vpc-endpoint-services/{}", s.w.service),
            Some(json!({"tcp_proxy": "proxy_vni", "proxy_header_placement": "on_first_ack"})),
        )
        .await;
    let e = s.entry("the new mode's epoch", |e| e.epoch != old).await;
    let vni = endpoints(&s.pins.0)
        .into_iter()
        .find(|(_, x)| x.endpoint_id == e.endpoint_id)
        .map(|(k, _)| k.vpc_id)
        .unwrap();
    let ep =
        s.cp.client(CONSUMER)
            .ok(
                Method::GET,
                &format!("/v1/proj-consumer/vpc-endpoints/{}", s.ep),
                None,
            )
            .await;
    let marker = ep["marker_id"].as_u64().unwrap() as u32;
    let c = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
    let port = c.local_addr().unwrap().port();
    let (src, tlvs) = blocking(move || {
        let mut r = &*c;
        r.write_all(b"z").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut s = c.try_clone().unwrap();
        let got = read_proxy_header(&mut s);
        let mut z = [0u8; 1];
        s.read_exact(&mut z).unwrap();
        assert_eq!(&z, b"z", "the client's byte follows the header");
        got
    })
    .await;
    assert_eq!(src, format!("10.0.0.2:{port}").parse().unwrap());
    assert_eq!(tlvs[&PP2_VPCEP_ENDPOINT_ID], s.ep.as_bytes());
    assert_eq!(tlvs[&PP2_VPCEP_MARKER_ID], marker.to_be_bytes());
    assert_eq!(tlvs[&PP2_VPCEP_VPC_ID], s.w.consumer_vpc.as_bytes());
    assert_eq!(tlvs[&PP2_VPCEP_VNI], vni.to_be_bytes());
    // The agent's metrics count the insertion, under the flow's mode.
    let m = s.metrics;
    eventually(5, "the header in the metrics", || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{m}/metrics"))
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        text.lines()
            .any(|l| l == "vpcep_proxy_events_total{mode=\"proxy_vni\",event=\"header_sent\"} 1")
            .then_some(())
    })
    .await;
    // The connection from before the change: still plain, still echoed byte for byte.
    let b = before.clone();
    let echoed = blocking(move || {
        let mut r = &*b;
        r.write_all(b"q").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        r.read(&mut buf)
            .map(|n| buf[..n].to_vec())
            .unwrap_or_default()
    })
    .await;
    assert_eq!(echoed, b"q");
    // A bad placement is refused, naming the field.
    let (status, body) =
        s.cp.client(PROVIDER)
            .call(
                Method::PUT,
                &format!("/v1/proj-provider/vpc-endpoint-services/{}", s.w.service),
                Some(json!({"proxy_header_placement": "sometimes"})),
            )
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("proxy_header_placement"),
        "{body}"
    );
    // The other modes, each from the API through the agent to a new connection: a header
    // where the mode has one (its source the consumer's own address), the bare stream
    // otherwise; the agent's metrics count each mode's insertions.
    for (mode, header, event) in [
        ("toa_open", false, Some("toa_inserted")),
        ("open", true, Some("header_sent")),
        ("proxy_open", true, Some("header_sent")),
        ("close", false, None),
    ] {
        let old = s.entry("the endpoint", |_| true).await.epoch;
        s.cp.client(PROVIDER)
            .ok(
                Method::PUT,
                &format!("/v1/proj-provider/vpc-endpoint-services/{}", s.w.service),
                Some(json!({"tcp_proxy": mode})),
            )
            .await;
        s.entry("the new mode's epoch", |e| e.epoch != old).await;
        let c = echo_connect(&s.topo, Duration::from_secs(2)).await.unwrap();
        let port = c.local_addr().unwrap().port();
        let src = blocking(move || {
            let mut r = &*c;
            r.write_all(b"y").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut s = c.try_clone().unwrap();
            let src = header.then(|| read_proxy_header(&mut s).0);
            let mut y = [0u8; 1];
            s.read_exact(&mut y).unwrap();
            assert_eq!(&y, b"y", "{mode}: the client's byte");
            src
        })
        .await;
        if header {
            assert_eq!(
                src,
                Some(format!("10.0.0.2:{port}").parse().unwrap()),
                "{mode}"
            );
        }
        if let Some(event) = event {
            let m = s.metrics;
            let want = format!("vpcep_proxy_events_total{{mode=\"{mode}\",event=\"{event}\"}} ");
            eventually(5, "the mode's insertion in the metrics", || {
                let want = want.clone();
                async move {
                    let r = reqwest::get(format!("http://127.0.0.1:{m}/metrics"))
                        .await
                        .ok()?;
                    let text = r.text().await.ok()?;
                    text.lines()
                        .any(|l| l.starts_with(&want) && !l.ends_with(" 0"))
                        .then_some(())
                }
            })
            .await;
        }
    }
    s.stop().await;
}
