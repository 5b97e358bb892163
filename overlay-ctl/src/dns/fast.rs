//! The fast path of the UDP server: a plain query (one question, no
//! compression, at most an EDNS version 0 OPT record) for a name that has
//! an address is answered straight from the datagram's bytes into a stack
//! buffer, without parsing into hickory's types or allocating. Everything
//! else (negative answers, other types and classes, odd messages) returns
//! `None` and takes the full hickory path, which answers it the same way
//! the rest of the module documents.

use std::net::Ipv4Addr;

use super::{Answer, resolve};
use crate::model::ClusterState;

const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
/// The UDP payload size we advertise (as the full path does).
const EDNS_PAYLOAD: u16 = 1232;
/// Longest reply: header, a question of at most 255 + 4 octets, the answer
/// (16) and an OPT record (11).
pub(super) const MAX_REPLY: usize = HEADER + 259 + 16 + 11;

/// Writes the reply to `query` into `out` and returns its length, or `None`
/// when the query is not the simple positive case.
pub(super) fn answer(
    query: &[u8],
    state: &ClusterState,
    ttl: u32,
    recursion_available: bool,
    out: &mut [u8; MAX_REPLY],
) -> Option<usize> {
    let header = query.get(..HEADER)?;
    let (flags, counts) = (&header[2..4], &header[4..12]);
    // QR=0, opcode 0 (QUERY), TC=0; one question, no answers or authorities,
    // at most one additional (the OPT).
    if flags[0] & 0b1111_1010 != 0 || counts[..6] != [0, 1, 0, 0, 0, 0] || counts[6] != 0 {
        return None;
    }
    let additionals = counts[7];
    if additionals > 1 {
        return None;
    }

    // The question: uncompressed labels as text.
    let mut text = [0u8; 256];
    let (mut pos, mut len) = (HEADER, 0);
    loop {
        let label = usize::from(*query.get(pos)?);
        pos += 1;
        if label == 0 {
            break;
        }
        // A compression pointer (or a reserved label type): full path.
        if label > 63 {
            return None;
        }
        if len > 0 {
            *text.get_mut(len)? = b'.';
            len += 1;
        }
        for &b in query.get(pos..pos + label)? {
            *text.get_mut(len)? = if b.is_ascii_graphic() && b != b'.' {
                b
            } else {
                b'?'
            };
            len += 1;
        }
        pos += label;
    }
    let qtype = u16::from_be_bytes(query.get(pos..pos + 2)?.try_into().ok()?);
    let qclass = u16::from_be_bytes(query.get(pos + 2..pos + 4)?.try_into().ok()?);
    let question_end = pos + 4;
    if !matches!(qtype, TYPE_A | TYPE_ANY) || !matches!(qclass, CLASS_IN | CLASS_ANY) {
        return None;
    }
    let edns = match additionals {
        0 if question_end == query.len() => false,
        1 if is_plain_opt(&query[question_end..]) => true,
        _ => return None,
    };
    let name = std::str::from_utf8(&text[..len]).ok()?;
    let Answer::Address(ip) = resolve(state, name) else {
        return None;
    };
    Some(write_reply(
        query,
        question_end,
        flags,
        ttl,
        ip,
        edns,
        recursion_available,
        out,
    ))
}

/// An OPT record of EDNS version 0 that ends the message.
fn is_plain_opt(rr: &[u8]) -> bool {
    // Root name, type, payload size, extended rcode, version, flags, rdlength.
    if rr.len() < 11 || rr[0] != 0 {
        return false;
    }
    let rtype = u16::from_be_bytes([rr[1], rr[2]]);
    let version = rr[6];
    let rdlength = usize::from(u16::from_be_bytes([rr[9], rr[10]]));
    rtype == TYPE_OPT && version == 0 && rr.len() == 11 + rdlength
}

#[allow(clippy::too_many_arguments)]
fn write_reply(
    query: &[u8],
    question_end: usize,
    flags: &[u8],
    ttl: u32,
    ip: Ipv4Addr,
    edns: bool,
    recursion_available: bool,
    out: &mut [u8; MAX_REPLY],
) -> usize {
    // ID as asked; QR, AA, RD copied; RA if we forward; CD copied; rcode 0.
    out[..2].copy_from_slice(&query[..2]);
    out[2] = 0b1000_0100 | (flags[0] & 0b0000_0001);
    out[3] = (u8::from(recursion_available) << 7) | (flags[1] & 0b0001_0000);
    out[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, u8::from(edns)]);
    let mut n = question_end;
    out[HEADER..n].copy_from_slice(&query[HEADER..n]);
    // The answer: a pointer to the question's name, A, IN, TTL, 4 octets.
    let mut put = |bytes: &[u8]| {
        out[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    put(&[0xc0, HEADER as u8]);
    put(&TYPE_A.to_be_bytes());
    put(&CLASS_IN.to_be_bytes());
    put(&ttl.to_be_bytes());
    put(&4u16.to_be_bytes());
    put(&ip.octets());
    if edns {
        put(&[0]);
        put(&TYPE_OPT.to_be_bytes());
        put(&EDNS_PAYLOAD.to_be_bytes());
        put(&[0, 0, 0, 0, 0, 0]);
    }
    n
}
