//! The control plane's settings (`vpcep control-plane` flags).
use crate::domain::{MAX_API_RATE, MAX_CONNECTIONS, MAX_NEW_CONNECTIONS_PER_SECOND};

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
    /// DNS zone of the endpoints' generated names (`<endpoint id>.<zone>`,
    /// `<service name>.<service id>.<zone>`); default `vpcep.<region>.internal`.
    #[arg(long, value_parser = dns_zone)]
    pub dns_zone: Option<String>,
    /// Suffixes a service's `private_dns_name` may end in (repeat the flag); none given:
    /// any name outside the generated zone.
    #[arg(long = "private-dns-suffix", value_parser = dns_zone)]
    pub private_dns_suffixes: Vec<String>,
    #[command(flatten)]
    pub limits: RequestLimits,
}

impl Config {
    /// The zone of the generated endpoint names.
    pub fn dns_zone(&self) -> String {
        self.dns_zone
            .clone()
            .unwrap_or_else(|| format!("vpcep.{}.internal", self.region.to_ascii_lowercase()))
    }
}

/// A DNS zone or suffix flag: a valid name, lowercased, without the trailing dot.
fn dns_zone(s: &str) -> Result<String, String> {
    crate::domain::dns::check_name(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Rates are requests per second, bursts the requests a bucket holds (how many may come at
/// once after a quiet spell); a rate of 0 is no limit, a burst of 0 is one second's worth.
/// Defaults: tenants (and anonymous callers, per source address) are limited so that one
/// cannot starve the others; agents get more, since a node catching up after a burst of
/// changes reports and lists in quick succession; the operator none, since its automation
/// (bulk inventory loads, repairs) is trusted and should never be slowed.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RequestLimits {
    /// Requests per second one tenant credential (or one anonymous source address) may
    /// sustain; 0 = no limit. A project's quota override can set its own.
    #[arg(long, default_value_t = 50, value_parser = rate_range())]
    pub rate_limit_per_second: u32,
    /// Burst of a tenant credential (or anonymous source); 0 = the rate.
    #[arg(long, default_value_t = 100, value_parser = rate_range())]
    pub rate_limit_burst: u32,
    /// Requests per second one agent (node) may sustain; 0 = no limit.
    #[arg(long, default_value_t = 100, value_parser = rate_range())]
    pub rate_limit_agent_per_second: u32,
    /// Burst of an agent; 0 = the rate.
    #[arg(long, default_value_t = 1000, value_parser = rate_range())]
    pub rate_limit_agent_burst: u32,
    /// Requests per second one operator token may sustain; 0 = no limit.
    #[arg(long, default_value_t = 0, value_parser = rate_range())]
    pub rate_limit_operator_per_second: u32,
    /// Burst of an operator token; 0 = the rate.
    #[arg(long, default_value_t = 0, value_parser = rate_range())]
    pub rate_limit_operator_burst: u32,
    /// Failed authentications from one source address (or for one access key) before
    /// further attempts are refused for a while, doubling with each further failure;
    /// 0 = no back-off.
    #[arg(long, default_value_t = 5)]
    pub auth_failures_before_backoff: u32,
    /// The first authentication back-off, in seconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub auth_backoff_initial_secs: u64,
    /// The longest authentication back-off, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub auth_backoff_max_secs: u64,
}

fn rate_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=i64::from(MAX_API_RATE))
}

impl RequestLimits {
    /// No rate limit and no back-off (embedding, tests about something else).
    pub fn off() -> Self {
        Self {
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            rate_limit_agent_per_second: 0,
            rate_limit_agent_burst: 0,
            rate_limit_operator_per_second: 0,
            rate_limit_operator_burst: 0,
            auth_failures_before_backoff: 0,
            auth_backoff_initial_secs: 1,
            auth_backoff_max_secs: 300,
        }
    }
}

/// The flags' defaults.
impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            rate_limit_agent_per_second: 100,
            rate_limit_agent_burst: 1000,
            rate_limit_operator_per_second: 0,
            rate_limit_operator_burst: 0,
            auth_failures_before_backoff: 5,
            auth_backoff_initial_secs: 1,
            auth_backoff_max_secs: 300,
        }
    }
}

/// The flags' defaults (request limits on).
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
            dns_zone: None,
            private_dns_suffixes: Vec::new(),
            limits: RequestLimits::default(),
        }
    }
}
