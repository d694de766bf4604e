//! Traffic between the VMs of the agent tests' topology, through the endpoint 10.0.0.100.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xtask::netns::Topology;

/// A TCP server in the backend VM answering each request with a short body, until the
/// returned flag is set or 120 s pass.
pub fn backend_server(topo: &Topology) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = format!("/run/netns/{}", topo.vms[1].ns.name());
    let flag = stop.clone();
    std::thread::spawn(move || {
        crate::enter_netns(&path);
        let l = TcpListener::bind("10.0.0.5:80").unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).unwrap_or(0);
                    if buf[..n].starts_with(b"GET /stream") {
                        let flag = flag.clone();
                        std::thread::spawn(move || stream_to(s, &flag));
                    } else {
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    stop
}

/// An endless body, 16 KiB every 5 ms, until a write fails or stalls for 2 s, the flag is
/// set or 30 s pass.
fn stream_to(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
    let chunk = [b'x'; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if s.write_all(&chunk).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A transfer from the backend's stream through the endpoint, read in the consumer VM: the
/// bytes received so far, and a flag set when the transfer ends (no data for 1 s, an error
/// or the end of the stream; at most 30 s).
pub struct Transfer {
    pub bytes: Arc<std::sync::atomic::AtomicU64>,
    pub ended: Arc<AtomicBool>,
}

pub fn consumer_transfer(topo: &Topology) -> Transfer {
    consumer_transfer_in(&topo.vms[0].ns)
}

/// As [`consumer_transfer`], from the consumer VM namespace `ns`.
pub fn consumer_transfer_in(ns: &xtask::netns::NetNs) -> Transfer {
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ended = Arc::new(AtomicBool::new(false));
    let (b, e) = (bytes.clone(), ended.clone());
    crate::spawn_in(ns.name(), move || {
        let run = || -> std::io::Result<()> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET /stream HTTP/1.0\r\n\r\n")?;
            let mut buf = vec![0u8; 64 * 1024];
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                b.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        };
        let _ = run();
        e.store(true, Ordering::Relaxed);
    });
    Transfer { bytes, ended }
}

/// A UDP echo server on the backend's 10.0.0.5:53, until the flag is set or 120 s pass.
pub fn backend_udp_echo(topo: &Topology) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    crate::udp_echo_server(topo.vms[1].ns.name(), "10.0.0.5:53", stop.clone(), 120);
    stop
}

/// A UDP socket in the consumer VM connected to the endpoint's 10.0.0.100:5353: one
/// 5-tuple, so one conntrack entry across [`udp_ping`] calls.
pub fn consumer_udp(topo: &Topology) -> UdpSocket {
    topo.vms[0]
        .ns
        .run(|| {
            let s = UdpSocket::bind("10.0.0.2:0").unwrap();
            s.connect("10.0.0.100:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .unwrap()
}

/// Whether an echo comes back through the endpoint (a few tries).
pub fn udp_ping(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    for i in 0..3u8 {
        let _ = s.send(&[b'p', i]);
        if let Ok(n) = s.recv(&mut buf)
            && buf[..n] == [b'p', i]
        {
            return true;
        }
    }
    false
}

/// One HTTP request from the consumer VM to the endpoint (10.0.0.100:8080).
pub fn http_get(topo: &Topology, timeout: Duration) -> std::io::Result<Vec<u8>> {
    topo.vms[0]
        .ns
        .run(|| -> std::io::Result<Vec<u8>> {
            let addr: SocketAddr = "10.0.0.100:8080".parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })
        .unwrap()
}
