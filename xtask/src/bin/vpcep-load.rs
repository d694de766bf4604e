//! Load generator and receiver for `cargo xtask bench e2e`, run inside the benchmark's
//! namespaces (`ip netns exec … taskset -c N vpcep-load …`). Every mode is bounded by
//! `--secs` and prints one JSON line.
//!
//! * `udp-sink BIND SECS`: counts datagrams; pps between the first and the last one.
//! * `udp-blast TO SECS SIZE`: sends datagrams of SIZE bytes as fast as one thread can.
//! * `tcp-server BIND SECS`: echoes every read back until the peer closes (2 threads).
//! * `cps TO SECS THREADS`: connect, 1-byte request, 1-byte answer, close with RST.
//! * `rr TO SECS`: 1-byte ping-pong on one connection; p50/p99 round trip.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
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
        "tcp-server" => tcp_server(addr, dur),
        "cps" => cps(addr, dur, arg(&args, 3, "THREADS")?),
        "rr" => rr(addr, dur),
        _ => bail!("usage: vpcep-load udp-sink|udp-blast|tcp-server|cps|rr ADDRESS SECS [N]"),
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

fn tcp_server(bind: SocketAddr, dur: Duration) -> Result<()> {
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
                        Ok((s, _)) => {
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

fn echo(mut s: TcpStream, deadline: Instant) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
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
