//! Fixtures shared by the integration tests: the harness (directories, ports, polling,
//! processes, PostgreSQL, the control plane, the agent tests' world), packet builders,
//! raw-socket senders and helpers for network namespaces.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

pub mod api_load;
pub mod fastpath;
pub mod harness;
pub mod packets;
pub mod raw;

/// For long-running binaries (benchmarks): on SIGINT or SIGTERM, delete the namespace
/// `name` and exit, since a signal would otherwise skip its guard's drop. Call before any
/// other thread starts: the signals are blocked in this thread (threads started later
/// inherit that) and taken by a dedicated thread with `sigwait`.
pub fn delete_namespace_on_signal(name: &str) {
    let name = name.to_owned();
    // SAFETY: plain signal-set manipulation on a set we own; the mask change affects
    // only this thread and the threads it starts.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("signal {sig}: removing namespace {name}");
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
            std::process::exit(128 + sig);
        });
    }
}

/// CLOCK_MONOTONIC in ns: the clock the fast path stamps conntrack entries with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `vpcep` binary of this build (built once per test run with the same cargo and
/// profile; `VPCEP_CLI_TEST_NO_BUILD=1` uses the one already there).
pub fn vpcep_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = profile_dir.join("vpcep");
        if std::env::var_os("VPCEP_CLI_TEST_NO_BUILD").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "vpcep-userspace",
                "--bin",
                "vpcep",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("running cargo build for the vpcep binary");
            assert!(status.success(), "building the vpcep binary failed");
        }
        assert!(bin.exists(), "{} is missing", bin.display());
        bin
    })
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/<name>`);
/// other threads keep theirs.
pub fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside the network namespace `name` (for servers and streams
/// that outlive one call).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
}

/// Captures the IPv4 frames arriving in namespace `name` (every interface, AF_PACKET) for
/// `secs` or until `max` frames, on a thread of its own; returns once the socket is open.
pub fn capture(name: &str, secs: u64, max: usize) -> std::sync::mpsc::Receiver<Vec<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    spawn_in(name, move || {
        // SAFETY: raw socket calls with valid buffers and sizes.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_IP as u16).to_be() as i32,
            );
            assert!(fd >= 0, "AF_PACKET socket");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let _ = ready_tx.send(());
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while std::time::Instant::now() < end && frames.len() < max {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            libc::close(fd);
            let _ = tx.send(frames);
        }
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("capture in {name}: {e}"));
    rx
}

/// A UDP echo server on `addr` inside namespace `name`, until `stop` is set or `secs` pass;
/// returns once it is bound.
pub fn udp_echo_server(
    name: &str,
    addr: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    secs: u64,
) {
    use std::time::{Duration, Instant};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    spawn_in(name, move || {
        let sock = std::net::UdpSocket::bind(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("UDP echo in {name}: {e}"));
}

/// A TCP server on `addr` inside namespace `name`, until `stop` is set or `secs` pass: each
/// connection is handed, with its peer, to `serve` on a thread of its own (blocking, 3 s
/// read timeout). Returns once it listens.
pub fn tcp_server(
    name: &str,
    addr: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    secs: u64,
    serve: impl Fn(std::net::TcpStream, std::net::SocketAddr) + Send + Sync + 'static,
) {
    use std::time::{Duration, Instant};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let serve = std::sync::Arc::new(serve);
    spawn_in(name, move || {
        let l = std::net::TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((c, peer)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let serve = serve.clone();
            std::thread::spawn(move || {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                serve(c, peer);
            });
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("TCP server in {name}: {e}"));
}
