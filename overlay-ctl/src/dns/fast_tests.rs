//! The UDP fast path (`fast.rs`): what it answers, byte-exact enough for
//! hickory to read back, and everything it leaves to the full path.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::fast::{MAX_REPLY, answer};
use super::tests::{sample_state, service_spec};

const CART: &str = "Shop.Prod.Cart.Team1.ANY.closest.local.";

fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m
}

fn run(bytes: &[u8], ra: bool) -> Option<Message> {
    let mut out = [0u8; MAX_REPLY];
    let n = answer(bytes, &sample_state(), 5, ra, &mut out)?;
    Some(Message::from_vec(&out[..n]).unwrap())
}

#[test]
fn answers_a_and_any_with_and_without_edns() {
    for (qtype, edns) in [
        (RecordType::A, false),
        (RecordType::A, true),
        (RecordType::ANY, false),
    ] {
        let q = query(CART, qtype, edns);
        let r = run(&q.to_vec().unwrap(), false).expect("answered");
        assert_eq!(r.metadata.id, 0xbeef);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.op_code, OpCode::Query);
        assert!(r.metadata.authoritative);
        assert!(r.metadata.recursion_desired);
        assert!(!r.metadata.recursion_available);
        assert!(!r.metadata.truncation);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.queries, q.queries);
        assert_eq!(r.answers.len(), 1);
        let a = &r.answers[0];
        assert_eq!(a.name.to_ascii(), CART);
        assert_eq!(a.ttl, 5);
        assert_eq!(a.dns_class, DNSClass::IN);
        assert_eq!(a.data, RData::A(A(Ipv4Addr::new(172, 30, 0, 1))));
        assert!(r.authorities.is_empty() && r.additionals.is_empty());
        assert_eq!(r.edns.is_some(), edns);
        if let Some(e) = &r.edns {
            assert_eq!(e.max_payload(), 1232);
            assert_eq!(e.version(), 0);
        }
    }
}

#[test]
fn recursion_available_and_cd_are_reflected() {
    let mut q = query(CART, RecordType::A, false);
    q.metadata.checking_disabled = true;
    q.metadata.recursion_desired = false;
    let r = run(&q.to_vec().unwrap(), true).unwrap();
    assert!(r.metadata.recursion_available);
    assert!(r.metadata.checking_disabled);
    assert!(!r.metadata.recursion_desired);
}

#[test]
fn leaves_everything_else_to_the_full_path() {
    for (name, qtype) in [
        (CART, RecordType::AAAA),
        (CART, RecordType::MX),
        ("shop.prod.nope.team1.any.closest.local.", RecordType::A),
        ("shop.prod.db.team1.any.closest.local.", RecordType::A),
        ("cart.local.", RecordType::A),
        ("example.com.", RecordType::A),
        (".", RecordType::A),
    ] {
        let q = query(name, qtype, true);
        assert!(run(&q.to_vec().unwrap(), false).is_none(), "{name} {qtype}");
    }
    let ok = query(CART, RecordType::A, false).to_vec().unwrap();
    let mut bad = Vec::new();
    // A response, another opcode, truncated, two questions, an answer.
    let mut m = ok.clone();
    m[2] |= 0x80;
    bad.push(m);
    let mut m = ok.clone();
    m[2] |= 0x10;
    bad.push(m);
    let mut m = ok.clone();
    m[2] |= 0x02;
    bad.push(m);
    let mut m = ok.clone();
    m[5] = 2;
    bad.push(m);
    let mut m = ok.clone();
    m[7] = 1;
    bad.push(m);
    // Trailing garbage, a cut-off message, a class other than IN/ANY.
    let mut m = ok.clone();
    m.push(0);
    bad.push(m);
    bad.push(ok[..ok.len() - 1].to_vec());
    bad.push(ok[..11].to_vec());
    let mut m = ok.clone();
    let n = m.len();
    m[n - 1] = 3;
    bad.push(m);
    // A compression pointer in the question.
    let mut m = ok[..12].to_vec();
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    bad.push(m);
    // EDNS version 1.
    let mut q = query(CART, RecordType::A, false);
    let mut e = Edns::new();
    e.set_version(1);
    q.set_edns(e);
    bad.push(q.to_vec().unwrap());
    for (i, m) in bad.iter().enumerate() {
        let mut out = [0u8; MAX_REPLY];
        assert_eq!(
            answer(m, &sample_state(), 5, false, &mut out),
            None,
            "case {i}"
        );
    }
    assert!(run(&ok, false).is_some());
}

#[test]
fn longest_names_fit() {
    // The longest name of the scheme that DNS can carry is answered; an
    // over-long label falls through instead of overflowing anything.
    let l = "x".repeat(57);
    let service = format!("{l}.{l}.{l}.{l}");
    let name = format!("{service}.any.closest.local.");
    assert_eq!(name.len(), 250);
    let mut state = sample_state();
    state.services.push(service_spec(
        &service,
        false,
        [(crate::model::Policy::Closest, Ipv4Addr::new(172, 30, 9, 9))].into(),
    ));
    let q = query(&name, RecordType::A, true).to_vec().unwrap();
    let mut out = [0u8; MAX_REPLY];
    let n = answer(&q, &state, 5, false, &mut out).expect("answered");
    let r = Message::from_vec(&out[..n]).unwrap();
    assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(172, 30, 9, 9))));

    let mut q = query(CART, RecordType::A, true).to_vec().unwrap();
    // Overwrite the first label with 63 bytes: malformed, not a crash.
    q.splice(12..17, std::iter::once(63).chain([b'a'; 63]));
    assert!(run(&q, false).is_none());
}
