//! Read-only views of the maps a running agent pinned (`vpcep dataplane stats|flows|
//! endpoints`): nothing is loaded into the kernel and nothing is written.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use serde::Serialize;
use vpcep_common::{
    endpoint::{
        CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT, CT_UDP, EP_ACCEPTED, EP_PERMITTED,
        EP_SRC_WHITELIST, Endpoint, EndpointCounters, EndpointKey, FlowEntry, FlowKey, IPPROTO_TCP,
        IPPROTO_UDP,
    },
    maps,
    stats::{Counter, Hook, Reason, stats_index},
};

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("opening the pinned map {path} (is the agent running with this pin directory?)")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("reading map {name}")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, PinnedError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| PinnedError::Open {
        path: path.display().to_string(),
        source,
    })
}

fn ip(be: u32) -> String {
    Ipv4Addr::from(be.to_ne_bytes()).to_string()
}

/// One verdict counter with traffic.
#[derive(Debug, Serialize)]
pub struct ReasonRow {
    pub hook: &'static str,
    pub reason: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Verdict counters summed over CPUs (zero rows left out).
pub fn stats(dir: &Path) -> Result<Vec<ReasonRow>, PinnedError> {
    let name = maps::STATS;
    let array: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, name)?))
            .map_err(|source| PinnedError::Read { name, source })?;
    let mut rows = Vec::new();
    for hook in Hook::ALL {
        for reason in Reason::ALL {
            let values = array
                .get(&stats_index(hook, *reason), 0)
                .map_err(|source| PinnedError::Read { name, source })?;
            let (packets, bytes) = values
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            if packets > 0 {
                rows.push(ReasonRow {
                    hook: hook.name(),
                    reason: reason.name(),
                    drop: reason.is_drop(),
                    packets,
                    bytes,
                });
            }
        }
    }
    Ok(rows)
}

/// One endpoint as programmed on this node, with its counters.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub id: u32,
    pub vpc: u32,
    pub ip: String,
    pub service: u32,
    pub marker_id: u32,
    pub accepted: bool,
    pub permitted: bool,
    pub source_whitelist: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

pub fn endpoints(dir: &Path) -> Result<Vec<EndpointRow>, PinnedError> {
    let name = maps::ENDPOINTS;
    let eps: HashMap<MapData, EndpointKey, Endpoint> =
        HashMap::try_from(Map::HashMap(open(dir, name)?))
            .map_err(|source| PinnedError::Read { name, source })?;
    let sname = maps::EP_STATS;
    let counters: PerCpuArray<MapData, EndpointCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, sname)?)).map_err(|source| {
            PinnedError::Read {
                name: sname,
                source,
            }
        })?;
    let mut rows = Vec::new();
    for entry in eps.iter() {
        let (k, e) = entry.map_err(|source| PinnedError::Read { name, source })?;
        let c = counters
            .get(&e.endpoint_id, 0)
            .map(|v| {
                v.iter()
                    .fold(EndpointCounters::default(), |a, c| EndpointCounters {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                        new_flows: a.new_flows + c.new_flows,
                        drops: a.drops + c.drops,
                    })
            })
            .unwrap_or_default();
        rows.push(EndpointRow {
            id: e.endpoint_id,
            vpc: k.vpc_id,
            ip: ip(k.ip_be),
            service: e.service_id,
            marker_id: e.marker_id,
            accepted: e.flags & EP_ACCEPTED != 0,
            permitted: e.flags & EP_PERMITTED != 0,
            source_whitelist: e.flags & EP_SRC_WHITELIST != 0,
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            drops: c.drops,
        });
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// One tracked flow, as the consumer sees it and as the backend sees it.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub vpc: u32,
    pub proto: &'static str,
    pub consumer: String,
    pub endpoint: String,
    pub snat: String,
    pub backend: String,
    pub state: &'static str,
    pub endpoint_id: u32,
    pub idle_secs: u64,
}

fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Forward conntrack entries (at most `limit`).
pub fn flows(dir: &Path, limit: usize) -> Result<Vec<FlowRow>, PinnedError> {
    let name = maps::CT_FWD;
    let ct: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(Map::LruHashMap(open(dir, name)?))
            .map_err(|source| PinnedError::Read { name, source })?;
    let now = monotonic().as_nanos() as u64;
    let mut rows = Vec::new();
    for entry in ct.iter().take(limit) {
        let (k, e) = entry.map_err(|source| PinnedError::Read { name, source })?;
        let port = |p: u16| u16::from_be(p);
        rows.push(FlowRow {
            vpc: k.vpc_id,
            proto: match k.proto {
                IPPROTO_TCP => "tcp",
                IPPROTO_UDP => "udp",
                _ => "other",
            },
            consumer: format!("{}:{}", ip(k.src_be), port(k.sport_be)),
            endpoint: format!("{}:{}", ip(k.dst_be), port(k.dport_be)),
            snat: format!("{}:{}", ip(e.rev.snat_be), port(e.rev.snat_port_be)),
            backend: format!("{}:{}", ip(e.rev.backend_be), port(e.rev.backend_port_be)),
            state: match e.state() {
                CT_TCP_SYN_SENT => "syn-sent",
                CT_TCP_ESTABLISHED => "established",
                CT_TCP_CLOSING => "closing",
                CT_UDP => "udp",
                _ => "unknown",
            },
            endpoint_id: e.endpoint_id,
            idle_secs: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        });
    }
    Ok(rows)
}
