//! Per-project quotas: the configured defaults, overridden per project by the operator.
use super::{Config, Result};
use crate::{
    domain::{Error, QuotaOverride, Service},
    store::{Filter, Object, Store, WriteTx},
};

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

/// Sets a project's overrides; returns the quotas that now apply (endpoint service, endpoint).
pub async fn put_quota(tx: &mut WriteTx, config: &Config, q: QuotaOverride) -> Result<(i64, i64)> {
    for (f, v) in [
        ("endpoint_service", q.endpoint_service),
        ("endpoint", q.endpoint),
    ] {
        if v.is_some_and(|v| !(0..=crate::domain::MAX_QUOTA).contains(&v)) {
            return Err(Error::invalid(f, "must be 0-100000"));
        }
    }
    tx.put(&q).await?;
    Ok((
        pick(Some(q.clone()), config, Service::KIND),
        pick(Some(q), config, crate::domain::Endpoint::KIND),
    ))
}
