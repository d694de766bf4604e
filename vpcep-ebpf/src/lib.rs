//! Exists so `vpcep-userspace` can name this crate as a build dependency, which makes cargo
//! rebuild the object when this crate or `vpcep-common` changes. The programs are in the
//! `vpcep` binary target (`main.rs`).
#![no_std]
