//! The TUN forwarder end to end: two namespaces whose TUN devices are joined
//! only through the forwarders' UDP sockets on a veth. Needs root and fails
//! (never skips) without it.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use overlay_testnet::tun::{self, Forwarder};
use overlay_testnet::{Netns, Result, require_root, veth, wait_until};

const PORT: u16 = 50103;
const A_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A second address in b that a's forwarder does not accept.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const A_TUN: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const B_TUN: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);

/// Gives `ns` the tun address `addr`/24, brings `tun0` up and routes
/// `peer_subnet` into it.
fn configure_tun(ns: &Netns, addr: Ipv4Addr, peer_subnet: &str) -> Result<()> {
    ns.ip(["addr", "add", &format!("{addr}/24"), "dev", "tun0"])?;
    ns.ip(["link", "set", "tun0", "up"])?;
    ns.ip(["route", "add", peer_subnet, "dev", "tun0"])?;
    Ok(())
}

/// Packets the kernel received on `tun0` in `ns`, i.e. the ones a forwarder
/// wrote into it.
fn tun_rx_packets(ns: &Netns) -> Result<u64> {
    let dev = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
    let dev = dev.expect("read /proc/thread-self/net/dev");
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("tun0:"))
        .unwrap_or_else(|| panic!("no tun0 in {}:\n{dev}", ns.name()));
    // Receive bytes, then receive packets.
    Ok(line.split_whitespace().nth(1).unwrap().parse().unwrap())
}

/// The one's-complement sum that IPv4 and ICMP headers carry.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A well-formed ICMP echo request, so that if it reached a TUN device the
/// kernel would take it and count it.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20] = 8; // echo request
    p[24..28].copy_from_slice(&[0x12, 0x34, 0, 1]); // id, sequence
    let icmp_sum = checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    p
}

/// Sends `packet` in a datagram from `from` (any port) in `ns` to a's
/// forwarder.
fn send_from(ns: &Netns, from: Ipv4Addr, packet: &[u8]) -> Result<()> {
    ns.enter(|| {
        let sock = UdpSocket::bind((from, 0)).expect("bind the sender");
        sock.send_to(packet, (A_LINK, PORT)).expect("send");
    })
}

#[test]
fn ping_crosses_two_forwarders_and_strangers_are_dropped() -> Result<()> {
    require_root()?;
    tun::check_available()?;
    let a = Netns::new("tun-a")?;
    let b = Netns::new("tun-b")?;
    for ns in [&a, &b] {
        // Keeps the devices free of IPv6 chatter, which has no route and
        // would show up as dropped.
        ns.disable_ipv6()?;
    }
    veth(&a, "eth0", &b, "eth0")?;
    a.ip(["addr", "add", &format!("{A_LINK}/24"), "dev", "eth0"])?;
    b.ip(["addr", "add", &format!("{B_LINK}/24"), "dev", "eth0"])?;
    b.ip(["addr", "add", &format!("{STRANGER}/24"), "dev", "eth0"])?;

    // a routes by destination as the benchmark does; b is a point-to-point
    // tunnel as a gateway is.
    let to_b = SocketAddrV4::new(B_LINK, PORT);
    let fa = Forwarder::start(
        &a,
        "tun0",
        SocketAddrV4::new(A_LINK, PORT),
        move |p| (p.len() >= 20 && p[16..19] == [10, 99, 2]).then_some(to_b),
        |from| *from.ip() == B_LINK,
    )?;
    let fb = Forwarder::point_to_point(
        &b,
        "tun0",
        SocketAddrV4::new(B_LINK, PORT),
        SocketAddrV4::new(A_LINK, PORT),
    )?;
    configure_tun(&a, A_TUN, "10.99.2.0/24")?;
    configure_tun(&b, B_TUN, "10.99.1.0/24")?;

    let out = a.run(
        "ping",
        [
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            &A_TUN.to_string(),
            &B_TUN.to_string(),
        ],
    )?;
    assert!(out.contains("3 received"), "{out}");
    // Three requests a -> b and three replies b -> a, each through both.
    let (ca, cb) = (fa.counts(), fb.counts());
    for (name, c) in [("a", ca), ("b", cb)] {
        assert!(c[0] >= 3 && c[1] >= 3, "{name}: {c:?}");
        assert_eq!(c[2], 0, "{name}: {c:?}");
    }

    // A packet from an address a does not accept is counted and discarded.
    let rx = tun_rx_packets(&a)?;
    send_from(&b, STRANGER, &echo_request(B_TUN, A_TUN))?;
    wait_until(Duration::from_secs(5), "a to count the drop", || {
        fa.counts()[2] == 1
    })?;
    assert_eq!(fa.counts()[1], ca[1], "written to TUN: {:?}", fa.counts());
    assert_eq!(tun_rx_packets(&a)?, rx, "the kernel received it");

    // The same packet from the accepted IP, though not from the forwarder's
    // port, goes in: the check above is not vacuous.
    send_from(&b, B_LINK, &echo_request(B_TUN, A_TUN))?;
    wait_until(Duration::from_secs(5), "a to write the packet", || {
        fa.counts()[1] == ca[1] + 1
    })?;
    wait_until(Duration::from_secs(5), "tun0 to receive it", || {
        tun_rx_packets(&a).is_ok_and(|n| n == rx + 1)
    })?;
    assert_eq!(fa.counts()[2], 1, "{:?}", fa.counts());
    Ok(())
}

#[test]
fn bad_device_name_is_refused() -> Result<()> {
    require_root()?;
    let ns = Netns::new("tun-bad")?;
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    let err = Forwarder::point_to_point(&ns, "name-far-too-long", local, local).unwrap_err();
    assert!(err.to_string().contains("name-far-too-long"), "{err}");
    Ok(())
}
