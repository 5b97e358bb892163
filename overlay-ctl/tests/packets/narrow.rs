//! Nodes with subnets narrower than a /24 (a cluster with more than 256
//! nodes in 10.30.0.0/16): tunnel packets are still bound to their sender,
//! now through the routes, since such a node's id is never a /24 number.

use std::net::Ipv4Addr;

use overlay_common::stats::Reason;
use overlay_ctl::dataplane::Dataplane;
use overlay_ctl::model::Subnet;

use crate::harness::*;

/// Two nodes sharing 10.30.8.0/24 as /26s.
const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 22);
const A_NSIP: Ipv4Addr = Ipv4Addr::new(10, 30, 8, 5);
const B_NSIP: Ipv4Addr = Ipv4Addr::new(10, 30, 8, 70);

fn subnet(s: &str) -> Subnet {
    s.parse().unwrap()
}

/// The harness's node with nodes A (10.30.8.0/26) and B (10.30.8.64/26),
/// their ids as the agent computes them.
fn narrow() -> (Dataplane, u32) {
    let mut dp = node(LO);
    let t = &mut dp.tables;
    let mut a_id = 0;
    for (ip, net) in [(A_IP, "10.30.8.0/26"), (B_IP, "10.30.8.64/26")] {
        let net = subnet(net);
        t.put_node(net.node_id(), ip, EWP, 0).unwrap();
        t.put_route(net.addr, net.prefix.into(), net.node_id())
            .unwrap();
        a_id = if ip == A_IP { net.node_id() } else { a_id };
    }
    t.put_overlay_net(Ipv4Addr::new(10, 30, 0, 0), 16).unwrap();
    (dp, a_id)
}

fn delivered(dp: &mut Dataplane, outer: Ipv4Addr, src: Ipv4Addr) {
    let frame = tunnel(outer, &tcp(src, HTTP, BACKEND.ip, CLIENT_PORT));
    assert_eq!(uplink_xdp(dp, &frame).0, XDP_PASS, "{src} from {outer}");
    let before = snapshot(dp);
    let (ret, out) = uplink_tc(dp, &frame);
    assert_eq!(
        (ret, before.delta(dp)),
        (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)]),
        "{src} from {outer}"
    );
    assert_eq!(parse(&out).ip.src(), src);
}

fn forged(dp: &mut Dataplane, outer: Ipv4Addr, src: Ipv4Addr) {
    let frame = tunnel(outer, &tcp(src, HTTP, BACKEND.ip, CLIENT_PORT));
    let before = snapshot(dp);
    assert_eq!(uplink_xdp(dp, &frame).0, XDP_DROP, "{src} from {outer}");
    assert_eq!(before.delta(dp), [(Reason::DropForgedInner, 1)], "XDP");
    let before = snapshot(dp);
    assert_eq!(uplink_tc(dp, &frame).0, TC_ACT_SHOT, "{src} from {outer}");
    assert_eq!(before.delta(dp), [(Reason::DropForgedInner, 1)], "TC");
}

#[test]
fn nodes_with_narrow_subnets_send_from_their_own_subnet_only() {
    let (mut dp, a_id) = narrow();
    delivered(&mut dp, A_IP, A_NSIP);
    delivered(&mut dp, B_IP, B_NSIP);
    // The neighbour's /26 of the same /24, the /24 peer's instance, an
    // unleased address of the /24, and the /24s that A's id would name if
    // it were a /24 number (its low bits, or its /26 number): all refused.
    let low = Ipv4Addr::from(a_id.wrapping_shl(8));
    let per_26 = Ipv4Addr::from((u32::from(A_NSIP) >> 6) << 8);
    let unleased = Ipv4Addr::new(10, 30, 8, 200);
    for src in [B_NSIP, REMOTE, unleased, low, per_26] {
        forged(&mut dp, A_IP, src);
    }
    forged(&mut dp, B_IP, A_NSIP);
    // The /24 peer's fast path is unchanged beside them.
    delivered(&mut dp, PEER_IP, REMOTE);
}
