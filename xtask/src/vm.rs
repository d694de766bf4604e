//! The kernel tiers on other kernels: Debian's own kernels (x86_64 and arm64) booted in qemu
//! under TCG, running the test binaries the host built.
//!
//! * The kernel comes from Debian's packages (`apt-get download`, `dpkg-deb -x`); the
//!   initramfs holds a static busybox, the kernel's modules for 9p, veth and TC, and on arm64
//!   an arm64 userland unpacked from Debian's packages (libc, iproute2, ethtool, ping). Both
//!   are cached under `~/.cache/vpcep/vm/<arch>/`, so a second run builds nothing.
//! * The guest mounts the host's root read-only over 9p: x86_64 switches to it (the host's
//!   tools run there); arm64 stays in its initramfs and binds the workspace from it.
//! * The guest runs each tier, prints `VPCEP-TIER <name> PASS|FAIL <secs>s` and powers off;
//!   qemu is bounded by `timeout`, and its PID (ours) is killed if this process stops first.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::child::ChildGuard;

use crate::{cargo, sh, target_dir, workspace_root};

/// One guest architecture.
pub struct Guest {
    /// Debian architecture name.
    pub deb_arch: &'static str,
    /// Rust target of the test binaries (None: the host's).
    pub rust_target: Option<&'static str>,
    qemu: &'static str,
    machine: &'static [&'static str],
    console: &'static str,
    /// Upper bound on the whole boot + tiers, in seconds.
    pub timeout_secs: u64,
}

pub const X86_64: Guest = Guest {
    deb_arch: "amd64",
    rust_target: None,
    qemu: "qemu-system-x86_64",
    machine: &["-accel", "tcg,thread=multi", "-cpu", "max"],
    console: "ttyS0",
    timeout_secs: 600,
};

pub const ARM64: Guest = Guest {
    deb_arch: "arm64",
    rust_target: Some("aarch64-unknown-linux-gnu"),
    qemu: "qemu-system-aarch64",
    machine: &[
        "-M",
        "virt",
        "-cpu",
        "cortex-a57",
        "-accel",
        "tcg,thread=multi",
    ],
    console: "ttyAMA0",
    timeout_secs: 540,
};

/// Modules the guest loads by hand (with their dependencies): the 9p root, then what the
/// tests need (veth pairs, clsact and cls_bpf for TC without TCX).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "sch_ingress",
    "cls_bpf",
];

/// arm64 packages unpacked into the initramfs: what the tests run (`ip`, `tc`, `ethtool`,
/// `ping`) and the libraries those and the test binaries link.
const ARM64_PACKAGES: &[&str] = &[
    "libc6",
    "libgcc-s1",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "libbpf1",
    "libelf1",
    "zlib1g",
    "libcap2",
    "libdb5.3",
    "libmnl0",
    "libselinux1",
    "libpcre2-8-0",
    "libtirpc3",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libcom-err2",
    "libkeyutils1",
    "libssl3",
    "libxtables12",
    "libbsd0",
    "libmd0",
    "libidn2-0",
    "libunistring2",
    "busybox-static",
];

/// How a guest boots: its vCPUs, extra kernel arguments, and the preemption model it
/// must report (`/sys/kernel/debug/sched/preempt`) before any tier counts.
pub struct Boot {
    pub label: &'static str,
    pub smp: u32,
    pub cmdline: &'static str,
    pub preempt: Option<&'static str>,
}

/// The kernel's own defaults (Debian: voluntary preemption), two vCPUs.
pub const DEFAULT_BOOT: Boot = Boot {
    label: "",
    smp: 2,
    cmdline: "",
    preempt: None,
};

/// Full preemption (`preempt=full`; Debian's kernels are PREEMPT_DYNAMIC): a BPF program
/// under PROG_TEST_RUN runs with migration disabled only, so the scheduler can stop it
/// between any two of its map operations and run the racing thread. Under TCG the two
/// vCPUs are host threads, so the programs also overlap at the emulator's pace.
pub const PREEMPT_FULL: Boot = Boot {
    label: " preempt=full",
    smp: 2,
    cmdline: "preempt=full",
    preempt: Some("full"),
};

/// A test binary run inside the guest.
pub struct Tier {
    pub name: &'static str,
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

/// The cached kernel and initramfs of one architecture.
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    release: String,
}

fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/vpcep/vm")
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-get download` into `dir`, quietly.
fn download(dir: &Path, pkgs: &[String]) -> Result<()> {
    println!("vm: apt-get download {}", pkgs.join(" "));
    output(
        Command::new("apt-get")
            .arg("download")
            .args(pkgs)
            .current_dir(dir),
    )
    .map(|_| ())
}

fn ensure_foreign_arch(arch: &str) -> Result<()> {
    let have = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if have.lines().any(|l| l.trim() == arch) {
        return Ok(());
    }
    println!("vm: adding the Debian architecture {arch} (its kernel and tools for the guest)");
    sh(Command::new("dpkg").args(["--add-architecture", arch]))?;
    sh(Command::new("apt-get").args(["update", "-q"]))
}

/// Builds (or finds cached) the kernel and initramfs for `g`.
fn image(g: &Guest) -> Result<Image> {
    let dir = cache_root().join(g.deb_arch);
    let stamp = dir.join("ready");
    // The stamp is written last and names what the image was built from: without it, or
    // when the recipe changed, the image is rebuilt.
    let key = recipe_key(g);
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if current.lines().nth(1) != Some(key.as_str()) || !dir.join("initrd.cpio").exists() {
        build_image(g, &dir, &key)?;
    } else {
        println!(
            "vm: using the cached {} image in {}",
            g.deb_arch,
            dir.display()
        );
    }
    let release = std::fs::read_to_string(&stamp)
        .context("reading the image stamp")?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Image {
        kernel: dir.join(format!("kernel/boot/vmlinuz-{release}")),
        initrd: dir.join("initrd.cpio"),
        release,
    })
}

/// What an image is built from (its init, modules and packages), as a short key.
fn recipe_key(g: &Guest) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    init_script(g.rust_target.is_none()).hash(&mut h);
    MODULES.hash(&mut h);
    if g.rust_target.is_some() {
        ARM64_PACKAGES.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn build_image(g: &Guest, dir: &Path, key: &str) -> Result<()> {
    let arch = g.deb_arch;
    if arch != "amd64" {
        ensure_foreign_arch(arch)?;
    }
    println!("vm: building the {arch} guest image in {}", dir.display());
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    std::fs::create_dir_all(&debs).context("creating the image directory")?;
    let (kernel, release) = kernel(arch, &debs, &tmp)?;

    let root = tmp.join("initrd");
    std::fs::create_dir_all(&root).context("initramfs")?;
    if arch == "amd64" {
        std::fs::copy("/bin/busybox", root.join("busybox"))
            .context("copying /bin/busybox (package busybox-static)")?;
    } else {
        arm64_userland(arch, &debs, &root)?;
    }
    copy_modules(&kernel.join("lib/modules").join(&release), &release, &root)?;
    std::fs::write(root.join("init"), init_script(arch == "amd64")).context("initramfs")?;
    sh(Command::new("chmod").args(["0755"]).arg(root.join("init")))?;
    // newc cpio of the tree (the kernel unpacks it as the initial root).
    println!("vm: packing the initramfs");
    output(
        Command::new("sh")
            .arg("-c")
            .arg(r#"find . | LC_ALL=C sort | cpio --quiet -o -H newc > "$1""#)
            .arg("sh")
            .arg(tmp.join("initrd.cpio"))
            .current_dir(&root),
    )?;
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::write(tmp.join("ready"), format!("{release}\n{key}\n")).context("stamp")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).context("moving the image into the cache")?;
    Ok(())
}

/// `pkg` for the host's architecture, `pkg:ARCH` for a foreign one.
fn qualified(arch: &str, pkg: &str) -> String {
    if arch == "amd64" {
        pkg.to_owned()
    } else {
        format!("{pkg}:{arch}")
    }
}

/// Downloads and unpacks Debian's kernel into `tmp/kernel`, with its module index; the
/// directory and the kernel release.
fn kernel(arch: &str, debs: &Path, tmp: &Path) -> Result<(PathBuf, String)> {
    // linux-image-<arch> is the metapackage; its dependency is the kernel itself.
    let meta = qualified(arch, &format!("linux-image-{arch}"));
    let deps = output(Command::new("apt-cache").args(["depends", &meta]))?;
    let kpkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("no kernel package in `apt-cache depends {meta}`"))?
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    download(debs, &[qualified(arch, &kpkg)])?;
    let kernel = tmp.join("kernel");
    unpack(debs, &kernel, "linux-image-")?;
    let release = kpkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kpkg)
        .to_owned();
    sh(Command::new("depmod")
        .args(["-b"])
        .arg(&kernel)
        .arg(&release))?;
    Ok((kernel, release))
}

/// The arm64 userland, unpacked from Debian's packages into the initramfs tree `root`.
fn arm64_userland(arch: &str, debs: &Path, root: &Path) -> Result<()> {
    let pkgs: Vec<String> = ARM64_PACKAGES.iter().map(|p| qualified(arch, p)).collect();
    download(debs, &pkgs)?;
    for p in ARM64_PACKAGES {
        unpack(debs, root, &format!("{p}_"))?;
    }
    // Usr-merged Debian resolves /lib and /bin through symlinks; an unpacked tree has
    // both halves, so make the loader's and the shell's paths exist.
    for (link, to) in [
        (
            "lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        ),
        ("bin/sh", "busybox"),
    ] {
        let l = root.join(link);
        if !l.exists() {
            let _ = std::fs::create_dir_all(l.parent().unwrap_or(root));
            std::os::unix::fs::symlink(to, &l)
                .with_context(|| format!("linking {}", l.display()))?;
        }
    }
    Ok(())
}

/// Copies [`MODULES`] and their dependencies from `moddir` into `root/mod`, numbered in
/// load order (dependencies first), and lists them in `root/modules`.
fn copy_modules(moddir: &Path, release: &str, root: &Path) -> Result<()> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).context("modules.dep")?;
    let deps: BTreeMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for m in MODULES {
        let path = deps
            .keys()
            .find(|k| k.rsplit('/').next() == Some(&format!("{m}.ko")))
            .with_context(|| format!("module {m} not in {release}"))?;
        // modules.dep lists the whole closure; loading it backwards puts each dependency
        // before its users.
        for d in deps[path].iter().rev().chain(std::iter::once(path)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    std::fs::create_dir_all(root.join("mod")).context("initramfs")?;
    let mut list = String::new();
    for (i, m) in order.iter().enumerate() {
        let name = format!("{i:02}-{}", m.rsplit('/').next().unwrap_or(m));
        std::fs::copy(moddir.join(m), root.join("mod").join(&name))
            .with_context(|| format!("copying {m}"))?;
        let _ = writeln!(list, "{name}");
    }
    std::fs::write(root.join("modules"), list).context("initramfs")
}

/// Unpacks the one `.deb` in `debs` whose name starts with `prefix` into `into`.
fn unpack(debs: &Path, into: &Path, prefix: &str) -> Result<()> {
    let deb = std::fs::read_dir(debs)
        .context("reading the download directory")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no downloaded package {prefix}*"))?;
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(into)).map(|_| ())
}

/// The guest's PID 1 in the initramfs, which stays the root (mounts on a 9p root's
/// directories do not hold). It mounts the kernel file systems, loads the modules, mounts
/// the host's root over 9p at /host, binds the workspace at its own path and runs the run's
/// script (named on the kernel command line). On x86_64 the host's userland is bound in
/// (`/usr`, `/etc`, the usr-merged links); arm64 has its own in the initramfs.
fn init_script(host_userland: bool) -> String {
    let bb = if host_userland {
        "/busybox"
    } else {
        "/bin/busybox"
    };
    let mut s = format!(
        r#"#!{bb} sh
bb={bb}
$bb mkdir -p /proc /sys /dev /tmp /run /host
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb mount -t tmpfs tmpfs /tmp
$bb mount -t tmpfs tmpfs /run
echo "VPCEP-GUEST booted: $($bb uname -r) $($bb uname -m)"
for m in $($bb cat /modules); do
    $bb insmod /mod/$m || echo "VPCEP-GUEST insmod $m failed"
done
arg() {{ for w in $($bb cat /proc/cmdline); do case $w in vpcep.$1=*) echo "${{w#*=}}";; esac; done; }}
die() {{ echo "VPCEP-GUEST-ERROR $*"; echo o > /proc/sysrq-trigger; $bb sleep 30; }}
script=$(arg script)
ws=$(arg workspace)
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 host /host \
    || die "mounting the host's root over 9p"
"#
    );
    if host_userland {
        s.push_str(
            r#"for d in usr etc; do $bb mkdir -p /$d; $bb mount --bind /host/$d /$d; done
for l in bin sbin lib lib64; do $bb ln -s usr/$l /$l; done
"#,
        );
    }
    s.push_str(
        r#"$bb mkdir -p "$ws"
$bb mount --bind "/host$ws" "$ws" || die "binding the workspace $ws"
exec /bin/sh "$script"
"#,
    );
    s
}

/// The run's script: mounts bpffs, reports the preemption model (when the boot names
/// one), runs every tier with its own result line, powers off.
fn run_script(tiers: &[&Tier], ld_path: Option<&str>, boot: &Boot) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TMPDIR=/tmp RUST_BACKTRACE=1 VPCEP_CLI_TEST_NO_BUILD=1
"#,
    );
    s.push_str(
        r#"mount -t bpf bpf /sys/fs/bpf || echo "VPCEP-GUEST mounting bpffs failed"
ip link set lo up
cd /tmp
"#,
    );
    if boot.preempt.is_some() {
        s.push_str(
            r#"mount -t debugfs debugfs /sys/kernel/debug
echo "VPCEP-GUEST preempt: $(cat /sys/kernel/debug/sched/preempt 2>/dev/null)"
"#,
        );
    }
    s.push_str(
        r#"echo "VPCEP-GUEST running tiers on $(uname -r)"
tier() {
    name=$1; shift
    start=$(date +%s)
    if "$@" > /tmp/tier.log 2>&1; then r=PASS; else r=FAIL; fi
    end=$(date +%s)
    # A filter that matches nothing must not pass.
    grep -q '^test result: ok\. [1-9]' /tmp/tier.log || r=FAIL
    if [ $r = FAIL ]; then
        echo "---- $name output (last 80 lines) ----"
        tail -n 80 /tmp/tier.log
        echo "---- end of $name output ----"
    fi
    echo "VPCEP-TIER $name $r $((end - start))s $(grep '^test result' /tmp/tier.log | tail -n 1)"
}
"#,
    );
    if let Some(p) = ld_path {
        let _ = writeln!(s, "export LD_LIBRARY_PATH={p}");
    }
    for t in tiers {
        let mut line = format!("tier {} env", t.name);
        for (k, v) in &t.env {
            let _ = write!(line, " {k}={}", sh_quote(v));
        }
        let _ = write!(line, " {}", sh_quote(&t.exe.display().to_string()));
        for a in &t.args {
            let _ = write!(line, " {}", sh_quote(a));
        }
        let _ = writeln!(s, "{line}");
    }
    // Let the console drain before the kernel's power-off messages.
    s.push_str("echo VPCEP-DONE\nsleep 2\necho o > /proc/sysrq-trigger\nsleep 30\n");
    s
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The test executables of `tests` in package vpcep-tests (built if needed), by test name,
/// and the `vpcep` binary next to them.
pub fn build_tests(target: Option<&str>, tests: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = cargo();
    // Release, as `cargo xtask test` builds everything (and faster under TCG).
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "--message-format=json",
        // The selection of `cargo xtask test`'s own run: the same feature resolution.
        "--workspace",
    ]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    cmd.current_dir(workspace_root()).stderr(Stdio::inherit());
    println!("==> cargo test --no-run {} {:?}", tests.join(" "), target);
    let out = cmd.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
        {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "vpcep-userspace",
        "--bin",
        "vpcep",
    ]);
    if let Some(t) = target {
        build.args(["--target", t]);
    }
    sh(&mut build)?;
    Ok(exes)
}

/// Boots `g`'s kernel as it comes, runs `tiers` inside and checks that every one passed.
pub fn run(g: &Guest, tiers: &[Tier]) -> Result<()> {
    run_boot(g, &DEFAULT_BOOT, tiers)
}

/// As [`run`], booted as `boot` says. A kernel that does not reach the tiers (or runs
/// another preemption model than `boot` needs) fails the stage with its console log.
pub fn run_boot(g: &Guest, boot: &Boot, tiers: &[Tier]) -> Result<()> {
    let started = Instant::now();
    // VPCEP_VM_TIERS=a,b runs only those tiers (a developer's loop).
    let only = std::env::var("VPCEP_VM_TIERS").ok();
    let tiers: Vec<&Tier> = tiers
        .iter()
        .filter(|t| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == t.name))
        })
        .collect();
    if tiers.is_empty() {
        println!(
            "vm {}{}: no tier selected, not booted",
            g.deb_arch, boot.label
        );
        return Ok(());
    }
    let img = image(g)?;
    let run_dir = target_dir().join("vm").join(format!(
        "{}-{}-{}",
        g.deb_arch,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&run_dir).context("creating the run directory")?;
    let result = boot_guest(g, boot, &img, &tiers, &run_dir);
    let _ = std::fs::remove_dir_all(&run_dir);
    println!(
        "vm {}{}: {} in {:.0} s (kernel {})",
        g.deb_arch,
        boot.label,
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        img.release
    );
    result
}

fn boot_guest(g: &Guest, boot: &Boot, img: &Image, tiers: &[&Tier], run_dir: &Path) -> Result<()> {
    let script = run_dir.join("run.sh");
    let ld = g
        .rust_target
        .map(|_| "/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu");
    std::fs::write(&script, run_script(tiers, ld, boot)).context("writing the guest script")?;
    let console = run_dir.join("console.log");
    let status = qemu(g, boot, img, &script, &console)?;
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    check_preempt(boot, &log)?;
    check_console(g, img, tiers, &log, status)
}

/// The guest must run the preemption model `boot` names: the kernel reports the models it
/// can switch to with the current one in parentheses ("none voluntary (full)").
fn check_preempt(boot: &Boot, log: &str) -> Result<()> {
    let Some(want) = boot.preempt else {
        return Ok(());
    };
    let line = log
        .lines()
        .find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("VPCEP-GUEST preempt: ")
        })
        .unwrap_or("(not reported)");
    println!("vm{}: preemption models {line}", boot.label);
    if !line.contains(&format!("({want})")) {
        println!("---- console log ----\n{log}\n---- end of console log ----");
        bail!("the guest runs preemption model {line}, not ({want})");
    }
    Ok(())
}

/// Runs qemu under `timeout` to the end; stopped by its PID if this process fails first.
fn qemu(g: &Guest, boot: &Boot, img: &Image, script: &Path, console: &Path) -> Result<ExitStatus> {
    let append = format!(
        "console={} panic=-1 loglevel=4 {} vpcep.script={} vpcep.workspace={}",
        g.console,
        boot.cmdline,
        script.display(),
        workspace_root().display(),
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", &g.timeout_secs.to_string(), g.qemu])
        .args(g.machine)
        .args(["-smp", &boot.smp.to_string(), "-m", "2048"])
        .args(["-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args(["-append", &append])
        .args([
            "-fsdev",
            "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=host,mount_tag=host",
        ])
        .stdin(Stdio::null());
    println!(
        "==> {} (TCG, kernel {}, at most {} s; console in {})",
        g.qemu,
        img.release,
        g.timeout_secs,
        console.display()
    );
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", g.qemu))?;
    // SIGTERM first: `timeout` passes it on to qemu, a SIGKILL would leave qemu running.
    let mut qemu = ChildGuard::from(child).with_grace(Duration::from_secs(5));
    qemu.wait().context("waiting for qemu")
}

/// Checks the console log: the guest reached its tiers, each passed, and it finished.
fn check_console(
    g: &Guest,
    img: &Image,
    tiers: &[&Tier],
    log: &str,
    status: ExitStatus,
) -> Result<()> {
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    if !lines
        .iter()
        .any(|l| l.starts_with("VPCEP-GUEST running tiers"))
    {
        println!("---- console log ----\n{log}\n---- end of console log ----");
        bail!(
            "the {} kernel {} did not reach its tiers (qemu: {status})",
            g.deb_arch,
            img.release
        );
    }
    let failed = tier_results(g, tiers, &lines);
    if !failed.is_empty() {
        // The failing tiers' output is in the log, between markers; show the whole log.
        println!("---- console log ----\n{log}\n---- end of console log ----");
        bail!(
            "{} kernel {}: failed tiers: {}",
            g.deb_arch,
            img.release,
            failed.join(", ")
        );
    }
    if !lines.contains(&"VPCEP-DONE") {
        bail!("the guest did not finish (qemu: {status})");
    }
    Ok(())
}

/// Prints each tier's result line; the tiers that failed or did not report.
fn tier_results(g: &Guest, tiers: &[&Tier], lines: &[&str]) -> Vec<&'static str> {
    let results: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("VPCEP-TIER "))
        .collect();
    let mut failed = Vec::new();
    for t in tiers {
        let line = results
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(t.name));
        match line {
            Some(l) => {
                println!("vm {}: {}", g.deb_arch, l.trim_start_matches("VPCEP-TIER "));
                if l.split_whitespace().nth(2) != Some("PASS") {
                    failed.push(t.name);
                }
            }
            None => {
                println!(
                    "vm {}: {} did not report (timeout or crash)",
                    g.deb_arch, t.name
                );
                failed.push(t.name);
            }
        }
    }
    failed
}

fn tier(
    exes: &BTreeMap<String, PathBuf>,
    name: &'static str,
    args: &[&str],
    env: &[(&'static str, &str)],
) -> Result<Tier> {
    Ok(Tier {
        name,
        exe: exes
            .get(name)
            .with_context(|| format!("no test binary {name}"))?
            .clone(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    })
}

/// Debian 12's own kernel (6.1) on x86_64: the PROG_TEST_RUN tables, the differential test,
/// both TC attach modes' tests, pinned-map checks, real traffic through an endpoint in
/// namespaces, and the agent's kill -9 / --reload test. Then a second boot with full
/// preemption for the CPU races of the conntrack (`concurrency`).
pub fn stage_x86_64() -> Result<()> {
    let names = [
        "concurrency",
        "test_run",
        "fastpath",
        "differential",
        "tc_attach",
        "pinned_maps",
        "netns_traffic",
        "netns_endpoint",
        "agent",
    ];
    let exes = build_tests(None, &names)?;
    let tiers = vec![
        tier(&exes, "test_run", &[], &[])?,
        tier(&exes, "fastpath", FASTPATH, &[])?,
        tier(
            &exes,
            "differential",
            &[],
            // No backtrace: the tier shows the last lines, which must hold the mismatch.
            &[("VPCEP_DIFF_PACKETS", "3000"), ("RUST_BACKTRACE", "0")],
        )?,
        tier(&exes, "tc_attach", &[], &[])?,
        tier(
            &exes,
            "pinned_maps",
            &["another_value_size", "matching_pins"],
            &[],
        )?,
        tier(&exes, "netns_traffic", &["tc_counts_real_traffic"], &[])?,
        tier(&exes, "netns_endpoint", ENDPOINT, &[])?,
        tier(&exes, "agent", AGENT, &[("VPCEP_AGENT_KILLS", "2")])?,
    ];
    run(&X86_64, &tiers)?;
    // One test at a time: each races its own threads on both vCPUs.
    let races = [tier(&exes, "concurrency", &["--test-threads=1"], &[])?];
    run_boot(&X86_64, &PREEMPT_FULL, &races)
}

/// Each program load creates every map (the conntrack maps preallocate millions of
/// entries) and runs the verifier, which costs seconds under TCG: the guests run a chosen
/// part of the tables.
const FASTPATH: &[&str] = &[
    "consumer_to_endpoint_and_back",
    "udp_and_zero_checksum",
    "every_drop_reason_of_the_consumer_path",
    "arp_and_echo_are_answered",
];
const ENDPOINT: &[&str] = &["udp_request_response_and_ping"];
const AGENT: &[&str] = &["--exact", "agent_survives_kill_9"];

/// Debian's arm64 kernel with the aarch64 build: the PROG_TEST_RUN tables, netlink TC
/// attach, traffic through an endpoint, and the agent's kill -9 / --reload test.
pub fn stage_arm64() -> Result<()> {
    let target = ARM64.rust_target;
    let names = [
        "test_run",
        "fastpath",
        "tc_attach",
        "netns_endpoint",
        "agent",
    ];
    let exes = build_tests(target, &names)?;
    let tiers = vec![
        tier(&exes, "test_run", &[], &[])?,
        tier(&exes, "fastpath", FASTPATH, &[])?,
        tier(&exes, "tc_attach", &["netlink"], &[])?,
        tier(&exes, "netns_endpoint", ENDPOINT, &[])?,
        tier(&exes, "agent", AGENT, &[("VPCEP_AGENT_KILLS", "2")])?,
    ];
    run(&ARM64, &tiers)
}
