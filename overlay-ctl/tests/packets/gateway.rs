//! North-south through a gateway: external clients' packets tunnelled by a
//! registered gateway to the node's NSP, their replies tunnelled back to it
//! (docs/wire-format.md, "Gateways").

use std::net::Ipv4Addr;

use overlay_common::maps::ct;
use overlay_common::stats::Reason;

use crate::harness::*;

const SNAT: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 1);
/// The gateway, and the port it wants replies on.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc8];
const GATEWAY_PORT: u16 = 50999;
/// An external client behind the gateway (never on the node's network).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// A node exposing [`HTTP`] over `backends`, with the gateway registered.
fn gateway_node(uplink_ifindex: u32, backends: &[u32]) -> overlay_ctl::dataplane::Dataplane {
    let mut dp = node(uplink_ifindex);
    servip(&mut dp, backends);
    dp.tables.put_exposed(HTTP, TCP, VIP, SNAT).unwrap();
    dp.tables
        .put_route(Ipv4Addr::new(10, 30, 1, 0), 24, NODE_ID)
        .unwrap();
    dp.tables.put_gateway(GATEWAY, GATEWAY_PORT).unwrap();
    dp
}

/// An uplink namespace that also knows the gateway's MAC.
fn gateway_uplink() -> Uplink {
    let up = uplink(true);
    let mac = fmt_mac(GATEWAY_MAC);
    up.ns
        .ip([
            "neigh",
            "add",
            &GATEWAY.to_string(),
            "lladdr",
            &mac,
            "dev",
            "up0",
            "nud",
            "permanent",
        ])
        .unwrap();
    up
}

/// Checks `out` is `inner` tunnelled from the node to the gateway's port.
fn to_gateway(out: &[u8], inner: &[u8]) {
    let f = parse(out);
    assert_eq!((f.eth.destination, f.eth.source), (GATEWAY_MAC, UPLINK_MAC));
    assert_eq!((f.ip.src(), f.ip.dst()), (NODE_IP, GATEWAY));
    assert_eq!(f.ip.udp().destination_port, GATEWAY_PORT);
    assert_eq!(&out[14 + 28..], inner, "the reply, translated back");
}

#[test]
fn tunnelled_client_reaches_a_local_backend_and_the_reply_goes_back_to_the_gateway() {
    let up = gateway_uplink();
    let mut dp = gateway_node(up.ifindex, &[B1]);
    up.ns
        .enter(|| {
            let sent = tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP);
            let before = snapshot(&dp);
            let (ret, out) = uplink_tc(&mut dp, &tunnel_to(GATEWAY, NSP, &sent));
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(
                before.delta(&dp),
                [
                    (Reason::DeliverLocal, 1),
                    (Reason::NorthSouthIn, 1),
                    (Reason::GatewayIn, 1),
                    (Reason::NewFlow, 1)
                ]
            );
            let f = parse(&out);
            assert_eq!(
                (f.eth.destination, f.eth.source),
                (BACKEND.mac, BACKEND.host_mac)
            );
            assert_eq!(&out[14..], &tcp(SNAT, CLIENT_PORT, BACKEND.ip, HTTP)[..]);
            let rev = conntrack(&dp)
                .into_iter()
                .find(|(_, e)| e.dir == ct::NS_REVERSE)
                .expect("a reverse entry");
            assert_eq!(rev.1.via, wire(GATEWAY), "the reply's gateway is kept");

            let reply = tcp(BACKEND.ip, HTTP, SNAT, CLIENT_PORT);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&BACKEND, &reply), BACKEND.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::GatewayOut, 1)]);
            to_gateway(&out, &tcp(NODE_IP, HTTP, OUTSIDE, CLIENT_PORT));
        })
        .unwrap();
}

#[test]
fn tunnelled_client_reaches_a_remote_backend_and_its_reply_is_relayed_to_the_gateway() {
    let up = gateway_uplink();
    let mut dp = gateway_node(up.ifindex, &[B_REMOTE]);
    up.ns
        .enter(|| {
            let sent = tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP);
            let (ret, out) = uplink_tc(&mut dp, &tunnel_to(GATEWAY, NSP, &sent));
            assert_eq!(ret, TC_ACT_REDIRECT);
            let f = parse(&out);
            assert_eq!(
                (f.ip.src(), f.ip.dst()),
                (NODE_IP, PEER_IP),
                "to the backend's node"
            );
            assert_eq!(&out[14 + 28..], &tcp(SNAT, CLIENT_PORT, REMOTE, HTTP)[..]);

            // The backend's node tunnels the reply to the SNAT address's node.
            let reply = tcp(REMOTE, HTTP, SNAT, CLIENT_PORT);
            let before = snapshot(&dp);
            let (ret, out) = uplink_tc(&mut dp, &tunnel(PEER_IP, &reply));
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::GatewayOut, 1)]);
            to_gateway(&out, &tcp(NODE_IP, HTTP, OUTSIDE, CLIENT_PORT));
        })
        .unwrap();
}

#[test]
fn only_registered_gateways_and_exposed_ports_get_in() {
    let mut dp = gateway_node(LO, &[B1]);
    let sent = tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP);
    let stranger = tunnel_to(STRANGER_IP, NSP, &sent);
    let dropped = |dp: &mut _, frame: &[u8], reason| {
        let before = snapshot(dp);
        let (ret, _) = uplink_tc(dp, frame);
        assert_eq!((ret, before.delta(dp)), (TC_ACT_SHOT, vec![(reason, 1)]));
    };
    let before = snapshot(&dp);
    assert_eq!(uplink_xdp(&mut dp, &stranger).0, XDP_DROP);
    assert_eq!(before.delta(&dp), [(Reason::DropUnknownGateway, 1)]);
    dropped(&mut dp, &stranger, Reason::DropUnknownGateway);
    // A node is not a gateway: its address may use the EWP only.
    dropped(
        &mut dp,
        &tunnel_to(PEER_IP, NSP, &sent),
        Reason::DropUnknownGateway,
    );

    let frame = tunnel_to(GATEWAY, NSP, &sent);
    assert_eq!(uplink_xdp(&mut dp, &frame), (XDP_PASS, frame.clone()));
    let not_exposed = tcp(OUTSIDE, CLIENT_PORT, NODE_IP, 22);
    let not_the_node = tcp(OUTSIDE, CLIENT_PORT, BACKEND.ip, HTTP);
    for inner in [not_exposed, not_the_node] {
        let counted = [(Reason::DropPort, 1)];
        let before = snapshot(&dp);
        let (ret, _) = uplink_tc(&mut dp, &tunnel_to(GATEWAY, NSP, &inner));
        assert_eq!(ret, TC_ACT_SHOT);
        let delta = before.delta(&dp);
        assert!(delta.ends_with(&counted), "{delta:?}");
    }

    // A gateway's own packets on the EWP are refused like any stranger's.
    dropped(&mut dp, &tunnel(GATEWAY, &sent), Reason::DropUnknownPeer);

    // Removing the gateway revokes it, also for replies of its open flows.
    let (ret, _) = uplink_tc(&mut dp, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    dp.tables.remove_gateway(GATEWAY).unwrap();
    dropped(&mut dp, &frame, Reason::DropUnknownGateway);
    let reply = tcp(BACKEND.ip, HTTP, SNAT, CLIENT_PORT);
    let before = snapshot(&dp);
    let (ret, _) = from_instance(&mut dp, &from(&BACKEND, &reply), BACKEND.ifindex);
    assert_eq!(
        (ret, before.delta(&dp)),
        (TC_ACT_SHOT, vec![(Reason::DropUnknownGateway, 1)])
    );
}
