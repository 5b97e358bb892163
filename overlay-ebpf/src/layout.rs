//! The packet layout, named once: the headers as they sit on the wire, and
//! the offsets the programs read and rewrite.
//!
//! The overlay path accepts IPv4 without options and unfragmented (anything
//! else is counted and dropped, see `docs/wire-format.md`), so every header
//! sits at a fixed offset: Ethernet at 0, IPv4 at [`IP_OFF`], the L4 header
//! at [`L4_OFF`], and in a tunnel packet the inner IPv4 header at
//! [`INNER_IP`]. Multi-byte fields are kept in network order.

use core::mem::{offset_of, size_of};

use overlay_common::{ENCAP_OVERHEAD, ETH_HLEN};

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

/// The destination and source MAC addresses, in frame order.
pub type Macs = [[u8; 6]; 2];

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// Version 4, header length 5 words: IPv4 without options.
pub const VIHL_PLAIN: u8 = 0x45;
/// The "don't fragment" bit of `Ipv4::frag` (host order).
pub const IP_DF: u16 = 0x4000;
/// "More fragments" and the fragment offset: either set means a fragment.
const IP_FRAGMENT: u16 = 0x3fff;
/// The fragment offset: set on every fragment but the first.
const IP_OFFSET: u16 = 0x1fff;
/// TTL of the packets the programs build.
pub const DEFAULT_TTL: u8 = 64;

impl Ipv4 {
    /// Version 4 with a header length the format allows (options or not).
    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        self.vihl >> 4 == 4 && self.vihl & 0xf >= 5
    }

    /// IPv4 without options: the only header the overlay path handles.
    #[inline(always)]
    pub fn is_plain(&self) -> bool {
        self.vihl == VIHL_PLAIN
    }

    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be(self.frag) & IP_FRAGMENT != 0
    }

    /// A fragment other than the first: it carries no L4 header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be(self.frag) & IP_OFFSET != 0
    }

    #[inline(always)]
    pub fn df(&self) -> bool {
        u16::from_be(self.frag) & IP_DF != 0
    }
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// The two ports that open both TCP and UDP headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}

/// ICMP header (echo and destination unreachable share it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Echo: the identifier (it serves as both ports). Errors: unused.
    pub id: u16,
    /// Fragmentation needed: the next-hop MTU. Echo: the sequence number.
    pub mtu: u16,
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;

/// The first 8 bytes of an L4 header: all that an ICMP error is sure to quote.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L4Head([u16; 4]);

impl L4Head {
    /// TCP/UDP source and destination ports.
    #[inline(always)]
    pub fn ports(&self) -> (u16, u16) {
        (self.0[0], self.0[1])
    }

    /// An ICMP echo's identifier.
    #[inline(always)]
    pub fn echo_id(&self) -> u16 {
        self.0[2]
    }
}

/// Header lengths (IPv4 and TCP without options).
pub const IPV4_HLEN: usize = size_of::<Ipv4>();
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = size_of::<Udp>();
pub const ICMP_HLEN: usize = size_of::<Icmp>();
/// The IPv4 header in 16-bit words, the unit checksums are summed in.
pub const IPV4_WORDS: usize = IPV4_HLEN / 2;

/// Where the checksum sits inside a TCP and a UDP header.
pub const TCP_HDR_CHECK: usize = 16;
/// Where the flags sit inside a TCP header, and the two the programs read.
/// Offset of the data offset (header length in words, high nibble) in the TCP header.
pub const TCP_HDR_DOFF: usize = 12;
pub const TCP_HDR_FLAGS: usize = 13;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const UDP_HDR_CHECK: usize = offset_of!(Udp, check);

/// Offsets from the start of the frame, outer headers first.
/// The frame starts with the Ethernet header.
pub const ETH_OFF: usize = 0;
pub const ETH_ADDRS: usize = ETH_OFF + offset_of!(Eth, dst);
pub const ETH_PROTO: usize = ETH_OFF + offset_of!(Eth, proto);
pub const IP_OFF: usize = ETH_OFF + size_of::<Eth>();
pub const IP_CSUM: usize = IP_OFF + offset_of!(Ipv4, check);
pub const IP_SRC: usize = IP_OFF + offset_of!(Ipv4, saddr);
pub const IP_DST: usize = IP_OFF + offset_of!(Ipv4, daddr);
pub const L4_OFF: usize = IP_OFF + IPV4_HLEN;
pub const L4_SPORT: usize = L4_OFF + offset_of!(Ports, sport);
pub const L4_DPORT: usize = L4_OFF + offset_of!(Ports, dport);
pub const TCP_CSUM: usize = L4_OFF + TCP_HDR_CHECK;
pub const UDP_CSUM: usize = L4_OFF + UDP_HDR_CHECK;
pub const ICMP_CSUM: usize = L4_OFF + offset_of!(Icmp, check);

/// A tunnel packet's inner IPv4 header and its L4 header, before decapsulation.
pub const INNER_IP: usize = L4_OFF + UDP_HLEN;
pub const INNER_L4: usize = INNER_IP + IPV4_HLEN;

/// The IPv4 header an ICMP error quotes, its fields and its L4 header.
pub const QUOTE: usize = L4_OFF + ICMP_HLEN;
pub const QUOTE_CSUM: usize = QUOTE + offset_of!(Ipv4, check);
pub const QUOTE_SRC: usize = QUOTE + offset_of!(Ipv4, saddr);
pub const QUOTE_DST: usize = QUOTE + offset_of!(Ipv4, daddr);
pub const QUOTE_L4: usize = QUOTE + IPV4_HLEN;

/// Bytes the programs may read directly: Ethernet, outer IPv4 + UDP, inner
/// IPv4 and an L4 header (or an ICMP error's embedded IPv4 + 8 bytes).
pub const PULL: u32 = (INNER_L4 + ICMP_HLEN + IPV4_HLEN + size_of::<L4Head>()) as u32;

const _: () = {
    assert!(IP_OFF == ETH_HLEN && IPV4_HLEN == 20 && UDP_HLEN == 8 && ICMP_HLEN == 8);
    assert!(size_of::<L4Head>() == 8 && TCP_HDR_CHECK + 2 <= TCP_HLEN);
    assert!(IPV4_HLEN + UDP_HLEN == ENCAP_OVERHEAD as usize);
    assert!(PULL == 14 + 28 + 20 + 28 + 8);
};
