//! Header access with a bounds check beside every access.
//!
//! The overlay path accepts IPv4 without options and unfragmented (both
//! counted and dropped otherwise, see `docs/wire-format.md`), so every header
//! sits at a fixed offset: Ethernet at 0, IPv4 at 14, L4 at 34.

use aya_ebpf::programs::TcContext;
use overlay_common::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, stats::Reason};

pub const IP_OFF: usize = ETH_HLEN;
pub const L4_OFF: usize = IP_OFF + 20;
/// Offsets inside the IPv4 header.
pub const IP_CSUM: usize = IP_OFF + 10;
pub const IP_SRC: usize = IP_OFF + 12;
pub const IP_DST: usize = IP_OFF + 16;
/// Bytes the programs may read directly: Ethernet, outer IPv4 + UDP, inner
/// IPv4 and an L4 header (or an ICMP error's embedded IPv4 + 8 bytes).
const PULL: u32 = 14 + 28 + 20 + 28 + 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

/// IPv4 header, as on the wire.
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
    /// The DF bit (network order mask applied).
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

/// A pointer to a `T` at `off`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(Reason::DropMalformed);
    }
    Ok((start + off) as *mut T)
}

/// Writes `v` at `off` by direct packet access (no helper call); where the
/// linear area is too short, through `bpf_skb_store_bytes`.
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, off: usize, v: &T) -> Result<(), Reason> {
    match ptr_at::<T>(ctx, off) {
        // SAFETY: bounds checked by `ptr_at`; TC programs may write packet data.
        Ok(p) => unsafe { core::ptr::write_unaligned(p, *v) },
        Err(_) => ctx.store(off, v, 0).map_err(|_| Reason::DropHelper)?,
    }
    Ok(())
}

/// Reads a `T` at `off` (unaligned), if the packet holds it.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Reason> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked just above.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// The IPv4 header at `off` if the frame carries IPv4; `None` for anything else.
#[inline(always)]
pub fn ipv4(ctx: &TcContext, off: usize) -> Result<Option<Ipv4>, Reason> {
    let proto: u16 = read(ctx, 12)?;
    if proto != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let ip: Ipv4 = read(ctx, off)?;
    if ip.vihl >> 4 != 4 || ip.vihl & 0xf < 5 {
        return Err(Reason::DropMalformed);
    }
    Ok(Some(ip))
}

/// Checks the overlay path's header rules and extracts the 5-tuple.
#[inline(always)]
pub fn flow(ctx: &TcContext, ip: &Ipv4, l4_off: usize) -> Result<Flow, Reason> {
    if ip.vihl != 0x45 {
        return Err(Reason::DropIpOptions);
    }
    let frag = u16::from_be(ip.frag);
    if frag & 0x3fff != 0 {
        return Err(Reason::DropFragment);
    }
    let (l4, sport, dport) = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = read(ctx, l4_off)?;
            // The checksum field must be present too.
            let csum_end = if ip.proto == IPPROTO_TCP { 18 } else { 8 };
            let _: u16 = read(ctx, l4_off + csum_end - 2)?;
            let kind = if ip.proto == IPPROTO_TCP {
                L4::Tcp
            } else {
                L4::Udp
            };
            (kind, ports[0], ports[1])
        }
        IPPROTO_ICMP => {
            let hdr: [u8; 8] = read(ctx, l4_off)?;
            match hdr[0] {
                ICMP_ECHO | ICMP_ECHO_REPLY => {
                    let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
                    (L4::Echo, id, id)
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => {
                    (L4::IcmpError, 0, 0)
                }
                _ => (L4::IcmpOther, 0, 0),
            }
        }
        _ => (L4::Other, 0, 0),
    };
    let len = u16::from_be(ip.tot_len);
    let l4_min = match l4 {
        L4::Tcp => 20,
        L4::Other => 0,
        _ => 8,
    };
    // BIG TCP super-packets carry 0; anything else must fit header and frame.
    let frame = ctx.len() as usize - (l4_off - 20);
    if (len as usize) < 20 + l4_min && !(len == 0 && crate::tunnel::is_gso(ctx))
        || len as usize > frame
    {
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
        df: frag & 0x4000 != 0,
        len,
    })
}

/// RFC 1071 checksum of `words` (already folded into a one's complement sum).
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's complement sum of a fixed-size array of 16-bit words.
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += words[i] as u64;
        i += 1;
    }
    sum
}

/// `check` after a 32-bit field it covers changed from `old` to `new`
/// (RFC 1624: HC' = ~(~HC + ~m + m')). Byte order does not matter as long
/// as all three are taken from the packet the same way.
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u64
        + ((!old) & 0xffff) as u64
        + ((!old) >> 16) as u64
        + (new & 0xffff) as u64
        + (new >> 16) as u64;
    fold(sum)
}

/// Checksum of a 20-byte IPv4 header whose `check` field is zero.
#[inline(always)]
pub fn ipv4_csum(ip: &Ipv4) -> u16 {
    // SAFETY: `Ipv4` is 20 bytes of plain data.
    let words: [u16; 10] = unsafe { core::mem::transmute(*ip) };
    fold(sum_words(&words))
}
