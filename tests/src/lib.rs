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
