//! How the demo shows what it does: commands as a user would type them, their output
//! indented, waits with a dot per second.
use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::check_interrupted;

/// Prints a command line as a user would type it.
pub(super) fn show_command(program: &str, args: &[&str]) {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'', '$', '*']) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("\n$ {program} {}", quoted.join(" "));
}

pub(super) fn print_indented(text: &str) {
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = out.flush();
}

/// The value of a `FIELD VALUE` row of a `show`/`create` table.
pub(super) fn field(table: &str, name: &str) -> Result<String> {
    table
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| parts.next().unwrap_or_default().to_owned())
        })
        .with_context(|| format!("no {name} in the output:\n{table}"))
}

/// Polls `ready` every 100 ms for at most `secs`, showing a dot per second; returns the
/// seconds waited.
pub(super) fn wait_for(
    what: &str,
    secs: u64,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<f64> {
    let start = Instant::now();
    let mut dots = 0;
    loop {
        check_interrupted()?;
        if ready()? {
            if dots > 0 {
                println!();
            }
            return Ok(start.elapsed().as_secs_f64());
        }
        let elapsed = start.elapsed();
        if elapsed > Duration::from_secs(secs) {
            if dots > 0 {
                println!();
            }
            bail!("timed out after {secs} s waiting for {what}");
        }
        if elapsed.as_secs() >= 1 && elapsed.as_secs() > dots {
            if dots == 0 {
                print!("  waiting for {what} ");
            }
            print!(".");
            let _ = std::io::stdout().flush();
            dots = elapsed.as_secs();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Last `n` lines of a file, for error messages.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
