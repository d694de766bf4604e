//! Three nodes, three agents: consumers on nodes 1 and 2 (each 10.0.0.2 in its own VPC),
//! the backend on node 3 (10.0.0.5, the provider's VPC; all three 10.0.0.0/24). The nodes
//! are namespaces on an underlay bridge; each agent (a `vpcep agent` process) sets up its
//! node's overlay device and fills its maps from the control plane's feed.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use vpcep_common::endpoint::EP_ACCEPTED;
use vpcep_tests::{
    harness::{ChildGuard, TempDir, agent::*, eventually, free_port},
    require_root,
};
use xtask::netns::{Cluster, NetNs};

fn node_name(i: usize) -> String {
    format!("node{}", i + 1)
}

fn token(i: usize) -> String {
    if i == 0 {
        AGENT.to_owned()
    } else {
        format!("{AGENT}-node{}", i + 1)
    }
}

fn agent_toml(base: &str, c: &Cluster, i: usize, pins: &Path, port: &str, metrics: u16) -> String {
    let iface = if i < 2 { "tapc" } else { "tapb" };
    format!(
        r#"
node_name = "{}"
underlay_ip = "{}"
control_plane = ["{base}"]
{}pin_dir = "{}"
metrics_address = "127.0.0.1:{metrics}"
resync_interval_ms = 500
netns = "{}"

[overlay]
device = "vx0"

[[nic]]
iface = "{iface}"
port_id = "{port}"
"#,
        node_name(i),
        Cluster::underlay_ip(i),
        agent_auth(&[base.to_owned()], &node_name(i), &token(i)),
        pins.display(),
        c.nodes[i].node.name(),
    )
}

/// The backend VM's services until `stop` or 90 s: TCP :80 (`/stream` → 16 KiB every 5 ms
/// until the peer goes; otherwise a short body), recording peers; UDP echo on :53.
fn backend(ns: &NetNs, stop: Arc<AtomicBool>) -> Arc<Mutex<BTreeSet<[u8; 4]>>> {
    let peers = Arc::new(Mutex::new(BTreeSet::new()));
    let p = peers.clone();
    let s = stop.clone();
    vpcep_tests::tcp_server(
        ns.name(),
        "10.0.0.5:80",
        stop.clone(),
        90,
        move |mut c, peer| {
            if let SocketAddr::V4(a) = peer {
                p.lock().unwrap().insert(a.ip().octets());
            }
            let _ = c.set_write_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap_or(0);
            if !buf[..n].starts_with(b"GET /stream") {
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello");
                return;
            }
            let chunk = [b'x'; 16 * 1024];
            let end = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                if c.write_all(&chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        },
    );
    vpcep_tests::udp_echo_server(ns.name(), "10.0.0.5:53", stop, 90);
    peers
}

fn http_get(ns: &NetNs) -> std::io::Result<Vec<u8>> {
    ns.run(|| -> std::io::Result<Vec<u8>> {
        let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
    .unwrap()
}

fn udp_socket(ns: &NetNs) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind("10.0.0.2:0").unwrap();
        s.connect("10.0.0.100:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
    .unwrap()
}

/// Reads a counter from an agent's metrics (0 when absent).
async fn metric(port: u16, line_start: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_agents() {
    require_root!();
    let mut cluster = Cluster::new(3).unwrap();
    // Node 3's agent creates its overlay device itself.
    cluster.nodes[2].node.ip(&["link", "del", "vx0"]).unwrap();
    for (i, (ip, mac, host_if)) in [
        ("10.0.0.2/24", C_MAC, "tapc"),
        ("10.0.0.2/24", C_MAC, "tapc"),
        ("10.0.0.5/24", B_MAC, "tapb"),
    ]
    .into_iter()
    .enumerate()
    {
        let vm = cluster.nodes[i].add_vm(host_if, ip, mac).unwrap();
        vm.ns
            .ip(&["route", "add", "default", "via", "10.0.0.1"])
            .unwrap();
    }
    let cluster = Arc::new(cluster);

    // Inventory: three nodes, a VPC per VM (all 10.0.0.0/24), the VMs' NICs.
    let cp = control_plane().await;
    let base = cp.server.url();
    let op = cp.client(OPERATOR);
    for i in 0..3 {
        op.ok(
            Method::PUT,
            &format!("/inventory/nodes/{}", node_name(i)),
            Some(json!({"underlay_ip": Cluster::underlay_ip(i)})),
        )
        .await;
    }
    let mut ports = Vec::new();
    let mut vpcs = Vec::new();
    for (i, (project, ip, mac)) in [
        ("proj-consumer", "10.0.0.2", C_MAC),
        ("proj-consumer", "10.0.0.2", C_MAC),
        ("proj-provider", "10.0.0.5", B_MAC),
    ]
    .into_iter()
    .enumerate()
    {
        let (vpc, subnet) = vpc_with_subnet(&op, project).await;
        ports.push(add_port(&op, &subnet, &node_name(i), ip, mac).await);
        vpcs.push((vpc, subnet));
    }
    let prov = cp.client(PROVIDER);
    let svc = prov
        .ok(
            Method::POST,
            "/v1/proj-provider/vpc-endpoint-services",
            Some(json!({
                "port_id": ports[2],
                "vpc_id": vpcs[2].0,
                "server_type": "VM",
                "approval_enabled": false,
                "ports": [
                    {"client_port": 8080, "server_port": 80, "protocol": "TCP"},
                    {"client_port": 5353, "server_port": 53, "protocol": "UDP"},
                ],
            })),
        )
        .await;
    let sid = s(&svc, "id");
    eventually(10, "the service", || {
        let (prov, path) = (
            prov.clone(),
            format!("/v1/proj-provider/vpc-endpoint-services/{sid}"),
        );
        async move { (prov.ok(Method::GET, &path, None).await["status"] == "available").then_some(()) }
    })
    .await;
    prov.ok(
        Method::POST,
        &format!("/v1/proj-provider/vpc-endpoint-services/{sid}/permissions/action"),
        Some(json!({"permissions": ["iam:domain::proj-consumer"], "action": "add"})),
    )
    .await;
    let cons = cp.client(CONSUMER);
    let mut eps = Vec::new();
    for (vpc, subnet) in &vpcs[..2] {
        let ep = cons
            .ok(
                Method::POST,
                "/v1/proj-consumer/vpc-endpoints",
                Some(json!({
                    "endpoint_service_id": sid,
                    "vpc_id": vpc,
                    "subnet_id": subnet,
                    "port_ip": "10.0.0.100",
                })),
            )
            .await;
        eps.push(s(&ep, "id"));
    }

    // An agent per node.
    let pins: Vec<TempDir> = (0..3)
        .map(|i| TempDir::bpffs(&format!("overlay-{i}")))
        .collect();
    let cfg_dir = TempDir::new("overlay-cfg");
    let metrics: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |i: usize, run: usize| {
        let path = cfg_dir.0.join(format!("agent-{i}-{run}.toml"));
        std::fs::write(
            &path,
            agent_toml(&base, &cluster, i, &pins[i].0, &ports[i], metrics[i]),
        )
        .unwrap();
        spawn_agent(&path, &[])
    };
    let mut agents: Vec<Option<ChildGuard>> = (0..3).map(|i| Some(start(i, 0))).collect();
    for (i, p) in pins.iter().take(2).enumerate() {
        let p = p.0.clone();
        eventually(
            30,
            &format!("the accepted endpoint on node {}", i + 1),
            move || {
                let p = p.clone();
                async move {
                    (p.join(vpcep_common::maps::ENDPOINTS).exists()
                        && endpoints(&p)
                            .iter()
                            .any(|(_, e)| e.flags & EP_ACCEPTED != 0))
                    .then_some(())
                }
            },
        )
        .await;
    }
    for (i, port) in metrics.iter().enumerate() {
        let port = *port;
        eventually(
            30,
            &format!("node {}'s overlay", i + 1),
            move || async move {
                (metric(port, "vpcep_overlay_attached{device=\"vx0\"}").await == 1).then_some(())
            },
        )
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let peers = backend(&cluster.nodes[2].vms[0].ns, stop.clone());
    // TCP and UDP from both consumers.
    let both = |f: fn(&NetNs) -> bool| {
        let c = cluster.clone();
        async move {
            let a = {
                let c = c.clone();
                blocking(move || f(&c.nodes[0].vms[0].ns))
            };
            let b = blocking(move || f(&c.nodes[1].vms[0].ns));
            (a.await, b.await)
        }
    };
    let get_ok = |ns: &NetNs| http_get(ns).is_ok_and(|b| b.ends_with(b"hello"));
    // The first packets may race the last map writes: a few tries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while both(get_ok).await != (true, true) {
        assert!(
            Instant::now() < deadline,
            "HTTP through the overlay from both nodes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ping = |ns: &NetNs| {
        let s = udp_socket(ns);
        let mut buf = [0u8; 64];
        (0..3).any(|_| {
            let _ = s.send(b"ping");
            matches!(s.recv(&mut buf), Ok(4))
        })
    };
    assert_eq!(both(ping).await, (true, true), "UDP from both nodes");
    // The backend saw each consumer node's SNAT address (the control plane assigned them).
    let nodes = op.ok(Method::GET, "/inventory/nodes", None).await;
    let snat_of = |name: String| -> [u8; 4] {
        let list = nodes
            .as_array()
            .or_else(|| nodes["nodes"].as_array())
            .unwrap();
        let n = list.iter().find(|n| n["name"] == name.as_str()).unwrap();
        s(n, "snat_ip")
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .octets()
    };
    let want: BTreeSet<_> = [snat_of(node_name(0)), snat_of(node_name(1))].into();
    assert_eq!(*peers.lock().unwrap(), want);

    // A running transfer to node 2's consumer while node 2's agent is killed and restarted;
    // with the MSS clamped by the agents' overlay config, nothing fragments on the way.
    let frags_before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| frag_creates(&n.node))
        .collect();
    let transfer = consumer_transfer_in(&cluster.nodes[1].vms[0].ns);
    let b = transfer.bytes.clone();
    eventually(10, "the transfer to run", move || {
        let b = b.clone();
        async move { (b.load(Ordering::Relaxed) > 256 * 1024).then_some(()) }
    })
    .await;
    for run in 1..=3 {
        // SIGKILL by PID, reaped.
        drop(agents[1].take());
        tokio::time::sleep(Duration::from_millis(200)).await;
        agents[1] = Some(start(1, run));
    }
    let at_restart = transfer.bytes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !transfer.ended.load(Ordering::Relaxed),
        "the transfer broke across agent restarts"
    );
    assert!(
        transfer.bytes.load(Ordering::Relaxed) > at_restart + 64 * 1024,
        "the transfer stalled after the agent restarts"
    );
    let frags_after: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| frag_creates(&n.node))
        .collect();
    assert_eq!(
        frags_after, frags_before,
        "fragments created during the transfer"
    );

    // Reject both endpoints: flows on both consumer nodes are cut.
    prov.ok(
        Method::POST,
        &format!("/v1/proj-provider/vpc-endpoint-services/{sid}/connections/action"),
        Some(json!({"action": "reject", "endpoints": eps})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while both(ping).await != (false, false) {
        assert!(
            Instant::now() < deadline,
            "rejection did not cut both nodes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = transfer.ended.clone();
    eventually(5, "the transfer to be cut", move || {
        let e = e.clone();
        async move { e.load(Ordering::Relaxed).then_some(()) }
    })
    .await;

    // Over the tunnel to node 3: an unknown VNI and a SNAT address that is not node 3's are
    // dropped and counted.
    let c = cluster.clone();
    blocking(move || {
        c.nodes[0]
            .node
            .run(|| {
                let sock = UdpSocket::bind("192.168.50.1:0").unwrap();
                for (vni, dst) in [(99u32, [10, 0, 0, 5]), (1, [198, 19, 255, 254])] {
                    let mut inner = Vec::new();
                    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], B_MAC_BYTES)
                        .ipv4([198, 19, 128, 1], dst, 64)
                        .udp(40000, 53)
                        .write(&mut inner, b"x")
                        .unwrap();
                    let mut pkt = vec![0x08, 0, 0, 0];
                    pkt.extend_from_slice(&(vni << 8).to_be_bytes());
                    pkt.extend_from_slice(&inner);
                    sock.send_to(&pkt, "192.168.50.3:4789").unwrap();
                }
            })
            .unwrap()
    })
    .await;
    let m3 = metrics[2];
    for reason in ["drop_tunnel_unknown_dst", "drop_tunnel_unknown_snat"] {
        let line = format!("vpcep_packets_total{{hook=\"tc-ingress\",reason=\"{reason}\"}}");
        eventually(5, reason, || {
            let line = line.clone();
            async move { (metric(m3, &line).await > 0).then_some(()) }
        })
        .await;
    }

    // Node 3 leaves (its NIC, then the node): node 1 forgets its SNAT address, keeps the
    // endpoint, and drops and counts new flows to the departed backend instead of letting
    // them pass silently.
    prov.ok(
        Method::POST,
        &format!("/v1/proj-provider/vpc-endpoint-services/{sid}/connections/action"),
        Some(json!({"action": "receive", "endpoints": eps})),
    )
    .await;
    let c = cluster.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !blocking({
        let c = c.clone();
        move || http_get(&c.nodes[0].vms[0].ns).is_ok()
    })
    .await
    {
        assert!(Instant::now() < deadline, "accepted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.ok(
        Method::DELETE,
        &format!("/inventory/ports/{}", ports[2]),
        None,
    )
    .await;
    op.ok(
        Method::DELETE,
        &format!("/inventory/nodes/{}", node_name(2)),
        None,
    )
    .await;
    let p0 = pins[0].0.clone();
    eventually(10, "node 3 to leave node 1's maps", move || {
        let p0 = p0.clone();
        async move {
            let svcs = services(&p0);
            (snat_owners(&p0).len() == 2
                && svcs.len() == 1
                && svcs[0].1.location == vpcep_common::endpoint::SVC_REMOTE
                && svcs[0].1.remote_node_be == 0
                && !endpoints(&p0).is_empty())
            .then_some(())
        }
    })
    .await;
    let c = cluster.clone();
    assert!(
        !blocking(move || ping(&c.nodes[0].vms[0].ns)).await,
        "UDP to a departed backend"
    );
    let m1 = metrics[0];
    let line = "vpcep_packets_total{hook=\"tc-ingress\",reason=\"drop_remote_backend\"}";
    eventually(5, "drop_remote_backend counted on node 1", || async move {
        (metric(m1, line).await > 0).then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    drop(agents);
}

const B_MAC_BYTES: [u8; 6] = [2, 0, 0, 0, 0, 5];

/// `Ip: FragCreates` of a namespace.
fn frag_creates(ns: &NetNs) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap())
        .unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "FragCreates")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}
