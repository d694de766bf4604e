//! Entry points of the vpcep kernel programs. Each returns the verdict of a `try_` function;
//! every packet is counted once under the reason for its verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use vpcep_common::stats::{Hook, Reason};

    use crate::{
        parse::{self, Frame},
        stats,
    };

    /// Classifies a frame; the verdict is pass unless the reason is a drop reason.
    #[inline(always)]
    fn classify(frame: &Frame) -> Reason {
        match parse::parse(frame) {
            Ok(pkt) => pkt.pass_reason(),
            Err(reason) => reason,
        }
    }

    #[xdp]
    pub fn vpcep_xdp(ctx: XdpContext) -> u32 {
        let frame = Frame::new(ctx.data(), ctx.data_end());
        let reason = classify(&frame);
        stats::count(Hook::Xdp, reason, frame.len() as u64);
        if reason.is_drop() {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    #[classifier]
    pub fn vpcep_tc_ingress(ctx: TcContext) -> i32 {
        // Headers of a VM's packet are normally linear; pull them in when they are not.
        let want = parse::MAX_HEADERS.min(ctx.len() as usize) as u32;
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        let frame = Frame::new(ctx.data(), ctx.data_end());
        let reason = classify(&frame);
        stats::count(Hook::TcIngress, reason, ctx.len() as u64);
        if reason.is_drop() {
            TC_ACT_SHOT
        } else {
            TC_ACT_OK
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
