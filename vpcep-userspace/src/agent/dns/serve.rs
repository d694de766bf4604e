//! The sockets of one VM NIC (UDP and TCP on its subnet's DNS address, port 53, bound to
//! the NIC's host-side device) and the forwarding to the upstream resolvers.
use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::op::ResponseCode;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, watch},
    task::JoinHandle,
};

use super::view::{DnsNic, DnsView, Outcome, Verdict, reply_code};
use crate::agent::config::DnsConfig;

/// Queries of one NIC waiting for an upstream at once; more get SERVFAIL at once, so a
/// flood from one VM holds a bounded amount of memory and sockets.
const MAX_FORWARDS: usize = 256;
/// A TCP connection without a complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Local answers remembered per NIC (then all forgotten at once).
const CACHE_ENTRIES: usize = 128;

/// Local answers of one NIC by the query's bytes after its id: a VM asks the same few
/// names again and again, and the answer depends on nothing else while the view stands
/// (the NIC's VPC and the TTL are fixed for the task). A hit copies the answer and puts
/// the query's id in; the view's next version empties it.
#[derive(Default)]
struct AnswerCache {
    view: usize,
    answers: HashMap<Box<[u8]>, Cached>,
}

/// An answer's bytes and how it counts.
type Cached = (Box<[u8]>, Verdict);

impl AnswerCache {
    fn answer(&mut self, view: &Arc<DnsView>, vni: u32, q: &[u8], ttl: u32) -> Outcome {
        let at = Arc::as_ptr(view) as usize;
        if at != self.view {
            self.answers.clear();
            self.view = at;
        }
        if q.len() >= 12
            && let Some((a, v)) = self.answers.get(&q[2..])
        {
            let mut out = a.to_vec();
            out[..2].copy_from_slice(&q[..2]);
            return Outcome::Reply(out, *v);
        }
        let outcome = view.answer(vni, q, true, ttl);
        if let Outcome::Reply(a, v) = &outcome
            && a.len() >= 2
        {
            if self.answers.len() >= CACHE_ENTRIES {
                self.answers.clear();
            }
            self.answers
                .insert(q[2..].into(), (a.clone().into_boxed_slice(), *v));
        }
        outcome
    }
}

/// The figures of one VPC's queries (`vpcep_dns_*_total{vpc}`).
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub queries: AtomicU64,
    /// Answered from the VPC's names (with records or NODATA).
    pub answers: AtomicU64,
    pub nxdomain: AtomicU64,
    pub forwarded: AtomicU64,
    /// Forwarded and answered by no upstream in time (SERVFAIL to the VM).
    pub upstream_failures: AtomicU64,
    /// Not ours and no upstream configured.
    pub refused: AtomicU64,
    /// Dropped, FORMERR or NOTIMP.
    pub malformed: AtomicU64,
    /// Dropped unanswered: over the NIC's `queries_per_second`.
    pub rate_limited: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DnsCounters {
    fn verdict(&self, v: Verdict) {
        inc(match v {
            Verdict::Answer => &self.answers,
            Verdict::NxDomain => &self.nxdomain,
            Verdict::Malformed => &self.malformed,
        });
    }
}

/// What every NIC's tasks share.
pub(super) struct Ctx {
    pub cfg: DnsConfig,
    pub view: watch::Receiver<Arc<DnsView>>,
}

/// The running sockets of one NIC; dropping it closes them.
pub(super) struct NicTasks {
    /// (ifindex, VNI, address) they were opened for: any change reopens them.
    pub key: (u32, u32, Ipv4Addr),
    tasks: [JoinHandle<()>; 2],
}

impl Drop for NicTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bound_socket(nic: &DnsNic, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    // Before bind: sockets on the same address and port are then apart by device.
    s.bind_device(Some(nic.iface.as_bytes()))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((nic.address, 53)).into())?;
    Ok(s)
}

/// Opens the NIC's sockets (in this thread's namespace) and starts serving them.
pub(super) fn start(
    nic: &DnsNic,
    ifindex: u32,
    ctx: Arc<Ctx>,
    counters: Arc<DnsCounters>,
) -> io::Result<NicTasks> {
    let udp = UdpSocket::from_std(bound_socket(nic, Type::DGRAM, Protocol::UDP)?.into())?;
    let tcp = bound_socket(nic, Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    let tcp = TcpListener::from_std(tcp.into())?;
    let vni = nic.vni;
    let limit = Limit::new(ctx.cfg.queries_per_second);
    let udp = tokio::spawn(udp_loop(
        Arc::new(udp),
        vni,
        ctx.clone(),
        counters.clone(),
        limit.clone(),
    ));
    let tcp = tokio::spawn(tcp_loop(tcp, vni, ctx, counters, limit));
    Ok(NicTasks {
        key: (ifindex, vni, nic.address),
        tasks: [udp, tcp],
    })
}

/// One NIC's query budget, shared by its UDP and TCP sockets.
#[derive(Clone)]
struct Limit(Option<Arc<governor::DefaultDirectRateLimiter>>);

impl Limit {
    fn new(per_second: u32) -> Self {
        Self(NonZeroU32::new(per_second).map(|r| {
            let burst = NonZeroU32::new(r.get().saturating_mul(2)).unwrap_or(r);
            Arc::new(governor::RateLimiter::direct(
                governor::Quota::per_second(r).allow_burst(burst),
            ))
        }))
    }

    /// Whether one more query may be served now; counts the one that may not.
    fn admit(&self, c: &DnsCounters) -> bool {
        let ok = self.0.as_ref().is_none_or(|l| l.check().is_ok());
        if !ok {
            inc(&c.rate_limited);
        }
        ok
    }
}

fn query_id(q: &[u8]) -> u16 {
    u16::from_be_bytes([q[0], q[1]])
}

async fn udp_loop(
    sock: Arc<UdpSocket>,
    vni: u32,
    ctx: Arc<Ctx>,
    c: Arc<DnsCounters>,
    limit: Limit,
) {
    let inflight = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut cache = AnswerCache::default();
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns: receiving");
                continue;
            }
        };
        inc(&c.queries);
        // Over the budget: no answer at all (an error answer would still cost, and
        // would make the node an amplifier).
        if !limit.admit(&c) {
            continue;
        }
        let q = &buf[..n];
        let view = ctx.view.borrow().clone();
        let outcome = cache.answer(&view, vni, q, ctx.cfg.ttl);
        let reply = match outcome {
            Outcome::Reply(b, v) => {
                c.verdict(v);
                Some(b)
            }
            Outcome::Drop => {
                inc(&c.malformed);
                None
            }
            Outcome::Forward if ctx.cfg.upstreams.is_empty() => {
                inc(&c.refused);
                reply_code(query_id(q), ResponseCode::Refused)
            }
            Outcome::Forward => match inflight.clone().try_acquire_owned() {
                Ok(permit) => {
                    inc(&c.forwarded);
                    let (q, sock, ctx, c) = (q.to_vec(), sock.clone(), ctx.clone(), c.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let a = match forward_udp(&ctx.cfg, &q).await {
                            Some(a) => Some(a),
                            None => {
                                inc(&c.upstream_failures);
                                reply_code(query_id(&q), ResponseCode::ServFail)
                            }
                        };
                        if let Some(a) = a {
                            let _ = sock.send_to(&a, peer).await;
                        }
                    });
                    None
                }
                Err(_) => {
                    inc(&c.upstream_failures);
                    reply_code(query_id(q), ResponseCode::ServFail)
                }
            },
        };
        if let Some(r) = reply {
            let _ = sock.send_to(&r, peer).await;
        }
    }
}

/// A response from an upstream is relayed as it is (the VM's own query went there, so
/// its id, EDNS size and TC already fit); the first upstream that answers in time wins.
async fn forward_udp(cfg: &DnsConfig, q: &[u8]) -> Option<Vec<u8>> {
    for up in &cfg.upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(local).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(q).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let deadline = tokio::time::Instant::now() + cfg.upstream_timeout;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            // Anything but the response to this query (a stray or spoofed datagram) is
            // ignored until the deadline.
            if n >= 12 && buf[..2] == q[..2] && buf[2] & 0x80 != 0 {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

async fn forward_tcp(cfg: &DnsConfig, q: &[u8]) -> Option<Vec<u8>> {
    for up in &cfg.upstreams {
        let one = async {
            let mut s = TcpStream::connect(up).await?;
            let len = u16::try_from(q.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
            s.write_all(&len.to_be_bytes()).await?;
            s.write_all(q).await?;
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await?;
            let mut b = vec![0u8; usize::from(u16::from_be_bytes(l))];
            s.read_exact(&mut b).await?;
            io::Result::Ok(b)
        };
        if let Ok(Ok(b)) = tokio::time::timeout(cfg.upstream_timeout, one).await
            && b.len() >= 12
            && b[..2] == q[..2]
        {
            return Some(b);
        }
    }
    None
}

async fn tcp_loop(l: TcpListener, vni: u32, ctx: Arc<Ctx>, c: Arc<DnsCounters>, limit: Limit) {
    let open = Arc::new(Semaphore::new(ctx.cfg.max_tcp_connections));
    loop {
        let s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "dns: accepting");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the limit the connection is closed at once: a VM cannot pin the node's
        // sockets by opening many.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let (ctx, c, limit) = (ctx.clone(), c.clone(), limit.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tcp_conn(s, vni, &ctx, &c, &limit).await;
        });
    }
}

/// Serves the queries of one connection, in order, until it closes, idles or sends
/// something that is not a query.
async fn tcp_conn(mut s: TcpStream, vni: u32, ctx: &Ctx, c: &DnsCounters, limit: &Limit) {
    loop {
        let mut l = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, s.read_exact(&mut l)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(l))];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, s.read_exact(&mut q)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        inc(&c.queries);
        // Over the budget the connection is closed.
        if !limit.admit(c) {
            return;
        }
        let outcome = ctx.view.borrow().answer(vni, &q, false, ctx.cfg.ttl);
        let reply = match outcome {
            Outcome::Reply(b, v) => {
                c.verdict(v);
                Some(b)
            }
            Outcome::Drop => {
                inc(&c.malformed);
                return;
            }
            Outcome::Forward if ctx.cfg.upstreams.is_empty() => {
                inc(&c.refused);
                reply_code(query_id(&q), ResponseCode::Refused)
            }
            Outcome::Forward => {
                inc(&c.forwarded);
                match forward_tcp(&ctx.cfg, &q).await {
                    Some(a) => Some(a),
                    None => {
                        inc(&c.upstream_failures);
                        reply_code(query_id(&q), ResponseCode::ServFail)
                    }
                }
            }
        };
        let Some(r) = reply else { return };
        let Ok(len) = u16::try_from(r.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(r.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&r);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };

    use super::*;

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[test]
    fn cached_answers_carry_the_query_id_and_follow_the_view() {
        let empty = Arc::new(DnsView::default());
        let mut cache = AnswerCache::default();
        // Nothing local: forwarded, never cached.
        assert_eq!(
            cache.answer(&empty, 1, &query(1, "a.example."), 5),
            Outcome::Forward
        );
        assert!(cache.answers.is_empty());
        // A FORMERR answer is cached and served with each query's id.
        let bad = |id: u16| {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63]);
            b
        };
        let Outcome::Reply(first, _) = cache.answer(&empty, 1, &bad(7), 5) else {
            panic!("no reply");
        };
        let Outcome::Reply(again, _) = cache.answer(&empty, 1, &bad(9), 5) else {
            panic!("no reply");
        };
        assert_eq!(cache.answers.len(), 1);
        assert_eq!((&first[..2], &again[..2]), (&[0, 7][..], &[0, 9][..]));
        assert_eq!(first[2..], again[2..]);
        // Another view: forgotten.
        let other = Arc::new(DnsView::default());
        let _ = cache.answer(&other, 1, &query(2, "b.example."), 5);
        assert!(cache.answers.is_empty());
    }
}
