//! Entry points of the vpcep kernel programs. Each returns the verdict of a `try`-style
//! function; every packet is counted once under the reason for its verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod arp;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod datapath;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tunnel;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
        helpers::bpf_redirect,
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use vpcep_common::stats::{Hook, Reason};

    use crate::{
        datapath::{self, Action},
        floor,
        parse::{self, Frame},
        stats,
    };

    #[xdp]
    pub fn vpcep_xdp(ctx: XdpContext) -> u32 {
        let frame = Frame::new(ctx.data(), ctx.data_end());
        // SAFETY: ctx.ctx points at the kernel's xdp_md for this call.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let (reason, action) = match datapath::xdp_ingress(&frame, ifindex) {
            Ok(v) => v,
            Err(r) => (r, Action::Drop),
        };
        stats::count(Hook::Xdp, reason, frame.len() as u64);
        match action {
            Action::Pass | Action::Redirect(_) => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            Action::Tx => xdp_action::XDP_TX,
        }
    }

    /// Baseline for benchmarks: the cost of running any XDP program at all.
    #[xdp]
    pub fn vpcep_noop_xdp(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Baseline for benchmarks: the cost of running any TC program at all.
    #[classifier]
    pub fn vpcep_noop_tc(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// Benchmark floor: what an established flow's packet costs at least (`floor.rs`).
    #[classifier]
    pub fn vpcep_floor_established(ctx: TcContext) -> i32 {
        floor::established(&ctx).unwrap_or(TC_ACT_OK)
    }

    /// Benchmark floor: what a new flow's map work costs at least (`floor.rs`).
    #[classifier]
    pub fn vpcep_floor_new_flow(ctx: TcContext) -> i32 {
        floor::new_flow(&ctx).unwrap_or(TC_ACT_OK)
    }

    /// Conntrack GC for the agent, run through BPF_PROG_TEST_RUN (`conntrack::gc`).
    #[classifier]
    pub fn vpcep_gc(_ctx: TcContext) -> i32 {
        match crate::conntrack::gc() {
            Some(()) => TC_ACT_OK,
            None => TC_ACT_SHOT,
        }
    }

    #[classifier]
    pub fn vpcep_tc_ingress(ctx: TcContext) -> i32 {
        tc(&ctx, datapath::tc_ingress)
    }

    /// On the node's VXLAN device; counted under the TC ingress hook with its own reasons.
    #[classifier]
    pub fn vpcep_tc_tunnel(ctx: TcContext) -> i32 {
        tc(&ctx, datapath::tc_tunnel)
    }

    #[inline(always)]
    fn tc(
        ctx: &TcContext,
        f: impl FnOnce(&TcContext, u32) -> Result<(Reason, Action), Reason>,
    ) -> i32 {
        // Headers are normally linear; pull them in when they are not.
        let want = parse::MAX_HEADERS.min(ctx.len() as usize) as u32;
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        let len = ctx.len() as u64;
        // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for this call.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let (reason, action) = match f(ctx, ifindex) {
            Ok(v) => v,
            Err(r) => (r, Action::Drop),
        };
        stats::count(Hook::TcIngress, reason, len);
        match action {
            Action::Pass => TC_ACT_OK,
            Action::Drop => TC_ACT_SHOT,
            // SAFETY: plain helper call; it returns TC_ACT_REDIRECT or TC_ACT_SHOT.
            Action::Tx => unsafe { bpf_redirect(ifindex, 0) as i32 },
            // SAFETY: as above.
            Action::Redirect(out) => unsafe { bpf_redirect(out, 0) as i32 },
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
