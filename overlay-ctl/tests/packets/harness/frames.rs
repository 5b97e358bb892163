//! Packet builders and the parsers that verify every checksum they meet.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, TcpHeader,
    UdpHeader,
    icmpv4::DestUnreachableHeader,
    {Icmpv4Header, Icmpv4Type},
};
use overlay_common::flow::{encap_sport, flow_hash};

use super::{EWP, ICMP, Inst, NODE_IP, PEER_MAC, TCP, UDP, UPLINK_MAC, port, wire};

// --------------------------------------------------------------- building

/// An IPv4 header as a Linux sender would write it (DF set, TTL 64).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, 64, IpNumber(proto), src.octets(), dst.octets()).unwrap();
    h.identification = 0x1234;
    h
}

fn with(h: Ipv4Header) -> etherparse::PacketBuilderStep<IpHeaders> {
    PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
}

/// A TCP SYN (with a few payload bytes) under header `h`.
pub fn tcp_with(h: Ipv4Header, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    with(h)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, payload)
        .unwrap();
    out
}

pub fn udp_with(h: Ipv4Header, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    with(h).udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

pub fn icmp_with(h: Ipv4Header, t: Icmpv4Type, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    with(h).icmpv4(t).write(&mut out, payload).unwrap();
    out
}

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_with(ipv4(src, dst, TCP), sport, dport, b"GET /")
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    udp_with(ipv4(src, dst, UDP), sport, dport, b"query")
}

/// UDP without a checksum (legal over IPv4).
pub fn udp_nocsum(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = udp(src, sport, dst, dport);
    p[26..28].copy_from_slice(&[0, 0]);
    p
}

pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let t = Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id, seq });
    icmp_with(ipv4(src, dst, ICMP), t, b"ping")
}

pub fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let t = Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id, seq });
    icmp_with(ipv4(src, dst, ICMP), t, b"ping")
}

/// ICMP destination unreachable (`code`) quoting the first 28 bytes of `about`.
pub fn unreach(src: Ipv4Addr, dst: Ipv4Addr, code: DestUnreachableHeader, about: &[u8]) -> Vec<u8> {
    let t = Icmpv4Type::DestinationUnreachable(code);
    let mut h = ipv4(src, dst, ICMP);
    h.dont_fragment = false;
    icmp_with(h, t, &about[..28])
}

/// An Ethernet frame from an instance to its host-side veth.
pub fn from(x: &Inst, ip: &[u8]) -> Vec<u8> {
    eth(x.mac, x.host_mac, EtherType::IPV4, ip)
}

pub fn eth(src: [u8; 6], dst: [u8; 6], ty: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut f = Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: ty,
    }
    .to_bytes()
    .to_vec();
    f.extend_from_slice(payload);
    f
}

/// A tunnel packet from `from` to this node's EWP carrying `inner`.
pub fn tunnel(from: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    tunnel_to(from, EWP, inner)
}

pub fn tunnel_to(from: Ipv4Addr, dport: u16, inner: &[u8]) -> Vec<u8> {
    let mut frame = eth(PEER_MAC, UPLINK_MAC, EtherType::IPV4, &[]);
    frame.extend(udp_with(ipv4(from, NODE_IP, UDP), 49999, dport, inner));
    // The tunnel sends no UDP checksum.
    frame[40..42].copy_from_slice(&[0, 0]);
    frame
}

/// Parses, edits and rewrites (with a fresh checksum) the IPv4 header of an
/// IP packet in place; the header length must not change.
pub fn edit_ip(packet: &mut [u8], f: impl FnOnce(&mut Ipv4Header)) {
    let (mut h, _) = Ipv4Header::from_slice(packet).unwrap();
    let len = h.header_len();
    f(&mut h);
    h.header_checksum = h.calc_header_checksum();
    let bytes = h.to_bytes();
    assert_eq!(bytes.len(), len, "edit_ip cannot change the header length");
    packet[..len].copy_from_slice(&bytes);
}

/// The outer UDP source port the spec asks for: the hash of the flow as the
/// client sent it.
pub fn expected_sport(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> u16 {
    encap_sport(flow_hash(
        wire(src),
        wire(dst),
        port(sport),
        port(dport),
        proto,
    ))
}

// ---------------------------------------------------------------- parsing

/// A parsed IPv4 packet whose checksums (IP header, and TCP/UDP/ICMP) were
/// verified by recomputation and whose lengths are consistent.
#[derive(Debug)]
pub struct Ip {
    pub hdr: Ipv4Header,
    pub l4: L4,
    /// The L4 payload (for ICMP errors: the quote).
    pub payload: Vec<u8>,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub enum L4 {
    Tcp(TcpHeader),
    Udp(UdpHeader),
    Icmp(Icmpv4Header),
    Other,
}

impl Ip {
    pub fn src(&self) -> Ipv4Addr {
        self.hdr.source.into()
    }
    pub fn dst(&self) -> Ipv4Addr {
        self.hdr.destination.into()
    }
    pub fn tcp(&self) -> &TcpHeader {
        match &self.l4 {
            L4::Tcp(t) => t,
            other => panic!("not TCP: {other:?}"),
        }
    }
    pub fn udp(&self) -> &UdpHeader {
        match &self.l4 {
            L4::Udp(u) => u,
            other => panic!("not UDP: {other:?}"),
        }
    }
    pub fn icmp(&self) -> &Icmpv4Header {
        match &self.l4 {
            L4::Icmp(i) => i,
            other => panic!("not ICMP: {other:?}"),
        }
    }
}

pub struct Frame {
    pub eth: Ethernet2Header,
    pub ip: Ip,
}

/// Parses an Ethernet + IPv4 frame, verifying as [`parse_ip`] does.
pub fn parse(frame: &[u8]) -> Frame {
    let (eth, rest) = Ethernet2Header::from_slice(frame).expect("Ethernet header");
    assert_eq!(eth.ether_type, EtherType::IPV4, "not IPv4");
    Frame {
        eth,
        ip: parse_ip(rest),
    }
}

/// Parses an IPv4 packet that fills `bytes` exactly, verifying the header
/// checksum and the L4 checksum (UDP: unless 0) and the length fields.
pub fn parse_ip(bytes: &[u8]) -> Ip {
    let (hdr, _) = Ipv4Header::from_slice(bytes).expect("IPv4 header");
    assert_eq!(
        hdr.header_checksum,
        hdr.calc_header_checksum(),
        "IPv4 header checksum of {hdr:?}"
    );
    assert_eq!(hdr.total_len as usize, bytes.len(), "IPv4 total length");
    let body = &bytes[hdr.header_len()..];
    let (l4, payload) = match hdr.protocol.0 {
        TCP => {
            let (t, p) = TcpHeader::from_slice(body).expect("TCP header");
            let want = t.calc_checksum_ipv4(&hdr, p).unwrap();
            assert_eq!(t.checksum, want, "TCP checksum");
            (L4::Tcp(t), p)
        }
        UDP => {
            let (u, p) = UdpHeader::from_slice(body).expect("UDP header");
            assert_eq!(u.length as usize, body.len(), "UDP length");
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(&hdr, p).unwrap(),
                    "UDP checksum"
                );
            }
            (L4::Udp(u), p)
        }
        ICMP => {
            let (i, p) = Icmpv4Header::from_slice(body).expect("ICMP header");
            let want = Icmpv4Header::with_checksum(i.icmp_type.clone(), p).checksum;
            assert_eq!(i.checksum, want, "ICMP checksum");
            (L4::Icmp(i), p)
        }
        _ => (L4::Other, body),
    };
    Ip {
        hdr,
        l4,
        payload: payload.to_vec(),
        bytes: bytes.to_vec(),
    }
}
