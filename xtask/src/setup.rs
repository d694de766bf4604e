//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, idempotently, saying
//! what it does. Other commands call [`ensure`], which does the same and is silent about
//! what is already present.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// Nightly whose LLVM (22.x) matches bpf-linker 0.10.4; keep in step with
/// vpcep-userspace/build.rs.
pub const NIGHTLY: &str = "nightly-2026-06-20";
pub const BPF_LINKER_VERSION: &str = "0.10.4";
pub const CARGO_DEB_VERSION: &str = "3.7.0";
const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// Debian packages the build, the tests and the tools need.
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "tcpdump",
    "bpftool",
    "nftables",
    "iperf3",
    "socat",
    // The tcp_proxy tests' backend that reads PROXY protocol headers.
    "haproxy",
    // The endpoint DNS tests and `bench dns`: dig, the upstream/baseline resolver, dnsperf.
    "dnsutils",
    "dnsmasq-base",
    "dnsperf",
    "postgresql",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "file",
    "iputils-ping",
    "curl",
    // The demo's backend web server.
    "python3",
    // The qemu stages: emulators, the guest's busybox, the initramfs and module tools.
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "kmod",
    // The package stage: lintian on the .deb files; adduser for their maintainer scripts.
    "lintian",
    "adduser",
];

pub fn run() -> Result<()> {
    ensure()?;
    println!("setup: everything is installed");
    Ok(())
}

pub fn ensure() -> Result<()> {
    apt_packages()?;
    host_components()?;
    nightly()?;
    aarch64_target()?;
    bpf_linker()?;
    cargo_deb()?;
    sdk_venv()?;
    crate::contract::ensure_installed()?;
    Ok(())
}

/// The official VPCEP Python SDK, pinned, that the compatibility test drives the API with.
pub const SDK_PACKAGE: &str = "huaweicloudsdkvpcep==3.1.219";

/// Python of the virtualenv holding the official SDK.
pub fn sdk_python() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::PathBuf::from(home).join(".cache/vpcep/sdk-venv/bin/python")
}

fn sdk_venv() -> Result<()> {
    let python = sdk_python();
    let ok = Command::new(&python)
        .args(["-c", "import huaweicloudsdkvpcep.v1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    let venv = python
        .parent()
        .and_then(|p| p.parent())
        .context("venv path")?
        .to_path_buf();
    println!(
        "setup: installing the official SDK ({SDK_PACKAGE}) into {} for the API compatibility test",
        venv.display()
    );
    sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    sh(Command::new(venv.join("bin/pip")).args(["install", "-q", SDK_PACKAGE]))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", p]))
                .is_none_or(|s| !s.starts_with("ii"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing packages needs root: run `apt-get install {}` or rerun as root",
            missing.join(" ")
        );
    }
    sh(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// clippy and rustfmt for the toolchain that builds the host crates (the lint stage).
fn host_components() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    let missing: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "setup: adding {} to the host toolchain (the lint stage)",
        missing.join(", ")
    );
    sh(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing))
}

fn nightly() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    let want = ["rust-src", "clippy", "rustfmt"];
    if want
        .iter()
        .all(|c| installed.lines().any(|l| l.starts_with(c)))
    {
        return Ok(());
    }
    println!("setup: installing Rust {NIGHTLY} with rust-src (builds the eBPF programs)");
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy,rustfmt",
    ]))
}

fn aarch64_target() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == AARCH64) {
        return Ok(());
    }
    println!("setup: adding the {AARCH64} target (Kunpeng cross-build)");
    sh(Command::new("rustup").args(["target", "add", AARCH64]))
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} (uses the nightly's own LLVM; about a minute)"
    );
    sh(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("installing bpf-linker")
}

fn cargo_deb() -> Result<()> {
    let version = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if version.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION} (builds the .deb packages)");
    sh(Command::new("cargo").args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("installing cargo-deb")
}

/// Mounts bpffs at /sys/fs/bpf when it is not (pinning needs it).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    println!("setup: mounting bpffs on /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
