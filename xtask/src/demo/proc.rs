//! The demo's long-running children: control plane, agent and backend.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use xtask::child::ChildGuard;

use super::ui::tail;

/// A long-running child (control plane, agent, backend), output to a log file, in its own
/// process group so that Ctrl-C reaches the demo only and cleanup runs in order. Its guard
/// stops it by PID on drop (SIGTERM, 5 s, SIGKILL) unless released.
pub(super) struct Proc {
    what: &'static str,
    /// What `--stop` calls it.
    pub(super) tag: &'static str,
    child: Option<ChildGuard>,
}

impl Proc {
    pub(super) fn spawn(
        what: &'static str,
        tag: &'static str,
        cmd: &mut Command,
        log: &Path,
    ) -> Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Plain log files, without colour codes.
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        Ok(Self {
            what,
            tag,
            child: Some(ChildGuard::from(child).with_grace(Duration::from_secs(5))),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    /// Fails when the process has already exited.
    pub(super) fn alive(&mut self, log: &Path) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "the {} exited ({status}); its log ({}):\n{}",
                self.what,
                log.display(),
                tail(log, 20)
            );
        }
        Ok(())
    }

    /// Forget the child without stopping it (`--keep`).
    pub(super) fn release(&mut self) {
        if let Some(c) = self.child.take() {
            c.release();
        }
    }
}

/// SIGTERM to a PID that a kept demo recorded (`--stop`; not a child of this process).
pub(super) fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) of one PID that this demo started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
