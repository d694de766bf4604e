//! Per-project quotas: the configured defaults, overridden per project by the operator.
//! The API request rate of a project's credentials is one of them.
use super::{Config, Result};
use crate::{
    domain::{Endpoint, Error, MAX_API_RATE, QuotaOverride, Service},
    store::{Filter, Object, Store, WriteTx},
};

/// An API request rate: sustained requests per second and the burst (both ≥ 1), or `None`
/// for no limit.
pub type ApiRate = Option<(u32, u32)>;

/// A configured or overridden rate and burst as a limit: a rate of 0 is none, a burst of 0
/// one second's worth.
pub fn api_rate(rate: u32, burst: u32) -> ApiRate {
    (rate > 0).then_some((rate, if burst == 0 { rate } else { burst }))
}

/// The API request rate of each of a project's credentials: the override's, else the
/// configured tenant default (an override of the rate alone keeps the default burst).
pub fn project_api_rate(o: Option<&QuotaOverride>, config: &Config) -> ApiRate {
    let l = &config.limits;
    let num = |v: Option<i64>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
            .min(MAX_API_RATE)
    };
    api_rate(
        num(
            o.and_then(|o| o.api_rate_per_second),
            l.rate_limit_per_second,
        ),
        num(o.and_then(|o| o.api_rate_burst), l.rate_limit_burst),
    )
}

/// The quotas that apply to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub endpoint_service: i64,
    pub endpoint: i64,
    pub api_rate: ApiRate,
}

fn effective(o: Option<QuotaOverride>, config: &Config) -> Effective {
    Effective {
        api_rate: project_api_rate(o.as_ref(), config),
        endpoint_service: pick(o.clone(), config, Service::KIND),
        endpoint: pick(o, config, Endpoint::KIND),
    }
}

/// Every quota of a project, for reads.
pub async fn project_quotas(store: &Store, config: &Config, project: &str) -> Result<Effective> {
    Ok(effective(
        store.get::<QuotaOverride>(project).await?,
        config,
    ))
}

fn pick(o: Option<QuotaOverride>, config: &Config, kind: &str) -> i64 {
    let (over, default) = if kind == Service::KIND {
        (
            o.and_then(|o| o.endpoint_service),
            config.quota_endpoint_services,
        )
    } else {
        (o.and_then(|o| o.endpoint), config.quota_endpoints)
    };
    over.unwrap_or(default)
}

/// The quota of `kind` for a project, read inside a write transaction (atomic checks).
pub async fn quota_for(
    tx: &mut WriteTx,
    config: &Config,
    project: &str,
    kind: &str,
) -> Result<i64> {
    Ok(pick(tx.get::<QuotaOverride>(project).await?, config, kind))
}

/// The quota of `kind` for a project, for reads.
pub async fn quota_read(store: &Store, config: &Config, project: &str, kind: &str) -> Result<i64> {
    Ok(pick(
        store.get::<QuotaOverride>(project).await?,
        config,
        kind,
    ))
}

/// Fails when the project already holds its quota of `T`.
pub async fn check_room<T: Object>(tx: &mut WriteTx, config: &Config, project: &str) -> Result<()> {
    let quota = quota_for(tx, config, project, T::KIND).await?;
    if tx.count::<T>(Filter::Project(project)).await? >= quota {
        return Err(Error::Quota(format!(
            "{} quota of {quota} exceeded",
            T::KIND
        )));
    }
    Ok(())
}

/// Sets a project's overrides (the whole set: a field left out is the default again);
/// returns the quotas that now apply.
pub async fn put_quota(tx: &mut WriteTx, config: &Config, q: QuotaOverride) -> Result<Effective> {
    let max_rate = i64::from(MAX_API_RATE);
    for (f, v, max) in [
        (
            "endpoint_service",
            q.endpoint_service,
            crate::domain::MAX_QUOTA,
        ),
        ("endpoint", q.endpoint, crate::domain::MAX_QUOTA),
        ("api_rate_per_second", q.api_rate_per_second, max_rate),
        ("api_rate_burst", q.api_rate_burst, max_rate),
    ] {
        if v.is_some_and(|v| !(0..=max).contains(&v)) {
            return Err(Error::invalid(f, format!("must be 0-{max}")));
        }
    }
    tx.put(&q).await?;
    Ok(effective(Some(q), config))
}
