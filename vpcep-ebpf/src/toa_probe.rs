//! A sock_ops program that records the TOA option a backend's own kernel receives on the
//! ACK completing each passive handshake: where Huawei's `toa.ko` reads it
//! (`tcp_v4_syn_recv_sock`). The tcp_proxy tests attach it to the cgroup of a backend server;
//! the agent never loads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probe {
    use aya_ebpf::{
        bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        macros::{map, sock_ops},
        maps::{Array, HashMap},
        programs::SockOpsContext,
    };

    /// The option kind to look for (the node's `toa_kind`), set before attaching.
    #[map(name = "TOA_PROBE_KIND")]
    static KIND: Array<u32> = Array::with_max_entries(1, 0);

    /// Per connection (remote IPv4 in network order << 32 | remote port as sock_ops gives
    /// it): the 8 option bytes, or zeros when the ACK carried none.
    #[map(name = "TOA_PROBE_SEEN")]
    static SEEN: HashMap<u64, [u8; 8]> = HashMap::with_max_entries(1024, 0);

    #[sock_ops]
    pub fn vpcep_toa_probe(ctx: SockOpsContext) -> u32 {
        if ctx.op() == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
            record(&ctx);
        }
        1
    }

    #[inline(always)]
    fn record(ctx: &SockOpsContext) {
        let Some(kind) = KIND.get(0) else {
            return;
        };
        let kind = *kind as u8;
        // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this call; in this callback the
        // skb fields point at the TCP header of the handshake's last ACK.
        let (data, end) = unsafe {
            (
                (*ctx.ops).__bindgen_anon_3.skb_data as usize,
                (*ctx.ops).__bindgen_anon_4.skb_data_end as usize,
            )
        };
        let key = ((ctx.remote_ip4() as u64) << 32) | ctx.remote_port() as u64;
        let mut seen = [0u8; 8];
        if data + 20 <= end {
            // SAFETY: inside [data, end), checked above.
            let hl = ((unsafe { *((data + 12) as *const u8) } >> 4) as usize) * 4;
            let mut i = 20usize;
            // At most 40 option bytes: a bounded walk.
            for _ in 0..40 {
                if i >= hl || i >= 60 {
                    break;
                }
                let p = data + i;
                if p + 2 > end {
                    break;
                }
                // SAFETY: p and p + 1 are inside [data, end), checked above.
                let (k, l) = unsafe { (*(p as *const u8), *((p + 1) as *const u8) as usize) };
                if k == 0 {
                    break;
                }
                if k == 1 {
                    i += 1;
                    continue;
                }
                if k == kind && l == 8 {
                    if p + 8 <= end {
                        for (j, b) in seen.iter_mut().enumerate() {
                            // SAFETY: p + j < p + 8 <= end.
                            *b = unsafe { *((p + j) as *const u8) };
                        }
                    }
                    break;
                }
                if l < 2 {
                    break;
                }
                i += l;
            }
        }
        let _ = SEEN.insert(key, seen, 0);
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Never reached by a program that loads (see main.rs).
    #[allow(clippy::empty_loop)]
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
