//! `cargo xtask bench convergence`: how long an API write takes to reach the kernel maps of
//! a real agent, and the feed of 100 simulated agents (real feed clients), and how many
//! bytes of the watch stream one change costs at two sizes of the store.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::json;
use vpcep::agent::{
    AgentConfig,
    feed_client::{Event, FeedClient},
    run,
};
use vpcep_common::endpoint::EP_ACCEPTED;

use vpcep_tests::harness::{TempDir, agent::*, eventually, free_port, spawn_guarded};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bytes the watch stream carries between `from` and the moment `done` has been seen.
async fn stream_bytes(base: String, after: i64, expect_changes: usize) -> usize {
    let mut resp = reqwest::Client::new()
        .get(format!("{base}/feed/watch?after={after}"))
        .header("x-auth-token", OPERATOR)
        .send()
        .await
        .unwrap();
    let (mut bytes, mut changes) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while changes < expect_changes && Instant::now() < deadline {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await
        else {
            break;
        };
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if line.windows(8).any(|w| w == b"\"change\"") {
                changes += 1;
                bytes += line.len() + 1;
            }
        }
    }
    assert_eq!(changes, expect_changes, "watch stream");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo xtask bench convergence"]
async fn convergence_report() {
    vpcep_tests::require_root!();
    let changes = env("VPCEP_BENCH_CHANGES", 1000);
    let sims = env("VPCEP_BENCH_AGENTS", 100);
    let topo = Arc::new(topology());
    let cp = control_plane_plain().await;
    let base = cp.server.url();
    let w = world_with(&base, true).await;
    let pins = TempDir::bpffs("agent-bench");
    let cfg = AgentConfig::parse(&agent_toml(
        std::slice::from_ref(&base),
        &topo,
        &w,
        &pins.0,
        free_port(),
    ))
    .unwrap();
    let ep = w.create_endpoint(&cp.client(CONSUMER)).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(cfg, async {
        let _ = stop_rx.await;
    }));
    let pin_dir = pins.0.clone();
    eventually(20, "the agent's pinned maps", || {
        let p = pin_dir.join(vpcep_common::maps::ENDPOINTS);
        async move { p.exists().then_some(()) }
    })
    .await;
    let ep_ip = u32::from_ne_bytes([10, 0, 0, 100]);
    let accepted = move |want: bool| {
        endpoints(&pin_dir)
            .iter()
            .any(|(k, e)| k.ip_be == ep_ip && (e.flags & EP_ACCEPTED != 0) == want)
    };
    eventually(20, "the endpoint in the agent's maps", || {
        let a = accepted.clone();
        async move { a(false).then_some(()) }
    })
    .await;

    let prov = cp.client(PROVIDER);
    let action = format!(
        "/v1/proj-provider/vpc-endpoint-services/{}/connections/action",
        w.service
    );
    // One change = accept or reject; returns when the API answered, then times the agent.
    let toggle = |i: usize| {
        let (prov, action, ep_id, accepted) = (
            prov.clone(),
            action.clone(),
            ep_id.clone(),
            accepted.clone(),
        );
        async move {
            let want = i.is_multiple_of(2);
            let verb = if want { "receive" } else { "reject" };
            prov.ok(
                Method::POST,
                &action,
                Some(json!({"action": verb, "endpoints": [ep_id]})),
            )
            .await;
            let returned = Instant::now();
            let deadline = returned + Duration::from_secs(5);
            while !accepted(want) {
                assert!(
                    Instant::now() < deadline,
                    "change {i} did not reach the maps"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            (returned, returned.elapsed())
        }
    };

    // 1 agent.
    let mut one = Vec::with_capacity(changes);
    for i in 0..changes {
        one.push(toggle(i).await.1);
    }

    // 100 simulated agents on the same feed, plus the real one.
    let snapshot = FeedClient::new(&base, OPERATOR).snapshot().await.unwrap();
    let received: Arc<Vec<Mutex<Vec<Instant>>>> =
        Arc::new((0..sims).map(|_| Mutex::new(Vec::new())).collect());
    let mut watchers = Vec::new();
    for s in 0..sims {
        let (base, received, ep_id) = (base.clone(), received.clone(), ep_id.clone());
        let after = snapshot.revision;
        watchers.push(tokio::spawn(async move {
            let mut watch = FeedClient::new(&base, OPERATOR).watch(after).await.unwrap();
            while let Ok(Ok(Some(ev))) =
                tokio::time::timeout(Duration::from_secs(10), watch.next()).await
            {
                if let Event::Change { kind, id, .. } = ev
                    && kind == "endpoint"
                    && id == ep_id
                {
                    received[s].lock().unwrap().push(Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut returned = Vec::with_capacity(changes);
    let mut real = Vec::with_capacity(changes);
    for i in 0..changes {
        let (r, d) = toggle(i).await;
        returned.push(r);
        real.push(d);
    }
    // Let the last events arrive, then stop the watchers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in &watchers {
        w.abort();
    }
    let mut sim_all = Vec::new();
    let mut every = real.clone();
    for s in 0..sims {
        let got = received[s].lock().unwrap().clone();
        assert_eq!(
            got.len(),
            changes,
            "watcher {s} saw {} of {changes} changes",
            got.len()
        );
        for (k, at) in got.iter().enumerate() {
            let d = at.saturating_duration_since(returned[k]);
            sim_all.push(d);
            every[k] = every[k].max(d);
        }
    }

    // Bytes per change with the store as it is, then with 200 more endpoints (the consumer
    // subnet is a /24) in it.
    let rev = FeedClient::new(&base, OPERATOR)
        .snapshot()
        .await
        .unwrap()
        .revision;
    let small = tokio::spawn(stream_bytes(base.clone(), rev, 100));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..100 {
        toggle(i).await;
    }
    let small = small.await.unwrap();
    let objects_small = FeedClient::new(&base, OPERATOR)
        .snapshot()
        .await
        .unwrap()
        .objects
        .len();
    cp.client(OPERATOR)
        .ok(
            Method::PUT,
            "/inventory/quotas/proj-consumer",
            Some(json!({"endpoint": 1000})),
        )
        .await;
    let cons = cp.client(CONSUMER);
    for _ in 0..200 {
        cons.ok(
            Method::POST,
            "/v1/proj-consumer/vpc-endpoints",
            Some(
                json!({"endpoint_service_id": w.service, "vpc_id": w.consumer_vpc,
                        "subnet_id": w.consumer_subnet}),
            ),
        )
        .await;
    }
    let snap = FeedClient::new(&base, OPERATOR).snapshot().await.unwrap();
    let large = tokio::spawn(stream_bytes(base.clone(), snap.revision, 100));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..100 {
        toggle(i).await;
    }
    let large = large.await.unwrap();

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;

    println!("\nconvergence: API write returned → change visible ({changes} changes each)");
    println!(
        "  1 agent, in its kernel maps            p50 {:>7.2} ms  p99 {:>7.2} ms",
        ms(pct(&mut one, 0.5)),
        ms(pct(&mut one, 0.99))
    );
    println!(
        "  {sims} simulated agents, each change       p50 {:>7.2} ms  p99 {:>7.2} ms  (per agent and change)",
        ms(pct(&mut sim_all, 0.5)),
        ms(pct(&mut sim_all, 0.99))
    );
    println!(
        "  every agent ({sims} simulated + 1 real)    p50 {:>7.2} ms  p99 {:>7.2} ms  (slowest agent per change)",
        ms(pct(&mut every, 0.5)),
        ms(pct(&mut every, 0.99))
    );
    println!(
        "  watch-stream bytes per change: {:.0} with {objects_small} objects, {:.0} with {} objects",
        small as f64 / 100.0,
        large as f64 / 100.0,
        snap.objects.len()
    );
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `n` requests built by `f(i)` on `clients` concurrent tasks; returns the responses'
/// bodies in order.
async fn many<F>(clients: usize, n: usize, f: F) -> Vec<serde_json::Value>
where
    F: Fn(usize) -> (Api, Method, String, serde_json::Value) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = c;
            while i < n {
                let (api, method, path, body) = f(i);
                out.push((i, api.ok(method, &path, Some(body)).await));
                i += clients;
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo xtask bench convergence"]
async fn resync_report() {
    vpcep_tests::require_root!();
    // The default is a tenth of the full size (10,000 / 100,000), spread over ten consumer
    // VPCs: loading the full size through the API takes about 7.5 minutes on two cores
    // (docs/benchmarks.md has the command).
    let services = env("VPCEP_BENCH_SERVICES", 1_000);
    let endpoints_n = env("VPCEP_BENCH_ENDPOINTS", 10_000);
    let bin = vpcep_tests::vpcep_bin();
    let topo = Arc::new(topology());
    let cp = control_plane_plain().await;
    let base = cp.server.url();
    let w = world_with(&base, true).await;
    let op = cp.client(OPERATOR);
    let t = Instant::now();
    op.ok(
        Method::PUT,
        "/inventory/quotas/proj-provider",
        Some(json!({"endpoint_service": services + 10})),
    )
    .await;
    op.ok(
        Method::PUT,
        "/inventory/quotas/proj-consumer",
        Some(json!({"endpoint": endpoints_n})),
    )
    .await;
    op.ok(
        Method::PUT,
        "/inventory/nodes/node-bulk",
        Some(json!({"underlay_ip": "192.0.2.9"})),
    )
    .await;
    let pvpc = op
        .ok(
            Method::POST,
            "/inventory/vpcs",
            Some(json!({"project_id": "proj-provider", "cidr": "10.64.0.0/16"})),
        )
        .await;
    let psub = op
        .ok(
            Method::POST,
            "/inventory/subnets",
            Some(json!({"vpc_id": pvpc["id"], "cidr": "10.64.0.0/16"})),
        )
        .await;
    let mut nets = Vec::new();
    for v in 0..10 {
        let cidr = format!("172.{}.0.0/16", 16 + v);
        let vpc = op
            .ok(
                Method::POST,
                "/inventory/vpcs",
                Some(json!({"project_id": "proj-consumer", "cidr": cidr})),
            )
            .await;
        let sub = op
            .ok(
                Method::POST,
                "/inventory/subnets",
                Some(json!({"vpc_id": vpc["id"], "cidr": cidr})),
            )
            .await;
        nets.push((vpc["id"].clone(), sub["id"].clone()));
    }
    let nets = Arc::new(nets);
    // Five services per backend NIC (the API's limit).
    let psub_id = psub["id"].clone();
    let op2 = op.clone();
    let ports = many(8, services.div_ceil(5), move |_| {
        (
            op2.clone(),
            Method::POST,
            "/inventory/ports".into(),
            json!({"subnet_id": psub_id, "node": "node-bulk"}),
        )
    })
    .await;
    let ports: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect(),
    );
    let prov = cp.client(PROVIDER);
    let (pv, pr) = (pvpc["id"].clone(), prov.clone());
    let svcs = many(8, services, move |k| {
        let port = 1000 + (k % 5) as u16;
        (
            pr.clone(),
            Method::POST,
            "/v1/proj-provider/vpc-endpoint-services".into(),
            json!({"port_id": ports[k / 5], "vpc_id": pv, "server_type": "VM", "approval_enabled": false,
                   "ports": [{"client_port": port, "server_port": port, "protocol": "TCP"}]}),
        )
    })
    .await;
    let svc_ids: Arc<Vec<String>> = Arc::new(
        svcs.iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect(),
    );
    // The consumer may use one service in ten; a hundred endpoints on each of those.
    let used = services.div_ceil(10).max(1);
    let (ids, pr) = (svc_ids.clone(), prov.clone());
    many(8, used, move |k| {
        (
            pr.clone(),
            Method::POST,
            format!(
                "/v1/proj-provider/vpc-endpoint-services/{}/permissions/action",
                ids[k * 10 % ids.len()]
            ),
            json!({"permissions": ["iam:domain::proj-consumer"], "action": "add"}),
        )
    })
    .await;
    let cons = cp.client(CONSUMER);
    let ids = svc_ids.clone();
    many(8, endpoints_n, move |i| {
        let (cv, cs) = &nets[i % nets.len()];
        (
            cons.clone(),
            Method::POST,
            "/v1/proj-consumer/vpc-endpoints".into(),
            json!({"endpoint_service_id": ids[(i % used) * 10 % ids.len()], "vpc_id": cv, "subnet_id": cs}),
        )
    })
    .await;
    let latest = FeedClient::new(&base, OPERATOR).snapshot().await.unwrap();
    let objects = latest.objects.len();
    println!(
        "\nresync: store holds {objects} objects ({services} services, {endpoints_n} endpoints), loaded in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // The control plane's share of a resync: the snapshot fetched as bytes, not parsed.
    let t = Instant::now();
    let body = reqwest::Client::new()
        .get(format!("{base}/feed/snapshot"))
        .header("x-auth-token", OPERATOR)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    println!(
        "  snapshot: {:.1} MiB served in {:.2} s",
        body.len() as f64 / (1024.0 * 1024.0),
        t.elapsed().as_secs_f64()
    );
    drop(body);

    // A fresh agent process on the node: time until it reports the latest revision applied.
    let pins = TempDir::bpffs("agent-resync");
    let cfg_dir = TempDir::new("agent-resync-cfg");
    let cfg = cfg_dir.0.join("agent.toml");
    std::fs::write(
        &cfg,
        agent_toml(std::slice::from_ref(&base), &topo, &w, &pins.0, free_port()),
    )
    .unwrap();
    let started = Instant::now();
    let child = spawn_guarded(
        std::process::Command::new(bin)
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null()),
    );
    let pid = child.pid();
    let mut peak_rss = 0;
    let resync = loop {
        peak_rss = peak_rss.max(proc_status_kib(pid, "VmRSS:"));
        let n = op
            .ok(Method::GET, &format!("/inventory/nodes/{NODE}"), None)
            .await;
        if n["applied_revision"].as_i64().unwrap_or(0) >= latest.revision {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the agent did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");
    drop(child);
    println!(
        "  fresh agent process: applied revision {} after {:.2} s (start, register, snapshot, compute, write); RSS {:.1} MiB, peak {:.1} MiB",
        latest.revision,
        resync.as_secs_f64(),
        rss.max(peak_rss) as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
