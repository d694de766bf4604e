//! How the TC program attaches, on this kernel in both modes: TCX links, and netlink cls_bpf
//! on a `clsact` qdisc (what kernels before 6.6 have). Attaching again, from the same or a
//! later process, replaces in place and never adds a second filter; a failed attach leaves
//! nothing attached.

use aya::programs::{SchedClassifier, TcAttachType};
use vpcep::dataplane::{Attached, Dataplane, Mode, NL_HANDLE, NL_PRIORITY, TcAttach};
use vpcep_common::{
    maps::PROG_TC_INGRESS,
    stats::{Hook, Reason},
};
use vpcep_tests::{harness::TempDir, require_root};
use xtask::netns::{NetNs, Topology};

fn topology() -> Topology {
    let mut topo = Topology::new().unwrap();
    topo.add_vm("tap0", "10.0.0.2/24", "02:00:00:00:00:02")
        .unwrap();
    topo.node
        .ip(&["addr", "add", "10.0.0.1/24", "dev", "tap0"])
        .unwrap();
    topo
}

/// (priority, handle, program id) of every cls_bpf filter at ingress of `iface`.
fn filters(ns: &NetNs, iface: &str) -> Vec<(u16, u32, u32)> {
    let out = ns
        .exec("tc", &["filter", "show", "dev", iface, "ingress"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let after = |k: &str| {
                w.iter()
                    .position(|x| *x == k)
                    .map(|i| w[i + 1])
                    .unwrap_or_else(|| panic!("no {k} in {l:?}"))
            };
            let handle = after("handle").trim_start_matches("0x");
            (
                after("pref").parse().unwrap(),
                u32::from_str_radix(handle, 16).unwrap(),
                after("id").parse().unwrap(),
            )
        })
        .collect()
}

fn has_clsact(ns: &NetNs, iface: &str) -> bool {
    let out = ns.exec("tc", &["qdisc", "show", "dev", iface]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("clsact")
}

fn prog_id(dp: &mut Dataplane) -> u32 {
    dp.tc_ingress().unwrap().info().unwrap().id()
}

fn ping(topo: &Topology) {
    topo.vms[0]
        .ns
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1"])
        .unwrap();
}

fn tc_packets(dp: &Dataplane) -> u64 {
    dp.counter(Hook::TcIngress, Reason::PassOtherProto)
        .unwrap()
        .packets
}

#[test]
fn netlink_attach_adds_clsact_and_keeps_one_filter_across_attempts_and_processes() {
    require_root!();
    let topo = topology();
    let pins = TempDir::bpffs("tc-nl");
    assert!(
        !has_clsact(&topo.node, "tap0"),
        "a fresh veth has no clsact"
    );
    let pin = pins.0.join("link");
    let (mut first, how) = {
        let pin = pin.clone();
        topo.node
            .run(move || {
                let mut dp = Dataplane::load().unwrap();
                dp.set_tc_attach(TcAttach::Netlink);
                let mut how = Vec::new();
                // Retries (as an agent polling its NICs would make) change nothing.
                for _ in 0..5 {
                    how.push(dp.attach_persistent(PROG_TC_INGRESS, "tap0", &pin, false));
                }
                (dp, how)
            })
            .unwrap()
    };
    let how: Vec<Attached> = how.into_iter().map(Result::unwrap).collect();
    assert_eq!(how[0], Attached::Created);
    assert!(how[1..].iter().all(|h| *h == Attached::Replaced), "{how:?}");
    assert!(has_clsact(&topo.node, "tap0"));
    let id1 = prog_id(&mut first);
    assert_eq!(
        filters(&topo.node, "tap0"),
        vec![(NL_PRIORITY, NL_HANDLE, id1)]
    );
    assert!(!pin.exists(), "netlink attachments are not pinned");
    ping(&topo);
    assert!(tc_packets(&first) >= 3, "the program runs");

    // The filter outlives the process that made it.
    drop(first);
    assert_eq!(filters(&topo.node, "tap0").len(), 1);

    // A later process puts its program into the same filter.
    let (mut second, how) = {
        let pin = pin.clone();
        topo.node
            .run(move || {
                let mut dp = Dataplane::load().unwrap();
                dp.set_tc_attach(TcAttach::Netlink);
                let how = dp.attach_persistent(PROG_TC_INGRESS, "tap0", &pin, false);
                (dp, how)
            })
            .unwrap()
    };
    assert_eq!(how.unwrap(), Attached::Replaced);
    let id2 = prog_id(&mut second);
    assert_ne!(id1, id2);
    assert_eq!(
        filters(&topo.node, "tap0"),
        vec![(NL_PRIORITY, NL_HANDLE, id2)]
    );
    ping(&topo);
    assert!(tc_packets(&second) >= 3, "the replacing program runs");
}

#[test]
fn transient_netlink_attach_is_removed_with_the_dataplane() {
    require_root!();
    let topo = topology();
    let dp = topo
        .node
        .run(|| {
            let mut dp = Dataplane::load().unwrap();
            dp.set_tc_attach(TcAttach::Netlink);
            dp.attach("tap0", Mode::Tc).unwrap();
            dp
        })
        .unwrap();
    assert_eq!(filters(&topo.node, "tap0").len(), 1);
    ping(&topo);
    assert!(tc_packets(&dp) >= 3);
    // A netlink filter is deleted by (ifindex, priority, handle) in the caller's namespace.
    topo.node.run(move || drop(dp)).unwrap();
    assert!(filters(&topo.node, "tap0").is_empty());
}

/// TCX needs Linux ≥ 6.6: tests of it skip, saying so, on older kernels.
fn have_tcx() -> bool {
    let ok = TcAttach::Auto.resolve() == TcAttach::Tcx;
    if !ok {
        eprintln!("skipped: this kernel has no TCX (Linux < 6.6)");
    }
    ok
}

/// TCX programs attached at ingress of `iface` in `ns`, by id.
fn tcx_programs(ns: &NetNs, iface: &'static str) -> Vec<u32> {
    ns.run(move || {
        SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
            .unwrap()
            .1
            .iter()
            .map(|p| p.id())
            .collect()
    })
    .unwrap()
}

#[test]
fn tcx_attach_that_cannot_pin_leaves_nothing_attached() {
    require_root!();
    if !have_tcx() {
        return;
    }
    let topo = topology();
    let pins = TempDir::bpffs("tc-tcx-fail");
    let bad = pins.0.join("missing-dir/link");
    let err = topo
        .node
        .run(move || {
            let mut dp = Dataplane::load().unwrap();
            dp.set_tc_attach(TcAttach::Tcx);
            dp.attach_persistent(PROG_TC_INGRESS, "tap0", &bad, false)
                .map(|_| ())
        })
        .unwrap();
    assert!(err.is_err(), "pinning under a missing directory must fail");
    assert!(tcx_programs(&topo.node, "tap0").is_empty());
    assert!(filters(&topo.node, "tap0").is_empty());
}

#[test]
fn tcx_link_is_kept_on_restart_and_updated_in_place_on_reload() {
    require_root!();
    if !have_tcx() {
        return;
    }
    let topo = topology();
    let pins = TempDir::bpffs("tc-tcx");
    let pin = pins.0.join("link");
    let attach = |replace: bool| {
        let pin = pin.clone();
        topo.node
            .run(move || {
                let mut dp = Dataplane::load().unwrap();
                dp.set_tc_attach(TcAttach::Tcx);
                let how = dp
                    .attach_persistent(PROG_TC_INGRESS, "tap0", &pin, replace)
                    .unwrap();
                (dp, how)
            })
            .unwrap()
    };
    let (mut first, how) = attach(false);
    assert_eq!(how, Attached::Created);
    let id1 = prog_id(&mut first);
    drop(first);
    assert_eq!(
        tcx_programs(&topo.node, "tap0"),
        vec![id1],
        "the pin holds it"
    );
    let (_second, how) = attach(false);
    assert_eq!(how, Attached::Kept);
    assert_eq!(tcx_programs(&topo.node, "tap0"), vec![id1]);
    let (mut third, how) = attach(true);
    assert_eq!(how, Attached::Replaced);
    let id3 = prog_id(&mut third);
    assert_ne!(id1, id3);
    assert_eq!(tcx_programs(&topo.node, "tap0"), vec![id3]);
    ping(&topo);
    assert!(
        tc_packets(&third) >= 3,
        "the updated link runs the new program"
    );
    assert!(filters(&topo.node, "tap0").is_empty(), "no netlink filter");
}
