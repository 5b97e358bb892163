//! Conntrack end to end, with a small confirmed-flow table
//! (`conntrack_entries = 4096`): an idle established connection keeps its
//! backend through floods of new flows, from spoofed outside sources to an
//! exposed port and from an instance toward a ServIP; and the agent's GC
//! ends flows after their (shortened) lifetimes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::store_cluster::*;
use overlay_testnet::{Netns, servers, wait_until};

const FLOOD: u32 = 100_000;
const PORT: u16 = 8080;
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

/// A raw IPv4 socket in the calling thread's namespace: we write the headers.
fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends `packet` (an IPv4 packet) to its destination.
fn send(fd: &OwnedFd, packet: &[u8], to: Ipv4Addr) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    for _ in 0..1000 {
        // SAFETY: valid buffer and address for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent >= 0 {
            return;
        }
        // A full queue: let the receivers catch up, then again.
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("sendto: {}", std::io::Error::last_os_error());
}

fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, b"x")
        .unwrap();
    out
}

fn ask(s: &mut TcpStream) -> String {
    s.write_all(b"who\n").unwrap();
    let mut line = String::new();
    BufReader::new(&*s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// Conntrack entries of node `i` (JSON rows of `maps conntrack`).
fn entries(c: &Cluster, i: usize) -> Vec<serde_json::Value> {
    c.agents[i]
        .maps_json("conntrack")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn established_flows_survive_floods_and_old_flows_expire() {
    let c = Cluster::with_config("ctflood", |_| {
        "conntrack_entries = 4096\nconntrack_gc_s = 1\n[conntrack_lifetimes]\nudp = 2\ntcp_closing = 2\ntcp_opening = 2\n".into()
    });
    let api = c.deploy_service(&access("api", &[PORT], false, true, &[]));
    c.deploy_service(&descriptor("web", &[], false));
    let (a2, a3, w1) = (
        Netns::new("a2").unwrap(),
        Netns::new("a3").unwrap(),
        Netns::new("w1").unwrap(),
    );
    c.agents[1].deploy(API, 2, &a2);
    let i3 = c.agents[2].deploy(API, 3, &a3);
    let web = c.agents[0].deploy(WEB, 1, &w1);
    servers::tcp(&a2, PORT, "api2");
    servers::tcp(&a3, PORT, "api3");
    wait_until(Duration::from_secs(5), "api3 everywhere", || {
        c.everywhere(i3.nsip, true)
    })
    .unwrap();
    let vip = servip(&api, "roundrobin");
    let new_flows = |c: &Cluster| {
        c.agents[0]
            .maps_json("stats")
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == "new_flow")
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or(0)
    };

    // The idle connection, established before the floods.
    let mut held = w1
        .enter(|| TcpStream::connect(SocketAddr::from((vip, PORT))))
        .unwrap()
        .expect("a connection through the ServIP");
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let backend = ask(&mut held);

    let before = new_flows(&c);
    // Spoofed outside sources toward the exposed port of n1, then new flows
    // from the instance toward the ServIP (TCP and UDP, each its own port).
    let ext = c.outside_host();
    ext.enter(|| {
        let fd = raw_socket();
        for i in 0..FLOOD {
            let src = Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8);
            send(
                &fd,
                &syn(src, 1024 + (i % 60_000) as u16, NODE1, PORT),
                NODE1,
            );
        }
    })
    .unwrap();
    w1.enter(|| {
        let fd = raw_socket();
        for i in 0..FLOOD {
            let sport = 2000 + (i % 60_000) as u16;
            let packet = if i < FLOOD / 2 {
                syn(web.nsip, sport, vip, PORT)
            } else {
                udp(web.nsip, sport, vip, PORT)
            };
            send(&fd, &packet, vip);
        }
    })
    .unwrap();

    // Each was a new flow of n1 (a few may still be in flight).
    let opened = new_flows(&c) - before;
    assert!(opened > u64::from(FLOOD) * 19 / 10, "{opened} new flows");
    // The idle connection still reaches its backend, through the same entries.
    assert_eq!(
        ask(&mut held),
        backend,
        "the established flow kept its backend"
    );
    let established = |rows: &[serde_json::Value]| {
        rows.iter()
            .filter(|r| r["state"] == "established" && r["dir"] == "forward")
            .count()
    };
    assert!(established(&entries(&c, 0)) >= 1);

    // The flood's flows were never confirmed: past their 2 s lifetime the GC
    // ends them, and the established connection stays.
    wait_until(Duration::from_secs(15), "the flood's flows ended", || {
        let rows = entries(&c, 0);
        rows.iter().all(|r| r["state"] != "new")
    })
    .unwrap();
    assert_eq!(ask(&mut held), backend);
    assert!(established(&entries(&c, 0)) >= 1);

    // A closed connection's entries go after the closing lifetime.
    drop(held);
    wait_until(
        Duration::from_secs(15),
        "the closed connection's entries ended",
        || entries(&c, 0).is_empty(),
    )
    .unwrap();
}
