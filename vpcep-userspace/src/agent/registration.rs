//! Puts this node into the inventory, and the configured NICs the inventory lacks.
use super::{
    AgentConfig,
    config::NicConfig,
    desired::FeedState,
    feed_client::{FeedClient, FeedError},
};

/// Registers (or updates) the node with its underlay address.
pub(super) async fn register_node(cfg: &AgentConfig, client: &FeedClient) -> Result<(), FeedError> {
    let node = client
        .register_node(&cfg.node_name, &cfg.underlay_ip.to_string())
        .await?;
    tracing::info!(node = %cfg.node_name, snat_ip = %node["snat_ip"], "node registered");
    Ok(())
}

/// Registers configured NICs the inventory lacks (when the config gives their subnet) and
/// warns about the ones it does not place on this node. The new ports arrive through the
/// watch like any other change.
pub(super) async fn register_nics(cfg: &AgentConfig, base: &str, st: &FeedState) {
    for n in &cfg.nics {
        match st.port(&n.port_id) {
            None if n.subnet_id.is_some() => register_nic(cfg, base, n).await,
            None => {
                tracing::warn!(iface = %n.iface, port_id = %n.port_id, "NIC not in the inventory")
            }
            Some(p) if p.node != cfg.node_name => {
                tracing::warn!(iface = %n.iface, port_id = %n.port_id, node = %p.node, "NIC registered on another node")
            }
            Some(_) => {}
        }
    }
}

/// `POST /inventory/ports` for one NIC; a failure is logged (the next snapshot tries again).
async fn register_nic(cfg: &AgentConfig, base: &str, n: &NicConfig) {
    let mut body = serde_json::json!({
        "id": n.port_id,
        "subnet_id": n.subnet_id,
        "node": cfg.node_name,
    });
    if let Some(ip) = n.ip {
        body["ip"] = serde_json::json!(ip.to_string());
    }
    if let Some(mac) = &n.mac {
        body["mac"] = serde_json::json!(mac);
    }
    let resp = cfg
        .link
        .request(reqwest::Method::POST, format!("{base}/inventory/ports"))
        .json(&body)
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => {
            tracing::info!(iface = %n.iface, port_id = %n.port_id, "NIC registered")
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            tracing::warn!(iface = %n.iface, port_id = %n.port_id, status, body = %text, "registering the NIC")
        }
        Err(e) => {
            let chain = crate::tls::chain(&e);
            let hint = crate::tls::hint(&chain).unwrap_or("");
            tracing::warn!(iface = %n.iface, port_id = %n.port_id, error = %format!("{chain}{hint}"), "registering the NIC")
        }
    }
}
