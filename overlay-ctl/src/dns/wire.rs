//! Small pieces shared by the DNS and mDNS front ends: a query name as text
//! without allocating, and the records they answer with.

use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, NULL, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A DNS name as dotted text in a stack buffer (wire names are at most 255
/// octets, so the text always fits). Bytes that cannot appear in a name of
/// the scheme (non-ASCII, controls, a `.` inside a label) become `?`, which
/// the name parser rejects as a bad character, so such names are malformed
/// under `.local` and foreign elsewhere, never misread.
pub(crate) struct NameText {
    bytes: [u8; 256],
    len: usize,
}

impl NameText {
    pub(crate) fn new(name: &Name) -> NameText {
        let mut text = NameText {
            bytes: [0; 256],
            len: 0,
        };
        for (i, label) in name.iter().enumerate() {
            if i > 0 {
                text.push(b'.');
            }
            for &b in label {
                text.push(if b.is_ascii_graphic() && b != b'.' {
                    b
                } else {
                    b'?'
                });
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII bytes are ever pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

/// The A record of an answer.
pub(crate) fn a_record(name: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), ttl, RData::A(A(ip)))
}

/// The SOA of the `local.` zone, sent with negative answers so that caches
/// keep an NXDOMAIN or an empty answer for `ttl` seconds (RFC 2308).
pub(crate) fn soa_record(ttl: u32) -> Record {
    let local = Name::from_ascii("local.").expect("valid name");
    let mname = Name::from_ascii("ns.local.").expect("valid name");
    let rname = Name::from_ascii("hostmaster.local.").expect("valid name");
    let ttl_i = i32::try_from(ttl).unwrap_or(i32::MAX);
    let soa = SOA::new(mname, rname, 1, ttl_i, ttl_i, ttl_i, ttl);
    Record::from_rdata(local, ttl, RData::SOA(soa))
}

/// An NSEC record saying that `name` has an A record and nothing else: the
/// mDNS way of answering "no AAAA here" (RFC 6762 section 6.1). Built by
/// hand (next name = the name itself, uncompressed; type bitmap window 0 with
/// only bit 1 = A) so that no DNSSEC feature is needed.
pub(crate) fn nsec_a_only(name: &Name, ttl: u32) -> Record {
    let mut rdata = Vec::with_capacity(name.len() + 5);
    for label in name.iter() {
        rdata.push(label.len() as u8);
        rdata.extend_from_slice(label);
    }
    rdata.push(0);
    // Window 0, one bitmap octet, bit 1 (type A = 1) set.
    rdata.extend_from_slice(&[0, 1, 0b0100_0000]);
    Record::from_rdata(
        name.clone(),
        ttl,
        RData::Unknown {
            code: RecordType::NSEC,
            rdata: NULL::with(rdata),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_text() {
        let n = Name::from_ascii("Shop.prod.cart.team1.any.closest.local.").unwrap();
        assert_eq!(
            NameText::new(&n).as_str(),
            "Shop.prod.cart.team1.any.closest.local"
        );
        assert_eq!(NameText::new(&Name::root()).as_str(), "");
        let odd = Name::from_labels(vec![&b"a.b"[..], &b"c\xffd"[..], &b"local"[..]]).unwrap();
        assert_eq!(NameText::new(&odd).as_str(), "a?b.c?d.local");
        let long = Name::from_labels(vec![&[b'x'; 63][..]; 3]).unwrap();
        assert_eq!(NameText::new(&long).as_str().len(), 3 * 63 + 2);
    }

    #[test]
    fn nsec_rdata() {
        let n = Name::from_ascii("a.b.local.").unwrap();
        let rec = nsec_a_only(&n, 5);
        assert_eq!(rec.record_type(), RecordType::NSEC);
        let RData::Unknown { rdata, .. } = &rec.data else {
            panic!("{rec:?}");
        };
        assert_eq!(
            rdata.anything.as_slice(),
            b"\x01a\x01b\x05local\x00\x00\x01\x40".as_slice()
        );
    }
}
