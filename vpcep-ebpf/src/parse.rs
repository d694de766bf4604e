//! Bounds-checked header parsing shared by the XDP and TC programs.
use core::mem;

use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use vpcep_common::{
    endpoint::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::Reason,
};

/// Ethernet + IPv4 with options + TCP with options: what the programs may need to read;
/// an ICMP error quotes another IPv4 header (with options) and 8 bytes of L4.
pub const MAX_HEADERS: usize = EthHdr::LEN + 60 + 8 + 60 + 8;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The packet bytes a program may touch: `[start, end)`.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Pointer to a `T` at `off`, or `reason` if the frame is too short.
    #[inline(always)]
    pub fn ptr_at<T>(&self, off: usize, reason: Reason) -> Result<*mut T, Reason> {
        // Offsets are always below 512; the mask gives the verifier that bound even when
        // the offset was spilled to the stack and lost its range. (An explicit range check
        // instead lets the compiler drop the mask, and Linux 6.1's verifier then refuses
        // the program: the bound is lost with the spill.)
        let p = self.start + (off & 0x1ff);
        if p + mem::size_of::<T>() > self.end {
            return Err(reason);
        }
        Ok(p as *mut T)
    }
}

/// An IPv4 packet whose headers passed every bounds and sanity check. Addresses and ports
/// are raw network-order values as loaded.
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    /// Offset of the L4 header (after IP options).
    pub l4: usize,
    pub proto: u8,
    /// Offset or more-fragments set: the L4 header is absent or not this packet's.
    pub fragment: bool,
    pub ttl: u8,
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports (zero otherwise); for ICMP, `sport` holds type and code.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

pub enum Parsed {
    NonIpv4 { ether_type_be: u16 },
    Ipv4(Ipv4Packet),
}

impl Parsed {
    /// Reason counted when the packet is passed on untouched.
    #[inline(always)]
    pub fn pass_reason(&self) -> Reason {
        match self {
            Parsed::NonIpv4 { ether_type_be } if *ether_type_be == ETH_P_ARP.to_be() => {
                Reason::PassArp
            }
            Parsed::NonIpv4 { .. } => Reason::PassNonIpv4,
            Parsed::Ipv4(p) if p.fragment => Reason::PassFragment,
            Parsed::Ipv4(p) => match p.proto {
                IPPROTO_TCP => Reason::PassTcp,
                IPPROTO_UDP => Reason::PassUdp,
                _ => Reason::PassOtherProto,
            },
        }
    }
}

#[inline(always)]
pub fn parse(frame: &Frame) -> Result<Parsed, Reason> {
    let eth: *const EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    // SAFETY: bounds checked by ptr_at.
    let ether_type_be = unsafe { (*eth).ether_type };
    if ether_type_be != ETH_P_IP.to_be() {
        return Ok(Parsed::NonIpv4 { ether_type_be });
    }
    let l3 = EthHdr::LEN;
    let ip: *const Ipv4Hdr = frame.ptr_at(l3, Reason::DropTruncIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, tot_len, frags, proto, ttl, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).ttl,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (tot_len as usize) < ihl {
        return Err(Reason::DropBadIpv4);
    }
    // The options must be present too.
    frame.ptr_at::<[u8; 4]>(l3 + ihl - 4, Reason::DropTruncIpv4)?;
    let l4 = l3 + ihl;
    let fragment = frags & 0x3fff != 0;
    let first = frags & 0x1fff == 0;
    let mut pkt = Ipv4Packet {
        l4,
        proto,
        fragment,
        ttl,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    if first {
        match proto {
            IPPROTO_TCP => {
                let tcp: *const [u8; TcpHdr::LEN] = frame.ptr_at(l4, Reason::DropTruncL4)?;
                // SAFETY: bounds checked by ptr_at; byte 12 holds the data offset.
                let t = unsafe { &*tcp };
                if (t[12] >> 4) < 5 {
                    return Err(Reason::DropBadTcp);
                }
                pkt.sport = u16::from_ne_bytes([t[0], t[1]]);
                pkt.dport = u16::from_ne_bytes([t[2], t[3]]);
                pkt.tcp_flags = t[13];
            }
            IPPROTO_UDP => {
                let udp: *const UdpHdr = frame.ptr_at(l4, Reason::DropTruncL4)?;
                // SAFETY: bounds checked by ptr_at.
                unsafe {
                    pkt.sport = u16::from_ne_bytes((*udp).src);
                    pkt.dport = u16::from_ne_bytes((*udp).dst);
                }
            }
            IPPROTO_ICMP => {
                let icmp: *const [u8; 4] = frame.ptr_at(l4, Reason::DropTruncL4)?;
                // SAFETY: bounds checked by ptr_at.
                let i = unsafe { &*icmp };
                pkt.sport = u16::from_ne_bytes([i[0], i[1]]);
            }
            _ => {}
        }
    }
    Ok(Parsed::Ipv4(pkt))
}
