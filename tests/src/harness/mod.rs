//! Helpers shared by the integration tests, each written once: temporary and bpffs
//! directories, free ports, polling with a timeout, the child-process guard, the root check,
//! a throwaway PostgreSQL server, the in-process control plane, and the agent tests' world.
use std::net::TcpListener;

pub mod agent;
pub mod control_plane;
pub mod fs;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod root;
pub mod wait;

pub use control_plane::{ControlPlane, Db, test_config};
pub use fs::TempDir;
pub use pki::Pki;
pub use postgres::Postgres;
pub use process::{ChildGuard, spawn_guarded};
pub use wait::{eventually, poll, wait_for};

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
