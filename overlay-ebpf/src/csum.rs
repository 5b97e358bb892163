//! Internet checksums (RFC 1071) computed in the program, without helpers.

use crate::layout::{IPV4_WORDS, Ipv4};

/// Folds a one's complement sum into the 16-bit checksum field value.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's complement sum of a fixed-size array of 16-bit words.
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += words[i] as u64;
        i += 1;
    }
    sum
}

/// `check` after a 32-bit field it covers changed from `old` to `new`
/// (RFC 1624: HC' = ~(~HC + ~m + m')). Byte order does not matter as long
/// as all three are taken from the packet the same way.
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u64
        + ((!old) & 0xffff) as u64
        + ((!old) >> 16) as u64
        + (new & 0xffff) as u64
        + (new >> 16) as u64;
    fold(sum)
}

/// The header as 16-bit words, the unit checksums are summed in.
#[inline(always)]
pub fn ipv4_words(ip: Ipv4) -> [u16; IPV4_WORDS] {
    // SAFETY: `Ipv4` is 20 bytes of plain data without padding.
    unsafe { core::mem::transmute(ip) }
}

/// Checksum of a 20-byte IPv4 header whose `check` field is zero.
#[inline(always)]
pub fn ipv4_csum(ip: &Ipv4) -> u16 {
    fold(sum_words(&ipv4_words(*ip)))
}
