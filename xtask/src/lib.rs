//! Library half of xtask: the network-namespace topology helpers that the integration tests
//! share with `cargo xtask netns`.
pub mod netns;
