//! Per-CPU verdict and per-endpoint counters.
use vpcep_common::{
    maps::MAX_ENDPOINTS,
    stats::{Hook, Reason, stats_index},
};

use crate::maps::{EP_STATS, STATS};

#[inline(always)]
pub fn count(hook: Hook, reason: Reason, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(stats_index(hook, reason)) {
        // SAFETY: per-CPU slot, so no other writer races with this one.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// One packet of `bytes` forwarded for an endpoint (`new_flow` is 0 or 1).
#[inline(always)]
pub fn endpoint(id: u32, bytes: u64, new_flow: u64) {
    if id >= MAX_ENDPOINTS {
        return;
    }
    if let Some(c) = EP_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += new_flow;
        }
    }
}

#[inline(always)]
pub fn endpoint_drop(id: u32) {
    if id >= MAX_ENDPOINTS {
        return;
    }
    if let Some(c) = EP_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).drops += 1 };
    }
}
