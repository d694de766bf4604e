//! `vpcep`: one binary for the node-local data-plane tools, the control plane and the tenant
//! and operator CLI (`vpcep::cli`).
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vpcep::dataplane::{Dataplane, Mode, TcAttach, config::MapConfig};

#[derive(Parser)]
#[command(
    name = "vpcep",
    version,
    about = "VPC endpoint service: control plane, node agent and CLI"
)]
struct Cli {
    /// Log lines as text (coloured only on a terminal) or as one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "VPCEP_LOG_FORMAT"
    )]
    log_format: vpcep::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; size does not matter
enum Command {
    /// Node-local data-plane tools.
    #[command(subcommand)]
    Dataplane(DataplaneCmd),
    /// Serve the VPCEP API, the inventory API and the agents' change feed.
    ControlPlane(vpcep::server::ControlPlaneArgs),
    /// Run the node agent: follow the control plane and keep this node's maps in sync.
    Agent {
        /// Node configuration (TOML; docs/agent.md).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Put this binary's programs into the existing attachments (in place, no gap).
        #[arg(long)]
        reload: bool,
    },
    /// A development CA, the control plane's certificate and the agents' node certificates.
    #[command(subcommand)]
    Pki(vpcep::tls::pki::PkiCmd),
    /// Tokens for the credentials file, stored hashed.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    #[command(flatten)]
    Api(vpcep::cli::ApiCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum CredentialsCmd {
    /// Print a new random token, its hashed form for the credentials file, and its id.
    NewToken,
    /// Read a token from stdin (one line) and print its hashed form.
    HashToken,
}

#[derive(Subcommand)]
enum DataplaneCmd {
    /// Load the programs onto an interface for development, print live counters every
    /// second, and detach on Ctrl-C.
    Run {
        /// Interface to attach to (host side of a VM NIC); repeatable. With --config, every
        /// NIC and backend interface it names is attached as well.
        #[arg(long)]
        iface: Vec<String>,
        /// Fill the maps from this TOML file (node, NICs, services, endpoints).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Hook to attach.
        #[arg(long, value_enum, default_value_t = Mode::Tc)]
        mode: Mode,
        /// How TC programs attach: TCX (Linux ≥ 6.6), netlink (clsact + cls_bpf), or auto.
        #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
        tc_attach: TcAttach,
        /// Stop after this many seconds (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
    /// Take this node's data plane down: remove our TC filters from every interface of this
    /// network namespace and the pin directory (maps, links, programs). Stop the agent
    /// first; the package's removal runs this.
    Detach {
        /// The agent's pin directory.
        #[arg(long, default_value = "/sys/fs/bpf/vpcep")]
        pin_dir: std::path::PathBuf,
    },
    /// Verdict counters of this node, from the maps the agent pinned.
    Stats(PinnedArgs),
    /// Endpoints programmed on this node, with their state and counters.
    Endpoints(PinnedArgs),
    /// Tracked flows on this node: consumer → endpoint, SNAT → backend, state, idle time.
    Flows {
        #[command(flatten)]
        pinned: PinnedArgs,
        /// Show at most this many flows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(clap::Args)]
struct PinnedArgs {
    /// The agent's pin directory.
    #[arg(long, default_value = "/sys/fs/bpf/vpcep")]
    pin_dir: std::path::PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = vpcep::cli::output::Format::Table)]
    output: vpcep::cli::output::Format,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The API verbs own stdout and report their own errors and exit status (docs/cli.md).
    match cli.command {
        Command::Api(cmd) => std::process::exit(vpcep::cli::run(cmd).await),
        Command::Pki(cmd) => {
            if let Err(e) = vpcep::tls::pki::run(&cmd) {
                eprintln!("error: {}", vpcep::tls::chain(&e));
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Credentials(cmd) => {
            credentials(cmd)?;
            return Ok(());
        }
        Command::Completions { shell } => {
            vpcep::cli::completions(shell, &mut <Cli as clap::CommandFactory>::command());
            return Ok(());
        }
        _ => {}
    }
    vpcep::telemetry::init(cli.log_format);
    match cli.command {
        Command::Dataplane(DataplaneCmd::Run {
            iface,
            config,
            mode,
            tc_attach,
            duration,
        }) => run(iface, config, mode, tc_attach, duration).await,
        Command::ControlPlane(args) => match vpcep::server::run(args).await {
            // Invalid configuration: EX_CONFIG-style exit with the cause (which names the field).
            Err(
                e @ (vpcep::server::ServeError::Credentials(_)
                | vpcep::server::ServeError::Tls(_)
                | vpcep::server::ServeError::PlainHttp(_)),
            ) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                std::process::exit(64)
            }
            r => r.context("running the control plane"),
        },
        Command::Agent { config, reload } => agent(config, reload).await,
        Command::Dataplane(DataplaneCmd::Detach { pin_dir }) => {
            let d = vpcep::dataplane::detach::detach_all(&pin_dir)
                .context("taking the data plane down")?;
            for f in &d.filters {
                println!("removed the TC filter {f}");
            }
            if d.pins {
                println!("removed {}", pin_dir.display());
            }
            Ok(())
        }
        Command::Dataplane(DataplaneCmd::Stats(a)) => view(&a, "stats", 0),
        Command::Dataplane(DataplaneCmd::Endpoints(a)) => view(&a, "endpoints", 0),
        Command::Dataplane(DataplaneCmd::Flows { pinned, limit }) => view(&pinned, "flows", limit),
        Command::Api(_)
        | Command::Pki(_)
        | Command::Credentials(_)
        | Command::Completions { .. } => Ok(()),
    }
}

async fn agent(path: std::path::PathBuf, reload: bool) -> anyhow::Result<()> {
    // A control-plane-only build (AYA_BUILD_SKIP=1): say so before anything else fails.
    if vpcep::dataplane::object().is_empty() {
        eprintln!("error: {}", vpcep::dataplane::DataplaneError::NoObject);
        std::process::exit(64);
    }
    let mut cfg = match vpcep::agent::AgentConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    };
    let missing = vpcep::agent::privileges::missing(&cfg);
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("error: {m}");
        }
        // EX_NOPERM: the unit's RestartPreventExitStatus; restarting will not help.
        std::process::exit(77);
    }
    if reload {
        eprintln!(
            "--reload: the newly loaded programs replace the attached ones in place; flows in \
             maps of a replaced layout are lost"
        );
        cfg.reload = true;
    }
    // Ctrl-C or SIGTERM stop the agent; pins and links stay, so traffic goes on.
    let shutdown = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut t) => {
                    t.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    };
    vpcep::agent::run(cfg, shutdown)
        .await
        .context("running the agent (are you root? is bpffs mounted?)")
}

/// Node-local views of the pinned maps (read-only).
fn view(a: &PinnedArgs, what: &str, limit: usize) -> anyhow::Result<()> {
    use vpcep::{cli::output::Output, dataplane::pinned};
    type Cols = &'static [(&'static str, &'static str)];
    let (items, columns): (Vec<serde_json::Value>, Cols) = match what {
        "stats" => (
            to_values(pinned::stats(&a.pin_dir)?)?,
            &[
                ("HOOK", "hook"),
                ("REASON", "reason"),
                ("DROP", "drop"),
                ("PACKETS", "packets"),
                ("BYTES", "bytes"),
            ],
        ),
        "endpoints" => (
            to_values(pinned::endpoints(&a.pin_dir)?)?,
            &[
                ("ID", "id"),
                ("VPC", "vpc"),
                ("IP", "ip"),
                ("SERVICE", "service"),
                ("ACCEPTED", "accepted"),
                ("PERMITTED", "permitted"),
                ("PACKETS", "packets"),
                ("BYTES", "bytes"),
                ("NEW_FLOWS", "new_flows"),
                ("DROPS", "drops"),
            ],
        ),
        _ => (
            to_values(pinned::flows(&a.pin_dir, limit)?)?,
            &[
                ("PROTO", "proto"),
                ("CONSUMER", "consumer"),
                ("ENDPOINT", "endpoint"),
                ("SNAT", "snat"),
                ("BACKEND", "backend"),
                ("STATE", "state"),
                ("IDLE_S", "idle_secs"),
            ],
        ),
    };
    Output::List { items, columns }
        .print(a.output)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn to_values<T: serde::Serialize>(rows: Vec<T>) -> anyhow::Result<Vec<serde_json::Value>> {
    rows.into_iter()
        .map(|r| serde_json::to_value(r).map_err(Into::into))
        .collect()
}

async fn run(
    mut ifaces: Vec<String>,
    config: Option<std::path::PathBuf>,
    mode: Mode,
    tc_attach: TcAttach,
    duration: u64,
) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => match MapConfig::load(&path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(64);
            }
        },
        None => None,
    };
    if let Some(c) = &config {
        for i in c.interfaces() {
            if !ifaces.contains(&i) {
                ifaces.push(i);
            }
        }
    }
    if ifaces.is_empty() {
        anyhow::bail!("nothing to attach to: give --iface or a --config with NICs");
    }
    let mut dp = Dataplane::load().context("loading the eBPF programs (are you root?)")?;
    dp.set_tc_attach(tc_attach);
    if let Some(Err(e)) = config.as_ref().map(|c| c.apply(&mut dp)) {
        eprintln!("error: {e}");
        std::process::exit(64);
    }
    for iface in &ifaces {
        dp.attach(iface, mode).with_context(|| {
            format!("attaching to {iface} in {mode:?} mode; does the interface exist?")
        })?;
    }
    if let Some(o) = config.as_ref().and_then(|c| c.overlay.as_ref()) {
        dp.attach_tunnel(&o.device)
            .with_context(|| format!("attaching to the overlay device {}", o.device))?;
        ifaces.push(format!("{} (overlay)", o.device));
    }
    println!(
        "attached to {} ({mode:?}); Ctrl-C detaches",
        ifaces.join(", ")
    );
    let deadline =
        (duration > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(duration));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                print_stats(&dp)?;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    drop(dp);
    println!("detached from {}", ifaces.join(", "));
    Ok(())
}

fn print_stats(dp: &Dataplane) -> anyhow::Result<()> {
    let stats = dp.stats()?;
    println!(
        "{:<12} {:<20} {:>12} {:>14}",
        "hook", "reason", "packets", "bytes"
    );
    for ((hook, reason), c) in &stats {
        println!("{hook:<12} {reason:<20} {:>12} {:>14}", c.packets, c.bytes);
    }
    if stats.is_empty() {
        println!("(no packets yet)");
    }
    println!();
    Ok(())
}

fn credentials(cmd: CredentialsCmd) -> anyhow::Result<()> {
    use vpcep::api::{auth::token_id, hashed};
    match cmd {
        CredentialsCmd::NewToken => {
            let token = hashed::new_token();
            println!("token  = \"{token}\"   # give this to the caller");
            println!(
                "stored = \"{}\"   # put this in credentials.toml",
                hashed::hash(&token)
            );
            println!(
                "id     = \"{}\"   # how logs and the audit name it",
                token_id(&token)
            );
        }
        CredentialsCmd::HashToken => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the token from stdin")?;
            let token = line.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                eprintln!("error: no token on stdin");
                std::process::exit(2);
            }
            println!("{}", hashed::hash(token));
        }
    }
    Ok(())
}
