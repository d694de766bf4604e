//! Child processes of the tests, each under the project's one guard
//! ([`xtask::child::ChildGuard`]): killed by its PID and reaped however the test ends.
use std::process::Command;

pub use xtask::child::ChildGuard;

/// Spawns `cmd` under the guard, panicking with the program's name when that fails.
pub fn spawn_guarded(cmd: &mut Command) -> ChildGuard {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
    ChildGuard::from(child)
}
