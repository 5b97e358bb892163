//! Flow hashing and slot choice, shared by both sides.
//!
//! The programs hash a new flow's 5-tuple and map the hash onto the ServIP's
//! slot table; the outer UDP source port of an encapsulated packet is derived
//! from the same hash so that ECMP and RSS spread tunnels the way flows spread.

/// Mixes a 5-tuple (addresses and ports as on the wire) into 32 bits.
///
/// A murmur3-style finaliser over two 64-bit words: cheap in eBPF (no loops,
/// no tables) and well distributed, which the slot tests check.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let a = ((saddr as u64) << 32) | daddr as u64;
    let b = ((sport as u64) << 48) | ((dport as u64) << 32) | proto as u64;
    let h = mix64(a ^ mix64(b ^ 0x9e37_79b9_7f4a_7c15));
    (h ^ (h >> 32)) as u32
}

#[inline(always)]
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Maps a flow hash onto `count` slots without a division (Lemire's
/// multiply-shift). `count == 0` yields 0; callers check for no backends first.
#[inline(always)]
pub fn pick_slot(hash: u32, count: u32) -> u32 {
    ((hash as u64 * count as u64) >> 32) as u32
}

/// The slot of a new flow: round robin takes the ServIP's turn counter (new
/// flows go to the slots in turn), every other policy the flow hash (so that
/// a weighted table is honoured in proportion and a flow's choice is stable).
#[inline(always)]
pub fn choose_slot(policy: u8, hash: u32, turn: u32, count: u32) -> u32 {
    if count == 0 {
        0
    } else if policy == crate::policy::Policy::Roundrobin.code() {
        turn % count
    } else {
        pick_slot(hash, count)
    }
}

/// Outer UDP source port for a flow: always in the dynamic range 49152..=65535.
#[inline(always)]
pub fn encap_sport(hash: u32) -> u16 {
    0xc000 | (hash as u16 & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_in_range_and_even() {
        let count = 7u32;
        let mut hits = [0u32; 7];
        for i in 0..70_000u32 {
            let h = flow_hash(0x0a1e_0102, 0xac1e_0001, (i % 60_000) as u16, 80, 6);
            let s = pick_slot(h, count);
            assert!(s < count);
            hits[s as usize] += 1;
        }
        for &n in &hits {
            assert!((9_000..11_000).contains(&n), "uneven slots: {hits:?}");
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }

    #[test]
    fn round_robin_takes_turns() {
        use crate::policy::Policy;
        let picks: [u32; 7] =
            core::array::from_fn(|t| choose_slot(Policy::Roundrobin.code(), 99, t as u32, 3));
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(choose_slot(Policy::Roundrobin.code(), 99, 5, 0), 0);
        assert_eq!(choose_slot(Policy::Fastest.code(), 0x8000_0000, 5, 4), 2);
    }

    #[test]
    fn zero_slots_and_sport_range() {
        assert_eq!(pick_slot(u32::MAX, 0), 0);
        assert_eq!(pick_slot(u32::MAX, 1), 0);
        for h in [0, 1, 0x3fff, 0xffff, u32::MAX] {
            assert!(encap_sport(h) >= 49152);
        }
    }
}
