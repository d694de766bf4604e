//! Verdict reasons and their counters.
//!
//! Every packet a program sees is counted exactly once, under the hook that saw it and the
//! reason for its verdict. Reasons are a closed set of codes; new ones are appended, never
//! renumbered, so counters read from a pinned map stay meaningful across upgrades.

/// Packet and byte count for one (hook, reason) slot; the map is per-CPU, so userspace sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
crate::pod!(Counter);

/// Where a program runs. The stats map is indexed by `hook * REASON_SLOTS + reason`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp = 0,
    TcIngress = 1,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::TcIngress];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc-ingress",
        }
    }
}

/// Number of reason slots reserved per hook (room to append reasons without a new map).
pub const REASON_SLOTS: u32 = 64;
/// Entries in the stats map.
pub const STATS_ENTRIES: u32 = REASON_SLOTS * Hook::ALL.len() as u32;

/// Stats map index for a hook and reason.
#[inline(always)]
pub const fn stats_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * REASON_SLOTS + reason as u32
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $code:literal => $text:literal, $drop:literal;)+) => {
        /// Why a packet got its verdict.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name = $code,)+
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// Stable name printed by userspace and used as a metrics label.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$name => $text,)+ }
            }

            /// True when the verdict for this reason drops the packet.
            pub const fn is_drop(self) -> bool {
                match self { $(Reason::$name => $drop,)+ }
            }

            pub const fn from_code(code: u32) -> Option<Reason> {
                match code { $($code => Some(Reason::$name),)+ _ => None }
            }
        }
    };
}

reasons! {
    /// Not IPv4 (IPv6, VLAN-tagged, LLDP, …): passed to the kernel untouched.
    PassNonIpv4 = 0 => "pass_non_ipv4", false;
    /// IPv4 TCP that is not endpoint traffic.
    PassTcp = 1 => "pass_tcp", false;
    /// IPv4 UDP that is not endpoint traffic.
    PassUdp = 2 => "pass_udp", false;
    /// IPv4 with another protocol (ICMP, …) that is not endpoint traffic.
    PassOtherProto = 3 => "pass_other_proto", false;
    /// IPv4 fragment (offset or more-fragments set) that is not endpoint traffic.
    PassFragment = 4 => "pass_fragment", false;
    /// ARP that is not for an endpoint or gateway address.
    PassArp = 5 => "pass_arp", false;
    /// Tunnel: a translated packet from another node delivered to a local backend VM.
    TunnelDeliver = 6 => "tunnel_deliver", false;
    /// Backend → a SNAT address of another node: tunnelled to that node untranslated.
    RevToOwner = 15 => "rev_to_owner", false;
    /// Frame shorter than an Ethernet header.
    DropTruncEth = 16 => "drop_trunc_eth", true;
    /// EtherType IPv4 but shorter than a minimal IPv4 header, or than its IHL says.
    DropTruncIpv4 = 17 => "drop_trunc_ipv4", true;
    /// IPv4 version not 4, IHL below 5, or total length shorter than the header.
    DropBadIpv4 = 18 => "drop_bad_ipv4", true;
    /// TCP or UDP header cut short (first fragment only).
    DropTruncL4 = 19 => "drop_trunc_l4", true;
    /// TCP data offset below 5 words.
    DropBadTcp = 20 => "drop_bad_tcp", true;
    /// ARP request for an endpoint or gateway address, answered with the node's MAC.
    ArpReply = 7 => "arp_reply", false;
    /// ICMP echo to an endpoint address, answered.
    IcmpEchoReply = 8 => "icmp_echo_reply", false;
    /// Consumer → endpoint, first packet of a flow: translated and redirected.
    FwdNewFlow = 9 => "fwd_new_flow", false;
    /// Consumer → endpoint on an existing flow: translated and redirected.
    FwdEstablished = 10 => "fwd_established", false;
    /// Backend → SNAT address on an existing flow: translated back and redirected.
    RevReply = 11 => "rev_reply", false;
    /// ICMP error from the backend side about a translated flow: translated back.
    RevIcmpError = 12 => "rev_icmp_error", false;
    /// XDP: endpoint traffic that passed the early checks, left for the TC program.
    PassToTc = 13 => "pass_to_tc", false;
    /// ICMP error from a consumer about a translated flow: translated toward the backend.
    FwdIcmpError = 14 => "fwd_icmp_error", false;
    /// No port mapping for (service, protocol, client port).
    DropNoPortMapping = 21 => "drop_no_port_mapping", true;
    /// The endpoint is not accepted (pending, rejected).
    DropNotAccepted = 22 => "drop_not_accepted", true;
    /// The endpoint owner is no longer in the service whitelist.
    DropNotPermitted = 23 => "drop_not_permitted", true;
    /// Source IPv4 is not the VM's own address.
    DropSpoofedIp = 24 => "drop_spoofed_ip", true;
    /// Source MAC is not the VM's own.
    DropSpoofedMac = 25 => "drop_spoofed_mac", true;
    /// New flow from a source outside the endpoint's source whitelist.
    DropSourceWhitelist = 26 => "drop_source_whitelist", true;
    /// TCP segment other than a SYN with no flow (SYN-only flow creation).
    DropTcpNoFlow = 27 => "drop_tcp_no_flow", true;
    /// No free SNAT port after probing.
    DropSnatExhausted = 28 => "drop_snat_exhausted", true;
    /// To 198.19.128.0/17 with no live flow (access is one-way: consumer → service).
    DropNoReverseFlow = 29 => "drop_no_reverse_flow", true;
    /// IPv4 fragment to an endpoint or SNAT address (not translated).
    DropFragment = 30 => "drop_fragment", true;
    /// Protocol other than TCP, UDP or ICMP echo/errors to an endpoint.
    DropEndpointProto = 31 => "drop_endpoint_proto", true;
    /// TTL would reach zero.
    DropTtlExceeded = 32 => "drop_ttl_exceeded", true;
    /// The backend is not reachable from here: on another node with no overlay configured
    /// on this one, or its NIC or node is gone (service suspended).
    DropRemoteBackend = 33 => "drop_remote_backend", true;
    /// This node has no SNAT address configured.
    DropNodeNotConfigured = 34 => "drop_node_not_configured", true;
    /// A conntrack insert failed.
    DropCtInsert = 35 => "drop_ct_insert", true;
    /// A reply for a flow arrived on a NIC other than the flow's backend NIC.
    DropReplyWrongNic = 36 => "drop_reply_wrong_nic", true;
    /// The endpoint's service has no entry (being configured or removed).
    DropNoService = 37 => "drop_no_service", true;
    /// A checksum or packet helper failed.
    DropHelper = 38 => "drop_helper", true;
    /// ICMP error from a consumer to an endpoint about no live flow of that endpoint.
    DropIcmpNoFlow = 39 => "drop_icmp_no_flow", true;
    /// Tunnel: a packet without tunnel metadata, or not IPv4 inside.
    DropTunnelBad = 40 => "drop_tunnel_bad", true;
    /// Tunnel: no local VM with this (VNI, destination), or the source is not a SNAT address.
    DropTunnelUnknownDst = 41 => "drop_tunnel_unknown_dst", true;
    /// Tunnel: to a SNAT address that is not this node's.
    DropTunnelUnknownSnat = 42 => "drop_tunnel_unknown_snat", true;
    /// Tunnel: a reply from a node or VNI other than the flow's backend.
    DropTunnelWrongPeer = 43 => "drop_tunnel_wrong_peer", true;
    /// Backend → a SNAT address no known node owns (or the node has no overlay).
    DropSnatNoOwner = 44 => "drop_snat_no_owner", true;
    /// To the address of an endpoint deleted a moment ago (fails closed).
    DropEndpointDeleted = 45 => "drop_endpoint_deleted", true;
    /// New flow over the endpoint's limit of live flows.
    DropEndpointFlowLimit = 46 => "drop_endpoint_flow_limit", true;
    /// New flow over the endpoint's limit of new flows per second.
    DropEndpointRateLimit = 47 => "drop_endpoint_rate_limit", true;
    /// The conntrack table is full: the new flow is refused, no live flow is evicted.
    DropCtFull = 48 => "drop_ct_full", true;
    /// The flow's entry is being removed by another CPU or the agent at this instant.
    DropCtBusy = 49 => "drop_ct_busy", true;
    /// A flow of an earlier instance of its endpoint (deleted and recreated, rejected and
    /// re-accepted), or one its endpoint's source whitelist or port mappings no longer allow.
    DropFlowRevoked = 50 => "drop_flow_revoked", true;
    /// Tunnel: a packet from a SNAT address that did not come from the node owning it.
    DropTunnelNotOwner = 51 => "drop_tunnel_not_owner", true;
    /// tcp_proxy: the PROXY header or TOA could not be inserted (a first segment too large
    /// to move or a GSO train at the correction position, a missing template, a helper
    /// failure). The client retransmits, then one segment at a time.
    DropProxyInsert = 52 => "drop_proxy_insert", true;
}

/// tcp_proxy events, counted per mode (`PROXY_STATS`, per CPU) besides the verdicts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The PROXY header went out for the first time.
    HeaderSent = 0,
    /// The header went out again (unacknowledged, at the correction position).
    HeaderResent = 1,
    /// SACK edges of a backend segment were mapped back (sequence and acknowledgement
    /// numbers are mapped on every segment and not counted: the packet counters are theirs).
    SackAdjusted = 2,
    /// The TOA option was added.
    ToaInserted = 3,
    /// TOA gave way: the option space was full, or the segment was a GSO train.
    ToaNoRoom = 4,
    /// A segment that must carry the header was too large to rewrite (dropped, counted
    /// under `drop_proxy_insert`).
    DropTooBig = 5,
    /// A header mode without the endpoint's template: the flow sends no header.
    NoTemplate = 6,
}

impl ProxyEvent {
    pub const ALL: [ProxyEvent; 7] = [
        ProxyEvent::HeaderSent,
        ProxyEvent::HeaderResent,
        ProxyEvent::SackAdjusted,
        ProxyEvent::ToaInserted,
        ProxyEvent::ToaNoRoom,
        ProxyEvent::DropTooBig,
        ProxyEvent::NoTemplate,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ProxyEvent::HeaderSent => "header_sent",
            ProxyEvent::HeaderResent => "header_resent",
            ProxyEvent::SackAdjusted => "sack_adjusted",
            ProxyEvent::ToaInserted => "toa_inserted",
            ProxyEvent::ToaNoRoom => "toa_no_room",
            ProxyEvent::DropTooBig => "drop_too_big",
            ProxyEvent::NoTemplate => "no_template",
        }
    }
}

/// Event slots per mode, and modes (`TCP_PROXY_*` without the placement bit).
pub const PROXY_EVENT_SLOTS: u32 = 16;
pub const PROXY_MODES: u32 = 8;
pub const PROXY_STATS_ENTRIES: u32 = PROXY_EVENT_SLOTS * PROXY_MODES;

/// `PROXY_STATS` index of an event of a flow of mode `tcp_proxy`.
#[inline(always)]
pub const fn proxy_event_index(tcp_proxy: u8, e: ProxyEvent) -> u32 {
    (tcp_proxy as u32 & (PROXY_MODES - 1)) * PROXY_EVENT_SLOTS + e as u32
}

const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!((Reason::ALL[i] as u32) < REASON_SLOTS);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(Reason::from_code(*r as u32), Some(*r));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
                assert_ne!(*r as u32, *other as u32);
            }
        }
        assert_eq!(Reason::from_code(REASON_SLOTS), None);
    }

    #[test]
    fn stats_index_is_within_map() {
        for h in Hook::ALL {
            for r in Reason::ALL {
                assert!(stats_index(h, *r) < STATS_ENTRIES);
            }
        }
    }

    #[test]
    fn drop_reasons_are_named_drop() {
        for r in Reason::ALL {
            assert_eq!(r.is_drop(), r.name().starts_with("drop_"), "{}", r.name());
        }
    }
}
