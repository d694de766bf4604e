//! `cargo xtask package [--aarch64]`: Debian packages of the release binary with cargo-deb
//! (metadata and files in vpcep-userspace/Cargo.toml and vpcep-userspace/debian/), and the
//! checks `cargo xtask test` runs on them: lintian, `systemd-analyze verify`, then the
//! install, run, upgrade and purge test (tests/tests/package.rs).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, sh, target_dir, workspace_root};

pub const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// Debian architecture of a build.
fn deb_arch(aarch64: bool) -> &'static str {
    if aarch64 { "arm64" } else { "amd64" }
}

/// Builds the release binary for the host (or aarch64) and packages it; returns the .deb.
/// `version` overrides the package version (the upgrade test builds a second one).
pub fn build(aarch64: bool, version: Option<&str>) -> Result<PathBuf> {
    crate::build(aarch64)?;
    let bin = if aarch64 {
        target_dir().join(AARCH64).join("release/vpcep")
    } else {
        target_dir().join("release/vpcep")
    };
    check_libc_depends(&bin)?;
    let out = target_dir().join("debian");
    std::fs::create_dir_all(&out).context("creating target/debian")?;
    let mut cmd = cargo();
    cmd.args(["deb", "--package", "vpcep-userspace", "--no-build"])
        .arg("--output")
        .arg(&out);
    if aarch64 {
        cmd.args(["--target", AARCH64]);
    }
    if let Some(v) = version {
        cmd.args(["--deb-version", v]);
    }
    let text = crate::output(&mut cmd)?;
    let deb = PathBuf::from(text.lines().last().unwrap_or_default().trim());
    if !deb.is_file() {
        bail!("cargo deb did not name a package it wrote: {text}");
    }
    // cargo-deb removes other versions of the package from target/debian: keep each one
    // in target/packages.
    let kept = target_dir().join("packages");
    std::fs::create_dir_all(&kept).context("creating target/packages")?;
    let kept = kept.join(deb.file_name().context("package file name")?);
    std::fs::copy(&deb, &kept).with_context(|| format!("copying {}", deb.display()))?;
    println!("package ({}): {}", deb_arch(aarch64), kept.display());
    Ok(kept)
}

/// The package declares `libc6 (>= X)`; the binary must not need a newer glibc symbol.
fn check_libc_depends(bin: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(workspace_root().join("vpcep-userspace/Cargo.toml"))
        .context("reading vpcep-userspace/Cargo.toml")?;
    let declared = manifest
        .split("libc6 (>= ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(minor)
        .context("vpcep-userspace/Cargo.toml: depends names no `libc6 (>= 2.N)`")?;
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let needed = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w == b"GLIBC_2.")
        .filter_map(|(i, _)| {
            let digits: String = bytes[i + 8..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| char::from(b))
                .collect();
            digits.parse::<u32>().ok()
        })
        .max()
        .unwrap_or(0);
    if needed > declared {
        bail!(
            "{} needs GLIBC_2.{needed} but the package depends on libc6 (>= 2.{declared}): \
             raise it in vpcep-userspace/Cargo.toml",
            bin.display()
        );
    }
    Ok(())
}

fn minor(version: &str) -> Option<u32> {
    version.strip_prefix("2.")?.parse().ok()
}

/// lintian on a package: any error fails (warnings and notes are printed).
pub fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("lintian reports errors on {}", deb.display());
    }
    println!("lintian {}: no errors", deb.display());
    Ok(())
}

/// `systemd-analyze verify` on the units as packaged, next to the files they name.
pub fn verify_units(deb: &Path) -> Result<()> {
    let root = tempdir("vpcep-units")?;
    sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root.0))?;
    let units = root.0.join("lib/systemd/system");
    let units = if units.is_dir() {
        units
    } else {
        root.0.join("usr/lib/systemd/system")
    };
    // The units' dependencies (sysinit.target, network-online.target…) from this machine.
    sh(Command::new("cp")
        .args(["-rn", "--no-dereference"])
        .arg("/lib/systemd/system/.")
        .arg(&units))?;
    let mut cmd = Command::new("systemd-analyze");
    // --root: the unit's ExecStart binaries and EnvironmentFile are looked up in the package.
    cmd.arg("verify")
        .arg(format!("--root={}", root.0.display()));
    for name in ["vpcep-agent.service", "vpcep-control-plane.service"] {
        let p = units.join(name);
        if !p.is_file() {
            bail!("{} lacks {name}", deb.display());
        }
        cmd.arg(p);
    }
    let out = cmd.output().context("running systemd-analyze")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    if !out.status.success() || text.contains("vpcep") {
        bail!(
            "systemd-analyze verify finds problems in the units of {}",
            deb.display()
        );
    }
    println!("systemd-analyze verify: both units clean");
    Ok(())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

fn tempdir(tag: &str) -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask package`: the packages, then lintian and the unit check on each.
pub fn run(aarch64: bool, version: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut debs = vec![build(false, version)?];
    if aarch64 {
        debs.push(build(true, version)?);
    }
    for deb in &debs {
        lintian(deb)?;
        verify_units(deb)?;
    }
    Ok(debs)
}

/// The test stage: both packages checked, then the install/upgrade/purge test on the host's
/// own, with a second package of a higher version for the upgrade.
pub fn stage(aarch64: bool) -> Result<()> {
    let debs = run(aarch64, None)?;
    let upgrade = build(false, Some(&upgrade_version()?))?;
    sh(cargo()
        // The workspace test run's profile and feature resolution: nothing to rebuild.
        .args(["test", "--release", "--workspace", "--test", "package"])
        .args(["--", "--ignored", "--nocapture", "--test-threads=1"])
        .env("VPCEP_DEB", &debs[0])
        .env("VPCEP_DEB_UPGRADE", &upgrade))
}

/// The workspace version with a higher Debian revision than cargo-deb's default (`-1`).
fn upgrade_version() -> Result<String> {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .context("reading Cargo.toml")?;
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .context("Cargo.toml: no workspace version")?;
    Ok(format!("{version}-2"))
}
