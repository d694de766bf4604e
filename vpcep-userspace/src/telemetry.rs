//! Logging set-up shared by every subcommand.
use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields), for log collectors.
    Json,
}

/// Logs go to stderr (stdout is for what a command prints); `RUST_LOG` picks the filter,
/// `info` when unset.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = match format {
        // Colour codes are noise in a file or a journal; NO_COLOR is honoured as well.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
