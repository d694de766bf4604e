//! Tags of services and endpoints: add/remove on one resource, and the project's tagged
//! resources for the tag queries.
use super::{Result, Touch};
use crate::{
    domain::{Caller, Endpoint, Error, MAX_TAGS, Service, Tag},
    store::{Filter, Object, Store, WriteTx},
};

/// The resource kinds that carry tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    Endpoint,
}

impl Kind {
    /// From the `resource_type` path segment.
    pub fn parse(resource_type: &str) -> Result<Self> {
        match resource_type {
            "endpoint_service" => Ok(Self::Service),
            "endpoint" => Ok(Self::Endpoint),
            _ => Err(Error::not_found("resource type")),
        }
    }
}

/// One tag change: the tag, and whether a value was given (a delete without one deletes by
/// key).
pub type TagChange = (Tag, bool);

fn apply(current: &mut Vec<Tag>, changes: &[TagChange], create: bool) -> Result<()> {
    for (t, has_value) in changes {
        if create {
            match current.iter_mut().find(|c| c.key == t.key) {
                Some(c) => c.value = t.value.clone(),
                None => current.push(t.clone()),
            }
        } else {
            // Without a value, delete by key; with one, only when it matches.
            current.retain(|c| !(c.key == t.key && (!has_value || c.value == t.value)));
        }
    }
    if current.len() > MAX_TAGS {
        return Err(Error::invalid("tags", "at most 20 tags per resource"));
    }
    Ok(())
}

/// A tagged record of the caller's project.
trait Tagged: Object + Touch {
    const WHAT: &'static str;
    fn tags(&mut self) -> &mut Vec<Tag>;
}

impl Tagged for Service {
    const WHAT: &'static str = "endpoint service";
    fn tags(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}

impl Tagged for Endpoint {
    const WHAT: &'static str = "endpoint";
    fn tags(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}

async fn change<T: Tagged>(
    tx: &mut WriteTx,
    caller: &Caller,
    id: &str,
    changes: &[TagChange],
    create: bool,
) -> Result<()> {
    let mut r = tx
        .get::<T>(id)
        .await?
        .filter(|r| r.project() == caller.project_id)
        .ok_or_else(|| Error::not_found(T::WHAT))?;
    apply(r.tags(), changes, create)?;
    r.touch(tx);
    tx.put(&r).await?;
    Ok(())
}

/// Adds (`create`) or removes tags of one of the caller's resources.
pub async fn change_tags(
    tx: &mut WriteTx,
    caller: &Caller,
    kind: Kind,
    id: &str,
    changes: &[TagChange],
    create: bool,
) -> Result<()> {
    match kind {
        Kind::Service => change::<Service>(tx, caller, id, changes, create).await,
        Kind::Endpoint => change::<Endpoint>(tx, caller, id, changes, create).await,
    }
}

/// (id, name, tags) of the caller's resources of a kind.
pub async fn resources(
    store: &Store,
    caller: &Caller,
    k: Kind,
) -> Result<Vec<(String, String, Vec<Tag>)>> {
    let f = Filter::Project(&caller.project_id);
    Ok(match k {
        Kind::Service => store
            .list::<Service>(f)
            .await?
            .into_iter()
            .map(|s| (s.id, s.service_name, s.tags))
            .collect(),
        Kind::Endpoint => store
            .list::<Endpoint>(f)
            .await?
            .into_iter()
            .map(|e| (e.id, e.service_name, e.tags))
            .collect(),
    })
}
