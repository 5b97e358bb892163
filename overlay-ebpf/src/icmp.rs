//! ICMP errors generated toward an instance, so its clients fail fast:
//! host unreachable (ServIP without backends), port unreachable (a port or
//! protocol the service does not forward), fragmentation needed, and
//! administratively prohibited (a flow the sender's `needs` does not allow).

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes},
    programs::TcContext,
};
use overlay_common::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, stats::Reason};

use crate::csum::{fold, ipv4_csum, ipv4_words, sum_words};
use crate::layout::{
    DEFAULT_TTL, ETH_ADDRS, Eth, ICMP_DEST_UNREACH, ICMP_HLEN, IP_OFF, IPV4_HLEN, IPV4_WORDS, Icmp,
    Ipv4, L4Head, Macs, TCP_HDR_CHECK, VIHL_PLAIN,
};
use crate::maps::{SCRATCH, Scratch};
use crate::packet::{ptr_at, read};

pub const CODE_HOST_UNREACH: u8 = 1;
pub const CODE_PORT_UNREACH: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;

/// The quote in 16-bit words: the IPv4 header and 8 bytes of L4 header, or
/// for TCP up to the end of its checksum field.
const QUOTE_WORDS: usize = (IPV4_HLEN + size_of::<L4Head>()) / 2;
const QUOTE_WORDS_TCP: usize = (IPV4_HLEN + TCP_HDR_CHECK + size_of::<u16>()) / 2;

/// Precedence "internetwork control", which Linux gives its ICMP errors too.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// The reply frame. Every field is 2-byte aligned, so the IPv4 header lands
/// right after the 14-byte Ethernet header with no padding.
#[repr(C)]
struct Reply<const W: usize> {
    eth: Eth,
    ip: [u16; IPV4_WORDS],
    icmp: Icmp,
    quote: [u16; W],
}

/// Turns the packet into ICMP destination unreachable (`code`) from its
/// destination back to its sender, and sends it out of the interface it came
/// in on (back into the instance). `mtu` fills the next-hop MTU field.
///
/// The quote is the IPv4 header plus 8 bytes (RFC 792), or 18 for TCP: the
/// kernel will not trim a CHECKSUM_PARTIAL packet in front of its checksum
/// field, which sits at byte 16 of the TCP header.
#[inline(always)]
pub fn reply_unreachable(ctx: &TcContext, proto: u8, code: u8, mtu: u16) -> Result<i32, Reason> {
    if proto == IPPROTO_TCP {
        turn_around::<QUOTE_WORDS_TCP>(ctx, code, mtu)
    } else {
        turn_around::<QUOTE_WORDS>(ctx, code, mtu)
    }
}

// A function of its own: its frame only exists on this rare path, and the
// reply is assembled in a per-CPU scratch buffer, not on the 512-byte stack.
#[inline(never)]
fn turn_around<const W: usize>(ctx: &TcContext, code: u8, mtu: u16) -> Result<i32, Reason> {
    const { assert!(size_of::<Reply<W>>() <= size_of::<Scratch>()) };
    let len = size_of::<Reply<W>>();
    let r = SCRATCH.get_ptr_mut(0).ok_or(Reason::DropHelper)? as *mut Reply<W>;
    let orig: Ipv4 = read(ctx, IP_OFF)?;
    let [dst, src]: Macs = read(ctx, ETH_ADDRS)?;
    // SAFETY: `r` points at this CPU's scratch buffer, large enough (checked above).
    let r = unsafe { &mut *r };
    // Straight from the packet into the buffer, not through the stack.
    let quote = ptr_at::<[u16; W], _>(ctx, IP_OFF)?;
    // SAFETY: `quote` spans W words of the packet (checked by `ptr_at`).
    unsafe { core::ptr::copy_nonoverlapping(quote, &mut r.quote, 1) };
    // Back where it came from: the addresses swap.
    r.eth = Eth {
        dst: src,
        src: dst,
        proto: ETH_P_IP.to_be(),
    };
    let mut ip = Ipv4 {
        vihl: VIHL_PLAIN,
        tos: TOS_INTERNETWORK_CONTROL,
        tot_len: ((len - IP_OFF) as u16).to_be(),
        id: 0,
        frag: 0,
        ttl: DEFAULT_TTL,
        proto: IPPROTO_ICMP,
        check: 0,
        saddr: orig.daddr,
        daddr: orig.saddr,
    };
    ip.check = ipv4_csum(&ip);
    r.ip = ipv4_words(ip);
    let mut icmp = Icmp {
        kind: ICMP_DEST_UNREACH,
        code,
        check: 0,
        id: 0,
        mtu: mtu.to_be(),
    };
    icmp.check = fold(sum_words(&icmp_words(icmp)) + sum_words(&r.quote));
    r.icmp = icmp;
    let h = |_| Reason::DropHelper;
    // Room for the new IPv4 and ICMP headers in front of the quote.
    let room = (IPV4_HLEN + ICMP_HLEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).map_err(h)?;
    // SAFETY: helper calls on the program's own context; `r` holds `len` bytes.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) != 0
            || bpf_skb_store_bytes(
                ctx.skb.skb as *mut _,
                0,
                r as *mut _ as *const _,
                len as u32,
                0,
            ) != 0
        {
            return Err(Reason::DropHelper);
        }
        Ok(bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32)
    }
}

/// The header as 16-bit words, the unit checksums are summed in.
#[inline(always)]
fn icmp_words(icmp: Icmp) -> [u16; 4] {
    // SAFETY: `Icmp` is 8 bytes of plain data without padding.
    unsafe { core::mem::transmute(icmp) }
}
