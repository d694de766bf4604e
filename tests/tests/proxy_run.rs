//! tcp_proxy through BPF_PROG_TEST_RUN: the header on the right segment, the sequence
//! adjustment around the correction position (also wrapping at 2³²), the backend's
//! acknowledgements and SACK edges mapped back, the SYN-ACK's MSS clamp, and TOA with its
//! option space full. Every output frame's checksums are verified; headers are decoded
//! with the `ppp` crate.
use etherparse::PacketBuilder;
use ppp::v2;
use vpcep::dataplane::Dataplane;
use vpcep_common::{endpoint::*, stats::ProxyEvent};
use vpcep_tests::{
    fastpath::{self as fp, B_IP, B_MAC, C_IP, C_MAC, EP_IP, Nics, SNAT_IP, VMAC, run_tc},
    packets, require_root,
};

const EP_ID: &str = "5f0c1d4e-0a1b-4c2d-8e3f-000000000007";
const VPC_ID: &str = "9a8b7c6d-1111-4222-8333-0000000000a1";

struct Seg {
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    options: Vec<u8>,
    payload: Vec<u8>,
}

fn seg(seq: u32, ack: Option<u32>) -> Seg {
    Seg {
        seq,
        ack,
        syn: false,
        options: Vec::new(),
        payload: Vec::new(),
    }
}

impl Seg {
    fn frame(&self, from_backend: bool, snat_port: u16, sport: u16) -> Vec<u8> {
        let b = if from_backend {
            PacketBuilder::ethernet2(B_MAC, VMAC)
                .ipv4(B_IP, SNAT_IP, 64)
                .tcp(80, snat_port, self.seq, 65535)
        } else {
            PacketBuilder::ethernet2(C_MAC, VMAC)
                .ipv4(C_IP, EP_IP, 64)
                .tcp(sport, 8080, self.seq, 65535)
        };
        let mut b = b;
        if self.syn {
            b = b.syn();
        }
        if let Some(a) = self.ack {
            b = b.ack(a);
        }
        if !self.options.is_empty() {
            b = b.options_raw(&self.options).unwrap();
        }
        let mut out = Vec::new();
        b.write(&mut out, &self.payload).unwrap();
        out
    }
}

/// The TCP header fields of an output frame: seq, ack, header length, options, payload.
fn tcp_of(f: &[u8]) -> (u32, u32, usize, Vec<u8>, Vec<u8>) {
    packets::verify_checksums(f).unwrap();
    let ihl = (f[14] & 0xf) as usize * 4;
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    let t = &f[14 + ihl..14 + tot];
    let seq = u32::from_be_bytes(t[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(t[8..12].try_into().unwrap());
    let hl = (t[12] >> 4) as usize * 4;
    (seq, ack, hl, t[20..hl].to_vec(), t[hl..].to_vec())
}

struct Flow {
    nics: Nics,
    dp: Dataplane,
    mode: u8,
    sport: u16,
    snat_port: u16,
    /// The correction position: the client's SYN's sequence number + 1.
    pos: u32,
    len: u16,
}

impl Flow {
    /// A flow of mode `mode` from C:`sport` whose SYN has sequence number `isn`, answered
    /// by the backend (SYN-ACK with MSS 1460, checked for its clamp).
    fn open(n: &Nics, mode: u8, isn: u32, sport: u16) -> Flow {
        let nics = Nics {
            c: n.c,
            x: n.x,
            b: n.b,
        };
        let mut dp = fp::scenario(&nics, fp::PORT_LO, fp::PORT_HI);
        let mut svc = dp
            .services()
            .unwrap()
            .into_iter()
            .find(|(id, _)| *id == 3)
            .unwrap()
            .1;
        svc.tcp_proxy = mode;
        dp.set_service(3, svc).unwrap();
        let t = ProxyTemplate::new(EP_ID, 1007, VPC_ID, 1).unwrap();
        dp.set_proxy_template(7, t).unwrap();
        let mut syn = seg(isn, None);
        syn.syn = true;
        syn.options = vec![2, 4, 0x05, 0xb4];
        let out = run_tc(&mut dp, nics.c, &syn.frame(false, 0, sport)).out;
        let snat_port = fp::port_of(&out, 34);
        let (seq, ..) = tcp_of(&out);
        assert_eq!(seq, isn, "the SYN goes unchanged");
        let mut f = Flow {
            nics,
            dp,
            mode,
            sport,
            snat_port,
            pos: isn.wrapping_add(1),
            len: t.header_len(mode),
        };
        let mut sa = seg(7000, Some(f.pos));
        sa.syn = true;
        sa.options = vec![2, 4, 0x05, 0xb4];
        let (_, ack, _, opts, _) = f.backend(&sa);
        assert_eq!(ack, f.pos);
        let insert = f.len + if toa_mode(mode) { TOA_LEN } else { 0 };
        assert_eq!(
            u16::from_be_bytes([opts[2], opts[3]]),
            1460 - insert,
            "the SYN-ACK's MSS leaves room for what is inserted"
        );
        f
    }

    fn client(&mut self, s: &Seg) -> (u32, u32, usize, Vec<u8>, Vec<u8>) {
        let out = run_tc(&mut self.dp, self.nics.c, &s.frame(false, 0, self.sport)).out;
        tcp_of(&out)
    }

    fn backend(&mut self, s: &Seg) -> (u32, u32, usize, Vec<u8>, Vec<u8>) {
        let out = run_tc(&mut self.dp, self.nics.b, &s.frame(true, self.snat_port, 0)).out;
        tcp_of(&out)
    }

    fn event(&self, e: ProxyEvent) -> u64 {
        self.dp.proxy_event(self.mode, e).unwrap()
    }

    /// Decodes `payload` as our header followed by `rest`.
    fn expect_header(&self, payload: &[u8], rest: &[u8]) {
        let len = self.len as usize;
        assert_eq!(payload.len(), len + rest.len());
        let h = v2::Header::try_from(&payload[..len]).unwrap();
        match h.addresses {
            v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address.octets(), C_IP);
                assert_eq!(a.source_port, self.sport);
                assert_eq!(a.destination_address.octets(), EP_IP);
                assert_eq!(a.destination_port, 8080);
            }
            other => panic!("{other:?}"),
        }
        let tlvs: Vec<(u8, Vec<u8>)> = h
            .tlvs()
            .map(|t| t.unwrap())
            .filter(|t| t.kind == PP2_TYPE_VPCEP)
            .map(|t| (t.value[0], t.value[1..].to_vec()))
            .collect();
        let mut want = vec![
            (PP2_VPCEP_ENDPOINT_ID, EP_ID.as_bytes().to_vec()),
            (PP2_VPCEP_MARKER_ID, 1007u32.to_be_bytes().to_vec()),
            (PP2_VPCEP_VPC_ID, VPC_ID.as_bytes().to_vec()),
        ];
        if self.mode & TCP_PROXY_MODE_MASK == TCP_PROXY_PROXY_VNI {
            want.push((PP2_VPCEP_VNI, 1u32.to_be_bytes().to_vec()));
        }
        assert_eq!(tlvs, want);
        assert_eq!(&payload[len..], rest);
    }
}

fn data(seq: u32, ack: u32, n: usize) -> Seg {
    let mut s = seg(seq, Some(ack));
    s.payload = (0..n).map(|i| (i * 7) as u8).collect();
    s
}

/// First-ACK placement at ISNs far from and next to the wrap of 2³².
#[test]
fn header_on_the_first_ack_and_seqadj() {
    require_root!();
    let (ns, n) = fp::namespace();
    ns.run(|| {
        for isn in [1000u32, u32::MAX - 40, u32::MAX] {
            for mode in [TCP_PROXY_PROXY_OPEN, TCP_PROXY_PROXY_VNI] {
                let mut f = Flow::open(&n, mode, isn, 41000);
                let (pos, len) = (f.pos, f.len as u32);
                // The ACK completing the handshake carries the header, at the position.
                let (seq, _, _, _, pl) = f.client(&seg(pos, Some(7001)));
                assert_eq!(seq, pos, "isn {isn:#x}");
                f.expect_header(&pl, &[]);
                assert_eq!(f.event(ProxyEvent::HeaderSent), 1);
                // The first data right behind it: shifted, no header.
                let d = data(pos, 7001, 10);
                let (seq, _, _, _, pl) = f.client(&d);
                assert_eq!(seq, pos.wrapping_add(len), "isn {isn:#x}");
                assert_eq!(pl, d.payload);
                // Later data: shifted.
                let (seq, ..) = f.client(&data(pos.wrapping_add(10), 7001, 5));
                assert_eq!(seq, pos.wrapping_add(10 + len));
                // A retransmission of the first data while the header is unacknowledged
                // carries the header again.
                let (seq, _, _, _, pl) = f.client(&d);
                assert_eq!(seq, pos);
                f.expect_header(&pl, &d.payload);
                assert_eq!(f.event(ProxyEvent::HeaderResent), 1);
                // The backend's acknowledgements, in the client's space: inside the header →
                // the position; past it → len lower.
                for (ack, want) in [
                    (pos, pos),
                    (pos.wrapping_add(5), pos),
                    (pos.wrapping_add(len - 1), pos),
                    (pos.wrapping_add(len), pos),
                    (pos.wrapping_add(len + 10), pos.wrapping_add(10)),
                ] {
                    let (_, a, ..) = f.backend(&seg(7001, Some(ack)));
                    assert_eq!(a, want, "isn {isn:#x} ack {ack:#x}");
                }
                // SACK edges too (behind timestamps, so the options are walked).
                let (l, r) = (pos.wrapping_add(len + 20), pos.wrapping_add(len + 30));
                let (l2, r2) = (pos.wrapping_add(len + 40), pos.wrapping_add(len + 50));
                let mut s = seg(7001, Some(pos.wrapping_add(len + 10)));
                s.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18];
                for e in [l, r, l2, r2] {
                    s.options.extend_from_slice(&e.to_be_bytes());
                }
                let (_, a, _, opts, _) = f.backend(&s);
                assert_eq!(a, pos.wrapping_add(10));
                let edge =
                    |i: usize| u32::from_be_bytes(opts[16 + 4 * i..20 + 4 * i].try_into().unwrap());
                assert_eq!(
                    [edge(0), edge(1), edge(2), edge(3)],
                    [20, 30, 40, 50].map(|d| pos.wrapping_add(d)),
                    "isn {isn:#x}"
                );
                assert_eq!(f.event(ProxyEvent::SackAdjusted), 1);
                // Header acknowledged: a bare ACK at the position is shifted, carries nothing.
                let (seq, _, _, _, pl) = f.client(&seg(pos, Some(7001)));
                assert_eq!(seq, pos.wrapping_add(len));
                assert!(pl.is_empty());
                // A retransmission of the first data now goes shifted, without the header.
                let (seq, _, _, _, pl) = f.client(&d);
                assert_eq!(seq, pos.wrapping_add(len));
                assert_eq!(pl, d.payload);
                // 2³¹ and more past the position (a 2 GiB stream): still shifted, both ways.
                for far in [0x8000_0000u32, 0x8000_0100, 0xffff_ff00] {
                    let (seq, ..) = f.client(&data(pos.wrapping_add(far), 7001, 10));
                    assert_eq!(seq, pos.wrapping_add(far).wrapping_add(len), "far {far:#x}");
                    let ack = pos.wrapping_add(len).wrapping_add(far);
                    let (_, a, ..) = f.backend(&seg(7001, Some(ack)));
                    assert_eq!(a, pos.wrapping_add(far), "far {far:#x}");
                }
            }
        }
    })
    .unwrap();
}

/// First-data placement: bare segments at the position go as they are; the first data
/// carries the header; what follows is shifted.
#[test]
fn header_on_the_first_data() {
    require_root!();
    let (ns, n) = fp::namespace();
    ns.run(|| {
        for isn in [5000u32, u32::MAX - 3] {
            let mut f = Flow::open(
                &n,
                TCP_PROXY_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA,
                isn,
                41001,
            );
            let (pos, len) = (f.pos, f.len as u32);
            let (seq, _, _, _, pl) = f.client(&seg(pos, Some(7001)));
            assert_eq!((seq, pl.len()), (pos, 0));
            for n in [1usize, 1300] {
                let d = data(pos, 7001, n);
                let (seq, _, _, _, pl) = f.client(&d);
                assert_eq!(seq, pos, "a retransmission carries it again, n {n}");
                f.expect_header(&pl, &d.payload);
            }
            let (seq, ..) = f.client(&data(pos.wrapping_add(1300), 7001, 100));
            assert_eq!(seq, pos.wrapping_add(1300 + len));
            let (seq, _, _, _, pl) = f.client(&seg(pos.wrapping_add(1400), Some(7001)));
            assert_eq!((seq, pl.len()), (pos.wrapping_add(1400 + len), 0));
            assert_eq!(f.event(ProxyEvent::HeaderSent), 1);
            assert_eq!(f.event(ProxyEvent::HeaderResent), 1);
        }
    })
    .unwrap();
}

/// TOA on the handshake's ACK and on data until the backend acknowledges data; none when
/// the option space is full.
#[test]
fn toa_option() {
    require_root!();
    let (ns, n) = fp::namespace();
    ns.run(|| {
        let mut f = Flow::open(&n, TCP_PROXY_TOA_OPEN, 9000, 41002);
        let pos = f.pos;
        let toa = |opts: &[u8]| -> Option<(u16, [u8; 4])> {
            let i = opts.windows(2).position(|w| w == [TOA_KIND_DEFAULT, 8])?;
            Some((
                u16::from_be_bytes([opts[i + 2], opts[i + 3]]),
                opts[i + 4..i + 8].try_into().unwrap(),
            ))
        };
        let mut ack = seg(pos, Some(7001));
        ack.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let (seq, _, hl, opts, pl) = f.client(&ack);
        assert_eq!((seq, hl, pl.len()), (pos, 40, 0));
        assert_eq!(toa(&opts), Some((41002, C_IP)));
        let d = data(pos, 7001, 700);
        let (seq, _, hl, opts, pl) = f.client(&d);
        assert_eq!((seq, hl), (pos, 28));
        assert_eq!(toa(&opts), Some((41002, C_IP)));
        assert_eq!(pl, d.payload, "the payload moved behind the option intact");
        // Full option space (40 bytes): TOA gives way.
        let mut full = seg(pos.wrapping_add(700), Some(7001));
        full.options = vec![1; 40];
        let (_, _, hl, opts, _) = f.client(&full);
        assert_eq!((hl, toa(&opts)), (60, None));
        assert_eq!(f.event(ProxyEvent::ToaNoRoom), 1);
        // The backend acknowledged data: no more TOA.
        f.backend(&seg(7001, Some(pos.wrapping_add(700))));
        let (_, _, hl, opts, _) = f.client(&data(pos.wrapping_add(700), 7001, 10));
        assert_eq!((hl, toa(&opts)), (20, None));
        assert_eq!(f.event(ProxyEvent::ToaInserted), 2);
        // toa_open inserts no header: nothing is shifted (the data above kept `pos`).
    })
    .unwrap();
}

/// `open`: TOA and the header on one segment (the handshake's ACK), with a configured TOA
/// kind.
#[test]
fn open_mode_carries_both() {
    require_root!();
    let (ns, n) = fp::namespace();
    ns.run(|| {
        let mut f = Flow::open(&n, TCP_PROXY_OPEN, 77, 41003);
        let mut node = fp::node(fp::PORT_LO, fp::PORT_HI);
        node.toa_kind = 200;
        f.dp.set_node(node).unwrap();
        let pos = f.pos;
        let (seq, _, hl, opts, pl) = f.client(&seg(pos, Some(7001)));
        assert_eq!((seq, hl), (pos, 28));
        assert_eq!(&opts[..4], &[200, 8, (41003u16 >> 8) as u8, 41003u16 as u8]);
        assert_eq!(&opts[4..8], &C_IP);
        f.expect_header(&pl, &[]);
    })
    .unwrap();
}
