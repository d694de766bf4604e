//! Types shared by the vpcep kernel programs and userspace.
//!
//! Everything here is `no_std` so the eBPF crate can use it; the `user` feature adds the
//! `aya::Pod` impls userspace needs to read and write the maps.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod csum;
pub mod endpoint;
pub mod maps;
#[cfg(feature = "user")]
pub mod model;
pub mod stats;

/// Implements `aya::Pod` for map types when built for userspace.
#[macro_export]
#[doc(hidden)]
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `repr(C)`, `Copy`, has explicit padding fields and no
            // invalid bit patterns, which is what `Pod` requires.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
