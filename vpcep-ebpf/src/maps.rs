//! Map definitions; names and layouts come from `vpcep_common`.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use vpcep_common::stats::{Counter, STATS_ENTRIES};

#[map(name = "VPCEP_STATS_V1")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);
