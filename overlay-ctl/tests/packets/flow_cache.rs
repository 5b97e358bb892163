//! The flow cache: an established flow's packets skip the full path's
//! lookups, but never its judgement. Each test first has a decision cached
//! (a confirmed flow's packet, sent twice), then changes what that decision
//! rested on and checks that the next packet, in the same tick, is judged
//! as the full path would judge it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use overlay_common::stats::Reason;
use overlay_ctl::dataplane::Dataplane;

use crate::harness::*;

/// A TCP segment of an established connection (ACK, no SYN: the cache
/// serves no SYN, FIN or RST).
fn ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let h = etherparse::IpHeaders::Ipv4(ipv4(src, dst, TCP), Default::default());
    etherparse::PacketBuilder::ip(h)
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .write(&mut out, &[0x5a; 16])
        .unwrap();
    out
}

/// A client → ServIP segment, as sent into the overlay.
fn request() -> Vec<u8> {
    from(&CLIENT, &ack(CLIENT.ip, CLIENT_PORT, VIP, HTTP))
}

/// Sends the client's request on `ifindex`; its verdict and counters.
fn send(dp: &mut Dataplane, ifindex: u32) -> (u32, Vec<(Reason, u64)>) {
    let before = snapshot(dp);
    let (ret, _) = from_instance(dp, &request(), ifindex);
    (ret, before.delta(dp))
}

/// A confirmed flow client → ServIP → local backend, whose decision the
/// second request left in the cache.
fn established_local() -> Dataplane {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    assert_eq!(send(&mut dp, CLIENT.ifindex).0, TC_ACT_REDIRECT);
    let reply = from(&BACKEND, &ack(BACKEND.ip, HTTP, CLIENT.ip, CLIENT_PORT));
    let (ret, _) = from_instance(&mut dp, &reply, BACKEND.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    for _ in 0..2 {
        assert_eq!(
            send(&mut dp, CLIENT.ifindex),
            (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)])
        );
    }
    assert_eq!(dp.cached_flows().unwrap(), 1, "the request's decision");
    dp
}

#[test]
fn a_cached_flow_still_checks_where_its_packets_come_from() {
    // A namespace with a second interface the packet can claim to come in on.
    let up = uplink(true);
    up.ns
        .enter(|| {
            let mut dp = established_local();
            // The client's address and flow, from another interface.
            assert_eq!(
                send(&mut dp, up.ifindex),
                (TC_ACT_SHOT, vec![(Reason::DropSpoofed, 1)])
            );
        })
        .unwrap();
}

#[test]
fn a_flow_the_agent_ends_starts_over() {
    let mut dp = established_local();
    let ended = dp
        .tables
        .end_flows_of(&BTreeSet::from([BACKEND.ip]))
        .unwrap();
    assert_eq!(ended, 2, "both directions");
    assert_eq!(
        send(&mut dp, CLIENT.ifindex),
        (
            TC_ACT_REDIRECT,
            vec![(Reason::DeliverLocal, 1), (Reason::NewFlow, 1)]
        ),
        "a new flow, not the cached decision"
    );
}

#[test]
fn a_removed_instance_gets_nothing_through_the_cache() {
    let mut dp = established_local();
    dp.tables.remove_endpoint(BACKEND.ip).unwrap();
    assert_eq!(
        send(&mut dp, CLIENT.ifindex),
        (TC_ACT_SHOT, vec![(Reason::DropNoEndpoint, 1)])
    );
}

/// Hands the uplink `inner` tunnelled from `from`; its verdict and counters.
fn arrive(dp: &mut Dataplane, from: Ipv4Addr, inner: &[u8]) -> (u32, Vec<(Reason, u64)>) {
    let before = snapshot(dp);
    let (ret, _) = uplink_tc(dp, &tunnel(from, inner));
    (ret, before.delta(dp))
}

#[test]
fn a_stranger_cannot_ride_a_cached_delivery() {
    let mut dp = node(LO);
    let inner = ack(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT);
    for _ in 0..2 {
        assert_eq!(
            arrive(&mut dp, PEER_IP, &inner),
            (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)])
        );
    }
    assert_eq!(dp.cached_flows().unwrap(), 1, "the delivery's decision");
    assert_eq!(
        arrive(&mut dp, STRANGER_IP, &inner),
        (TC_ACT_SHOT, vec![(Reason::DropUnknownPeer, 1)])
    );
}

#[test]
fn a_new_flow_takes_over_the_tuple_of_a_cached_direct_one() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    // The remote instance's packets straight to the client (no ServIP):
    // delivered as they are, and cached so.
    let direct = ack(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT);
    for _ in 0..2 {
        let (ret, out) = uplink_tc(&mut dp, &tunnel(PEER_IP, &direct));
        assert_eq!(ret, TC_ACT_REDIRECT);
        assert_eq!(parse(&out).ip.bytes, direct);
    }
    assert_eq!(dp.cached_flows().unwrap(), 1, "the delivery's decision");
    // The client then opens a flow to the ServIP from the same port: its
    // replies come with the same 5-tuple, and must get the ServIP back.
    up.ns
        .enter(|| {
            let (ret, _) = from_instance(&mut dp, &request(), CLIENT.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
        })
        .unwrap();
    let (ret, out) = uplink_tc(&mut dp, &tunnel(PEER_IP, &direct));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(
        parse(&out).ip.bytes,
        ack(VIP, HTTP, CLIENT.ip, CLIENT_PORT),
        "the reply carries the ServIP"
    );
}
