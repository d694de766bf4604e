//! Packet builders for test tables: valid frames through etherparse, malformed ones by
//! editing those bytes.
use etherparse::PacketBuilder;

pub const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const VM_IP: [u8; 4] = [10, 0, 0, 2];
pub const PEER_IP: [u8; 4] = [10, 0, 0, 1];

/// A SYN from the VM.
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, NODE_MAC)
        .ipv4(VM_IP, PEER_IP, 64)
        .tcp(sport, dport, 1000, 65535)
        .syn();
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap_or_default();
    out
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, NODE_MAC)
        .ipv4(VM_IP, PEER_IP, 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap_or_default();
    out
}

pub fn icmp_echo(id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, NODE_MAC)
        .ipv4(VM_IP, PEER_IP, 64)
        .icmpv4_echo_request(id, seq);
    let mut out = Vec::new();
    b.write(&mut out, b"ping").unwrap_or_default();
    out
}

/// ARP who-has `target` from the VM.
pub fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&VM_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A frame with an EtherType the programs do not handle (local experimental 0x88b5).
pub fn non_ip(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(14));
    f.extend_from_slice(&NODE_MAC);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.resize(len.max(14), 0xab);
    f
}

/// IPv6 UDP from the VM.
pub fn ipv6_udp() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, NODE_MAC)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1000, 53);
    let mut out = Vec::new();
    b.write(&mut out, b"v6").unwrap_or_default();
    out
}

/// Inserts `opts` (a multiple of 4 bytes) as IPv4 options, fixing IHL, total length and
/// the header checksum.
pub fn with_ip_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(opts);
    f.extend_from_slice(&frame[34..]);
    let ihl = 5 + opts.len() / 4;
    f[14] = 0x40 | ihl as u8;
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize + opts.len();
    f[16..18].copy_from_slice(&(tot as u16).to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

/// Recomputes the IPv4 header checksum of an Ethernet frame.
pub fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24] = 0;
    f[25] = 0;
    let sum = ones_complement_sum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&(!sum).to_be_bytes());
}

/// 16-bit one's complement sum (RFC 1071), folded.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum (over the pseudo-header)
/// of an Ethernet frame in software; `Err` names the bad one. Non-IPv4 frames, fragments
/// and UDP with a zero checksum have nothing to verify at L4.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return Ok(());
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    let ip = &frame[14..];
    if ip.len() < ihl || ones_complement_sum(&ip[..ihl]) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if tot > ip.len() || tot < ihl {
        return Err("IPv4 total length beyond frame".into());
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let proto = ip[9];
    let l4 = &ip[ihl..tot];
    let name = match proto {
        6 => "TCP",
        17 if l4.len() >= 8 && l4[6..8] != [0, 0] => "UDP",
        _ => return Ok(()),
    };
    if frag {
        return Ok(());
    }
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    if ones_complement_sum(&pseudo) != 0xffff {
        return Err(format!("bad {name} checksum"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_verify_and_corruption_is_caught() {
        for f in [
            tcp(1, 2, b"abc"),
            udp(3, 4, b"defg"),
            with_ip_options(&tcp(5, 6, b""), &[1; 4]),
        ] {
            verify_checksums(&f).unwrap();
            let mut bad = f.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x55;
            assert!(verify_checksums(&bad).is_err());
        }
    }
}
