//! Load generator and receiver for `cargo xtask bench e2e` and `bench flood`, run inside
//! the benchmark's namespaces (`ip netns exec … taskset -c N vpcep-load …`). Every mode is
//! bounded by SECS and prints one JSON line (`established`: one per command).
//!
//! * `udp-sink BIND SECS`: counts datagrams; pps between the first and the last one.
//! * `udp-blast TO SECS SIZE`: sends datagrams of SIZE bytes as fast as one thread can.
//! * `tcp-server BIND SECS [proxy]`: echoes every read back until the peer closes (2
//!   threads); with `proxy`, each connection first reads a PROXY v2 header (tcp_proxy).
//! * `tcp-sink BIND SECS`: reads and discards, a thread per connection.
//! * `cps TO SECS THREADS`: connect, 1-byte request, 1-byte answer, close with RST.
//! * `rr TO SECS`: 1-byte ping-pong on one connection; p50/p99 round trip.
//! * `bulk TO SECS`: one connection to a `tcp-sink`, written to for SECS; Gbit/s the peer
//!   acknowledged.
//! * `syn-flood TO SECS RATE SRC`: half-open TCP flood from SRC (a raw socket, so nothing
//!   answers the SYN-ACKs unless the host does), source port rotating over 1024-65535;
//!   RATE 0 sends as fast as one thread can, otherwise RATE SYNs/s released every ms.
//! * `established BULK SECS RR`: opens one bulk connection to BULK (a `tcp-sink`) and one
//!   1-byte ping-pong connection to RR (a `tcp-server`), keeps them for the whole run and
//!   measures on them when told on stdin: `bulk S` (Gbit/s acknowledged by the peer during
//!   S seconds), `rr S` (p50/p99). A connection that fails is counted as lost and reopened.
//!   EOF or SECS ends the run with the count.
use std::{
    io::{BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

fn main() {
    if let Err(e) = run() {
        eprintln!("vpcep-load: {e:#}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s = args
        .get(i)
        .with_context(|| format!("missing argument {what}"))?;
    s.parse::<T>()
        .map_err(|e| anyhow::anyhow!("{what}: {s:?}: {e}"))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let addr: SocketAddr = arg(&args, 1, "ADDRESS")?;
    let secs: f64 = arg(&args, 2, "SECS")?;
    if !(0.1..=3600.0).contains(&secs) {
        bail!("SECS must be between 0.1 and 3600");
    }
    let dur = Duration::from_secs_f64(secs);
    match mode {
        "udp-sink" => udp_sink(addr, dur),
        "udp-blast" => udp_blast(addr, dur, arg(&args, 3, "SIZE")?),
        "tcp-server" => tcp_server(addr, dur, args.get(3).is_some_and(|a| a == "proxy")),
        "bulk" => {
            let mut s =
                open(addr, Duration::from_secs(2)).with_context(|| format!("connect {addr}"))?;
            println!("{}", bulk_window(&mut s, dur)?);
            Ok(())
        }
        "cps" => cps(addr, dur, arg(&args, 3, "THREADS")?),
        "rr" => rr(addr, dur),
        "tcp-sink" => tcp_sink(addr, dur),
        "syn-flood" => syn_flood(addr, dur, arg(&args, 3, "RATE")?, arg(&args, 4, "SRC")?),
        "established" => established(addr, dur, arg(&args, 3, "RR")?),
        _ => bail!(
            "usage: vpcep-load udp-sink|udp-blast|tcp-server|tcp-sink|cps|rr|syn-flood|established \
             ADDRESS SECS [ARGS]"
        ),
    }
}

fn udp_sink(bind: SocketAddr, dur: Duration) -> Result<()> {
    let s = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + dur;
    let mut buf = [0u8; 2048];
    let (mut n, mut first, mut last) = (0u64, None, Instant::now());
    while Instant::now() < deadline {
        if s.recv(&mut buf).is_ok() {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            n += 1;
        } else if first.is_some() && last.elapsed() > Duration::from_millis(500) {
            break;
        }
    }
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let pps = if span > 0.0 { n as f64 / span } else { 0.0 };
    println!("{{\"received\":{n},\"seconds\":{span:.3},\"pps\":{pps:.0}}}");
    Ok(())
}

fn udp_blast(to: SocketAddr, dur: Duration, size: usize) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    let buf = vec![0u8; size.clamp(1, 1400)];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            if s.send(&buf).is_ok() {
                sent += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"seconds\":{secs:.3},\"pps\":{:.0}}}",
        sent as f64 / secs
    );
    Ok(())
}

fn tcp_server(bind: SocketAddr, dur: Duration, proxy: bool) -> Result<()> {
    let l = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    l.set_nonblocking(true)?;
    let l = Arc::new(l);
    let deadline = Instant::now() + dur;
    let served = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (l, served) = (l.clone(), served.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            if proxy && proxy_header(&mut s).is_err() {
                                continue;
                            }
                            echo(s, deadline);
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    println!("{{\"connections\":{}}}", served.load(Ordering::Relaxed));
    Ok(())
}

/// Reads the PROXY v2 header a tcp_proxy endpoint puts first.
fn proxy_header(s: &mut TcpStream) -> Result<()> {
    let _ = s.set_nonblocking(false);
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut h = vec![0u8; 16];
    s.read_exact(&mut h)?;
    let len = u16::from_be_bytes([h[14], h[15]]) as usize;
    h.resize(16 + len, 0);
    s.read_exact(&mut h[16..])?;
    ppp::v2::Header::try_from(&h[..]).map_err(|e| anyhow::anyhow!("PROXY header: {e:?}"))?;
    Ok(())
}

fn echo(mut s: TcpStream, deadline: Instant) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            // The timeout only lets the deadline be checked: an idle connection stays.
            Err(e) if timed_out(&e) => {}
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Closes with RST (SO_LINGER 0): no TIME_WAIT, so the client's ports last the run.
fn close_rst(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

fn cps(to: SocketAddr, dur: Duration, threads: usize) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.clamp(1, 16))
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while start.elapsed() < dur {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(b"x")?;
                        s.read_exact(&mut b)?;
                        close_rst(s);
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"connections\":{n},\"failed\":{},\"seconds\":{secs:.3},\"cps\":{:.0}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}

fn rr(to: SocketAddr, dur: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("connect {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut rtts = Vec::with_capacity(1 << 20);
    let mut b = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < dur && rtts.len() < 5_000_000 {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    if rtts.is_empty() {
        bail!("no round trip completed");
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "{{\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        rtts.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

fn tcp_sink(bind: SocketAddr, dur: Duration) -> Result<()> {
    let l = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + dur;
    let total = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    while Instant::now() < deadline {
        match l.accept() {
            Ok((mut s, _)) if readers.len() < 64 => {
                let total = total.clone();
                readers.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = vec![0u8; 256 * 1024];
                    while Instant::now() < deadline {
                        match s.read(&mut buf) {
                            Err(e) if timed_out(&e) => {}
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                total.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for r in readers {
        let _ = r.join();
    }
    println!("{{\"bytes\":{}}}", total.load(Ordering::Relaxed));
    Ok(())
}

const FLOOD_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;
const FLOOD_BATCH: usize = 64;

/// One prebuilt SYN per source port, so the send loop only hands buffers to sendmmsg.
fn syns(to: std::net::SocketAddrV4, src: Ipv4Addr) -> Result<Vec<Vec<u8>>> {
    let mut pkts = Vec::with_capacity(FLOOD_PORTS.len());
    for port in FLOOD_PORTS {
        let b = etherparse::PacketBuilder::ipv4(src.octets(), to.ip().octets(), 64)
            .tcp(
                port,
                to.port(),
                u32::from(port).wrapping_mul(2_654_435_761),
                64240,
            )
            .syn();
        let mut p = Vec::with_capacity(b.size(0));
        b.write(&mut p, &[])
            .map_err(|e| anyhow::anyhow!("building a SYN: {e}"))?;
        pkts.push(p);
    }
    Ok(pkts)
}

fn syn_flood(to: SocketAddr, dur: Duration, rate: u64, src: Ipv4Addr) -> Result<()> {
    let SocketAddr::V4(to) = to else {
        bail!("syn-flood needs an IPv4 address");
    };
    let mut pkts = syns(to, src)?;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // IPPROTO_RAW implies IP_HDRINCL: the headers above go out as built (the kernel only
    // fills in the IP checksum); the destination address picks the route.
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut iovs: Vec<libc::iovec> = pkts
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let start = Instant::now();
    let (sent, refused) = send_for(&fd, &mut msgs, dur, rate)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"refused\":{refused},\"seconds\":{secs:.3},\"pps\":{:.0}}}",
        sent as f64 / secs
    );
    Ok(())
}

/// Sends the SYNs in `msgs` round and round for `dur`: as fast as it can (`rate` 0) or
/// `rate` a second; how many were sent and how many the full device queue refused.
fn send_for(
    fd: &OwnedFd,
    msgs: &mut [libc::mmsghdr],
    dur: Duration,
    rate: u64,
) -> Result<(u64, u64)> {
    let (mut sent, mut refused, mut next) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    while start.elapsed() < dur {
        let want = if rate == 0 {
            FLOOD_BATCH as u64
        } else {
            // Released by the millisecond: whatever is due by now, at most one batch a call.
            let due = rate * start.elapsed().as_millis() as u64 / 1000;
            if due <= sent + refused {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            (due - sent - refused).min(FLOOD_BATCH as u64)
        };
        let n = (want as usize).min(msgs.len() - next);
        // SAFETY: `msgs[next..next + n]` are valid headers whose pointers (iovecs, packets,
        // `dst`) outlive the call.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs[next..].as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // A full device queue: the packets are lost, as a flood's would be.
                Some(libc::ENOBUFS | libc::EAGAIN) => refused += n as u64,
                _ => bail!("sendmmsg: {e}"),
            }
            next = (next + n) % msgs.len();
        } else {
            sent += rc as u64;
            next = (next + rc as usize) % msgs.len();
        }
    }
    Ok((sent, refused))
}

/// The connections `established` keeps; `None` after a failure until reopened.
struct Held {
    bulk_to: SocketAddr,
    rr_to: SocketAddr,
    bulk: Option<TcpStream>,
    rr: Option<TcpStream>,
}

fn open(to: SocketAddr, write_timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_write_timeout(Some(write_timeout))?;
    Ok(s)
}

/// Bytes of this connection that the peer has acknowledged (`TCP_INFO`).
fn bytes_acked(s: &TcpStream) -> std::io::Result<u64> {
    // SAFETY: tcp_info is plain data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt into a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked)
}

fn bulk_window(s: &mut TcpStream, dur: Duration) -> std::io::Result<String> {
    let buf = vec![0u8; 128 * 1024];
    let (t0, a0) = (Instant::now(), bytes_acked(s)?);
    while t0.elapsed() < dur {
        s.write_all(&buf)?;
    }
    // Acknowledged bytes over the same interval: what reached the peer, not what queued.
    let (secs, a1) = (t0.elapsed().as_secs_f64(), bytes_acked(s)?);
    Ok(format!(
        "{{\"gbps\":{:.3},\"seconds\":{secs:.3}}}",
        (a1 - a0) as f64 * 8.0 / secs / 1e9
    ))
}

fn rr_window(s: &mut TcpStream, dur: Duration) -> std::io::Result<String> {
    let mut rtts = Vec::with_capacity(1 << 18);
    let mut b = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < dur && rtts.len() < 5_000_000 {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    if rtts.is_empty() {
        return Err(std::io::Error::other("no round trip completed"));
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok(format!(
        "{{\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        rtts.len(),
        pct(0.50),
        pct(0.99)
    ))
}

fn established(bulk_to: SocketAddr, dur: Duration, rr_to: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + dur;
    // A bulk write that cannot progress for 2 s means the flow is gone.
    let bulk_timeout = Duration::from_secs(2);
    let mut h = Held {
        bulk_to,
        rr_to,
        bulk: Some(open(bulk_to, bulk_timeout).with_context(|| format!("connect {bulk_to}"))?),
        rr: Some(open(rr_to, bulk_timeout).with_context(|| format!("connect {rr_to}"))?),
    };
    let mut lost = 0u64;
    println!("{{\"ready\":true}}");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let (cmd, secs) = (words.next().unwrap_or(""), words.next().unwrap_or("1"));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let secs: f64 = secs.parse().unwrap_or(1.0);
        let window = Duration::from_secs_f64(secs.clamp(0.1, 60.0)).min(left);
        let (conn, to) = match cmd {
            "bulk" => (&mut h.bulk, h.bulk_to),
            "rr" => (&mut h.rr, h.rr_to),
            _ => {
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("unknown command {cmd:?}") })
                );
                continue;
            }
        };
        if conn.is_none() {
            *conn = open(to, bulk_timeout).ok();
        }
        let r = match (cmd, conn.as_mut()) {
            ("bulk", Some(s)) => bulk_window(s, window),
            (_, Some(s)) => rr_window(s, window),
            (_, None) => Err(std::io::Error::other("cannot reconnect")),
        };
        match r {
            Ok(json) => println!("{json}"),
            Err(e) => {
                // The held flow is gone (reset, or silent for longer than the timeouts).
                lost += 1;
                *conn = None;
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("{cmd}: {e}"), "lost": lost })
                );
            }
        }
    }
    println!("{{\"lost\":{lost}}}");
    Ok(())
}
