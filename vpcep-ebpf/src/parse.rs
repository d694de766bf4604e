//! Bounds-checked header parsing shared by the XDP and TC programs.
use core::mem;

use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use vpcep_common::stats::Reason;

/// Ethernet + IPv4 with options + TCP with options: what the programs may need to read.
pub const MAX_HEADERS: usize = EthHdr::LEN + 60 + 60;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

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
        let p = self.start + off;
        if p + mem::size_of::<T>() > self.end {
            return Err(reason);
        }
        Ok(p as *mut T)
    }
}

/// An IPv4 packet whose headers passed every bounds and sanity check.
pub struct Ipv4Packet {
    pub proto: u8,
    /// Offset or more-fragments set: L4 header is absent or not the first.
    pub fragment: bool,
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
    let (vihl, tot_len, frags, proto) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (tot_len as usize) < ihl {
        return Err(Reason::DropBadIpv4);
    }
    // The options must be present too.
    frame.ptr_at::<[u8; 4]>(l3 + ihl - 4, Reason::DropTruncIpv4)?;
    let l4 = l3 + ihl;
    // Fragment offset or more-fragments flag.
    let fragment = frags & 0x3fff != 0;
    let first = frags & 0x1fff == 0;
    if first {
        match proto {
            IPPROTO_TCP => {
                let tcp: *const TcpHdr = frame.ptr_at(l4, Reason::DropTruncL4)?;
                // SAFETY: bounds checked by ptr_at; byte 12 holds the data offset.
                let doff = unsafe { (*(tcp as *const [u8; 20]))[12] >> 4 } as usize * 4;
                if doff < TcpHdr::LEN {
                    return Err(Reason::DropBadTcp);
                }
            }
            IPPROTO_UDP => {
                frame.ptr_at::<UdpHdr>(l4, Reason::DropTruncL4)?;
            }
            _ => {}
        }
    }
    Ok(Parsed::Ipv4(Ipv4Packet { proto, fragment }))
}
