//! vpcep userspace: the library behind the `vpcep` binary (control plane, node agent,
//! command-line tool and the loader for the kernel programs).

pub mod dataplane;
pub mod telemetry;
