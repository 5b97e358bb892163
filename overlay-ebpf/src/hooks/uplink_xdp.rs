//! XDP on the uplink: drops tunnel packets from unregistered sources (EWP:
//! not a node, NSP: not a gateway), and those whose inner source their
//! sender may not use, before the kernel allocates an skb for them (logged
//! sparsely: see `maps::log_due`). The TC program applies the same checks
//! (`tunnel::port`, `tunnel::check_sender`, `tunnel::check_inner`) when XDP
//! is absent.
//!
//! A node's tunnel packet that passes is decapsulated here
//! (`tunnel::decap_xdp`): the kernel's GRO then coalesces the inner packets
//! of a flow before the TC program translates and delivers them, once per
//! coalesced packet instead of once per frame. Everything else passes to TC.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use overlay_common::{maps::Config, stats::Reason};

use crate::events;
use crate::layout::{INNER_IP, Ipv4, L4_OFF, Udp};
use crate::maps::{config, count, stranger};
use crate::packet::{self, read};
use crate::tunnel::{self, Port};

#[xdp(frags)]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    match try_uplink_xdp(&ctx) {
        Some((reason, src)) => {
            stranger(&ctx, reason, src);
            count(reason, (ctx.data_end() - ctx.data()) as u32);
            events::drop_xdp(&ctx, reason);
            XDP_DROP
        }
        None => XDP_PASS,
    }
}

/// The drop reason (and source) of an unwanted tunnel packet, `None` to pass
/// it on (decapsulated if it is a node's tunnel packet).
#[inline(always)]
fn try_uplink_xdp(ctx: &XdpContext) -> Option<(Reason, u32)> {
    let cfg = config()?;
    // `to_node` checks the header's version and length.
    let Ok(Some(ip)) = packet::ipv4_unchecked(ctx) else {
        return None;
    };
    let reason = match judge(ctx, cfg, &ip)? {
        Ok(Port::Ewp) => tunnel::decap_xdp(ctx).err()?,
        Ok(Port::Nsp) => return None,
        Err(reason) => reason,
    };
    Some((reason, ip.saddr))
}

/// A tunnel packet's port once its sender and inner source passed, or why
/// it must be dropped; `None` for anything TC judges (not a tunnel packet, a
/// fragment, an RTT probe, an inner header TC finds malformed).
#[inline(always)]
fn judge(ctx: &XdpContext, cfg: &Config, ip: &Ipv4) -> Option<Result<Port, Reason>> {
    if !tunnel::to_node(cfg, ip) {
        return None;
    }
    let udp: Udp = read(ctx, L4_OFF).ok()?;
    let port = tunnel::port(cfg, ip, &udp)?;
    let sender = match tunnel::check_sender(port, ip.saddr) {
        Ok(sender) => sender,
        Err(reason) => return Some(Err(reason)),
    };
    // An RTT probe (no IPv4 header) or a header TC finds malformed: TC judges.
    let inner: Ipv4 = read(ctx, INNER_IP).ok()?;
    if !inner.is_v4() || ip.is_fragment() {
        return None;
    }
    Some(tunnel::check_inner(port, sender, inner.saddr, ip.saddr).map(|()| port))
}
