//! Path MTU toward a node: the MTU of its `NODES` entry (the smaller uplink
//! of both nodes), lowered by ICMP fragmentation needed from an underlay
//! router about one of this node's tunnel packets (`PATH_MTU`).

use std::net::Ipv4Addr;

use etherparse::{EtherType, Icmpv4Type, icmpv4::DestUnreachableHeader as Code};
use overlay_ctl::dataplane::Dataplane;

use crate::harness::*;

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A tunnel packet this node sent from `src` to `to` (what a router quotes).
fn tunnel_packet(src: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    udp_with(ipv4(src, to, UDP), 49999, EWP, &[0x45; 40])
}

/// ICMP fragmentation needed (next-hop `mtu`) from a router to this node about `about`.
fn frag_needed(mtu: u16, about: &[u8]) -> Vec<u8> {
    let code = Code::FragmentationNeeded { next_hop_mtu: mtu };
    eth(
        PEER_MAC,
        UPLINK_MAC,
        EtherType::IPV4,
        &unreach(ROUTER, NODE_IP, code, about),
    )
}

/// Delivers `report` to the uplink: the node's own ICMP, always passed on.
fn report(dp: &mut Dataplane, mtu: u16, about: &[u8]) {
    let (ret, _) = uplink_tc(dp, &frag_needed(mtu, about));
    assert_eq!(ret, TC_ACT_OK, "ICMP to the node goes to its stack");
}

/// The next-hop MTU the client is told when it sends an IPv4 packet of
/// `len` bytes, `df` or not, toward the remote backend; `None`: not answered
/// (it goes on toward the tunnel).
fn told(dp: &mut Dataplane, len: usize, df: bool) -> Option<u16> {
    let mut h = ipv4(CLIENT.ip, VIP, UDP);
    h.dont_fragment = df;
    let sent = udp_with(h, CLIENT_PORT, DNS, &vec![7; len - 28]);
    let (ret, out) = from_instance(dp, &from(&CLIENT, &sent), CLIENT.ifindex);
    if ret != TC_ACT_REDIRECT || out.len() >= len {
        return None;
    }
    let f = parse(&out);
    assert_eq!(
        (f.ip.hdr.source, f.ip.hdr.destination),
        (VIP.octets(), CLIENT.ip.octets())
    );
    match f.ip.icmp().icmp_type {
        Icmpv4Type::DestinationUnreachable(Code::FragmentationNeeded { next_hop_mtu }) => {
            Some(next_hop_mtu)
        }
        ref other => panic!("not fragmentation needed: {other:?}"),
    }
}

fn remote_servip() -> Dataplane {
    let mut dp = node(LO);
    servip(&mut dp, &[B_REMOTE]);
    dp
}

#[test]
fn the_node_entry_sets_the_limit() {
    let mut dp = remote_servip();
    assert_eq!(told(&mut dp, MTU as usize + 1, true), Some(MTU));
    dp.tables.put_node(PEER_ID, PEER_IP, EWP, 1372).unwrap();
    assert_eq!(told(&mut dp, 1400, true), Some(1372));
    assert_eq!(told(&mut dp, 1372, true), None);
}

/// Without DF the packet would only be lost (the far node drops fragments
/// of tunnel packets): the sender is told too, and fragments to fit.
#[test]
fn too_big_without_df_is_answered_too() {
    let mut dp = remote_servip();
    assert_eq!(told(&mut dp, MTU as usize + 1, false), Some(MTU));
}

#[test]
fn a_router_report_lowers_the_path_toward_that_node() {
    let mut dp = remote_servip();
    assert_eq!(told(&mut dp, 1400, true), None);
    report(&mut dp, 1400, &tunnel_packet(NODE_IP, PEER_IP));
    assert_eq!(told(&mut dp, 1400, true), Some(1372));
    assert_eq!(told(&mut dp, 1372, true), None);
    let seen = dp.tables.path_mtu();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].0, seen[0].1.mtu), (PEER_IP, 1400));
    // A larger MTU reported later does not raise it; a smaller one lowers it.
    report(&mut dp, 1450, &tunnel_packet(NODE_IP, PEER_IP));
    assert_eq!(told(&mut dp, 1400, true), Some(1372));
    report(&mut dp, 1300, &tunnel_packet(NODE_IP, PEER_IP));
    assert_eq!(told(&mut dp, 1400, true), Some(1272));
}

/// Reports that are not about this node's tunnel packets to a node, or
/// claim an implausible MTU, change nothing: a forged report cannot shrink
/// a path below 576 bytes, nor touch paths it does not name.
#[test]
fn foreign_and_implausible_reports_are_ignored() {
    let mut dp = remote_servip();
    for (mtu, about) in [
        (500, tunnel_packet(NODE_IP, PEER_IP)),
        (68, tunnel_packet(NODE_IP, PEER_IP)),
        (1500, tunnel_packet(NODE_IP, PEER_IP)),
        (1400, tunnel_packet(STRANGER_IP, PEER_IP)),
        (1400, tunnel_packet(NODE_IP, STRANGER_IP)),
        (1400, tcp(NODE_IP, 49999, PEER_IP, EWP)),
    ] {
        report(&mut dp, mtu, &about);
        assert_eq!(
            told(&mut dp, 1400, true),
            None,
            "report {mtu} about {about:02x?}"
        );
    }
    assert!(dp.tables.path_mtu().is_empty());
}
