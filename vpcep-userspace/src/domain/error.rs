//! The one error of the product's rules; the API maps each variant to a status and code.
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field has a bad value; the message names the field.
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(#[from] StoreError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
