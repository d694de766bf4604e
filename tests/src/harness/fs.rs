//! Directories that a test owns and that are removed when it ends, however it ends.
use std::path::{Path, PathBuf};

/// A uniquely named directory (`vpcep-<tag>-<uuid>`), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Under the system's temporary directory.
    pub fn new(tag: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// Under `base`.
    pub fn new_in(base: &Path, tag: &str) -> Self {
        let p = base.join(format!("vpcep-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// A pin directory under /sys/fs/bpf.
    pub fn bpffs(tag: &str) -> Self {
        Self::new_in(Path::new("/sys/fs/bpf"), tag)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Under bpffs, removing the pins unpins the maps and releases pinned links.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
