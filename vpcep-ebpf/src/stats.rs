//! Per-CPU verdict counters.
use vpcep_common::stats::{Hook, Reason, stats_index};

use crate::maps::STATS;

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
