//! One's complement arithmetic (RFC 1071/1624) on raw (network-order) words. Sums are
//! byte-order independent, so values are used exactly as loaded from the packet.

/// a + b with end-around carry.
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// Checksum difference of replacing `old` by `new` (32-bit words).
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u32 {
    add(!old, new)
}

/// Checksum difference of replacing `old` by `new` (16-bit words).
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u32 {
    add((!old) as u32, new as u32)
}

#[inline(always)]
pub fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Applies a difference to a stored checksum field (HC' = ~(~HC + diff)).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    !fold(add((!check) as u32, diff))
}
