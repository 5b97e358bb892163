//! Backend → client: reverse NAT on the same node and after decapsulation,
//! ICMP errors about tracked flows, and uplink traffic that is not ours.

use etherparse::{EtherType, icmpv4::DestUnreachableHeader};
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::Dataplane;

use crate::harness::*;

/// Starts a flow client → VIP with `sent`; returns the packet as delivered
/// (local backend) or as carried in the tunnel (remote backend).
fn open(dp: &mut Dataplane, sent: &[u8]) -> Vec<u8> {
    let (ret, out) = from_instance(dp, &from(&CLIENT, sent), CLIENT.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let f = parse(&out);
    if f.ip.dst() == PEER_IP {
        f.ip.payload
    } else {
        f.ip.bytes
    }
}

/// Sends `reply` from the local backend; checks it reaches the client as `want`.
fn reply_local(dp: &mut Dataplane, reply: &[u8], want: &[u8]) {
    let before = snapshot(dp);
    let (ret, out) = from_instance(dp, &from(&BACKEND, reply), BACKEND.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(dp), [(Reason::DeliverLocal, 1)]);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (CLIENT.mac, CLIENT.host_mac)
    );
    assert_eq!(f.ip.bytes, want);
}

/// Hands the uplink a tunnel packet from the peer carrying `inner`; checks
/// that `want` is delivered to the client.
fn reply_tunnel(dp: &mut Dataplane, inner: &[u8], want: &[u8]) {
    let frame = tunnel(PEER_IP, inner);
    let before = snapshot(dp);
    let (ret, out) = uplink_tc(dp, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(dp), [(Reason::Decap, 1)]);
    assert_eq!(out.len(), frame.len() - 28);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (CLIENT.mac, CLIENT.host_mac)
    );
    assert_eq!(f.ip.bytes, want);
}

#[test]
fn local_replies_get_servip_as_source() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    open(&mut dp, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    open(&mut dp, &udp(CLIENT.ip, CLIENT_PORT, VIP, DNS));
    open(&mut dp, &udp_nocsum(CLIENT.ip, CLIENT_PORT + 1, VIP, DNS));
    open(&mut dp, &echo(CLIENT.ip, VIP, 77, 1));
    let cases = [
        (
            tcp(BACKEND.ip, HTTP, CLIENT.ip, CLIENT_PORT),
            tcp(VIP, HTTP, CLIENT.ip, CLIENT_PORT),
        ),
        (
            udp(BACKEND.ip, DNS, CLIENT.ip, CLIENT_PORT),
            udp(VIP, DNS, CLIENT.ip, CLIENT_PORT),
        ),
        (
            udp_nocsum(BACKEND.ip, DNS, CLIENT.ip, CLIENT_PORT + 1),
            udp_nocsum(VIP, DNS, CLIENT.ip, CLIENT_PORT + 1),
        ),
        (
            echo_reply(BACKEND.ip, CLIENT.ip, 77, 1),
            echo_reply(VIP, CLIENT.ip, 77, 1),
        ),
    ];
    for (reply, want) in cases {
        reply_local(&mut dp, &reply, &want);
    }
    // Untracked traffic between instances is delivered untranslated.
    let direct = tcp(BACKEND.ip, HTTP, CLIENT.ip, CLIENT_PORT + 9);
    reply_local(&mut dp, &direct, &direct);
}

#[test]
fn tunnel_reply_is_decapsulated_with_servip_as_source() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    up.ns
        .enter(|| {
            open(&mut dp, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
            open(&mut dp, &udp(CLIENT.ip, CLIENT_PORT, VIP, DNS));
            open(&mut dp, &echo(CLIENT.ip, VIP, 77, 1));
        })
        .unwrap();
    let cases = [
        (
            tcp(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT),
            tcp(VIP, HTTP, CLIENT.ip, CLIENT_PORT),
        ),
        (
            udp(REMOTE, DNS, CLIENT.ip, CLIENT_PORT),
            udp(VIP, DNS, CLIENT.ip, CLIENT_PORT),
        ),
        (
            echo_reply(REMOTE, CLIENT.ip, 77, 1),
            echo_reply(VIP, CLIENT.ip, 77, 1),
        ),
    ];
    for (reply, want) in cases {
        reply_tunnel(&mut dp, &reply, &want);
    }
}

/// A remote client's flow to a local backend (translated on its own node)
/// is delivered as it arrives. The XDP program decapsulates it (so that GRO
/// sees the inner packets) and marks it for TC in 4 bytes of metadata in
/// front of the frame; TC without XDP decapsulates it itself.
#[test]
fn tunnel_packet_for_local_instance_is_delivered_unchanged() {
    let mut dp = node(LO);
    let remote_client = std::net::Ipv4Addr::new(10, 30, 2, 7);
    let inner = tcp(remote_client, CLIENT_PORT, BACKEND.ip, HTTP);
    let frame = tunnel(PEER_IP, &inner);
    let before = snapshot(&dp);
    let mut decapped = 0x4f56_4450u32.to_ne_bytes().to_vec();
    decapped.extend_from_slice(&frame[..14]);
    decapped.extend_from_slice(&inner);
    assert_eq!(uplink_xdp(&mut dp, &frame), (XDP_PASS, decapped));
    assert_eq!(before.delta(&dp), []);
    let (ret, out) = uplink_tc(&mut dp, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(&dp), [(Reason::Decap, 1)]);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (BACKEND.mac, BACKEND.host_mac)
    );
    assert_eq!(f.ip.bytes, inner);
}

#[test]
fn uplink_passes_traffic_that_is_not_for_the_tunnel() {
    let mut dp = node(LO);
    let arp = {
        let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
        body.extend(PEER_MAC);
        body.extend(PEER_IP.octets());
        body.extend([0; 6]);
        body.extend(NODE_IP.octets());
        eth(PEER_MAC, [0xff; 6], EtherType::ARP, &body)
    };
    let ipv6 = eth(PEER_MAC, UPLINK_MAC, EtherType::IPV6, &[0x60; 48]);
    let ssh = eth(
        PEER_MAC,
        UPLINK_MAC,
        EtherType::IPV4,
        &tcp(PEER_IP, 50000, NODE_IP, 22),
    );
    let dns = eth(
        PEER_MAC,
        UPLINK_MAC,
        EtherType::IPV4,
        &udp(PEER_IP, EWP, NODE_IP, 53),
    );
    // Tunnel-shaped, but to another port (neither EWP nor NSP), or to another address.
    let inner = tcp(REMOTE, 1, BACKEND.ip, 2);
    let other_port = tunnel_to(PEER_IP, EWP + 7, &inner);
    let mut other_dst = tunnel(PEER_IP, &inner);
    edit_ip(&mut other_dst[14..], |h| h.destination = [192, 0, 2, 99]);
    for frame in [arp, ipv6, ssh, dns, other_port, other_dst] {
        let before = snapshot(&dp);
        assert_eq!(uplink_tc(&mut dp, &frame), (TC_ACT_OK, frame.clone()));
        assert_eq!(uplink_xdp(&mut dp, &frame), (XDP_PASS, frame.clone()));
        assert_eq!(
            before.delta(&dp),
            [],
            "uplink traffic outside the tunnel is not counted"
        );
    }
}

/// The quoted packet inside an ICMP error: its IPv4 header (checksum
/// verified) and the 8 bytes after it.
fn quote(icmp_payload: &[u8]) -> (etherparse::Ipv4Header, &[u8]) {
    let (h, rest) = etherparse::Ipv4Header::from_slice(icmp_payload).expect("quoted header");
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "quoted IPv4 checksum"
    );
    (h, rest)
}

#[test]
fn icmp_error_from_local_backend_gets_servip_back() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = udp(CLIENT.ip, CLIENT_PORT, VIP, DNS);
    let delivered = open(&mut dp, &sent);
    // The backend's stack answers: port unreachable, quoting what it got.
    let err = unreach(
        BACKEND.ip,
        CLIENT.ip,
        DestUnreachableHeader::Port,
        &delivered,
    );
    let before = snapshot(&dp);
    let (ret, out) = from_instance(&mut dp, &from(&BACKEND, &err), BACKEND.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(&dp), [(Reason::DeliverLocal, 1)]);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (CLIENT.mac, CLIENT.host_mac)
    );
    assert_eq!((f.ip.src(), f.ip.dst()), (VIP, CLIENT.ip));
    assert_eq!(f.ip.icmp().icmp_type, err_type(DestUnreachableHeader::Port));
    let (q, l4) = quote(&f.ip.payload);
    assert_eq!(
        q.to_bytes().as_slice(),
        &sent[..20],
        "quote = the header the client sent"
    );
    assert_eq!(l4, &delivered[20..28]);
}

#[test]
fn icmp_error_through_tunnel_gets_servip_back() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    let sent = tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP);
    let carried = up.ns.enter(|| open(&mut dp, &sent)).unwrap();
    let err = unreach(REMOTE, CLIENT.ip, DestUnreachableHeader::Host, &carried);
    let frame = tunnel(PEER_IP, &err);
    let before = snapshot(&dp);
    let (ret, out) = uplink_tc(&mut dp, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(&dp), [(Reason::Decap, 1)]);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (CLIENT.mac, CLIENT.host_mac)
    );
    assert_eq!((f.ip.src(), f.ip.dst()), (VIP, CLIENT.ip));
    let (q, l4) = quote(&f.ip.payload);
    assert_eq!(q.to_bytes().as_slice(), &sent[..20]);
    assert_eq!(l4, &carried[20..28]);
}

/// An error about an echo request: the echo id identifies the flow.
#[test]
fn icmp_error_about_echo_gets_servip_back() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = echo(CLIENT.ip, VIP, 0x0bad, 1);
    let delivered = open(&mut dp, &sent);
    let err = unreach(
        BACKEND.ip,
        CLIENT.ip,
        DestUnreachableHeader::Protocol,
        &delivered,
    );
    let (ret, out) = from_instance(&mut dp, &from(&BACKEND, &err), BACKEND.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let f = parse(&out);
    assert_eq!((f.ip.src(), f.ip.dst()), (VIP, CLIENT.ip));
    let (q, l4) = quote(&f.ip.payload);
    assert_eq!(q.to_bytes().as_slice(), &sent[..20]);
    assert_eq!(l4, &delivered[20..28]);
    assert_eq!(conntrack(&dp).len(), 2, "errors never create flows");
}

/// The client's stack rejects a reply from the ServIP: the error goes to the
/// backend, about the packet the backend sent.
#[test]
fn icmp_error_from_client_about_reply_goes_to_backend() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    open(&mut dp, &udp(CLIENT.ip, CLIENT_PORT, VIP, DNS));
    let reply = udp(BACKEND.ip, DNS, CLIENT.ip, CLIENT_PORT);
    let (_, seen) = from_instance(&mut dp, &from(&BACKEND, &reply), BACKEND.ifindex);
    let seen = parse(&seen).ip.bytes;
    let err = unreach(CLIENT.ip, VIP, DestUnreachableHeader::Port, &seen);
    let before = snapshot(&dp);
    let (ret, out) = from_instance(&mut dp, &from(&CLIENT, &err), CLIENT.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(before.delta(&dp), [(Reason::DeliverLocal, 1)]);
    let f = parse(&out);
    assert_eq!(
        (f.eth.destination, f.eth.source),
        (BACKEND.mac, BACKEND.host_mac)
    );
    assert_eq!((f.ip.src(), f.ip.dst()), (CLIENT.ip, BACKEND.ip));
    let (q, l4) = quote(&f.ip.payload);
    assert_eq!(
        q.to_bytes().as_slice(),
        &reply[..20],
        "quote = the header the backend sent"
    );
    assert_eq!(l4, &seen[20..28]);
}

/// An ICMP error to a ServIP about nothing tracked is dropped, never
/// answered with another ICMP error.
#[test]
fn untracked_icmp_error_to_servip_is_dropped() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let stray = udp(VIP, DNS, CLIENT.ip, CLIENT_PORT);
    let err = unreach(CLIENT.ip, VIP, DestUnreachableHeader::Port, &stray);
    let before = snapshot(&dp);
    let (ret, _) = from_instance(&mut dp, &from(&CLIENT, &err), CLIENT.ifindex);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(before.delta(&dp), [(Reason::DropPort, 1)]);
}

pub fn err_type(h: DestUnreachableHeader) -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(h)
}

/// One client port toward two ServIPs of one service whose one backend is
/// the same: the second flow gets another client port toward the backend,
/// so each reply comes back from the ServIP its flow went to, to the
/// client's own port; each flow keeps working.
#[test]
fn one_client_port_toward_two_servips_gets_each_reply_right() {
    use overlay_common::policy::Policy;
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let vip2 = std::net::Ipv4Addr::new(172, 30, 0, 11);
    dp.tables
        .put_servip(vip2, SERVICE, Policy::Roundrobin, &[B1])
        .unwrap();
    let (c, b) = (CLIENT.ip, BACKEND.ip);
    for transport in ["tcp", "udp"] {
        let (port_a, srv) = if transport == "tcp" {
            (45_000, HTTP)
        } else {
            (45_001, DNS)
        };
        let pkt = |src, sport, dst, dport| match transport {
            "tcp" => tcp(src, sport, dst, dport),
            _ => udp(src, sport, dst, dport),
        };
        // First flow: untouched.
        let first = open(&mut dp, &pkt(c, port_a, VIP, srv));
        assert_eq!(first, pkt(c, port_a, b, srv));
        // Second flow from the same port to the other ServIP.
        let second = parse_ip(&open(&mut dp, &pkt(c, port_a, vip2, srv)));
        let translated = match transport {
            "tcp" => second.tcp().source_port,
            _ => second.udp().source_port,
        };
        assert_ne!(translated, port_a, "{transport}: the reply tuple was taken");
        // Replies of each flow, from the backend, reach the client right.
        reply_local(&mut dp, &pkt(b, srv, c, port_a), &pkt(VIP, srv, c, port_a));
        reply_local(
            &mut dp,
            &pkt(b, srv, c, translated),
            &pkt(vip2, srv, c, port_a),
        );
        // And each flow keeps its own tuple toward the backend.
        assert_eq!(
            open(&mut dp, &pkt(c, port_a, VIP, srv)),
            pkt(c, port_a, b, srv)
        );
        let again = parse_ip(&open(&mut dp, &pkt(c, port_a, vip2, srv)));
        let again_port = match transport {
            "tcp" => again.tcp().source_port,
            _ => again.udp().source_port,
        };
        assert_eq!(
            again_port, translated,
            "{transport}: the second flow keeps its port"
        );
    }
}
