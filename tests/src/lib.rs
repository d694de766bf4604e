//! Fixtures shared by the integration tests: packet builders, raw-socket senders and the
//! kernel-test preconditions.
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
