//! vpcep userspace: the library behind the `vpcep` binary (control plane, node agent,
//! command-line tool and the loader for the kernel programs).

pub mod agent;
pub mod api;
pub mod cli;
pub mod dataplane;
pub mod feed;
pub mod store;
pub mod telemetry;
