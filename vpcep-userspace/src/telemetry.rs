//! Logging set-up shared by every subcommand.
use tracing_subscriber::{EnvFilter, fmt};

/// `RUST_LOG` picks the filter; `info` when unset.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
}
