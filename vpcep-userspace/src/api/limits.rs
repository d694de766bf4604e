//! Request limits of the control plane: per-caller rate limits, the back-off of failed
//! authentication, and the API's Prometheus metrics (`GET /metrics`). Documented in
//! `docs/api.md` (Limits).
//!
//! **Rate limits** (GCRA buckets from `governor`) apply right after authentication, one
//! bucket per caller:
//! * a tenant credential (its AK, or a token's id): the project's override in the inventory
//!   quotas, else `--rate-limit-per-second` / `--rate-limit-burst`. The bucket is the
//!   credential's, not the project's: the operator hands out a project's credentials, and
//!   one script looping on its key must not stall the project's other clients;
//! * an agent by its node, whether it came with a token or a certificate;
//! * an operator token (no limit by default);
//! * an anonymous caller by its source address (an IPv6 one by its /64, which one host can
//!   hold whole), with the tenant defaults.
//!
//! One keyed limiter per distinct (rate, burst), so that a project's override is a bucket
//! size of its own; every minute each drops the keys whose bucket is full again (a caller
//! idle for the bucket's refill time), which bounds the memory by the callers of the last
//! minute.
//!
//! **Authentication back-off**: see [`Backoff`].
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    AppState,
    context::{CredentialId, source},
    error::ApiError,
};
use crate::{
    domain::{Error, Identity, QuotaOverride},
    ops::{
        RequestLimits,
        quota::{ApiRate, api_rate, project_api_rate},
    },
    signing::parse_authorization,
    store::Store,
};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// How long a project's rate override is used before it is read again. The replica that
/// takes a change applies it at once; the others within this time.
const OVERRIDE_TTL: Duration = Duration::from_secs(5);
/// How often idle buckets and back-off entries are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The media type of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The limits and counters of one API server.
pub struct Limits {
    tenant: ApiRate,
    agent: ApiRate,
    operator: ApiRate,
    buckets: RwLock<HashMap<(u32, u32), Arc<Keyed>>>,
    /// Project → (read at, its rate).
    overrides: Mutex<HashMap<String, (Instant, ApiRate)>>,
    backoff: Mutex<Backoff>,
    backoff_on: bool,
    metrics: Metrics,
    started: Instant,
    /// Seconds after `started` of the last prune.
    pruned_at: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("tenant", &self.tenant)
            .field("agent", &self.agent)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain maps).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whole seconds to wait, at least 1 (`Retry-After`).
fn whole_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// What limits keep a source address as: an IPv6 one by its /64, an IPv4-mapped one as IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl Limits {
    pub fn new(l: &RequestLimits) -> Self {
        Self {
            tenant: api_rate(l.rate_limit_per_second, l.rate_limit_burst),
            agent: api_rate(l.rate_limit_agent_per_second, l.rate_limit_agent_burst),
            operator: api_rate(
                l.rate_limit_operator_per_second,
                l.rate_limit_operator_burst,
            ),
            buckets: RwLock::default(),
            overrides: Mutex::default(),
            backoff: Mutex::new(Backoff::new(
                l.auth_failures_before_backoff,
                Duration::from_secs(l.auth_backoff_initial_secs.max(1)),
                Duration::from_secs(l.auth_backoff_max_secs.max(1)),
            )),
            backoff_on: l.auth_failures_before_backoff > 0,
            metrics: Metrics::new(),
            started: Instant::now(),
            pruned_at: AtomicU64::new(0),
        }
    }

    /// The bucket of a request that passed authentication, and its size (`None`: no limit).
    async fn bucket_of(
        &self,
        store: &Store,
        config: &super::Config,
        req: &Caller,
    ) -> Option<(String, (u32, u32))> {
        match (&req.identity, &req.credential) {
            (Some(Identity::Tenant { project_id, .. }), Some(c)) => {
                let rate = self.project_rate(store, config, project_id).await?;
                Some((format!("cred:{c}"), rate))
            }
            (Some(Identity::Agent { node }), _) => Some((format!("node:{node}"), self.agent?)),
            (Some(Identity::Operator), Some(c)) => Some((format!("cred:{c}"), self.operator?)),
            _ => Some((format!("ip:{}", req.source?), self.tenant?)),
        }
    }

    /// A project's rate: its override, read at most every [`OVERRIDE_TTL`] (a store error
    /// falls back to the defaults rather than failing the request).
    async fn project_rate(&self, store: &Store, config: &super::Config, project: &str) -> ApiRate {
        let now = Instant::now();
        if let Some((at, rate)) = lock(&self.overrides).get(project)
            && now.duration_since(*at) < OVERRIDE_TTL
        {
            return *rate;
        }
        let rate = match store.get::<QuotaOverride>(project).await {
            Ok(o) => project_api_rate(o.as_ref(), config),
            Err(e) => {
                tracing::warn!(error = %e, project, "reading the rate override");
                self.tenant
            }
        };
        // Keyed by authenticated tenants' projects only: bounded by the credentials file.
        lock(&self.overrides).insert(project.to_owned(), (now, rate));
        rate
    }

    /// After the operator changed a project's override: read it again on the next request.
    pub fn forget_project(&self, project: &str) {
        lock(&self.overrides).remove(project);
    }

    /// Takes one request from the bucket; `Err(wait)` when it is empty.
    fn take(&self, key: &String, (rate, burst): (u32, u32)) -> Result<(), Duration> {
        let (Some(r), Some(b)) = (NonZeroU32::new(rate), NonZeroU32::new(burst)) else {
            return Ok(());
        };
        let found = self
            .buckets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(rate, burst))
            .cloned();
        let limiter = match found {
            Some(l) => l,
            None => self
                .buckets
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry((rate, burst))
                .or_insert_with(|| Arc::new(Keyed::dashmap(Quota::per_second(r).allow_burst(b))))
                .clone(),
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Every [`PRUNE_EVERY`], by whichever request comes first: drops full buckets, stale
    /// overrides and back-off entries.
    fn maybe_prune(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.pruned_at.load(Ordering::Relaxed);
        if now < last + PRUNE_EVERY.as_secs()
            || self
                .pruned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.prune(Instant::now());
    }

    fn prune(&self, now: Instant) {
        self.buckets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| {
                l.retain_recent();
                l.shrink_to_fit();
                !l.is_empty()
            });
        lock(&self.overrides).retain(|_, (at, _)| now.duration_since(*at) < OVERRIDE_TTL);
        lock(&self.backoff).prune(now);
    }

    /// Before credentials are checked: refused (429) while the attempt's source, or the
    /// access key it names from a source it never succeeded from, is backed off.
    pub fn admit(&self, a: &Attempt) -> Result<(), ApiError> {
        // Off: no lock on every authenticated request.
        if !a.credential || !self.backoff_on {
            return Ok(());
        }
        let wait = lock(&self.backoff).refused(a.source, a.access_key.as_deref(), Instant::now());
        match wait {
            None => Ok(()),
            Some(wait) => {
                self.metrics.limited("auth_backoff");
                Err(ApiError::Limited {
                    what: "too many failed authentication attempts",
                    retry_after: whole_secs(wait),
                })
            }
        }
    }

    /// Authentication refused the attempt's credentials.
    pub fn auth_failed(&self, a: &Attempt, e: &ApiError) {
        let ApiError::Domain(Error::Unauthorized(msg)) = e else {
            return;
        };
        if !a.credential {
            return;
        }
        let reason = a.reason(msg);
        self.metrics.auth_failure(reason);
        if !self.backoff_on {
            return;
        }
        // An unknown access key names no account to protect: the source's back-off covers
        // it, and keying on it would let random keys fill the table.
        let key = a
            .access_key
            .as_deref()
            .filter(|_| reason != "unknown_access_key");
        lock(&self.backoff).failed(a.source, key, Instant::now());
    }

    /// Authentication accepted the attempt: a signature resets its access key's failures.
    pub fn auth_succeeded(&self, a: &Attempt) {
        if let Some(ak) = a.access_key.as_ref().filter(|_| self.backoff_on) {
            lock(&self.backoff).succeeded(a.source, ak, Instant::now());
        }
    }
}

/// Who a request that passed authentication is, for its bucket.
struct Caller {
    identity: Option<Identity>,
    credential: Option<String>,
    source: Option<IpAddr>,
}

impl Caller {
    fn of(req: &Request) -> Self {
        let ext = req.extensions();
        Self {
            identity: ext.get::<Identity>().cloned(),
            credential: ext.get::<CredentialId>().map(|c| c.0.clone()),
            source: source(req).map(|a| source_key(a.ip())),
        }
    }
}

/// What an authentication attempt shows before it is checked.
#[derive(Debug, Clone)]
pub struct Attempt {
    source: Option<IpAddr>,
    /// The `Access=` of an `Authorization` header that parses.
    access_key: Option<String>,
    /// It carries credentials (`Authorization`, or a non-empty `X-Auth-Token`); a request
    /// without (anonymous, or a node certificate alone) is no attempt.
    credential: bool,
    signed: bool,
}

impl Attempt {
    pub fn of(req: &Request) -> Self {
        let h = req.headers();
        let authz = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = h
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| !t.trim().is_empty());
        Self {
            source: source(req).map(|a| source_key(a.ip())),
            access_key: authz
                .and_then(parse_authorization)
                .map(|a| a.access.to_owned()),
            credential: h.contains_key(header::AUTHORIZATION) || token,
            signed: h.contains_key(header::AUTHORIZATION),
        }
    }

    /// The metric reason of a refusal, from authentication's message.
    fn reason(&self, msg: &str) -> &'static str {
        match (self.signed, msg) {
            (false, _) => "unknown_token",
            (true, "unknown access key") => "unknown_access_key",
            (true, "signature does not match") => "bad_signature",
            // Unparseable Authorization, missing or stale X-Sdk-Date, unsigned headers, a
            // body that does not match its stated hash.
            _ => "malformed",
        }
    }
}

/// Middleware right after authentication: takes one request from the caller's bucket, or
/// answers 429 with `Retry-After`.
pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &st.limits;
    let caller = Caller::of(&req);
    if let Some((key, rate)) = limits.bucket_of(&st.store, &st.config, &caller).await
        && let Err(wait) = limits.take(&key, rate)
    {
        limits.metrics.limited("rate");
        return ApiError::Limited {
            what: "request rate limit exceeded",
            retry_after: whole_secs(wait),
        }
        .into_response();
    }
    next.run(req).await
}

/// Middleware around everything else: counts answers by status class (and prunes).
pub async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    st.limits.maybe_prune();
    let resp = next.run(req).await;
    st.limits.metrics.answered(resp.status());
    resp
}

/// `GET /metrics`: anonymous, like the agent's, for a scraper on a private network; it
/// holds counts only, no ids.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut text = String::new();
    if let Err(e) =
        prometheus_client::encoding::text::encode(&mut text, &st.limits.metrics.registry)
    {
        tracing::warn!(error = %e, "encoding the metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

type Label = [(&'static str, &'static str); 1];

/// The API's counters.
struct Metrics {
    registry: Registry,
    requests: Family<Label, Counter>,
    auth_failures: Family<Label, Counter>,
    rate_limited: Family<Label, Counter>,
}

const REASONS: [&str; 4] = [
    "unknown_token",
    "unknown_access_key",
    "bad_signature",
    "malformed",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Label, Counter>::default();
        let auth_failures = Family::<Label, Counter>::default();
        let rate_limited = Family::<Label, Counter>::default();
        // The encoder adds `_total`.
        registry.register(
            "vpcep_api_requests",
            "API requests answered, by status class.",
            requests.clone(),
        );
        registry.register(
            "vpcep_api_auth_failures",
            "Requests whose credentials authentication refused, by reason.",
            auth_failures.clone(),
        );
        registry.register(
            "vpcep_api_rate_limited",
            "Requests refused with 429: over a rate limit (rate) or during an authentication back-off (auth_backoff).",
            rate_limited.clone(),
        );
        // Every series from the start, so that rates work from the first scrape.
        for r in REASONS {
            let _ = auth_failures.get_or_create(&[("reason", r)]);
        }
        for k in ["rate", "auth_backoff"] {
            let _ = rate_limited.get_or_create(&[("kind", k)]);
        }
        Self {
            registry,
            requests,
            auth_failures,
            rate_limited,
        }
    }

    fn answered(&self, status: StatusCode) {
        let i = usize::from(status.as_u16() / 100).saturating_sub(1);
        if let Some(class) = CLASSES.get(i) {
            self.requests.get_or_create(&[("class", class)]).inc();
        }
    }

    fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    fn limited(&self, kind: &'static str) {
        self.rate_limited.get_or_create(&[("kind", kind)]).inc();
    }
}

/// Most sources, and access keys, tracked at once.
const MAX_ENTRIES: usize = 65_536;
/// Sources an access key is remembered to have succeeded from.
const MAX_TRUSTED: usize = 4;
/// How long such a source stays trusted after its last success.
const TRUST_TTL: Duration = Duration::from_secs(24 * 3600);

/// Failed authentications of one source or access key.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct KeyState {
    strikes: Option<Strikes>,
    /// Sources (as [`source_key`]) the key authenticated from, with the last success.
    trusted: Vec<(IpAddr, Instant)>,
}

/// The back-off of failed authentication, per source address and per access key.
///
/// After `threshold` failures (failures are forgotten after twice the longest delay without
/// one), each further failure refuses the next attempts for `first` (1 s), then twice as
/// long with each further failure (2 s, 4 s …) up to `max`,
/// answered 429 without looking at the credentials: guessing gets slower and costs the
/// server no signature or body read.
///
/// * **Per source**: every attempt from a backed-off address is refused, a valid credential
///   included: checking it would let a guesser go on at full speed. A success does not
///   clear the source's failures (a guesser holding one valid credential could otherwise
///   interleave it). The cost: clients behind the same address (a NAT) as a guesser wait too,
///   for at most `max`.
/// * **Per access key** (failures of a known AK, from any source): counters guessing the SK
///   from many addresses. To keep an attacker from locking the key's owner out from
///   everywhere with bad signatures, the refusal spares the sources the key succeeded from
///   in the last day (up to four): their attempts are still checked, and a success there
///   clears the key's failures. A new address of the owner waits out the back-off.
///
/// Both tables are bounded ([`MAX_ENTRIES`]): entries idle past the window are dropped every
/// minute; when full, unblocked entries make room, and a source that finds it still full is
/// not tracked (only an attacker holding that many addresses, all backed off, gets there).
#[derive(Debug)]
struct Backoff {
    threshold: u32,
    first: Duration,
    max: Duration,
    window: Duration,
    sources: HashMap<IpAddr, Strikes>,
    keys: HashMap<String, KeyState>,
}

impl Strikes {
    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|u| *u > now)
            .map(|u| u.duration_since(now))
    }

    fn live(&self, now: Instant, window: Duration) -> bool {
        self.blocked(now).is_some() || now.duration_since(self.last) < window
    }
}

impl Backoff {
    fn new(threshold: u32, first: Duration, max: Duration) -> Self {
        Self {
            threshold,
            first: first.min(max),
            max,
            window: (max * 2).max(Duration::from_secs(60)),
            sources: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// How long an attempt must wait, if it is refused.
    fn refused(&self, source: Option<IpAddr>, key: Option<&str>, now: Instant) -> Option<Duration> {
        if self.threshold == 0 {
            return None;
        }
        let by_source = source
            .and_then(|s| self.sources.get(&s))
            .and_then(|s| s.blocked(now));
        let by_key = key.and_then(|k| self.keys.get(k)).and_then(|k| {
            let trusted = source.is_some_and(|s| k.trusted.iter().any(|(t, _)| *t == s));
            k.strikes.and_then(|s| s.blocked(now)).filter(|_| !trusted)
        });
        by_source.max(by_key)
    }

    fn strike(&self, s: &mut Strikes, now: Instant) {
        if now.duration_since(s.last) >= self.window {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        if s.failures >= self.threshold {
            let doublings = (s.failures - self.threshold).min(31);
            let delay = self
                .first
                .checked_mul(1u32 << doublings)
                .unwrap_or(self.max)
                .min(self.max);
            s.until = Some(now + delay);
        }
    }

    fn failed(&mut self, source: Option<IpAddr>, key: Option<&str>, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        let fresh = Strikes {
            failures: 0,
            last: now,
            until: None,
        };
        if let Some(src) = source {
            if !self.sources.contains_key(&src) && self.sources.len() >= MAX_ENTRIES {
                self.sources.retain(|_, s| s.blocked(now).is_some());
            }
            if self.sources.len() < MAX_ENTRIES || self.sources.contains_key(&src) {
                let mut s = self.sources.get(&src).copied().unwrap_or(fresh);
                self.strike(&mut s, now);
                self.sources.insert(src, s);
            }
        }
        if let Some(k) = key {
            if !self.keys.contains_key(k) && self.keys.len() >= MAX_ENTRIES {
                self.prune(now);
            }
            if self.keys.len() < MAX_ENTRIES || self.keys.contains_key(k) {
                let mut s = self.keys.get(k).and_then(|e| e.strikes).unwrap_or(fresh);
                self.strike(&mut s, now);
                self.keys.entry(k.to_owned()).or_default().strikes = Some(s);
            }
        }
    }

    fn succeeded(&mut self, source: Option<IpAddr>, key: &str, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_ENTRIES {
            self.prune(now);
            if self.keys.len() >= MAX_ENTRIES {
                return;
            }
        }
        let e = self.keys.entry(key.to_owned()).or_default();
        e.strikes = None;
        if let Some(src) = source {
            e.trusted.retain(|(t, _)| *t != src);
            if e.trusted.len() >= MAX_TRUSTED {
                // The oldest success goes.
                e.trusted.remove(0);
            }
            e.trusted.push((src, now));
        }
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.sources.retain(|_, s| s.live(now, window));
        self.keys.retain(|_, k| {
            k.trusted
                .retain(|(_, at)| now.duration_since(*at) < TRUST_TTL);
            if k.strikes.is_some_and(|s| !s.live(now, window)) {
                k.strikes = None;
            }
            k.strikes.is_some() || !k.trusted.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn source_backoff_doubles_up_to_the_cap_and_is_forgotten() {
        let t0 = Instant::now();
        let mut b = Backoff::new(3, Duration::from_secs(1), Duration::from_secs(5));
        let a = ip("192.0.2.1");
        for i in 0..2 {
            b.failed(a, None, t0 + Duration::from_millis(i));
            assert_eq!(b.refused(a, None, t0 + Duration::from_millis(i)), None);
        }
        let t = t0 + Duration::from_millis(2);
        b.failed(a, None, t);
        assert_eq!(b.refused(a, None, t), Some(Duration::from_secs(1)));
        // Another source is not affected; the first one is free again after the delay.
        assert_eq!(b.refused(ip("192.0.2.2"), None, t), None);
        assert_eq!(b.refused(a, None, t + Duration::from_secs(1)), None);
        // Each further failure doubles: 2, 4, then the 5 s cap.
        let mut t = t + Duration::from_secs(1);
        for want in [2, 4, 5, 5] {
            b.failed(a, None, t);
            assert_eq!(b.refused(a, None, t), Some(Duration::from_secs(want)));
            t += Duration::from_secs(want);
        }
        // A success of a key from the source does not clear the source.
        b.failed(a, None, t);
        b.succeeded(a, "AK", t);
        assert!(b.refused(a, None, t).is_some());
        // Forgotten after the window (60 s at least) without a failure.
        let later = t + Duration::from_secs(61);
        b.prune(later);
        assert!(b.sources.is_empty());
        b.failed(a, None, later);
        assert_eq!(b.refused(a, None, later), None);
    }

    #[test]
    fn key_backoff_spares_the_sources_it_succeeded_from() {
        let t = Instant::now();
        let mut b = Backoff::new(2, Duration::from_secs(1), Duration::from_secs(300));
        let home = ip("192.0.2.10");
        b.succeeded(home, "AK", t);
        // Failures from two addresses, one each: neither source is backed off, the key is.
        b.failed(ip("198.51.100.1"), Some("AK"), t);
        b.failed(ip("198.51.100.2"), Some("AK"), t);
        assert_eq!(b.refused(ip("198.51.100.1"), None, t), None);
        assert_eq!(
            b.refused(ip("198.51.100.3"), Some("AK"), t),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.refused(ip("198.51.100.3"), Some("OTHER"), t), None);
        // Its owner's address is still checked, and a success clears the key.
        assert_eq!(b.refused(home, Some("AK"), t), None);
        b.succeeded(home, "AK", t);
        assert_eq!(b.refused(ip("198.51.100.3"), Some("AK"), t), None);
        // At most four trusted sources, the oldest dropped.
        for i in 1..=4u8 {
            b.succeeded(Some(IpAddr::from([203, 0, 113, i])), "AK", t);
        }
        let k = &b.keys["AK"];
        assert_eq!(k.trusted.len(), MAX_TRUSTED);
        assert!(!k.trusted.iter().any(|(s, _)| Some(*s) == home));
        // Pruned a day after the last success.
        b.prune(t + TRUST_TTL);
        assert!(b.keys.is_empty());
    }

    #[test]
    fn off_and_bounded() {
        let t = Instant::now();
        let mut off = Backoff::new(0, Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..10 {
            off.failed(ip("192.0.2.1"), Some("AK"), t);
        }
        assert_eq!(off.refused(ip("192.0.2.1"), Some("AK"), t), None);
        assert!(off.sources.is_empty() && off.keys.is_empty());

        let mut b = Backoff::new(5, Duration::from_secs(1), Duration::from_secs(300));
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            b.failed(Some(IpAddr::from(i.to_be_bytes())), None, t);
        }
        assert!(b.sources.len() <= MAX_ENTRIES);
    }

    #[test]
    fn sources_are_keyed_by_address_and_ipv6_by_its_64() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs(Duration::ZERO), 1);
    }

    #[test]
    fn buckets_refuse_beyond_the_burst_and_are_pruned() {
        let l = Limits::new(&RequestLimits::default());
        let key = "cred:AK".to_owned();
        for _ in 0..3 {
            assert_eq!(l.take(&key, (1, 3)), Ok(()));
        }
        let wait = l.take(&key, (1, 3)).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another key, and the same key under another bucket size, are apart.
        assert_eq!(l.take(&"cred:OTHER".to_owned(), (1, 3)), Ok(()));
        assert_eq!(l.take(&key, (1, 1)), Ok(()));
        // No limit.
        assert_eq!(l.take(&key, (0, 0)), Ok(()));
        // A bucket whose keys are all full again is dropped.
        l.take(&"cred:X".to_owned(), (1_000_000, 1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        l.prune(Instant::now());
        let b = l.buckets.read().unwrap();
        assert!(!b.contains_key(&(1_000_000, 1)));
        assert!(b.contains_key(&(1, 3)));
    }
}
