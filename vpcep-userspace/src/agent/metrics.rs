//! The agent's Prometheus metrics: the owner thread records a [`Figures`] snapshot every
//! second (it alone can read the maps) and the metrics server encodes it, with the feed's
//! revisions, on each scrape (OpenMetrics text through `prometheus-client`).
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use vpcep_common::endpoint::EndpointCounters;

use super::dns::DnsCounters;

/// Figures shared between the feed side, the owner thread and the metrics server.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub applied: AtomicI64,
    pub latest: AtomicI64,
    pub figures: Mutex<Figures>,
    /// The resolver's counters by VPC id (created when a NIC of the VPC is served).
    pub dns: Mutex<BTreeMap<String, Arc<DnsCounters>>>,
    /// Names the resolver knows (all VPCs) and NICs it serves.
    pub dns_names: AtomicUsize,
    pub dns_nics: AtomicUsize,
}

impl Shared {
    /// The resolver counters of VPC `vpc_id`.
    pub fn dns_counters(&self, vpc_id: &str) -> Arc<DnsCounters> {
        let Ok(mut m) = self.dns.lock() else {
            return Arc::default();
        };
        m.entry(vpc_id.to_owned()).or_default().clone()
    }

    fn encode_dns(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type DnsPick = fn(&DnsCounters) -> &AtomicU64;
        const PER_VPC: [(&str, &str, DnsPick); 8] = [
            (
                "vpcep_dns_queries",
                "DNS queries from the VPC's VMs.",
                |c| &c.queries,
            ),
            (
                "vpcep_dns_answers",
                "Queries answered from the VPC's endpoint names.",
                |c| &c.answers,
            ),
            (
                "vpcep_dns_nxdomain",
                "NXDOMAIN answers (names of the zone or of other VPCs).",
                |c| &c.nxdomain,
            ),
            (
                "vpcep_dns_forwarded",
                "Queries forwarded to the upstream resolvers.",
                |c| &c.forwarded,
            ),
            (
                "vpcep_dns_upstream_failures",
                "Forwarded queries no upstream answered in time (SERVFAIL).",
                |c| &c.upstream_failures,
            ),
            (
                "vpcep_dns_refused",
                "Queries for other names refused: no upstream configured.",
                |c| &c.refused,
            ),
            (
                "vpcep_dns_malformed",
                "Queries dropped or answered FORMERR/NOTIMP.",
                |c| &c.malformed,
            ),
            (
                "vpcep_dns_rate_limited",
                "Queries dropped unanswered: over the NIC's queries_per_second.",
                |c| &c.rate_limited,
            ),
        ];
        let vpcs: Vec<(String, Arc<DnsCounters>)> = self
            .dns
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (name, help, pick) in PER_VPC {
            let s = vpcs
                .iter()
                .map(|(vpc, c)| ([("vpc", vpc.as_str())], pick(c).load(Ordering::Relaxed)));
            counters(e, (name, help), s)?;
        }
        let desc = (
            "vpcep_dns_names",
            "Endpoint names the resolver knows, all VPCs.",
        );
        gauges(e, desc, one(self.dns_names.load(Ordering::Relaxed)))?;
        let desc = ("vpcep_dns_nics", "VM NICs the resolver listens on.");
        gauges(e, desc, one(self.dns_nics.load(Ordering::Relaxed)))
    }
}

/// What the owner read from the maps and its own state at its last refresh.
#[derive(Debug, Default, Clone)]
pub(super) struct Figures {
    /// The overlay device and whether the tunnel program is attached to it.
    pub overlay: Option<(String, bool)>,
    /// (iface, inventory port id, attached) per configured NIC.
    pub nics: Vec<(String, String, bool)>,
    /// (endpoint UUID, counters), by UUID.
    pub endpoints: Vec<(String, EndpointCounters)>,
    /// ((hook, reason), packets) for the verdicts counted so far.
    pub packets: Vec<((&'static str, &'static str), u64)>,
    /// ((tcp_proxy mode, event), count) for the tcp_proxy events counted so far.
    pub proxy: Vec<((&'static str, &'static str), u64)>,
    pub ct_entries: usize,
    pub ct_collected: u64,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
}

/// Encodes one metric family: `samples` are (labels, value) pairs.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family of integer values.
fn gauges<L: EncodeLabelSet, V: TryInto<i64>>(
    enc: &mut DescriptorEncoder,
    desc: (&str, &str),
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let s = samples
        .into_iter()
        .map(|(l, v)| (l, ConstGauge::new(v.try_into().unwrap_or(i64::MAX))));
    family(enc, desc, MetricType::Gauge, s)
}

/// A counter family; the encoder names its samples `<name>_total`.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    desc: (&str, &str),
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let s = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(enc, desc, MetricType::Counter, s)
}

/// A sample without labels.
fn one<V>(v: V) -> [([(&'static str, &'static str); 0], V); 1] {
    [([], v)]
}

type Pick = fn(&EndpointCounters) -> u64;

/// The per-endpoint counters: (name, help, which field).
const PER_ENDPOINT: [(&str, &str, Pick); 4] = [
    (
        "vpcep_endpoint_packets",
        "Packets through the endpoint.",
        |c| c.packets,
    ),
    ("vpcep_endpoint_bytes", "Bytes through the endpoint.", |c| {
        c.bytes
    }),
    (
        "vpcep_endpoint_new_flows",
        "Flows opened through the endpoint.",
        |c| c.new_flows,
    ),
    (
        "vpcep_endpoint_drops",
        "Packets to the endpoint dropped.",
        |c| c.drops,
    ),
];

impl Figures {
    /// Whether the programs are attached to the overlay device and the NICs.
    fn encode_attachments(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((device, up)) = &self.overlay {
            let desc = (
                "vpcep_overlay_attached",
                "1 when the tunnel program is attached to the overlay device.",
            );
            gauges(e, desc, [([("device", device.as_str())], u8::from(*up))])?;
        }
        let nics = self.nics.iter().map(|(iface, port, up)| {
            let labels = [("iface", iface.as_str()), ("port_id", port.as_str())];
            (labels, u8::from(*up))
        });
        let desc = (
            "vpcep_nic_attached",
            "1 when the program is attached to the NIC.",
        );
        gauges(e, desc, nics)
    }

    /// The per-endpoint and per-verdict counters and conntrack.
    fn encode_traffic(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, pick) in PER_ENDPOINT {
            let s =
                (self.endpoints.iter()).map(|(uuid, c)| ([("endpoint", uuid.as_str())], pick(c)));
            counters(e, (name, help), s)?;
        }
        let verdicts = (self.packets.iter())
            .map(|((hook, reason), n)| ([("hook", *hook), ("reason", *reason)], *n));
        let desc = (
            "vpcep_packets",
            "Packets by hook and verdict, including drops by reason.",
        );
        counters(e, desc, verdicts)?;
        let proxy = (self.proxy.iter())
            .map(|((mode, event), n)| ([("mode", *mode), ("event", *event)], *n));
        let desc = (
            "vpcep_proxy_events",
            "tcp_proxy insertions and their drops, by mode (the placement aside).",
        );
        counters(e, desc, proxy)?;
        let desc = (
            "vpcep_conntrack_entries",
            "Forward entries after the last collection.",
        );
        gauges(e, desc, one(self.ct_entries))?;
        let desc = ("vpcep_conntrack_collected", "Conntrack entries collected.");
        counters(e, desc, one(self.ct_collected))
    }

    /// Map pressure.
    fn encode_maps(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries = self.maps.iter().map(|(m, n, _)| ([("map", *m)], *n));
        gauges(e, ("vpcep_map_entries", "Entries in the map."), entries)?;
        let capacity = self.maps.iter().map(|(m, _, cap)| ([("map", *m)], *cap));
        gauges(
            e,
            ("vpcep_map_capacity", "Entries the map can hold."),
            capacity,
        )
    }
}

impl Collector for Shared {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let applied = self.applied.load(Ordering::Relaxed);
        let latest = self.latest.load(Ordering::Relaxed);
        let e = &mut enc;
        let desc = (
            "vpcep_agent_applied_revision",
            "Revision written to the maps.",
        );
        gauges(e, desc, one(applied))?;
        let desc = (
            "vpcep_agent_latest_revision",
            "Newest revision seen on the feed.",
        );
        gauges(e, desc, one(latest))?;
        // Revisions seen on the feed but not yet in the maps (0 when in sync).
        let desc = ("vpcep_agent_revision_lag", "Latest less applied revision.");
        gauges(e, desc, one((latest - applied).max(0)))?;
        let f = self.figures.lock().map(|f| f.clone()).unwrap_or_default();
        f.encode_attachments(e)?;
        f.encode_traffic(e)?;
        f.encode_maps(e)?;
        self.encode_dns(e)
    }
}

/// Serves `GET /metrics` from `shared` until aborted.
pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(shared));
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                    tracing::warn!(error = %e, "encoding the metrics");
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_values_are_the_documented_ones() {
        let shared = Arc::new(Shared::default());
        shared.applied.store(7, Ordering::Relaxed);
        shared.latest.store(9, Ordering::Relaxed);
        *shared.figures.lock().unwrap() = Figures {
            overlay: Some(("vx0".into(), true)),
            nics: vec![("tapc".into(), "p-c".into(), true)],
            endpoints: vec![(
                "e1".into(),
                EndpointCounters {
                    packets: 5,
                    bytes: 300,
                    new_flows: 1,
                    drops: 2,
                },
            )],
            packets: vec![(("tc-ingress", "pass"), 4)],
            proxy: vec![(("proxy_open", "header_sent"), 6)],
            ct_entries: 1,
            ct_collected: 3,
            maps: vec![("endpoints", 1, 65_536)],
        };
        let c = shared.dns_counters("vpc-a");
        c.queries.store(11, Ordering::Relaxed);
        c.nxdomain.store(2, Ordering::Relaxed);
        shared.dns_names.store(3, Ordering::Relaxed);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(shared));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "vpcep_agent_applied_revision 7",
            "vpcep_agent_latest_revision 9",
            "vpcep_agent_revision_lag 2",
            "vpcep_overlay_attached{device=\"vx0\"} 1",
            "vpcep_nic_attached{iface=\"tapc\",port_id=\"p-c\"} 1",
            "vpcep_endpoint_packets_total{endpoint=\"e1\"} 5",
            "vpcep_endpoint_bytes_total{endpoint=\"e1\"} 300",
            "vpcep_endpoint_new_flows_total{endpoint=\"e1\"} 1",
            "vpcep_endpoint_drops_total{endpoint=\"e1\"} 2",
            "vpcep_packets_total{hook=\"tc-ingress\",reason=\"pass\"} 4",
            "vpcep_proxy_events_total{mode=\"proxy_open\",event=\"header_sent\"} 6",
            "vpcep_conntrack_entries 1",
            "vpcep_conntrack_collected_total 3",
            "vpcep_map_entries{map=\"endpoints\"} 1",
            "vpcep_map_capacity{map=\"endpoints\"} 65536",
            "vpcep_dns_queries_total{vpc=\"vpc-a\"} 11",
            "vpcep_dns_nxdomain_total{vpc=\"vpc-a\"} 2",
            "vpcep_dns_forwarded_total{vpc=\"vpc-a\"} 0",
            "vpcep_dns_upstream_failures_total{vpc=\"vpc-a\"} 0",
            "vpcep_dns_names 3",
            "# TYPE vpcep_packets counter",
            "# TYPE vpcep_map_entries gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
