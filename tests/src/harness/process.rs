//! The one guard for child processes that tests start: whatever way the test ends, the child
//! is killed by its PID and reaped.
use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Output},
    time::{Duration, Instant},
};

/// A child process, killed with SIGKILL (by PID) and reaped on drop unless it has exited.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// Spawns `cmd`, panicking with its program name when that fails.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        Self(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The exit status if the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().unwrap()
    }

    /// Whether the child has exited (it is reaped then).
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }

    /// Sends `signal` and waits up to `grace` for the exit; whether it exited.
    pub fn signal_and_wait(&mut self, signal: i32, grace: Duration) -> bool {
        if self.exited() {
            return true;
        }
        // SAFETY: kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.0.id() as i32, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL now and reap.
    pub fn kill9(self) {
        drop(self);
    }

    /// Waits up to `timeout` for the exit and returns the exit status and the piped stdout
    /// and stderr (read on threads of their own, so that a full pipe cannot block the
    /// child); `None` when it did not exit in time (it is killed then).
    pub fn output_within(mut self, timeout: Duration) -> Option<Output> {
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(self.0.stdout.take().map(|s| Box::new(s) as _));
        let err = drain(self.0.stderr.take().map(|s| Box::new(s) as _));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Some(Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.exited() {
            // SAFETY: kill(2) of our own child, which has not been reaped yet.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}
