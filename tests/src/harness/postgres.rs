//! A throwaway PostgreSQL 15 server per test.
use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{ChildGuard, TempDir, free_port, spawn_guarded};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL 15 cluster in a temp dir on a unique loopback port, stopped and removed on
/// drop (even when the test fails). As root, it runs as the `postgres` user.
pub struct Postgres {
    child: Option<ChildGuard>,
    pub port: u16,
    _dir: TempDir,
}

fn postgres_ids() -> Option<(u32, u32)> {
    if !super::root::is_root() {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the result is read before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "the postgres user is missing (install postgresql)"
    );
    // SAFETY: checked non-null above.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn as_pg(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    pub fn start() -> Self {
        let dir = TempDir::new("pg");
        let ids = postgres_ids();
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.0.join("data");
        let out = as_pg(&mut Command::new(Path::new(PG_BIN).join("initdb")), ids)
            .args(["-A", "trust", "-U", "postgres", "-N", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = spawn_guarded(
            as_pg(&mut Command::new(Path::new(PG_BIN).join("postgres")), ids)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&dir.0)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=100",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pg = Self {
            child: Some(child),
            port,
            _dir: dir,
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown of the postmaster and its children; the guard kills
        // it if that takes more than 10 s.
        if let Some(child) = self.child.take() {
            let _ = child.signal_and_wait(libc::SIGQUIT, Duration::from_secs(10));
        }
    }
}
