//! Isolation (docs/isolation.md): tunnel packets bound to their sender,
//! instances kept off the infrastructure and out of unallocated overlay
//! addresses, outsiders kept out of the overlay.

use std::net::Ipv4Addr;

use etherparse::{EtherType, Icmpv4Type, icmpv4::DestUnreachableHeader as Code};
use overlay_common::maps::infra::{ALLOW_DNS, ALLOW_ECHO, INSTANCES_ONLY};
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::Dataplane;

use crate::harness::*;

/// A third node with a /23, and one of its instances.
const THIRD_ID: u32 = 0x0a_1e_04;
const THIRD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 13);
/// In the second /24 of the third node's /23.
const THIRD_NSIP: Ipv4Addr = Ipv4Addr::new(10, 30, 5, 7);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const STORE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const STORE_PORT: u16 = 2379;
const INSTANCE_GW: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The harness's node with a third node, a ServIP, the pools as the
/// overlay's address space and the infrastructure instances may not reach.
fn guarded() -> Dataplane {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let t = &mut dp.tables;
    t.put_node(THIRD_ID, THIRD_IP, EWP, 0).unwrap();
    t.put_route(Ipv4Addr::new(10, 30, 4, 0), 23, THIRD_ID)
        .unwrap();
    t.put_overlay_net(Ipv4Addr::new(10, 30, 0, 0), 16).unwrap();
    t.put_overlay_net(Ipv4Addr::new(172, 30, 0, 0), 16).unwrap();
    t.put_gateway(GATEWAY, 50999).unwrap();
    for node in [NODE_IP, PEER_IP, THIRD_IP] {
        t.put_infra(node, EWP, UDP, 0).unwrap();
        t.put_infra(node, NSP, UDP, 0).unwrap();
    }
    t.put_infra(STORE, STORE_PORT, TCP, 0).unwrap();
    t.put_infra(NODE_IP, 0, 0, 0).unwrap();
    t.put_infra(INSTANCE_GW, 0, 0, ALLOW_DNS | ALLOW_ECHO | INSTANCES_ONLY)
        .unwrap();
    dp
}

/// A tunnel packet dropped by XDP and by TC (each alone) under `reason`.
fn dropped_on_uplink(dp: &mut Dataplane, frame: &[u8], reason: Reason) {
    let before = snapshot(dp);
    assert_eq!(uplink_xdp(dp, frame).0, XDP_DROP);
    assert_eq!(before.delta(dp), [(reason, 1)], "XDP");
    let before = snapshot(dp);
    assert_eq!(uplink_tc(dp, frame).0, TC_ACT_SHOT);
    assert_eq!(before.delta(dp), [(reason, 1)], "TC");
}

#[test]
fn tunnel_packets_with_an_inner_source_the_sender_does_not_hold_are_dropped() {
    let mut dp = guarded();
    // From the peer's address, claiming a ServIP, this node's client, and
    // the third node's instance as sources.
    for forged in [VIP, CLIENT.ip, THIRD_NSIP, OUTSIDE] {
        let frame = tunnel(PEER_IP, &tcp(forged, HTTP, BACKEND.ip, CLIENT_PORT));
        dropped_on_uplink(&mut dp, &frame, Reason::DropForgedInner);
    }
    // The peer's own instance is delivered, and so is the third node's
    // (a wider subnet: its second /24 is found through the routes).
    for (outer, src) in [(PEER_IP, REMOTE), (THIRD_IP, THIRD_NSIP)] {
        let frame = tunnel(outer, &tcp(src, HTTP, BACKEND.ip, CLIENT_PORT));
        assert_eq!(uplink_xdp(&mut dp, &frame).0, XDP_PASS);
        let before = snapshot(&dp);
        let (ret, out) = uplink_tc(&mut dp, &frame);
        assert_eq!(
            (ret, before.delta(&dp)),
            (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)])
        );
        assert_eq!(parse(&out).ip.src(), src);
    }
    // Probes carry no inner packet: still passed to the agent.
    let mut probe = vec![overlay_common::PROBE_MARK, 0x57, 0x50, 0x01];
    probe.resize(40, 0);
    let frame = tunnel(PEER_IP, &probe);
    assert_eq!(uplink_xdp(&mut dp, &frame), (XDP_PASS, frame.clone()));
}

#[test]
fn a_gateway_cannot_tunnel_overlay_sources() {
    let mut dp = guarded();
    dp.tables
        .put_exposed(HTTP, TCP, VIP, Ipv4Addr::new(10, 30, 1, 1))
        .unwrap();
    for forged in [REMOTE, CLIENT.ip, VIP] {
        let frame = tunnel_to(GATEWAY, NSP, &tcp(forged, CLIENT_PORT, NODE_IP, HTTP));
        dropped_on_uplink(&mut dp, &frame, Reason::DropForgedInner);
    }
    let frame = tunnel_to(GATEWAY, NSP, &tcp(OUTSIDE, CLIENT_PORT, NODE_IP, HTTP));
    assert_eq!(uplink_xdp(&mut dp, &frame).0, XDP_PASS);
    let before = snapshot(&dp);
    assert_eq!(uplink_tc(&mut dp, &frame).0, TC_ACT_REDIRECT);
    let counted = before.delta(&dp);
    assert!(counted.contains(&(Reason::GatewayIn, 1)), "{counted:?}");
}

/// Sends `sent` from the client: answered with ICMP `code` from the
/// destination, quoting the packet, and counted under `reason`.
fn refused(dp: &mut Dataplane, sent: &[u8], code: Code, reason: Reason) {
    let before = snapshot(dp);
    let (ret, out) = from_instance(dp, &from(&CLIENT, sent), CLIENT.ifindex);
    assert_eq!(
        (ret, before.delta(dp)),
        (TC_ACT_REDIRECT, vec![(reason, 1)])
    );
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (CLIENT.mac, CLIENT.host_mac)
    );
    assert_eq!(
        (f.ip.dst(), f.ip.src().octets()),
        (CLIENT.ip, sent[16..20].try_into().unwrap())
    );
    assert_eq!(
        f.ip.icmp().icmp_type,
        Icmpv4Type::DestinationUnreachable(code)
    );
    assert_eq!(&f.ip.payload[..20], &sent[..20], "quotes the packet");
}

/// Sends `sent` from the client: passed to the node's stack.
fn passed(dp: &mut Dataplane, sent: &[u8]) {
    let frame = from(&CLIENT, sent);
    let before = snapshot(dp);
    let (ret, out) = from_instance(dp, &frame, CLIENT.ifindex);
    assert_eq!(
        (ret, before.delta(dp)),
        (TC_ACT_OK, vec![(Reason::Pass, 1)])
    );
    assert_eq!(out, frame);
}

#[test]
fn instances_cannot_reach_tunnel_ports_the_store_or_the_node() {
    let mut dp = guarded();
    let prohibited = |dp: &mut Dataplane, sent: &[u8]| {
        refused(dp, sent, Code::FilterProhibited, Reason::DropInfra)
    };
    let c = CLIENT.ip;
    for node in [PEER_IP, NODE_IP, THIRD_IP] {
        for port in [EWP, NSP] {
            prohibited(&mut dp, &udp(c, CLIENT_PORT, node, port));
        }
    }
    prohibited(&mut dp, &tcp(c, CLIENT_PORT, STORE, STORE_PORT));
    // The node's own address: nothing opens there.
    prohibited(&mut dp, &tcp(c, CLIENT_PORT, NODE_IP, 22));
    prohibited(&mut dp, &udp(c, CLIENT_PORT, NODE_IP, 53));
    prohibited(&mut dp, &echo(c, NODE_IP, 7, 1));
    prohibited(&mut dp, &tcp(c, CLIENT_PORT, INSTANCE_GW, 22));
    prohibited(&mut dp, &udp(c, CLIENT_PORT, INSTANCE_GW, 123));
    // DNS and pings to the gateway, other ports of other nodes (their
    // exposed services), the store's host on other ports and the world pass.
    passed(&mut dp, &udp(c, CLIENT_PORT, INSTANCE_GW, 53));
    passed(&mut dp, &tcp(c, CLIENT_PORT, INSTANCE_GW, 53));
    passed(&mut dp, &echo(c, INSTANCE_GW, 7, 1));
    passed(&mut dp, &tcp(c, CLIENT_PORT, PEER_IP, HTTP));
    passed(&mut dp, &udp(c, CLIENT_PORT, PEER_IP, EWP + 7));
    passed(&mut dp, &tcp(c, CLIENT_PORT, STORE, 22));
    passed(&mut dp, &tcp(c, CLIENT_PORT, OUTSIDE, 443));
}

#[test]
fn instances_get_unreachable_for_unallocated_overlay_addresses() {
    let mut dp = guarded();
    let c = CLIENT.ip;
    for nobody in [Ipv4Addr::new(172, 30, 9, 9), Ipv4Addr::new(10, 30, 77, 1)] {
        refused(
            &mut dp,
            &tcp(c, CLIENT_PORT, nobody, HTTP),
            Code::Host,
            Reason::DropUnallocated,
        );
        refused(
            &mut dp,
            &udp(c, CLIENT_PORT, nobody, DNS),
            Code::Host,
            Reason::DropUnallocated,
        );
    }
    // An allocated ServIP still leads to its backend.
    let before = snapshot(&dp);
    let (ret, _) = from_instance(
        &mut dp,
        &from(&CLIENT, &tcp(c, CLIENT_PORT, VIP, HTTP)),
        CLIENT.ifindex,
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert!(before.delta(&dp).contains(&(Reason::DeliverLocal, 1)));
}

#[test]
fn outsiders_on_the_uplink_reach_no_overlay_address() {
    let mut dp = guarded();
    let on_lan = |ip: &[u8]| eth(PEER_MAC, UPLINK_MAC, EtherType::IPV4, ip);
    let mut inside: Vec<Vec<u8>> = [CLIENT.ip, REMOTE, VIP, Ipv4Addr::new(10, 30, 77, 1)]
        .iter()
        .map(|dst| tcp(OUTSIDE, CLIENT_PORT, *dst, HTTP))
        .collect();
    // The name service on the instances' gateway answers instances only.
    inside.push(udp(OUTSIDE, CLIENT_PORT, INSTANCE_GW, DNS));
    for packet in inside {
        let frame = on_lan(&packet);
        let before = snapshot(&dp);
        assert_eq!(uplink_tc(&mut dp, &frame).0, TC_ACT_SHOT);
        assert_eq!(before.delta(&dp), [(Reason::DropOutsider, 1)]);
    }
    // The node's own address (its exposed ports, masquerade replies) and
    // what the node routes elsewhere pass untouched.
    for dst in [NODE_IP, Ipv4Addr::new(198, 51, 100, 1)] {
        let frame = on_lan(&tcp(OUTSIDE, 443, dst, CLIENT_PORT));
        let before = snapshot(&dp);
        assert_eq!(uplink_tc(&mut dp, &frame), (TC_ACT_OK, frame.clone()));
        assert_eq!(before.delta(&dp), []);
    }
}

/// A TCP SYN-ACK: the answer of a connection, never the opening of one.
fn syn_ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .ack(1)
        .write(&mut out, &[])
        .unwrap();
    out
}

#[test]
fn needs_hold_for_connections_to_namespace_ips() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    let t = &mut dp.tables;
    for nsip in [BACKEND.ip, REMOTE] {
        t.put_nsip_service(nsip, SERVICE).unwrap();
    }
    // The client's service (7) may open flows to no service.
    t.put_restricted(7).unwrap();
    let c = CLIENT.ip;
    for dst in [BACKEND.ip, REMOTE] {
        let denied = |dp: &mut Dataplane, sent: &[u8]| {
            refused(dp, sent, Code::FilterProhibited, Reason::DropDenied)
        };
        denied(&mut dp, &tcp(c, CLIENT_PORT, dst, HTTP));
        denied(&mut dp, &echo(c, dst, 9, 1));
        denied(&mut dp, &udp(c, CLIENT_PORT, dst, DNS));
    }
    assert_eq!(dp.tables.denied(), [(7, 6)]);
    // Replies are not judged; allowed by `needs`, a connection opens.
    let delivered = |dp: &mut Dataplane, sent: &[u8]| {
        let before = snapshot(dp);
        let (ret, _) = from_instance(dp, &from(&CLIENT, sent), CLIENT.ifindex);
        assert_eq!(
            (ret, before.delta(dp)),
            (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)])
        );
    };
    delivered(&mut dp, &syn_ack(c, HTTP, BACKEND.ip, CLIENT_PORT));
    delivered(&mut dp, &echo_reply(c, BACKEND.ip, 9, 1));
    dp.tables.put_need(7, SERVICE).unwrap();
    delivered(&mut dp, &tcp(c, CLIENT_PORT, BACKEND.ip, HTTP));
    let before = snapshot(&dp);
    let sent = from(&CLIENT, &tcp(c, CLIENT_PORT, REMOTE, HTTP));
    let (ret, _) = up
        .ns
        .enter(|| from_instance(&mut dp, &sent, CLIENT.ifindex))
        .unwrap();
    assert_eq!(
        (ret, before.delta(&dp)),
        (TC_ACT_REDIRECT, vec![(Reason::Encap, 1)])
    );
}

/// UDP straight to a NamespaceIP is held to `needs` too; an instance whose
/// `needs` do not name its peer's service still answers the peer's
/// datagrams (delivered here, locally or through the tunnel), and nothing
/// more.
#[test]
fn udp_replies_pass_where_needs_refuse_new_datagrams() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    let t = &mut dp.tables;
    t.put_nsip_service(CLIENT.ip, 7).unwrap();
    t.put_nsip_service(BACKEND.ip, SERVICE).unwrap();
    t.put_nsip_service(REMOTE, 7).unwrap();
    // The client (7) may reach the backend's service; the backend none.
    t.put_restricted(7).unwrap();
    t.put_need(7, SERVICE).unwrap();
    t.put_restricted(SERVICE).unwrap();
    let send = |dp: &mut Dataplane, who: &Inst, sent: &[u8]| {
        let before = snapshot(dp);
        let (ret, _) = from_instance(dp, &from(who, sent), who.ifindex);
        (ret, before.delta(dp))
    };
    let local = (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)]);
    let denied = (TC_ACT_REDIRECT, vec![(Reason::DropDenied, 1)]);
    let (b, c) = (BACKEND.ip, CLIENT.ip);
    // The backend may not start talking to the client...
    assert_eq!(
        send(&mut dp, &BACKEND, &udp(b, DNS, c, CLIENT_PORT)),
        denied
    );
    // ...but answers its question, on the ports it came from only.
    assert_eq!(send(&mut dp, &CLIENT, &udp(c, CLIENT_PORT, b, DNS)), local);
    assert_eq!(send(&mut dp, &BACKEND, &udp(b, DNS, c, CLIENT_PORT)), local);
    assert_eq!(
        send(&mut dp, &BACKEND, &udp(b, DNS, c, CLIENT_PORT + 1)),
        denied
    );
    // A question from the peer's instance, through the tunnel.
    let asked = tunnel(PEER_IP, &udp(REMOTE, 5353, b, DNS));
    let before = snapshot(&dp);
    let (ret, _) = uplink_tc(&mut dp, &asked);
    assert_eq!(
        (ret, before.delta(&dp)),
        (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)])
    );
    let answer = from(&BACKEND, &udp(b, DNS, REMOTE, 5353));
    let before = snapshot(&dp);
    let (ret, _) = up
        .ns
        .enter(|| from_instance(&mut dp, &answer, BACKEND.ifindex))
        .unwrap();
    assert_eq!(
        (ret, before.delta(&dp)),
        (TC_ACT_REDIRECT, vec![(Reason::Encap, 1)])
    );
    let other = udp(b, DNS, REMOTE, 5354);
    assert_eq!(send(&mut dp, &BACKEND, &other), denied);
}

/// Two nodes behind one NAT share its address (each with its own port):
/// each one's tunnel packets are accepted for its own subnet only, and one
/// of them leaving does not take the address from the other.
#[test]
fn nodes_sharing_an_address_are_told_apart_by_their_subnets() {
    let mut dp = guarded();
    // The third node moves behind the peer's NAT: same address, another port.
    dp.tables.put_node(THIRD_ID, PEER_IP, 40003, 0).unwrap();
    for inner in [REMOTE, THIRD_NSIP] {
        let frame = tunnel(PEER_IP, &tcp(inner, HTTP, BACKEND.ip, CLIENT_PORT));
        assert_eq!(uplink_xdp(&mut dp, &frame).0, XDP_PASS, "{inner}");
        let before = snapshot(&dp);
        let (ret, _) = uplink_tc(&mut dp, &frame);
        assert_eq!(
            (ret, before.delta(&dp)),
            (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)]),
            "{inner} through the shared address"
        );
    }
    for forged in [VIP, CLIENT.ip, OUTSIDE] {
        let frame = tunnel(PEER_IP, &tcp(forged, HTTP, BACKEND.ip, CLIENT_PORT));
        dropped_on_uplink(&mut dp, &frame, Reason::DropForgedInner);
    }
    // The third node leaves: the peer keeps its address.
    dp.tables.remove_node(THIRD_ID).unwrap();
    let frame = tunnel(PEER_IP, &tcp(REMOTE, HTTP, BACKEND.ip, CLIENT_PORT));
    let before = snapshot(&dp);
    assert_eq!(
        (uplink_tc(&mut dp, &frame).0, before.delta(&dp)),
        (TC_ACT_REDIRECT, vec![(Reason::Decap, 1)]),
        "the peer after the third node left"
    );
    let gone = tunnel(PEER_IP, &tcp(THIRD_NSIP, HTTP, BACKEND.ip, CLIENT_PORT));
    dropped_on_uplink(&mut dp, &gone, Reason::DropForgedInner);
}
