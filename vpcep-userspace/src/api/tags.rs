//! Tags: per-resource add/remove, the project's tag list, and the filter/count query.
use std::collections::BTreeMap;

use axum::{Extension, Json, extract::State, http::StatusCode};
use serde::Deserialize;

use super::{
    AppState,
    error::{ApiError, ApiResult, Body, Path},
    fuzzy,
    views::{ProjectTags, Resource, Resources, TagKey},
};
use crate::{
    domain::*,
    ops::tags::{self, Kind},
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TagAction {
    #[schemars(required)]
    tags: Option<Vec<TagIn>>,
    #[schemars(required, extend("enum" = ["create", "delete"]))]
    action: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TagIn {
    #[schemars(required, length(min = 1, max = 36), pattern(pattern::TAG_KEY))]
    key: Option<String>,
    /// `delete` without a value deletes by key.
    #[schemars(length(max = 43), pattern(pattern::TAG_VALUE))]
    value: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TagValues {
    key: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Match {
    #[schemars(extend("enum" = ["resource_name"]))]
    key: String,
    value: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FilterQuery {
    #[serde(default)]
    tags: Vec<TagValues>,
    #[serde(default)]
    tags_any: Vec<TagValues>,
    #[serde(default)]
    not_tags: Vec<TagValues>,
    #[serde(default)]
    not_tags_any: Vec<TagValues>,
    #[serde(default)]
    #[allow(dead_code)]
    sys_tags: Vec<TagValues>,
    /// Strings in this body, as the SDK sends them: 0-1000, default 1000.
    #[schemars(pattern(pattern::LIMIT))]
    limit: Option<String>,
    #[schemars(pattern(pattern::OFFSET))]
    offset: Option<String>,
    #[schemars(required, extend("enum" = ["filter", "count"]))]
    action: Option<String>,
    #[serde(default)]
    matches: Vec<Match>,
    without_any_tag: Option<bool>,
}

pub async fn action(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, rtype, rid)): Path<(String, String, String)>,
    Body(req): Body<TagAction>,
) -> ApiResult<StatusCode> {
    let k = Kind::parse(&rtype)?;
    let rid = parse_id(&rid, "resource")?;
    let action = required("action", req.action)?;
    check_enum("action", &action, &["create", "delete"])?;
    let items = required("tags", req.tags)?;
    let mut changes = Vec::with_capacity(items.len());
    for (i, t) in items.into_iter().enumerate() {
        let key = required(&format!("tags[{i}].key"), t.key)?;
        let has_value = t.value.is_some();
        let tag = Tag {
            key,
            value: t.value.unwrap_or_default(),
        };
        check_tag(&format!("tags[{i}]"), &tag)?;
        changes.push((tag, has_value));
    }
    st.in_tx(async |tx| {
        tags::change_tags(tx, &caller, k, &rid, &changes, action == "create").await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn project_tags(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, rtype)): Path<(String, String)>,
) -> ApiResult<Json<ProjectTags>> {
    let k = Kind::parse(&rtype)?;
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, _, tags) in tags::resources(&st.store, &caller, k).await? {
        for t in tags {
            let vals = keys.entry(t.key).or_default();
            if !vals.contains(&t.value) {
                vals.push(t.value);
            }
        }
    }
    let tags = keys
        .into_iter()
        .map(|(key, mut values)| {
            values.sort();
            TagKey { key, values }
        })
        .collect();
    Ok(Json(ProjectTags { tags }))
}

fn has(tags: &[Tag], f: &TagValues) -> bool {
    tags.iter()
        .any(|t| t.key == f.key && (f.values.is_empty() || f.values.contains(&t.value)))
}

pub async fn filter(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_, rtype)): Path<(String, String)>,
    Body(req): Body<FilterQuery>,
) -> ApiResult<Json<Resources>> {
    let k = Kind::parse(&rtype)?;
    let action = required("action", req.action)?;
    check_enum("action", &action, &["filter", "count"])?;
    let num = |field: &str, v: Option<&String>, default: usize, max: usize| -> ApiResult<usize> {
        v.map_or(Ok(default), |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| ApiError::invalid(field, format!("must be an integer 0-{max}")))
        })
    };
    let limit = num("limit", req.limit.as_ref(), 1000, 1000)?;
    let offset = num("offset", req.offset.as_ref(), 0, usize::MAX)?;
    for (i, m) in req.matches.iter().enumerate() {
        check_enum(&format!("matches[{i}].key"), &m.key, &["resource_name"])?;
    }
    let matched: Vec<(String, String, Vec<Tag>)> = tags::resources(&st.store, &caller, k)
        .await?
        .into_iter()
        .filter(|(_, name, tags)| {
            req.tags.iter().all(|f| has(tags, f))
                && (req.tags_any.is_empty() || req.tags_any.iter().any(|f| has(tags, f)))
                && (req.not_tags.is_empty() || !req.not_tags.iter().all(|f| has(tags, f)))
                && !req.not_tags_any.iter().any(|f| has(tags, f))
                && req.matches.iter().all(|m| fuzzy(name, &m.value))
                && (!req.without_any_tag.unwrap_or(false) || tags.is_empty())
        })
        .collect();
    let total = matched.len();
    if action == "count" {
        return Ok(Json(Resources {
            resources: None,
            total_count: total,
        }));
    }
    let out = matched
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(resource_id, resource_name, tags)| Resource {
            resource_id,
            resource_name,
            tags,
        })
        .collect();
    Ok(Json(Resources {
        resources: Some(out),
        total_count: total,
    }))
}
