//! The one guard for every child process xtask and the tests start: on drop it stops the
//! process by its PID (never by name) and reaps it, also when the caller fails or unwinds.
use std::{
    process::{Child, ExitStatus, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A child process stopped by its PID and reaped on drop: at once with SIGKILL, or, with
/// [`ChildGuard::with_grace`], SIGTERM first and SIGKILL once the grace has passed.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    /// How long drop waits after SIGTERM before SIGKILL; `None`: SIGKILL at once.
    grace: Option<Duration>,
}

impl From<Child> for ChildGuard {
    /// Guards a child spawned by hand (e.g. from `NetNs::command` with its own stdio).
    fn from(child: Child) -> Self {
        Self {
            child: Some(child),
            grace: None,
        }
    }
}

impl ChildGuard {
    /// On drop, ask with SIGTERM and wait up to `grace` (a process that cleans up on exit,
    /// or a `timeout` wrapper that passes the signal on) before SIGKILL.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The PID, 0 once reaped or released (for messages).
    pub fn pid(&self) -> u32 {
        self.id().unwrap_or(0)
    }

    /// Waits for exit and returns its output (the guard has nothing left to kill).
    pub fn wait_output(mut self) -> Result<Output> {
        let child = self.child.take().context("child already reaped")?;
        Ok(child.wait_with_output()?)
    }

    /// Waits for exit; the guard has nothing left to kill.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("child already reaped")?;
        Ok(child.wait()?)
    }

    /// Stops the process now and returns what it printed.
    pub fn stop(mut self) -> Result<Output> {
        let child = self.child.take().context("child already reaped")?;
        signal(&child, libc::SIGTERM);
        Ok(child.wait_with_output()?)
    }

    /// The exit status if the child has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("child already reaped"),
        }
    }

    /// Sends `signal` (e.g. SIGINT, for a clean detach), waits up to `grace` for the exit,
    /// then kills.
    pub fn signal_and_wait(mut self, signal: i32, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("child already reaped")?;
        Ok(stop(&mut child, signal, grace)?)
    }

    /// Lets the process outlive the guard (e.g. `cargo xtask demo --keep`); its PID.
    pub fn release(mut self) -> u32 {
        self.child.take().map_or(0, |c| c.id())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = match self.grace {
                Some(grace) => stop(&mut child, libc::SIGTERM, grace),
                None => child.kill().and_then(|()| child.wait()),
            };
        }
    }
}

/// kill(2) of this child's PID.
fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) of our own, not yet reaped, child's PID.
        unsafe { libc::kill(pid, sig) };
    }
}

/// `sig`, up to `grace` for the exit, then SIGKILL; the exit status.
fn stop(child: &mut Child, sig: i32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal(child, sig);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait()
}
