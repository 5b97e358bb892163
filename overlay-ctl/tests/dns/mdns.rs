use std::io::IoSliceMut;
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use super::*;

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect()
}

#[test]
fn mdns_one_shot_queries_get_unicast_replies() {
    let lab = Lab::new();
    for (name, want) in expected().iter().step_by(3) {
        let fqdn = format!("{name}.");
        let start = Instant::now();
        let (reply, from) = mdns_one_shot(&lab, &fqdn, RecordType::A)
            .unwrap_or_else(|| panic!("no mDNS reply for {name}"));
        assert!(start.elapsed() < QUICK);
        // From the gateway's address, to our port, ID and question echoed.
        assert_eq!(from, SocketAddr::from((GW, dns::MDNS_PORT)));
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(reply.queries[0].name().to_ascii(), fqdn);
        assert_eq!(a_records(&reply), [*want], "{name}");
        assert!(
            reply
                .answers
                .iter()
                .all(|r| !r.mdns_cache_flush && r.ttl <= 10)
        );
    }
    // A known name without that type: NSEC, not silence.
    let closest = format!("{CART}.any.closest.local.");
    let (reply, _) = mdns_one_shot(&lab, &closest, RecordType::AAAA).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::NSEC);
    // Names it does not own: no reply at all.
    for name in [
        "shop.prod.nope.team1.any.closest.local.",
        "shop.prod.db.team1.any.closest.local.",
        "printer.local.",
        "shop.prod.cart.team1.any.fixed.local.",
    ] {
        assert!(mdns_one_shot(&lab, name, RecordType::A).is_none(), "{name}");
    }
}

/// A socket on port 5353 in the group on `eth0`, receiving with packet
/// info so that multicast and unicast replies can be told apart.
fn mdns_port_socket() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dns::MDNS_PORT).into())
        .unwrap();
    let index = nix::net::if_::if_nametoindex("eth0").unwrap();
    s.join_multicast_v4_n(&dns::MDNS_ADDR, &InterfaceIndexOrAddress::Index(index))
        .unwrap();
    s.set_multicast_loop_v4(false).unwrap();
    s.set_multicast_ttl_v4(255).unwrap();
    setsockopt(&s, sockopt::Ipv4PacketInfo, &true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// The next datagram: message, source, and the IP header's destination.
fn recv_with_dst(s: &Socket) -> Option<(Message, SocketAddrV4, Ipv4Addr)> {
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg =
        recvmsg::<SockaddrIn>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let dst = msg.cmsgs().unwrap().find_map(|c| match c {
        ControlMessageOwned::Ipv4PacketInfo(i) => {
            Some(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)))
        }
        _ => None,
    })?;
    let (len, from) = (msg.bytes, SocketAddrV4::from(msg.address?));
    Some((Message::from_vec(&buf[..len]).unwrap(), from, dst))
}

#[test]
fn mdns_continuous_queries_get_multicast_or_qu_unicast() {
    let lab = Lab::new();
    lab.client
        .enter(|| {
            let s = mdns_port_socket();
            let group = SocketAddrV4::new(dns::MDNS_ADDR, dns::MDNS_PORT);
            for (name, want) in expected().iter().take(7) {
                let fqdn = format!("{name}.");
                for (qu, want_dst) in [(false, dns::MDNS_ADDR), (true, CLIENT)] {
                    s.send_to(&mdns_query(&fqdn, RecordType::A, 7, qu), &group.into())
                        .unwrap();
                    let (reply, from, dst) = recv_with_dst(&s)
                        .unwrap_or_else(|| panic!("no reply for {name} (QU {qu})"));
                    assert_eq!(from, SocketAddrV4::new(GW, dns::MDNS_PORT));
                    assert_eq!(dst, want_dst, "{name} QU {qu}");
                    // Responses to port 5353: ID 0, no question, cache flush.
                    assert_eq!(reply.metadata.id, 0);
                    assert!(reply.queries.is_empty());
                    assert_eq!(a_records(&reply), [*want], "{name}");
                    assert!(reply.answers[0].mdns_cache_flush);
                    assert_eq!(reply.answers[0].ttl, dns::DEFAULT_TTL);
                }
            }
            // Unknown names stay silent on the group too.
            s.send_to(
                &mdns_query("x.y.z.w.any.closest.local.", RecordType::A, 0, false),
                &group.into(),
            )
            .unwrap();
            assert!(recv_with_dst(&s).is_none());
        })
        .unwrap();
}
