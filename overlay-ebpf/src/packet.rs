//! Packet access with the bounds check beside every access, alike for TC
//! and XDP, and the 5-tuple of the overlay path (layout: `crate::layout`).

use aya_ebpf::programs::{TcContext, XdpContext};
use overlay_common::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, stats::Reason};

use crate::layout::{
    ETH_PROTO, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHO_REPLY, ICMP_HLEN, ICMP_PARAMETERPROB,
    ICMP_TIME_EXCEEDED, IP_OFF, IPV4_HLEN, Icmp, Ipv4, PULL, Ports, TCP_HDR_CHECK, TCP_HLEN,
    UDP_HDR_CHECK, UDP_HLEN,
};

/// A program context whose packet bytes are directly accessible.
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

/// Both hooks' contexts give their packet's bounds the same way.
macro_rules! packet_context {
    ($($ctx:ty),*) => {$(
        impl Packet for $ctx {
            #[inline(always)]
            fn start(&self) -> usize {
                self.data()
            }
            #[inline(always)]
            fn end(&self) -> usize {
                self.data_end()
            }
        }
    )*};
}

packet_context!(TcContext, XdpContext);

/// What the L4 header is, as far as translation cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// ICMP echo request or reply: the identifier serves as both ports.
    Echo,
    /// ICMP destination unreachable, time exceeded or parameter problem.
    IcmpError,
    /// Any other ICMP message.
    IcmpOther,
    /// Any other protocol: forwarded, never translated.
    Other,
}

/// A packet's 5-tuple on the overlay path.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub l4: L4,
    pub tos: u8,
    /// The DF bit.
    pub df: bool,
    /// IPv4 total length.
    pub len: u16,
    /// Hash of the 5-tuple as it arrived (before any translation): picks the
    /// backend of a new flow and the tunnel's source port.
    pub hash: u32,
}

/// Makes sure the headers are in the linear area so direct access can see them.
#[inline(always)]
pub fn pull(ctx: &TcContext) {
    let have = ctx.data_end().saturating_sub(ctx.data());
    if have < PULL as usize && ctx.len() as usize > have {
        let _ = ctx.pull_data(PULL.min(ctx.len()));
    }
}

/// True for a GSO super-packet: the kernel segments it after encapsulation.
#[inline(always)]
pub fn is_gso(ctx: &TcContext) -> bool {
    gso_size(ctx) != 0
}

/// The payload size of each segment of a GSO super-packet; 0 for any other.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own context.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// A pointer to a `T` at `off`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T, P: Packet>(ctx: &P, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.start();
    if start + off + core::mem::size_of::<T>() > ctx.end() {
        return Err(Reason::DropMalformed);
    }
    Ok((start + off) as *mut T)
}

/// Reads a `T` at `off` (unaligned), if the packet holds it.
#[inline(always)]
pub fn read<T: Copy, P: Packet>(ctx: &P, off: usize) -> Result<T, Reason> {
    let p = ptr_at::<T, P>(ctx, off)?;
    // SAFETY: bounds checked just above.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes `v` at `off` by direct packet access (no helper call); where the
/// linear area is too short, through `bpf_skb_store_bytes`.
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, off: usize, v: &T) -> Result<(), Reason> {
    match ptr_at::<T, _>(ctx, off) {
        // SAFETY: bounds checked by `ptr_at`; TC programs may write packet data.
        Ok(p) => unsafe { core::ptr::write_unaligned(p, *v) },
        Err(_) => ctx.store(off, v, 0).map_err(|_| Reason::DropHelper)?,
    }
    Ok(())
}

/// The outer IPv4 header if the frame carries IPv4; `None` for anything else.
#[inline(always)]
pub fn ipv4<P: Packet>(ctx: &P) -> Result<Option<Ipv4>, Reason> {
    let Some(ip) = ipv4_unchecked(ctx)? else {
        return Ok(None);
    };
    if !ip.is_v4() {
        return Err(Reason::DropMalformed);
    }
    Ok(Some(ip))
}

/// The outer IPv4 header if the frame says IPv4, its version and length not
/// checked yet: for callers that go on only with `Ipv4::is_plain` headers.
#[inline(always)]
pub fn ipv4_unchecked<P: Packet>(ctx: &P) -> Result<Option<Ipv4>, Reason> {
    let proto: u16 = read(ctx, ETH_PROTO)?;
    if proto != ETH_P_IP.to_be() {
        return Ok(None);
    }
    read(ctx, IP_OFF).map(Some)
}

/// Checks the overlay path's header rules and extracts the 5-tuple of the
/// packet whose IPv4 header is `ip` and whose L4 header is at `l4_off`.
#[inline(always)]
pub fn flow(ctx: &TcContext, ip: &Ipv4, l4_off: usize) -> Result<Flow, Reason> {
    if !ip.is_plain() {
        return Err(Reason::DropIpOptions);
    }
    if ip.is_fragment() {
        return Err(Reason::DropFragment);
    }
    let (l4, sport, dport) = l4_ports(ctx, ip.proto, l4_off)?;
    let len = u16::from_be(ip.tot_len);
    let l4_min = match l4 {
        L4::Tcp => TCP_HLEN,
        L4::Udp => UDP_HLEN,
        L4::Other => 0,
        _ => ICMP_HLEN,
    };
    // BIG TCP super-packets carry 0; anything else must fit header and frame.
    let frame = ctx.len() as usize - (l4_off - IPV4_HLEN);
    if (len as usize) < IPV4_HLEN + l4_min && !(len == 0 && is_gso(ctx)) || len as usize > frame {
        return Err(Reason::DropMalformed);
    }
    Ok(Flow {
        hash: overlay_common::flow::flow_hash(ip.saddr, ip.daddr, sport, dport, ip.proto),
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
        l4,
        tos: ip.tos,
        df: ip.df(),
        len,
    })
}

/// The kind of L4 header at `l4_off` and the ports it gives the 5-tuple.
#[inline(always)]
fn l4_ports(ctx: &TcContext, proto: u8, l4_off: usize) -> Result<(L4, u16, u16), Reason> {
    Ok(match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: Ports = read(ctx, l4_off)?;
            // The checksum field must be present too.
            let (kind, check) = if proto == IPPROTO_TCP {
                (L4::Tcp, TCP_HDR_CHECK)
            } else {
                (L4::Udp, UDP_HDR_CHECK)
            };
            let _: u16 = read(ctx, l4_off + check)?;
            (kind, ports.sport, ports.dport)
        }
        IPPROTO_ICMP => {
            let hdr: Icmp = read(ctx, l4_off)?;
            match hdr.kind {
                ICMP_ECHO | ICMP_ECHO_REPLY => (L4::Echo, hdr.id, hdr.id),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => {
                    (L4::IcmpError, 0, 0)
                }
                _ => (L4::IcmpOther, 0, 0),
            }
        }
        _ => (L4::Other, 0, 0),
    })
}
