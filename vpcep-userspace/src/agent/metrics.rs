//! The agent's Prometheus metrics: the owner thread records a [`Figures`] snapshot every
//! second (it alone can read the maps) and the metrics server encodes it, with the feed's
//! revisions, on each scrape (OpenMetrics text through `prometheus-client`).
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicI64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use vpcep_common::endpoint::EndpointCounters;

/// Figures shared between the feed side, the owner thread and the metrics server.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub applied: AtomicI64,
    pub latest: AtomicI64,
    pub figures: Mutex<Figures>,
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
    pub ct_entries: usize,
    pub ct_collected: u64,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
}

/// Encodes one metric family: `samples` are (labels, value) pairs.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(v: impl TryInto<i64>) -> ConstGauge<i64> {
    ConstGauge::new(v.try_into().unwrap_or(i64::MAX))
}

/// A metric without labels.
fn single<M: EncodeMetric>(m: M) -> [([(&'static str, &'static str); 0], M); 1] {
    [([], m)]
}

impl Collector for Shared {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let applied = self.applied.load(Ordering::Relaxed);
        let latest = self.latest.load(Ordering::Relaxed);
        let f = self.figures.lock().map(|f| f.clone()).unwrap_or_default();
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        let e = &mut enc;
        family(
            e,
            "vpcep_agent_applied_revision",
            "Revision written to the maps.",
            g,
            single(gauge(applied)),
        )?;
        family(
            e,
            "vpcep_agent_latest_revision",
            "Newest revision seen on the feed.",
            g,
            single(gauge(latest)),
        )?;
        // Revisions seen on the feed but not yet in the maps (0 when in sync).
        let lag = gauge((latest - applied).max(0));
        family(
            e,
            "vpcep_agent_revision_lag",
            "Latest less applied revision.",
            g,
            single(lag),
        )?;
        if let Some((device, up)) = &f.overlay {
            let s = [([("device", device.as_str())], gauge(u8::from(*up)))];
            family(
                e,
                "vpcep_overlay_attached",
                "1 when the tunnel program is attached to the overlay device.",
                g,
                s,
            )?;
        }
        let nics = f.nics.iter().map(|(iface, port, up)| {
            (
                [("iface", iface.as_str()), ("port_id", port.as_str())],
                gauge(u8::from(*up)),
            )
        });
        family(
            e,
            "vpcep_nic_attached",
            "1 when the program is attached to the NIC.",
            g,
            nics,
        )?;
        type Pick = fn(&EndpointCounters) -> u64;
        let per_endpoint: [(&str, &str, Pick); 4] = [
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
        for (name, help, pick) in per_endpoint {
            let s = f
                .endpoints
                .iter()
                .map(|(uuid, cs)| ([("endpoint", uuid.as_str())], ConstCounter::new(pick(cs))));
            family(e, name, help, c, s)?;
        }
        let verdicts = f.packets.iter().map(|((hook, reason), n)| {
            (
                [("hook", *hook), ("reason", *reason)],
                ConstCounter::new(*n),
            )
        });
        family(
            e,
            "vpcep_packets",
            "Packets by hook and verdict, including drops by reason.",
            c,
            verdicts,
        )?;
        let ct = single(gauge(f.ct_entries));
        family(
            e,
            "vpcep_conntrack_entries",
            "Forward entries after the last collection.",
            g,
            ct,
        )?;
        let collected = single(ConstCounter::new(f.ct_collected));
        family(
            e,
            "vpcep_conntrack_collected",
            "Conntrack entries collected.",
            c,
            collected,
        )?;
        let entries = f.maps.iter().map(|(m, n, _)| ([("map", *m)], gauge(*n)));
        family(e, "vpcep_map_entries", "Entries in the map.", g, entries)?;
        let capacity = f
            .maps
            .iter()
            .map(|(m, _, cap)| ([("map", *m)], gauge(*cap)));
        family(
            e,
            "vpcep_map_capacity",
            "Entries the map can hold.",
            g,
            capacity,
        )
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
