//! Two nodes in namespaces with the dataplane loaded; maps written through
//! the library (no agent). A client on node 1 talks to a ServIP whose
//! backends live on node 1 and node 2.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Cluster;
use overlay_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, stats::Reason};
use overlay_testnet::servers;

const VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8081;

/// Client on n1; backends "local" (n1) and "remote" (n2).
fn cluster() -> (Cluster, usize, usize, usize) {
    let mut c = Cluster::new(2);
    let client = c.add_instance(1, 2, 1);
    let local = c.add_instance(1, 3, 2);
    let remote = c.add_instance(2, 2, 2);
    for (i, name) in [(local, "local"), (remote, "remote")] {
        servers::tcp(&c.instance(i).ns, TCP_PORT, name);
        servers::udp(&c.instance(i).ns, UDP_PORT, name);
    }
    let ports = [
        (TCP_PORT, IPPROTO_TCP),
        (UDP_PORT, IPPROTO_UDP),
        (0, IPPROTO_ICMP),
    ];
    c.put_service(VIP, 2, &ports, &[local, remote]);
    c.put_service(EMPTY_VIP, 3, &ports, &[]);
    (c, client, local, remote)
}

#[test]
fn servip_traffic_both_ways_local_and_remote() {
    let (mut c, client, _, _) = cluster();
    let ns = &c.instance(client).ns;

    ns.run(
        "ping",
        ["-c", "3", "-i", "0.2", "-W", "2", &VIP.to_string()],
    )
    .unwrap_or_else(|e| panic!("ping: {e}\n{}", c.stats_dump()));

    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let (who, peer) = servers::tcp_who(ns, SocketAddr::from((VIP, TCP_PORT)))
            .unwrap_or_else(|e| panic!("tcp: {e}\n{}", c.stats_dump()));
        assert_eq!(
            peer,
            SocketAddr::from((VIP, TCP_PORT)),
            "client must see the ServIP"
        );
        seen.insert(who);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["local".into(), "remote".into()]),
        "tcp backends"
    );

    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let (who, from) = servers::udp_who(ns, SocketAddr::from((VIP, UDP_PORT))).expect("udp");
        assert_eq!(
            from,
            SocketAddr::from((VIP, UDP_PORT)),
            "reply must come from the ServIP"
        );
        seen.insert(who);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["local".into(), "remote".into()]),
        "udp backends"
    );

    assert!(c.dp(1).tables.count(Reason::Encap).unwrap() > 0);
    assert!(c.dp(1).tables.count(Reason::Decap).unwrap() > 0);
    assert!(c.dp(2).tables.count(Reason::Decap).unwrap() > 0);
    assert_eq!(c.dp(1).tables.count(Reason::DropSpoofed).unwrap(), 0);
}

/// Connects until a connection lands on `want`; returns it, still open.
fn connect_to(ns: &overlay_testnet::Netns, want: &str) -> TcpStream {
    for _ in 0..64 {
        let s = ns
            .enter(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((VIP, TCP_PORT)),
                    Duration::from_secs(3),
                )
            })
            .unwrap()
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if ask(&s) == want {
            return s;
        }
    }
    panic!("no connection reached {want}");
}

fn ask(mut s: &TcpStream) -> String {
    s.write_all(b"who\n").expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reply");
    line.trim().to_string()
}

#[test]
fn established_flow_survives_backend_removal_and_bulk_crosses_the_tunnel() {
    let (mut c, client, local, _) = cluster();
    let ns = c.instance(client).ns.name().to_string();
    let ns_ref = &c.instance(client).ns;
    let mut conn = connect_to(ns_ref, "remote");
    // 8 MB back through the tunnel: exercises GSO and checksum offload.
    servers::bulk(&mut conn, 8 << 20).expect("bulk transfer through the tunnel");

    let ports = [
        (TCP_PORT, IPPROTO_TCP),
        (UDP_PORT, IPPROTO_UDP),
        (0, IPPROTO_ICMP),
    ];
    c.put_service(VIP, 2, &ports, &[local]);
    assert_eq!(
        ask(&conn),
        "remote",
        "established flow must keep its backend ({ns})"
    );
    let ns_ref = &c.instance(client).ns;
    for _ in 0..10 {
        let (who, _) = servers::tcp_who(ns_ref, SocketAddr::from((VIP, TCP_PORT))).expect("tcp");
        assert_eq!(who, "local", "new flows must avoid the removed backend");
    }
}

#[test]
fn closed_port_and_empty_service_fail_fast() {
    let (mut c, client, _, _) = cluster();
    let ns = &c.instance(client).ns;
    let start = Instant::now();
    let err = servers::tcp_who(ns, SocketAddr::from((VIP, 9999)))
        .expect_err("port 9999 is not forwarded");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "{err}\n{}",
        c.stats_dump()
    );
    let err =
        servers::tcp_who(ns, SocketAddr::from((EMPTY_VIP, TCP_PORT))).expect_err("no backends");
    assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "must fail fast, took {:?}",
        start.elapsed()
    );
    assert!(c.dp(1).tables.count(Reason::DropPort).unwrap() >= 1);
    assert!(c.dp(1).tables.count(Reason::DropNoBackend).unwrap() >= 1);
}
