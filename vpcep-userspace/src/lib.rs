//! vpcep userspace: the library behind the `vpcep` binary (control plane, node agent,
//! command-line tool and the loader for the kernel programs). The layers are described in
//! `docs/architecture.md` ("Userspace layers").

pub mod agent;
pub mod api;
pub mod cli;
pub mod dataplane;
pub mod domain;
pub mod feed;
pub mod ops;
pub mod server;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tls;
