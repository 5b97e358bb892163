//! ICMP errors generated toward an instance, so its clients fail fast:
//! host unreachable (ServIP without backends), port unreachable (a port or
//! protocol the service does not forward), fragmentation needed, and
//! administratively prohibited (a flow the sender's `needs` does not allow).

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes},
    programs::TcContext,
};
use overlay_common::{ETH_P_IP, IPPROTO_ICMP, stats::Reason};

use crate::maps::{SCRATCH, Scratch};
use crate::packet::{IP_OFF, Ipv4, fold, ipv4_csum, read, sum_words};

pub const CODE_HOST_UNREACH: u8 = 1;
pub const CODE_PORT_UNREACH: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;

/// The reply frame. Every field is 2-byte aligned, so the IPv4 header lands
/// right after the 14-byte Ethernet header with no padding.
#[repr(C)]
struct Reply<const W: usize> {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
    ip: [u16; 10],
    icmp: [u16; 4],
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
pub fn unreachable(ctx: &TcContext, proto: u8, code: u8, mtu: u16) -> Result<i32, Reason> {
    if proto == overlay_common::IPPROTO_TCP {
        reply::<19>(ctx, code, mtu)
    } else {
        reply::<14>(ctx, code, mtu)
    }
}

// A function of its own: its frame only exists on this rare path, and the
// reply is assembled in a per-CPU scratch buffer, not on the 512-byte stack.
#[inline(never)]
fn reply<const W: usize>(ctx: &TcContext, code: u8, mtu: u16) -> Result<i32, Reason> {
    const { assert!(core::mem::size_of::<Reply<W>>() <= core::mem::size_of::<Scratch>()) };
    let len = 14 + 20 + 8 + 2 * W;
    let r = SCRATCH.get_ptr_mut(0).ok_or(Reason::DropHelper)? as *mut Reply<W>;
    let orig: Ipv4 = read(ctx, IP_OFF)?;
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: `r` points at this CPU's scratch buffer, large enough (checked above).
    let r = unsafe { &mut *r };
    let quote: [u16; W] = read(ctx, IP_OFF)?;
    r.quote = quote;
    r.dst.copy_from_slice(&macs[6..]);
    r.src.copy_from_slice(&macs[..6]);
    r.proto = ETH_P_IP.to_be();
    let mut ip = Ipv4 {
        vihl: 0x45,
        tos: 0xc0,
        tot_len: ((len - 14) as u16).to_be(),
        id: 0,
        frag: 0,
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: 0,
        saddr: orig.daddr,
        daddr: orig.saddr,
    };
    ip.check = ipv4_csum(&ip);
    // SAFETY: `Ipv4` is 20 bytes of plain data.
    r.ip = unsafe { core::mem::transmute::<Ipv4, [u16; 10]>(ip) };
    r.icmp = [u16::from_be_bytes([3, code]).to_be(), 0, 0, mtu.to_be()];
    r.icmp[1] = fold(sum_words(&r.icmp) + sum_words(&r.quote));
    let h = |_| Reason::DropHelper;
    ctx.adjust_room(28, BPF_ADJ_ROOM_MAC, 0).map_err(h)?;
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
