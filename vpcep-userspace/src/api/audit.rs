//! The audit trail of writes: an audit context for every non-GET request, the row that
//! [`super::AppState::in_tx`] writes in the transaction of the change, and the row for a
//! write that changed nothing (refused, failed or rolled back).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Extension, Json,
    extract::{MatchedPath, RawQuery, Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};
use chrono::{DateTime, Utc};

use super::{
    AppState,
    context::{CredentialId, RequestId, source},
    error::{ApiError, ApiResult},
    routes::OPERATIONS,
    views::AuditRecords,
};
use crate::{
    domain::{Caller, Identity},
    store::{AuditQuery, AuditRecord, WriteTx, audit_time},
};

/// The largest page of the audit lists.
pub const MAX_LIMIT: i64 = 1000;

/// What the audit row of the current request says; filled in by the layers as they learn it.
#[derive(Debug, Default)]
struct Context {
    record: AuditRecord,
    /// The row is written (by the committed transaction).
    recorded: bool,
}

tokio::task_local! {
    static AUDIT: Arc<Mutex<Context>>;
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Outer layer (right inside the request id): opens the audit context of a write and, when
/// no transaction recorded it, records its outcome with the answered status.
pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    let record = AuditRecord {
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        actor: "anonymous".to_owned(),
        source: source(&req).map(|a| a.to_string()).unwrap_or_default(),
        // Until routing names the operation; the path carries ids, never secrets.
        action: format!("{} {}", req.method(), req.uri().path()),
        ..Default::default()
    };
    let ctx = Arc::new(Mutex::new(Context {
        record,
        recorded: false,
    }));
    let resp = AUDIT.scope(ctx.clone(), next.run(req)).await;
    // Refused by a request limit before any work: a row per refusal would let a flood
    // through to the database. The metrics count them.
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        return resp;
    }
    let status = resp.status().as_u16();
    let (recorded, pending) = match ctx.lock() {
        Ok(c) if c.recorded => (Some(c.record.request_id.clone()), None),
        Ok(c) => {
            let mut r = c.record.clone();
            r.status = status;
            r.result = if resp.status().is_success() {
                "ok"
            } else {
                "failed"
            }
            .to_owned();
            (None, Some(r))
        }
        Err(_) => (None, None),
    };
    // The transaction wrote 200; the handler may answer 201 or 204 (or fail after the
    // commit).
    if let Some(id) = recorded
        && status != 200
        && let Err(e) = st.store.audit_status(&id, status).await
    {
        tracing::error!(error = %e, "audit status lost");
    }
    if let Some(mut r) = pending {
        r.at = audit_time(Utc::now());
        if let Err(e) = st.store.audit(&r).await {
            tracing::error!(error = %e, request_id = r.request_id, "audit record lost");
        }
    }
    resp
}

/// Route layer (after authentication and routing): the actor, credential, project and
/// operation of the request.
pub async fn identify(req: Request, next: Next) -> Response {
    let _ = AUDIT.try_with(|ctx| {
        let Ok(mut c) = ctx.lock() else { return };
        let r = &mut c.record;
        if let Some(id) = req.extensions().get::<Identity>() {
            r.actor = actor(id);
        }
        if let Some(c) = req.extensions().get::<CredentialId>() {
            r.credential_id = c.0.clone();
        }
        if let Some(c) = req.extensions().get::<Caller>() {
            r.project_id = c.project_id.clone();
        }
        if let Some(p) = req.extensions().get::<MatchedPath>() {
            let m = req.method().as_str().to_lowercase();
            if let Some((.., op, _, _)) = OPERATIONS
                .iter()
                .find(|(om, op, ..)| *om == m && *op == p.as_str())
            {
                r.action = (*op).to_owned();
            }
        }
    });
    next.run(req).await
}

fn actor(id: &Identity) -> String {
    match id {
        Identity::Tenant { project_id, .. } => format!("tenant:{project_id}"),
        Identity::Operator => "operator".to_owned(),
        Identity::Agent { node } => format!("agent:{node}"),
        Identity::Anonymous => "anonymous".to_owned(),
    }
}

/// Writes the audit row of the current request into `tx`, right before it commits.
pub(super) async fn record(st: &AppState, tx: &mut WriteTx) -> crate::store::Result<bool> {
    let Ok(Some(mut r)) = AUDIT.try_with(|ctx| ctx.lock().ok().map(|c| c.record.clone())) else {
        // Not a request's write.
        return Ok(false);
    };
    let now = Utc::now();
    r.at = audit_time(now);
    r.resources = tx
        .touched_objects()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    if r.project_id.is_empty()
        && let Some((_, p)) = tx.touched_objects().iter().find(|(_, p)| !p.is_empty())
    {
        r.project_id = p.clone();
    }
    r.result = "ok".to_owned();
    r.status = 200;
    let before = (st.config.audit_retain_days > 0)
        .then(|| audit_time(now - chrono::Days::new(st.config.audit_retain_days)));
    tx.audit(&r, before.as_deref()).await?;
    Ok(true)
}

/// After the commit: the row is written, the outer layer writes none.
pub(super) fn committed() {
    let _ = AUDIT.try_with(|ctx| {
        if let Ok(mut c) = ctx.lock() {
            c.recorded = true;
        }
    });
}

/// `since` (RFC 3339) and `limit` (1-1000, default 100) of the audit lists.
fn query(q: &HashMap<String, String>, project_id: Option<String>) -> ApiResult<AuditQuery> {
    let since = q
        .get("since")
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| audit_time(t.with_timezone(&Utc)))
                .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time"))
        })
        .transpose()?;
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be an integer 1-{MAX_LIMIT}"))
            })?,
    };
    Ok(AuditQuery {
        project_id,
        since,
        limit,
    })
}

/// The tenant's own project's records (the path project, checked by authentication).
pub async fn list_project(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AuditRecords>> {
    let q = query(&super::query_map(raw), Some(caller.project_id))?;
    let audit_records = st.store.audit_records(&q).await?;
    Ok(Json(AuditRecords { audit_records }))
}

/// Every project's records, or one's (`project_id`): the operator's.
pub async fn list_all(
    State(st): State<AppState>,
    Extension(who): Extension<Identity>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AuditRecords>> {
    who.operator()?;
    let m = super::query_map(raw);
    let project = m.get("project_id").cloned();
    let q = query(&m, project)?;
    let audit_records = st.store.audit_records(&q).await?;
    Ok(Json(AuditRecords { audit_records }))
}
