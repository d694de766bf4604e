//! Operations: every rule that reads or writes state, as functions on a write transaction
//! (or, for reads, on the store). The API handlers (and the operator paths of the console
//! and the CLI) call these; a rule is written here once. No HTTP.
pub mod addresses;
pub mod config;
pub mod endpoints;
pub mod inventory;
pub mod permissions;
pub mod quota;
pub mod services;
pub mod tags;

pub use self::config::{Config, RequestLimits};
pub use crate::domain::{Error, Result};
use crate::store::WriteTx;

/// Stamps an updated record with the time and the transaction's revision.
pub(crate) trait Touch {
    fn touch(&mut self, tx: &WriteTx);
}

macro_rules! touch {
    ($($t:ty),*) => {$(
        impl Touch for $t {
            fn touch(&mut self, tx: &WriteTx) {
                self.updated_at = crate::domain::now();
                self.updated_rev = tx.revision();
            }
        }
    )*};
}

touch!(crate::domain::Service, crate::domain::Endpoint);
