//! `vpcep`: one binary for the node-local data-plane tools (and, later, the control plane,
//! agent and tenant CLI).
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vpcep::dataplane::{Dataplane, Mode};

#[derive(Parser)]
#[command(
    name = "vpcep",
    version,
    about = "VPC endpoint service: control plane, node agent and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node-local data-plane tools.
    #[command(subcommand)]
    Dataplane(DataplaneCmd),
}

#[derive(Subcommand)]
enum DataplaneCmd {
    /// Load the programs onto an interface for development, print live counters every
    /// second, and detach on Ctrl-C.
    Run {
        /// Interface to attach to (host side of a VM NIC).
        #[arg(long)]
        iface: String,
        /// Hook to attach.
        #[arg(long, value_enum, default_value_t = Mode::Tc)]
        mode: Mode,
        /// Stop after this many seconds (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    vpcep::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Dataplane(DataplaneCmd::Run {
            iface,
            mode,
            duration,
        }) => run(&iface, mode, duration).await,
    }
}

async fn run(iface: &str, mode: Mode, duration: u64) -> anyhow::Result<()> {
    let mut dp = Dataplane::load().context("loading the eBPF programs (are you root?)")?;
    dp.attach(iface, mode).with_context(|| {
        format!("attaching to {iface} in {mode:?} mode; does the interface exist?")
    })?;
    println!("attached to {iface} ({mode:?}); Ctrl-C detaches");
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
    println!("detached from {iface}");
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
