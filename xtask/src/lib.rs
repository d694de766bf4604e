//! Library half of xtask: the network-namespace topology helpers and the child-process
//! guard that the integration tests share with `cargo xtask`.
pub mod child;
pub mod netns;

/// Writes a file that holds secrets, readable by its owner only (the control plane refuses a
/// credentials file that others can read).
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
