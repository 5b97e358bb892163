//! The mDNS reply rules, on [`respond`] directly (the socket side is covered
//! by `tests/dns/`).

use std::net::{Ipv4Addr, SocketAddrV4};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::mdns::{MDNS_ADDR, MDNS_PORT, respond};
use super::tests::sample_state;

const CART: &str = "shop.prod.cart.team1.any.closest.local.";
const CART_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

fn query(questions: &[(&str, RecordType, bool)], id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    for (name, ty, qu) in questions {
        let mut q = Query::query(Name::from_ascii(name).unwrap(), *ty);
        q.set_mdns_unicast_response(*qu);
        m.add_query(q);
    }
    m
}

fn replies(m: &Message, port: u16) -> Vec<(SocketAddrV4, Message)> {
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), port);
    respond(&sample_state(), 5, &m.to_vec().unwrap(), from)
        .into_iter()
        .map(|(dst, bytes)| (dst, Message::from_vec(&bytes).unwrap()))
        .collect()
}

fn a_of(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect()
}

#[test]
fn one_shot_gets_unicast_with_id_and_question() {
    let q = query(&[(CART, RecordType::A, false)], 0x1234);
    let r = replies(&q, 40000);
    assert_eq!(r.len(), 1);
    let (dst, m) = &r[0];
    assert_eq!(*dst, SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 40000));
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert_eq!(m.queries, q.queries);
    assert_eq!(a_of(m), [CART_IP]);
    assert!(!m.answers[0].mdns_cache_flush);
    assert!(m.additionals.is_empty());
}

#[test]
fn legacy_ttl_is_capped() {
    let q = query(&[(CART, RecordType::A, false)], 1);
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 40000);
    let r = respond(&sample_state(), 120, &q.to_vec().unwrap(), from);
    let m = Message::from_vec(&r[0].1).unwrap();
    assert_eq!(m.answers[0].ttl, 10);
}

#[test]
fn continuous_query_gets_multicast_without_question() {
    let q = query(&[(CART, RecordType::A, false)], 7);
    let r = replies(&q, MDNS_PORT);
    assert_eq!(r.len(), 1);
    let (dst, m) = &r[0];
    assert_eq!(*dst, SocketAddrV4::new(MDNS_ADDR, MDNS_PORT));
    assert_eq!(m.metadata.id, 0);
    assert!(m.queries.is_empty());
    assert_eq!(a_of(m), [CART_IP]);
    assert!(m.answers[0].mdns_cache_flush);
    assert_eq!(m.answers[0].ttl, 5);
    // The NSEC in the additional section says there is no AAAA.
    assert_eq!(m.additionals.len(), 1);
    assert_eq!(m.additionals[0].record_type(), RecordType::NSEC);
}

#[test]
fn qu_bit_gets_unicast_and_mixes_split() {
    let fixed = "shop.prod.db.team1.2.fixed.local.";
    let q = query(
        &[(CART, RecordType::A, true), (fixed, RecordType::A, false)],
        7,
    );
    let r = replies(&q, MDNS_PORT);
    assert_eq!(r.len(), 2, "{r:?}");
    let unicast = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), MDNS_PORT);
    assert_eq!(r[0].0, unicast);
    assert_eq!(a_of(&r[0].1), [CART_IP]);
    assert_eq!(r[1].0, SocketAddrV4::new(MDNS_ADDR, MDNS_PORT));
    assert_eq!(a_of(&r[1].1), [Ipv4Addr::new(172, 30, 0, 22)]);
}

#[test]
fn other_types_get_nsec_any_gets_a() {
    let q = query(&[(CART, RecordType::AAAA, false)], 1);
    let r = replies(&q, 40000);
    assert_eq!(r.len(), 1);
    let m = &r[0].1;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::NSEC);
    let q = query(&[(CART, RecordType::ANY, false)], 1);
    assert_eq!(a_of(&replies(&q, 40000)[0].1), [CART_IP]);
}

#[test]
fn silent_for_names_not_owned() {
    for name in [
        "shop.prod.nope.team1.any.closest.local.",
        "shop.prod.db.team1.any.closest.local.",
        "shop.prod.cart.team1.9.fixed.local.",
        "printer.local.",
        "a.b.c.any.closest.local.",
        "example.com.",
        "_services._dns-sd._udp.local.",
    ] {
        for port in [MDNS_PORT, 40000] {
            let q = query(&[(name, RecordType::A, false)], 1);
            assert!(replies(&q, port).is_empty(), "{name}");
        }
    }
}

#[test]
fn answers_are_ignored_and_known_answers_suppress() {
    let mut q = query(&[(CART, RecordType::A, false)], 0);
    q.metadata.message_type = MessageType::Response;
    assert!(replies(&q, MDNS_PORT).is_empty());

    let mut q = query(&[(CART, RecordType::A, false)], 0);
    q.metadata.response_code = ResponseCode::Refused;
    assert!(replies(&q, MDNS_PORT).is_empty());

    let known = |ttl, ip| {
        let mut q = query(&[(CART, RecordType::A, false)], 0);
        q.add_answer(Record::from_rdata(
            Name::from_ascii(CART.to_uppercase()).unwrap(),
            ttl,
            RData::A(A(ip)),
        ));
        q
    };
    // At least half our TTL (5 s): suppressed.
    assert!(replies(&known(3, CART_IP), MDNS_PORT).is_empty());
    // Too old, or another address: answered.
    assert_eq!(replies(&known(1, CART_IP), MDNS_PORT).len(), 1);
    assert_eq!(
        replies(&known(5, Ipv4Addr::new(1, 2, 3, 4)), MDNS_PORT).len(),
        1
    );
}

#[test]
fn garbage_and_other_classes_are_ignored() {
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), MDNS_PORT);
    assert!(respond(&sample_state(), 5, b"", from).is_empty());
    assert!(respond(&sample_state(), 5, &[0xff; 40], from).is_empty());
    let mut q = query(&[], 1);
    let mut question = Query::query(Name::from_ascii(CART).unwrap(), RecordType::A);
    question.set_query_class(DNSClass::CH);
    q.add_query(question);
    assert!(replies(&q, MDNS_PORT).is_empty());
    // Port 0 cannot be answered.
    let q = query(&[(CART, RecordType::A, false)], 1);
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 0);
    assert!(respond(&sample_state(), 5, &q.to_vec().unwrap(), from).is_empty());
}
