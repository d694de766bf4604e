//! Builds the eBPF object with the pinned nightly and bpf-linker and leaves it in OUT_DIR,
//! where `dataplane::object` embeds it.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The nightly whose LLVM (22.x) matches bpf-linker 0.10.4; keep in step with xtask.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("vpcep");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // clippy/check runs: leave an empty placeholder so include_bytes! still compiles;
        // loading it fails with a clear error.
        for o in [object.clone(), out_dir.join("vpcep-toa-probe")] {
            if !o.exists() {
                fs::write(&o, []).context("writing placeholder eBPF object")?;
            }
        }
        return Ok(());
    }
    let root = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = root
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("vpcep-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    println!(
        "cargo:rerun-if-changed={}",
        root.parent()
            .map(|p| p.join("vpcep-common").display().to_string())
            .unwrap_or_default()
    );
    // `--features bench` (the dataplane benchmark) adds the no-op and floor programs; the
    // shipped binary is built without it.
    let features: &[&str] = if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "vpcep-ebpf",
            root_dir: ebpf_dir,
            features,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs; run `cargo xtask setup` if the toolchain or bpf-linker is missing")
}
