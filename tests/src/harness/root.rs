//! Tests that load BPF programs or create network namespaces need root (CAP_BPF,
//! CAP_NET_ADMIN); as another user they skip, so that a plain `cargo test` runs the rest.

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints why the calling test is skipped (the test thread is named after the test).
pub fn skip_message() {
    let thread = std::thread::current();
    eprintln!(
        "skipped: {} needs root (BPF programs, network namespaces); run it as root or with `cargo xtask test`",
        thread.name().unwrap_or("this test")
    );
}

/// Returns from the calling test, with a message, when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::harness::root::is_root() {
            $crate::harness::root::skip_message();
            return;
        }
    };
}
