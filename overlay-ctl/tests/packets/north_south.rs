//! North-south: an external client reaches an exposed port of the node's
//! own address (docs/wire-format.md, "Exposed services").

use std::net::Ipv4Addr;

use overlay_common::stats::Reason;

use crate::harness::*;

/// Where backends see north-south flows come from (this node's subnet).
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 1);
/// An external client; the peer's address, because the test uplink knows its MAC.
const OUTSIDE: Ipv4Addr = PEER_IP;

fn exposed_node(uplink_ifindex: u32) -> overlay_ctl::dataplane::Dataplane {
    let mut dp = node(uplink_ifindex);
    servip(&mut dp, &[B1]);
    dp.tables.put_exposed(HTTP, TCP, VIP, SNAT).unwrap();
    dp.tables
        .put_route(Ipv4Addr::new(10, 30, 1, 0), 24, NODE_ID)
        .unwrap();
    dp
}

fn from_outside(ip: &[u8]) -> Vec<u8> {
    eth(PEER_MAC, UPLINK_MAC, etherparse::EtherType::IPV4, ip)
}

#[test]
fn exposed_port_reaches_the_backend_and_the_reply_leaves_from_the_node() {
    let up = uplink(true);
    let mut dp = exposed_node(up.ifindex);
    up.ns
        .enter(|| {
            let before = snapshot(&dp);
            let sent = tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP);
            let (ret, out) = uplink_tc(&mut dp, &from_outside(&sent));
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(
                before.delta(&dp),
                [
                    (Reason::DeliverLocal, 1),
                    (Reason::NorthSouthIn, 1),
                    (Reason::NewFlow, 1)
                ]
            );
            let f = parse(&out);
            assert_eq!(
                (f.eth.destination, f.eth.source),
                (BACKEND.mac, BACKEND.host_mac)
            );
            assert_eq!((f.ip.src(), f.ip.dst()), (SNAT, BACKEND.ip), "SNAT + DNAT");
            assert_eq!(
                &out[14..],
                &tcp(SNAT, CLIENT_PORT, BACKEND.ip, HTTP)[..],
                "only addresses change"
            );

            // The backend answers the SNAT address: out of the uplink, from the node.
            let reply = tcp(BACKEND.ip, HTTP, SNAT, CLIENT_PORT);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&BACKEND, &reply), BACKEND.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::NorthSouthOut, 1)]);
            let f = parse(&out);
            assert_eq!((f.eth.destination, f.eth.source), (PEER_MAC, UPLINK_MAC));
            assert_eq!(&out[14..], &tcp(NODE_IP, HTTP, OUTSIDE, CLIENT_PORT)[..]);
        })
        .unwrap();
}

#[test]
fn a_second_client_with_the_same_port_gets_another_source_port() {
    let mut dp = exposed_node(LO);
    let other = Ipv4Addr::new(192, 0, 2, 77);
    let (ret, _) = uplink_tc(
        &mut dp,
        &from_outside(&tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let (ret, out) = uplink_tc(
        &mut dp,
        &from_outside(&tcp(other, CLIENT_PORT, NODE_IP, HTTP)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let f = parse(&out);
    assert_eq!((f.ip.src(), f.ip.dst()), (SNAT, BACKEND.ip));
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert_ne!(
        sport, CLIENT_PORT,
        "the first client holds that port toward this backend"
    );
    assert!(sport >= 0x8000);
    // The same client again keeps its port (established).
    let (_, again) = uplink_tc(
        &mut dp,
        &from_outside(&tcp(other, CLIENT_PORT, NODE_IP, HTTP)),
    );
    assert_eq!(u16::from_be_bytes([again[34], again[35]]), sport);
}

#[test]
fn ports_that_are_not_exposed_are_the_nodes_own() {
    let mut dp = exposed_node(LO);
    let before = snapshot(&dp);
    for sent in [
        tcp(OUTSIDE, CLIENT_PORT, NODE_IP, 22),
        udp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP),
    ] {
        let frame = from_outside(&sent);
        let (ret, out) = uplink_tc(&mut dp, &frame);
        assert_eq!((ret, out), (TC_ACT_OK, frame), "passed untouched");
    }
    assert_eq!(before.delta(&dp), [], "and not counted");
    // No backend left: the flow is dropped (counted), never answered from here.
    servip(&mut dp, &[]);
    let (ret, _) = uplink_tc(&mut dp, &from_outside(&tcp(OUTSIDE, 1234, NODE_IP, HTTP)));
    assert_eq!(ret, TC_ACT_SHOT);
}
