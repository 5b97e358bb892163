//! Isolation end to end (docs/isolation.md): three nodes and an etcd in
//! namespaces. An instance cannot reach the store or a node's tunnel port,
//! nor leave by the default route for an unallocated overlay address;
//! a host on the nodes' LAN that routes the overlay's ranges via a node
//! reaches no instance and not the name service, only exposed ports.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::store_cluster::*;
use overlay_testnet::servers;
use overlay_testnet::{Netns, wait_until};

const NODE1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NODE2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// A node's counter for `reason` (0 before the first such packet).
fn counted(c: &Cluster, node: usize, reason: &str) -> u64 {
    let stats = c.agents[node].maps_json("stats");
    let row = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason);
    row.map_or(0, |r| r["packets"].as_u64().unwrap())
}

/// A hand-built IPv4/UDP packet (checksum 0) from `src` to `dst:port`: what
/// a tunnel packet carries.
fn inner_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let payload = b"who";
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend(src.octets());
    p.extend(dst.octets());
    let total = (20 + 8 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = p
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend(40000u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend((8 + payload.len() as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

/// Whether a DNS question (type A, for `name`) sent from inside `ns` to
/// `server` gets an answer, of whatever kind, within 2 s.
fn dns_answers(ns: &Netns, server: Ipv4Addr, name: &str) -> bool {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    ns.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&q, (server, 53)).unwrap();
        s.recv_from(&mut [0u8; 512]).is_ok()
    })
    .unwrap()
}

#[test]
fn instances_reach_neither_the_store_nor_a_nodes_tunnel_port_nor_unallocated_addresses() {
    let c = Cluster::new("iso-infra");
    let api = c.deploy_service(&descriptor("api", &[8080], false));
    let (a, b) = (Netns::new("a1").unwrap(), Netns::new("b2").unwrap());
    c.agents[0].deploy(API, 1, &a);
    let b2 = c.agents[1].deploy(API, 2, &b);
    servers::udp(&b, 9999, "b2");
    wait_until(Duration::from_secs(5), "both instances everywhere", || {
        c.everywhere(b2.nsip, true)
    })
    .unwrap();
    let infra = c.agents[0].maps_json("infra").to_string();
    assert!(
        infra.contains("\"192.0.2.254\"") && infra.contains("2379/tcp"),
        "{infra}"
    );
    let nets = c.agents[0].maps_json("overlay-nets").to_string();
    assert!(
        nets.contains("10.30.0.0/16") && nets.contains("172.30.0.0/16"),
        "{nets}"
    );
    let refused = counted(&c, 0, "drop_infra");

    // The store: refused at once (ICMP administratively prohibited).
    let store = SocketAddr::from((ETCD_IP, 2379));
    let err = a
        .enter(|| TcpStream::connect_timeout(&store, Duration::from_secs(3)).map(|_| ()))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::HostUnreachable, "{err}");

    // Another node's EWP: a tunnel packet built by hand, claiming the
    // service's ServIP as its source, never reaches n2.
    let decap = counted(&c, 1, "decap");
    let forged = inner_udp(servip(&api, "closest"), b2.nsip, 9999);
    a.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = s.send_to(&forged, (NODE2, overlay_common::DEFAULT_EWP));
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counted(&c, 1, "decap"), decap, "nothing decapsulated on n2");
    assert!(
        counted(&c, 0, "drop_infra") >= refused + 4,
        "store + 3 tunnel packets"
    );

    // Overlay addresses nobody holds fail at once instead of leaving by the
    // node's default route.
    for nobody in [
        Ipv4Addr::new(172, 30, 99, 99),
        Ipv4Addr::new(10, 30, 200, 1),
    ] {
        let to = SocketAddr::from((nobody, 80));
        let err = a
            .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(|_| ()))
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::HostUnreachable,
            "{nobody}: {err}"
        );
    }
    assert!(counted(&c, 0, "drop_unallocated") >= 2);

    // The world beyond stays reachable (masquerade): the outside host's port
    // is closed, so it answers with a reset rather than silence.
    let outside = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 200), 9));
    let err = a
        .enter(|| TcpStream::connect_timeout(&outside, Duration::from_secs(3)).map(|_| ()))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn a_lan_host_routing_the_overlay_via_a_node_reaches_only_exposed_ports() {
    let c = Cluster::new("iso-lan");
    let api = c.deploy_service(&access("api", &[8080], false, true, &[]));
    let a = Netns::new("a1").unwrap();
    let a1 = c.agents[0].deploy(API, 1, &a); // on n1, the node the LAN routes through
    servers::tcp(&a, 8080, "api1");
    wait_until(Duration::from_secs(5), "the instance everywhere", || {
        c.everywhere(a1.nsip, true)
    })
    .unwrap();
    let ext = c.outside_host();
    for range in ["10.30.0.0/16", "172.30.0.0/16"] {
        ext.ip(["route", "add", range, "via", &NODE1.to_string()])
            .unwrap();
    }
    let before = counted(&c, 0, "drop_outsider");
    for (ip, what) in [
        (a1.nsip, "the instance's NamespaceIP"),
        (servip(&api, "closest"), "the ServIP"),
    ] {
        let got = servers::tcp_who(ext, SocketAddr::from((ip, 8080)));
        assert!(got.is_err(), "{what} reached from the LAN: {got:?}");
    }
    assert!(counted(&c, 0, "drop_outsider") > before);
    let front = SocketAddr::from((NODE1, 8080));
    let (answer, _) = servers::tcp_who(ext, front).expect("the exposed port");
    assert_eq!(answer, "api1");

    // The name service answers the node's instances, not its LAN.
    let gateway = Ipv4Addr::new(169, 254, 1, 1);
    ext.ip(["route", "add", "169.254.1.1/32", "via", &NODE1.to_string()])
        .unwrap();
    assert!(dns_answers(&a, gateway, "api.local"), "the instance asks");
    assert!(!dns_answers(ext, gateway, "api.local"), "a LAN host asks");
}

/// `needs` govern connections to NamespaceIPs (local and remote) and fixed
/// IPs as they do ServIPs: web needs api only.
#[test]
fn needs_hold_for_namespace_ips_and_fixed_ips() {
    let c = Cluster::new("iso-needs");
    c.deploy_service(&descriptor("api", &[8080], false));
    c.deploy_service(&descriptor("other", &[7070], false));
    c.deploy_service(&descriptor("db", &[5432], true));
    c.deploy_service(&access("web", &[], false, false, &[API]));
    let ns: Vec<Netns> = ["w1", "a2", "o1", "o2", "d2"]
        .iter()
        .map(|l| Netns::new(l).unwrap())
        .collect();
    let (w, a, o_local, o_remote, d) = (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4]);
    c.agents[0].deploy(WEB, 1, w);
    let a2 = c.agents[1].deploy(API, 1, a);
    let o1 = c.agents[0].deploy("demo.prod.other.v1", 1, o_local);
    let o2 = c.agents[1].deploy("demo.prod.other.v1", 2, o_remote);
    let d2 = c.agents[1].deploy(DB, 1, d);
    servers::tcp(a, 8080, "api");
    servers::tcp(o_local, 7070, "other-local");
    servers::tcp(o_remote, 7070, "other-remote");
    servers::tcp(d, 5432, "db");
    wait_until(Duration::from_secs(5), "instances everywhere", || {
        [a2.nsip, o1.nsip, o2.nsip, d2.nsip]
            .iter()
            .all(|ip| c.everywhere(*ip, true))
    })
    .unwrap();
    let ls: serde_json::Value =
        serde_json::from_str(&c.ctl_ok(&["service", "ls", "--json"])).unwrap();
    let db = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == DB)
        .unwrap();
    let fixed: Ipv4Addr = db["instances"][0]["fixed_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let prohibited = |ip: Ipv4Addr, port: u16| {
        let err = servers::tcp_who(w, SocketAddr::from((ip, port))).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::HostUnreachable,
            "{ip}: {err}"
        );
    };
    prohibited(o1.nsip, 7070);
    prohibited(o2.nsip, 7070);
    prohibited(fixed, 5432);
    let (answer, _) = servers::tcp_who(w, SocketAddr::from((a2.nsip, 8080))).unwrap();
    assert_eq!(answer, "api", "a needed service's NamespaceIP");
    // Without `needs`, other may still reach anyone.
    let (answer, _) = servers::tcp_who(o_local, SocketAddr::from((o2.nsip, 7070))).unwrap();
    assert_eq!(answer, "other-remote");
}
