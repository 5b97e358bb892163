//! The flood guard (docs/conntrack.md): flows confirmed by a reply live in a
//! table that new flows cannot evict from; when it is full, new flows are
//! not established and their replies are counted as `drop_ct_full`.

use overlay_common::maps::ct;
use overlay_common::stats::Reason;
use overlay_ctl::dataplane::{Dataplane, Sizes};

use crate::harness::*;

const TABLE: u32 = 1024;

/// A TCP segment from `src` with exactly `flags` set (SYN, ACK, FIN...).
fn segment(
    flags: &str,
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240);
    for f in flags.split('+') {
        b = match f {
            "SYN" => b.syn(),
            "ACK" => b.ack(1),
            "FIN" => b.fin(),
            other => panic!("flag {other}"),
        };
    }
    b.write(&mut out, &[]).unwrap();
    out
}

/// The client's SYN to the ServIP from `sport`, and the backend's SYN-ACK.
fn syn_and_answer(dp: &mut Dataplane, sport: u16) {
    let syn = from(&CLIENT, &segment("SYN", CLIENT.ip, sport, VIP, HTTP));
    assert_eq!(
        from_instance(dp, &syn, CLIENT.ifindex).0,
        TC_ACT_REDIRECT,
        "the SYN of {sport}"
    );
    let answer = from(
        &BACKEND,
        &segment("SYN+ACK", BACKEND.ip, HTTP, CLIENT.ip, sport),
    );
    assert_eq!(
        from_instance(dp, &answer, BACKEND.ifindex).0,
        TC_ACT_REDIRECT,
        "the SYN-ACK to {sport}"
    );
}

/// A whole handshake from `sport`, then the backend's first segment after
/// it (which confirms the flow): the verdict on that segment and what it
/// counted.
fn open(dp: &mut Dataplane, sport: u16) -> (u32, Vec<(Reason, u64)>) {
    syn_and_answer(dp, sport);
    let ack = from(&CLIENT, &segment("ACK", CLIENT.ip, sport, VIP, HTTP));
    assert_eq!(
        from_instance(dp, &ack, CLIENT.ifindex).0,
        TC_ACT_REDIRECT,
        "the ACK of {sport}"
    );
    let data = from(
        &BACKEND,
        &segment("ACK", BACKEND.ip, HTTP, CLIENT.ip, sport),
    );
    let before = snapshot(dp);
    let (ret, _) = from_instance(dp, &data, BACKEND.ifindex);
    (ret, before.delta(dp))
}

#[test]
fn new_flows_never_evict_established_ones() {
    let mut dp = node_sized(LO, Sizes { conntrack: TABLE });
    servip(&mut dp, &[B1]);
    // Fill the confirmed table: two entries per flow.
    let established: Vec<u16> = (0..TABLE as u16 / 2).map(|i| 10_000 + i).collect();
    for &sport in &established {
        let (ret, counted) = open(&mut dp, sport);
        assert_eq!(
            (ret, counted),
            (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)]),
            "the handshake of {sport} completes"
        );
    }
    let confirmed = |dp: &Dataplane| {
        dp.tables
            .tracked()
            .into_iter()
            .filter(|t| t.confirmed && t.entry.dir == ct::FORWARD)
            .map(|t| (t.key.sport, t.entry.nat_addr))
            .collect::<Vec<_>>()
    };
    let before = confirmed(&dp);
    assert_eq!(before.len(), established.len());
    // Far more new flows than either table holds: none gets established,
    // every handshake is refused and counted, and no established flow is
    // pushed out.
    let flood = 3 * TABLE as u16;
    for i in 0..flood {
        let (ret, counted) = open(&mut dp, 30_000 + i);
        assert_eq!(
            (ret, counted),
            (TC_ACT_SHOT, vec![(Reason::DropCtFull, 1)]),
            "the handshake of new flow {i} with the table full"
        );
    }
    let mut after = confirmed(&dp);
    let mut before = before;
    after.sort_unstable();
    before.sort_unstable();
    assert_eq!(after, before, "every established flow kept its backend");
    // Their packets still go through.
    let again = from(&CLIENT, &tcp(CLIENT.ip, established[7], VIP, HTTP));
    let snap = snapshot(&dp);
    let (ret, _) = from_instance(&mut dp, &again, CLIENT.ifindex);
    assert_eq!(
        (ret, snap.delta(&dp)),
        (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)])
    );
}

/// Flows end after their lifetime without a packet: a closed TCP connection
/// after the closing lifetime, UDP after its own, while an open TCP
/// connection with a long lifetime stays.
#[test]
fn flows_end_after_their_lifetime() {
    let mut dp = node(LO);
    servip(&mut dp, &[B1]);
    for sport in [41_000, 41_001] {
        assert_eq!(open(&mut dp, sport).0, TC_ACT_REDIRECT);
    }
    // 41001 closes: the client's FIN.
    let closing = from(&CLIENT, &segment("FIN+ACK", CLIENT.ip, 41_001, VIP, HTTP));
    assert_eq!(
        from_instance(&mut dp, &closing, CLIENT.ifindex).0,
        TC_ACT_REDIRECT
    );
    let dns = from(&CLIENT, &udp(CLIENT.ip, 41_002, VIP, DNS));
    assert_eq!(
        from_instance(&mut dp, &dns, CLIENT.ifindex).0,
        TC_ACT_REDIRECT
    );
    let states: Vec<(u16, u8, bool)> = {
        let mut v: Vec<_> = dp
            .tables
            .tracked()
            .into_iter()
            .filter(|t| t.entry.dir == ct::FORWARD)
            .map(|t| (t.key.sport, t.entry.state, t.confirmed))
            .collect();
        v.sort_unstable();
        v
    };
    let (p1, p2, p3) = (port(41_000), port(41_001), port(41_002));
    let mut want = vec![
        (p1, ct::OPEN, true),
        (p2, ct::CLOSING, true),
        (p3, ct::OPEN, false),
    ];
    want.sort_unstable();
    assert_eq!(states, want);

    let lifetimes = overlay_ctl::dataplane::Lifetimes {
        tcp_established: 3600,
        tcp_closing: 1,
        udp: 1,
        ..Default::default()
    };
    let (node_ip, snat) = (wire(NODE_IP), 0);
    assert_eq!(
        dp.tables.expire(&lifetimes, node_ip, snat).unwrap(),
        0,
        "nothing is old yet"
    );
    // Two ticks and a bit: past a one-second lifetime whatever the rounding.
    std::thread::sleep(std::time::Duration::from_millis(3300));
    assert_eq!(dp.tables.expire(&lifetimes, node_ip, snat).unwrap(), 4);
    let left: Vec<u16> = dp
        .tables
        .tracked()
        .into_iter()
        .map(|t| t.key.sport)
        .collect();
    assert!(left.iter().all(|&p| p == p1 || p == port(HTTP)), "{left:?}");
    assert_eq!(left.len(), 2, "the open connection's two entries stay");
}

/// SYNs that the backend answers but whose senders never acknowledge (the
/// sources were spoofed) are never confirmed: however many, they stay in the
/// new-flow table, and a real client's connection is established meanwhile.
#[test]
fn answered_but_unacknowledged_syns_are_never_confirmed() {
    let mut dp = node_sized(LO, Sizes { conntrack: TABLE });
    servip(&mut dp, &[B1]);
    for i in 0..2 * TABLE as u16 {
        syn_and_answer(&mut dp, 20_000 + i);
    }
    let confirmed = dp
        .tables
        .tracked()
        .into_iter()
        .filter(|t| t.confirmed)
        .count();
    assert_eq!(confirmed, 0, "no spoofed handshake is confirmed");
    let (ret, counted) = open(&mut dp, 50_000);
    assert_eq!(
        (ret, counted),
        (TC_ACT_REDIRECT, vec![(Reason::DeliverLocal, 1)])
    );
    let confirmed: Vec<u16> = dp
        .tables
        .tracked()
        .into_iter()
        .filter(|t| t.confirmed && t.entry.dir == ct::FORWARD)
        .map(|t| t.key.sport)
        .collect();
    assert_eq!(confirmed, [port(50_000)]);
}
