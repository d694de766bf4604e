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
// Benchmark-only programs: built with `--features bench`, absent from the shipped object.
#[cfg(all(target_arch = "bpf", feature = "bench"))]
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
mod proxy;
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

    #[cfg(feature = "bench")]
    use crate::floor;
    use crate::{
        datapath::{self, Action},
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
    #[cfg(feature = "bench")]
    #[xdp]
    pub fn vpcep_noop_xdp(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Baseline for benchmarks: the cost of running any TC program at all.
    #[cfg(feature = "bench")]
    #[classifier]
    pub fn vpcep_noop_tc(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// Benchmark floor: what an established flow's packet costs at least (`floor.rs`).
    #[cfg(feature = "bench")]
    #[classifier]
    pub fn vpcep_floor_established(ctx: TcContext) -> i32 {
        floor::established(&ctx).unwrap_or(TC_ACT_OK)
    }

    /// Benchmark floor: what a new flow's map work costs at least (`floor.rs`).
    #[cfg(feature = "bench")]
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

    // Inlined into the entry the macro wraps around it: one BPF function for the path, as
    // the verifier budgets 512 bytes of stack per call chain.
    #[classifier]
    #[inline(always)]
    pub fn vpcep_tc_ingress(ctx: TcContext) -> i32 {
        let (ifindex, len) = prepare(&ctx);
        finish(ifindex, len, datapath::tc_ingress(&ctx, ifindex))
    }

    /// On the node's VXLAN device; counted under the TC ingress hook with its own reasons.
    #[classifier]
    #[inline(always)]
    pub fn vpcep_tc_tunnel(ctx: TcContext) -> i32 {
        let (ifindex, len) = prepare(&ctx);
        finish(ifindex, len, datapath::tc_tunnel(&ctx, ifindex))
    }

    /// Pulls the headers in when they are not linear (they normally are); returns the
    /// receiving ifindex and the packet's length. (Called directly, not through a
    /// closure: that keeps the path one BPF function, whose stack the verifier budgets.)
    #[inline(always)]
    fn prepare(ctx: &TcContext) -> (u32, u64) {
        let want = parse::MAX_HEADERS.min(ctx.len() as usize) as u32;
        if ctx.data_end() - ctx.data() < want as usize {
            let _ = ctx.pull_data(want);
        }
        // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for this call.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        (ifindex, ctx.len() as u64)
    }

    /// Counts the verdict and carries it out.
    #[inline(always)]
    fn finish(ifindex: u32, len: u64, v: Result<(Reason, Action), Reason>) -> i32 {
        let (reason, action) = match v {
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
    // Never reached by a program that loads: a path to it ends in this unbounded loop,
    // which the verifier refuses, so a panic can never become undefined behaviour.
    #[allow(clippy::empty_loop)]
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
