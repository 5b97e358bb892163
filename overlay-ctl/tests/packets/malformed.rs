//! Malformed and unwanted input: each gets its documented verdict and
//! counter (docs/wire-format.md, "Verdicts").

use std::net::Ipv4Addr;

use etherparse::{EtherType, IpFragOffset};
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::{Dataplane, programs};

use crate::harness::*;

/// Runs the from-instance program on `frame` (from `ifindex`) and checks the
/// verdict and the one counter that moved; a pass must leave it unchanged.
fn from_inst(dp: &mut Dataplane, frame: &[u8], ifindex: u32, ret: u32, reason: Reason) {
    let before = snapshot(dp);
    let (got, out) = from_instance(dp, frame, ifindex);
    assert_eq!(
        (got, before.delta(dp)),
        (ret, vec![(reason, 1)]),
        "frame {frame:02x?}"
    );
    if ret == TC_ACT_OK {
        assert_eq!(out, frame);
    }
}

fn dropped(dp: &mut Dataplane, frame: &[u8], reason: Reason) {
    from_inst(dp, frame, LO, TC_ACT_SHOT, reason);
}

/// The uplink TC program: `None` means passed untouched and uncounted.
fn on_uplink(dp: &mut Dataplane, frame: &[u8], reason: Option<Reason>) {
    let before = snapshot(dp);
    let (got, out) = uplink_tc(dp, frame);
    match reason {
        None => {
            assert_eq!(
                (got, before.delta(dp)),
                (TC_ACT_OK, vec![]),
                "frame {frame:02x?}"
            );
            assert_eq!(out, frame);
        }
        Some(r) => assert_eq!(
            (got, before.delta(dp)),
            (TC_ACT_SHOT, vec![(r, 1)]),
            "frame {frame:02x?}"
        ),
    }
}

/// The first `n` bytes of a frame.
fn cut(frame: &[u8], n: usize) -> Vec<u8> {
    frame[..n].to_vec()
}

/// IPv4 packet with its header changed by `f` (checksum recomputed).
fn edited(mut packet: Vec<u8>, f: impl FnOnce(&mut etherparse::Ipv4Header)) -> Vec<u8> {
    edit_ip(&mut packet, f);
    packet
}

fn first_fragment(h: &mut etherparse::Ipv4Header) {
    h.dont_fragment = false;
    h.more_fragments = true;
}

fn later_fragment(h: &mut etherparse::Ipv4Header) {
    h.dont_fragment = false;
    h.fragment_offset = IpFragOffset::try_new(185).unwrap();
}

/// A TCP packet to the ServIP whose IPv4 header carries 4 bytes of options.
fn with_options(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut h = ipv4(src, dst, TCP);
    h.options = [1, 1, 1, 0][..].try_into().unwrap();
    tcp_with(h, CLIENT_PORT, HTTP, b"x")
}

#[test]
fn truncated_from_instance_is_malformed() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let syn = from(&CLIENT, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    let query = from(&CLIENT, &udp(CLIENT.ip, CLIENT_PORT, VIP, DNS));
    let ping = from(&CLIENT, &echo(CLIENT.ip, VIP, 1, 1));
    // IPv4 without L4; inside each L4 header (the ports, and the checksum
    // field that translation rewrites). Shorter IPv4 frames cannot be
    // test-run: the kernel refuses skb input with EtherType IPv4 below
    // 14 + 20 bytes (EINVAL), see `kernel_refuses_short_ipv4_frames`.
    for n in [34, 34 + 3, 34 + 17] {
        dropped(&mut dp, &cut(&syn, n), Reason::DropMalformed);
    }
    for n in [34, 34 + 7] {
        dropped(&mut dp, &cut(&query, n), Reason::DropMalformed);
        dropped(&mut dp, &cut(&ping, n), Reason::DropMalformed);
    }
    // A reply toward a local instance is judged the same way.
    let reply = from(&BACKEND, &tcp(BACKEND.ip, HTTP, CLIENT.ip, CLIENT_PORT));
    dropped(&mut dp, &cut(&reply, 34 + 17), Reason::DropMalformed);
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn bad_version_or_ihl_is_malformed() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    for first in [0x44, 0x40, 0x65] {
        let mut p = tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP);
        p[0] = first;
        dropped(&mut dp, &from(&CLIENT, &p), Reason::DropMalformed);
    }
}

#[test]
fn ip_total_length_disagreeing_with_the_frame_is_malformed() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    for len in [20, 200] {
        let p = edited(tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP), |h| {
            h.total_len = len
        });
        dropped(&mut dp, &from(&CLIENT, &p), Reason::DropMalformed);
    }
}

#[test]
fn ip_options_on_the_overlay_path_are_dropped() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    dropped(
        &mut dp,
        &from(&CLIENT, &with_options(CLIENT.ip, VIP)),
        Reason::DropIpOptions,
    );
    // Toward an instance too (no ServIP involved).
    let direct = with_options(CLIENT.ip, BACKEND.ip);
    dropped(&mut dp, &from(&CLIENT, &direct), Reason::DropIpOptions);
}

#[test]
fn fragments_on_the_overlay_path_are_dropped() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let first = edited(udp(CLIENT.ip, CLIENT_PORT, VIP, DNS), first_fragment);
    dropped(&mut dp, &from(&CLIENT, &first), Reason::DropFragment);
    // A later fragment carries no UDP header at all.
    let later = edited(udp(CLIENT.ip, CLIENT_PORT, VIP, DNS), later_fragment);
    dropped(&mut dp, &from(&CLIENT, &later), Reason::DropFragment);
    let later = edited(udp(CLIENT.ip, CLIENT_PORT, BACKEND.ip, DNS), later_fragment);
    dropped(&mut dp, &from(&CLIENT, &later), Reason::DropFragment);
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn non_ipv4_from_instance_passes() {
    let mut dp = node(LO);
    let arp = eth(
        CLIENT.mac,
        [0xff; 6],
        EtherType::ARP,
        &[0, 1, 8, 0, 6, 4, 0, 1],
    );
    let ipv6 = eth(CLIENT.mac, CLIENT.host_mac, EtherType::IPV6, &[0x60; 48]);
    for frame in [arp, ipv6] {
        from_inst(&mut dp, &frame, LO, TC_ACT_OK, Reason::Pass);
    }
    // IPv4 leaving the overlay passes too.
    let out = from(
        &CLIENT,
        &tcp(CLIENT.ip, CLIENT_PORT, Ipv4Addr::new(198, 51, 100, 1), 443),
    );
    from_inst(&mut dp, &out, LO, TC_ACT_OK, Reason::Pass);
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let stranger = Ipv4Addr::new(10, 30, 1, 99);
    dropped(
        &mut dp,
        &from(&CLIENT, &tcp(stranger, 1, VIP, HTTP)),
        Reason::DropSpoofed,
    );
    // A real instance's address, but not the instance behind this interface.
    let elsewhere = from(&ELSEWHERE, &tcp(ELSEWHERE.ip, 1, VIP, HTTP));
    dropped(&mut dp, &elsewhere, Reason::DropSpoofed);
    // Checked before routing: also for traffic leaving the overlay.
    let outside = from(
        &CLIENT,
        &tcp(ELSEWHERE.ip, 1, Ipv4Addr::new(198, 51, 100, 1), 443),
    );
    dropped(&mut dp, &outside, Reason::DropSpoofed);
    assert!(conntrack(&dp).is_empty());
}

/// RTT probes (payload starting with `PROBE_MARK`) from a registered node
/// pass up to the agent untouched and are counted; a stranger's are dropped.
#[test]
fn probes_pass_to_the_agent_only_from_registered_nodes() {
    let mut dp = node(LO);
    let mut probe = vec![overlay_common::PROBE_MARK, 0x57, 0x50, 0x01];
    probe.resize(40, 0);
    let frame = tunnel(PEER_IP, &probe);
    let before = snapshot(&dp);
    assert_eq!(uplink_xdp(&mut dp, &frame).0, XDP_PASS);
    let (ret, out) = uplink_tc(&mut dp, &frame);
    assert_eq!(
        (ret, before.delta(&dp)),
        (TC_ACT_OK, vec![(Reason::Probe, 1)])
    );
    assert_eq!(out, frame);
    on_uplink(
        &mut dp,
        &tunnel(STRANGER_IP, &probe),
        Some(Reason::DropUnknownPeer),
    );
}

#[test]
fn tunnel_from_unregistered_node_is_dropped_by_xdp_and_tc() {
    let mut dp = node(LO);
    let inner = tcp(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT);
    let frame = tunnel(STRANGER_IP, &inner);
    let before = snapshot(&dp);
    let (ret, _) = uplink_xdp(&mut dp, &frame);
    assert_eq!(
        (ret, before.delta(&dp)),
        (XDP_DROP, vec![(Reason::DropUnknownPeer, 1)])
    );
    on_uplink(&mut dp, &frame, Some(Reason::DropUnknownPeer));
    // Removing a node revokes its address.
    dp.tables.remove_node(PEER_ID).unwrap();
    let frame = tunnel(PEER_IP, &inner);
    on_uplink(&mut dp, &frame, Some(Reason::DropUnknownPeer));
    let (ret, _) = uplink_xdp(&mut dp, &frame);
    assert_eq!(ret, XDP_DROP);
}

#[test]
fn decapsulated_packet_for_no_local_instance_is_dropped() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    for dst in [Ipv4Addr::new(10, 30, 1, 77), VIP, REMOTE] {
        let frame = tunnel(PEER_IP, &tcp(REMOTE, HTTP, dst, CLIENT_PORT));
        on_uplink(&mut dp, &frame, Some(Reason::DropNoEndpoint));
    }
}

#[test]
fn malformed_tunnel_packets() {
    let mut dp = node(LO);
    let inner = tcp(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT);
    let frame = tunnel(PEER_IP, &inner);
    // Cut before the UDP destination port: not recognisably ours, passed
    // (the TC program can only be test-run from 34 bytes on).
    for n in [14, 14 + 19, 34, 34 + 3] {
        let before = snapshot(&dp);
        assert_eq!(
            uplink_xdp(&mut dp, &cut(&frame, n)),
            (XDP_PASS, cut(&frame, n))
        );
        assert_eq!(before.delta(&dp), []);
        if n >= 34 {
            on_uplink(&mut dp, &cut(&frame, n), None);
        }
    }
    // Addressed to the tunnel: judged.
    for n in [42, 42 + 19, 62, 62 + 3, 62 + 17] {
        on_uplink(&mut dp, &cut(&frame, n), Some(Reason::DropMalformed));
    }
    let bad_inner = |f: fn(&mut etherparse::Ipv4Header)| tunnel(PEER_IP, &edited(inner.clone(), f));
    on_uplink(
        &mut dp,
        &bad_inner(first_fragment),
        Some(Reason::DropFragment),
    );
    on_uplink(
        &mut dp,
        &bad_inner(later_fragment),
        Some(Reason::DropFragment),
    );
    let mut ihl = inner.clone();
    ihl[0] = 0x44;
    on_uplink(&mut dp, &tunnel(PEER_IP, &ihl), Some(Reason::DropMalformed));
    let opts = tunnel(PEER_IP, &with_options(REMOTE, CLIENT.ip));
    on_uplink(&mut dp, &opts, Some(Reason::DropIpOptions));
    // A fragmented tunnel packet.
    let mut outer = frame.clone();
    edit_ip(&mut outer[14..], first_fragment);
    on_uplink(&mut dp, &outer, Some(Reason::DropFragment));
}

/// Documents why the TC truncation tests start at 34 bytes: this kernel's
/// `BPF_PROG_TEST_RUN` rejects shorter IPv4 frames before the program runs.
/// XDP takes them (see `malformed_tunnel_packets`).
#[test]
fn kernel_refuses_short_ipv4_frames() {
    let mut dp = node(LO);
    let frame = from(&CLIENT, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    let run = |dp: &mut Dataplane, n| tc(dp, programs::FROM_INSTANCE, &cut(&frame, n), LO, 1);
    for n in [14, 14 + 19] {
        assert!(run(&mut dp, n).is_err(), "{n} bytes accepted");
    }
    assert!(run(&mut dp, 34).is_ok());
}
