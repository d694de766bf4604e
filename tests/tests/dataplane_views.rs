//! `vpcep dataplane stats|endpoints|flows`: the real binary reads the maps a data plane
//! pinned (as the agent pins them) and shows what the kernel holds.
use std::process::Command;

use serde_json::Value;
use vpcep::dataplane::Dataplane;
use vpcep_tests::{fastpath::*, harness::TempDir, require_root, vpcep_bin};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(vpcep_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = run(args);
    assert!(ok, "vpcep {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn node_local_views_read_the_pinned_maps() {
    require_root!();
    // Build the binary before anything is pinned.
    vpcep_bin();
    let pins = TempDir::bpffs("views");
    let (ns, n) = namespace();
    let dir = pins.0.clone();
    ns.run(move || {
        let mut dp = Dataplane::load_pinned(&dir).unwrap();
        fill(&mut dp, &n, PORT_LO, PORT_HI);
        let syn = tcp(C_MAC, VMAC, C_IP, EP_IP, 33000, 8080, SYN, b"");
        let out = run_tc(&mut dp, n.c, &syn).out;
        let snat_port = u16::from_be_bytes([out[34], out[35]]);
        run_tc(
            &mut dp,
            n.b,
            &tcp(B_MAC, VMAC, B_IP, SNAT_IP, 80, snat_port, SYN | ACK, b""),
        );
        let pending = tcp(C_MAC, VMAC, C_IP, EP_PENDING, 33001, 8080, SYN, b"");
        run_tc(&mut dp, n.c, &pending);
    })
    .unwrap();
    let dir = pins.0.to_str().unwrap();

    let eps = json(&["dataplane", "endpoints", "--pin-dir", dir, "-o", "json"]);
    let ep = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == 7)
        .expect("endpoint 7");
    assert_eq!(ep["ip"], "10.0.0.100");
    assert_eq!(
        (ep["accepted"].as_bool(), ep["permitted"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(
        (ep["packets"].as_u64(), ep["new_flows"].as_u64()),
        (Some(2), Some(1)),
        "{ep}"
    );
    let pending = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == 8)
        .unwrap();
    assert_eq!(
        (pending["accepted"].as_bool(), pending["drops"].as_u64()),
        (Some(false), Some(1))
    );

    let flows = json(&["dataplane", "flows", "--pin-dir", dir, "-o", "json"]);
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["consumer"], "10.0.0.2:33000");
    assert_eq!(flows[0]["endpoint"], "10.0.0.100:8080");
    assert_eq!(flows[0]["backend"], "10.0.0.5:80");
    assert_eq!(flows[0]["state"], "established");
    assert!(
        flows[0]["snat"]
            .as_str()
            .unwrap()
            .starts_with("198.19.128.10:")
    );

    let stats = json(&["dataplane", "stats", "--pin-dir", dir, "-o", "json"]);
    let count = |r: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["reason"] == r)
            .map(|s| s["packets"].as_u64().unwrap())
    };
    assert_eq!(count("fwd_new_flow"), Some(1));
    assert_eq!(count("rev_reply"), Some(1));
    assert_eq!(count("drop_not_accepted"), Some(1));

    // People get a table with a header row.
    let (ok, table, _) = run(&["dataplane", "stats", "--pin-dir", dir]);
    assert!(ok && table.starts_with("HOOK"), "{table}");
    // No agent pinned anything there: a clear error and a non-zero exit.
    let (ok, _, err) = run(&[
        "dataplane",
        "flows",
        "--pin-dir",
        "/sys/fs/bpf/vpcep-nothing-here",
    ]);
    assert!(!ok && err.contains("pinned map"), "{err}");
}
