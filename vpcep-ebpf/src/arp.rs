//! ARP responder: a VM asking for an endpoint address of its VPC, or for its gateway, gets
//! the node's virtual MAC, so overlapping VPCs need no per-VPC router on the node.
use network_types::eth::EthHdr;
use vpcep_common::{
    endpoint::{EndpointKey, LocalNic, NodeConfig},
    stats::Reason,
};

use crate::{maps::ENDPOINTS, parse::Frame};

/// Ethernet/IPv4 ARP body.
#[repr(C)]
struct ArpEth {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Rewrites a request for an endpoint or gateway address into the reply, in place.
/// `Ok(true)`: send it back out of the NIC; `Ok(false)`: not ours, pass.
#[inline(always)]
pub fn answer(frame: &Frame, nic: &LocalNic, node: &NodeConfig) -> Result<bool, Reason> {
    let eth: *mut EthHdr = frame.ptr_at(0, Reason::DropTruncEth)?;
    let arp: *mut ArpEth = match frame.ptr_at(EthHdr::LEN, Reason::PassArp) {
        Ok(a) => a,
        Err(_) => return Ok(false),
    };
    // SAFETY: bounds checked by ptr_at; both headers are inside the frame.
    unsafe {
        let a = &mut *arp;
        if a.htype != [0, 1] || a.ptype != [8, 0] || a.hlen != 6 || a.plen != 4 || a.op != [0, 1] {
            return Ok(false);
        }
        let target = u32::from_ne_bytes(a.tpa);
        let ours = target == nic.gateway_be && target != 0
            || ENDPOINTS
                .get_ptr(EndpointKey {
                    vpc_id: nic.vpc_id,
                    ip_be: target,
                })
                .is_some();
        if !ours || node.vmac == [0; 6] {
            return Ok(false);
        }
        let asker_mac = a.sha;
        let asker_ip = a.spa;
        a.op = [0, 2];
        a.tha = asker_mac;
        a.tpa = asker_ip;
        a.sha = node.vmac;
        a.spa = target.to_ne_bytes();
        (*eth).dst_addr = asker_mac;
        (*eth).src_addr = node.vmac;
    }
    Ok(true)
}
