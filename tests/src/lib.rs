//! Fixtures shared by the integration tests: packet builders, raw-socket senders and the
//! kernel-test preconditions.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

pub mod fastpath;
pub mod packets;
pub mod raw;

/// Fails the test early with a clear message when not root (kernel tests need
/// CAP_BPF/CAP_NET_ADMIN; `cargo xtask test` runs them as root).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests must run as root (use `cargo xtask test`)"
    );
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads, for conntrack timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `vpcep` binary of this build (built once per test run with the same cargo and
/// profile; `VPCEP_CLI_TEST_NO_BUILD=1` uses the one already there).
pub fn vpcep_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = profile_dir.join("vpcep");
        if std::env::var_os("VPCEP_CLI_TEST_NO_BUILD").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "vpcep-userspace",
                "--bin",
                "vpcep",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("running cargo build for the vpcep binary");
            assert!(status.success(), "building the vpcep binary failed");
        }
        assert!(bin.exists(), "{} is missing", bin.display());
        bin
    })
}
