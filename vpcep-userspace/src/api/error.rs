//! The one API error type: a status code plus the reference API's `{"error_code","error_msg"}`.
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use crate::store::StoreError;

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
    pub const INTERNAL: &str = "VPCEP.0500";
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field has a bad value; the message names the field.
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    #[error("request body is not valid JSON for this operation: {0}")]
    BadJson(String),
    #[error("request body is required")]
    MissingBody,
    #[error("request body is too large")]
    TooLarge,
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } | Self::BadJson(_) | Self::MissingBody | Self::Quota(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => code::INVALID_FIELD,
            Self::BadJson(_) => code::BAD_JSON,
            Self::MissingBody => code::MISSING_BODY,
            Self::TooLarge => code::TOO_LARGE,
            Self::Quota(_) => code::QUOTA,
            Self::Unauthorized(_) => code::UNAUTHORIZED,
            Self::Forbidden(_) => code::FORBIDDEN,
            Self::NotFound(_) => code::NOT_FOUND,
            Self::MethodNotAllowed => code::METHOD,
            Self::Conflict(_) => code::CONFLICT,
            Self::Internal(_) => code::INTERNAL,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
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
        (self.status_code(), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body: empty → 400, oversized → 413, malformed or mistyped → 400 naming the field.
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
        let value = serde_path_to_error::deserialize(de).map_err(|e| {
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
