//! XDP on the uplink: drops tunnel packets from unregistered sources (EWP:
//! not a node, NSP: not a gateway) before the kernel allocates an skb for
//! them (logged sparsely: see `log_due`).
//! Everything else passes to TC.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use overlay_common::{ETH_P_IP, IPPROTO_UDP, stats::Reason};

use crate::maps::{GATEWAYS, PEERS, config, count, stranger};
use crate::packet::{IP_OFF, Ipv4, L4_OFF};

#[xdp(frags)]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    match try_uplink_xdp(&ctx) {
        Some((reason, src)) => {
            stranger(&ctx, reason, src);
            count(reason, (ctx.data_end() - ctx.data()) as u32);
            XDP_DROP
        }
        None => XDP_PASS,
    }
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    if ctx.data() + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked just above.
    Some(unsafe { core::ptr::read_unaligned((ctx.data() + off) as *const T) })
}

/// The drop reason (and source) of an unwanted tunnel packet, `None` to pass it on.
fn try_uplink_xdp(ctx: &XdpContext) -> Option<(Reason, u32)> {
    let cfg = config()?;
    if read::<u16>(ctx, 12)? != ETH_P_IP.to_be() {
        return None;
    }
    let ip: Ipv4 = read(ctx, IP_OFF)?;
    if ip.proto != IPPROTO_UDP || ip.daddr != cfg.node_ip || ip.vihl != 0x45 {
        return None;
    }
    let udp: [u16; 4] = read(ctx, L4_OFF)?;
    // SAFETY: presence checks only.
    if udp[1] == cfg.ewp && unsafe { PEERS.get(ip.saddr) }.is_none() {
        return Some((Reason::DropUnknownPeer, ip.saddr));
    }
    if udp[1] == cfg.nsp && cfg.nsp != 0 && unsafe { GATEWAYS.get(ip.saddr) }.is_none() {
        return Some((Reason::DropUnknownGateway, ip.saddr));
    }
    None
}
