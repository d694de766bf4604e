//! What the traffic benchmarks (hooks, e2e, overlay, flood) share: the run's directory,
//! `vpcep dataplane run` under a guard, the load tools pinned to a CPU, the signal
//! handling, and the figures' arithmetic and formatting.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::{child::ChildGuard, netns::NetNs};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How many runs of how many seconds each measure takes.
#[derive(Clone, Copy, Debug)]
pub struct Length {
    pub runs: u64,
    pub secs: u64,
}

/// Runs `f` with Ctrl-C and SIGTERM turned into [`check`] failures, so that the guards
/// remove every namespace and process on the way out.
pub fn guarded<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    watch_signals(true);
    let r = f();
    watch_signals(false);
    r
}

/// Ctrl-C or SIGTERM during a benchmark: the steps stop at the next check (each is bounded
/// to seconds) and the guards remove every namespace and process; a second signal ends the
/// process at once. A handler rather than a blocked mask: children would inherit the mask
/// (and `vpcep dataplane run` could not be stopped with SIGINT), while handlers are reset by
/// exec.
fn watch_signals(on: bool) {
    extern "C" fn on_signal(sig: libc::c_int) {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(128 + sig) };
        }
        let msg = b"signal: stopping the benchmark and cleaning up\n";
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    let handler = if on {
        on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
    } else {
        libc::SIG_DFL
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches an atomic and async-signal-safe calls.
        unsafe { libc::signal(sig, handler) };
    }
}

/// Fails once a signal has asked the benchmark to stop.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A directory for the run's files, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("vpcep-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vpcep dataplane run` (however `cmd` starts it), its output in a log file; stopped by
/// its PID when dropped.
pub struct Dataplane {
    child: ChildGuard,
    pub log: PathBuf,
}

impl Dataplane {
    /// Starts `cmd` and waits until the programs are attached.
    pub fn start(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("starting vpcep dataplane run")?;
        let mut dp = Self {
            child: ChildGuard::from(child),
            log,
        };
        dp.wait_for("attached")?;
        Ok(dp)
    }

    /// `vpcep dataplane run` in `ns` with these arguments, bounded by `secs`.
    pub fn run_in(
        ns: &NetNs,
        vpcep: &Path,
        args: &[&str],
        secs: u64,
        log: PathBuf,
    ) -> Result<Self> {
        let mut cmd = ns.command(&vpcep.to_string_lossy());
        cmd.args(["dataplane", "run", "--duration", &secs.to_string()])
            .args(args);
        Self::start(cmd, log)
    }

    /// Polls the log until it contains `needle` (loading can take a while on a busy
    /// machine: the verifier runs for every program).
    fn wait_for(&mut self, needle: &str) -> Result<()> {
        let start = Instant::now();
        let limit = Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("vpcep dataplane run exited ({status}):\n{text}");
            }
            if start.elapsed() > limit {
                bail!("no {needle:?} from the data plane in {limit:?}:\n{text}");
            }
            check()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Detaches (SIGINT, as Ctrl-C would) and waits for the exit.
    pub fn stop(self) -> Result<()> {
        self.child
            .signal_and_wait(libc::SIGINT, Duration::from_secs(5))?;
        Ok(())
    }
}

/// `taskset -c CPU PROGRAM` in `ns`.
pub fn pinned(ns: &NetNs, cpu: u8, program: &str) -> Command {
    let mut c = ns.command("taskset");
    c.args(["-c", &cpu.to_string(), program]);
    c
}

/// Starts a bounded server whose output nobody reads. Stopped with SIGTERM first: a
/// `timeout` wrapper passes it on, where a SIGKILL would leave its child running.
pub fn spawn_quiet(mut cmd: Command) -> Result<ChildGuard> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a server")?;
    Ok(ChildGuard::from(child).with_grace(Duration::from_secs(2)))
}

/// Starts a bounded measure whose JSON line is read when it ends.
pub fn spawn_piped(mut cmd: Command) -> Result<ChildGuard> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vpcep-load")?;
    Ok(child.into())
}

/// Runs a bounded vpcep-load mode and returns its JSON line.
pub fn one_shot(mut cmd: Command) -> Result<Value> {
    let out = cmd.output().context("running vpcep-load")?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "vpcep-load failed ({}; {}): {}",
            out.status,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    last_json(&out.stdout)
}

pub fn last_json(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("vpcep-load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

pub fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no {key:?} in {v}"))
}

/// iperf3 `-J` output: the received rate in Gbit/s; 0 if it failed.
pub fn iperf_gbps(stdout: &[u8]) -> f64 {
    serde_json::from_slice::<Value>(stdout)
        .ok()
        .and_then(|v| v["end"]["sum_received"]["bits_per_second"].as_f64())
        .map_or(0.0, |bps| bps / 1e9)
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn min(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// `1,234,567`: no decimals, thousands separated by commas.
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number as C's `%g` prints it (6 significant digits, no trailing zeros), the form the
/// "every run" lines have always had.
pub fn general(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let sci = format!("{x:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        trim(format!("{x:.decimals$}"))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim(mantissa.to_owned()),
            exp.unsigned_abs()
        )
    }
}

/// Every measured value, by configuration and measure, in the order taken.
#[derive(Default)]
pub struct Samples(Vec<(&'static str, &'static str, f64)>);

impl Samples {
    pub fn push(&mut self, mode: &'static str, key: &'static str, v: f64) {
        self.0.push((mode, key, v));
    }

    pub fn of(&self, mode: &str, key: &str) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(m, k, _)| *m == mode && *k == key)
            .map(|(_, _, v)| *v)
            .collect()
    }

    /// The median of a measure; 0 if it was never taken.
    pub fn median(&self, mode: &str, key: &str) -> f64 {
        median(&self.of(mode, key))
    }

    /// "Every run (medians above):" and a line per measure with each configuration's runs.
    pub fn print_every_run(&self, keys: &[&str], modes: &[&str]) {
        println!();
        println!("Every run (medians above):");
        for k in keys {
            let per_mode: Vec<String> = modes
                .iter()
                .map(|m| {
                    let runs: Vec<String> = self.of(m, k).into_iter().map(general).collect();
                    format!("{m}: {}", runs.join(" "))
                })
                .collect();
            println!("  {k:<8} {}", per_mode.join("  "));
        }
    }
}

/// A `[[nic]]` of `vpcep dataplane run --config`, gateway 10.0.0.1.
pub fn nic_toml(iface: &str, vpc: u32, ip: &str, mac: &str) -> String {
    format!(
        "[[nic]]\niface = \"{iface}\"\nvpc = {vpc}\nip = \"{ip}\"\nmac = \"{mac}\"\n\
         gateway = \"10.0.0.1\"\n\n"
    )
}

/// A figure in a table: counts and rates with thousands separators, the rest to 2 decimals.
pub fn cell(unit: &str, x: f64) -> String {
    if unit == "pps" || unit == "conn/s" {
        thousands(x)
    } else {
        format!("{x:.2}")
    }
}

/// `num / base`, 0 when there is no base.
pub fn ratio(num: f64, base: f64) -> f64 {
    if base != 0.0 { num / base } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(min(&[]), 0.0);
    }

    #[test]
    fn general_prints_as_percent_g() {
        for (x, s) in [
            (0.0, "0"),
            (369_715.0, "369715"),
            (1_234_567.0, "1.23457e+06"),
            (16.29, "16.29"),
            (9.5, "9.5"),
            (153.0, "153"),
            (57.42, "57.42"),
            (0.000_12, "0.00012"),
            (0.000_012_3, "1.23e-05"),
            (999_999.5, "1e+06"),
        ] {
            assert_eq!(general(x), s, "{x}");
        }
    }
}
