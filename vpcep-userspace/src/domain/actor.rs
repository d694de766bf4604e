//! Who acts: the identity a request authenticated as, and the tenant a call acts for.
use super::error::{Error, Result};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Tenant {
        project_id: String,
        domain_id: String,
    },
    Operator,
    Agent {
        node: String,
    },
    Anonymous,
}

/// The tenant a v1/v2 request acts for (the path project, checked against the identity).
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: String,
    pub domain_id: String,
    pub operator: bool,
}

fn anonymous() -> Error {
    Error::Unauthorized("credentials are required".to_owned())
}

impl Identity {
    /// Operator scope.
    pub fn operator(&self) -> Result<()> {
        match self {
            Self::Operator => Ok(()),
            Self::Anonymous => Err(anonymous()),
            _ => Err(Error::Forbidden("operator scope required".to_owned())),
        }
    }

    /// Reads of the inventory and the feed: the operator or any agent.
    pub fn reader(&self) -> Result<()> {
        match self {
            Self::Operator | Self::Agent { .. } => Ok(()),
            Self::Anonymous => Err(anonymous()),
            Self::Tenant { .. } => Err(Error::Forbidden(
                "operator or agent scope required".to_owned(),
            )),
        }
    }

    /// Writes about one node: the operator or that node's agent.
    pub fn node_writer(&self, node: &str) -> Result<()> {
        match self {
            Self::Agent { node: n } if n == node => Ok(()),
            Self::Agent { .. } => Err(Error::Forbidden(
                "an agent may only change its own node".to_owned(),
            )),
            other => other.operator(),
        }
    }
}
