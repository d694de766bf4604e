//! The one API error type: a status code plus the reference API's `{"error_code","error_msg"}`.
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, path::ErrorKind, rejection::PathRejection},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::strict::Strict;
use crate::{domain::Error, store::StoreError};

/// Error codes (documented in `docs/api.md`).
pub mod code {
    pub const BAD_JSON: &str = "VPCEP.0001";
    pub const INVALID_FIELD: &str = "VPCEP.0002";
    pub const MISSING_BODY: &str = "VPCEP.0003";
    pub const QUOTA: &str = "VPCEP.0004";
    pub const UNAUTHORIZED: &str = "VPCEP.0401";
    pub const FORBIDDEN: &str = "VPCEP.0403";
    pub const NOT_FOUND: &str = "VPCEP.0404";
    pub const METHOD: &str = "VPCEP.0405";
    pub const CONFLICT: &str = "VPCEP.0409";
    pub const TOO_LARGE: &str = "VPCEP.0413";
    pub const TOO_MANY: &str = "VPCEP.0429";
    pub const INTERNAL: &str = "VPCEP.0500";
}

/// A domain error, or a request the API could not read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("request body is not valid JSON for this operation: {0}")]
    BadJson(String),
    #[error("request body is required")]
    MissingBody,
    #[error("request body is too large")]
    TooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Refused by a request limit ([`super::limits`]) before any work: 429 with
    /// `Retry-After` (whole seconds, at least 1).
    #[error("{what}: retry after {retry_after} s")]
    Limited {
        what: &'static str,
        retry_after: u64,
    },
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Domain(Error::Internal(e))
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::invalid(field, msg).into()
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::not_found(what).into()
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadJson(_) | Self::MissingBody => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Domain(e) => match e {
                Error::Invalid { .. } | Error::Quota(_) => StatusCode::BAD_REQUEST,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    pub fn error_code(&self) -> &'static str {
        match self {
            Self::BadJson(_) => code::BAD_JSON,
            Self::MissingBody => code::MISSING_BODY,
            Self::TooLarge => code::TOO_LARGE,
            Self::MethodNotAllowed => code::METHOD,
            Self::Limited { .. } => code::TOO_MANY,
            Self::Domain(e) => match e {
                Error::Invalid { .. } => code::INVALID_FIELD,
                Error::Quota(_) => code::QUOTA,
                Error::Unauthorized(_) => code::UNAUTHORIZED,
                Error::Forbidden(_) => code::FORBIDDEN,
                Error::NotFound(_) => code::NOT_FOUND,
                Error::Conflict(_) => code::CONFLICT,
                Error::Internal(_) => code::INTERNAL,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Domain(Error::Internal(e)) = &self {
            // Logged with its cause chain; the client only learns that it failed.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(error = %msg, "request failed");
        }
        let body = serde_json::json!({
            "error_code": self.error_code(),
            "error_msg": self.to_string(),
        });
        let mut resp = (self.status_code(), Json(body)).into_response();
        if let Self::Limited { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body: empty → 400, oversized → 413, malformed or mistyped (an array or a scalar
/// where an object is expected included) → 400 naming the field.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadJson(e.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::MissingBody);
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(Strict(de)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ApiError::BadJson(inner.to_string())
            } else {
                ApiError::BadJson(format!("{path}: {inner}"))
            }
        })?;
        Ok(Body(value))
    }
}

/// Path parameters. A segment that does not decode to UTF-8 is a malformed id: 404 in the
/// error shape, like any other (axum's own rejection is a text/plain 400).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => Err(ApiError::not_found(key.clone())),
                _ => Err(ApiError::not_found("resource")),
            },
            Err(_) => Err(ApiError::not_found("resource")),
        }
    }
}
