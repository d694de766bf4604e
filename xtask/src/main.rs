//! `cargo xtask <command>`: everything needed to set up, build, run and test vpcep.
mod bench;
mod contract;
mod demo;
mod package;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use xtask::netns::{NetNs, PREFIX};

use crate::bench::BenchKind;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vpcep development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Xdp,
    Tc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (Debian packages, pinned nightly with rust-src,
    /// bpf-linker, the aarch64 target); skips what is already there.
    Setup,
    /// Build the eBPF object (bpfel) with the pinned nightly.
    BuildEbpf,
    /// Release build of the userspace binary (with the eBPF object embedded).
    Build {
        /// Cross-build for aarch64 (Kunpeng) instead of the host.
        #[arg(long)]
        aarch64: bool,
    },
    /// The whole story on this machine (root): control plane, a node with a consumer VM
    /// and a backend VM in namespaces, an agent, then service, endpoint, accept and reject
    /// through the `vpcep` CLI, each outcome checked. Cleans up unless --keep.
    Demo {
        /// Leave everything running and print how to try commands by hand.
        #[arg(long)]
        keep: bool,
        /// Stop what earlier `--keep` runs left running.
        #[arg(long, conflicts_with_all = ["keep", "debug"])]
        stop: bool,
        /// Use the debug build instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Data plane only: build, load the programs onto an interface, print live counters;
    /// Ctrl-C detaches.
    Run {
        /// Interface to attach to; repeatable.
        #[arg(long)]
        iface: Vec<String>,
        /// Map contents (TOML; see vpcep-userspace/src/dataplane/config.rs).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "tc")]
        mode: Mode,
        /// Stop after this many seconds (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
    /// The API contract stage alone: schemathesis (all checks, bounded examples, fixed seed)
    /// against the release control plane, as a tenant and as the operator.
    Contract,
    /// The whole suite: formatting and clippy, unit, privileged kernel and namespace tests,
    /// the official SDK, the API contract (schemathesis), the demo, and the aarch64 cross-build with its unit tests under
    /// qemu-user.
    Test {
        /// Skip the aarch64 cross-build and qemu tests.
        #[arg(long)]
        no_aarch64: bool,
        /// Skip the stages that boot Debian's kernels in qemu.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (release builds, root): `hooks`, `dataplane` (ns/packet through
    /// BPF_PROG_TEST_RUN next to a no-op program), `convergence`, `api` (requests/s and
    /// latency on SQLite and PostgreSQL), or `all`. Don't run them while something else is
    /// building.
    Bench {
        #[arg(value_enum, default_value = "all")]
        what: BenchKind,
        /// Runs of the traffic benchmarks (hooks, e2e, overlay, flood); default 3, or
        /// VPCEP_E2E_RUNS (e2e, overlay) and VPCEP_FLOOD_RUNS (flood).
        #[arg(long)]
        runs: Option<u64>,
        /// Seconds of each of their measures; default 5 for hooks and 3 for the others, or
        /// VPCEP_E2E_SECS and VPCEP_FLOOD_SECS.
        #[arg(long)]
        secs: Option<u64>,
        /// One run of 1-second measures: checks that a traffic benchmark builds its
        /// topology, passes traffic and cleans up (the figures mean little).
        #[arg(long, conflicts_with_all = ["runs", "secs"])]
        quick: bool,
    },
    /// Formatting check and clippy with -D warnings: the host crates (and the dataplane
    /// bench with its `bench` feature), then the eBPF crate for the bpf target in its own
    /// passes, without and with that feature.
    Lint,
    /// Boot Debian's own kernel in qemu (TCG) and run the kernel tiers there (root): 6.1 on
    /// x86_64, and Debian's arm64 kernel with the aarch64 build.
    Vm {
        #[arg(value_enum, default_value = "all")]
        arch: VmArch,
    },
    /// Debian packages (cargo-deb) in target/packages/: the release binary, the systemd units
    /// and the default configuration (docs/packaging.md); then lintian and
    /// `systemd-analyze verify` on each.
    Package {
        /// Also the arm64 package, from the aarch64 cross-build.
        #[arg(long)]
        aarch64: bool,
        /// Package version instead of the workspace's (e.g. 0.1.0-2).
        #[arg(long)]
        deb_version: Option<String>,
    },
    /// Create or destroy a network namespace by hand (tests use the library guards).
    #[command(subcommand)]
    Netns(NetnsCmd),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VmArch {
    X86_64,
    Arm64,
    All,
}

#[derive(Subcommand)]
enum NetnsCmd {
    /// Create a namespace named vpcep-<name> with loopback up and print its name.
    Create { name: String },
    /// Delete a namespace created by `create` (only vpcep-* names are accepted).
    Destroy { name: String },
    /// List vpcep-* namespaces.
    List,
}

fn main() {
    if let Err(e) = run_cli(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Build { aarch64 } => build(aarch64),
        Cmd::Run {
            iface,
            config,
            mode,
            duration,
        } => run(&iface, config.as_deref(), mode, duration),
        Cmd::Demo { stop: true, .. } => demo::stop(),
        Cmd::Demo { keep, debug, .. } => demo::run(&demo::Options {
            keep,
            release: !debug,
        }),
        Cmd::Test {
            no_aarch64,
            no_vm,
            args,
        } => test(no_aarch64, no_vm, &args),
        Cmd::Vm { arch } => vm_stages(arch),
        Cmd::Contract => {
            build(false)?;
            contract::stage()
        }
        Cmd::Lint => lint(),
        Cmd::Package {
            aarch64,
            deb_version,
        } => package::run(aarch64, deb_version.as_deref()).map(|_| ()),
        Cmd::Bench {
            what,
            runs,
            secs,
            quick,
        } => bench::run(
            what,
            &bench::Options {
                runs: runs.or(quick.then_some(1)),
                secs: secs.or(quick.then_some(1)),
            },
        ),
        Cmd::Netns(cmd) => netns(cmd),
    }
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` if set (relative to the workspace
/// root, where cargo runs), else `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace_root().join("target"),
        |d| workspace_root().join(d),
    )
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command from the workspace root, echoing it, failing on non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}").replace('"', "");
    println!("==> {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command from the workspace root, echoing it; its standard output, failing on
/// non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}").replace('"', "");
    println!("==> {shown}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build_ebpf() -> Result<()> {
    setup::ensure()?;
    sh(Command::new("rustup")
        .args([
            "run",
            setup::NIGHTLY,
            "cargo",
            "build",
            "--package",
            "vpcep-ebpf",
        ])
        .args([
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    println!(
        "eBPF object: {}",
        target_dir()
            .join("bpfel-unknown-none/release/vpcep")
            .display()
    );
    Ok(())
}

fn build(aarch64: bool) -> Result<()> {
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--package", "vpcep-userspace"]);
    if aarch64 {
        cmd.args(["--target", "aarch64-unknown-linux-gnu"]);
    }
    sh(&mut cmd)
}

fn run(ifaces: &[String], config: Option<&Path>, mode: Mode, duration: u64) -> Result<()> {
    build(false)?;
    let mode = match mode {
        Mode::Xdp => "xdp",
        Mode::Tc => "tc",
    };
    let mut cmd = Command::new(target_dir().join("release/vpcep"));
    cmd.args([
        "dataplane",
        "run",
        "--mode",
        mode,
        "--duration",
        &duration.to_string(),
    ]);
    for i in ifaces {
        cmd.args(["--iface", i]);
    }
    if let Some(c) = config {
        // The binary runs from the workspace root; make a relative path absolute first.
        let c = std::path::absolute(c).unwrap_or_else(|_| c.to_path_buf());
        cmd.arg("--config").arg(c);
    }
    sh(&mut cmd)
}

/// The qemu stages, each timed.
fn vm_stages(arch: VmArch) -> Result<()> {
    setup::ensure()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the guests load BPF programs and create namespaces, and qemu exports / over 9p: run as root"
        );
    }
    if arch != VmArch::Arm64 {
        stage("vm x86_64", vm::stage_x86_64)?;
    }
    if arch != VmArch::X86_64 {
        stage("vm arm64", vm::stage_arm64)?;
    }
    Ok(())
}

/// Runs one stage of `cargo xtask test` and prints how long it took (docs/development.md
/// keeps these figures).
fn stage(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    f()?;
    println!("stage {name}: {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn test(no_aarch64: bool, no_vm: bool, args: &[String]) -> Result<()> {
    let started = Instant::now();
    stage("setup", setup::ensure)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel tests load BPF programs and create network namespaces: run as root");
    }
    setup::ensure_bpffs()?;
    // Formatting and lints first, so that CI (which runs only this command) checks them too;
    // a run with a test filter is a developer's quick loop and skips them.
    if args.is_empty() {
        stage("lint", lint)?;
    }
    // One profile for every stage: the release build the packages ship is the one the tests,
    // the demo and the guests run, so each architecture's dependencies compile once.
    stage("build and test", || {
        sh(cargo()
            .args(["test", "--release", "--workspace", "--no-fail-fast"])
            .args(args))
    })?;
    if args.is_empty() {
        // The official SDK, unchanged, against the API server; `--workspace` as above, for
        // the same feature resolution (nothing to rebuild).
        stage("sdk", || {
            sh(cargo()
                .args(["test", "--release", "--workspace", "--test", "api"])
                .args(["official_python_sdk", "--", "--ignored"])
                .env("VPCEP_SDK_PYTHON", setup::sdk_python()))
        })?;
        // The API contract: schemathesis against the binary the tests just built.
        stage("contract", contract::stage)?;
        // The demo, non-interactive, on the binary the tests just built.
        stage("demo", || {
            println!("==> cargo xtask demo (release build)");
            demo::run(&demo::Options {
                keep: false,
                release: true,
            })
        })?;
    }
    if !no_aarch64 {
        stage("aarch64", test_aarch64)?;
    }
    if args.is_empty() {
        stage("package", || package::stage(!no_aarch64))?;
    }
    // Other kernels: a developer's filtered run skips them, like the SDK and demo stages.
    if !no_vm && args.is_empty() {
        vm_stages(if no_aarch64 {
            VmArch::X86_64
        } else {
            VmArch::All
        })?;
    }
    println!(
        "xtask test: all stages passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Cross-builds the userspace for aarch64 and runs its unit tests and `--help` under
/// qemu-user (the runner is set in .cargo/config.toml). Loading BPF is not possible under
/// qemu-user, so kernel tests stay on the host.
fn test_aarch64() -> Result<()> {
    let target = "aarch64-unknown-linux-gnu";
    // `--workspace`, the selection of the arm64 guest's test build (`vm::stage_arm64`): the
    // same feature resolution, so that build reuses these crates instead of compiling the
    // dependencies a second time.
    sh(cargo().args([
        "test",
        "--release",
        "--target",
        target,
        "--workspace",
        "--lib",
        "--bins",
    ]))?;
    sh(cargo().args([
        "build",
        "--release",
        "--target",
        target,
        "--package",
        "vpcep-userspace",
        "--bins",
    ]))?;
    let bin = target_dir().join(format!("{target}/release/vpcep"));
    sh(Command::new("qemu-aarch64-static")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .arg("--help"))?;
    let out = Command::new("file").arg(&bin).output();
    if let Ok(out) = out {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

fn lint() -> Result<()> {
    setup::ensure()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    // The object is not needed to lint userspace; skip building it.
    sh(cargo()
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1"))?;
    // The dataplane bench needs the `bench` feature, which the pass above leaves off.
    sh(cargo()
        .args(["clippy", "--package", "vpcep-tests", "--bench", "dataplane"])
        .args(["--features", "bench", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1"))?;
    // The shipped programs, then with the benchmark-only ones (`bench` feature).
    for features in [&[][..], &["--features", "bench"]] {
        sh(Command::new("rustup")
            .args([
                "run",
                setup::NIGHTLY,
                "cargo",
                "clippy",
                "--package",
                "vpcep-ebpf",
            ])
            .args(features)
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    }
    Ok(())
}

fn netns(cmd: NetnsCmd) -> Result<()> {
    match cmd {
        NetnsCmd::Create { name } => {
            let ns = NetNs::create(format!("{PREFIX}{name}"))?;
            println!("{}", ns.name());
            // Keep it: the caller destroys it with `cargo xtask netns destroy`.
            std::mem::forget(ns);
        }
        NetnsCmd::Destroy { name } => {
            let name = if name.starts_with(PREFIX) {
                name
            } else {
                format!("{PREFIX}{name}")
            };
            drop(NetNs::adopt(name));
        }
        NetnsCmd::List => {
            let out = xtask::netns::ip(&["netns", "list"])?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with(PREFIX) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}
