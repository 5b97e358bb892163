//! ICMP errors generated toward an instance, so its clients fail fast:
//! host unreachable (ServIP without backends), port unreachable (a port or
//! protocol the service does not forward) and fragmentation needed.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{ETH_P_IP, IPPROTO_ICMP, stats::Reason};

use crate::packet::{IP_OFF, Ipv4, fold, ipv4_csum, read, sum_words};

pub const CODE_HOST_UNREACH: u8 = 1;
pub const CODE_PORT_UNREACH: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;

/// IPv4 header plus 8 bytes of the offending packet (RFC 792).
const QUOTE_LEN: usize = 28;
const REPLY_LEN: usize = 14 + 20 + 8 + QUOTE_LEN;

#[repr(C)]
struct Reply {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
    ip: Ipv4,
    icmp: [u16; 4],
    quote: [u16; QUOTE_LEN / 2],
}

/// Turns the packet into ICMP destination unreachable (`code`) from its
/// destination back to its sender, and sends it out of the interface it came
/// in on (back into the instance). `mtu` fills the next-hop MTU field.
#[inline(always)]
pub fn unreachable(ctx: &TcContext, code: u8, mtu: u16) -> Result<i32, Reason> {
    let macs: [u8; 12] = read(ctx, 0)?;
    let orig: Ipv4 = read(ctx, IP_OFF)?;
    let quote: [u16; QUOTE_LEN / 2] = read(ctx, IP_OFF)?;
    let h = |_| Reason::DropHelper;
    ctx.adjust_room(28, BPF_ADJ_ROOM_MAC, 0).map_err(h)?;
    // SAFETY: helper call on the program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } != 0 {
        return Err(Reason::DropHelper);
    }
    let mut ip = Ipv4 {
        vihl: 0x45,
        tos: 0xc0,
        tot_len: ((REPLY_LEN - 14) as u16).to_be(),
        id: 0,
        frag: 0,
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: 0,
        saddr: orig.daddr,
        daddr: orig.saddr,
    };
    ip.check = ipv4_csum(&ip);
    let mut icmp = [u16::from_be_bytes([3, code]).to_be(), 0, 0, mtu.to_be()];
    icmp[1] = fold(sum_words(&icmp) + sum_words(&quote));
    let mut reply = Reply { dst: [0; 6], src: [0; 6], proto: ETH_P_IP.to_be(), ip, icmp, quote };
    reply.dst.copy_from_slice(&macs[6..]);
    reply.src.copy_from_slice(&macs[..6]);
    ctx.store(0, &reply, 0).map_err(h)?;
    // SAFETY: reading the context, then a helper call.
    Ok(unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) } as i32)
}
