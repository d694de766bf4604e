//! Library half of xtask: the network-namespace topology helpers and the child-process
//! guard that the integration tests share with `cargo xtask`.
pub mod child;
pub mod netns;
