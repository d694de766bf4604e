//! The control plane's settings (`vpcep control-plane` flags).
use crate::domain::{MAX_CONNECTIONS, MAX_NEW_CONNECTIONS_PER_SECOND};

/// Settings of the control plane: the region, default quotas and limits, and the API's and
/// feed's own bounds.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Region used in full service names (`<region>.<name>.<id>`).
    #[arg(long, default_value = "local-1")]
    pub region: String,
    /// Default endpoint-service quota per project.
    #[arg(long, default_value_t = 20)]
    pub quota_endpoint_services: i64,
    /// Default endpoint quota per project.
    #[arg(long, default_value_t = 50)]
    pub quota_endpoints: i64,
    /// Largest accepted request body in bytes (larger → 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Revisions of change log kept for watchers; an older watcher must relist.
    #[arg(long, default_value_t = 100_000)]
    pub feed_retain: i64,
    /// How often (ms) to look for changes written by other replicas.
    #[arg(long, default_value_t = 200)]
    pub feed_poll_ms: u64,
    /// Live connections an endpoint may hold when its service sets no `max_connections`
    /// (0 = no limit).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CONNECTIONS)))]
    pub default_max_connections: u32,
    /// New connections per second an endpoint may open when its service sets no
    /// `max_new_connections_per_second` (0 = no limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_NEW_CONNECTIONS_PER_SECOND)))]
    pub default_max_new_connections_per_second: u32,
    /// Days of audit trail kept; older records are pruned by the next write (0 = keep all).
    #[arg(long, default_value_t = 90)]
    pub audit_retain_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: "local-1".to_owned(),
            quota_endpoint_services: 20,
            quota_endpoints: 50,
            max_body: 1 << 20,
            feed_retain: 100_000,
            feed_poll_ms: 200,
            default_max_connections: 3000,
            default_max_new_connections_per_second: 0,
            audit_retain_days: 90,
        }
    }
}
