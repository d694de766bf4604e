//! The Debian package on this machine (`cargo xtask test` builds it and runs this with
//! `VPCEP_DEB` and `VPCEP_DEB_UPGRADE` set): `dpkg -i`, its files, users and permissions;
//! both units' ExecStart lines run as systemd would run them (user, group, capabilities,
//! environment file, memlock, umask), without systemd as PID 1; the agent refusing to start,
//! naming the capability, without each one; a package upgrade while the agent carries a UDP
//! stream, with no packet lost; and `dpkg --purge` leaving nothing behind.
//!
//! The units' processes run in the node namespace of the test topology (as systemd's
//! `NetworkNamespacePath=` would) and in a mount namespace of their own where /sys/fs/bpf
//! is a bpffs mounted with mode 0700, as systemd mounts it; the host's bpffs is not touched.
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::json;
use vpcep_tests::{
    harness::{ChildGuard, TempDir, agent::*, eventually, spawn_guarded, wait_for},
    require_root,
};

const PIN_DIR: &str = "/sys/fs/bpf/vpcep";

/// The `[Service]` section of a unit file: key → values in order.
struct Unit(BTreeMap<String, Vec<String>>);

impl Unit {
    fn read(path: &str) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
            } else if in_service
                && !line.starts_with('#')
                && let Some((k, v)) = line.split_once('=')
            {
                map.entry(k.to_owned()).or_default().push(v.to_owned());
            }
        }
        Self(map)
    }

    fn one(&self, key: &str) -> &str {
        match self.0.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{key}: want one value, have {other:?}"),
        }
    }

    fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// `Environment=` and `EnvironmentFile=` as systemd reads them (KEY=value, quotes off).
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut add = |line: &str| {
            if let Some((k, v)) = line.trim().split_once('=') {
                env.push((k.to_owned(), v.trim_matches('"').to_owned()));
            }
        };
        for e in self.all("Environment") {
            add(e);
        }
        for f in self.all("EnvironmentFile") {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f}: {e}"));
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .for_each(&mut add);
        }
        env
    }

    /// A command line with `$VAR` expanded into words, as systemd does.
    fn argv(&self, line: &str) -> Vec<String> {
        let env = self.environment();
        line.split_whitespace()
            .flat_map(|w| match w.strip_prefix('$') {
                Some(var) => env
                    .iter()
                    .find(|(k, _)| k == var)
                    .map(|(_, v)| v.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                None => vec![w.to_owned()],
            })
            .collect()
    }

    /// Capabilities of `AmbientCapabilities=`, as setpriv names them (`net_admin`).
    fn ambient(&self) -> Vec<String> {
        self.all("AmbientCapabilities")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect()
    }
}

/// Where the units' processes run: the node namespace and a mount namespace in which
/// /sys/fs/bpf is `bpffs`, a bpffs of the test's own mounted with mode 0700.
struct Place {
    netns: std::fs::File,
    bpffs: CString,
    _mount: Mount,
}

/// A bpffs mounted at a temporary directory; unmounted (and removed) on drop.
struct Mount(PathBuf);

impl Mount {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("vpcep-pkg-bpffs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a bpffs at {}", dir.display());
        Self(dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl Place {
    fn new(node: &xtask::netns::NetNs) -> Self {
        let mount = Mount::new();
        Self {
            netns: std::fs::File::open(format!("/run/netns/{}", node.name())).unwrap(),
            bpffs: CString::new(mount.0.as_os_str().as_encoded_bytes()).unwrap(),
            _mount: mount,
        }
    }

    /// `program args` in this place, as root.
    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let netns = self.netns.as_raw_fd();
        let src = self.bpffs.clone();
        let target = CString::new(b"/sys/fs/bpf".to_vec()).unwrap();
        let root = CString::new(b"/".to_vec()).unwrap();
        // SAFETY: only async-signal-safe system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::setns(netns, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                Ok(())
            });
        }
        cmd
    }

    /// A unit's `ExecStart=` (or `ExecStartPre=` with its `+`, as root) run as systemd
    /// would: its user and group with exactly `caps` as ambient, inheritable and bounding
    /// set, no new privileges, its environment and nothing else, its memlock limit, its umask.
    fn unit_command(&self, unit: &Unit, line: &str, caps: &[String]) -> Command {
        if let Some(pre) = line.strip_prefix('+') {
            let argv = unit.argv(pre);
            let mut cmd = self.command(&argv[0], &argv[1..]);
            cmd.env_clear().envs(unit.environment());
            return cmd;
        }
        let argv = unit.argv(line);
        let set = if caps.is_empty() {
            "-all".to_owned()
        } else {
            format!(
                "-all,{}",
                caps.iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let mut args = vec![
            format!("--reuid={}", unit.one("User")),
            format!("--regid={}", unit.one("Group")),
            "--init-groups".to_owned(),
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
            "--no-new-privs".to_owned(),
            "--".to_owned(),
        ];
        args.extend(argv);
        let mut cmd = self.command("setpriv", &args);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(unit.environment());
        // Raising the hard limit takes CAP_SYS_RESOURCE, which root lacks on some machines
        // (this one's containers); the kernels tested here do not charge BPF to memlock.
        let memlock = unit.0.contains_key("LimitMEMLOCK") && have_sys_resource();
        let umask = unit
            .0
            .get("UMask")
            .and_then(|v| u32::from_str_radix(&v[0], 8).ok());
        // SAFETY: setrlimit and umask are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if memlock {
                    let inf = libc::rlimit {
                        rlim_cur: libc::RLIM_INFINITY,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(m) = umask {
                    libc::umask(m);
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Whether this process may raise resource limits (CAP_SYS_RESOURCE, bit 24).
fn have_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let have = eff & (1 << 24) != 0;
    if !have {
        eprintln!("note: no CAP_SYS_RESOURCE here: LimitMEMLOCK= is not applied");
    }
    have
}

/// A unit's main process; SIGTERM (what `systemctl stop` sends) on [`Service::stop`],
/// killed and reaped on drop.
struct Service {
    child: ChildGuard,
    log: PathBuf,
}

impl Service {
    fn start(place: &Place, unit: &Unit, caps: &[String], log: PathBuf) -> Self {
        for pre in unit.all("ExecStartPre") {
            let out = place.unit_command(unit, pre, caps).output().unwrap();
            assert!(
                out.status.success(),
                "ExecStartPre={pre}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let f = std::fs::File::create(&log).unwrap();
        let child = spawn_guarded(
            place
                .unit_command(unit, unit.one("ExecStart"), caps)
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f),
        );
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for the exit; the guard's SIGKILL after 15 s fails the
    /// test.
    fn stop(self) {
        let status = self
            .child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(15))
            .unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            panic!(
                "the unit's process did not stop on SIGTERM:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Purges the package when the test ends, however it ends; in the test's place, so that
/// the removal scripts see the test's namespace and bpffs, never the host's.
struct Installed<'a>(&'a Place);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command("dpkg", &["--purge".to_owned(), "vpcep".to_owned()])
            .output();
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "vpcep"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("ii"))
}

fn passwd(user: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

fn owner_mode(path: &str) -> String {
    sh(Command::new("stat").args(["-c", "%U:%G %a", path]))
        .trim()
        .to_owned()
}

fn packages() -> Option<(PathBuf, PathBuf)> {
    match (
        std::env::var_os("VPCEP_DEB"),
        std::env::var_os("VPCEP_DEB_UPGRADE"),
    ) {
        (Some(a), Some(b)) => Some((a.into(), b.into())),
        _ => {
            eprintln!(
                "skipped: VPCEP_DEB and VPCEP_DEB_UPGRADE are not set (cargo xtask test sets them)"
            );
            None
        }
    }
}

fn check_files() {
    let files = sh(Command::new("dpkg").args(["-L", "vpcep"]));
    for f in [
        "/usr/bin/vpcep",
        "/usr/lib/vpcep/agent-prestart",
        "/etc/vpcep/agent.toml",
        "/etc/vpcep/credentials.toml",
        "/etc/vpcep/control-plane.env",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package: {files}"
        );
    }
    for unit in ["vpcep-agent.service", "vpcep-control-plane.service"] {
        assert!(
            files
                .lines()
                .any(|l| l.ends_with(&format!("/systemd/system/{unit}"))),
            "{unit} not in the package"
        );
        // Enabled by the maintainer scripts even without systemd running.
        assert!(
            Path::new(&format!(
                "/etc/systemd/system/multi-user.target.wants/{unit}"
            ))
            .exists(),
            "{unit} not enabled"
        );
    }
    let conffiles = sh(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "vpcep"]));
    for f in ["agent.toml", "credentials.toml", "control-plane.env"] {
        assert!(
            conffiles.contains(&format!("/etc/vpcep/{f} ")),
            "{f} is not a conffile: {conffiles}"
        );
    }
    assert_eq!(owner_mode("/usr/bin/vpcep"), "root:root 755");
    assert_eq!(owner_mode("/etc/vpcep/credentials.toml"), "root:vpcep 640");
    assert_eq!(owner_mode("/etc/vpcep/agent.toml"), "root:vpcep-agent 640");
    assert_eq!(owner_mode("/var/lib/vpcep"), "vpcep:vpcep 750");
    for user in ["vpcep", "vpcep-agent"] {
        let p = passwd(user).unwrap_or_else(|| panic!("no user {user}"));
        let uid: u32 = p[2].parse().unwrap();
        assert!(uid < 1000, "{user} is not a system user: {p:?}");
        assert_eq!(p[6], "/usr/sbin/nologin", "{user}'s shell");
    }
}

fn credentials_toml() -> String {
    let mut s = format!("operator_tokens = [\"{OPERATOR}\"]\n");
    for (token, project) in [(PROVIDER, "proj-provider"), (CONSUMER, "proj-consumer")] {
        s += &format!("[[tokens]]\ntoken = \"{token}\"\nproject_id = \"{project}\"\n");
    }
    s + &format!("[[agents]]\nnode = \"{NODE}\"\ntoken = \"{AGENT}\"\n")
}

/// The world, the endpoint and its acceptance, over the API the packaged control plane
/// serves on the node namespace's loopback.
fn create_world(topo: &xtask::netns::Topology, base: &str) -> World {
    let base = base.to_owned();
    topo.node
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                eventually(20, "the packaged control plane to answer", || {
                    let base = base.clone();
                    async move { reqwest::get(format!("{base}/")).await.ok().map(|_| ()) }
                })
                .await;
                let w = world(&base).await;
                let ep = w.create_endpoint(&api(&base, CONSUMER)).await;
                api(&base, PROVIDER)
                    .ok(
                        Method::POST,
                        &format!(
                            "/v1/proj-provider/vpc-endpoint-services/{}/connections/action",
                            w.service
                        ),
                        Some(json!({"action": "receive", "endpoints": [ep["id"]]})),
                    )
                    .await;
                w
            })
        })
        .unwrap()
}

/// A UDP stream consumer → endpoint → backend: ~2,000 packets/s, bounded in count and time;
/// the sink counts distinct sequence numbers.
struct Stream {
    sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(topo: &xtask::netns::Topology) -> Self {
        let (sending, stop) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = {
            let (stop, received) = (stop.clone(), received.clone());
            let path = format!("/run/netns/{}", topo.vms[1].ns.name());
            std::thread::spawn(move || {
                vpcep_tests::enter_netns(&path);
                let s = std::net::UdpSocket::bind("10.0.0.5:53").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut seen = std::collections::HashSet::new();
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
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
        let sender = {
            let (sending, sent) = (sending.clone(), sent.clone());
            let path = format!("/run/netns/{}", topo.vms[0].ns.name());
            std::thread::spawn(move || {
                vpcep_tests::enter_netns(&path);
                let s = std::net::UdpSocket::bind("10.0.0.2:0").unwrap();
                s.connect("10.0.0.100:5353").unwrap();
                let deadline = Instant::now() + Duration::from_secs(240);
                let mut seq = 0u64;
                while sending.load(Ordering::Relaxed) && seq < 400_000 && Instant::now() < deadline
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
        Self {
            sending,
            stop,
            sent,
            received,
            threads: vec![sender, sink],
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the last packets; (sent, received).
    fn finish(mut self) -> (u64, u64) {
        self.sending.store(false, Ordering::Relaxed);
        let sender = self.threads.remove(0);
        sender.join().unwrap();
        let total = self.sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.received() < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (total, self.received())
    }
}

/// What is attached at TC ingress of `iface` in the node: TCX programs by name, then the
/// netlink filters as `tc` lists them.
fn attached(topo: &xtask::netns::Topology, iface: &str) -> String {
    let name = iface.to_owned();
    let tcx = topo
        .node
        .run(move || {
            use aya::programs::{SchedClassifier, TcAttachType};
            match SchedClassifier::query_tcx(&name, TcAttachType::Ingress) {
                Ok((_, progs)) => progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                // No TCX on this kernel: nothing can be attached that way.
                Err(_) => String::new(),
            }
        })
        .unwrap();
    let tc = topo
        .node
        .exec("tc", &["filter", "show", "dev", iface, "ingress"])
        .unwrap();
    format!(
        "tcx: [{tcx}] netlink: [{}]",
        String::from_utf8_lossy(&tc.stdout).trim()
    )
}

#[test]
#[ignore = "needs the packages: run by `cargo xtask test` (package stage)"]
fn install_run_upgrade_and_purge() {
    require_root!();
    let Some((deb, upgrade)) = packages() else {
        return;
    };
    assert!(
        !dpkg_installed(),
        "a vpcep package is installed on this machine; the test installs and purges its own"
    );
    let topo = topology();
    let place = Place::new(&topo.node);
    let _installed = Installed(&place);
    sh(&mut place.command("dpkg", &["-i".to_owned(), deb.display().to_string()]));
    check_files();

    let logs = TempDir::new("pkg-logs");
    std::fs::write("/etc/vpcep/credentials.toml", credentials_toml()).unwrap();
    let cp_unit = Unit::read("/lib/systemd/system/vpcep-control-plane.service");
    let agent_unit = Unit::read("/lib/systemd/system/vpcep-agent.service");
    assert!(
        cp_unit.ambient().is_empty(),
        "the control plane needs no capabilities"
    );
    let cp = Service::start(&place, &cp_unit, &[], logs.0.join("control-plane.log"));
    let w = create_world(&topo, "http://127.0.0.1:8080");
    assert!(
        owner_mode("/var/lib/vpcep/vpcep.db").starts_with("vpcep:vpcep "),
        "the database belongs to the control plane's user"
    );

    // The agent's configuration: this node, without `netns` (it runs in the node namespace).
    let text = agent_toml(
        &["http://127.0.0.1:8080".to_owned()],
        &topo,
        &w,
        Path::new(PIN_DIR),
        9464,
    );
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("netns"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write("/etc/vpcep/agent.toml", text).unwrap();

    // Without any one of its capabilities the agent refuses to start and names it.
    let caps = agent_unit.ambient();
    assert!(
        caps.contains(&"bpf".to_owned()),
        "agent capabilities: {caps:?}"
    );
    for (i, missing) in caps.iter().enumerate() {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut a = Service::start(
            &place,
            &agent_unit,
            &fewer,
            logs.0.join(format!("agent-without-{i}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = a.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent without {missing} kept running:\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_eq!(
            status.code(),
            Some(77),
            "exit status without {name}:\n{}",
            a.log()
        );
        assert!(
            a.log().contains(&format!("missing capability {name}")),
            "the agent's message without {name}:\n{}",
            a.log()
        );
        eprintln!("without {name}: {}", a.log().trim());
    }

    // With exactly them it works: the endpoint carries a UDP stream.
    let mut agent = Service::start(&place, &agent_unit, &caps, logs.0.join("agent.log"));
    let pins = place._mount.0.join("vpcep");
    wait_for(30, "the accepted endpoint in the agent's maps", || {
        pins.join(vpcep_common::maps::ENDPOINTS).exists()
            && endpoints(&pins)
                .iter()
                .any(|(_, e)| e.flags & vpcep_common::endpoint::EP_ACCEPTED != 0)
    });
    let stream = Stream::start(&topo);
    wait_for(
        30,
        "packets at the backend through the packaged agent",
        || stream.received() > 200,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.pid())).unwrap();
    let uid = passwd("vpcep-agent").unwrap()[2].clone();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid)),
        "the agent runs as vpcep-agent: {status}"
    );

    // Upgrade while it runs, then the restart the package's scripts ask systemd for.
    sh(&mut place.command("dpkg", &["-i".to_owned(), upgrade.display().to_string()]));
    let version = sh(Command::new("dpkg-query").args(["-W", "-f=${Version}", "vpcep"]));
    assert!(version.ends_with("-2"), "upgraded to {version}");
    let before = stream.received();
    agent.stop();
    agent = Service::start(
        &place,
        &agent_unit,
        &caps,
        logs.0.join("agent-upgraded.log"),
    );
    wait_for(30, "the stream to go on after the upgrade", || {
        stream.received() > before + 2000
    });
    let (sent, received) = stream.finish();
    eprintln!(
        "UDP stream across a package upgrade and agent restart: sent {sent}, received {received}"
    );
    assert_eq!(
        received,
        sent,
        "packets lost across the upgrade:\n{}",
        agent.log()
    );
    for nic in ["tapc", "tapb"] {
        assert!(
            // The kernel keeps 15 characters of a program's name.
            attached(&topo, nic).contains("vpcep_tc_ingres"),
            "{nic}: {}",
            attached(&topo, nic)
        );
    }

    // Purge, as `apt purge` would: systemd stops the units first.
    agent.stop();
    cp.stop();
    let files: Vec<String> = sh(Command::new("dpkg").args(["-L", "vpcep"]))
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_owned)
        .collect();
    let out = place
        .command("dpkg", &["--purge".to_owned(), "vpcep".to_owned()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg --purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files {
        assert!(!Path::new(f).exists(), "{f} is left after purge");
    }
    for d in ["/etc/vpcep", "/var/lib/vpcep", "/usr/lib/vpcep"] {
        assert!(!Path::new(d).exists(), "{d} is left after purge");
    }
    assert!(
        passwd("vpcep").is_none() && passwd("vpcep-agent").is_none(),
        "users left"
    );
    for unit in ["vpcep-agent.service", "vpcep-control-plane.service"] {
        let wants = format!("/etc/systemd/system/multi-user.target.wants/{unit}");
        assert!(!Path::new(&wants).exists(), "{wants} is left after purge");
    }
    assert!(!pins.exists(), "pins left in bpffs: {}", pins.display());
    for nic in ["tapc", "tapb"] {
        let a = attached(&topo, nic);
        assert_eq!(
            a, "tcx: [] netlink: []",
            "programs or filters left on {nic}"
        );
    }
}
