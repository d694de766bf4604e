//! The `vpcep` command-line tool: tenant and operator verbs over the HTTP API.
//!
//! The binary only parses arguments ([`ApiCommand`]) and calls [`run`], which prints the result
//! and returns the process exit status (see [`exit`]).
use std::time::Duration;

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod output;

pub use args::{ApiCommand, GlobalArgs};
pub use client::{Auth, Client};
pub use config::{Profile, Settings};
pub use output::Format;

/// Exit statuses (documented in `docs/cli.md`).
pub mod exit {
    pub const OK: i32 = 0;
    /// An API error without a more specific status, a network error, a failed `--wait`.
    pub const ERROR: i32 = 1;
    /// Bad arguments (what clap uses for its own usage errors).
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    /// 401 or 403: missing, unknown or insufficient credentials.
    pub const AUTH: i32 = 4;
    pub const CONFLICT: i32 = 5;
    /// Unreadable or invalid profile file, unknown profile, no URL or credentials.
    pub const CONFIG: i32 = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error body.
    #[error("{code}: {message} (HTTP {status}{})", api_note(request_id.as_deref(), credential.as_deref()))]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        /// On 401 and 403: which credential was sent and where it came from.
        credential: Option<String>,
    },
    #[error("cannot reach the API at {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the API answered something that is not the expected JSON")]
    BadResponse(#[source] serde_json::Error),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("{0}")]
    Failed(String),
    #[error("cannot write the output")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Api { status, .. } => match status {
                401 | 403 => exit::AUTH,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                _ => exit::ERROR,
            },
            Self::Config(_) => exit::CONFIG,
            Self::Usage(_) => exit::USAGE,
            Self::Http { .. }
            | Self::BadResponse(_)
            | Self::Timeout { .. }
            | Self::Failed(_)
            | Self::Io(_) => exit::ERROR,
        }
    }
}

/// The end of an API error's parenthesis: the request id, then the credential used.
fn api_note(request_id: Option<&str>, credential: Option<&str>) -> String {
    let mut note = request_id
        .map(|r| format!(", request {r}"))
        .unwrap_or_default();
    if let Some(c) = credential {
        note.push_str("; ");
        note.push_str(c);
    }
    note
}

pub type CliResult<T> = Result<T, CliError>;

/// Runs one API command: resolves the settings (flags, environment, profile file), calls the
/// API, prints the result on stdout and any error on stderr; returns the exit status.
pub async fn run(cmd: ApiCommand) -> i32 {
    let global = cmd.global().clone();
    let result = async {
        let settings = Settings::resolve(&global, &config::Env::from_process())?;
        if global.verbose {
            eprintln!("credentials: {}", settings.credential);
        }
        let client = Client::new(&settings, Duration::from_secs(global.request_timeout))?
            .verbose(global.verbose);
        commands::execute(&client, cmd).await
    }
    .await;
    match result.and_then(|out| out.print(global.output)) {
        Ok(()) => exit::OK,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            if let Some(h) = crate::tls::hint(&msg) {
                msg.push_str(h);
            }
            eprintln!("{msg}");
            e.exit_code()
        }
    }
}

/// Writes a completion script for `shell` of the whole `vpcep` command to stdout.
pub fn completions(shell: clap_complete::Shell, cmd: &mut clap::Command) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, cmd, name, &mut std::io::stdout());
}
