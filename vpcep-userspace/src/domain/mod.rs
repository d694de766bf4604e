//! The product's domain: the stored records, their lifecycle states, and the rules on
//! fields, CIDRs and permissions. No HTTP and no SQL: the API, the operations and the agent
//! all build on this.
pub mod actor;
pub mod audience;
pub mod cidr;
pub mod dns;
pub mod error;
pub mod records;
pub mod rules;
pub mod status;

pub use self::{
    actor::{Caller, Identity},
    audience::Audience,
    cidr::*,
    error::{Error, Result},
    records::*,
    rules::*,
    status::{EndpointStatus, ServiceStatus},
};
