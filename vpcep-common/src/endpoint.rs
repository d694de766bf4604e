//! Map layouts for endpoints, services, the node and conntrack.
//!
//! Addresses and ports stay in network byte order (`_be`) so the fast path compares and
//! copies them without conversion. Every key is free of implicit padding (padding inside a
//! hash key breaks lookups), checked by the size asserts.
use core::mem::size_of;

pub const ETH_ALEN: usize = 6;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// 198.19.128.0/17: SNAT addresses; the provider VPC may not overlap it.
pub const SNAT_NET_BE: u32 = u32::from_be_bytes([198, 19, 128, 0]).to_be();
pub const SNAT_MASK_BE: u32 = 0xffff_8000u32.to_be();

/// Value of `LOCAL_NICS` (key: ifindex of the host side of a VM NIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalNic {
    pub vpc_id: u32,
    /// The VM's own address; anything else from this NIC toward an endpoint is spoofed.
    pub ip_be: u32,
    /// Its subnet's gateway, answered by ARP with the node's virtual MAC.
    pub gateway_be: u32,
    pub mac: [u8; ETH_ALEN],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<LocalNic>() == 20);

/// Key of `ENDPOINTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub vpc_id: u32,
    pub ip_be: u32,
}
const _: () = assert!(size_of::<EndpointKey>() == 8);

/// The provider accepted the connection.
pub const EP_ACCEPTED: u32 = 1 << 0;
/// The endpoint owner's domain is (still) in the service whitelist.
pub const EP_PERMITTED: u32 = 1 << 1;
/// The endpoint has a source whitelist: new flows must match `SRC_WHITELIST`.
pub const EP_SRC_WHITELIST: u32 = 1 << 2;
/// The endpoint was deleted a moment ago: its address fails closed (every packet to it is
/// dropped and counted) until the agent's grace period ends, instead of reaching the
/// node's own stack through a stale ARP entry of the consumer VM.
pub const EP_TOMBSTONE: u32 = 1 << 3;

/// Value of `ENDPOINTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Dense node-local id (index into the per-endpoint counters and `EP_FLOWS`).
    pub endpoint_id: u32,
    pub service_id: u32,
    pub marker_id: u32,
    pub flags: u32,
    /// A hash of what established flows are re-checked against when it changes: the
    /// service's entry and port mappings ([`service_epoch`]) and the endpoint's source
    /// whitelist. Flows keep their cached backend while it is unchanged; a change sends
    /// their next packet through the full checks, which keep the flow or cut it.
    pub epoch: u32,
    /// The endpoint's instance: new when it is created (also at the same VPC and address
    /// as a deleted one) and whenever it becomes usable again (re-accepted, re-permitted).
    /// A flow of another generation is dead: a revocation is never undone for old flows.
    pub generation: u32,
    /// Live conntrack entries this endpoint may hold; 0 = no limit.
    pub max_flows: u32,
    /// New flows per second this endpoint may open; 0 = no limit.
    pub new_flows_per_sec: u32,
}
const _: () = assert!(size_of::<Endpoint>() == 32);

/// Value of `EP_FLOWS` (index: endpoint id): what the per-endpoint limits count, shared by
/// all CPUs and updated with atomic instructions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointFlows {
    /// Conntrack entries held (as i64: a decrement for a flow counted before the agent
    /// reset the slot may take it below zero, which only admits that many more).
    pub live: u64,
    /// Second (CLOCK_MONOTONIC) that `opened` counts.
    pub window_s: u64,
    /// New flows opened in `window_s`.
    pub opened: u64,
}
const _: () = assert!(size_of::<EndpointFlows>() == 24);

/// Key of `PORT_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub service_id: u32,
    pub client_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<PortKey>() == 8);

/// Value of `PORT_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    pub server_port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<PortTarget>() == 4);

/// The backend NIC is on this node: redirect to `ifindex`.
pub const SVC_LOCAL: u8 = 1;
/// The backend is on another node (`remote_node_be`), reached over the overlay.
pub const SVC_REMOTE: u8 = 2;

pub const TCP_PROXY_CLOSE: u8 = 0;
pub const TCP_PROXY_TOA_OPEN: u8 = 1;
pub const TCP_PROXY_PROXY_OPEN: u8 = 2;
pub const TCP_PROXY_OPEN: u8 = 3;
pub const TCP_PROXY_PROXY_VNI: u8 = 4;
/// The mode in a `tcp_proxy` byte (the high bit is the header placement).
pub const TCP_PROXY_MODE_MASK: u8 = 0x7f;
/// In `Service::tcp_proxy`: the PROXY header goes before the first data segment of the
/// client instead of on the ACK that completes the handshake (the default, which also
/// works for protocols where the server speaks first).
pub const TCP_PROXY_F_FIRST_DATA: u8 = 0x80;

/// The `tcp_proxy` byte of an API mode name and header placement (`on_first_ack`, the
/// default, or `on_first_data`); `None` for a name it does not know.
pub fn tcp_proxy_byte(mode: &str, placement: Option<&str>) -> Option<u8> {
    let m = match mode {
        "close" => TCP_PROXY_CLOSE,
        "toa_open" => TCP_PROXY_TOA_OPEN,
        "proxy_open" => TCP_PROXY_PROXY_OPEN,
        "open" => TCP_PROXY_OPEN,
        "proxy_vni" => TCP_PROXY_PROXY_VNI,
        _ => return None,
    };
    match placement {
        None | Some("on_first_ack") => Some(m),
        Some("on_first_data") if m == TCP_PROXY_CLOSE => Some(m),
        Some("on_first_data") => Some(m | TCP_PROXY_F_FIRST_DATA),
        Some(_) => None,
    }
}

/// The API name of a mode (the placement bit ignored).
pub const fn tcp_proxy_name(tcp_proxy: u8) -> &'static str {
    match tcp_proxy & TCP_PROXY_MODE_MASK {
        TCP_PROXY_TOA_OPEN => "toa_open",
        TCP_PROXY_PROXY_OPEN => "proxy_open",
        TCP_PROXY_OPEN => "open",
        TCP_PROXY_PROXY_VNI => "proxy_vni",
        _ => "close",
    }
}

/// The modes that do something, for counters.
pub const TCP_PROXY_ACTIVE_MODES: [u8; 4] = [
    TCP_PROXY_TOA_OPEN,
    TCP_PROXY_PROXY_OPEN,
    TCP_PROXY_OPEN,
    TCP_PROXY_PROXY_VNI,
];

/// The mode sends a PROXY protocol v2 header.
#[inline(always)]
pub const fn proxy_header_mode(tcp_proxy: u8) -> bool {
    matches!(
        tcp_proxy & TCP_PROXY_MODE_MASK,
        TCP_PROXY_PROXY_OPEN | TCP_PROXY_OPEN | TCP_PROXY_PROXY_VNI
    )
}

/// The mode adds the TOA option.
#[inline(always)]
pub const fn toa_mode(tcp_proxy: u8) -> bool {
    matches!(
        tcp_proxy & TCP_PROXY_MODE_MASK,
        TCP_PROXY_TOA_OPEN | TCP_PROXY_OPEN
    )
}

/// Value of `SERVICES` (key: service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub backend_ip_be: u32,
    pub backend_vpc_id: u32,
    /// Host-side ifindex of the backend NIC when local.
    pub ifindex: u32,
    /// Underlay address of the backend's node when remote.
    pub remote_node_be: u32,
    pub backend_mac: [u8; ETH_ALEN],
    /// `SVC_LOCAL` or `SVC_REMOTE`.
    pub location: u8,
    /// `TCP_PROXY_*`, with `TCP_PROXY_F_FIRST_DATA`: what new TCP flows tell the backend
    /// about their consumer (`proxy.rs`). Flows keep the mode they started with.
    pub tcp_proxy: u8,
}
const _: () = assert!(size_of::<Service>() == 24);

/// Key of `SRC_WHITELIST` (an LPM trie): the endpoint id is always matched in full, so a
/// rule for `a.b.c.d/n` is stored with prefix length `32 + n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WhitelistKey {
    pub endpoint_id_be: u32,
    pub src_be: u32,
}
const _: () = assert!(size_of::<WhitelistKey>() == 8);

/// The single entry of `NODE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's SNAT address (from 198.19.128.0/17); zero = not configured, nothing is
    /// translated.
    pub snat_ip_be: u32,
    /// SNAT source ports, host order, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    /// The MAC that answers ARP for endpoints and gateways, and sources translated frames.
    pub vmac: [u8; ETH_ALEN],
    /// TCP option kind of TOA; 0 = [`TOA_KIND_DEFAULT`] (some vendors' modules read 200
    /// or 252).
    pub toa_kind: u8,
    pub _pad: u8,
    pub timeouts: Timeouts,
}
const _: () = assert!(size_of::<NodeConfig>() == 16 + size_of::<Timeouts>());

/// Idle timeouts in seconds, per conntrack state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}
const _: () = assert!(size_of::<Timeouts>() == 16);

impl Default for Timeouts {
    /// Defaults follow cilium's and Linux conntrack's reasoning: a half-open SYN gets a
    /// minute (covers SYN retries), an established flow six hours (long-lived idle TCP
    /// sessions such as database pools must survive), a closing flow ten seconds (enough
    /// for the last ACKs), UDP a minute (DNS and request/response).
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            udp: 60,
        }
    }
}

pub const DEFAULT_PORT_LO: u16 = 1024;
pub const DEFAULT_PORT_HI: u16 = 65535;

/// Forward conntrack key: the consumer's view of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub vpc_id: u32,
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 20);

/// Packs two network-order ports and a protocol into the words the keys end with. Built
/// from whole words because a three-byte zero pad written as an array compiles, for the
/// BPF target, into a call of an out-of-line memset on every packet.
#[inline(always)]
const fn tail_words(a_be: u16, b_be: u16, proto: u8) -> [u32; 2] {
    let a = a_be.to_ne_bytes();
    let b = b_be.to_ne_bytes();
    [
        u32::from_ne_bytes([a[0], a[1], b[0], b[1]]),
        u32::from_ne_bytes([proto, 0, 0, 0]),
    ]
}

impl FlowKey {
    #[inline(always)]
    pub const fn new(
        vpc_id: u32,
        src_be: u32,
        dst_be: u32,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
    ) -> Self {
        let [ports, proto] = tail_words(sport_be, dport_be, proto);
        // SAFETY: `FlowKey` is `repr(C)`, five u32-sized words with no padding, and every
        // bit pattern is a valid value.
        unsafe { core::mem::transmute::<[u32; 5], Self>([vpc_id, src_be, dst_be, ports, proto]) }
    }
}

/// Reverse conntrack key: the backend's reply as it arrives (src backend, dst SNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevKey {
    pub snat_be: u32,
    pub backend_be: u32,
    pub snat_port_be: u16,
    pub backend_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<RevKey>() == 16);

impl RevKey {
    #[inline(always)]
    pub const fn new(
        snat_be: u32,
        backend_be: u32,
        snat_port_be: u16,
        backend_port_be: u16,
        proto: u8,
    ) -> Self {
        let [ports, proto] = tail_words(snat_port_be, backend_port_be, proto);
        // SAFETY: as for `FlowKey::new`: four words, no padding, any bits valid.
        unsafe { core::mem::transmute::<[u32; 4], Self>([snat_be, backend_be, ports, proto]) }
    }
}

pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_TCP_ESTABLISHED: u8 = 2;
pub const CT_TCP_CLOSING: u8 = 3;
pub const CT_UDP: u8 = 4;

/// Bits of [`FlowEntry::ct`]. They are only ever set (atomic fetch-or), so the CPUs of the
/// two directions never lose each other's updates; the state is derived from them.
pub const CT_F_UDP: u64 = 1 << 0;
/// The backend answered the SYN (SYN+ACK seen).
pub const CT_F_ESTABLISHED: u64 = 1 << 1;
pub const CT_F_FIN_CONSUMER: u64 = 1 << 2;
pub const CT_F_FIN_BACKEND: u64 = 1 << 3;
pub const CT_F_RST: u64 = 1 << 4;

/// `FlowEntry::last_seen_ns` of a flow that has been killed (expired, revoked or flushed)
/// by the CPU or agent that won the compare-and-swap on it. Nobody else may reuse or
/// overwrite a killed entry: only its killer deletes it, so a delete can never remove a
/// newer flow.
pub const CT_KILLED: u64 = u64::MAX;
/// `RevEntry::owner` of a SNAT port claim that is being removed by its killer; it is
/// neither reused nor taken over, only deleted.
pub const CLAIM_RELEASED: u64 = u64::MAX;
/// A claim younger than this (seconds) is never judged by its forward entry: between the
/// claim and the forward entry's insert the holder looks absent, and must not lose it.
pub const CLAIM_GUARD_S: u64 = 2;

/// A new flow's owner id: the second it claimed its port (high word, for
/// [`CLAIM_GUARD_S`]) and a per-CPU sequence number with the CPU (low word), so that no
/// two flows alive at once share one.
#[inline(always)]
pub const fn flow_owner(now_s: u64, seq: u64, cpu: u32) -> u64 {
    (now_s << 32) | ((seq & 0xf_ffff) << 12) | (cpu as u64 & 0xfff)
}

/// The second a claim was made, from its owner id.
#[inline(always)]
pub const fn owner_since_s(owner: u64) -> u64 {
    owner >> 32
}

/// Value of `CT_FWD`. Besides the flow's state it caches what the consumer's packets need
/// from the service (backend MAC, overlay peer), valid while the endpoint's `epoch` equals
/// the one recorded here, and where its replies go (consumer NIC and MAC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The SNAT port claim the flow holds (its key in `CT_REV`).
    pub rev: RevKey,
    /// Equal to the claim's [`RevEntry::owner`] while the flow holds it.
    pub owner: u64,
    /// CLOCK_MONOTONIC of the last packet (coarse); [`CT_KILLED`] once killed. Changed
    /// only by compare-and-swap.
    pub last_seen_ns: u64,
    /// `CT_F_*` bits.
    pub ct: u64,
    pub endpoint_id: u32,
    pub service_id: u32,
    /// Where translated packets go (local backend NIC, or the overlay device).
    pub out_ifindex: u32,
    /// The endpoint's `epoch` when the flow was last checked.
    pub epoch: u32,
    /// The endpoint's `generation` when the flow was created.
    pub generation: u32,
    /// Underlay address of the backend's node; 0 for a local backend.
    pub remote_node_be: u32,
    /// The backend's VPC (the VNI on the overlay).
    pub backend_vpc_id: u32,
    /// The consumer's NIC: replies are delivered there.
    pub consumer_ifindex: u32,
    pub backend_mac: [u8; ETH_ALEN],
    pub consumer_mac: [u8; ETH_ALEN],
    /// tcp_proxy: the client's first stream sequence number (its SYN's + 1), where the
    /// PROXY header goes: the correction position of the sequence adjustment.
    pub pp_isn: u32,
    /// Length of the PROXY header this flow inserts (0: none).
    pub pp_len: u16,
    /// The service's `tcp_proxy` when the flow was opened.
    pub pp_mode: u8,
    /// Written by the consumer direction only: `PP_SENT_*`.
    pub pp_sent: u8,
    /// Written by the backend direction only: `PP_ACKED_*` bits.
    pub pp_acked: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowEntry>() == 96);

/// `FlowEntry::pp_sent`: the header went out on a segment without data (first-ACK
/// placement); the client's first data follows it unchanged but shifted.
pub const PP_SENT_ALONE: u8 = 1;
/// The first data segment went past (with the header, or after it).
pub const PP_SENT_DATA: u8 = 2;
/// `FlowEntry::pp_acked`: the backend acknowledged stream bytes past the correction
/// position (TOA is no longer added).
pub const PP_ACKED_ANY: u8 = 1;
/// The backend acknowledged the whole PROXY header (it is never sent again).
pub const PP_ACKED_HEADER: u8 = 2;

pub const TOA_KIND_DEFAULT: u8 = 254;
pub const TOA_LEN: u16 = 8;

/// True when `a` comes after `b` in sequence space (modulo 2³²).
#[inline(always)]
pub const fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The sequence adjustment of `nf_conntrack_seqadj`, for a stream into which `len` bytes
/// were inserted at `pos` (the client's first sequence number): the offset is 0 before the
/// correction position and `len` after it. A segment starting exactly at `pos` is
/// shifted once the header is ahead of it (`inserted`). The comparison holds within 2³¹
/// of the position: once the backend has acknowledged the header, the programs apply the
/// offset without it (every later segment is past the header).
#[inline(always)]
pub const fn adjust_seq(seq: u32, pos: u32, len: u16, inserted: bool) -> u32 {
    if seq_after(seq, pos) || seq == pos && inserted {
        seq.wrapping_add(len as u32)
    } else {
        seq
    }
}

/// The backend's acknowledgement number (or SACK edge) `ack` in the client's sequence
/// space: past the header it is `len` lower; inside the header it is the correction
/// position (the client's first byte is not acknowledged yet).
#[inline(always)]
pub const fn unadjust_ack(ack: u32, pos: u32, len: u16) -> u32 {
    let end = pos.wrapping_add(len as u32);
    if !seq_after(end, ack) {
        ack.wrapping_sub(len as u32)
    } else if seq_after(ack, pos) {
        pos
    } else {
        ack
    }
}

/// PROXY protocol v2 TLV type of vpcep's own TLVs, in the custom range 0xE0–0xEF (AWS uses
/// 0xEA, Azure 0xEE, GCP 0xE0, Alibaba 0xE1). The first value byte is a subtype.
pub const PP2_TYPE_VPCEP: u8 = 0xEC;
/// Subtype: the endpoint id (ASCII).
pub const PP2_VPCEP_ENDPOINT_ID: u8 = 0x01;
/// Subtype: the endpoint's marker id (u32, network order).
pub const PP2_VPCEP_MARKER_ID: u8 = 0x02;
/// Subtype: the consumer VPC's id (ASCII).
pub const PP2_VPCEP_VPC_ID: u8 = 0x03;
/// Subtype: the consumer VPC's VNI (u32, network order); `proxy_vni` only.
pub const PP2_VPCEP_VNI: u8 = 0x04;
pub const PP2_TYPE_NOOP: u8 = 0x04;
pub const PP2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family, length, IPv4 addresses and ports.
pub const PP2_FIXED_LEN: usize = 28;
/// Room for TLVs in a [`ProxyTemplate`].
pub const PP2_TLV_MAX: usize = 156;

/// Value of `PROXY_TEMPLATES` (index: endpoint id): the TLVs of the endpoint's PROXY
/// header, built by the agent; the program writes the fixed part (addresses and ports of
/// the flow) in front of them. Both lengths are multiples of 4, for `bpf_csum_diff`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyTemplate {
    /// TLV bytes for `proxy_open`/`open` (everything but the VNI TLV, which is last).
    pub tlv_len: u16,
    /// TLV bytes for `proxy_vni` (with the VNI TLV).
    pub tlv_len_vni: u16,
    pub tlv: [u8; PP2_TLV_MAX],
}
const _: () = assert!(size_of::<ProxyTemplate>() == 160);

impl Default for ProxyTemplate {
    fn default() -> Self {
        Self {
            tlv_len: 0,
            tlv_len_vni: 0,
            tlv: [0; PP2_TLV_MAX],
        }
    }
}

impl ProxyTemplate {
    /// The TLVs of an endpoint: endpoint id, marker id, consumer VPC id, NOOP padding to a
    /// multiple of 4, then the VNI. `None` if the ids do not fit.
    pub fn new(endpoint_id: &str, marker_id: u32, vpc_id: &str, vni: u32) -> Option<Self> {
        let mut t = Self::default();
        let mut n = 0usize;
        n = t.put(
            n,
            PP2_TYPE_VPCEP,
            Some(PP2_VPCEP_ENDPOINT_ID),
            endpoint_id.as_bytes(),
        )?;
        n = t.put(
            n,
            PP2_TYPE_VPCEP,
            Some(PP2_VPCEP_MARKER_ID),
            &marker_id.to_be_bytes(),
        )?;
        n = t.put(n, PP2_TYPE_VPCEP, Some(PP2_VPCEP_VPC_ID), vpc_id.as_bytes())?;
        // The fixed part is 28 bytes (a multiple of 4); a NOOP TLV is at least 3 bytes.
        let pad = match (PP2_FIXED_LEN + n) % 4 {
            0 => None,
            1 => Some(0),
            2 => Some(3),
            _ => Some(2),
        };
        if let Some(p) = pad {
            n = t.put(n, PP2_TYPE_NOOP, None, &[0u8; 3][..p])?;
        }
        t.tlv_len = n as u16;
        n = t.put(n, PP2_TYPE_VPCEP, Some(PP2_VPCEP_VNI), &vni.to_be_bytes())?;
        t.tlv_len_vni = n as u16;
        Some(t)
    }

    /// Writes one TLV at `n`; returns the end, or `None` when it does not fit.
    fn put(&mut self, n: usize, typ: u8, sub: Option<u8>, data: &[u8]) -> Option<usize> {
        let vlen = data.len() + sub.is_some() as usize;
        if n + 3 + vlen > PP2_TLV_MAX {
            return None;
        }
        self.tlv[n] = typ;
        self.tlv[n + 1..n + 3].copy_from_slice(&(vlen as u16).to_be_bytes());
        let mut at = n + 3;
        if let Some(s) = sub {
            self.tlv[at] = s;
            at += 1;
        }
        self.tlv[at..at + data.len()].copy_from_slice(data);
        Some(at + data.len())
    }

    /// The header length for a flow of mode `tcp_proxy` (0 when the mode sends none).
    pub const fn header_len(&self, tcp_proxy: u8) -> u16 {
        if !proxy_header_mode(tcp_proxy) || self.tlv_len == 0 {
            0
        } else if tcp_proxy & TCP_PROXY_MODE_MASK == TCP_PROXY_PROXY_VNI {
            PP2_FIXED_LEN as u16 + self.tlv_len_vni
        } else {
            PP2_FIXED_LEN as u16 + self.tlv_len
        }
    }
}

/// The fixed part of a PROXY v2 header for a TCP over IPv4 connection from `src:sport` to
/// `dst:dport` (network-order values as loaded) followed by `tlv_len` bytes of TLVs.
#[inline(always)]
pub const fn pp2_fixed(
    tlv_len: u16,
    src_be: u32,
    dst_be: u32,
    sport_be: u16,
    dport_be: u16,
) -> [u8; PP2_FIXED_LEN] {
    let mut h = [0u8; PP2_FIXED_LEN];
    let mut i = 0;
    while i < 12 {
        h[i] = PP2_SIGNATURE[i];
        i += 1;
    }
    // Version 2, PROXY; AF_INET, STREAM.
    h[12] = 0x21;
    h[13] = 0x11;
    let l = (12 + tlv_len).to_be_bytes();
    h[14] = l[0];
    h[15] = l[1];
    let s = src_be.to_ne_bytes();
    let d = dst_be.to_ne_bytes();
    let sp = sport_be.to_ne_bytes();
    let dp = dport_be.to_ne_bytes();
    h[16] = s[0];
    h[17] = s[1];
    h[18] = s[2];
    h[19] = s[3];
    h[20] = d[0];
    h[21] = d[1];
    h[22] = d[2];
    h[23] = d[3];
    h[24] = sp[0];
    h[25] = sp[1];
    h[26] = dp[0];
    h[27] = dp[1];
    h
}

impl FlowEntry {
    /// The conntrack state the bits amount to.
    #[inline(always)]
    pub const fn state(&self) -> u8 {
        ct_state(self.ct)
    }

    /// Killed, or idle past its state's timeout at `now`.
    #[inline(always)]
    pub fn dead(&self, now: u64, t: &Timeouts) -> bool {
        self.last_seen_ns == CT_KILLED
            || now.saturating_sub(self.last_seen_ns) > idle_timeout_s(self.state(), t) * NS_PER_SEC
    }
}

/// The state `ct` bits amount to: closing once reset or closed from both sides, else
/// established once the backend answered, else waiting for the answer; UDP has one state.
#[inline(always)]
pub const fn ct_state(ct: u64) -> u8 {
    if ct & CT_F_UDP != 0 {
        CT_UDP
    } else if ct & CT_F_RST != 0
        || ct & (CT_F_FIN_CONSUMER | CT_F_FIN_BACKEND) == CT_F_FIN_CONSUMER | CT_F_FIN_BACKEND
    {
        CT_TCP_CLOSING
    } else if ct & CT_F_ESTABLISHED != 0 {
        CT_TCP_ESTABLISHED
    } else {
        CT_TCP_SYN_SENT
    }
}

pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Idle timeout of a state, in seconds.
#[inline(always)]
pub fn idle_timeout_s(state: u8, t: &Timeouts) -> u64 {
    // Separate volatile loads: otherwise the optimiser turns the match into a stack read
    // indexed by the state, which the verifier rejects (variable-offset stack access).
    // SAFETY: plain reads of valid fields.
    let (syn, est, closing, udp) = unsafe {
        (
            core::ptr::read_volatile(&t.tcp_syn),
            core::ptr::read_volatile(&t.tcp_established),
            core::ptr::read_volatile(&t.tcp_closing),
            core::ptr::read_volatile(&t.udp),
        )
    };
    (match state {
        CT_TCP_SYN_SENT => syn,
        CT_TCP_ESTABLISHED => est,
        CT_TCP_CLOSING => closing,
        _ => udp,
    }) as u64
}

/// Value of `CT_REV`: a SNAT port claim, `(SNAT ip, backend, SNAT port, backend port,
/// proto)`, and the flow holding it. `owner` is the claim: it is taken by insert-if-absent
/// or, from a dead holder, by compare-and-swap, so one port has one holder at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevEntry {
    pub owner: u64,
    pub fwd: FlowKey,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<RevEntry>() == 32);

/// Keys the agent hands to the GC program per run.
pub const GC_BATCH: usize = 32;

/// GC request modes.
/// Remove the forward entries named if they are dead (idle past their timeout).
pub const GC_EXPIRED: u32 = 0;
/// Remove the forward entries named whatever their state (their endpoint is gone).
pub const GC_FLUSH: u32 = 1;
/// Release the port claims named if the flow they name no longer holds them.
pub const GC_ORPHAN_CLAIMS: u32 = 2;

/// The single entry of `GC_REQUEST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcRequest {
    /// `GC_*`.
    pub mode: u32,
    /// Keys used, at most [`GC_BATCH`].
    pub count: u32,
    /// Out: entries (flows or claims) this run removed.
    pub removed: u32,
    /// Out: entries another CPU was changing at that instant (try again later).
    pub busy: u32,
    pub flows: [FlowKey; GC_BATCH],
    pub claims: [RevKey; GC_BATCH],
}
const _: () = assert!(size_of::<GcRequest>() == 16 + GC_BATCH * 36);

impl Default for GcRequest {
    fn default() -> Self {
        Self {
            mode: GC_EXPIRED,
            count: 0,
            removed: 0,
            busy: 0,
            flows: [FlowKey::default(); GC_BATCH],
            claims: [RevKey::default(); GC_BATCH],
        }
    }
}

/// The single entry of `TUNNEL`: this node's overlay device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Host ifindex of the VXLAN device in collect-metadata (external) mode; 0 = no
    /// overlay: remote backends are dropped.
    pub ifindex: u32,
    /// Largest inner IPv4 packet the overlay carries unfragmented (underlay MTU − 50);
    /// TCP SYNs through it get their MSS clamped to this − 40.
    pub inner_mtu: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<TunnelConfig>() == 8);

/// Value of `LOCAL_ADDRS` (key: [`EndpointKey`] of the VPC and the VM's address): where the
/// tunnel program delivers a decapsulated packet for a local VM.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalAddr {
    /// Host-side ifindex of the VM's NIC.
    pub ifindex: u32,
    pub mac: [u8; ETH_ALEN],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<LocalAddr>() == 12);

/// Inner packets from the overlay must not need fragmenting: 14 (inner Ethernet) + 8 (VXLAN)
/// + 8 (UDP) + 20 (outer IPv4).
pub const VXLAN_OVERHEAD: u16 = 50;

/// Per-endpoint counters (per CPU), indexed by endpoint id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}
const _: () = assert!(size_of::<EndpointCounters>() == 32);

crate::pod!(
    LocalNic,
    EndpointKey,
    Endpoint,
    PortKey,
    PortTarget,
    Service,
    WhitelistKey,
    NodeConfig,
    Timeouts,
    FlowKey,
    RevKey,
    FlowEntry,
    RevEntry,
    EndpointCounters,
    EndpointFlows,
    GcRequest,
    TunnelConfig,
    LocalAddr,
    ProxyTemplate,
);

/// True when `ip_be` is inside 198.19.128.0/17.
#[inline(always)]
pub const fn in_snat_range(ip_be: u32) -> bool {
    ip_be & SNAT_MASK_BE == SNAT_NET_BE
}

/// First SNAT port to try for a flow: a hash of the tuple, so the choice is deterministic
/// (the reference model reproduces it) yet spread over the range. Collisions probe onward.
#[inline(always)]
pub const fn snat_port_start(key: &FlowKey, backend_be: u32, server_port_be: u16) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h, key.vpc_id);
    h = mix(h, key.src_be);
    h = mix(h, key.dst_be);
    h = mix(h, ((key.sport_be as u32) << 16) | key.dport_be as u32);
    h = mix(h, backend_be);
    h = mix(h, ((server_port_be as u32) << 8) | key.proto as u32);
    h
}

#[inline(always)]
const fn mix(h: u32, v: u32) -> u32 {
    let x = (h ^ v).wrapping_mul(0x85eb_ca6b);
    x ^ (x >> 13)
}

/// The `epoch` of a service's endpoints: a hash of its `SERVICES` entry and its port
/// mappings (`(key, target)` pairs, in any order). A 32-bit hash may collide; a collision
/// would keep established flows on their old backend until they end or idle out.
pub fn service_epoch<'a>(
    svc: &Service,
    ports: impl IntoIterator<Item = (&'a PortKey, &'a PortTarget)>,
) -> u32 {
    let mut h = Fnv::new();
    for w in [
        svc.backend_ip_be,
        svc.backend_vpc_id,
        svc.ifindex,
        svc.remote_node_be,
    ] {
        h.bytes(&w.to_ne_bytes());
    }
    h.bytes(&svc.backend_mac);
    h.bytes(&[svc.location, svc.tcp_proxy]);
    // Order-independent over the mappings: the sum of per-mapping hashes.
    let mut sum: u32 = 0;
    for (k, t) in ports {
        let mut m = Fnv::new();
        m.bytes(&k.service_id.to_ne_bytes());
        m.bytes(&k.client_port_be.to_ne_bytes());
        m.bytes(&[k.proto]);
        m.bytes(&t.server_port_be.to_ne_bytes());
        sum = sum.wrapping_add(m.0);
    }
    h.bytes(&sum.to_ne_bytes());
    h.0
}

/// 32-bit FNV-1a, for the epochs (the agent's endpoint epoch uses it too).
pub struct Fnv(pub u32);

impl Fnv {
    #[allow(clippy::new_without_default)] // the offset basis, not a zero value
    pub fn new() -> Self {
        Self(0x811c_9dc5)
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u32;
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

/// Probes tried before a new flow is dropped as `DropSnatExhausted`.
pub const SNAT_PROBES: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqadj_around_the_correction_position_and_the_wrap() {
        for pos in [1001u32, u32::MAX - 5, u32::MAX, 0] {
            let l = 116u16;
            // Before the position: unchanged; at it: shifted once the header is ahead.
            assert_eq!(
                adjust_seq(pos.wrapping_sub(1), pos, l, true),
                pos.wrapping_sub(1)
            );
            assert_eq!(adjust_seq(pos, pos, l, false), pos);
            assert_eq!(adjust_seq(pos, pos, l, true), pos.wrapping_add(116));
            assert_eq!(
                adjust_seq(pos.wrapping_add(9), pos, l, false),
                pos.wrapping_add(125)
            );
            // Acknowledgements: inside the header → the position; past it → len lower.
            assert_eq!(unadjust_ack(pos, pos, l), pos);
            assert_eq!(unadjust_ack(pos.wrapping_add(50), pos, l), pos);
            assert_eq!(unadjust_ack(pos.wrapping_add(116), pos, l), pos);
            assert_eq!(
                unadjust_ack(pos.wrapping_add(200), pos, l),
                pos.wrapping_add(84)
            );
            assert_eq!(
                unadjust_ack(pos.wrapping_sub(3), pos, l),
                pos.wrapping_sub(3)
            );
        }
    }

    #[test]
    fn proxy_templates_and_mode_names() {
        let t = ProxyTemplate::new("5f0c1d4e-0a1b-4c2d-8e3f-000000000007", 7, "vpc-a", 11).unwrap();
        for m in [TCP_PROXY_PROXY_OPEN, TCP_PROXY_OPEN, TCP_PROXY_PROXY_VNI] {
            assert_eq!(t.header_len(m) % 4, 0, "mode {m}");
        }
        assert_eq!(
            t.header_len(TCP_PROXY_PROXY_VNI),
            t.header_len(TCP_PROXY_OPEN) + 8
        );
        assert_eq!(t.header_len(TCP_PROXY_TOA_OPEN), 0);
        assert_eq!(t.header_len(TCP_PROXY_CLOSE), 0);
        // Every padding length: ids of 1..=40 bytes.
        for n in 1..=40 {
            let id = "e".repeat(n);
            let t = ProxyTemplate::new(&id, 1, "v", 2).unwrap();
            assert_eq!((PP2_FIXED_LEN + t.tlv_len as usize) % 4, 0, "id of {n}");
        }
        assert!(ProxyTemplate::new(&"x".repeat(150), 1, "v", 2).is_none());
        assert_eq!(tcp_proxy_byte("proxy_vni", None), Some(TCP_PROXY_PROXY_VNI));
        assert_eq!(
            tcp_proxy_byte("open", Some("on_first_data")),
            Some(TCP_PROXY_OPEN | TCP_PROXY_F_FIRST_DATA)
        );
        assert_eq!(
            tcp_proxy_byte("close", Some("on_first_data")),
            Some(TCP_PROXY_CLOSE)
        );
        assert_eq!(tcp_proxy_byte("sometimes", None), None);
        assert_eq!(tcp_proxy_byte("open", Some("later")), None);
    }

    #[test]
    fn key_constructors_match_the_field_layout() {
        let k = FlowKey::new(7, 0x0a00_0002, 0x0a01_0001, 0x1234, 0xabcd, IPPROTO_UDP);
        let want = FlowKey {
            vpc_id: 7,
            src_be: 0x0a00_0002,
            dst_be: 0x0a01_0001,
            sport_be: 0x1234,
            dport_be: 0xabcd,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(k, want);
        let r = RevKey::new(1, 2, 0x0102, 0x0304, IPPROTO_TCP);
        let want = RevKey {
            snat_be: 1,
            backend_be: 2,
            snat_port_be: 0x0102,
            backend_port_be: 0x0304,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        assert_eq!(r, want);
    }
}
