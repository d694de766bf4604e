//! The capabilities the agent works with, checked before it touches the kernel, so that an
//! agent started without one (a unit or a container with too few) stops with that
//! capability's name instead of an EPERM from deep inside the loader. vpcep-agent.service
//! grants exactly [`REQUIRED`] to an unprivileged user.
use caps::{CapSet, Capability};

use super::config::AgentConfig;

/// What the agent needs, and for what. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (the kernel accepts it for both).
pub const REQUIRED: &[(Capability, &str)] = &[
    (
        Capability::CAP_BPF,
        "to create maps and load and pin programs",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "to attach TC programs (TCX or clsact) and create the overlay's VXLAN device",
    ),
    (
        Capability::CAP_PERFMON,
        "for the verifier to accept the TC programs (without it: `pointer -= pointer prohibited`)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "to reach the pin directory through /sys/fs/bpf, which systemd mounts with mode 0700",
    ),
];

/// A capability the agent lacks, with the reason it needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub capability: Capability,
    pub why: &'static str,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "missing capability {}: needed {}",
            self.capability, self.why
        )
    }
}

/// Capabilities this configuration needs that the process's effective set lacks.
pub fn missing(cfg: &AgentConfig) -> Vec<Missing> {
    let Ok(have) = caps::read(None, CapSet::Effective) else {
        // No capability interface (not Linux): let the kernel answer.
        return Vec::new();
    };
    let admin = have.contains(&Capability::CAP_SYS_ADMIN);
    let mut out: Vec<Missing> = REQUIRED
        .iter()
        .filter(|(c, _)| !have.contains(c))
        .filter(|(c, _)| !(admin && matches!(c, Capability::CAP_BPF | Capability::CAP_PERFMON)))
        // Search permission through the pin directory's parents makes the capability moot.
        .filter(|(c, _)| *c != Capability::CAP_DAC_READ_SEARCH || !searchable(&cfg.pin_dir))
        .map(|&(capability, why)| Missing { capability, why })
        .collect();
    if cfg.netns.is_some() && !admin {
        out.push(Missing {
            capability: Capability::CAP_SYS_ADMIN,
            why: "to enter the network namespace named by `netns`",
        });
    }
    out
}

/// Whether every existing ancestor of `dir` grants this user search permission by its
/// mode bits alone (what a process without CAP_DAC_READ_SEARCH gets).
fn searchable(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    dir.ancestors().skip(1).all(|p| match std::fs::metadata(p) {
        Ok(m) => {
            let bits = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            m.mode() & bits != 0
        }
        Err(_) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_capability_is_named_with_its_reason() {
        let m = Missing {
            capability: Capability::CAP_BPF,
            why: REQUIRED[0].1,
        };
        assert_eq!(
            m.to_string(),
            "missing capability CAP_BPF: needed to create maps and load and pin programs"
        );
    }

    #[test]
    fn the_root_directory_is_searchable() {
        assert!(searchable(std::path::Path::new("/tmp/x")));
    }
}
