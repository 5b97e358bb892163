//! The probe datagram, 40 bytes, integers big-endian:
//!
//! | bytes  | field |
//! | ------ | ----- |
//! | 0..4   | magic `EE 57 50 01` |
//! | 4      | kind: 1 = probe, 2 = echo |
//! | 5..8   | zero |
//! | 8..12  | node id of the sender of this message (u32) |
//! | 12..16 | sequence number (u32) |
//! | 16..24 | send time: nanoseconds on the prober's monotonic clock (u64), copied unchanged into the echo |
//! | 24..40 | MAC: the first 16 bytes of HMAC-SHA256(cluster key, bytes 0..24) |
//!
//! The magic starts with 0xEE because an IPv4 header starts with 0x4_: the
//! dataplane's uplink program tells probes from tunnelled packets on the EWP
//! by the first payload byte and passes probes up to the agent's socket.

use ring::hmac;

/// First four bytes of every probe datagram.
pub const PROBE_MAGIC: [u8; 4] = [0xEE, 0x57, 0x50, 0x01];
/// Length of every probe datagram.
pub const PROBE_LEN: usize = 40;

/// Bytes covered by the MAC.
const SIGNED_LEN: usize = 24;
/// Truncated HMAC-SHA256: 128 bits are plenty against forgery and keep the
/// datagram small.
const MAC_LEN: usize = PROBE_LEN - SIGNED_LEN;

/// What a datagram asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Please echo this back.
    Probe = 1,
    /// The answer to a probe.
    Echo = 2,
}

/// A decoded, authenticated datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Probe or echo.
    pub kind: Kind,
    /// Node id of the node that sent this message.
    pub sender: u32,
    /// The prober's sequence number.
    pub seq: u32,
    /// The prober's send time, in nanoseconds.
    pub t_ns: u64,
}

/// Why a datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not [`PROBE_LEN`] bytes long.
    #[error("{0} bytes, a probe datagram has {PROBE_LEN}")]
    Length(usize),
    /// Does not start with [`PROBE_MAGIC`].
    #[error("bad magic")]
    Magic,
    /// Authenticated, but of a kind this version does not know.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// The MAC does not match: corrupted, forged, or another cluster's key.
    #[error("bad MAC")]
    Mac,
}

/// The HMAC key for a cluster secret.
pub fn mac_key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// Builds a signed datagram.
pub fn encode(kind: Kind, sender: u32, seq: u32, t_ns: u64, key: &hmac::Key) -> [u8; PROBE_LEN] {
    let mut buf = [0u8; PROBE_LEN];
    buf[0..4].copy_from_slice(&PROBE_MAGIC);
    buf[4] = kind as u8;
    buf[8..12].copy_from_slice(&sender.to_be_bytes());
    buf[12..16].copy_from_slice(&seq.to_be_bytes());
    buf[16..24].copy_from_slice(&t_ns.to_be_bytes());
    sign(&mut buf, key);
    buf
}

/// Checks and parses a datagram. The MAC is checked before the kind, so an
/// unknown kind is only reported for a datagram from the cluster.
pub fn decode(buf: &[u8], key: &hmac::Key) -> Result<Message, WireError> {
    let buf: &[u8; PROBE_LEN] = buf.try_into().map_err(|_| WireError::Length(buf.len()))?;
    if buf[0..4] != PROBE_MAGIC {
        return Err(WireError::Magic);
    }
    let tag = hmac::sign(key, &buf[..SIGNED_LEN]);
    if !equal_in_constant_time(&tag.as_ref()[..MAC_LEN], &buf[SIGNED_LEN..]) {
        return Err(WireError::Mac);
    }
    let kind = match buf[4] {
        1 => Kind::Probe,
        2 => Kind::Echo,
        other => return Err(WireError::Kind(other)),
    };
    Ok(Message {
        kind,
        sender: u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")),
        seq: u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes")),
        t_ns: u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")),
    })
}

/// Writes the MAC of bytes 0..24 into bytes 24..40.
fn sign(buf: &mut [u8; PROBE_LEN], key: &hmac::Key) {
    let tag = hmac::sign(key, &buf[..SIGNED_LEN]);
    buf[SIGNED_LEN..].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
}

/// `ring::hmac::verify` compares against the full 32-byte tag, so it cannot
/// check a truncated MAC; this comparison takes the same time wherever the
/// first difference is, so the MAC cannot be guessed byte by byte.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> hmac::Key {
        mac_key(&[byte; 32])
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        for kind in [Kind::Probe, Kind::Echo] {
            let buf = encode(kind, 7, 0xdead_beef, u64::MAX - 3, &k);
            assert_eq!(buf[0..4], PROBE_MAGIC);
            assert_eq!(buf[5..8], [0, 0, 0]);
            let m = decode(&buf, &k).unwrap();
            let want = Message {
                kind,
                sender: 7,
                seq: 0xdead_beef,
                t_ns: u64::MAX - 3,
            };
            assert_eq!(m, want);
        }
    }

    #[test]
    fn layout_is_big_endian_at_the_documented_offsets() {
        let buf = encode(
            Kind::Echo,
            0x0102_0304,
            0x0506_0708,
            0x090a_0b0c_0d0e_0f10,
            &key(1),
        );
        assert_eq!(buf[4], 2);
        assert_eq!(buf[8..12], [1, 2, 3, 4]);
        assert_eq!(buf[12..16], [5, 6, 7, 8]);
        assert_eq!(buf[16..24], [9, 10, 11, 12, 13, 14, 15, 16]);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = key(1);
        let good = encode(Kind::Probe, 3, 4, 5, &k);
        for byte in 0..PROBE_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[byte] ^= 1 << bit;
                assert!(decode(&bad, &k).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_key_is_rejected() {
        let buf = encode(Kind::Probe, 3, 4, 5, &key(1));
        assert_eq!(decode(&buf, &key(2)), Err(WireError::Mac));
    }

    #[test]
    fn short_and_long_buffers_are_rejected() {
        let k = key(1);
        let good = encode(Kind::Probe, 3, 4, 5, &k);
        for len in [0, 1, 4, 24, PROBE_LEN - 1] {
            assert_eq!(decode(&good[..len], &k), Err(WireError::Length(len)));
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode(&long, &k), Err(WireError::Length(PROBE_LEN + 1)));
    }

    #[test]
    fn errors_are_told_apart() {
        let k = key(1);
        let mut buf = encode(Kind::Probe, 3, 4, 5, &k);
        buf[0] = 0x45;
        assert_eq!(decode(&buf, &k), Err(WireError::Magic));
        let mut buf = encode(Kind::Probe, 3, 4, 5, &k);
        buf[4] = 9;
        assert_eq!(decode(&buf, &k), Err(WireError::Mac));
        sign(&mut buf, &k);
        assert_eq!(decode(&buf, &k), Err(WireError::Kind(9)));
    }
}
