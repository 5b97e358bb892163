//! Client → ServIP: backend choice, conntrack, DNAT, local delivery and
//! encapsulation toward the backend's node.

use std::net::Ipv4Addr;

use overlay_common::flow::{flow_hash, pick_slot};
use overlay_common::stats::Reason;

use crate::harness::*;

/// Sends `sent` (an IP packet from the client) and checks that it reached
/// the local instance `to` as exactly `expected`.
fn delivered(
    dp: &mut overlay_ctl::dataplane::Dataplane,
    sent: &[u8],
    to: &Inst,
    expected: &[u8],
    new_flow: bool,
) {
    let before = snapshot(dp);
    let (ret, out) = from_instance(dp, &from(&CLIENT, sent), CLIENT.ifindex);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let mut counted = vec![(Reason::DeliverLocal, 1)];
    if new_flow {
        counted.push((Reason::NewFlow, 1));
    }
    assert_eq!(before.delta(dp), counted);
    let f = parse(&out);
    assert_eq!(f.eth.destination, to.mac, "delivered to the instance's MAC");
    assert_eq!(f.eth.source, to.host_mac, "from its host-side veth");
    assert_eq!(f.ip.bytes, expected, "translated packet");
}

#[test]
fn tcp_new_flow_to_local_backend() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP);
    let want = tcp(CLIENT.ip, CLIENT_PORT, BACKEND.ip, HTTP);
    delivered(&mut dp, &sent, &BACKEND, &want, true);
    assert_eq!(
        conntrack(&dp),
        ct_pair(CLIENT_PORT, HTTP, TCP, BACKEND.ip, NODE_ID)
    );
}

#[test]
fn udp_new_flow_to_local_backend() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = udp(CLIENT.ip, CLIENT_PORT, VIP, DNS);
    let want = udp(CLIENT.ip, CLIENT_PORT, BACKEND.ip, DNS);
    delivered(&mut dp, &sent, &BACKEND, &want, true);
    assert_eq!(
        conntrack(&dp),
        ct_pair(CLIENT_PORT, DNS, UDP, BACKEND.ip, NODE_ID)
    );
}

#[test]
fn udp_without_checksum_keeps_checksum_zero() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = udp_nocsum(CLIENT.ip, CLIENT_PORT, VIP, DNS);
    let want = udp_nocsum(CLIENT.ip, CLIENT_PORT, BACKEND.ip, DNS);
    delivered(&mut dp, &sent, &BACKEND, &want, true);
}

#[test]
fn icmp_echo_new_flow_uses_id_as_port() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let sent = echo(CLIENT.ip, VIP, 0x0bad, 1);
    let want = echo(CLIENT.ip, BACKEND.ip, 0x0bad, 1);
    delivered(&mut dp, &sent, &BACKEND, &want, true);
    assert_eq!(
        conntrack(&dp),
        ct_pair(0x0bad, 0x0bad, ICMP, BACKEND.ip, NODE_ID)
    );
    // The next echo of the same id is the same flow.
    let sent = echo(CLIENT.ip, VIP, 0x0bad, 2);
    let want = echo(CLIENT.ip, BACKEND.ip, 0x0bad, 2);
    delivered(&mut dp, &sent, &BACKEND, &want, false);
}

#[test]
fn established_flow_keeps_backend_when_slots_change() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let first = tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP);
    delivered(
        &mut dp,
        &first,
        &BACKEND,
        &tcp(CLIENT.ip, CLIENT_PORT, BACKEND.ip, HTTP),
        true,
    );

    servip(&mut dp, &[B2]);
    assert_eq!(dp.tables.slots(VIP), [B2]);
    // Same 5-tuple: still the first backend, no new flow.
    delivered(
        &mut dp,
        &first,
        &BACKEND,
        &tcp(CLIENT.ip, CLIENT_PORT, BACKEND.ip, HTTP),
        false,
    );
    // A new 5-tuple follows the new table.
    let second = tcp(CLIENT.ip, CLIENT_PORT + 1, VIP, HTTP);
    let want = tcp(CLIENT.ip, CLIENT_PORT + 1, BACKEND2.ip, HTTP);
    delivered(&mut dp, &second, &BACKEND2, &want, true);
    assert_eq!(conntrack(&dp).len(), 4);
}

/// Checks an encapsulated frame toward the peer carrying `inner` (as the
/// client sent `sent`); `macs`: whether the FIB filled the outer Ethernet.
fn encapsulated(out: &[u8], sent: &[u8], inner: &[u8], macs: bool) {
    let f = parse(out);
    if macs {
        assert_eq!(f.eth.destination, PEER_MAC, "the neighbour's MAC");
        assert_eq!(f.eth.source, UPLINK_MAC, "the uplink's MAC");
    } else {
        // bpf_redirect_neigh fills them in on the way out.
        assert_eq!(
            (f.eth.source, f.eth.destination),
            (CLIENT.mac, CLIENT.host_mac)
        );
    }
    let (o, sent) = (&f.ip, parse_ip(sent));
    assert_eq!((o.src(), o.dst()), (NODE_IP, PEER_IP));
    assert_eq!(o.hdr.protocol.0, UDP);
    assert_eq!(o.hdr.time_to_live, 64);
    assert_eq!(o.hdr.identification, 0);
    assert_eq!(o.hdr.dont_fragment, sent.hdr.dont_fragment, "DF copied");
    assert_eq!(o.hdr.dscp, sent.hdr.dscp, "DSCP copied");
    assert_eq!(o.hdr.header_len(), 20);
    assert_eq!(o.hdr.total_len as usize, inner.len() + 28);
    let u = o.udp();
    assert_eq!(u.destination_port, EWP);
    assert!(
        u.source_port >= 49152,
        "source port {} in the dynamic range",
        u.source_port
    );
    assert_eq!(u.length as usize, inner.len() + 8);
    assert_eq!(u.checksum, 0);
    assert_eq!(o.payload, inner, "inner packet");
    parse_ip(&o.payload);
}

#[test]
fn remote_backend_is_encapsulated_toward_its_node() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    up.ns
        .enter(|| {
            let sent = tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&CLIENT, &sent), CLIENT.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(
                before.delta(&dp),
                [(Reason::Encap, 1), (Reason::NewFlow, 1)]
            );
            encapsulated(
                &out,
                &sent,
                &tcp(CLIENT.ip, CLIENT_PORT, REMOTE, HTTP),
                true,
            );
            assert_eq!(
                conntrack(&dp),
                ct_pair(CLIENT_PORT, HTTP, TCP, REMOTE, PEER_ID)
            );

            // No DF, a DSCP, and exactly the overlay MTU: outer 1500 bytes.
            let mut h = ipv4(CLIENT.ip, VIP, UDP);
            h.dont_fragment = false;
            h.dscp = etherparse::IpDscp::try_new(10).unwrap();
            let payload = vec![0x5a; MTU as usize - 28];
            let sent = udp_with(h.clone(), CLIENT_PORT, DNS, &payload);
            h.destination = REMOTE.octets();
            let want = udp_with(h, CLIENT_PORT, DNS, &payload);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&CLIENT, &sent), CLIENT.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(
                before.delta(&dp),
                [(Reason::Encap, 1), (Reason::NewFlow, 1)]
            );
            assert_eq!(out.len(), 14 + 1500);
            encapsulated(&out, &sent, &want, true);
        })
        .unwrap();
}

/// The next hop is cached per CPU for one to two ticks (1.07-2.1 s), so
/// packets skip the FIB lookup, yet a changed neighbour MAC is followed soon
/// after. (On one CPU: the cache is per CPU.)
#[test]
fn changed_neighbour_is_followed_within_two_ticks() {
    pin_to_one_cpu();
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    let sent = from(&CLIENT, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    let mut dmac = || {
        let out = up
            .ns
            .enter(|| from_instance(&mut dp, &sent, CLIENT.ifindex).1);
        parse(&out.unwrap()).eth.destination
    };
    assert_eq!(dmac(), PEER_MAC);
    let moved = [0x02, 0, 0, 0, 0, 0x99];
    let mac = fmt_mac(moved);
    let args = [
        "neigh",
        "replace",
        "192.0.2.12",
        "lladdr",
        &mac,
        "dev",
        "up0",
        "nud",
        "permanent",
    ];
    up.ns.ip(args).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(dmac(), PEER_MAC, "cached: no FIB lookup for this packet");
    while dmac() != moved {
        assert!(
            start.elapsed().as_secs() < 5,
            "the cached next hop never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("new neighbour MAC in use after {:?}", start.elapsed());
}

#[test]
fn remote_backend_without_neighbour_entry_is_handed_to_redirect_neigh() {
    let up = uplink(false);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    up.ns
        .enter(|| {
            let sent = udp(CLIENT.ip, CLIENT_PORT, VIP, DNS);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&CLIENT, &sent), CLIENT.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(
                before.delta(&dp),
                [(Reason::Encap, 1), (Reason::NewFlow, 1)]
            );
            encapsulated(
                &out,
                &sent,
                &udp(CLIENT.ip, CLIENT_PORT, REMOTE, DNS),
                false,
            );
        })
        .unwrap();
}

/// `docs/wire-format.md` and `overlay_common::flow`: the outer source port
/// comes from the same hash that chose the slot, i.e. of the flow as the
/// client sent it.
#[test]
fn encap_source_port_is_hash_of_client_flow() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    servip(&mut dp, &[B_REMOTE]);
    up.ns
        .enter(|| {
            for (sent, proto) in [
                (tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP), TCP),
                (udp(CLIENT.ip, CLIENT_PORT, VIP, DNS), UDP),
            ] {
                let (ret, out) = from_instance(&mut dp, &from(&CLIENT, &sent), CLIENT.ifindex);
                assert_eq!(ret, TC_ACT_REDIRECT);
                let dport = if proto == TCP { HTTP } else { DNS };
                let got = parse(&out).ip.udp().source_port;
                let translated = expected_sport(CLIENT.ip, CLIENT_PORT, REMOTE, dport, proto);
                let want = expected_sport(CLIENT.ip, CLIENT_PORT, VIP, dport, proto);
                assert_eq!(
                    got, want,
                    "hash of the translated flow would be {translated}"
                );
            }
        })
        .unwrap();
}

/// A local instance answering a client on another node (whose node keeps
/// the NAT state) is encapsulated untranslated.
#[test]
fn reply_to_remote_client_is_encapsulated_unchanged() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    let client = Ipv4Addr::new(10, 30, 2, 7);
    up.ns
        .enter(|| {
            let sent = tcp(BACKEND.ip, HTTP, client, CLIENT_PORT);
            let before = snapshot(&dp);
            let (ret, out) = from_instance(&mut dp, &from(&BACKEND, &sent), BACKEND.ifindex);
            assert_eq!(ret, TC_ACT_REDIRECT);
            assert_eq!(before.delta(&dp), [(Reason::Encap, 1)]);
            let f = parse(&out);
            assert_eq!(f.ip.payload, sent);
            assert_eq!(f.ip.dst(), PEER_IP);
            assert_eq!(parse_ip(&f.ip.payload).tcp().source_port, HTTP);
            assert!(conntrack(&dp).is_empty());
        })
        .unwrap();
}

/// The program picks the slot `overlay_common::flow` predicts.
#[test]
fn slot_choice_matches_overlay_common() {
    let mut dp = node(LO);
    let slots = [B1, B2, B2, B1, B2];
    servip(&mut dp, &slots);
    let mut seen = [0; 2];
    for sport in 30000..30040 {
        let hash = flow_hash(wire(CLIENT.ip), wire(VIP), port(sport), port(HTTP), TCP);
        let id = slots[pick_slot(hash, slots.len() as u32) as usize];
        let (to, i) = if id == B1 {
            (BACKEND, 0)
        } else {
            (BACKEND2, 1)
        };
        seen[i] += 1;
        let want = tcp(CLIENT.ip, sport, to.ip, HTTP);
        delivered(&mut dp, &tcp(CLIENT.ip, sport, VIP, HTTP), &to, &want, true);
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both backends chosen: {seen:?}");
}

/// Round robin ignores the hash: new flows take the slots in turn (per CPU,
/// so the test stays on one CPU), across a table swap too.
#[test]
fn round_robin_takes_the_slots_in_turn() {
    pin_to_one_cpu();
    let mut dp = node(LO);
    servip_with(
        &mut dp,
        overlay_common::policy::Policy::Roundrobin,
        &[B1, B2],
    );
    for (i, sport) in (31000..31006).enumerate() {
        let to = [BACKEND, BACKEND2][i % 2];
        let want = tcp(CLIENT.ip, sport, to.ip, HTTP);
        delivered(&mut dp, &tcp(CLIENT.ip, sport, VIP, HTTP), &to, &want, true);
    }
    // A new table (B2 only) replaces the old one whole; old slots are gone.
    servip_with(&mut dp, overlay_common::policy::Policy::Roundrobin, &[B2]);
    assert_eq!(dp.tables.slots(VIP), [B2]);
    assert_eq!(
        dp.tables.all_slots(),
        [(VIP, vec![B2])].into(),
        "the batch read agrees"
    );
    let want = tcp(CLIENT.ip, 31100, BACKEND2.ip, HTTP);
    delivered(
        &mut dp,
        &tcp(CLIENT.ip, 31100, VIP, HTTP),
        &BACKEND2,
        &want,
        true,
    );
    // The flows already open keep their backend (conntrack).
    let want = tcp(CLIENT.ip, 31000, BACKEND.ip, HTTP);
    delivered(
        &mut dp,
        &tcp(CLIENT.ip, 31000, VIP, HTTP),
        &BACKEND,
        &want,
        false,
    );
}

fn pin_to_one_cpu() {
    let mut one = nix::sched::CpuSet::new();
    one.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
}

/// A UDP checksum that becomes 0 after translation is sent as 0xffff
/// (0 would mean "no checksum").
#[test]
fn udp_checksum_translated_to_zero_is_sent_as_ffff() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    let payload = (0..=u16::MAX)
        .map(|w| w.to_be_bytes())
        .find(|p| {
            let want = udp_with(ipv4(CLIENT.ip, BACKEND.ip, UDP), CLIENT_PORT, DNS, p);
            want[26..28] == [0xff, 0xff]
        })
        .unwrap();
    let sent = udp_with(ipv4(CLIENT.ip, VIP, UDP), CLIENT_PORT, DNS, &payload);
    let want = udp_with(ipv4(CLIENT.ip, BACKEND.ip, UDP), CLIENT_PORT, DNS, &payload);
    delivered(&mut dp, &sent, &BACKEND, &want, true);
}

/// Tables caught half-way through an update, and a node without a route.
#[test]
fn missing_table_entries_drop_the_packet() {
    let up = uplink(true);
    let mut dp = node(up.ifindex);
    let lost = Ipv4Addr::new(10, 30, 3, 3);
    let far = Ipv4Addr::new(10, 30, 4, 4);
    dp.tables.put_backend(7, lost, NODE_ID).unwrap(); // no endpoint
    dp.tables.put_backend(8, far, 4).unwrap(); // node 4 unknown
    dp.tables
        .put_node(5, Ipv4Addr::new(198, 51, 100, 5), EWP, 0)
        .unwrap(); // unroutable
    dp.tables.put_backend(9, far, 5).unwrap();
    let cases = [
        (99, Reason::DropNoRoute), // slot points at no backend
        (7, Reason::DropNoEndpoint),
        (8, Reason::DropNoRoute),
        (9, Reason::DropNoRoute),
    ];
    up.ns
        .enter(|| {
            for (id, reason) in cases {
                servip(&mut dp, &[id]);
                let sent = from(&CLIENT, &tcp(CLIENT.ip, 1000 + id as u16, VIP, HTTP));
                let before = snapshot(&dp);
                let (ret, _) = from_instance(&mut dp, &sent, CLIENT.ifindex);
                let mut counted = vec![(reason, 1)];
                if id != 99 {
                    counted.insert(0, (Reason::NewFlow, 1));
                }
                assert_eq!(
                    (ret, before.delta(&dp)),
                    (TC_ACT_SHOT, counted),
                    "backend {id}"
                );
            }
        })
        .unwrap();
}

/// Until the agent writes CONFIG, every program lets everything through.
#[test]
fn unconfigured_node_passes_everything() {
    overlay_testnet::require_root().unwrap();
    let mut dp = overlay_ctl::dataplane::Dataplane::load(None).unwrap();
    let sent = from(&CLIENT, &tcp(CLIENT.ip, CLIENT_PORT, VIP, HTTP));
    let before = snapshot(&dp);
    assert_eq!(from_instance(&mut dp, &sent, LO), (TC_ACT_OK, sent.clone()));
    assert_eq!(before.delta(&dp), [(Reason::Pass, 1)]);
    let frame = tunnel(STRANGER_IP, &tcp(REMOTE, HTTP, CLIENT.ip, CLIENT_PORT));
    assert_eq!(uplink_tc(&mut dp, &frame), (TC_ACT_OK, frame.clone()));
    assert_eq!(uplink_xdp(&mut dp, &frame), (XDP_PASS, frame.clone()));
    assert_eq!(before.delta(&dp), [(Reason::Pass, 1)]);
}
