//! One's complement arithmetic (RFC 1071/1624) on raw (network-order) words, shared by the
//! kernel programs and the reference model. Sums are byte-order independent, so values are
//! used exactly as loaded from the packet.

/// a + b with end-around carry.
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// Checksum difference of replacing `old` by `new` (32-bit words).
#[inline(always)]
pub const fn diff32(old: u32, new: u32) -> u32 {
    add(!old, new)
}

/// Checksum difference of replacing `old` by `new` (16-bit words).
#[inline(always)]
pub const fn diff16(old: u16, new: u16) -> u32 {
    add((!old) as u32, new as u32)
}

#[inline(always)]
pub const fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Applies a difference to a stored checksum field (HC' = ~(~HC + diff)).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    !fold(add((!check) as u32, diff))
}

/// What the kernel's `bpf_l4_csum_replace(skb, off, 0, diff, flags)` does to the field of
/// a packet whose checksum is not offloaded (`inet_proto_csum_replace_by_diff`), with
/// `BPF_F_MARK_MANGLED_0` when `mangled`: a zero UDP checksum stays zero, and a result of
/// zero is written as 0xffff.
#[inline(always)]
pub const fn kernel_l4_replace(field: u16, diff: u32, mangled: bool) -> u16 {
    if mangled && field == 0 {
        return 0;
    }
    let r = !fold(add(diff, !(field as u32)));
    if mangled && r == 0 { 0xffff } else { r }
}
